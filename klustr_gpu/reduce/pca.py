"""Preprocessing (standardise, PCA to k) and the torch PCA used by the cpu engine.

PCA here is the eigendecomposition of the ``d x d`` covariance, accumulated in float64 over row
chunks, so a million rows never need more than one chunk of extra memory, and the result is
deterministic (eigenvector signs fixed so the largest loading is positive). The input tensor's
device decides where the maths runs.
"""
from __future__ import annotations

import logging

import numpy as np

from ..errors import UsageError

log = logging.getLogger(__name__)
_CHUNK = 65536


def check_features(X, *, allow_no_columns: bool = False) -> np.ndarray:
    """``X`` as a C-contiguous float32 ``[n, d]`` array, or one clear :class:`UsageError`.

    ``allow_no_columns``: accept ``d == 0`` (what :func:`preprocess` leaves when every column
    is constant)."""
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
            "re-run `klustr features` (broken files are skipped there) or drop those rows")
    return X


def _device():
    import torch
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pca_fit(X: np.ndarray, k: int, *, device=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mean [d], components [k, d], explained_variance [k])`` of ``X [n, d]``."""
    import torch

    device = device or _device()
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

    device = device or _device()
    W = torch.as_tensor(components, device=device, dtype=torch.float64)
    mu = torch.as_tensor(mean, device=device)
    out = np.empty((X.shape[0], components.shape[0]), dtype=np.float32)
    for s in range(0, X.shape[0], _CHUNK):
        c = torch.as_tensor(X[s:s + _CHUNK], device=device).double() - mu
        out[s:s + _CHUNK] = (c @ W.T).float().cpu().numpy()
    return out


def preprocess(X, *, standardize: bool = True, pca_components: int = 0, seed: int = 0) -> np.ndarray:
    """Standardise the columns of ``X [n, d]`` and optionally project onto the first
    ``pca_components`` principal components. Returns float32 ``[n, d']``.

    Constant columns carry no information and are dropped (logged); if every column is
    constant the result has shape ``[n, 0]`` and the reducers place all points at the origin.
    ``pca_components=0`` (or ``>= d``) keeps all columns. PCA is exact, so ``seed`` is unused
    (kept for the signature shared with the randomised GPU engines).
    """
    X = check_features(X)
    if pca_components < 0:
        raise UsageError(f"pca_components must be >= 0; got {pca_components}")
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


class TorchPCA:
    """PCA with the scikit-learn API, in torch (deterministic, chunked, any device)."""

    def __init__(self, n_components: int = 2, *, random_state=None):
        self.n_components = n_components
        self.random_state = random_state

    def fit(self, X, y=None, **_):
        X = check_features(X, allow_no_columns=True)
        if X.shape[1] == 0 or X.shape[0] < 2:
            from .base import tiny_layout
            self.mean_ = np.zeros(X.shape[1]); self.explained_variance_ = np.zeros(0)
            self.components_ = np.zeros((0, X.shape[1]), np.float32)
            self.embedding_ = tiny_layout(X, self.n_components)
            return self
        k = min(self.n_components, X.shape[1])
        self.mean_, self.components_, self.explained_variance_ = pca_fit(X, k)
        self.embedding_ = self._pad(pca_project(X, self.mean_, self.components_))
        return self

    def _pad(self, Y: np.ndarray) -> np.ndarray:
        if Y.shape[1] < self.n_components:  # fewer dims than components: pad with zeros
            Y = np.hstack([Y, np.zeros((Y.shape[0], self.n_components - Y.shape[1]), np.float32)])
        return Y

    def transform(self, X):
        return self._pad(pca_project(check_features(X, allow_no_columns=True), self.mean_, self.components_))

    def fit_transform(self, X, y=None, **kw):
        return self.fit(X, **kw).embedding_
