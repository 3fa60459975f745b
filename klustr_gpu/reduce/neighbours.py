"""The k-nearest-neighbour graph, computed once and shared by t-SNE, UMAP and a parameter grid.

``knn_graph`` returns ``(indices [n, k] int64, distances [n, k] float32)`` with each row sorted
by distance and **the point itself excluded** (an exact duplicate of a point is a neighbour at
distance 0). A graph for a larger ``k`` serves every smaller ``k``: :func:`slice_knn` takes the
first columns. Two backends:

``torch``  exact: tiled matrix products and ``topk``, on the GPU when there is one (always used
           there) and on the CPU up to ``EXACT_CPU_MAX`` points;
``annoy``  approximate (openTSNE's bundled Annoy: compiled, no JIT start-up, seeded), for larger
           inputs on the CPU with euclidean, cosine, correlation or manhattan;
``pynndescent``  approximate, for any other metric pynndescent knows.

:func:`cached_knn` keeps graphs in ``PROJECT/neighbours/`` keyed by a hash of the
(preprocessed) features and the metric, so runs and grids with any ``k`` up to the cached one
reuse it.
"""
from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

import numpy as np

from ..errors import UsageError
from ..oom import map_batches
from ..runtime import n_jobs, torch_device, torch_threads
from .distances import ANGULAR, cosine_from_chord, euclidean_view
from .validate import check_features, check_knn

log = logging.getLogger(__name__)

EXACT_CPU_MAX = 50_000
TORCH_METRICS = ("euclidean", "sqeuclidean", "cosine", "correlation")
_TILE_BYTES = 256 * 1024 * 1024


