"""Map quality on the real Hydrogen drum corpus: `klustr grid` against the 2017 klustr pipeline.

Measured by one piece of code (klustr_gpu.score.metrics) in one run:

* **2017**: librosa features at 48 kHz on 0.25 s clips, as in the klustr notebooks: 30 MFCCs as
  a flattened (coefficient x frame) grid, and the 32 x 32 STFT fingerprint; scikit-learn t-SNE
  (perplexity 50) on each, and umap-learn after PCA to 14 components (n_neighbors 15,
  min_dist 0.01, correlation metric) on each: four maps.
* **klustr grid**: the whole default grid (the default feature set of `klustr features`, the
  torch ``timbre`` set, x UMAP 4 x 4 x t-SNE 4 x PCA = 21 maps; ``--features`` for others, e.g.
  ``timbre,mfcc,stft,mir,mel``) on a project scanned from the library, timed, and its best map by
  10-NN accuracy.
* **numpy reference** (``--no-reference`` skips it): the same default grid on the librosa recipe
  the ``timbre`` set implements (:func:`segment_mfcc`), with what the torch set leaves out: decay
  times from up to 4 s of the file rather than the clip, and the file's log duration.
* **what the labels allow** (``--no-ceiling`` skips it): supervised classifiers *trained on the
  labels* (an RBF SVM with C and gamma tuned by an inner 3-fold search, and extra trees), 5-fold
  stratified cross-validated accuracy on each feature set, beside its 10-NN accuracy in feature
  space and its best map's (:func:`label_ceiling`): how much of the labels the features hold at
  all, so a map's score can be read against it.

Writes ``benchmarks/out/quality.json`` and ``benchmarks/out/quality.md`` and prints the table::

    .venv/bin/python benchmarks/quality.py                    # ~/.cache/klustr_gpu/hydrogen/library
    .venv/bin/python benchmarks/quality.py --library DIR --features mfcc,stft
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from klustr_gpu.config import Config  # noqa: E402
from klustr_gpu import grid  # noqa: E402
from klustr_gpu.score import grid_arrays, metrics as M  # noqa: E402
from klustr_gpu.score.scoring import MAP_KEYS  # noqa: E402

DEFAULT_LIBRARY = Path(os.environ.get("KLUSTR_HYDROGEN", Path.home() / ".cache" / "klustr_gpu" / "hydrogen")) / "library"
OUT = REPO / "benchmarks" / "out"


# -- audio ---------------------------------------------------------------------------------------
def load_clips(library: Path, paths: list[str], sr: int, seconds: float, *, full_seconds: float = 0.0):
    """Mono clips ``[n, sr * seconds]`` peak-normalised, zero-padded; and each file's duration (s).

    With ``full_seconds`` > ``seconds``, also return clips that long (for decay-time features).
    """
    import librosa
    import soundfile as sf

    n = int(round(sr * max(seconds, full_seconds)))
    out = np.zeros((len(paths), n), dtype=np.float32)
    durations = np.zeros(len(paths))
    for i, rel in enumerate(paths):
        y, s = sf.read(library / rel, dtype="float32", always_2d=True)
        durations[i] = len(y) / s
        y = y.mean(axis=1)[: int(s * max(seconds, full_seconds)) + 1]
        if s != sr:
            y = librosa.resample(y, orig_sr=s, target_sr=sr)
        y = y[:n]
        out[i, : len(y)] = y / (np.abs(y).max() + 1e-9)
    return out, durations


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


def maps_2017(X: np.ndarray, seed: int = 0) -> dict[str, tuple[np.ndarray, float]]:
    """The two 2017 maps of one feature set: ``{name: (map, seconds)}``."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    import umap

    out = {}
    t = time.perf_counter()
    Z = TSNE(n_components=2, perplexity=50, random_state=seed).fit_transform(X)
    out["tsne perplexity=50"] = (Z, time.perf_counter() - t)
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Xp = PCA(14, random_state=seed).fit_transform(X)
        Z = umap.UMAP(n_neighbors=15, min_dist=0.01, metric="correlation", random_state=seed).fit_transform(Xp)
    out["umap pca=14 nn=15 md=0.01 correlation"] = (Z, time.perf_counter() - t)
    return out


