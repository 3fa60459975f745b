"""Shared by the GPU adapters (cuML, TorchDR): their estimator parameters, metrics they lack
(expressed as Euclidean on normalised rows) and PCA's padding to ``n_components`` columns."""
from __future__ import annotations

import numpy as np

from ..errors import UsageError
from .base import Reducer


class UMAPParams(Reducer):
    """The parameters of the GPU engines' UMAP (stored by name: the scikit-learn contract)."""

    def __init__(self, n_components: int = 2, *, n_neighbors: int = 15, min_dist: float = 0.1,
                 metric: str = "euclidean", n_epochs: int | None = None, random_state: int | None = None):
        self.n_components = n_components
        self.n_neighbors = n_neighbors
        self.min_dist = min_dist
        self.metric = metric
        self.n_epochs = n_epochs
        self.random_state = random_state


class TSNEParams(Reducer):
    """The parameters of the GPU engines' t-SNE."""

    def __init__(self, n_components: int = 2, *, perplexity: float = 30.0, n_iter: int = 1000,
                 metric: str = "euclidean", random_state: int | None = None):
        self.n_components = n_components
        self.perplexity = perplexity
        self.n_iter = n_iter
        self.metric = metric
        self.random_state = random_state


class PCAParams(Reducer):
    """The parameters of the GPU engines' PCA."""

    def __init__(self, n_components: int = 2, *, random_state: int | None = None):
        self.n_components = n_components
        self.random_state = random_state


def pad_columns(Y: np.ndarray, n_components: int) -> np.ndarray:
    """``Y`` with zero columns appended up to ``n_components`` (PCA of fewer features)."""
    if Y.shape[1] < n_components:
        Y = np.hstack([Y, np.zeros((Y.shape[0], n_components - Y.shape[1]), np.float32)])
    return Y


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
