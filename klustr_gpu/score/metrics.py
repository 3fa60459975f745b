"""Map-quality metrics: pure functions on arrays.

Shapes: ``Z`` is a 2-D map ``[shape=(n, 2)]``, ``X`` the features it was made from
``[shape=(n, d)]``, ``labels`` one label per row ``[shape=(n,)]`` (strings or ints; ``None`` /
NaN / ``""`` means unlabelled, and such rows are left out of the label scores).

Every function returns a ``float`` or ``None`` when the score is *not defined* for the input
(no labels, a single point, ...); none raises on such input. The functions that can explain
a ``None`` (or a partial score) take an optional ``notes`` list and append one line to it.

The 2017 scores (Hantrakul & Sarwate, *klustr*)
    * :func:`silhouette` of the map against the labels;
    * :func:`roundness`: mean over classes of the Polsby–Popper ratio 4πA/P² of each class's
      convex hull (1 for a disc, π/4 for a square, 0 for a segment);
    * :func:`overlap_2017`: T/(S+T), T the hull area of all points, S the sum of the class hulls'
      areas. It rewards small class hulls more than separated ones, so it is reported as the
      2017 score, never used for ranking;
    * :func:`final_2017` = silhouette + roundness + overlap.

Ours
    * :func:`knn_accuracy`: leave-one-out majority vote of the k = 10 nearest neighbours, in the
      map or in feature space;
    * :func:`kmeans_scores`: k-means on the features with k = number of classes, homogeneity,
      completeness and V-measure against the labels;
    * label-free :func:`trustworthiness` and :func:`knn_preservation` (k = 10), computed on a
      fixed-size random sample of a large map (:func:`sample_indices`).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from ..library.labels import is_missing
from ..runtime import torch_device

__all__ = [
    "clean_labels", "sample_indices", "standardize",
    "silhouette", "polsby_popper", "class_hulls", "roundness", "overlap_2017", "final_2017",
    "knn_accuracy", "kmeans_scores", "trustworthiness", "knn_preservation",
    "map_scores", "feature_scores",
]

K_DEFAULT = 10


# -- helpers ------------------------------------------------------------------------------------
def _note(notes: list[str] | None, text: str) -> None:
    if notes is not None and text not in notes:
        notes.append(text)


def clean_labels(labels: Sequence[Any] | None, n: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``(codes [n] int64 with -1 for unlabelled, class names)``, or ``None`` without labels."""
    if labels is None:
        return None
    arr = np.asarray(labels, dtype=object)
    if arr.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {arr.shape}")
    missing = np.array([is_missing(v) for v in arr], dtype=bool)
    if missing.all():
        return None
    names, codes = np.unique(arr[~missing].astype(str), return_inverse=True)
    out = np.full(n, -1, dtype=np.int64)
    out[~missing] = codes
    return out, names


def sample_indices(n: int, size: int | None, seed: int = 0) -> np.ndarray:
    """Sorted indices of a fixed-size random sample (all of ``range(n)`` when ``n <= size``)."""
    if size is None or size <= 0 or n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def standardize(X: np.ndarray) -> np.ndarray:
    """Columns to zero mean and unit variance (constant columns to zero), float64."""
    X = np.asarray(X, dtype=np.float64)
    if len(X) == 0:
        return X.copy()
    X = X - X.mean(axis=0)
    sd = X.std(axis=0)
    sd[sd == 0] = 1.0
    return X / sd


def _finite_rows(*arrays: np.ndarray) -> np.ndarray:
    ok = np.ones(len(arrays[0]), dtype=bool)
    for a in arrays:
        ok &= np.isfinite(np.asarray(a, dtype=np.float64)).all(axis=1)
    return ok


