"""The cuml engine: RAPIDS cuML PCA / TSNE / UMAP on CuPy arrays (CUDA machines with RAPIDS).

cuML and CuPy install on CPU-only machines but fail on first use, so they are imported only
inside ``fit``, and :func:`.engines.resolve_engine` offers this engine only with a CUDA GPU.
A precomputed ``knn`` is ignored: cuML builds its own graph on the GPU.
"""
from __future__ import annotations

import inspect

import numpy as np

from .base import Reducer
from .gpu_common import euclidean_view


def _import():
    try:
        import cupy
        import cuml
    except ImportError:
        raise ImportError("the cuml engine needs RAPIDS cuML and CuPy: pip install 'klustr_gpu[gpu]' "
                          "or use environment.yml") from None
    return cupy, cuml


def _run(estimator, X: np.ndarray) -> np.ndarray:
    cupy, _ = _import()
    Y = estimator.fit_transform(cupy.asarray(X, dtype=cupy.float32))
    return np.asarray(cupy.asnumpy(Y), dtype=np.float32)


class CumlUMAP(Reducer):
    def __init__(self, n_components: int = 2, *, n_neighbors: int = 15, min_dist: float = 0.1,
                 metric: str = "euclidean", n_epochs: int | None = None, random_state: int | None = None):
        self.n_components = n_components
        self.n_neighbors = n_neighbors
        self.min_dist = min_dist
        self.metric = metric
        self.n_epochs = n_epochs
        self.random_state = random_state

    def _fit(self, X, knn):
        _, cuml = _import()
        nn = min(int(self.n_neighbors), X.shape[0] - 1)
        est = cuml.manifold.UMAP(n_components=self.n_components, n_neighbors=nn, min_dist=self.min_dist,
                                 n_epochs=self.n_epochs, random_state=self.random_state)
        return _run(est, euclidean_view(X, self.metric))


class CumlTSNE(Reducer):
    def __init__(self, n_components: int = 2, *, perplexity: float = 30.0, n_iter: int = 1000,
                 metric: str = "euclidean", random_state: int | None = None):
        self.n_components = n_components
        self.perplexity = perplexity
        self.n_iter = n_iter
        self.metric = metric
        self.random_state = random_state

    def _fit(self, X, knn):
        _, cuml = _import()
        cls = cuml.manifold.TSNE
        iters = "max_iter" if "max_iter" in inspect.signature(cls).parameters else "n_iter"
        est = cls(n_components=self.n_components, method="fft", random_state=self.random_state,
                  perplexity=min(float(self.perplexity), (X.shape[0] - 1) / 3.0), **{iters: self.n_iter})
        return _run(est, euclidean_view(X, self.metric))


class CumlPCA(Reducer):
    def __init__(self, n_components: int = 2, *, random_state: int | None = None):
        self.n_components = n_components
        self.random_state = random_state

    def _fit(self, X, knn):
        _, cuml = _import()
        Y = _run(cuml.PCA(n_components=min(self.n_components, X.shape[1])), X)
        if Y.shape[1] < self.n_components:
            Y = np.hstack([Y, np.zeros((Y.shape[0], self.n_components - Y.shape[1]), np.float32)])
        return Y


ENGINE = {"umap": CumlUMAP, "tsne": CumlTSNE, "pca": CumlPCA}
