"""The torchdr engine: TorchDR's UMAP / t-SNE / PCA on a CUDA torch (pip-only GPU path).

TorchDR 0.5 defaults to a faiss k-NN backend; we pass ``backend=None`` (plain torch). It runs
on the CPU too, but slowly (UMAP of 10,000 points takes about 30 s on two cores): use it on
a GPU. A precomputed ``knn`` is ignored: TorchDR builds its own graph on the device.

With ``backend=None`` TorchDR holds dense ``n x n`` matrices: peak memory about
6.2 n^2 x 4 bytes for t-SNE and 3.4 n^2 x 4 for UMAP (measured with TorchDR 0.5 on the CPU at
4,000 points by ``benchmarks/torchdr_memory.py``), so t-SNE of 100,000 points
would need about 230 GiB. :meth:`max_fit_points` says how many points fit in the free memory;
:func:`.embed.fit_embedding` fits on a sample of that size and places the rest.
"""
from __future__ import annotations

import math
import os
import warnings

import numpy as np

from ..runtime import torch_device
from .base import MIN_POINTS
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


#: peak bytes per pair of points with backend=None (see the module docstring)
DENSE_BYTES_PER_PAIR = {"tsne": 6.2 * 4, "umap": 3.4 * 4}
#: the share of the free memory a fit may plan to use
MEMORY_SHARE = 0.8


def free_memory_bytes(device: str) -> int:
    """Free memory on ``device``: the CUDA device's free bytes, or the host's MemAvailable."""
    if device == "cuda":
        import torch

        return int(torch.cuda.mem_get_info()[0])
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def dense_fit_limit(method: str, free_bytes: int) -> int:
    """The most points whose dense TorchDR fit of ``method`` fits in ``free_bytes``."""
    return max(MIN_POINTS, int(math.sqrt(free_bytes * MEMORY_SHARE / DENSE_BYTES_PER_PAIR[method])))


class _Dense:
    """What TorchDR's dense UMAP and t-SNE share: a memory bound on one fit."""

    method = ""

    def max_fit_points(self) -> int | None:
        return dense_fit_limit(self.method, free_memory_bytes(_device()))


def _numpy(Y) -> np.ndarray:
    if hasattr(Y, "detach"):
        Y = Y.detach().cpu().numpy()
    return np.asarray(Y, dtype=np.float32)


class TorchdrUMAP(_Dense, UMAPParams):
    method = "umap"

    def _fit(self, X, knn):
        torchdr = _import_torchdr()
        nn = min(int(self.n_neighbors), X.shape[0] - 1)
        model = torchdr.UMAP(n_components=self.n_components, n_neighbors=nn, min_dist=self.min_dist,
                             max_iter=self.n_epochs or 500, device=_device(), backend=None,
                             random_state=self.random_state, verbose=False)
        return _numpy(model.fit_transform(euclidean_view(X, self.metric)))


class TorchdrTSNE(_Dense, TSNEParams):
    method = "tsne"

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
