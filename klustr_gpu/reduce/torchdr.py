"""The torchdr engine: TorchDR's UMAP / t-SNE / PCA on a CUDA torch (pip-only GPU path).

TorchDR 0.5 defaults to a faiss k-NN backend; we pass ``backend=None`` (plain torch). It runs
on the CPU too, but slowly (UMAP of 10,000 points takes about 30 s on two cores): use it on
a GPU. A precomputed ``knn`` is ignored: TorchDR builds its own graph on the device.
"""
from __future__ import annotations

import warnings

import numpy as np

from .gpu_common import PCAParams, TSNEParams, UMAPParams, euclidean_view, pad_columns


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
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


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


class TorchdrPCA(PCAParams):
    def _fit(self, X, knn):
        torchdr = _import_torchdr()
        self.model_ = torchdr.PCA(n_components=min(self.n_components, X.shape[1]), device=_device(),
                                  random_state=self.random_state)
        Y = _numpy(self.model_.fit_transform(X))
        return pad_columns(Y, self.n_components)


ENGINE = {"umap": TorchdrUMAP, "tsne": TorchdrTSNE, "pca": TorchdrPCA}