def _labelled(Z: np.ndarray, labels, notes) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Rows with a label: ``(Z_rows, codes, names)``, codes renumbered 0..c-1."""
    Z = np.asarray(Z, dtype=np.float64)
    lab = clean_labels(labels, len(Z))
    if lab is None:
        _note(notes, "no labels: label scores not defined")
        return None
    codes, names = lab
    keep = codes >= 0
    if not keep.all():
        _note(notes, f"{int((~keep).sum())} unlabelled points left out of the label scores")
    used, codes = np.unique(codes[keep], return_inverse=True)
    return Z[keep], codes, names[used]


# -- the 2017 scores ----------------------------------------------------------------------------
def silhouette(Z: np.ndarray, labels, *, sample: int | None = 10000, seed: int = 0,
               notes: list[str] | None = None) -> float | None:
    """Silhouette of the map against the labels (Euclidean), on a sample of a large map.

    Not defined (``None``) with fewer than 2 classes or fewer classes than points allow.
    """
    from sklearn.metrics import silhouette_score

    got = _labelled(Z, labels, notes)
    if got is None:
        return None
    Z, codes, _ = got
    idx = sample_indices(len(Z), sample, seed)
    Z, codes = Z[idx], codes[idx]
    n_classes = len(np.unique(codes))
    if n_classes < 2 or n_classes > len(Z) - 1:
        _note(notes, f"silhouette not defined for {n_classes} class(es) over {len(Z)} points")
        return None
    return float(silhouette_score(Z, codes, metric="euclidean"))


def polsby_popper(area: float, perimeter: float) -> float | None:
    """4πA/P²: 1 for a disc, π/4 for a square, 0 for a segment; ``None`` for a point."""
    if perimeter <= 0:
        return None
    return float(4.0 * math.pi * area / perimeter ** 2)


def _hull(points: np.ndarray):
    import shapely

    return shapely.MultiPoint(np.asarray(points, dtype=np.float64)).convex_hull


def class_hulls(Z: np.ndarray, labels, *, notes: list[str] | None = None) -> dict[str, tuple[float, float]] | None:
    """``{class: (hull area, hull perimeter)}`` for every class with at least 3 points.

    Classes with fewer than 3 points have no hull and are left out (with a note); collinear
    classes have a degenerate hull of area 0.
    """
    got = _labelled(Z, labels, notes)
    if got is None:
        return None
    Z, codes, names = got
    out = {}
    for c, name in enumerate(names):
        pts = Z[codes == c]
        if len(pts) < 3:
            _note(notes, f"class {str(name)!r} has {len(pts)} point(s): no hull, left out of roundness/overlap")
            continue
        hull = _hull(pts)
        area = float(hull.area)
        if area == 0.0:
            _note(notes, f"class {str(name)!r} is collinear in the map: degenerate hull (area 0, roundness 0)")
        out[str(name)] = (area, float(hull.length))
    return out


def roundness(Z: np.ndarray, labels, *, notes: list[str] | None = None) -> float | None:
    """Mean over classes of the Polsby–Popper ratio of each class's convex hull.

    Classes without a hull (< 3 points) are left out; ``None`` if no class has one.
    """
    hulls = class_hulls(Z, labels, notes=notes)
    if not hulls:
        if hulls is not None:
            _note(notes, "roundness not defined: no class has 3 or more points")
        return None
    vals = [polsby_popper(a, p) for a, p in hulls.values()]
    vals = [v for v in vals if v is not None]
    if not vals:
        _note(notes, "roundness not defined: every class hull is a single point")
        return None
    return float(np.mean(vals))


def overlap_2017(Z: np.ndarray, labels, *, notes: list[str] | None = None) -> float | None:
    """The 2017 "overlap" T/(S+T): T the hull area of all labelled points, S the sum of class hull areas.

    Classes without a hull contribute area 0. 0.5 for a single class. ``None`` when the whole
    map has zero area (all points collinear) or there are no labels.
    """
    hulls = class_hulls(Z, labels, notes=notes)
    if hulls is None:
        return None
    got = _labelled(Z, labels, None)
    Zl = got[0]
    if len(Zl) < 3:
        _note(notes, "overlap not defined: fewer than 3 labelled points")
        return None
    total = float(_hull(Zl).area)
    s = float(sum(a for a, _ in hulls.values()))
    if total == 0.0:
        _note(notes, "overlap not defined: the map's points are collinear (hull area 0)")
        return None
    return total / (s + total)


def final_2017(sil: float | None, rnd: float | None, ovl: float | None) -> float | None:
    """The 2017 final score: silhouette + roundness + overlap (``None`` if any is undefined)."""
    if sil is None or rnd is None or ovl is None:
        return None
    return float(sil + rnd + ovl)


# -- neighbour scores ----------------------------------------------------------------------------
def _neighbours(X: np.ndarray, k: int, queries: np.ndarray | None = None) -> np.ndarray:
    """Indices ``[len(queries), k]`` of each query row's k nearest other rows of ``X`` (Euclidean).

    The query point itself is removed by index (so exact duplicates still count as neighbours).
    """
    from sklearn.neighbors import NearestNeighbors

    X = np.asarray(X, dtype=np.float64)
    q = np.arange(len(X)) if queries is None else np.asarray(queries)
    nn = NearestNeighbors(n_neighbors=min(k + 1, len(X))).fit(X)
    ind = nn.kneighbors(X[q], return_distance=False)
    out = np.empty((len(q), k), dtype=np.int64)
    for r, (i, row) in enumerate(zip(q, ind)):
        row = row[row != i]
        out[r] = row[:k]
    return out


def knn_accuracy(Z: np.ndarray, labels, *, k: int = K_DEFAULT, sample: int | None = None, seed: int = 0,
                 notes: list[str] | None = None) -> float | None:
    """Leave-one-out k-NN label accuracy: the share of points whose label wins the majority vote
    of their k nearest other points (ties go to the tied label met first, i.e. nearest).

    Works in the 2-D map or in feature space (any ``[n, d]``). Only labelled points vote and are
    scored. With ``sample``, a random subset of the points is scored (against all points).
    ``None`` with fewer than 2 labelled points.
    """
    got = _labelled(Z, labels, notes)
    if got is None:
        return None
    Z, codes, _ = got
    n = len(Z)
    if n < 2:
        _note(notes, "knn accuracy not defined: fewer than 2 labelled points")
        return None
    k = min(k, n - 1)
    q = sample_indices(n, sample, seed)
    nb = _neighbours(Z, k, q)
    votes = codes[nb]                                   # [q, k], nearest first
    n_classes = int(codes.max()) + 1
    counts = np.zeros((len(q), n_classes), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(len(q)), k), votes.ravel()), 1)
    best = counts.max(axis=1, keepdims=True)
    tied = counts[np.arange(len(q))[:, None], votes] == best    # which votes are for a winning label
    pred = votes[np.arange(len(q)), tied.argmax(axis=1)]       # first (nearest) winning vote
    return float(np.mean(pred == codes[q]))


def kmeans_scores(X: np.ndarray, labels, *, seed: int = 0, sample: int | None = 20000,
                  notes: list[str] | None = None) -> dict[str, float] | None:
    """k-means on ``X`` (standardised) with k = number of classes, against the labels:
    ``{"homogeneity", "completeness", "v_measure"}``; ``None`` without labels.

    A single class gives k = 1, for which all three are 1 by definition.
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import homogeneity_completeness_v_measure

    got = _labelled(X, labels, notes)
    if got is None:
        return None
    X, codes, names = got
    idx = sample_indices(len(X), sample, seed)
    X, codes = standardize(X[idx]), codes[idx]
    k = len(np.unique(codes))
    if k == 1:
        _note(notes, "single class: k-means scores are 1 by definition")
        return {"homogeneity": 1.0, "completeness": 1.0, "v_measure": 1.0}
    n_distinct = len(np.unique(X, axis=0))
    k_fit = min(k, n_distinct)
    if k_fit < k:
        _note(notes, f"only {n_distinct} distinct feature rows: k-means with k={k_fit} instead of {k}")
    pred = KMeans(n_clusters=k_fit, n_init=4, random_state=seed).fit_predict(X)
    h, c, v = homogeneity_completeness_v_measure(codes, pred)
    return {"homogeneity": float(h), "completeness": float(c), "v_measure": float(v)}