# -- the numpy reference of the timbre set -----------------------------------------------------------
SEGMENTS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.5)


def segment_mfcc(clips: np.ndarray, durations: np.ndarray, long_clips: np.ndarray, *, sr: int = 22050,
                 n_fft: int = 1024, hop: int = 128, n_mels: int = 128, n_mfcc: int = 20, floor_db: float = 60.0,
                 segments=SEGMENTS) -> np.ndarray:
    """Onset-segment MFCCs plus decay times: ``[n, n_mfcc * (len(segments) - 1) + 5]``.

    MFCCs (128 mel bands, hop 128 at 22.05 kHz) of the log-mel spectrogram *relative to the
    clip's peak and floored at -60 dB*, averaged over the segments 0-20, 20-50, 50-100,
    100-200 and 200-500 ms after the start: the attack and the decay are described separately
    (whole-clip mean/std mixes them), and quiet tails no longer dominate the cepstrum. Plus the
    log of the times the RMS envelope takes to fall 10, 20, 40 and 60 dB below its peak (from up
    to 4 s of the file) and the log of the file's duration.
    """
    import librosa

    S = np.abs(librosa.stft(clips, n_fft=n_fft, hop_length=hop)) ** 2
    t = librosa.frames_to_time(np.arange(S.shape[-1]), sr=sr, hop_length=hop)
    # top_db=None: librosa's 80 dB floor is taken over the whole array (the batch); ours is per clip
    lm = librosa.power_to_db(librosa.feature.melspectrogram(S=S, sr=sr, n_mels=n_mels) + 1e-10, top_db=None)
    lm = np.maximum(lm - lm.max(axis=(1, 2), keepdims=True), -floor_db)
    mf = librosa.feature.mfcc(S=lm, n_mfcc=n_mfcc)
    seg = np.concatenate([mf[..., (t >= a) & (t < b)].mean(-1) for a, b in zip(segments[:-1], segments[1:])], 1)
    return np.concatenate([seg, decay_times(long_clips, durations, sr=sr)], axis=1).astype(np.float32)


def decay_times(clips: np.ndarray, durations: np.ndarray, *, sr: int = 22050, hop: int = 256,
                drops=(10, 20, 40, 60)) -> np.ndarray:
    import librosa

    rms = librosa.feature.rms(y=clips, frame_length=1024, hop_length=hop)[:, 0]
    db = 20 * np.log10(rms + 1e-9)
    db -= db.max(axis=1, keepdims=True)
    tt = np.arange(db.shape[1]) * hop / sr
    peak = db.argmax(axis=1)
    cols = []
    for th in drops:
        col = np.empty(len(db))
        for i in range(len(db)):
            below = np.flatnonzero(db[i, peak[i]:] < -th)
            col[i] = tt[peak[i] + below[0]] if len(below) else tt[-1] + 0.1
        cols.append(np.log(col + 1e-3))
    cols.append(np.log(np.maximum(durations, 1e-3)))
    return np.stack(cols, axis=1)


# -- what the labels allow ---------------------------------------------------------------------------
def label_ceiling(X: np.ndarray, labels, *, seed: int = 0) -> dict[str, float]:
    """5-fold stratified cross-validated accuracy of classifiers trained on ``labels``, and the
    leave-one-out 10-NN accuracy of the standardised features, on the same rows.

    The folds share kits (the kits' velocity layers fall on both sides), so these are upper
    figures for what a classifier learns from the features, not what it would do on a new kit.
    """
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


