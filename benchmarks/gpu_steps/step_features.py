"""klustr features on a fresh copy of the scanned corpus, on one device (a fresh process: imports,
CUDA start-up and decoding included, as a user sees it)."""
import os
import shutil
import sys
import time

import klustr_gpu as kg

from step_common import gpu_peak_mib, save

scanned, dest, device = sys.argv[1:4]
sets = os.environ.get("SETS") or None
shutil.rmtree(dest, ignore_errors=True)
shutil.copytree(scanned, dest)                     # manifest and klustr.toml: every feature computed
t = time.perf_counter()
s = kg.compute_features(dest, sets=sets, device=device, progress=False).to_dict()
sec = time.perf_counter() - t
names = list(s["sets"])
clips = max(s["sets"][k]["computed"] for k in names) if names else 0
fig = {"device": s.get("device"), "sets": names, "clips": clips, "seconds": round(sec, 2),
       "clips_per_s": round(clips / sec, 1) if sec else None, "gpu_peak_mib": gpu_peak_mib(),
       "compute_s": {k: s["sets"][k].get("seconds") for k in names}, "project": dest}
fig["summary"] = f"{clips:,} clips, sets {','.join(names)} on {fig['device']}: {fig['clips_per_s']} clips/s"
save(fig)