def _torch_knn(X: np.ndarray, k: int, metric: str, device, Q: np.ndarray | None = None):
    """Exact k-NN of the rows of ``Q`` (default: ``X`` itself, self excluded) among ``X``."""
    import torch

    ref = torch.as_tensor(euclidean_view(X, metric), device=device)
    qry = ref if Q is None else torch.as_tensor(euclidean_view(Q, metric), device=device)
    n, m = ref.shape[0], qry.shape[0]
    ref_sq = (ref * ref).sum(dim=1)
    budget = _TILE_BYTES * (8 if device.type == "cuda" else 1)
    tile = max(1, min(m, budget // (4 * max(n, 1))))
    idx = np.empty((m, k), dtype=np.int64)
    dist = np.empty((m, k), dtype=np.float32)

    def one_tile(s: int, e: int) -> None:
        q = qry[s:e]
        if metric in ANGULAR:                   # unit rows: 1 - cos is one matrix product
            d = 1.0 - q @ ref.T
        else:
            d = ((q * q).sum(dim=1, keepdim=True) - 2.0 * (q @ ref.T) + ref_sq).clamp_min_(0.0)
        if Q is None:
            rows = torch.arange(q.shape[0], device=device)
            d[rows, rows + s] = float("inf")
        vals, ind = torch.topk(d, k, dim=1, largest=False, sorted=True)
        if metric == "euclidean":
            vals = vals.sqrt()
        idx[s:e] = ind.cpu().numpy()
        dist[s:e] = vals.clamp_min(0.0).float().cpu().numpy()

    map_batches(one_tile, m, tile, what="k-NN query rows")    # CUDA out of memory: halve the tile
    return idx, dist


def _free_cores_knn(X: np.ndarray, k: int, metric: str, device, Q: np.ndarray | None = None):
    """:func:`_torch_knn`; on the CPU with as many threads as there are cores free now
    (``runtime.n_jobs``: no spinning OpenMP threads on cores other work holds)."""
    if device.type != "cpu":
        return _torch_knn(X, k, metric, device, Q)
    with torch_threads(n_jobs(0)):
        return _torch_knn(X, k, metric, device, Q)


def _drop_self(idx: np.ndarray, dist: np.ndarray, k: int):
    """From a ``k+1`` query of the points themselves, drop each row's own index (or the last)."""
    n = idx.shape[0]
    is_self = idx == np.arange(n)[:, None]
    keep = ~is_self
    none = ~is_self.any(axis=1)
    keep[none, -1] = False
    return idx[keep].reshape(n, k), dist[keep].reshape(n, k)


ANNOY_METRICS = ("euclidean", "cosine", "correlation", "manhattan")


def _annoy_prepare(X: np.ndarray, metric: str) -> tuple[np.ndarray, str]:
    """Rows and Annoy metric: cosine / correlation become Euclidean on (centred) unit rows."""
    if metric in ANGULAR:
        return euclidean_view(X, metric), "euclidean"
    return X, metric


def _annoy_distances(dist: np.ndarray, metric: str) -> np.ndarray:
    return cosine_from_chord(dist) if metric in ANGULAR else dist


def annoy_trees(n: int) -> int:
    """openTSNE's rule, 5 + sqrt(n)/20 trees (21 at 100,000 points): with the query budget of
    :func:`_annoy_query` the recall is what 50 trees gave (0.947 vs 0.950 on 100,460 real mfcc
    rows) in 60 % of the time."""
    return 5 + int(round(np.sqrt(n) / 20))


def _annoy_index(X: np.ndarray, metric: str, seed: int, n_trees: int | None = None):
    from openTSNE.dependencies.annoy import AnnoyIndex

    n_trees = annoy_trees(X.shape[0]) if n_trees is None else n_trees
    index = AnnoyIndex(X.shape[1], metric)
    index.set_seed(int(seed) % (2 ** 31 - 1))
    for i in range(X.shape[0]):
        index.add_item(i, X[i])
    index.build(n_trees, n_jobs=1)        # one thread: the same trees on every run
    return index


def _annoy_query(index, n: int, k: int, jobs: int, vectors: np.ndarray | None = None):
    from concurrent.futures import ThreadPoolExecutor

    idx = np.empty((n, k), dtype=np.int64)
    dist = np.empty((n, k), dtype=np.float32)
    search_k = 2 * 50 * k

    def run(lo: int) -> None:
        for i in range(lo, min(n, lo + 4096)):
            if vectors is None:
                a, b = index.get_nns_by_item(i, k, search_k, include_distances=True)
            else:
                a, b = index.get_nns_by_vector(vectors[i], k, search_k, include_distances=True)
            idx[i, :len(a)] = a
            dist[i, :len(a)] = b
            if len(a) < k:  # fewer candidates than k (tiny inputs): repeat the last
                idx[i, len(a):] = a[-1]
                dist[i, len(a):] = b[-1]

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(run, range(0, n, 4096)))
    return idx, dist


def _annoy_knn(X: np.ndarray, k: int, metric: str, seed: int):
    Xa, am = _annoy_prepare(X, metric)
    index = _annoy_index(Xa, am, seed)
    idx, dist = _annoy_query(index, X.shape[0], k + 1, n_jobs(0))
    idx, dist = _drop_self(idx, dist, k)
    return idx, _annoy_distances(dist, metric)


def _pynndescent_knn(X: np.ndarray, k: int, metric: str, seed: int):
    from ._numba import import_pynndescent, quiet_cache_warnings

    pynndescent = import_pynndescent()
    with quiet_cache_warnings():
        index = pynndescent.NNDescent(X, n_neighbors=k + 1, metric=metric, random_state=seed,
                                      low_memory=True, verbose=False)
        idx, dist = index.neighbor_graph
    return _drop_self(idx.astype(np.int64), dist.astype(np.float32), k)


def knn_graph(X, k: int, *, metric: str = "euclidean", device: str = "auto", seed: int = 0
              ) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest neighbours of every row of ``X [n, d]``, **self excluded**.

    Returns ``(indices [n, k'], distances [n, k'])`` with ``k' = min(k, n - 1)``, rows sorted
    by increasing distance. Distances are Euclidean for ``euclidean``, ``1 - cos`` for
    ``cosine`` and ``1 - r`` for ``correlation``. Exact (torch) on a GPU and for up to
    ``EXACT_CPU_MAX`` points on the CPU; Annoy (approximate, seeded) above, or pynndescent
    for metrics Annoy lacks.
    """
    X = check_features(X)
    n = X.shape[0]
    if k < 1:
        raise UsageError(f"k must be >= 1; got {k}")
    if n < 2:
        raise UsageError(f"a neighbour graph needs at least 2 points; got {n}")
    if k > n - 1:
        log.warning("asked for %d neighbours of %d points; using %d", k, n, n - 1)
        k = n - 1
    dev = torch_device(device)
    if metric in TORCH_METRICS and (dev.type == "cuda" or n <= EXACT_CPU_MAX):
        return _free_cores_knn(X, k, metric, dev)
    if device == "cuda":
        raise UsageError(f"metric {metric!r} is not supported on the GPU; use one of {', '.join(TORCH_METRICS)}")
    if metric in ANNOY_METRICS:
        return _annoy_knn(X, k, metric, seed)
    return _pynndescent_knn(X, k, metric, seed)


class NeighbourSearch:
    """Nearest rows of a fixed reference set for batches of new points. Exact (torch) on a GPU
    or when a batch times the reference is small; otherwise one Annoy index, built on first
    use and reused by every later batch."""

    def __init__(self, X_ref: np.ndarray, *, metric: str = "euclidean", device: str = "auto", seed: int = 0):
        self.X_ref = check_features(X_ref)
        self.metric = metric
        self.device = torch_device(device)
        self.seed = seed
        self._index = None

    def query(self, X_new: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, self.X_ref.shape[0])
        work = self.X_ref.shape[0] * X_new.shape[0]
        if self.metric in TORCH_METRICS and (self.device.type == "cuda" or work <= EXACT_CPU_MAX ** 2):
            return _free_cores_knn(self.X_ref, k, self.metric, self.device, Q=X_new)
        if self.metric not in ANNOY_METRICS:
            raise UsageError(f"metric {self.metric!r}: placing new points supports {', '.join(ANNOY_METRICS)}")
        if self._index is None:
            Ra, am = _annoy_prepare(self.X_ref, self.metric)
            self._index = _annoy_index(Ra, am, self.seed)
        Qa, _ = _annoy_prepare(X_new, self.metric)
        idx, dist = _annoy_query(self._index, Qa.shape[0], k, n_jobs(0), vectors=Qa)
        return idx, _annoy_distances(dist, self.metric)


def slice_knn(knn, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``k`` columns of a (larger) graph; one clear error if it is too small."""
    idx, dist = check_knn(knn, k=k)
    return np.ascontiguousarray(idx[:, :k]), np.ascontiguousarray(dist[:, :k])


def with_self(knn) -> tuple[np.ndarray, np.ndarray]:
    """umap-learn's layout: each point first, at distance 0."""
    idx, dist = knn
    n = idx.shape[0]
    return (np.hstack([np.arange(n, dtype=np.int64)[:, None], idx]),
            np.hstack([np.zeros((n, 1), np.float32), dist]))


def place_by_neighbours(search: NeighbourSearch, Y_ref: np.ndarray, X_new, *, k: int = 10,
                        batch_size: int = 100_000) -> np.ndarray:
    """Put each new point at the distance-weighted mean of its ``k`` nearest fitted points
    (weights fall off exponentially from the nearest to the k-th)."""
    X_new = check_features(X_new)
    out = np.empty((X_new.shape[0], Y_ref.shape[1]), dtype=np.float32)
    for s in range(0, X_new.shape[0], batch_size):
        idx, dist = search.query(X_new[s:s + batch_size], k)
        scale = np.maximum(dist[:, -1:] - dist[:, :1], 1e-12)
        w = np.exp(-(dist - dist[:, :1]) / scale)
        w /= w.sum(axis=1, keepdims=True)
        out[s:s + batch_size] = np.einsum("nk,nkc->nc", w, Y_ref[idx])
    return out


# -- the cache in the project folder ------------------------------------------------------------
def graph_key(X: np.ndarray, metric: str) -> str:
    h = hashlib.blake2b(digest_size=10)
    h.update(f"{X.shape}|{X.dtype}|{metric}".encode())
    h.update(np.ascontiguousarray(X).data)
    return h.hexdigest()


def cached_knn(folder: str | Path, X: np.ndarray, k: int, *, metric: str = "euclidean",
               tag: str = "knn", device: str = "auto", seed: int = 0):
    """``knn_graph`` through ``folder`` (usually ``PROJECT/neighbours``): a cached graph with
    at least ``k`` columns for the same data and metric is loaded and sliced; otherwise the
    graph is computed and written atomically as ``<tag>-<metric>-<hash>-k<k>.npz``."""
    from ..store import atomic_path

    folder = Path(folder)
    k = min(k, X.shape[0] - 1)
    key = graph_key(X, metric)
    best = None
    for p in folder.glob(f"*-{key}-k*.npz"):
        m = re.search(r"-k(\d+)\.npz$", p.name)
        if m and int(m.group(1)) >= k and (best is None or int(m.group(1)) < best[0]):
            best = (int(m.group(1)), p)
    if best is not None:
        with np.load(best[1]) as z:
            log.info("reusing neighbour graph %s", best[1].name)
            return slice_knn((z["indices"], z["distances"]), k)
    idx, dist = knn_graph(X, k, metric=metric, device=device, seed=seed)
    safe_tag = re.sub(r"[^A-Za-z0-9_.]+", "_", tag)
    with atomic_path(folder / f"{safe_tag}-{metric}-{key}-k{idx.shape[1]}.npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, indices=idx, distances=dist)
    return idx, dist
