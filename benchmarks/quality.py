"""Map quality on every labelled library we have: the default `klustr map`, the best map of
`klustr grid` and the 2017 klustr pipeline, all scored by one piece of code in one run.

Libraries (``--libraries``, default all four; a missing one is reported and skipped):

``hydrogen``  the Hydrogen drum kits (460 one-shots, 7 classes; ``shared/data/fetch_hydrogen.sh``)
``melodic``   TimGM6mb General MIDI notes (2,302 notes, 16 GM families; ``fetch_soundfont_corpus.sh``)
``drums``     TimGM6mb drum kits (345 hits, 8 classes; the same script)
``demo``      the synthetic demo corpus, 2,000 clips, seed 0 (generated here when missing)

For each library, every map scored by ``klustr_gpu.score.metrics.map_scores`` (10-NN label
accuracy of the 2-D map, trustworthiness against the map's own features):

* **default**: ``klustr map LIB -o P --labels LIB/labels.csv`` with no option, through the Python
  API (:func:`klustr_gpu.map`), seed 0, then the same embedding with seeds 1 and 2
  (``embed(P, seed=s)``: the features do not depend on the seed): mean and spread (min-max).
* **previous default** (``--no-previous`` skips it): what ``klustr map`` did before issue 14
  (``timbre`` on 0.5 s clips, UMAP n_neighbors 15, min_dist 0.1), seeds 0-2.
* **klustr grid**: ``grid(P, features=...)`` over ``--grid-features`` (default: every set the
  grid covers, with its combinations), its best map by 10-NN accuracy.
* **2017**: the 2017 klustr pipeline rebuilt with librosa, scikit-learn and umap-learn on the
  same files (48 kHz, 0.25 s clips): the 30-MFCC grid, the 32x32 STFT fingerprint and the
  per-clip z-scored descriptor grid, each mapped by scikit-learn t-SNE (perplexity 50) and by
  umap-learn after PCA to 14 (n_neighbors 15, min_dist 0.01, correlation), seeds 0-2.

The goal of issue 14: default mean >= the best 2017 map's mean + 0.03 on every library.
``--ceiling`` adds what the labels allow (classifiers trained on the labels, 5-fold CV).

Writes ``benchmarks/out/quality.json`` and ``benchmarks/out/quality.md`` and prints the tables::

    .venv/bin/python benchmarks/quality.py                      # every library (about 1 h on 2 busy cores)
    .venv/bin/python benchmarks/quality.py --libraries drums --quick
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from klustr_gpu.config import Config  # noqa: E402
from klustr_gpu.score import metrics as M  # noqa: E402

CACHE = Path.home() / ".cache" / "klustr_gpu"
LIBRARIES = {
    "hydrogen": Path(os.environ.get("KLUSTR_HYDROGEN", CACHE / "hydrogen")) / "library",
    "melodic": Path(os.environ.get("KLUSTR_SOUNDFONT", CACHE / "soundfont")) / "melodic",
    "drums": Path(os.environ.get("KLUSTR_SOUNDFONT", CACHE / "soundfont")) / "drums",
    "demo": Path(os.environ.get("KLUSTR_BENCH_CACHE", CACHE / "bench")) / "demo2000",
}
OUT = REPO / "benchmarks" / "out"
MARGIN = 0.03
#: what `klustr map` did before issue 14
PREVIOUS_DEFAULT = {"audio.clip_seconds": 0.5, "features.sets": ["timbre"],
                    "reduce.features": "timbre", "reduce.method": "umap", "reduce.n_neighbors": 15,
                    "reduce.min_dist": 0.1, "reduce.pca_components": 32}


# -- audio ---------------------------------------------------------------------------------------
def load_clips(library: Path, paths: list[str], sr: int, seconds: float) -> np.ndarray:
    """Mono clips ``[n, sr * seconds]``, peak-normalised, zero-padded (librosa's resampler)."""
    import librosa
    import soundfile as sf

    n = int(round(sr * seconds))
    out = np.zeros((len(paths), n), dtype=np.float32)
    for i, rel in enumerate(paths):
        y, s = sf.read(library / rel, dtype="float32", always_2d=True)
        y = y.mean(axis=1)[: int(s * seconds) + 1]
        if s != sr:
            y = librosa.resample(y, orig_sr=s, target_sr=sr)
        y = y[:n]
        out[i, : len(y)] = y / (np.abs(y).max() + 1e-9)
    return out


# -- the 2017 features -------------------------------------------------------------------------------
def mfcc_grid_2017(clips: np.ndarray, sr: int = 48000) -> np.ndarray:
    """librosa.feature.mfcc (30 coefficients, librosa defaults) flattened: ``[n, 30 * frames]``."""
    import librosa

    return librosa.feature.mfcc(y=clips, sr=sr, n_mfcc=30).reshape(len(clips), -1)


def stft_fingerprint_2017(clips: np.ndarray, *, n_fft: int = 1024, hop: int = 256, group: int = 10,
                          size: int = 32) -> np.ndarray:
    """|STFT| in dB, bins averaged in groups of 10, cropped to 32 x 32, min-max per clip."""
    import librosa

    S = np.abs(librosa.stft(clips, n_fft=n_fft, hop_length=hop))
    nb = S.shape[1] // group
    S = S[:, : nb * group].reshape(len(clips), nb, group, -1).mean(axis=2)
    S = librosa.amplitude_to_db(S, ref=np.max)[:, :size, :size]
    lo = S.min(axis=(1, 2), keepdims=True)
    hi = S.max(axis=(1, 2), keepdims=True)
    S = (S - lo) / np.where(hi > lo, hi - lo, 1.0)
    out = np.zeros((len(clips), size, size), dtype=np.float32)
    out[:, : S.shape[1], : S.shape[2]] = S
    return out.reshape(len(clips), -1)


def descriptor_grid_2017(clips: np.ndarray, sr: int = 48000, *, n_fft: int = 1024, hop: int = 256) -> np.ndarray:
    """Eight per-frame descriptors (RMS, centroid, bandwidth, crest, flux, rolloff, flatness,
    zero-crossing rate), each z-scored over the clip's frames, flattened: ``[n, 8 * frames]``."""
    import librosa

    S = np.abs(librosa.stft(clips, n_fft=n_fft, hop_length=hop))
    rows = [
        librosa.feature.rms(y=clips, frame_length=n_fft, hop_length=hop)[:, 0],
        librosa.feature.spectral_centroid(S=S, sr=sr)[:, 0],
        librosa.feature.spectral_bandwidth(S=S, sr=sr)[:, 0],
        S.max(axis=1) / np.maximum(S.mean(axis=1), 1e-12),
        np.pad(np.linalg.norm(np.diff(S, axis=-1), axis=1), ((0, 0), (1, 0))),
        librosa.feature.spectral_rolloff(S=S, sr=sr)[:, 0],
        librosa.feature.spectral_flatness(S=S)[:, 0],
        librosa.feature.zero_crossing_rate(clips, frame_length=n_fft, hop_length=hop)[:, 0],
    ]
    D = np.stack(rows, axis=1)
    D = (D - D.mean(axis=-1, keepdims=True)) / np.maximum(D.std(axis=-1, keepdims=True), 1e-8)
    return D.reshape(len(clips), -1).astype(np.float32)


FEATURES_2017 = {"mfcc grid (2017)": mfcc_grid_2017, "stft fingerprint (2017)": stft_fingerprint_2017,
                 "descriptor grid (2017)": descriptor_grid_2017}


def maps_2017(X: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """The two 2017 maps of one feature set: ``{name: map}``."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    import umap

    out = {"tsne perplexity=50": TSNE(n_components=2, perplexity=min(50.0, (len(X) - 1) / 3), random_state=seed)
           .fit_transform(X)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Xp = PCA(min(14, X.shape[1]), random_state=seed).fit_transform(X)
        out["umap pca=14 nn=15 md=0.01 correlation"] = umap.UMAP(
            n_neighbors=15, min_dist=0.01, metric="correlation", random_state=seed).fit_transform(Xp)
    return out


# -- what the labels allow ---------------------------------------------------------------------------
def label_ceiling(X: np.ndarray, labels, *, seed: int = 0) -> dict[str, float]:
    """5-fold stratified cross-validated accuracy of classifiers trained on ``labels`` (an RBF
    SVM with C and gamma tuned by an inner 3-fold search, and 500 extra trees), and the 10-NN
    accuracy of the standardised features, on the same rows (upper figures: folds share kits)."""
    from sklearn.ensemble import ExtraTreesClassifier
    from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    X = np.asarray(X, dtype=np.float64)
    X = X[:, X.std(axis=0) > 1e-12]
    y = np.asarray(labels).astype(str)
    cv = StratifiedKFold(5, shuffle=True, random_state=seed)
    models = {
        "svm_rbf": GridSearchCV(make_pipeline(StandardScaler(), SVC()),
                                {"svc__C": [1, 10, 100], "svc__gamma": ["scale", 0.003, 0.01]}, cv=3),
        "extra_trees": ExtraTreesClassifier(500, random_state=seed, n_jobs=-1),
    }
    out = {name: float(cross_val_score(m, X, y, cv=cv).mean()) for name, m in models.items()}
    out["knn10_features"] = float(M.knn_accuracy(M.standardize(X), y))
    return out


# -- one library -------------------------------------------------------------------------------------
def _scores(Z: np.ndarray, labels, X: np.ndarray) -> dict:
    s = M.map_scores(Z, labels, X)
    return {"knn_accuracy": s["knn_accuracy"], "trustworthiness": s["trustworthiness"]}


def _summary(system: str, features: str, method: str, per_seed: list[dict], seconds: float) -> dict:
    acc = [r["knn_accuracy"] for r in per_seed]
    tw = [r["trustworthiness"] for r in per_seed if r["trustworthiness"] is not None]
    return {"system": system, "features": features, "map": method, "seeds": len(acc),
            "knn_accuracy": float(np.mean(acc)), "knn_min": float(np.min(acc)), "knn_max": float(np.max(acc)),
            "per_seed": [round(a, 4) for a in acc],
            "trustworthiness": float(np.mean(tw)) if tw else None, "seconds": seconds}


def rows_2017(library: Path, paths: list[str], labels: np.ndarray, seeds: list[int]) -> list[dict]:
    clips = load_clips(library, paths, 48000, 0.25)
    rows = []
    for fname, fn in FEATURES_2017.items():
        X = fn(clips)
        per: dict[str, list[dict]] = {}
        t = time.perf_counter()
        for s in seeds:
            for method, Z in maps_2017(X, s).items():
                per.setdefault(method, []).append(_scores(Z, labels, X))
        secs = (time.perf_counter() - t) / max(1, len(seeds))
        for method, got in per.items():
            rows.append(_summary("2017", fname, method, got, secs / 2))
            _say(f"  2017 {fname} {method}: {rows[-1]['knn_accuracy']:.3f} {rows[-1]['per_seed']}")
    return rows


def _map_rows(proj: Path, system: str, seeds: list[int], seconds: float) -> dict:
    """Score the project's default embedding (seed 0, as made) and re-embed it with the other seeds."""
    from klustr_gpu import embed
    from klustr_gpu.features import load
    from klustr_gpu.library.labels import manifest_labels
    from klustr_gpu.store import Project

    project = Project(proj)
    labels_by_file = manifest_labels(project)
    cfg = project.load_config()
    X = load(project, cfg.reduce.features).X
    per = []
    for s in seeds:
        name = project.default_embedding() if s == cfg.seed else f"seed{s}"
        if s != cfg.seed:
            embed(project, cfg.updated({"seed": s}), name=name, progress=False)
        df, _ = project.read_embedding(name)
        lab = np.array([labels_by_file.get(str(f)) for f in df["file_id"]], dtype=object)
        per.append(_scores(df[["x", "y"]].to_numpy(), lab, X))
    project.write_config(cfg)                     # embed wrote the last seed's config back
    desc = f"{cfg.reduce.method} " + (f"perplexity={cfg.reduce.perplexity:g}" if cfg.reduce.method == "tsne"
                                      else f"nn={cfg.reduce.n_neighbors} md={cfg.reduce.min_dist:g}")
    return _summary(system, f"{cfg.reduce.features} ({cfg.audio.clip_seconds:g} s clips)", desc, per, seconds)


def default_rows(library: Path, work: Path, seeds: list[int], *, previous: bool) -> tuple[list[dict], Path]:
    import klustr_gpu as kg

    rows = []
    runs = [("default `klustr map`", "default", None)]
    if previous:
        runs.append(("previous default (timbre, UMAP)", "previous", PREVIOUS_DEFAULT))
    for system, tag, overrides in runs:
        proj = work / tag
        shutil.rmtree(proj, ignore_errors=True)
        t = time.perf_counter()
        kg.map(library, proj, Config().updated(overrides) if overrides else None, labels=library / "labels.csv",
               progress=False)
        secs = time.perf_counter() - t
        rows.append(_map_rows(proj, system, seeds, secs))
        _say(f"  {system}: {rows[-1]['knn_accuracy']:.3f} {rows[-1]['per_seed']} ({secs:.0f} s)")
    return rows, work / "default"


def grid_row(proj: Path, features: list[str] | None, quick: bool) -> dict:
    from klustr_gpu import compute_features, grid
    from klustr_gpu.score.grid import component_sets, default_grid_sets

    cfg = Config.load(proj / "klustr.toml")
    sets = features or default_grid_sets(cfg)
    compute_features(proj, cfg, sets=sorted({s for fs in sets for s in component_sets(fs)}), progress=False)
    for old in (proj / "embeddings").glob("grid-*.parquet"):
        old.unlink()
    t = time.perf_counter()
    table = grid(proj, features=sets, quick=quick, progress=False).table
    secs = time.perf_counter() - t
    r = table.iloc[0]
    _say(f"  klustr grid: {len(table)} maps in {secs:.0f} s; best {r['knn_accuracy']:.3f} ({r['name']})")
    return {"system": "klustr grid (best map)", "features": str(r["features"]),
            "map": f"{r['method']} {r['params']}".strip(), "seeds": 1,
            "knn_accuracy": float(r["knn_accuracy"]), "knn_min": float(r["knn_accuracy"]),
            "knn_max": float(r["knn_accuracy"]), "per_seed": [round(float(r["knn_accuracy"]), 4)],
            "trustworthiness": None if pd.isna(r["trustworthiness"]) else float(r["trustworthiness"]),
            "seconds": secs, "runs": int(len(table)), "sets": sets}


def measure(name: str, library: Path, args) -> dict:
    df = pd.read_csv(library / "labels.csv")
    paths, labels = list(df["path"]), df["label"].to_numpy(dtype=object)
    _say(f"{name}: {len(paths)} files, {len(set(labels))} classes ({library})")
    work = args.work / name
    rows, proj = default_rows(library, work, args.seeds, previous=not args.no_previous)
    if not args.no_grid:
        rows.append(grid_row(proj, args.grid_features, args.quick))
    if not args.no_2017:
        rows += rows_2017(library, paths, labels, args.seeds)
    out = {"library": name, "path": str(library), "n_files": len(paths), "classes": int(len(set(labels))),
           "rows": rows}
    if args.ceiling:
        from klustr_gpu.features import load
        from klustr_gpu.library.labels import manifest_labels
        from klustr_gpu.store import Project

        t = load(Project(proj), Config.load(proj / "klustr.toml").reduce.features)
        by = manifest_labels(Project(proj))
        out["ceiling"] = label_ceiling(t.X, [by.get(str(f)) for f in t.file_ids])
    return out


# -- tables -----------------------------------------------------------------------------------------
def _acc(r: dict | None) -> str:
    if r is None:
        return "n/a"
    if r["seeds"] > 1:
        return f"{r['knn_accuracy']:.3f} ({r['knn_min']:.3f}–{r['knn_max']:.3f})"
    return f"{r['knn_accuracy']:.3f}"


def _tw(r: dict | None) -> str:
    return "n/a" if r is None or r.get("trustworthiness") is None else f"{r['trustworthiness']:.3f}"


def verdict(lib: dict) -> dict:
    rows = lib["rows"]
    d = next(r for r in rows if r["system"].startswith("default"))
    r17 = [r for r in rows if r["system"] == "2017"]
    best = max(r17, key=lambda r: r["knn_accuracy"]) if r17 else None
    grid = next((r for r in rows if r["system"].startswith("klustr grid")), None)
    prev = next((r for r in rows if r["system"].startswith("previous")), None)
    target = None if best is None else min(1.0, best["knn_accuracy"] + MARGIN)
    tw17 = None if best is None else best["trustworthiness"]
    return {"default": d, "best_2017": best, "grid": grid, "previous": prev, "target": target,
            "met": None if target is None else bool(d["knn_accuracy"] >= target - 1e-9),
            "trust_met": None if tw17 is None else bool((d["trustworthiness"] or 0) >= tw17)}


def markdown(libs: list[dict]) -> str:
    head = ["library", "default map, 10-NN (seeds 0–2)", "trust", "previous default", "best `klustr grid` map",
            "best 2017 map (seeds 0–2)", "trust", "goal (2017 + 0.03)", "met"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for lib in libs:
        v = verdict(lib)
        b = v["best_2017"]
        lines.append(" | ".join([
            f"| {lib['library']} ({lib['n_files']} files, {lib['classes']} classes)", _acc(v["default"]),
            _tw(v["default"]), _acc(v["previous"]),
            "n/a" if v["grid"] is None else f"{_acc(v['grid'])} ({v['grid']['features']} {v['grid']['map']})",
            "n/a" if b is None else f"{_acc(b)} ({b['features']} {b['map'].split(' ')[0]})", _tw(b),
            "n/a" if v["target"] is None else f"{v['target']:.3f}",
            "n/a" if v["met"] is None else ("**yes**" if v["met"] else f"**no** ({v['default']['knn_accuracy'] - v['target']:+.3f})"),
        ]) + " |")
    lines += ["", "Every map:", "", "| library | system | features | map | 10-NN (mean, min–max) | trust | seconds |",
              "|---|---|---|---|---|---|---|"]
    for lib in libs:
        for r in lib["rows"]:
            lines.append(f"| {lib['library']} | {r['system']} | {r['features']} | {r['map']} | {_acc(r)} | "
                         f"{_tw(r)} | {r['seconds']:.1f} |")
    return "\n".join(lines)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--libraries", default=",".join(LIBRARIES), help=f"comma list of {', '.join(LIBRARIES)}")
    ap.add_argument("--seeds", default="0,1,2", help="seeds of the default map and of the 2017 maps")
    ap.add_argument("--grid-features", default=None,
                    help="feature sets (and a+b combinations) for the grid (default: what the grid covers)")
    ap.add_argument("--work", type=Path, default=OUT / "quality", help="project folders (rebuilt each run)")
    ap.add_argument("--no-grid", action="store_true")
    ap.add_argument("--no-2017", action="store_true")
    ap.add_argument("--no-previous", action="store_true", help="skip the previous default (timbre + UMAP)")
    ap.add_argument("--ceiling", action="store_true", help="also train classifiers on the labels (what they allow)")
    ap.add_argument("--quick", action="store_true", help="the grid's quick plan (a smoke test, not the benchmark)")
    args = ap.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.grid_features = [s for s in args.grid_features.split(",") if s] if args.grid_features else None
    OUT.mkdir(parents=True, exist_ok=True)
    libs, missing = [], []
    t0 = time.perf_counter()
    for name in [s for s in args.libraries.split(",") if s]:
        if name not in LIBRARIES:
            print(f"unknown library {name!r}; choose from {', '.join(LIBRARIES)}", file=sys.stderr)
            return 2
        path = LIBRARIES[name]
        if name == "demo" and not (path / "labels.csv").exists():
            from klustr_gpu.library.democorpus import demo_corpus

            demo_corpus(path, n=2000, seed=0, progress=False)
        if not (path / "labels.csv").exists():
            missing.append(f"{name} ({path}: labels.csv missing)")
            continue
        libs.append(measure(name, path, args))
    md = markdown(libs)
    if missing:
        md += "\n\nNot measured (library missing): " + "; ".join(missing)
    summary = {"libraries": libs, "verdicts": {lib["library"]: verdict(lib) for lib in libs},
               "seconds": time.perf_counter() - t0, "missing": missing,
               "command": "python benchmarks/quality.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    from klustr_gpu.results import plain as json_clean

    (OUT / "quality.json").write_text(json.dumps(json_clean(summary), indent=2) + "\n")
    (OUT / "quality.md").write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
