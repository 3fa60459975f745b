"""The cpu engine: openTSNE for t-SNE, umap-learn for UMAP, torch PCA.

Both take a precomputed neighbour graph (``fit(X, knn=(indices, distances))``, self excluded,
see :mod:`.neighbours`), so a grid of runs computes it once. Without one they compute it with
:func:`.neighbours.knn_graph` (exact torch up to 50,000 points, pynndescent above).
Same ``random_state`` and input -> the same embedding.
"""
from __future__ import annotations

import logging
import warnings

import numpy as np

from ..runtime import n_jobs
from .base import Reducer
from .distances import ANGULAR, chord_from_cosine
from .neighbours import knn_graph, slice_knn, with_self
from .pca import TorchPCA

log = logging.getLogger(__name__)


def _import_opentsne():
    try:
        import openTSNE
    except ImportError:
        raise ImportError("the cpu engine needs openTSNE: pip install openTSNE") from None
    return openTSNE


class OpenTSNE(Reducer):
    """t-SNE with openTSNE: perplexity affinities on a k-NN graph (k = 3 * perplexity), PCA
    initialisation, ``n_iter`` iterations of which the first quarter (at most 250) use early
    exaggeration 12. Barnes-Hut below ``fft_above`` points, FFT interpolation above, on a grid
    of ``ints_in_interval`` embedding units per cell (openTSNE's default 1 makes the FFTs 4x
    larger for the same map quality: on 10,000 drum sounds 2 is 3x faster at equal 10-NN
    accuracy)."""

    def __init__(self, n_components: int = 2, *, perplexity: float = 30.0, n_iter: int = 500,
                 metric: str = "euclidean", learning_rate="auto", fft_above: int = 5_000,
                 ints_in_interval: float = 2.0, min_num_intervals: int = 20,
                 n_jobs: int = 0, random_state: int | None = None):
        self.n_components = n_components
        self.perplexity = perplexity
        self.n_iter = n_iter
        self.metric = metric
        self.learning_rate = learning_rate
        self.fft_above = fft_above
        self.ints_in_interval = ints_in_interval
        self.min_num_intervals = min_num_intervals
        self.n_jobs = n_jobs
        self.random_state = random_state

    def _fit(self, X, knn):
        openTSNE = _import_opentsne()
        from openTSNE.affinity import PerplexityBasedNN
        from openTSNE.nearest_neighbors import PrecomputedNeighbors

        n = X.shape[0]
        perplexity = min(float(self.perplexity), (n - 1) / 3.0)
        if perplexity < self.perplexity:
            log.warning("perplexity %g is too large for %d points; using %.3g", self.perplexity, n, perplexity)
        k = min(n - 1, max(1, int(3 * perplexity)))
        idx, dist = slice_knn(knn, k) if knn is not None else knn_graph(
            X, k, metric=self.metric, seed=self.random_state or 0)
        if self.metric in ANGULAR:
            dist = chord_from_cosine(dist)                # a Euclidean distance, as openTSNE expects
        jobs = n_jobs(self.n_jobs)
        seed = self.random_state if self.random_state is not None else 0
        quiet = logging.getLogger("openTSNE.affinity")     # "KNN index provided..." at INFO
        level = quiet.level
        quiet.setLevel(logging.WARNING)
        try:
            self.affinities_ = PerplexityBasedNN(
                knn_index=PrecomputedNeighbors(idx, dist.astype(np.float64)), perplexity=perplexity,
                n_jobs=jobs, random_state=seed)
        finally:
            quiet.setLevel(level)
        init = openTSNE.initialization.pca(X, n_components=self.n_components, random_state=seed)
        method = "fft" if n > self.fft_above else "bh"
        ee = min(250, max(1, self.n_iter // 4))
        emb = openTSNE.TSNEEmbedding(init, self.affinities_, learning_rate=self.learning_rate,
                                     negative_gradient_method=method, n_jobs=jobs, random_state=seed,
                                     ints_in_interval=self.ints_in_interval,
                                     min_num_intervals=self.min_num_intervals)
        emb = emb.optimize(n_iter=ee, exaggeration=12, momentum=0.5)
        emb = emb.optimize(n_iter=max(1, self.n_iter - ee), momentum=0.8)
        self.n_iter_ = self.n_iter
        return np.asarray(emb)


#: Above this many points ``init="auto"`` starts UMAP from PCA instead of the spectral layout:
#: ARPACK's eigensolver costs 12.8 s of 47 s at 100,000 points here (single-threaded) for the
#: same 10-NN accuracy (0.9938 spectral, 0.9935 PCA, on 100,460 demo-corpus + Hydrogen clips).
SPECTRAL_INIT_MAX = 50_000


class UMAPLearn(Reducer):
    """UMAP with umap-learn on a precomputed k-NN graph, with numba's disk cache switched on.
    ``n_epochs=None`` uses 200 (umap-learn uses 500 below 10,000 points); a set
    ``random_state`` makes it deterministic: umap-learn then runs single-threaded, so its layout
    optimisation is replaced by :mod:`._umap_layout`'s, which is parallel and deterministic
    (the same map for a seed whatever the number of cores).
    ``init="auto"``: the spectral layout up to ``SPECTRAL_INIT_MAX`` points, PCA above."""

    def __init__(self, n_components: int = 2, *, n_neighbors: int = 15, min_dist: float = 0.1,
                 metric: str = "euclidean", n_epochs: int | None = None, init: str = "auto",
                 n_jobs: int = 0, random_state: int | None = None):
        self.n_components = n_components
        self.n_neighbors = n_neighbors
        self.min_dist = min_dist
        self.metric = metric
        self.n_epochs = n_epochs
        self.init = init
        self.n_jobs = n_jobs
        self.random_state = random_state

    def _fit(self, X, knn):
        from ._numba import import_umap

        umap = import_umap()
        n = X.shape[0]
        nn = min(int(self.n_neighbors), n - 1)
        if nn < self.n_neighbors:
            log.warning("n_neighbors %d is too large for %d points; using %d", self.n_neighbors, n, nn)
        graph = slice_knn(knn, nn - 1) if knn is not None else knn_graph(
            X, nn - 1, metric=self.metric, seed=self.random_state or 0)
        idx, dist = with_self(graph)
        init = self.init if self.init != "auto" else "spectral" if n <= SPECTRAL_INIT_MAX else "pca"
        model = umap.UMAP(n_components=self.n_components, n_neighbors=nn, min_dist=self.min_dist,
                          metric=self.metric, n_epochs=self.n_epochs or 200, init=init,
                          random_state=self.random_state,
                          n_jobs=1 if self.random_state is not None else n_jobs(self.n_jobs),
                          precomputed_knn=(idx, dist, None))
        with warnings.catch_warnings():
            # umap-learn's notices: no transform with a precomputed graph (we transform by
            # neighbours), n_jobs forced to 1 by a seed, disconnected graph components
            warnings.filterwarnings("ignore", category=UserWarning, module=r"umap(\.|$)")
            warnings.filterwarnings("ignore", message=r".*(precomputed_knn|n_jobs value|disconnected|"
                                    r"spectral initiali[sz]ation|Cannot cache compiled function).*")
            if self.random_state is None:      # umap-learn's own parallel (racy) optimiser
                Y = model.fit_transform(X)
            else:                              # seeded: parallel and still deterministic
                from ._umap_layout import MIN_PARALLEL_POINTS, PARTITIONS, deterministic_parallel_layout

                parts = PARTITIONS if n >= MIN_PARALLEL_POINTS else 1
                with deterministic_parallel_layout(parts, threads=n_jobs(self.n_jobs)):
                    Y = model.fit_transform(X)
        self.graph_ = model.graph_
        return Y


ENGINE = {"tsne": OpenTSNE, "umap": UMAPLearn, "pca": TorchPCA}
