"""klustr map end to end on the corpus (the CLI in a fresh process), on one device."""
import os
import re
import shutil
import subprocess
import sys
import time

from step_common import save

lib, proj, device = sys.argv[1:4]
shutil.rmtree(proj, ignore_errors=True)
cmd = [sys.executable, "-m", "klustr_gpu.cli", "map", lib, "-o", proj, "--labels", os.path.join(lib, "labels.csv"),
       "--device", device] + (["--engine", "cpu"] if device == "cpu" else [])
t = time.perf_counter()
r = subprocess.run(cmd, capture_output=True, text=True)
sec = time.perf_counter() - t
sys.stdout.write(r.stdout[-3000:])
sys.stderr.write(r.stderr[-3000:])
if r.returncode:
    sys.exit(r.returncode)
stages = {k: float(v) for k, v in re.findall(r"(\w+) ([\d.]+)s", r.stdout.split("time:", 1)[-1].split("\n")[0])
          if k != "total"}
pts = re.search(r"points: (\d+)", r.stdout)
engine = re.search(r"engine auto -> (\w+)", r.stdout + r.stderr)
fig = {"command": "klustr " + " ".join(cmd[3:]), "seconds": round(sec, 2), "stages_s": stages,
       "points": int(pts.group(1)) if pts else None, "engine": engine.group(1) if engine else None, "device": device}
try:
    import klustr_gpu as kg
    fig["engine"] = kg.Project(proj).read_embedding()[1].get("engine") or fig["engine"]
except Exception as exc:  # noqa: BLE001 - the engine is a detail of the figure
    fig["engine_error"] = str(exc)[:200]
fig["summary"] = ((f"{fig['points']:,} points in {sec:.1f} s (" + ", ".join(f"{k} {v:.1f}" for k, v in stages.items())
                   + f"); engine {fig['engine']}") if fig["points"] else f"{sec:.1f} s")
save(fig)
