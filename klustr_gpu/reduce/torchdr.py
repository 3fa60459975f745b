"""The torchdr engine: TorchDR's UMAP / t-SNE / PCA on a CUDA torch (pip-only GPU path).

TorchDR 0.5 defaults to a faiss k-NN backend; we pass ``backend=None`` (plain torch). It runs
on the CPU too, but slowly (UMAP of 10,000 points takes about 30 s on two cores): use it on
a GPU. A precomputed ``knn`` is ignored: TorchDR builds its own graph on the device.
"""
from __future__ import annotations

import warnings

import numpy as np

from ..runtime import torch_device
from .distances import euclidean_view
from .gpu_common import TSNEParams, UMAPParams
from .pca import PCAReducer


def _import_torchdr():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ImportWarning)  # "FAISS not installed": we use backend=None
            import torchdr
    except ImportError:
        raise ImportError("the torchdr engine needs TorchDR: pip install 'klustr_gpu[torchdr]' "
                          "(or pip install torchdr)") from None
    return torchdr


def _device() -> str:
    return torch_device("auto").type


def _numpy(Y) -> np.ndarray:
    if hasattr(Y, "detach"):
        Y = Y.detach().cpu().numpy()
    return np.asarray(Y, dtype=np.float32)


class TorchdrUMAP(UMAPParams):
    def _fit(self, X, knn):
        torchdr = _import_torchdr()
        nn = min(int(self.n_neighbors), X.shape[0] - 1)
        model = torchdr.UMAP(n_components=self.n_components, n_neighbors=nn, min_dist=self.min_dist,
                             max_iter=self.n_epochs or 500, device=_device(), backend=None,
                             random_state=self.random_state, verbose=False)
        return _numpy(model.fit_transform(euclidean_view(X, self.metric)))


class TorchdrTSNE(TSNEParams):
    def _fit(self, X, knn):
        torchdr = _import_torchdr()
        perplexity = min(float(self.perplexity), (X.shape[0] - 1) / 3.0)
        model = torchdr.TSNE(n_components=self.n_components, perplexity=perplexity,
                             max_iter=self.n_iter, early_exaggeration_iter=min(250, self.n_iter // 4),
                             device=_device(), backend=None, random_state=self.random_state,
                             verbose=False)
        return _numpy(model.fit_transform(euclidean_view(X, self.metric)))


class TorchdrPCA(PCAReducer):
    """TorchDR's PCA finds the components; projecting onto them (fit and ``transform``) is
    :class:`.pca.PCAReducer`'s linear map."""

    def _solve(self, X, k):
        torchdr = _import_torchdr()
        model = torchdr.PCA(n_components=k, device=_device(), random_state=self.random_state)
        model.fit(X)
        return _numpy(model.mean_).reshape(-1), _numpy(model.components_)


ENGINE = {"umap": TorchdrUMAP, "tsne": TorchdrTSNE, "pca": TorchdrPCA}
