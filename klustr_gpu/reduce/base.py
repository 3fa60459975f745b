"""What every reducer shares: the scikit-learn contract, tiny inputs, transform by neighbours."""
from __future__ import annotations

import logging

import numpy as np

from ..errors import UsageError
from .validate import check_features

log = logging.getLogger(__name__)

MIN_POINTS = 5   # below this t-SNE / UMAP are meaningless: a handled case (see tiny_layout)


def tiny_layout(X: np.ndarray, n_components: int = 2) -> np.ndarray:
    """A layout for a handful of points (or no informative columns): PCA coordinates scaled to
    unit spread, or the origin when all points coincide."""
    n = X.shape[0]
    out = np.zeros((n, n_components), dtype=np.float32)
    if n < 2 or X.shape[1] == 0:
        return out
    C = X - X.mean(axis=0)
    u, s, _ = np.linalg.svd(C.astype(np.float64), full_matrices=False)
    m = min(n_components, u.shape[1])
    Y = u[:, :m] * s[:m]
    scale = np.abs(Y).max()
    if scale > 0:
        out[:, :m] = (Y / scale).astype(np.float32)
    return out


class Reducer:
    """Base of every engine's estimators. ``__init__`` only stores arguments; ``fit`` checks the
    input, handles tiny inputs (fewer than ``min_points`` points, or no columns), and calls
    ``_fit``; results end in ``_``. ``transform`` places new points by their nearest fitted
    points (t-SNE and UMAP); PCA overrides it with its linear map."""

    n_components = 2
    random_state = None
    metric = "euclidean"
    min_points = MIN_POINTS

    def get_params(self, deep: bool = True) -> dict:
        """The constructor's arguments (``deep`` is accepted for scikit-learn's ``clone``;
        reducers hold no nested estimators)."""
        return {k: v for k, v in vars(self).items() if not k.endswith("_") and not k.startswith("_")}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def fit(self, X, y=None, *, knn=None):
        self._check()
        X = check_features(X, allow_no_columns=True)
        self.n_features_in_ = X.shape[1]
        self._X_fit = X
        self._search = None
        if X.shape[0] < self.min_points or X.shape[1] == 0:
            log.warning("%d point(s) with %d informative column(s): placing them directly instead of "
                        "running %s", X.shape[0], X.shape[1], type(self).__name__)
            self._fit_tiny(X)
            self.embedding_ = tiny_layout(X, self.n_components)
            return self
        self.embedding_ = np.ascontiguousarray(self._fit(X, knn), dtype=np.float32)
        return self

    def fit_transform(self, X, y=None, *, knn=None):
        return self.fit(X, knn=knn).embedding_

    def transform(self, X, *, batch_size: int = 100_000):
        """Place new points at the weighted mean of their nearest fitted points."""
        from .neighbours import NeighbourSearch, place_by_neighbours

        X = self._check_new(X)
        if self._X_fit.shape[0] < 2 or X.shape[1] == 0:
            return np.zeros((X.shape[0], self.n_components), np.float32)
        if getattr(self, "_search", None) is None:   # built once, reused by every batch
            self._search = NeighbourSearch(self._X_fit, metric=self.metric, seed=self.random_state or 0)
        return place_by_neighbours(self._search, self.embedding_, X, batch_size=batch_size)

    def _check_new(self, X) -> np.ndarray:
        """New points for ``transform``: fitted first, the same columns."""
        if not hasattr(self, "embedding_"):
            raise UsageError(f"{type(self).__name__} is not fitted yet; call fit first")
        X = check_features(X, allow_no_columns=True)
        if X.shape[1] != self.n_features_in_:
            raise UsageError(f"transform got {X.shape[1]} columns; the model was fitted on {self.n_features_in_}")
        return X

    def max_fit_points(self) -> int | None:
        """The most points one ``fit`` can hold in this machine's memory now, or ``None`` when
        the engine has no such limit (it scales with the k-NN graph, not with n^2)."""
        return None

    def _fit(self, X: np.ndarray, knn) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _fit_tiny(self, X: np.ndarray) -> None:
        """What a model keeps of a tiny input besides its layout (nothing, by default)."""

    def _check(self) -> None:
        if getattr(self, "n_neighbors", 2) < 2:
            raise UsageError(f"n_neighbors must be >= 2; got {self.n_neighbors}", param="n_neighbors")
        if getattr(self, "perplexity", 1.0) <= 0:
            raise UsageError(f"perplexity must be > 0; got {self.perplexity}", param="perplexity")
        if getattr(self, "min_dist", 0.0) < 0:
            raise UsageError(f"min_dist must be >= 0; got {self.min_dist}", param="min_dist")
