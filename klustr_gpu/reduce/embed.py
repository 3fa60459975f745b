"""``fit_embedding`` (arrays in, coordinates out) and ``embed`` (a project's features in,
``embeddings/<name>.parquet`` out)."""
from __future__ import annotations

import contextlib
import logging
import re
import time
from typing import Any, Iterator

import numpy as np
import pandas as pd

from ..config import Config, ReduceConfig
from ..errors import UsageError
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
    Above ``sample_threshold`` points, fit on ``sample_size`` of them and place the rest with
    ``transform``, in batches of ``transform_batch`` (a progress bar if ``progress``; with
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
    if method == "pca" or resolved != "cpu":
        knn = None
    return reducer.fit(X, knn=knn).embedding_


# -- the project-level entry point ---------------------------------------------------------------
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


def _labels(proj: Project, file_ids: np.ndarray) -> list:
    man = proj.read_manifest()
    lab = man.set_index("id")["label"] if "label" in man else pd.Series(dtype=object)
    out = pd.Series(file_ids).map(lab)
    return [None if (v is None or (isinstance(v, float) and np.isnan(v)) or v == "") else str(v) for v in out]


def _effective_config(proj: Project, config, method, features, engine, params) -> Config:
    cfg = config if config is not None else proj.load_config()
    upd = {k: v for k, v in dict(method=method, features=features, engine=engine).items() if v is not None}
    data: dict[str, Any] = {}
    if "seed" in params:
        data["seed"] = params.pop("seed")
    upd.update(params)
    data["reduce"] = upd
    return cfg.updated(data)


@contextlib.contextmanager
def _client(cluster) -> Iterator[Any]:
    """A ``distributed.Client`` for a spec (started and closed here), a given Client, or None."""
    if cluster is None or isinstance(cluster, str):
        from ..cluster import client

        with client(cluster or None) as c:
            yield c
    else:
        yield cluster


def embed(project, config: Config | None = None, *, method: str | None = None, features: str | None = None,
          engine: str | None = None, name: str | None = None, progress: bool = True, cluster=None,
          **params) -> pd.DataFrame:
    """Reduce a project's features to a 2-D map and write ``embeddings/<name>.parquet``.

    Loads the feature set (``features.load``), standardises and PCA-projects it
    (``reduce.pca_components``; before t-SNE only if ``reduce.pca_before_tsne``), reuses or
    builds the neighbour graph (``PROJECT/neighbours/``, cpu engine), reduces with
    ``method`` on ``engine`` and writes columns ``id, file_id, start, x, y, label``, with the
    method, resolved engine, features, every parameter, seed, seconds and n_points in the
    file's metadata. Keyword arguments override ``config.reduce`` (``n_neighbors=30``,
    ``min_dist=0.0``, ``perplexity=50``, ``metric='correlation'``, ``pca_components=14``, and
    ``seed``); the effective config is written back to ``klustr.toml``. ``name`` defaults to
    ``"<features>-<method>"``. Holds the project lock. Returns the data frame.

    ``cluster``: a Dask cluster spec (``local:N``, ``cuda``, ``tcp://HOST:PORT``) or a
    ``distributed.Client``: above ``reduce.sample_threshold`` points, the points beyond the
    fitted sample are placed on its workers (a cluster is started only then).
    """
    proj = Project(project)
    proj.require("manifest")
    cfg = _effective_config(proj, config, method, features, engine, dict(params))
    r = cfg.reduce
    resolved = resolve_engine(r.engine)        # an impossible engine fails before any work
    if isinstance(cluster, str) and cluster:
        from ..cluster import parse

        parse(cluster)
    name = name or f"{r.features}-{r.method}"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.=+-]*", name):
        raise UsageError(f"embedding name {name!r}: use letters, digits and _ . = + - only")
    from ..features import load

    with proj.lock("embed"):
        proj.write_config(cfg)
        table = load(proj, name=r.features)
        t0 = time.perf_counter()
        pca_k = r.pca_components if (r.method == "umap" or (r.method == "tsne" and r.pca_before_tsne)) else 0
        Xp = preprocess(table.X, standardize=r.standardize, pca_components=pca_k)
        n = Xp.shape[0]
        knn = None
        if (resolved == "cpu" and r.method != "pca" and r.cache_neighbours and Xp.shape[1] > 0
                and MIN_POINTS <= n <= r.sample_threshold):
            knn = cached_knn(proj.path / "neighbours", Xp, _graph_k(r, n), metric=r.metric,
                             tag=r.features, seed=cfg.seed)
        sampled = r.method != "pca" and r.sample_threshold and n > r.sample_threshold and n > r.sample_size
        with _client(cluster if sampled else None) as client:
            Y = fit_embedding(Xp, r.method, engine=resolved, knn=knn, seed=cfg.seed, progress=progress,
                              client=client, **method_params(r))
        seconds = time.perf_counter() - t0
        df = pd.DataFrame({"id": table.ids, "file_id": table.file_ids,
                           "start": np.asarray(table.starts, dtype=np.float64),
                           "x": Y[:, 0], "y": Y[:, 1], "label": _labels(proj, table.file_ids)})
        if r.clusters > 0:
            df["cluster"] = feature_clusters(Xp, r.clusters, seed=cfg.seed)
        meta = {"method": r.method, "engine": resolved, "engine_requested": r.engine,
                "features": r.features, "params": dict(vars(r)), "seed": cfg.seed,
                "seconds": round(seconds, 3), "n_points": int(n), "dims_in": int(table.X.shape[1]),
                "dims_reduced": int(Xp.shape[1]), "name": name}
        proj.write_embedding(name, df, meta)
    log.info("embedding %s: %d points by %s on %s in %.1f s", name, n, r.method, resolved, seconds)
    return df
