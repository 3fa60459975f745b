"""Similar sounds: a point's nearest neighbours in feature space, from the project's graph.

``klustr embed`` keeps the k-nearest-neighbour graph of the features it reduced in
``PROJECT/neighbours/<features>-<metric>-<hash>-k<k>.npz`` (:func:`..reduce.neighbours.cached_knn`;
rows in feature-table order, each point itself excluded). That graph, not distance on the 2-D
map, is what "similar sounds" means: :class:`SimilarSounds` finds the graph that belongs to the
map's embedding and answers each point's neighbours from it.

Which graph: the embedding's metadata names its feature set and preprocessing (standardise, PCA
components, metric); the features are loaded and preprocessed the same way, and the graph whose
name carries their hash (:func:`..reduce.neighbours.graph_key`) is the one. If none carries it
(the same features preprocessed with other floating-point rounding, say), a graph of the same
feature set, metric and row count is accepted when it agrees with exact neighbours of 64 sampled
rows (recall >= 0.8). When no graph matches, one is computed with ``cached_knn`` (stored in the
same place and format) for up to ``compute_max`` points; above that, or when the embedding
records no feature set (a fake or imported map), the app uses 2-D map neighbours and says so.
Loading runs in a background thread; until it is done the app also uses map neighbours.
"""
from __future__ import annotations

import logging
import re
import threading
from pathlib import Path

import numpy as np
import pandas as pd

from ..store import Project
from .data import MapData

log = logging.getLogger(__name__)

COMPUTE_MAX = 200_000       # compute a missing graph in the server up to this many points
COMPUTE_K = 30              # neighbours kept when the server computes a graph
CHECK_ROWS = 64             # rows checked when a graph is matched by content, not by hash
CHECK_RECALL = 0.8


def feature_spec(params: dict) -> dict | None:
    """What an embedding's metadata says its neighbour graph was built from: ``features``,
    ``metric``, ``standardize``, ``pca_components`` (as ``klustr embed`` preprocesses for its
    method) and ``seed``; ``None`` when it records no feature set."""
    features = params.get("features")
    if not features:
        return None
    r = params.get("params") or {}
    method = params.get("method") or r.get("method")
    pca = int(r.get("pca_components", 0) or 0)
    if not (method == "umap" or (method == "tsne" and r.get("pca_before_tsne", True))):
        pca = 0
    return {"features": str(features), "metric": str(r.get("metric", "euclidean")),
            "standardize": bool(r.get("standardize", True)), "pca_components": pca,
            "seed": int(params.get("seed", 0) or 0)}


def _graph_files(folder: Path, pattern: str) -> list[tuple[int, Path]]:
    out = []
    for p in folder.glob(pattern):
        m = re.search(r"-k(\d+)\.npz$", p.name)
        if m:
            out.append((int(m.group(1)), p))
    return sorted(out, reverse=True)


def _load(path: Path) -> np.ndarray:
    with np.load(path) as z:
        return np.asarray(z["indices"], dtype=np.int64)


def agrees(indices: np.ndarray, Xp: np.ndarray, metric: str, *, rows: int = CHECK_ROWS, seed: int = 0) -> bool:
    """Whether a graph's rows agree with exact neighbours of ``rows`` sampled rows of ``Xp``."""
    from ..reduce.neighbours import NeighbourSearch

    n, k = indices.shape
    if n != Xp.shape[0] or k < 1:
        return False
    k = min(k, 10)
    sample = np.random.default_rng(seed).choice(n, size=min(rows, n), replace=False)
    idx, _ = NeighbourSearch(Xp, metric=metric, device="cpu").query(Xp[sample], k + 1)
    recall = [len(set(indices[r, :k]) & (set(row) - {r})) / k for r, row in zip(sample, idx)]
    return float(np.mean(recall)) >= CHECK_RECALL


