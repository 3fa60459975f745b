"""Reduction benchmark: scikit-learn TSNE vs ``klustr embed --method tsne``; plain umap-learn vs
``klustr embed --method umap``. Every case runs in a fresh process, as a user would run it
(imports, JIT and feature loading included); time, peak memory (max RSS) and the 10-NN label
accuracy (5-fold cross-validated k-NN classifier on the 2-D map) are reported.

    python benchmarks/reduce.py --project PROJECT [--cases ...] [--cold]

``PROJECT`` is a klustr project with ``mfcc`` features and labels (e.g. a demo corpus:
``klustr demo-corpus DIR -n 10000; klustr scan DIR -o P; klustr features P``). For 100,000
points, pass a project of that size.
Results: ``benchmarks/out/reduce.json`` and a markdown table on stdout (and ``reduce.md``).

Scale test (our UMAP and t-SNE with the default config, synthetic clustered features, each in a
fresh process; time, peak RSS) -> ``benchmarks/out/reduce_scale_<N>.json``::

    python benchmarks/reduce.py --synthetic 1000000 [--engine auto|cuml|torchdr|cpu]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CASES = ("sklearn_tsne", "klustr_tsne", "umap_learn", "klustr_umap")
PEERS = {"klustr_tsne": "sklearn_tsne", "klustr_umap": "umap_learn"}


# -- worker: one case in this (fresh) process ----------------------------------------------------
def _worker(case: str, project: str, out: str) -> None:
    t0 = time.perf_counter()
    import resource

    import numpy as np

    if case.startswith("klustr_"):
        from klustr_gpu import embed
        df = embed(project, method=case.split("_")[1], features="mfcc", name="bench", progress=False).frame
        Y = df[["x", "y"]].to_numpy(np.float32)
    else:
        from klustr_gpu.features import load
        from sklearn.preprocessing import StandardScaler
        X = StandardScaler().fit_transform(load(project, "mfcc").X)
        if case == "sklearn_tsne":
            from sklearn.manifold import TSNE
            Y = TSNE(n_components=2, random_state=0).fit_transform(X)
        else:
            import umap
            Y = umap.UMAP(random_state=0).fit_transform(X)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    np.save(out, np.asarray(Y, dtype=np.float32))
    Path(out).with_suffix(".json").write_text(json.dumps({"seconds": seconds, "peak_mib": peak}))


# -- driver ------------------------------------------------------------------------------------
def _synthetic(n: int, seed: int = 0):
    """``n`` points of 80-d features in 20 Gaussian clusters of different sizes and spreads."""
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4.0, size=(20, 80)).astype(np.float32)
    labels = rng.choice(20, size=n, p=rng.dirichlet(np.ones(20) * 2))
    X = centres[labels] + rng.normal(0, 1.0, size=(n, 80)).astype(np.float32) * rng.uniform(0.5, 2.0, 20)[labels, None].astype(np.float32)
    return X.astype(np.float32), labels


def _scale_worker(method: str, n: int, out: str, engine: str = "auto") -> None:
    """A fresh process: synthetic features -> preprocess -> fit_embedding with the defaults."""
    t0 = time.perf_counter()
    import logging
    import resource

    import numpy as np

    logging.basicConfig(level=logging.INFO, format="%(relativeCreated)8.0f ms %(name)s: %(message)s")
    from klustr_gpu.config import Config
    from klustr_gpu.reduce import fit_embedding, preprocess
    from klustr_gpu.reduce.embed import method_params

    X, labels = _synthetic(n)
    r = Config().reduce
    t1 = time.perf_counter()
    Xp = preprocess(X, standardize=True, pca_components=r.pca_components)
    Y = fit_embedding(Xp, method, engine=engine, **method_params(r, method))
    seconds = time.perf_counter() - t1
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    sub = np.random.default_rng(1).choice(n, size=min(n, 20000), replace=False)
    acc = _quality(Y[sub], labels[sub].astype(str).tolist())
    from klustr_gpu.reduce import resolve_engine
    Path(out).write_text(json.dumps({"case": f"klustr_{method}", "engine": resolve_engine(engine),
                                     "n_points": n, "seconds": seconds,
                                     "process_seconds": time.perf_counter() - t0, "peak_mib": peak,
                                     "accuracy_10nn_20k_subsample": acc,
                                     "data": "synthetic: 20 Gaussian clusters in 80-d"}))


def _demo_project(n: int) -> Path:
    """A scanned demo corpus of ``n`` files with mfcc features, built once and kept."""
    from klustr_gpu import compute_features, demo_corpus, scan

    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "klustr_gpu" / "bench"
    lib, proj = root / f"demo{n}", root / f"demo{n}-project"
    if not (proj / "features" / "mfcc").exists():
        print(f"building a {n}-file demo project in {proj} (once)", file=sys.stderr, flush=True)
        demo_corpus(lib, n=n, seed=0, progress=False)
        scan(lib, proj, labels=lib / "labels.csv", progress=False)
        compute_features(proj, sets=["mfcc"], progress=False)
    return proj


def _quality(Y, labels) -> float:
    import numpy as np
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    ok = np.array([lab is not None for lab in labels])
    return float(cross_val_score(KNeighborsClassifier(10), Y[ok], np.asarray(labels)[ok], cv=5).mean())


def _run_case(case: str, project: Path, tmp: Path, cold_cache: bool, timeout: float | None = None) -> dict:
    out = tmp / f"{case}.npy"
    env = dict(os.environ)
    if cold_cache:
        env["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="numba-cold-", dir=tmp)
    if case.startswith("klustr_"):
        shutil.rmtree(project / "neighbours", ignore_errors=True)   # no graph reuse across cases
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", case, "--project", str(project),
           "--out", str(out)]
    t0 = time.perf_counter()
    try:
        subprocess.run(cmd, check=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:       # a peer too slow to wait for: report a lower bound
        return {"case": case, "wall_seconds": timeout, "seconds": timeout, "peak_mib": float("nan"),
                "timed_out": True, "Y": None}
    wall = time.perf_counter() - t0
    res = json.loads(out.with_suffix(".json").read_text())
    import numpy as np
    res.update(case=case, wall_seconds=wall, Y=np.load(out))
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", help="a project with mfcc features and labels (default: a demo corpus "
                                      "of --n files, built once under ~/.cache/klustr_gpu/bench)")
    ap.add_argument("--n", type=int, default=10000, help="demo corpus size when no --project (default 10000)")
    ap.add_argument("--quick", action="store_true", help="a 2,000-file demo corpus")
    ap.add_argument("--synthetic", type=int, default=0,
                    help="instead: N synthetic clustered points, our umap and tsne only (scale test)")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--cold", action="store_true", help="also run klustr_umap with an empty numba cache")
    ap.add_argument("--engine", default="auto", help="scale mode: auto|cuml|torchdr|cpu")
    ap.add_argument("--timeout", type=float, help="stop a case after this many seconds and report "
                                                 "'> T s' (for scikit-learn's TSNE at 100,000 points)")
    ap.add_argument("--worker")
    ap.add_argument("--out")
    ap.add_argument("--json", default=str(HERE / "out" / "reduce.json"))
    args = ap.parse_args(argv)
    if args.worker and args.synthetic:
        _scale_worker(args.worker, args.synthetic, args.out, args.engine)
        return 0
    if args.worker:
        _worker(args.worker, args.project, args.out)
        return 0
    if args.synthetic:
        return _scale(args)
    if not args.project:
        args.project = str(_demo_project(2000 if args.quick else args.n))

    import pandas as pd

    from klustr_gpu.features import load
    from klustr_gpu.store import Project

    src = Path(args.project)
    work = Path(tempfile.mkdtemp(prefix="klustr-bench-"))
    proj = work / "project"
    shutil.copytree(src, proj, ignore=shutil.ignore_patterns("embeddings", "neighbours", ".lock"))
    table = load(proj, "mfcc")
    man = Project(proj).read_manifest().set_index("id")["label"]
    labels = [None if pd.isna(v) else str(v) for v in pd.Series(table.file_ids).map(man)]
    cases = [c for c in args.cases.split(",") if c]
    runs = []
    if args.cold and "klustr_umap" in cases:
        runs.append(("klustr_umap", True))
    runs += [(c, False) for c in cases]
    results = []
    for case, cold in runs:
        r = _run_case(case, proj, work, cold, args.timeout)
        Y = r.pop("Y")
        r["accuracy_10nn"] = float("nan") if Y is None else _quality(Y, labels)
        r["numba_cache"] = "cold" if cold else "warm"
        r["n_points"] = len(table)
        results.append(r)
        print(f"{case:13s} {r['numba_cache']:4s} {r['seconds']:7.1f} s  {r['peak_mib']:7.0f} MiB  "
              f"acc {r['accuracy_10nn']:.3f}", file=sys.stderr, flush=True)
    by = {(r["case"], r["numba_cache"]): r for r in results}
    for r in results:
        peer = by.get((PEERS.get(r["case"]), "warm"))
        if peer:
            r["speedup_vs_" + peer["case"]] = peer["seconds"] / r["seconds"]
            r["speedup_is_lower_bound"] = bool(peer.get("timed_out"))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    info = {"cpu_count": os.cpu_count(), "load_before": os.getloadavg(), "features": "mfcc",
            "project": str(src), "results": results}
    Path(args.json).write_text(json.dumps(info, indent=2))
    lines = ["| case | numba cache | points | seconds | speed-up vs peer | peak MiB | 10-NN accuracy |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        sp = next((f"{'> ' if r.get('speedup_is_lower_bound') else ''}{v:.2f}x"
                   for k, v in r.items() if k.startswith("speedup_vs_")), "")
        secs = f"> {r['seconds']:.0f} (stopped)" if r.get("timed_out") else f"{r['seconds']:.1f}"
        peak = "" if r.get("timed_out") else f"{r['peak_mib']:.0f}"
        acc = "" if r.get("timed_out") else f"{r['accuracy_10nn']:.3f}"
        lines.append(f"| {r['case']} | {r['numba_cache']} | {r['n_points']} | {secs} | {sp} | {peak} | {acc} |")
    lines.append("")
    lines.append(f"{len(table)} points of real mfcc features ({src}); each case a fresh process "
                 "(imports, JIT, feature loading included); peers: scikit-learn TSNE() and umap.UMAP() "
                 "defaults with random_state=0 on standardised features.")
    table_md = "\n".join(lines)
    Path(args.json).with_suffix(".md").write_text(table_md + "\n")
    print(table_md)
    shutil.rmtree(work, ignore_errors=True)
    return 0


def _scale(args) -> int:
    results = []
    for method in ("umap", "tsne"):
        out = Path(tempfile.mkdtemp(prefix="klustr-scale-")) / "r.json"
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", method,
                        "--synthetic", str(args.synthetic), "--engine", args.engine, "--out", str(out)],
                       check=True)
        r = json.loads(out.read_text())
        results.append(r)
        print(json.dumps(r), flush=True)
    path = Path(args.json).with_name(f"reduce_scale_{args.synthetic}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"cpu_count": os.cpu_count(), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