def _rank_of(X: np.ndarray, rows: np.ndarray, targets: np.ndarray, chunk: int = 512) -> np.ndarray:
    """For each row i and target j (``targets [n, k]``): 1-based rank of j among the distances from
    i to every other point of ``X`` (Euclidean; ties in index order, as scikit-learn's argsort).

    Torch, in float64, on the GPU when there is one; O(chunk * n) memory."""
    import torch

    dev = torch_device("auto")          # the O(n^2) rank counting runs on a GPU when there is one
    T = torch.as_tensor(np.asarray(X, dtype=np.float64), device=dev)
    sq = (T * T).sum(dim=1)
    tg = torch.as_tensor(np.asarray(targets, dtype=np.int64), device=dev)
    ranks = np.empty(targets.shape, dtype=np.int64)
    for s in range(0, len(rows), chunk):
        r = torch.as_tensor(np.asarray(rows[s:s + chunk], dtype=np.int64), device=dev)
        d = sq[r, None] + sq[None, :] - 2.0 * (T[r] @ T.T)          # [c, n] squared distances
        d[torch.arange(len(r), device=dev), r] = -float("inf")       # self is not ranked
        order = torch.argsort(d, dim=1, stable=True)                 # self first
        pos = torch.empty_like(order)
        pos.scatter_(1, order, torch.arange(d.shape[1], device=dev).expand_as(order).contiguous())
        ranks[s:s + chunk] = torch.gather(pos, 1, tg[s:s + chunk]).cpu().numpy()   # 1-based without self
    return ranks


