"""What the default map costs: ``klustr map`` with no option against the previous default
(``timbre`` on 0.5 s clips + UMAP n_neighbors 15, min_dist 0.1: what ``klustr map`` did before
issue 14), on the same library, in one run.

Each map is made in a fresh process (imports, numba's on-disk cache warm after the first) on a
new project, alternating the two (previous, default, previous, default, ...) so that a change
of the machine's load falls on both; the ratio is of the medians. Issue 14's goal: the default
takes at most 1.3x the previous default's time on the 10,000-clip demo corpus.

    .venv/bin/python benchmarks/default_cost.py [--library ~/.cache/klustr_gpu/bench/demo10000] [--repeats 3]

Writes ``benchmarks/out/default_cost.json`` and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
CACHE = Path(os.environ.get("KLUSTR_BENCH_CACHE", Path.home() / ".cache" / "klustr_gpu" / "bench"))

#: What ``klustr map`` did before issue 14 (the same dict as benchmarks/quality.py).
PREVIOUS_DEFAULT = {"audio.clip_seconds": 0.5, "features.sets": ["timbre"],
                    "reduce.features": "timbre", "reduce.method": "umap", "reduce.n_neighbors": 15,
                    "reduce.min_dist": 0.1, "reduce.pca_components": 32}

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import klustr_gpu as kg
from klustr_gpu.score.metrics import knn_accuracy
lib, proj, overrides = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
cfg = kg.Config().updated(overrides) if overrides else None
res = kg.map(lib, proj, cfg, labels=f"{lib}/labels.csv", progress=False)
emb, _ = kg.Project(proj).read_embedding()
acc = knn_accuracy(emb[["x", "y"]].to_numpy(), emb["label"].to_numpy(), k=10)
print(json.dumps({"wall": time.perf_counter() - t0, "stages": res.seconds, "points": res.points,
                  "knn_accuracy": float(acc), "decisions": res.decisions}))
"""


def one(library: Path, overrides: dict | None, work: Path) -> dict:
    proj = work / "p"
    shutil.rmtree(proj, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", CHILD, str(library), str(proj), json.dumps(overrides or {})],
                       capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - t
    if r.returncode:
        raise SystemExit(f"klustr map failed:\n{r.stderr[-2000:]}")
    got = json.loads(r.stdout.strip().splitlines()[-1])
    got["process_wall"] = wall
    return got


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--library", type=Path, default=CACHE / "demo10000")
    ap.add_argument("--repeats", type=int, default=3, help="pairs (previous, default) after the warm-up")
    ap.add_argument("--quick", action="store_true", help="one pair (a smoke test, not the measurement)")
    args = ap.parse_args(argv)
    if args.quick:
        args.repeats = 1
    if not (args.library / "labels.csv").exists():
        print(f"error: {args.library} has no labels.csv (klustr demo-corpus {args.library} --n 10000 --seed 0)",
              file=sys.stderr)
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {"previous": [], "default": []}
    load = [Path("/proc/loadavg").read_text().split()[:3]] if Path("/proc/loadavg").exists() else []
    with tempfile.TemporaryDirectory() as tmp:
        one(args.library, None, Path(tmp))                       # warm-up: numba's cache, the page cache
        for _ in range(args.repeats):
            for name, ov in (("previous", PREVIOUS_DEFAULT), ("default", None)):
                runs[name].append(one(args.library, ov, Path(tmp)))
                print(f"{name}: {runs[name][-1]['process_wall']:.1f} s {runs[name][-1]['stages']}", file=sys.stderr)
    if load:
        load.append(Path("/proc/loadavg").read_text().split()[:3])
    med = {k: statistics.median(r["process_wall"] for r in v) for k, v in runs.items()}
    ratio = med["default"] / med["previous"]
    lines = ["| map | wall (median of %d) | stages (last run) | 10-NN |" % args.repeats, "|---|---:|---|---:|"]
    for k, v in runs.items():
        st = "  ".join(f"{s} {x:.1f}" for s, x in v[-1]["stages"].items())
        lines.append(f"| {k} | {med[k]:.1f} s | {st} | {v[-1]['knn_accuracy']:.3f} |")
    pairs = [d["process_wall"] / p["process_wall"] for p, d in zip(runs["previous"], runs["default"])]
    lines.append(f"\nratio default / previous: **{ratio:.2f}x** of the medians (goal <= 1.3x); pair by pair "
                 + ", ".join(f"{r:.2f}x" for r in pairs) + f"; load before/after: {load}")
    md = "\n".join(lines)
    (OUT / "default_cost.json").write_text(json.dumps({"library": str(args.library), "runs": runs, "median": med,
                                                       "ratio": ratio, "pair_ratios": pairs,
                                                       "loadavg": load}, indent=2) + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
