"""The cuml engine: RAPIDS cuML PCA / TSNE / UMAP on CuPy arrays (CUDA machines with RAPIDS).

cuML and CuPy install on CPU-only machines but fail on first use, so they are imported only
inside ``fit``, and :func:`.engines.resolve_engine` offers this engine only with a CUDA GPU.
A precomputed ``knn`` is ignored: cuML builds its own graph on the GPU.
"""
from __future__ import annotations

import inspect

import numpy as np

from .distances import euclidean_view
from .gpu_common import TSNEParams, UMAPParams
from .pca import PCAReducer


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


class CumlUMAP(UMAPParams):
    def _fit(self, X, knn):
        _, cuml = _import()
        nn = min(int(self.n_neighbors), X.shape[0] - 1)
        est = cuml.manifold.UMAP(n_components=self.n_components, n_neighbors=nn, min_dist=self.min_dist,
                                 n_epochs=self.n_epochs, random_state=self.random_state)
        return _run(est, euclidean_view(X, self.metric))


class CumlTSNE(TSNEParams):
    def _fit(self, X, knn):
        _, cuml = _import()
        cls = cuml.manifold.TSNE
        iters = "max_iter" if "max_iter" in inspect.signature(cls).parameters else "n_iter"
        est = cls(n_components=self.n_components, method="fft", random_state=self.random_state,
                  perplexity=min(float(self.perplexity), (X.shape[0] - 1) / 3.0), **{iters: self.n_iter})
        return _run(est, euclidean_view(X, self.metric))


class CumlPCA(PCAReducer):
    """cuML's PCA finds the components; projecting onto them (fit and ``transform``) is
    :class:`.pca.PCAReducer`'s linear map."""

    def _solve(self, X, k):
        cupy, cuml = _import()
        est = cuml.PCA(n_components=k).fit(cupy.asarray(X, dtype=cupy.float32))
        return cupy.asnumpy(est.mean_), cupy.asnumpy(est.components_)


ENGINE = {"umap": CumlUMAP, "tsne": CumlTSNE, "pca": CumlPCA}