def trustworthiness(X: np.ndarray, Z: np.ndarray, *, k: int = K_DEFAULT, sample: int | None = 10000,
                    seed: int = 0, notes: list[str] | None = None) -> float | None:
    """Trustworthiness (Venna & Kaski) of the map ``Z`` for the features ``X``, in [0, 1].

    1 − 2/(n k (2n − 3k − 1)) Σ_i Σ_{j ∈ U_i} (r(i, j) − k), with U_i the map neighbours of i that
    are not among its k nearest in feature space and r their feature-space rank; the same value
    as :func:`sklearn.manifold.trustworthiness`, but in O(chunk·n) memory. On a fixed-size random
    sample (``sample`` points) of a large map. ``None`` when k ≥ n/2.
    """
    X = np.asarray(X, dtype=np.float64)
    Z = np.asarray(Z, dtype=np.float64)
    idx = sample_indices(len(X), sample, seed)
    X, Z = X[idx], Z[idx]
    n = len(X)
    if k >= n / 2:
        _note(notes, f"trustworthiness not defined for k={k} with {n} points (needs k < n/2)")
        return None
    nz = _neighbours(Z, k)
    ranks = _rank_of(X, np.arange(n), nz)
    pen = np.clip(ranks - k, 0, None).sum()
    return float(1.0 - 2.0 / (n * k * (2.0 * n - 3.0 * k - 1.0)) * pen)


def knn_preservation(X: np.ndarray, Z: np.ndarray, *, k: int = K_DEFAULT, sample: int | None = 10000,
                     seed: int = 0, notes: list[str] | None = None) -> float | None:
    """Mean share of each point's k nearest neighbours in feature space that are also among its k
    nearest in the map (1 = every neighbourhood kept), on a fixed-size sample of a large map."""
    X = np.asarray(X, dtype=np.float64)
    Z = np.asarray(Z, dtype=np.float64)
    idx = sample_indices(len(X), sample, seed)
    X, Z = X[idx], Z[idx]
    n = len(X)
    if n < k + 1:
        _note(notes, f"knn preservation not defined for k={k} with {n} points")
        return None
    a, b = _neighbours(X, k), _neighbours(Z, k)
    a.sort(axis=1)
    b.sort(axis=1)
    hits = sum(len(np.intersect1d(r, s, assume_unique=True)) for r, s in zip(a, b))
    return float(hits / (n * k))


# -- bundles -------------------------------------------------------------------------------------
def feature_scores(X: np.ndarray, labels, *, k: int = K_DEFAULT, seed: int = 0, sample: int | None = 10000,
                   notes: list[str] | None = None) -> dict[str, float | None]:
    """Scores of the feature space alone (shared by every map of one feature set):
    k-means homogeneity / completeness / V-measure and k-NN accuracy, on standardised ``X``.
    Above ``sample`` points, the k-NN vote runs within a fixed random sample (neighbour search
    in many dimensions over every point would dominate the cost)."""
    Xs = standardize(X)
    km = kmeans_scores(Xs, labels, seed=seed, notes=notes) or {}
    idx = sample_indices(len(Xs), sample, seed)           # high-dimensional: votes within the sample
    lab = None if labels is None else np.asarray(labels, dtype=object)[idx]
    return {
        "kmeans_homogeneity": km.get("homogeneity"),
        "kmeans_completeness": km.get("completeness"),
        "kmeans_v_measure": km.get("v_measure"),
        "knn_accuracy_features": knn_accuracy(Xs[idx], lab, k=k, notes=notes),
    }


def map_scores(Z: np.ndarray, labels=None, X: np.ndarray | None = None, *, k: int = K_DEFAULT,
               sample: int | None = 10000, seed: int = 0, notes: list[str] | None = None) -> dict[str, float | None]:
    """Every score of one map: the 2017 scores and k-NN accuracy (with labels), trustworthiness and
    k-NN preservation against standardised ``X`` (when given). Undefined scores are ``None``."""
    Z = np.asarray(Z, dtype=np.float64)
    ok = _finite_rows(Z) if X is None else _finite_rows(Z, X)
    if not ok.all():
        _note(notes, f"{int((~ok).sum())} points with non-finite coordinates or features left out")
        Z = Z[ok]
        X = None if X is None else np.asarray(X)[ok]
        labels = None if labels is None else np.asarray(labels, dtype=object)[ok]
    sil = silhouette(Z, labels, sample=sample, seed=seed, notes=notes)
    rnd = roundness(Z, labels, notes=notes)
    ovl = overlap_2017(Z, labels, notes=notes)
    out: dict[str, float | None] = {
        "knn_accuracy": knn_accuracy(Z, labels, k=k, sample=sample, seed=seed, notes=notes),
        "silhouette": sil, "roundness": rnd, "overlap_2017": ovl, "final_2017": final_2017(sil, rnd, ovl),
        "trustworthiness": None, "knn_preservation": None,
    }
    if X is not None:
        Xs = standardize(X)
        out["trustworthiness"] = trustworthiness(Xs, Z, k=k, sample=sample, seed=seed, notes=notes)
        out["knn_preservation"] = knn_preservation(Xs, Z, k=k, sample=sample, seed=seed, notes=notes)
    return out
