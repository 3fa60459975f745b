"""Scoring the maps of a project: labels, features and embeddings in, ``scores.json`` out."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from ..config import RANK_BY, Config
from ..errors import UsageError
from ..library.labels import clean_label, is_missing, manifest_labels
from ..results import ScoreResult, plain
from ..store import Project, atomic_write_text
from . import metrics as M

log = logging.getLogger(__name__)

SCORES_VERSION = 1
MAP_KEYS = ("knn_accuracy", "trustworthiness", "knn_preservation", "silhouette", "roundness",
            "overlap_2017", "final_2017")
FEATURE_KEYS = ("knn_accuracy_features", "kmeans_homogeneity", "kmeans_completeness", "kmeans_v_measure")
#: the score column each ranking (:data:`klustr_gpu.config.RANK_BY`) sorts by
RANK_KEYS = {name: {"final": "final_2017"}.get(name, name) for name in RANK_BY}
LABEL_FREE = ("trustworthiness", "knn_preservation")


def has_labels(labels: Iterable[Any]) -> bool:
    return any(not is_missing(v) for v in labels)


def rank_key(rank_by: str, labelled: bool, notes: list[str] | None = None) -> str:
    """The score column to rank by; label scores fall back to trustworthiness without labels."""
    if rank_by not in RANK_KEYS:
        raise UsageError(f"unknown rank_by {rank_by!r}; choose one of: {', '.join(RANK_BY)}", param="rank_by")
    key = RANK_KEYS[rank_by]
    if not labelled and key not in LABEL_FREE:
        if notes is not None:
            notes.append(f"no labels: ranked by trustworthiness instead of {rank_by}")
        return "trustworthiness"
    return key


def rank_order(rows: dict[str, dict[str, Any]], key: str) -> list[str]:
    """Names sorted best first by ``key`` (then trustworthiness, then name); undefined scores last."""
    def sortkey(name: str):
        s = rows[name].get("scores") or {}
        v, t = s.get(key), s.get("trustworthiness")
        return (v is None, -(v if v is not None else 0.0), -(t if t is not None else 0.0), name)
    return sorted(rows, key=sortkey)


def write_scores(proj: Project, result: dict[str, Any]) -> Path:
    path = proj.path / "scores.json"
    atomic_write_text(path, json.dumps(plain(result), indent=2, sort_keys=False, allow_nan=False) + "\n")
    return path


def read_scores(proj: Project) -> dict[str, Any]:
    path = proj.path / "scores.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def load_feature_matrix(proj: Project, name: str):
    """``features.load(proj, name)`` or ``None`` (with a log line) when the set is not computed."""
    from ..features import load

    try:
        return load(proj, name=name)
    except (UsageError, FileNotFoundError, KeyError) as exc:
        log.info("feature set %s not available: %s", name, exc)
        return None


def embedding_features_name(meta: dict[str, Any]) -> str | None:
    for d in (meta, meta.get("params") or {}, meta.get("config") or {}):
        if isinstance(d, dict) and isinstance(d.get("features"), str):
            return d["features"]
    return None


def align(table_ids: np.ndarray, ids: np.ndarray) -> np.ndarray | None:
    """Row index into ``table_ids`` of each of ``ids`` (-1 where absent); ``None`` if none match."""
    pos = pd.Index(np.asarray(table_ids).astype(str)).get_indexer(np.asarray(ids).astype(str))
    return None if (pos < 0).all() else pos


def score_embedding(df: pd.DataFrame, labels: np.ndarray, X: np.ndarray | None, *, k: int, sample: int,
                    seed: int = 0) -> dict[str, Any]:
    """``{"n_points", "scores", "notes", "seconds"}`` of one map (``df`` with x, y)."""
    t0 = time.perf_counter()
    notes: list[str] = []
    Z = df[["x", "y"]].to_numpy(dtype=np.float64)
    if X is None:
        notes.append("features not available: trustworthiness and k-NN preservation not defined")
    scores = M.map_scores(Z, labels if has_labels(labels) else None, X, k=k, sample=sample, seed=seed, notes=notes)
    return {"n_points": int(len(df)), "scores": scores, "notes": notes, "seconds": time.perf_counter() - t0}


def score_project(proj: Project, cfg: Config, *, names: list[str] | None = None,
                  progress: bool = True) -> ScoreResult:
    """Score every embedding of ``proj`` (or the ``names``) and write ``PROJECT/scores.json``.

    Scores per map: 10-NN accuracy, silhouette, roundness, 2017 overlap and final (with labels),
    trustworthiness and 10-NN preservation against the map's feature set (when computed), on a
    fixed-size sample (``score.sample``) of large maps; per feature set: 10-NN accuracy in
    feature space and k-means homogeneity / completeness / V-measure. Undefined scores are
    ``null`` with a note. Scores of embeddings not named are kept from an earlier
    ``scores.json``. ``k``, the ranking and the seed are ``score.k``, ``score.rank_by``, ``seed``.
    The caller holds the project's lock (the :func:`klustr_gpu.score_maps` stage takes it).
    """
    sc = cfg.score
    available = proj.list_embeddings()
    if names:
        missing = [n for n in names if n not in available]
        if missing:
            raise UsageError(f"no embedding {missing[0]!r} in {proj.path} (have: {', '.join(available) or 'none'})",
                             param="names")
    todo = list(names) if names else available
    if not todo:
        raise UsageError(f"{proj.path} has no embeddings yet; run embed({str(proj.path)!r}) or grid({str(proj.path)!r})")
    from tqdm.auto import tqdm

    old = read_scores(proj)
    rows: dict[str, Any] = dict(old.get("embeddings") or {}) if names else {}
    rows = {n: r for n, r in rows.items() if n in available}
    feat_rows: dict[str, Any] = dict(old.get("features") or {}) if names else {}
    by_file = manifest_labels(proj)
    cache: dict[str, Any] = {}
    for name in tqdm(todo, desc="score", unit="map", disable=not progress):
        df, meta = proj.read_embedding(name)
        fs = embedding_features_name(meta)
        labels = _labels_for(df, by_file)
        X = None
        if fs is not None:
            if fs not in cache:
                cache[fs] = load_feature_matrix(proj, fs)
            table = cache[fs]
            if table is not None:
                pos = align(table.ids, df["id"].to_numpy())
                if pos is not None and (pos >= 0).all():
                    X = np.asarray(table.X)[pos]
                    if fs not in feat_rows:
                        feat_rows[fs] = feature_block(X, labels, k=sc.k, sample=sc.sample, seed=cfg.seed)
        row = score_embedding(df, labels, X, k=sc.k, sample=sc.sample, seed=cfg.seed)
        row.update(features=fs, method=meta.get("method"), params=_params_of(meta))
        rows[name] = row
    result = finish(proj, rows, feat_rows, k=sc.k, sample=sc.sample, rank_by=sc.rank_by,
                    labelled=has_labels(by_file.values()))
    return ScoreResult.from_scores(proj.path / "scores.json", result)


def feature_block(X: np.ndarray, labels, *, k: int, sample: int, seed: int) -> dict[str, Any]:
    notes: list[str] = []
    lab = labels if has_labels(labels) else None
    s = M.feature_scores(X, lab, k=k, sample=sample, seed=seed, notes=notes)
    return {"n_points": int(len(X)), "dim": int(np.asarray(X).shape[1]), "scores": s, "notes": notes}


def assemble(rows: dict[str, Any], feat_rows: dict[str, Any], *, k: int, sample: int, rank_by: str,
             labelled: bool, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``scores.json`` dict: maps ranked best first (each with its ``rank``), feature sets, notes."""
    notes: list[str] = []
    key = rank_key(rank_by, labelled, notes)
    order = rank_order(rows, key)
    for i, n in enumerate(order, 1):
        rows[n]["rank"] = i
    result: dict[str, Any] = {
        "version": SCORES_VERSION, "k": k, "sample": sample, "labels": labelled,
        "rank_by": key, "ranking": order, "best": order[0] if order else None, "notes": notes,
        "features": feat_rows, "embeddings": {n: rows[n] for n in order},
    }
    if extra:
        result.update(extra)
    return plain(result)


def finish(proj: Project, rows: dict[str, Any], feat_rows: dict[str, Any], *, k: int, sample: int, rank_by: str,
           labelled: bool, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """:func:`assemble`, written to ``PROJECT/scores.json``."""
    result = assemble(rows, feat_rows, k=k, sample=sample, rank_by=rank_by, labelled=labelled, extra=extra)
    write_scores(proj, result)
    return result


def _labels_for(df: pd.DataFrame, by_file: dict[str, Any]) -> np.ndarray:
    if "file_id" in df.columns and by_file:
        return np.array([by_file.get(str(f)) for f in df["file_id"]], dtype=object)
    if "label" in df.columns:
        return np.array([clean_label(v) for v in df["label"]], dtype=object)
    return np.full(len(df), None, dtype=object)


def _params_of(meta: dict[str, Any]) -> dict[str, Any]:
    p = meta.get("params")
    if isinstance(p, dict):
        return p
    skip = {"features", "method", "ids", "config"}
    return {k: v for k, v in meta.items() if k not in skip and isinstance(v, (int, float, str, bool))}
