"""Distances other than Euclidean, for backends that only know Euclidean (Annoy, the exact
torch search, cuML, TorchDR): cosine and correlation neighbours are the Euclidean neighbours
of unit rows (centred first for correlation), and the two distances convert exactly."""
from __future__ import annotations

import numpy as np

from ..errors import UsageError

#: metrics :func:`euclidean_view` turns into Euclidean ones (besides Euclidean itself)
ANGULAR = ("cosine", "correlation")


def euclidean_view(X: np.ndarray, metric: str) -> np.ndarray:
    """Rows such that (squared) Euclidean distance ranks neighbours as ``metric`` does:
    ``X`` itself for ``euclidean`` / ``sqeuclidean``, unit rows for ``cosine``, centred unit
    rows for ``correlation``; float32, a copy when changed."""
    if metric in ("euclidean", "sqeuclidean"):
        return X
    if metric not in ANGULAR:
        raise UsageError(f"metric={metric!r} has no Euclidean form here (the GPU engines need one); use "
                         "euclidean, cosine or correlation, or engine='cpu'", param="metric")
    X = np.array(X, dtype=np.float32, copy=True)
    if metric == "correlation":
        X -= X.mean(axis=1, keepdims=True)
    X /= np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    return X


def cosine_from_chord(chord: np.ndarray) -> np.ndarray:
    """``1 - cos`` of unit rows from their Euclidean (chord) distance: ``chord**2 / 2``."""
    return 0.5 * chord * chord


def chord_from_cosine(cos_dist: np.ndarray) -> np.ndarray:
    """The Euclidean (chord) distance of unit rows from ``1 - cos``: ``sqrt(2 (1 - cos))``."""
    return np.sqrt(2.0 * np.maximum(cos_dist, 0.0))
