"""The population of maps: feature sets x methods x parameters, scored and ranked.

For each feature set the features are preprocessed once per preprocessing (standardise, and
PCA to ``reduce.pca_components`` before UMAP, and before t-SNE when ``reduce.pca_before_tsne``),
one neighbour graph with the largest k any run needs is computed once per preprocessing and
sliced for every run (UMAP ``n_neighbors``, t-SNE ``3 x perplexity``). One progress bar runs over the whole grid.

A feature set may be a combination of computed sets, ``"timbre+descriptors"``: their columns
side by side (rows every part has), standardised together like one set. The plan always holds
the default map's own parameters (``reduce.perplexity``; ``reduce.n_neighbors`` and
``reduce.min_dist``), so the grid's best map is at least the default's.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pyarrow as pa

from ..config import FEATURE_SETS, METHODS, Config, ReduceConfig, ScoreConfig
from ..errors import KlustrError, UsageError
from ..library.labels import manifest_labels
from ..results import GridResult
from ..store import Project
from .scoring import (assemble, feature_block, finish, has_labels, load_feature_matrix, rank_key, score_embedding,
                      write_scores)

log = logging.getLogger(__name__)

QUICK = {"perplexities": [30.0], "n_neighbors": [15], "min_dists": [0.1], "tsne_iterations": 500}


@dataclass(frozen=True)
class Run:
    """One map of the grid: a feature set, a method and its parameters."""

    features: str
    method: str
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.params)

    @property
    def name(self) -> str:
        short = {"n_neighbors": "nn", "min_dist": "md", "perplexity": "p"}
        bits = [f"{short[k]}{_fmt(v)}" for k, v in self.params if k in short]
        return "-".join(["grid", self.features, self.method, *bits])

    @property
    def title(self) -> str:
        short = {"n_neighbors": "nn", "min_dist": "md", "perplexity": "perp"}
        bits = [f"{short[k]}={_fmt(v)}" for k, v in self.params if k in short]
        return f"{self.features} {self.method} " + " ".join(bits)

    def needed_k(self, n: int) -> int:
        p = self.kwargs
        if self.method == "umap":
            return int(p["n_neighbors"])
        if self.method == "tsne":
            return int(min(n - 1, 3 * float(p["perplexity"])))
        return 0


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def plan(features: list[str], methods: list[str], sc: ScoreConfig, *, quick: bool = False,
         default: ReduceConfig | None = None) -> list[Run]:
    """The runs of the grid, in order (feature set, method, parameters); with ``default`` (the
    config's reduction), its perplexity (with its own iterations, so the run is the default
    map) and its UMAP pair are added where missing (``quick``: they replace the quick plan's)."""
    perps = [float(p) for p in (QUICK["perplexities"] if quick else sc.perplexities)]
    pairs = [(int(nn), float(md)) for nn in (QUICK["n_neighbors"] if quick else sc.n_neighbors)
             for md in (QUICK["min_dists"] if quick else sc.min_dists)]
    own: float | None = None                     # the default's perplexity, run as the default runs it
    if default is not None and quick:            # a first look: the default's own t-SNE and UMAP
        perps, pairs = [float(default.perplexity)], [(int(default.n_neighbors), float(default.min_dist))]
    elif default is not None:
        if float(default.perplexity) not in perps:
            own = float(default.perplexity)
            perps = sorted({*perps, own})
        if (int(default.n_neighbors), float(default.min_dist)) not in pairs:
            pairs.append((int(default.n_neighbors), float(default.min_dist)))
    runs: list[Run] = []
    for fs in features:
        for method in methods:
            if method == "umap":
                runs += [Run(fs, "umap", (("n_neighbors", nn), ("min_dist", md))) for nn, md in pairs]
            elif method == "tsne":
                runs += [Run(fs, "tsne", (("perplexity", p),) + ((("n_iter", int(default.tsne_iterations)),)
                                                               if p == own else ())) for p in perps]
            elif method == "pca":
                runs.append(Run(fs, "pca"))
    return runs


def _check(names: list[str], known: tuple[str, ...], what: str) -> list[str]:
    for n in names:
        if n not in known:
            raise UsageError(f"unknown {what} {n!r}; choose from: {', '.join(known)}", param=what)
    return list(dict.fromkeys(names))


def component_sets(name: str) -> list[str]:
    """The computed sets a grid feature set is made of: ``"timbre+descriptors"`` ->
    ``["timbre", "descriptors"]``; checked against ``FEATURE_SETS``."""
    parts = [p.strip() for p in str(name).split("+")]
    if not all(parts):
        raise UsageError(f"feature set {name!r}: give sets joined by '+', e.g. timbre+descriptors")
    return _check(parts, FEATURE_SETS, "features")


def check_sets(names: list[str]) -> list[str]:
    """Grid feature sets (single or ``a+b`` combinations), checked, duplicates dropped."""
    out = []
    for n in names:
        out.append("+".join(component_sets(n)))
    return list(dict.fromkeys(out))


#: What the benchmark's grid covers besides the default set: the previous default (``timbre``),
#: and the ``general`` set's hits and sustained profiles as combinations of computed sets.
COVERAGE = ("timbre", "timbre+descriptors", "descriptors+pitchfree+envelope")


def default_grid_sets(cfg: Config) -> list[str]:
    """The default map's set, then :data:`COVERAGE` (what ``benchmarks/quality.py`` grids over),
    less a combination that is exactly the default ``general`` set's blocks (the same map twice)."""
    same = "+".join(cfg.general.active_blocks()) if cfg.reduce.features == "general" else None
    return check_sets([cfg.reduce.features, *(s for s in COVERAGE if s != same)])


def combined_table(tables: list):
    """Feature tables of one project side by side: the rows every table has (in the first
    table's order), columns concatenated. -> an object with ids, file_ids, starts, X, name."""
    from types import SimpleNamespace

    if len(tables) == 1:
        return tables[0]
    first = tables[0]
    ids = pd.Index(np.asarray(first.ids).astype(str))
    keep = np.ones(len(ids), dtype=bool)
    pos = []
    for t in tables:
        p = pd.Index(np.asarray(t.ids).astype(str)).get_indexer(ids)
        keep &= p >= 0
        pos.append(p)
    X = np.concatenate([np.asarray(t.X)[p[keep]] for t, p in zip(tables, pos)], axis=1)
    return SimpleNamespace(ids=np.asarray(first.ids)[keep], file_ids=np.asarray(first.file_ids)[keep],
                           starts=np.asarray(first.starts)[keep], X=np.ascontiguousarray(X, dtype=np.float32),
                           name="+".join(t.name for t in tables))


def _computed_sets(proj: Project) -> list[str]:
    root = proj.features_root
    if not root.is_dir():
        return []
    return [s for s in FEATURE_SETS if (root / s).is_dir()]


@dataclass
class _Prepared:
    """One feature set, preprocessed for the runs that share it."""

    X: np.ndarray                      # the raw features, for the feature-space scores
    labels: np.ndarray
    table: Any
    views: dict[int, np.ndarray] = field(default_factory=dict)       # pca components -> matrix
    knn: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    seconds: float = 0.0
    digest: str = ""                   # of the ids and features: a map made from them can be reused


def _pca_for(method: str, cfg: Config) -> int:
    """PCA components of the view a method runs on. A PCA map is made from the PCA view too: its
    first two components are those of the full features, at a fraction of the cost."""
    r = cfg.reduce
    if method == "tsne" and not r.pca_before_tsne:
        return 0
    return int(r.pca_components)


def _prepare(table, labels, runs: list[Run], cfg: Config, engine: str) -> _Prepared:
    from .. import reduce

    t0 = time.perf_counter()
    prep = _Prepared(X=np.asarray(table.X), labels=labels, table=table)
    h = hashlib.blake2b(digest_size=16)
    h.update("\0".join(map(str, table.ids)).encode())
    h.update(np.ascontiguousarray(prep.X, dtype=np.float32).tobytes())
    prep.digest = h.hexdigest()
    n = len(prep.X)
    for run in runs:
        pc = _pca_for(run.method, cfg)
        if pc not in prep.views:
            prep.views[pc] = reduce.preprocess(prep.X, standardize=cfg.reduce.standardize,
                                               pca_components=pc)
    kmax: dict[int, int] = {}
    for run in runs:
        pc = _pca_for(run.method, cfg)
        kmax[pc] = max(kmax.get(pc, 0), run.needed_k(n))
    device = "cpu" if engine == "cpu" else "auto"
    for pc, k in kmax.items():
        if k > 0 and n > 2:
            prep.knn[pc] = reduce.knn_graph(prep.views[pc], k, metric=cfg.reduce.metric, device=device, seed=cfg.seed)
    prep.seconds = time.perf_counter() - t0
    return prep


def _fit(run: Run, prep: _Prepared, cfg: Config, sc: ScoreConfig, engine: str, quick: bool) -> np.ndarray:
    from .. import reduce

    pc = _pca_for(run.method, cfg)
    X = prep.views[pc]
    n = len(X)
    params = run.kwargs
    if run.method in ("umap", "tsne"):
        params["metric"] = cfg.reduce.metric
    if run.method == "tsne":
        params["perplexity"] = min(params["perplexity"], max(1.0, (n - 1) / 3.0))
        params.setdefault("n_iter", QUICK["tsne_iterations"] if quick else sc.tsne_iterations)
    if run.method != "pca":
        params.update(sample_threshold=cfg.reduce.sample_threshold, sample_size=cfg.reduce.sample_size)
    knn = prep.knn.get(pc) if run.method != "pca" else None   # the shared graph; the reducer slices it
    with warnings.catch_warnings():
        # small n_neighbors in a grid often leave the k-NN graph disconnected; UMAP then lays the
        # components out apart, which is the map we want to score, not a fault
        warnings.filterwarnings("ignore", message="Graph is not fully connected", category=UserWarning)
        return np.asarray(reduce.fit_embedding(X, run.method, engine=engine, knn=knn, seed=cfg.seed, **params))


def _write_map(proj: Project, run: Run, prep: _Prepared, Z: np.ndarray, meta: dict[str, Any]) -> None:
    t = prep.table
    df = pd.DataFrame({"id": t.ids, "file_id": t.file_ids, "start": t.starts,
                       "x": Z[:, 0].astype(np.float32), "y": Z[:, 1].astype(np.float32),
                       "label": pd.array(prep.labels, dtype="string")})
    proj.write_embedding(run.name, df, meta)


def _population(table, labels: np.ndarray, runs: list[Run], cfg: Config, *, engine: str, quick: bool, bar,
                on_map: Callable[[Run, _Prepared, np.ndarray, dict[str, Any]], None] | None = None,
                reuse: Callable[[Run, _Prepared, dict[str, Any]], tuple[np.ndarray, float] | None] | None = None,
                ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every run of one feature set (``table``: ids, file_ids, starts, X): ``(rows, feature block)``."""
    sc = cfg.score
    prep = _prepare(table, labels, runs, cfg, engine)
    block = feature_block(prep.X, labels, k=sc.k, sample=sc.sample, seed=cfg.seed)
    block["prepare_seconds"] = prep.seconds
    rows = {}
    for run in runs:
        bar.set_postfix_str(run.title, refresh=False)
        rows[run.name] = _one(run, prep, cfg, sc, engine, quick, on_map, reuse)
        bar.update(1)
    return rows, block


def _validated(cfg: Config, engine: str, rank_by: str | None, methods: list[str] | None) -> tuple[str, str, list[str]]:
    from ..reduce import resolve_engine

    engine = resolve_engine(engine)            # an impossible engine fails here, before any work
    rank_by = rank_by or cfg.score.rank_by
    rank_key(rank_by, True)                    # so does an unknown ranking
    methods = _check(list(methods) if methods else list(cfg.score.methods), METHODS, "methods")
    return engine, rank_by, methods


def check_grid(proj: Project, cfg: Config, features: list[str] | None) -> tuple[str, list[str], list[str]]:
    """``(engine, feature sets, methods)`` of a grid, checked before any work: the engine
    (``reduce.engine``) resolved, the methods (``score.methods``) known, the feature sets
    (default: every set computed in the project; ``a+b`` for computed sets side by side) known
    and computed."""
    engine, _, methods = _validated(cfg, cfg.reduce.engine, None, None)
    sets = check_sets(list(features) if features else _computed_sets(proj))
    if not sets:
        raise UsageError(f"{proj.path} has no features yet; run compute_features({str(proj.path)!r}) first")
    return engine, sets, methods


def run_grid(proj: Project, cfg: Config, *, sets: list[str], methods: list[str], engine: str, quick: bool = False,
             progress: bool = True) -> GridResult:
    """Run the population of maps of ``proj``, score and rank them (see :func:`klustr_gpu.grid`).

    Writes ``embeddings/<run>.parquet`` per run, ``scores.json``, ``report.md``, ``grid.png``,
    and makes the best map the default. ``engine`` is resolved and ``sets`` / ``methods``
    checked (:func:`check_grid`); the caller holds the project's lock. The plan holds the
    default map's own parameters (``cfg.reduce``).
    """
    runs = plan(sets, methods, cfg.score, quick=quick, default=cfg.reduce)
    by_file = manifest_labels(proj)
    tables, loaded = {}, {}
    for fs in sets:
        for part in component_sets(fs):
            if part not in loaded:
                loaded[part] = load_feature_matrix(proj, part)
            if loaded[part] is None:
                raise UsageError(f"{proj.path} has no features {part!r}; "
                                 f"run compute_features({str(proj.path)!r}, sets=[{part!r}])")
        tables[fs] = combined_table([loaded[p] for p in component_sets(fs)])

    def write(run: Run, prep: _Prepared, Z: np.ndarray, meta: dict[str, Any]) -> None:
        _write_map(proj, run, prep, Z, meta)

    return _grid_locked(proj, cfg, sets, runs, tables, by_file, has_labels(by_file.values()), write, engine=engine,
                        quick=quick, rank_by=cfg.score.rank_by, methods=methods, progress=progress)


def _grid_locked(proj: Project, cfg: Config, sets: list[str], runs: list[Run], tables: dict, by_file: dict,
                 labelled: bool, write, *, engine: str, quick: bool, rank_by: str, methods: list[str],
                 progress: bool) -> GridResult:
    from tqdm.auto import tqdm

    from .report import write_contact_sheet, write_report

    sc = cfg.score
    rows: dict[str, Any] = {}
    feat_rows: dict[str, Any] = {}
    t_start = time.perf_counter()
    with tqdm(total=len(runs), desc="grid", unit="map", disable=not progress) as bar:
        for fs in sets:
            table = tables[fs]
            labels = np.array([by_file.get(str(f)) for f in table.file_ids], dtype=object)
            got, feat_rows[fs] = _population(table, labels, [r for r in runs if r.features == fs], cfg,
                                             engine=engine, quick=quick, bar=bar, on_map=write,
                                             reuse=lambda run, prep, meta: _finished_map(proj, run, prep, meta))
            rows.update(got)
    total = time.perf_counter() - t_start
    extra = {"grid": {"runs": len(runs), "seconds": total, "quick": quick, "engine": engine,
                      "features": sets, "methods": methods}}
    result = finish(proj, rows, feat_rows, k=sc.k, sample=sc.sample, rank_by=rank_by, labelled=labelled, extra=extra)
    table = ranked_table(result)
    ok = [n for n in result["ranking"] if result["embeddings"][n].get("error") is None]
    if ok:
        proj.set_default_embedding(ok[0])
        result["default"] = ok[0]
        write_scores(proj, result)
    report = write_report(proj, result, table)
    sheet = write_contact_sheet(proj, result)
    log.info("grid: %d maps in %.1f s; best %s", len(runs), total, ok[0] if ok else None)
    return GridResult(runs=len(runs), seconds=round(total, 3), default=ok[0] if ok else None,
                      scores_path=proj.path / "scores.json", report_path=Path(report),
                      grid_png=Path(sheet) if sheet else None, table=table)


def grid_arrays(X: np.ndarray, labels=None, *, name: str = "features", config: Config | None = None,
                methods: list[str] | None = None, rank_by: str | None = None, engine: str = "auto",
                quick: bool = False, progress: bool = False) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """The same population on an array ``X [n, d]`` (a feature set not in a project), nothing written.

    Returns ``(ranked table, {run name: map [n, 2]})``; ``name`` stands for the feature set.
    """
    from types import SimpleNamespace

    from tqdm.auto import tqdm

    cfg = config or Config()
    engine, rank_by, methods = _validated(cfg, engine, rank_by, methods)
    X = np.asarray(X, dtype=np.float32)
    n = len(X)
    labels = np.full(n, None, dtype=object) if labels is None else np.asarray(labels, dtype=object)
    ids = np.array([str(i) for i in range(n)], dtype=object)
    table = SimpleNamespace(ids=ids, file_ids=ids, starts=np.zeros(n), X=X, name=name)
    runs = plan([name], methods, cfg.score, quick=quick, default=cfg.reduce)
    maps: dict[str, np.ndarray] = {}

    def keep(run: Run, prep: _Prepared, Z: np.ndarray, meta: dict[str, Any]) -> None:
        maps[run.name] = Z

    t0 = time.perf_counter()
    with tqdm(total=len(runs), desc="grid", unit="map", disable=not progress) as bar:
        rows, block = _population(table, labels, runs, cfg, engine=engine, quick=quick, bar=bar, on_map=keep)
    result = assemble(rows, {name: block}, k=cfg.score.k, sample=cfg.score.sample, rank_by=rank_by,
                      labelled=has_labels(labels), extra={"grid": {"seconds": time.perf_counter() - t0}})
    return ranked_table(result), maps


def _finished_map(proj: Project, run: Run, prep: _Prepared, meta: dict[str, Any]) -> tuple[np.ndarray, float] | None:
    """The map of ``run`` a previous (e.g. killed) grid wrote, if it was made exactly as this run
    would make it (same parameters, engine, seed, quick flag, points and features): (Z, seconds)."""
    path = proj.embedding_path(run.name)
    if not path.exists():
        return None
    try:
        df, old = proj.read_embedding(run.name)
    except (OSError, ValueError, KlustrError, pa.ArrowException):
        return None
    same = all(json.dumps(old.get(k), sort_keys=True, default=str) == json.dumps(v, sort_keys=True, default=str)
               for k, v in meta.items())
    if not same or list(df["id"].astype(str)) != [str(i) for i in prep.table.ids]:
        return None
    log.info("grid: %s was finished by an earlier run; reused", run.name)
    return df[["x", "y"]].to_numpy(np.float32), float(old.get("seconds") or 0.0)


def _one(run: Run, prep: _Prepared, cfg: Config, sc: ScoreConfig, engine: str, quick: bool,
         on_map, reuse=None) -> dict[str, Any]:
    row: dict[str, Any] = {"features": run.features, "method": run.method, "params": run.kwargs, "title": run.title}
    meta = {"method": run.method, "features": run.features, "params": run.kwargs, "engine": engine,
            "seed": cfg.seed, "grid": True, "metric": cfg.reduce.metric,
            "pca_components": _pca_for(run.method, cfg), "standardize": cfg.reduce.standardize,
            "quick": quick, "sample_threshold": cfg.reduce.sample_threshold, "sample_size": cfg.reduce.sample_size,
            "features_digest": prep.digest}
    t0 = time.perf_counter()
    done = reuse(run, prep, meta) if reuse is not None else None
    if done is not None:
        Z, seconds = done
    else:
        try:
            Z = _fit(run, prep, cfg, sc, engine, quick)
        except (ValueError, RuntimeError, FloatingPointError, np.linalg.LinAlgError, MemoryError) as exc:
            if isinstance(exc, UsageError):
                raise
            log.warning("grid run %s failed: %s", run.name, exc)
            row.update(seconds=time.perf_counter() - t0, error=f"{type(exc).__name__}: {exc}",
                       scores={k: None for k in ("knn_accuracy", "trustworthiness")}, notes=[f"run failed: {exc}"])
            return row
        seconds = time.perf_counter() - t0
        if on_map is not None:
            on_map(run, prep, Z, dict(meta, seconds=seconds))
    df = pd.DataFrame({"x": Z[:, 0], "y": Z[:, 1]})
    scored = score_embedding(df, prep.labels, prep.X, k=sc.k, sample=sc.sample, seed=cfg.seed)
    row.update(seconds=seconds, score_seconds=scored["seconds"], n_points=scored["n_points"],
               scores=scored["scores"], notes=scored["notes"], error=None)
    return row


def ranked_table(result: dict[str, Any]) -> pd.DataFrame:
    """One row per map, best first: rank, name, features, method, params, every score, seconds."""
    from .scoring import MAP_KEYS

    recs = []
    for name in result["ranking"]:
        r = result["embeddings"][name]
        s = r.get("scores") or {}
        params = r.get("params") or {}
        recs.append({"rank": r.get("rank"), "name": name, "features": r.get("features"), "method": r.get("method"),
                     "params": " ".join(f"{k}={_fmt(v)}" for k, v in params.items()),
                     **{k: s.get(k) for k in MAP_KEYS}, "seconds": r.get("seconds"), "error": r.get("error")})
    cols = ["rank", "name", "features", "method", "params", *MAP_KEYS, "seconds", "error"]
    return pd.DataFrame.from_records(recs, columns=cols)
