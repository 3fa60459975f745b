"""Scoring the maps of a project: labels, features and embeddings in, ``scores.json`` out."""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from ..errors import UsageError
from ..store import Project, atomic_write_text
from . import metrics as M

log = logging.getLogger(__name__)

SCORES_VERSION = 1
MAP_KEYS = ("knn_accuracy", "trustworthiness", "knn_preservation", "silhouette", "roundness",
            "overlap_2017", "final_2017")
FEATURE_KEYS = ("knn_accuracy_features", "kmeans_homogeneity", "kmeans_completeness", "kmeans_v_measure")
RANK_KEYS = {"knn_accuracy": "knn_accuracy", "trustworthiness": "trustworthiness", "final": "final_2017",
             "final_2017": "final_2017", "knn_preservation": "knn_preservation"}
LABEL_FREE = ("trustworthiness", "knn_preservation")


def as_project(project: Project | str | Path) -> Project:
    return project if isinstance(project, Project) else Project(project)


def manifest_labels(proj: Project) -> dict[str, Any]:
    """``{file id: label}`` from the manifest (labels may be None)."""
    df = proj.read_manifest()
    if "label" not in df.columns:
        return {}
    return {str(i): (None if _missing(v) else str(v)) for i, v in zip(df["id"], df["label"])}


def _missing(v: Any) -> bool:
    return v is None or v == "" or (isinstance(v, float) and math.isnan(v)) or v is pd.NA


def has_labels(labels: Iterable[Any]) -> bool:
    return any(not _missing(v) for v in labels)


def rank_key(rank_by: str, labelled: bool, notes: list[str] | None = None) -> str:
    """The score column to rank by; label scores fall back to trustworthiness without labels."""
    if rank_by not in RANK_KEYS:
        raise UsageError(f"unknown ranking {rank_by!r}; choose one of: knn_accuracy, trustworthiness, final")
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


def json_clean(obj: Any) -> Any:
    """NaN/inf -> None and numpy scalars -> Python, recursively (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): json_clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_scores(proj: Project, result: dict[str, Any]) -> Path:
    path = proj.path / "scores.json"
    atomic_write_text(path, json.dumps(json_clean(result), indent=2, sort_keys=False, allow_nan=False) + "\n")
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
    from .. import features

    try:
        return features.load(proj, name=name)
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


def score(project, *, names: list[str] | None = None, sample: int = 10000, progress: bool = True,
          k: int | None = None, rank_by: str | None = None, seed: int | None = None) -> dict[str, Any]:
    """Score every embedding of ``project`` (or the ``names``) and write ``PROJECT/scores.json``.

    Scores per map: 10-NN accuracy, silhouette, roundness, 2017 overlap and final (with labels),
    trustworthiness and 10-NN preservation against the map's feature set (when computed), on a
    fixed-size ``sample`` of large maps; per feature set: 10-NN accuracy in feature space and
    k-means homogeneity / completeness / V-measure. Undefined scores are ``null`` with a note.
    Scores of embeddings not named are kept from an earlier ``scores.json``. ``k``, ``rank_by``
    and ``seed`` default to the project's config (``score.k``, ``score.rank_by``, ``seed``).
    Returns the dict.
    """
    proj = as_project(project).require("manifest")
    cfg = proj.load_config()
    k = cfg.score.k if k is None else k
    rank_by = cfg.score.rank_by if rank_by is None else rank_by
    seed = cfg.seed if seed is None else seed
    rank_key(rank_by, True)
    available = proj.list_embeddings()
    if names:
        missing = [n for n in names if n not in available]
        if missing:
            raise UsageError(f"no embedding {missing[0]!r} in {proj.path} (have: {', '.join(available) or 'none'})")
    todo = list(names) if names else available
    if not todo:
        raise UsageError(f"{proj.path} has no embeddings yet; run `klustr embed {proj.path}` or `klustr grid {proj.path}`")
    with proj.lock("score"):
        return _score_locked(proj, names, todo, available, sample=sample, progress=progress, k=k,
                             rank_by=rank_by, seed=seed)


def _score_locked(proj: Project, names, todo: list[str], available: list[str], *, sample: int, progress: bool,
                  k: int, rank_by: str, seed: int) -> dict[str, Any]:
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
                        feat_rows[fs] = feature_block(X, labels, k=k, sample=sample, seed=seed)
        row = score_embedding(df, labels, X, k=k, sample=sample, seed=seed)
        row.update(features=fs, method=meta.get("method"), params=_params_of(meta))
        rows[name] = row
    return finish(proj, rows, feat_rows, k=k, sample=sample, rank_by=rank_by, labelled=has_labels(by_file.values()))


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
    return json_clean(result)


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
        return np.array([None if _missing(v) else str(v) for v in df["label"]], dtype=object)
    return np.full(len(df), None, dtype=object)


def _params_of(meta: dict[str, Any]) -> dict[str, Any]:
    p = meta.get("params")
    if isinstance(p, dict):
        return p
    skip = {"features", "method", "ids", "config"}
    return {k: v for k, v in meta.items() if k not in skip and isinstance(v, (int, float, str, bool))}