def ceiling_markdown(rows: list[dict]) -> str:
    head = ["features", "dim", "RBF SVM (trained)", "extra trees (trained)",
            "10-NN in feature space", "best map 10-NN"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        best = r.get("best_map")
        lines.append(f"| {r['features']} | {r['dim']} | {r['svm_rbf']:.3f} | {r['extra_trees']:.3f} | "
                     f"{r['knn10_features']:.3f} | "
                     f"{'n/a' if best is None else f'{best:.3f}'} |")
    return "\n".join(lines)


# -- the benchmark -----------------------------------------------------------------------------------
def project_for(library: Path, project: Path, sets: list[str]) -> Path:
    from klustr_gpu import compute_features, scan

    if not (project / "manifest.parquet").exists():
        scan(library, project, labels=library / "labels.csv", progress=False)
    compute_features(project, sets=sets, progress=False)
    return project


def _row(system: str, features: str, method: str, Z: np.ndarray, X: np.ndarray, labels, seconds: float,
         feat_acc: float | None) -> dict:
    s = M.map_scores(Z, labels, X)
    return {"system": system, "features": features, "map": method, **s, "knn_accuracy_features": feat_acc,
            "seconds": seconds}


def _best(system: str, features: str, table: pd.DataFrame, seconds: float, feat_acc: float | None) -> dict:
    r = table.iloc[0]
    return {"system": system, "features": features, "map": f"{r['method']} {r['params']}".strip(),
            **{k: (None if pd.isna(r[k]) else float(r[k])) for k in MAP_KEYS},
            "knn_accuracy_features": feat_acc, "seconds": seconds, "runs": int(len(table))}


def markdown(rows: list[dict]) -> str:
    cols = ["system", "features", "map", "knn_accuracy", "trustworthiness", "knn_preservation", "silhouette",
            "roundness", "overlap_2017", "final_2017", "knn_accuracy_features", "seconds"]
    head = ["system", "features", "map", "10-NN acc", "trust", "10-NN pres", "silh", "round", "overlap (2017)",
            "final (2017)", "10-NN acc (features)", "seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            cells.append("n/a" if v is None else (f"{v:.1f}" if c == "seconds" else f"{v:.3f}") if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--library", type=Path, default=DEFAULT_LIBRARY)
    # the cached project is keyed by the default config, so a changed default is never measured
    # with features computed under an older one
    ap.add_argument("--project", type=Path, default=OUT / f"hydrogen_project-{Config().section_hash('audio', 'features')}")
    ap.add_argument("--features", default=",".join(Config().features.sets),
                    help="feature sets for the project grid (default: the default config's, timbre)")
    ap.add_argument("--no-reference", action="store_true", help="skip the numpy reference grid")
    ap.add_argument("--no-ceiling", action="store_true", help="skip the supervised classifiers (what the labels allow)")
    ap.add_argument("--quick", action="store_true", help="quick grids (a smoke test, not the benchmark)")
    args = ap.parse_args(argv)
    if not (args.library / "labels.csv").exists():
        print(f"no Hydrogen library at {args.library} (labels.csv missing)", file=sys.stderr)
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    labels_df = pd.read_csv(args.library / "labels.csv")
    paths, labels = list(labels_df["path"]), labels_df["label"].to_numpy(dtype=object)
    rows: list[dict] = []
    matrices: list[tuple[str, np.ndarray, np.ndarray, float]] = []    # (features, X, labels, best map 10-NN)

    # 2017
    clips48, _ = load_clips(args.library, paths, 48000, 0.25)
    for fname, X in (("mfcc grid (2017)", mfcc_grid_2017(clips48)), ("stft fingerprint (2017)", stft_fingerprint_2017(clips48))):
        acc = M.knn_accuracy(M.standardize(X), labels)
        for method, (Z, secs) in maps_2017(X).items():
            rows.append(_row("2017", fname, method, Z, X, labels, secs, acc))
            print(f"2017 {fname} {method}: 10-NN {rows[-1]['knn_accuracy']:.3f}", file=sys.stderr)
        matrices.append((fname, X, labels, max(r["knn_accuracy"] for r in rows if r["features"] == fname)))

    # klustr grid on the project's features
    sets = [s for s in args.features.split(",") if s]
    proj = project_for(args.library, args.project, sets)
    # time a whole grid: maps an earlier run left would be reused (the grid resumes a killed run)
    for old in (proj / "embeddings").glob("grid-*.parquet"):
        old.unlink()
    t = time.perf_counter()
    table = grid(proj, features=sets, quick=args.quick, progress=False).table
    grid_seconds = time.perf_counter() - t
    scores = json.loads((proj / "scores.json").read_text())
    best_fs = table.iloc[0]["features"]
    facc = scores["features"][best_fs]["scores"]["knn_accuracy_features"]
    rows.append(_best("klustr grid (best of the whole grid)", f"{best_fs} (klustr features, torch, default config)",
                      table, grid_seconds, facc))
    print(f"klustr grid: {len(table)} maps in {grid_seconds:.1f} s; best 10-NN {table.iloc[0]['knn_accuracy']:.3f}",
          file=sys.stderr)
    matrices.append((f"{best_fs} (klustr)", *_project_matrix(proj, best_fs), float(table.iloc[0]["knn_accuracy"])))

    # the numpy/librosa reference of the timbre set, with 4 s decays and the file's duration
    if not args.no_reference:
        t = time.perf_counter()
        clips22, durations = load_clips(args.library, paths, 22050, 0.5, full_seconds=4.0)
        X = segment_mfcc(clips22[:, : int(0.5 * 22050)], durations, clips22)
        feat_seconds = time.perf_counter() - t
        t = time.perf_counter()
        ptable, _ = grid_arrays(X, labels, name="segmfcc", quick=args.quick)
        psecs = time.perf_counter() - t
        rows.append(_best("grid on numpy reference", "segment MFCC + 4 s decay + duration (librosa)",
                          ptable, psecs, M.knn_accuracy(M.standardize(X), labels)))
        rows[-1]["feature_seconds"] = feat_seconds
        print(f"numpy reference: {len(ptable)} maps in {psecs:.1f} s; best 10-NN {ptable.iloc[0]['knn_accuracy']:.3f}",
              file=sys.stderr)
        matrices.append(("segment MFCC + 4 s decay + duration (librosa)", X, labels, float(ptable.iloc[0]["knn_accuracy"])))

    ceiling: list[dict] = []
    if not args.no_ceiling:
        t = time.perf_counter()
        for fname, X, lab, best in matrices:
            ceiling.append({"features": fname, "dim": int(X.shape[1]), **label_ceiling(X, lab), "best_map": best})
        print(f"what the labels allow: {len(ceiling)} feature sets in {time.perf_counter() - t:.1f} s", file=sys.stderr)

    r2017 = max((r for r in rows if r["system"] == "2017"), key=lambda r: r["knn_accuracy"])
    ours = [r for r in rows if r["system"] != "2017"]
    checks = []
    for r in ours:
        checks.append(f"- {r['features']}: best 10-NN accuracy {r['knn_accuracy']:.3f} "
                      f"({'meets' if r['knn_accuracy'] >= 0.90 else 'misses'} the 0.90 goal; best 2017 map "
                      f"{r2017['knn_accuracy']:.3f}), trustworthiness {r['trustworthiness']:.3f} vs "
                      f"{r2017['trustworthiness']:.3f} for the best 2017 map "
                      f"({'not lower' if r['trustworthiness'] >= r2017['trustworthiness'] else 'LOWER'}), "
                      f"2017 final score {r['final_2017']:.3f} vs {r2017['final_2017']:.3f}; "
                      f"{r.get('runs', 0)} maps in {r['seconds']:.0f} s "
                      f"({'under' if r['seconds'] < 600 else 'OVER'} 10 minutes)")
    summary = {"n_files": len(paths), "classes": sorted(set(labels)), "grid_seconds": grid_seconds,
               "best_2017": r2017, "checks": checks, "rows": rows, "ceiling": ceiling,
               "command": "python benchmarks/quality.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    md = markdown(rows) + "\n\n" + "\n".join(checks)
    if ceiling:
        md += ("\n\nWhat the labels allow (5-fold stratified CV accuracy of classifiers trained on the labels, "
               "beside the unsupervised 10-NN accuracies):\n\n" + ceiling_markdown(ceiling))
    (OUT / "quality.json").write_text(json.dumps(M_clean(summary), indent=2) + "\n")
    (OUT / "quality.md").write_text(md + "\n")
    print(md)
    return 0


def _project_matrix(proj: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The project's feature rows of set ``name`` and their labels (unlabelled rows dropped)."""
    from klustr_gpu.features import load
    from klustr_gpu.library.labels import manifest_labels
    from klustr_gpu.store import Project

    table = load(proj, name)
    by_file = manifest_labels(Project(proj))
    lab = np.array([by_file.get(f) for f in table.file_ids], dtype=object)
    keep = np.array([v is not None for v in lab], dtype=bool)
    return table.X[keep], lab[keep]


def M_clean(obj):
    from klustr_gpu.results import plain as json_clean

    return json_clean(obj)


if __name__ == "__main__":
    raise SystemExit(main())