class SimilarSounds:
    """The feature-space neighbours of a map's points (see the module's text).

    ``status``: ``"loading"``, ``"ready"`` or ``"none"`` (no graph: use map neighbours);
    ``note``: one sentence for the user saying where the similar sounds come from."""

    def __init__(self, project: Project, data: MapData, *, compute_max: int = COMPUTE_MAX,
                 background: bool = True):
        self.project = project
        self._params, self._frames = dict(data.params), bool(data.frames)
        self._point_ids = data.points["id"]               # not the MapData: it may be let go
        self.compute_max = int(compute_max)
        self.status = "loading"
        self.note = "Loading the feature-space neighbour graph; meanwhile, nearest on the map."
        self.source: Path | None = None
        self._indices: np.ndarray | None = None        # graph rows -> graph rows
        self._row_of_point: np.ndarray | None = None
        self._point_of_row: np.ndarray | None = None
        self._done = threading.Event()
        if background:
            threading.Thread(target=self._run, name="klustr-similar", daemon=True).start()
        else:
            self._run()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def _run(self) -> None:
        try:
            self._find()
        except Exception as exc:        # never breaks the app: map neighbours instead, said why
            log.warning("similar sounds: %s; using map neighbours", exc, exc_info=log.isEnabledFor(logging.DEBUG))
            self.status = "none"
            self.note = f"Nearest on the map (no feature-space graph: {exc})."
        finally:
            self._done.set()

    def _none(self, why: str) -> None:
        self.status = "none"
        self.note = f"Nearest on the map: {why}"
        log.info("similar sounds: %s", why)

    def _find(self) -> None:
        from ..features import load
        from ..reduce.neighbours import cached_knn, graph_key
        from ..reduce.pca import preprocess

        spec = feature_spec(self._params)
        if spec is None:
            return self._none("this map's embedding records no feature set.")
        table = load(self.project, name=spec["features"], frames=self._frames)
        Xp = preprocess(table.X, standardize=spec["standardize"], pca_components=spec["pca_components"])
        folder = self.project.path / "neighbours"
        metric, tag = spec["metric"], re.sub(r"[^A-Za-z0-9_.]+", "_", spec["features"])
        key = graph_key(Xp, metric)
        indices, source, how = None, None, ""
        for _k, path in _graph_files(folder, f"*-{key}-k*.npz"):
            indices, source, how = _load(path), path, "the graph klustr embed stored"
            break
        if indices is None:
            for _k, path in _graph_files(folder, f"{tag}-{metric}-*-k*.npz"):
                cand = _load(path)
                if agrees(cand, Xp, metric):
                    indices, source, how = cand, path, "a stored graph of the same features"
                    break
        if indices is None:
            if Xp.shape[0] > self.compute_max:
                return self._none(f"no neighbour graph of {spec['features']!r} for this map, and "
                                  f"{Xp.shape[0]:,} points are too many to compute one here "
                                  f"(`klustr embed` stores one up to its sample threshold).")
            self.note = f"Computing the feature-space neighbour graph of {Xp.shape[0]:,} points…"
            cached_knn(folder, Xp, min(COMPUTE_K, Xp.shape[0] - 1), metric=metric, tag=tag, seed=spec["seed"])
            for _k, path in _graph_files(folder, f"*-{key}-k*.npz"):
                indices, source, how = _load(path), path, "a graph computed now and stored"
                break
        self._use(indices, table.ids)
        self.source = source
        self.status = "ready"
        self.note = (f"Similar by sound: nearest in {spec['features']} feature space "
                     f"({metric}; {how}, {source.name}).")
        log.info("similar sounds: %s", self.note)

    def _use(self, indices: np.ndarray, ids) -> None:
        pos = pd.Index(np.asarray(ids, dtype=object)).get_indexer(self._point_ids.to_numpy(dtype=object))
        point_of_row = np.full(len(ids), -1, dtype=np.int64)
        point_of_row[pos[pos >= 0]] = np.flatnonzero(pos >= 0)
        self._row_of_point, self._point_of_row, self._indices = pos.astype(np.int64), point_of_row, indices

    def neighbours(self, i: int, k: int, shown: np.ndarray | None = None) -> np.ndarray | None:
        """Up to ``k`` point indices most similar to point ``i`` (nearest first), among the
        ``shown`` points when a mask is given; ``None`` when there is no graph (yet)."""
        if self.status != "ready" or self._indices is None:
            return None
        r = self._row_of_point[i]
        if r < 0:
            return np.zeros(0, dtype=np.int64)
        pts = self._point_of_row[self._indices[r]]
        pts = pts[(pts >= 0) & (pts != i)]
        if shown is not None:
            pts = pts[shown[pts]]
        return pts[:k]


_SHARED: dict[tuple, SimilarSounds] = {}
_LOCK = threading.Lock()


def shared(project: Project, data: MapData) -> SimilarSounds:
    """The one :class:`SimilarSounds` of a server's map (every session shares it; forgotten
    when ``data`` is)."""
    import weakref

    key = (str(Path(project.path).resolve()), data.embedding, id(data))
    with _LOCK:
        if key not in _SHARED:
            _SHARED[key] = SimilarSounds(project, data)
            weakref.finalize(data, _SHARED.pop, key, None)
        return _SHARED[key]
