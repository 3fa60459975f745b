"""``fit_embedding`` (arrays in, coordinates out) and ``embed`` (a project's features in,
``embeddings/<name>.parquet`` out)."""
from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pandas as pd

from ..config import METHODS, Config, ReduceConfig
from ..errors import UsageError
from ..library.labels import manifest_labels
from ..results import EmbedResult
from ..runtime import using_cluster
from ..store import Project
from .base import MIN_POINTS
from .engines import check_method, make_reducer, resolve_engine
from .neighbours import cached_knn
from .pca import preprocess
from .validate import check_features, check_knn

log = logging.getLogger(__name__)


def _transform_rows(reducer, X: np.ndarray, batch: int) -> np.ndarray:
    """One batch of points placed by a fitted reducer (also runs on Dask workers)."""
    return np.asarray(reducer.transform(X, batch_size=batch), dtype=np.float32)


def _sample_fit(reducer, X: np.ndarray, size: int, seed: int, batch: int, progress: bool,
                client=None) -> np.ndarray:
    """Fit on ``size`` random rows, place the others with ``reducer.transform`` in batches
    (with ``client``, a ``distributed.Client``: the batches run on its workers)."""
    n = X.shape[0]
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, size=min(size, n), replace=False))
    log.info("%d points: fitting on a random sample of %d, placing the rest in batches of %d",
             n, sample.size, batch)
    reducer.fit(X[sample])
    Y = np.empty((n, reducer.embedding_.shape[1]), dtype=np.float32)
    Y[sample] = reducer.embedding_
    rest = np.ones(n, dtype=bool)
    rest[sample] = False
    rest = np.flatnonzero(rest)
    from tqdm.auto import tqdm

    parts = [rest[s:s + batch] for s in range(0, rest.size, batch)]
    with tqdm(total=rest.size, desc="placing points", unit=" pts", disable=not progress) as bar:
        if client is None:
            for rows in parts:
                Y[rows] = _transform_rows(reducer, X[rows], batch)
                bar.update(rows.size)
            return Y
        from distributed import as_completed

        [fitted] = client.scatter([reducer], broadcast=True)
        futures = {client.submit(_transform_rows, fitted, X[rows], batch, pure=False): rows for rows in parts}
        try:
            for f in as_completed(list(futures)):
                rows = futures[f]
                Y[rows] = f.result()
                bar.update(rows.size)
        except BaseException:
            client.cancel(list(futures))
            raise
    return Y


def fit_embedding(X, method: str, *, engine: str = "auto", knn=None, seed: int = 0,
                  sample_threshold: int | None = None, sample_size: int = 100_000, transform_batch: int = 100_000,
                  progress: bool = False, client=None, **params) -> np.ndarray:
    """Coordinates ``[n, 2]`` (float32) of the rows of ``X [n, d]`` by ``method``.

    ``knn=(indices, distances)`` from :func:`knn_graph` on the same ``X`` (self excluded, any
    ``k`` at least what the run needs: 3 x perplexity for t-SNE, n_neighbors - 1 for UMAP) is
    reused by the cpu engine and ignored by the GPU engines, which build their own.
    ``params``: the arguments of ``method``'s estimator on that engine (``n_neighbors``,
    ``min_dist``, ``metric``, ``n_epochs`` for UMAP; ``perplexity``, ``n_iter``, ``metric`` for
    t-SNE; see :func:`method_params`); one it does not take is a :class:`UsageError` naming it.
    Above ``sample_threshold`` points, or above what the reducer can fit in memory
    (:meth:`.base.Reducer.max_fit_points`: TorchDR's dense fits), fit on ``sample_size`` of them
    (or that many) and place the rest with ``transform``, in batches of ``transform_batch`` (a progress bar if ``progress``; with
    ``client``, a ``distributed.Client``, the batches are placed on its workers).
    """
    X = check_features(X, allow_no_columns=True)
    check_method(method)
    resolved = resolve_engine(engine)
    reducer = make_reducer(method, resolved, random_state=seed, **params)
    n = X.shape[0]
    if knn is not None:
        check_knn(knn, n=n)
    if method != "pca" and sample_threshold and n > sample_threshold and n > sample_size:
        return _sample_fit(reducer, X, sample_size, seed, transform_batch, progress, client)
    limit = reducer.max_fit_points() if method != "pca" else None
    if limit is not None and n > limit:
        log.warning("%s on the %s engine holds at most %d of these %d points in memory: fitting on a "
                    "sample of %d and placing the rest", method, resolved, limit, n, min(limit, sample_size))
        return _sample_fit(reducer, X, min(limit, sample_size), seed, transform_batch, progress, client)
    if method == "pca" or resolved != "cpu":
        knn = None
    return reducer.fit(X, knn=knn).embedding_


# -- the project-level entry point ---------------------------------------------------------------
#: ``[reduce]`` settings that only one method uses: setting one for another method is a mistake
METHOD_SETTINGS = {"umap": ("n_neighbors", "min_dist", "umap_epochs"),
                   "tsne": ("perplexity", "tsne_iterations", "pca_before_tsne"), "pca": ()}
assert set(METHOD_SETTINGS) == set(METHODS)


def check_method_settings(method: str, names) -> None:
    """A :class:`UsageError` naming the first of ``names`` that belongs to another method
    (``perplexity`` given for a UMAP map)."""
    for name in names:
        owner = next((m for m, keys in METHOD_SETTINGS.items() if name in keys), method)
        if owner != method:
            raise UsageError(f"{name} is a {owner} setting; method={method!r} does not use it", param=name)


