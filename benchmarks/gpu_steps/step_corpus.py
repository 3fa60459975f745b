"""The demo corpus of N clips (klustr demo-corpus; kept and reused), then scanned. gpu.sh runs it
in the background while the GPU-only steps run, on all but $CORPUS_SPARE cores."""
import os
import shutil
import sys
import time

import klustr_gpu as kg

from step_common import save

lib, scanned, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
workers = max(1, (os.cpu_count() or 2) - int(os.environ.get("CORPUS_SPARE", "4")))
t = time.perf_counter()
built = not os.path.exists(os.path.join(lib, "labels.csv"))
if built:
    shutil.rmtree(lib, ignore_errors=True)
    kg.demo_corpus(lib, n=n, seed=0, workers=workers, progress=False)
t_corpus = time.perf_counter() - t
shutil.rmtree(scanned, ignore_errors=True)
t = time.perf_counter()
df = kg.scan(lib, scanned, labels=os.path.join(lib, "labels.csv"), progress=False).manifest
ok = int((df.status == "ok").sum())
fig = {"files": len(df), "ok": ok, "built": built, "workers": workers, "corpus_s": round(t_corpus, 2),
       "clips_per_s_built": round(n / t_corpus, 1) if built and t_corpus else None,
       "scan_s": round(time.perf_counter() - t, 2), "library": lib}
fig["summary"] = (f"{len(df):,} files ({ok:,} ok), " + (f"built in {t_corpus:.1f} s on {workers} workers"
                  if built else "reused") + f"; scan {fig['scan_s']} s")
save(fig)
