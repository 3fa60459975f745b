"""The parameters of the GPU engines' UMAP and t-SNE (cuML, TorchDR): one definition, so the
two engines take the same arguments and keep scikit-learn's estimator contract."""
from __future__ import annotations

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