def method_params(r: ReduceConfig, method: str | None = None) -> dict[str, Any]:
    """The arguments of :func:`fit_embedding` for ``method`` (default ``r.method``) from the
    ``[reduce]`` settings: its estimator's parameters and the sampling ones."""
    method = check_method(method or r.method)
    run = dict(sample_threshold=r.sample_threshold, sample_size=r.sample_size, transform_batch=r.transform_batch)
    if method == "umap":
        return dict(n_neighbors=r.n_neighbors, min_dist=r.min_dist, metric=r.metric,
                    n_epochs=r.umap_epochs or None, **run)
    if method == "tsne":
        return dict(perplexity=r.perplexity, n_iter=r.tsne_iterations, metric=r.metric, **run)
    return run


def feature_clusters(Xp: np.ndarray, k: int, *, seed: int = 0) -> np.ndarray:
    """k-means of the preprocessed features (mini-batch, seeded: a second or two at a million
    points): the colours of an unlabelled map (``render --by cluster``, or ``auto``). int16,
    0..k-1; all 0 when there is nothing to cluster."""
    n = Xp.shape[0]
    k = min(int(k), n)
    if k < 2 or Xp.shape[1] == 0:
        return np.zeros(n, dtype=np.int16)
    import warnings

    from sklearn.cluster import MiniBatchKMeans

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # duplicate points: fewer distinct clusters than k
        km = MiniBatchKMeans(n_clusters=k, batch_size=4096, n_init=3, random_state=seed)
        return km.fit_predict(np.asarray(Xp, dtype=np.float32)).astype(np.int16)


def _graph_k(r: ReduceConfig, n: int) -> int:
    """The neighbours this run needs: 3 x perplexity for t-SNE, n_neighbors - 1 for UMAP. A
    cached graph with at least that many is sliced, so a UMAP after a t-SNE reuses its graph;
    a UMAP alone does not pay for t-SNE's 90 neighbours (35 s instead of 11 s at 100,000
    points here). ``klustr grid`` computes the largest k of its runs once, itself."""
    need = int(3 * r.perplexity) if r.method == "tsne" else r.n_neighbors - 1
    return max(1, min(n - 1, need))


def embed_project(proj: Project, cfg: Config, *, engine: str, name: str, cluster=None,
                  progress: bool = True) -> EmbedResult:
    """Reduce the project's feature set ``reduce.features`` to a 2-D map, written as
    ``embeddings/<name>.parquet`` (see :func:`klustr_gpu.embed`).

    Standardises and PCA-projects it (``reduce.pca_components``; before t-SNE only if
    ``reduce.pca_before_tsne``), reuses or builds the neighbour graph (``PROJECT/neighbours/``,
    cpu engine), reduces with ``reduce.method`` on the resolved ``engine``, adds k-means
    clusters of the features (``reduce.clusters``) and writes columns ``id, file_id, start, x,
    y, label, cluster`` with the method, engine, features, every parameter, seed, seconds and
    n_points in the file's metadata. ``cluster``: a Dask cluster spec or ``distributed.Client``
    on which the points beyond the fitted sample are placed (a cluster is started only then).
    The caller holds the project's lock.
    """
    from ..features import load

    r = cfg.reduce
    table = load(proj, name=r.features)
    t0 = time.perf_counter()
    pca_k = r.pca_components if (r.method == "umap" or (r.method == "tsne" and r.pca_before_tsne)) else 0
    Xp = preprocess(table.X, standardize=r.standardize, pca_components=pca_k)
    n = Xp.shape[0]
    knn = None
    if (engine == "cpu" and r.method != "pca" and r.cache_neighbours and Xp.shape[1] > 0
            and MIN_POINTS <= n <= r.sample_threshold):
        knn = cached_knn(proj.path / "neighbours", Xp, _graph_k(r, n), metric=r.metric, tag=r.features, seed=cfg.seed)
    sampled = r.method != "pca" and r.sample_threshold and n > r.sample_threshold and n > r.sample_size
    with using_cluster(cluster if sampled else None) as c:
        Y = fit_embedding(Xp, r.method, engine=engine, knn=knn, seed=cfg.seed, progress=progress, client=c,
                          **method_params(r))
    seconds = time.perf_counter() - t0
    by_file = manifest_labels(proj)
    df = pd.DataFrame({"id": table.ids, "file_id": table.file_ids, "start": np.asarray(table.starts, dtype=np.float64),
                       "x": Y[:, 0], "y": Y[:, 1], "label": [by_file.get(str(f)) for f in table.file_ids]})
    if r.clusters > 0:
        df["cluster"] = feature_clusters(Xp, r.clusters, seed=cfg.seed)
    meta = {"method": r.method, "engine": engine, "engine_requested": r.engine, "features": r.features,
            "params": dict(vars(r)), "seed": cfg.seed, "seconds": round(seconds, 3), "n_points": int(n),
            "dims_in": int(table.X.shape[1]), "dims_reduced": int(Xp.shape[1]), "name": name}
    path = proj.write_embedding(name, df, meta)
    log.info("embedding %s: %d points by %s on %s in %.1f s", name, n, r.method, engine, seconds)
    return EmbedResult(name=name, path=path, n_points=int(n), method=r.method, engine=engine, features=r.features,
                       seconds=round(seconds, 3), frame=df)
