"""Preprocessing (standardise, PCA to k), and PCA as a reducer with its own linear ``transform``.

PCA here is the eigendecomposition of the ``d x d`` covariance, accumulated in float64 over row
chunks, so a million rows never need more than one chunk of extra memory, and the result is
deterministic (eigenvector signs fixed so the largest loading is positive); it runs on the GPU
when torch sees one. :class:`PCAReducer` is what every engine's PCA shares: the estimator
contract, and ``transform`` as the linear map ``(X - mean_) @ components_.T`` (padded to
``n_components``); the engines differ only in how they find ``mean_`` and ``components_``.
"""
from __future__ import annotations

import logging

import numpy as np

from ..errors import UsageError
from ..runtime import torch_device
from .base import Reducer
from .validate import check_features

log = logging.getLogger(__name__)
_CHUNK = 65536


def pca_fit(X: np.ndarray, k: int, *, device=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mean [d], components [k, d], explained_variance [k])`` of ``X [n, d]``."""
    import torch

    device = device or torch_device("auto")
    n, d = X.shape
    mean = np.zeros(d, dtype=np.float64)
    cov = torch.zeros((d, d), dtype=torch.float64, device=device)
    for s in range(0, n, _CHUNK):
        mean += X[s:s + _CHUNK].sum(axis=0, dtype=np.float64)
    mean /= n
    mu = torch.as_tensor(mean, device=device)
    for s in range(0, n, _CHUNK):
        c = torch.as_tensor(X[s:s + _CHUNK], device=device).double() - mu
        cov += c.T @ c
    cov /= max(n - 1, 1)
    evals, evecs = torch.linalg.eigh(cov)
    order = torch.argsort(evals, descending=True)[:k]
    comps = evecs[:, order].T                                   # [k, d]
    sign = torch.sign(comps[torch.arange(comps.shape[0]), comps.abs().argmax(dim=1)])
    sign[sign == 0] = 1
    comps = comps * sign[:, None]
    return mean, comps.cpu().numpy(), evals[order].clamp_min(0).cpu().numpy()


def pca_project(X: np.ndarray, mean: np.ndarray, components: np.ndarray, *, device=None) -> np.ndarray:
    import torch

    device = device or torch_device("auto")
    W = torch.as_tensor(components, device=device, dtype=torch.float64)
    mu = torch.as_tensor(mean, device=device)
    out = np.empty((X.shape[0], components.shape[0]), dtype=np.float32)
    for s in range(0, X.shape[0], _CHUNK):
        c = torch.as_tensor(X[s:s + _CHUNK], device=device).double() - mu
        out[s:s + _CHUNK] = (c @ W.T).float().cpu().numpy()
    return out


def pad_columns(Y: np.ndarray, n_components: int) -> np.ndarray:
    """``Y`` with zero columns appended up to ``n_components`` (PCA of fewer features)."""
    if Y.shape[1] < n_components:
        Y = np.hstack([Y, np.zeros((Y.shape[0], n_components - Y.shape[1]), np.float32)])
    return Y


def preprocess(X, *, standardize: bool = True, pca_components: int = 0) -> np.ndarray:
    """Standardise the columns of ``X [n, d]`` and optionally project onto the first
    ``pca_components`` principal components. Returns float32 ``[n, d']``.

    Constant columns carry no information and are dropped (logged); if every column is
    constant the result has shape ``[n, 0]`` and the reducers place all points at the origin.
    ``pca_components=0`` (or ``>= d``) keeps all columns. PCA is exact (no seed).
    """
    X = check_features(X)
    if pca_components < 0:
        raise UsageError(f"pca_components must be >= 0; got {pca_components}", param="pca_components")
    std = X.std(axis=0, dtype=np.float64)
    const = std <= 1e-12 * np.maximum(1.0, np.abs(X).max(axis=0))
    if const.any():
        log.warning("dropping %d constant feature column(s) of %d", int(const.sum()), X.shape[1])
        X, std = X[:, ~const], std[~const]
        if X.shape[1] == 0:
            return np.zeros((X.shape[0], 0), dtype=np.float32)
    if standardize:
        mean = X.mean(axis=0, dtype=np.float64)
        X = ((X - mean) / std).astype(np.float32)
    k = min(int(pca_components), X.shape[0])
    if 0 < k < X.shape[1]:
        mean, comps, _ = pca_fit(X, k)
        X = pca_project(X, mean, comps)
    return np.ascontiguousarray(X, dtype=np.float32)


class PCAReducer(Reducer):
    """PCA with the reducers' contract: ``fit`` finds ``mean_ [d]`` and ``components_ [k, d]``
    (``k = min(n_components, d)``, by the engine's :meth:`_solve`), ``embedding_`` and
    ``transform`` are the linear projection onto them, zero-padded to ``n_components`` columns.
    Two points are enough (below that, or without columns, every point maps to the origin)."""

    min_points = 2

    def __init__(self, n_components: int = 2, *, random_state: int | None = None):
        self.n_components = n_components
        self.random_state = random_state

    def _fit(self, X: np.ndarray, knn) -> np.ndarray:
        mean, components = self._solve(X, min(self.n_components, X.shape[1]))
        self.mean_ = np.asarray(mean, dtype=np.float64).reshape(-1)
        self.components_ = np.asarray(components)
        return self._project(X)

    def _fit_tiny(self, X: np.ndarray) -> None:
        self.mean_ = np.zeros(X.shape[1])
        self.components_ = np.zeros((0, X.shape[1]), np.float32)
        self.explained_variance_ = np.zeros(0)

    def transform(self, X, *, batch_size: int = 100_000) -> np.ndarray:
        """The linear map of the fit (``batch_size`` is accepted for the reducers' signature;
        the projection already runs in chunks)."""
        return self._project(self._check_new(X))

    def _project(self, X: np.ndarray) -> np.ndarray:
        return pad_columns(pca_project(X, self.mean_, self.components_), self.n_components)

    def _solve(self, X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError


class TorchPCA(PCAReducer):
    """PCA in torch (deterministic, chunked, on the GPU when there is one): the cpu engine's."""

    def _solve(self, X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        mean, components, self.explained_variance_ = pca_fit(X, k)
        return mean, components
