"""Shared by the GPU adapters: metrics they lack, expressed as Euclidean on normalised rows."""
from __future__ import annotations

import numpy as np

from ..errors import UsageError


def euclidean_view(X: np.ndarray, metric: str) -> np.ndarray:
    """Rows such that (squared) Euclidean distance ranks neighbours as ``metric`` does:
    unit rows for ``cosine``, centred unit rows for ``correlation``."""
    if metric in ("euclidean", "sqeuclidean"):
        return X
    if metric not in ("cosine", "correlation"):
        raise UsageError(f"metric {metric!r} is not available on the GPU engines; "
                         "use euclidean, cosine or correlation, or --engine cpu")
    X = X.astype(np.float32, copy=True)
    if metric == "correlation":
        X -= X.mean(axis=1, keepdims=True)
    X /= np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    return X
