"""Input checks of the reducers (a leaf, like scikit-learn's ``check_array``): one clear
:class:`~klustr_gpu.errors.UsageError` instead of a failure deep inside a library."""
from __future__ import annotations

import numpy as np

from ..errors import UsageError


def check_features(X, *, allow_no_columns: bool = False) -> np.ndarray:
    """``X`` as a C-contiguous float32 ``[n, d]`` array, or one clear :class:`UsageError`.

    ``allow_no_columns``: accept ``d == 0`` (what :func:`.pca.preprocess` leaves when every
    column is constant)."""
    X = np.asarray(X)
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2:
        raise UsageError(f"features must be a 2-D array [points, dims]; got shape {X.shape}")
    if X.shape[0] == 0:
        raise UsageError("no points to reduce: the feature table is empty (were all files skipped?)")
    if X.shape[1] == 0 and not allow_no_columns:
        raise UsageError("the feature table has no columns")
    if not np.issubdtype(X.dtype, np.number):
        raise UsageError(f"features must be numeric; got dtype {X.dtype}")
    X = np.ascontiguousarray(X, dtype=np.float32)
    bad = ~np.isfinite(X)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        cols = np.flatnonzero(bad.any(axis=0))
        raise UsageError(
            f"features contain NaN or infinite values in {rows.size} of {X.shape[0]} rows "
            f"(columns {', '.join(map(str, cols[:10]))}{', ...' if cols.size > 10 else ''}); "
            "recompute the features (broken files are skipped there) or drop those rows")
    return X


def check_knn(knn, n: int | None = None, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A neighbour graph ``(indices [n, k'], distances [n, k'])``: the right shapes, ``n`` rows
    when given, and at least ``k`` columns when given (one clear error otherwise)."""
    idx, dist = (np.asarray(a) for a in knn)
    if idx.shape != dist.shape or idx.ndim != 2:
        raise UsageError("knn must be (indices [n, k], distances [n, k])")
    if n is not None and idx.shape[0] != n:
        raise UsageError(f"the neighbour graph has {idx.shape[0]} rows; X has {n}")
    if k is not None and idx.shape[1] < k:
        raise UsageError(f"the precomputed neighbour graph has k={idx.shape[1]}; this run needs {k}")
    return idx, dist
