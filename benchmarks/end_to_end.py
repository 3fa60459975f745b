"""End to end: ``klustr map`` on 10,000 clips vs the 2017-style pipeline, in one run.

(a) the 2017 way, in a fresh process: ``librosa.load`` at 48 kHz (0.25 s), per-file librosa MFCC
    (30 coefficients, flattened), scikit-learn t-SNE (perplexity 30, the defaults);
(b) ``klustr map LIBRARY -o PROJECT --labels ...`` in a fresh process, twice: the first run
    in a new numba cache directory (what a first-time user pays), the second a rerun on a new
    project (numba's on-disk cache warm, every stage recomputed).

Both maps are scored with the same code (10-NN label accuracy in 2-D). Prints a markdown
section; raw figures go to benchmarks/out/end_to_end.json.

    .venv/bin/python benchmarks/end_to_end.py [--n 10000] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
CACHE = Path(os.environ.get("KLUSTR_BENCH_CACHE", Path.home() / ".cache" / "klustr_gpu" / "bench"))

LEGACY = r"""
import sys, time, json, numpy as np, pandas as pd, librosa
from pathlib import Path
from sklearn.manifold import TSNE
lib = Path(sys.argv[1]); labels = pd.read_csv(lib / "labels.csv")
t0 = time.perf_counter()
clips = [librosa.load(str(lib / p), sr=48000, mono=True, duration=0.25)[0] for p in labels.path]
t1 = time.perf_counter()
feats = []
for y in clips:
    y = librosa.util.fix_length(y, size=12000)
    feats.append(librosa.feature.mfcc(y=y, sr=48000, n_mfcc=30).ravel())
X = np.asarray(feats, dtype=np.float32)
t2 = time.perf_counter()
Y = TSNE(n_components=2, random_state=0).fit_transform(X)
t3 = time.perf_counter()
np.save(sys.argv[2], Y)
print(json.dumps({"load": t1 - t0, "mfcc": t2 - t1, "tsne": t3 - t2, "total": t3 - t0}))
"""


def knn_accuracy(Y, labels, k=10) -> float:
    from klustr_gpu.score.metrics import knn_accuracy as acc

    return float(acc(Y, labels, k=k))


def stage_lines(stdout: str) -> list[str]:
    """The per-stage lines of ``klustr map``'s summary (from ``time:`` to the map's path)."""
    lines = stdout.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("time:")), len(lines))
    return [line.rstrip() for line in lines[start:] if not line.startswith(("map:", "page:"))]


def peak_child_mb() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--quick", action="store_true", help="2,000 clips")
    args = ap.parse_args(argv)
    n = 2000 if args.quick else args.n
    import numpy as np
    import pandas as pd

    from klustr_gpu.library.democorpus import demo_corpus

    lib = CACHE / f"demo{n}"
    if not (lib / "labels.csv").exists():
        demo_corpus(lib, n=n, seed=0, progress=False)
    labels = pd.read_csv(lib / "labels.csv")
    work = Path(tempfile.mkdtemp(prefix="klustr-e2e-"))
    results: dict = {"n": n, "load_avg_start": os.getloadavg()}
    try:
        # (a) 2017-style
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-c", LEGACY, str(lib), str(work / "legacy.npy")],
                           capture_output=True, text=True, check=True)
        legacy = json.loads(r.stdout.strip().splitlines()[-1])
        legacy["wall"] = time.perf_counter() - t
        legacy["knn_accuracy"] = knn_accuracy(np.load(work / "legacy.npy"), labels.label.to_numpy())
        results["legacy_2017"] = legacy

        # (b) klustr map, cold numba cache then warm
        klustr = [sys.executable, "-m", "klustr_gpu.cli"]
        for run, numba_dir in (("cold", work / "numba-cold"), ("warm", work / "numba-cold")):
            env = dict(os.environ, NUMBA_CACHE_DIR=str(numba_dir))
            proj = work / f"proj-{run}"
            t = time.perf_counter()
            r = subprocess.run([*klustr, "map", str(lib), "-o", str(proj), "--labels", str(lib / "labels.csv"), "-q"],
                               capture_output=True, text=True, env=env)
            wall = time.perf_counter() - t
            if r.returncode:
                raise SystemExit(f"klustr map failed:\n{r.stderr[-2000:]}")
            from klustr_gpu.store import Project

            emb, meta = Project(proj).read_embedding()
            lab = emb["label"].to_numpy()
            results[f"klustr_{run}"] = {"wall": wall, "stages": stage_lines(r.stdout),
                                        "knn_accuracy": knn_accuracy(emb[["x", "y"]].to_numpy(), lab)}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    results["load_avg_end"] = os.getloadavg()
    OUT.mkdir(exist_ok=True)
    (OUT / "end_to_end.json").write_text(json.dumps(results, indent=2))
    lg, cold, warm = results["legacy_2017"], results["klustr_cold"], results["klustr_warm"]
    print(f"{n:,} demo-corpus clips, each pipeline in a fresh process.\n")
    print("| pipeline | load | features | reduction | total (wall) | 10-NN accuracy | speed-up vs 2017 |")
    print("|---|---|---|---|---|---|---|")
    print(f"| 2017-style (librosa 48 kHz + MFCC, sklearn t-SNE) | {lg['load']:.1f} s | {lg['mfcc']:.1f} s | "
          f"{lg['tsne']:.1f} s | {lg['wall']:.1f} s | {lg['knn_accuracy']:.3f} | 1.0× |")
    for name, r in (("`klustr map`, first run (cold numba cache)", cold), ("`klustr map`, warm numba cache", warm)):
        print(f"| {name} | | | | {r['wall']:.1f} s | {r['knn_accuracy']:.3f} | {lg['wall'] / r['wall']:.1f}× |")
    print("\n`klustr map`'s own account of its time (warm run):\n\n```\n" + "\n".join(warm["stages"]) + "\n```")
    print(f"\nLoad average at start / end: {results['load_avg_start'][0]:.1f} / {results['load_avg_end'][0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
