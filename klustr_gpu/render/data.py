"""The map's data: an embedding joined with the manifest, plus the colour key.

``load_map(project)`` returns a :class:`MapData`: one row per point with ``x``, ``y`` (float32),
``id`` (point id), ``file_id``, ``start`` (seconds), ``name`` (file name), ``path`` (relative to
the library), ``label``, ``duration`` and ``cat`` (the colouring category: a pandas
Categorical whose last category is the grey "unlabelled" one when present).

``load_map_dask(project)`` (``klustr render --cluster``) gives the same points for the picture
only, as a Dask DataFrame: ``x``, ``y`` and the colouring column (categorical codes), read and
joined with the manifest partition by partition on the cluster; counts and ranges come along.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..config import COLOUR_BY
from ..errors import UsageError
from ..library.labels import missing_mask
from ..runtime import as_project
from ..store import Project

log = logging.getLogger(__name__)

UNLABELLED = "(unlabelled)"
GREY = "#a0a0a0"
BY_CHOICES = COLOUR_BY

# Tableau 10: distinct, readable on white; more categories fall back to colorcet's glasbey.
_TAB10 = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
          "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#393b79"]


def palette(n: int) -> list[str]:
    """``n`` distinct colours (Tableau 10, then glasbey)."""
    if n <= len(_TAB10):
        return _TAB10[:n]
    import colorcet

    cols = list(colorcet.palette["glasbey_category10"])   # hex strings
    return [cols[i % len(cols)] for i in range(n)]


@dataclass
class MapData:
    """Points of one embedding ready to draw; ``color_key`` maps each category to a colour."""

    points: pd.DataFrame
    by: str
    color_key: dict[str, str]
    embedding: str
    params: dict[str, Any] = field(default_factory=dict)
    frames: bool = False
    #: points held as a Dask DataFrame: ``{"n", "counts": {category: n}, "x": (min, max), "y": (min, max)}``
    stats: dict[str, Any] | None = None

    @property
    def n(self) -> int:
        return int(self.stats["n"]) if self.stats is not None else len(self.points)

    def counts(self) -> dict[str, int]:
        """Points per category of ``by``."""
        if self.stats is not None:
            return dict(self.stats["counts"])
        return self.points[self.by].value_counts().to_dict()

    def bounds(self, aspect: float | None = None, pad: float = 0.04) -> tuple[tuple[float, float], tuple[float, float]]:
        """Padded ``(x_range, y_range)``; widened to ``aspect`` (width / height) when given."""
        if self.stats is not None:
            return data_bounds(np.asarray(self.stats["x"]), np.asarray(self.stats["y"]), aspect=aspect, pad=pad)
        return data_bounds(self.points["x"].to_numpy(), self.points["y"].to_numpy(), aspect=aspect, pad=pad)


def data_bounds(x: np.ndarray, y: np.ndarray, *, aspect: float | None = None, pad: float = 0.04):
    if len(x) == 0:
        return (-1.0, 1.0), (-1.0, 1.0)
    x0, x1 = float(np.nanmin(x)), float(np.nanmax(x))
    y0, y1 = float(np.nanmin(y)), float(np.nanmax(y))
    w, h = max(x1 - x0, 1e-9), max(y1 - y0, 1e-9)
    if w < 1e-6 * max(h, 1.0):
        w = h
    if h < 1e-6 * max(w, 1.0):
        h = w
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    w, h = w * (1 + 2 * pad), h * (1 + 2 * pad)
    if aspect:
        if w / h < aspect:
            w = h * aspect
        else:
            h = w / aspect
    return (cx - w / 2, cx + w / 2), (cy - h / 2, cy + h / 2)


def _clean_labels(values: pd.Series) -> pd.Series:
    s = values.astype("object")
    return s.where(~missing_mask(s), UNLABELLED).astype(str)


def _check_columns(name: str, columns, project: Project) -> None:
    missing = {"id", "x", "y"} - set(columns)
    if missing:
        raise UsageError(f"embedding {name!r} lacks columns {sorted(missing)}; rerun embed({str(project.path)!r})")


def _natural(u: str) -> tuple:
    return (0, int(u), "") if u.lstrip("-").isdigit() else (1, 0, u.lower())


def categories(values: pd.Series) -> tuple[pd.Categorical, dict[str, str]]:
    """A Categorical of ``values`` (sorted, unlabelled last) and its colour key (grey for unlabelled)."""
    s = _clean_labels(values)
    cats, key = _category_order(s.unique())
    return pd.Categorical(s, categories=cats), key


def _category_order(uniques) -> tuple[list[str], dict[str, str]]:
    """Categories of cleaned values given in order of first appearance (sorted, unlabelled
    last) and their colour key."""
    uniq = sorted((u for u in uniques if u != UNLABELLED), key=_natural)
    cats = uniq + ([UNLABELLED] if UNLABELLED in set(uniques) else [])
    key = dict(zip(uniq, palette(len(uniq))))
    if UNLABELLED in cats:
        key[UNLABELLED] = GREY
    return cats, key


def _cluster_names(cl: pd.Series) -> pd.Series:
    """Cluster ids as strings; NaN and -1 (HDBSCAN noise) become unlabelled."""
    if pd.api.types.is_numeric_dtype(cl):
        vals = pd.to_numeric(cl, errors="coerce")
        out = vals.map(lambda v: None if pd.isna(v) or v == -1 else str(int(v)) if float(v).is_integer() else str(v))
        return out.astype("object")
    return cl.astype("object").map(lambda v: None if v is None or pd.isna(v) or str(v) == "-1" else str(v))


def named_clusters(cats: list[str], key: dict[str, str], paths: Sequence[str], pair_cluster, pair_path,
                   pair_count) -> tuple[list[str], dict[str, str], dict[str, str]]:
    """Cluster categories renamed by what their files share (:func:`.names.cluster_names`).

    ``cats``/``key``: the cluster ids in order and their colours (:func:`categories`);
    ``paths``: relative paths; ``pair_*``: (cluster id, index into ``paths``, number of points)
    for every cluster/file pair. Returns the renamed categories (same order, same colours, the
    unlabelled one unchanged), their colour key and the ``{id: name}`` map."""
    from .names import cluster_names

    named = cluster_names(paths, pair_path, pair_cluster, weights=pair_count) if len(pair_path) else {}
    rename = {c: named.get(c, c) for c in cats}
    return [rename[c] for c in cats], {rename[c]: key[c] for c in cats}, rename


def _point_pairs(cluster: pd.Categorical, path_codes: np.ndarray):
    """(cluster id, path code, count) of every distinct pair of labelled points."""
    codes = np.asarray(cluster.codes, dtype=np.int64)
    grey = list(cluster.categories).index(UNLABELLED) if UNLABELLED in cluster.categories else -1
    keep = (codes >= 0) & (codes != grey)
    if not keep.any():
        return np.zeros(0, dtype=object), np.zeros(0, np.int64), np.zeros(0, np.int64)
    paths = np.asarray(path_codes, np.int64)
    span = int(paths.max()) + 1 if len(paths) else 1
    pairs, count = np.unique(codes[keep] * span + paths[keep], return_counts=True)   # one int per pair: fast
    return np.asarray(cluster.categories, dtype=object)[pairs // span], pairs % span, count


def _resolve(project, embedding: str | None, by: str | None) -> tuple[Project, str, str]:
    """The project, the checked colouring and the embedding's name (the default when None)."""
    project = as_project(project)
    project.require("manifest")
    by = by or project.load_config().render.by
    if by not in BY_CHOICES:
        raise UsageError(f"unknown colouring {by!r}; choose one of: {', '.join(BY_CHOICES)}")
    name = embedding or project.default_embedding()
    if by == "auto":
        by = _auto_colouring(project, name)
    return project, by, name


def _auto_colouring(project: Project, name: str) -> str:
    """``auto``: by label when any usable file has one, else by the embedding's k-means
    clusters when it has them (an unlabelled library, frame mode), else by label (all grey)."""
    man = project.read_manifest()
    if man.loc[man["status"] == "ok", "label"].notna().any():
        return "label"
    import pyarrow.parquet as pq

    path = project.embedding_path(name)
    try:
        has_cluster = "cluster" in pq.read_schema(path).names
    except (OSError, ValueError):
        has_cluster = False                        # missing or unreadable: load_map says so
    return "cluster" if has_cluster else "label"


def load_map(project: Project | str | os.PathLike, *, embedding: str | None = None, by: str | None = None) -> MapData:
    """Join the embedding with the manifest (ok files only) and assign colours by ``by``."""
    project, by, name = _resolve(project, embedding, by)
    emb, params = project.read_embedding(name)
    _check_columns(name, emb.columns, project)
    man = project.read_manifest()
    man = man[man["status"] == "ok"]
    pts = pd.DataFrame({
        "x": emb["x"].to_numpy(np.float32),
        "y": emb["y"].to_numpy(np.float32),
        "id": emb["id"].astype(str).to_numpy(),
        "file_id": (emb["file_id"] if "file_id" in emb else emb["id"]).astype(str).to_numpy(),
        "start": (emb["start"].to_numpy(np.float32) if "start" in emb else np.zeros(len(emb), np.float32)),
    })
    files = man.set_index("id")
    known = pts["file_id"].isin(files.index).to_numpy()
    if not known.all():
        log.warning("render: %d points refer to files not in the manifest (or skipped); dropped", int((~known).sum()))
        pts = pts[known].reset_index(drop=True)
        emb = emb[known].reset_index(drop=True)
    ok = np.isfinite(pts["x"].to_numpy()) & np.isfinite(pts["y"].to_numpy())
    if not ok.all():
        log.warning("render: %d points with non-finite coordinates dropped", int((~ok).sum()))
        pts, emb = pts[ok].reset_index(drop=True), emb[ok].reset_index(drop=True)
    if not len(pts):
        raise UsageError(f"embedding {name!r} has no points of usable files; rerun embed({str(project.path)!r})")
    rows = files.loc[pts["file_id"]]
    path = pd.Categorical(rows["path"].to_numpy())
    pts["path"] = path
    # file names per distinct path (not per point: frame mode has many points per file)
    names, name_of_path = np.unique([os.path.basename(str(p)) for p in path.categories], return_inverse=True)
    pts["name"] = pd.Categorical.from_codes(name_of_path.reshape(-1)[path.codes], categories=names.astype(object))
    label = emb["label"] if "label" in emb and emb["label"].notna().any() else pd.Series(rows["label"].to_numpy())
    lab_cat, lab_key = categories(pd.Series(np.asarray(label, dtype=object)))
    pts["label"] = lab_cat
    pts["duration"] = rows["duration"].to_numpy(np.float32)
    if by == "cluster":
        if "cluster" not in emb:
            raise UsageError(f"embedding {name!r} has no 'cluster' column; use by='label'", param="by")
        cat, key = categories(_cluster_names(emb["cluster"]))
        cats, key, rename = named_clusters(list(cat.categories), key, [str(p) for p in path.categories],
                                           *_point_pairs(cat, path.codes))
        pts["cluster"] = cat.rename_categories(cats)
    else:
        key = lab_key
    frames = bool((pts["id"] != pts["file_id"]).any())
    return MapData(points=pts, by=by, color_key=key, embedding=name, params=params, frames=frames)


def _part_keep(df: pd.DataFrame, files: pd.Series, fid_col: str):
    """Positions in ``files`` (the ok manifest rows) of a partition's points, and the mask of
    the points kept (a known file, finite float32 coordinates), as :func:`load_map` keeps them."""
    pos = files.index.get_indexer(df[fid_col].astype(str))
    x, y = df["x"].to_numpy(np.float32), df["y"].to_numpy(np.float32)
    return pos, pos >= 0, np.isfinite(x) & np.isfinite(y), x, y


def _part_summary(df: pd.DataFrame, files: pd.Series, fid_col: str, by: str) -> dict[str, Any]:
    """One partition's share of the plan: counts dropped / kept and the colour values seen."""
    pos, known, finite, _, _ = _part_keep(df, files, fid_col)
    keep = known & finite
    out: dict[str, Any] = {"unknown": int((~known).sum()), "nonfinite": int((known & ~finite).sum()),
                           "n": int(keep.sum()), "emb_any": False, "emb": [], "man": [], "cluster": []}
    if by == "cluster":
        values = _clean_labels(_cluster_names(df["cluster"][keep].reset_index(drop=True)))
        out["cluster"] = list(pd.unique(values))
        labelled = (values != UNLABELLED).to_numpy()
        pair = pd.DataFrame({"c": values[labelled].to_numpy(), "f": pos[keep][labelled]})
        out["pairs"] = pair.groupby(["c", "f"], sort=True).size().reset_index(name="n")   # for the names
        return out
    if "label" in df:
        lab = df["label"][keep]
        out["emb_any"] = bool(lab.notna().any())
        out["emb"] = list(pd.unique(_clean_labels(pd.Series(np.asarray(lab, dtype=object)))))
    codes = pd.unique(files.cat.codes.to_numpy()[pos[keep]])          # first appearance, as codes
    out["man"] = list(files.cat.categories[codes])
    return out


def _part_points(df: pd.DataFrame, files: pd.Series, fid_col: str, by: str, source: str,
                 cats: list[str], rename: dict[str, str] | None = None) -> pd.DataFrame:
    """One partition's points for the picture: ``x``, ``y`` (float32) and ``by`` (categorical;
    cluster ids renamed by ``rename``)."""
    rename = rename or {}
    pos, known, finite, x, y = _part_keep(df, files, fid_col)
    keep = known & finite
    if by == "cluster":
        values = _clean_labels(_cluster_names(df["cluster"][keep].reset_index(drop=True))).map(lambda v: rename.get(v, v))
    elif source == "emb":
        values = _clean_labels(pd.Series(np.asarray(df["label"][keep], dtype=object)))
    else:                                          # manifest labels: remap codes, no strings per point
        remap = pd.Index(cats).get_indexer(files.cat.categories)
        col = pd.Categorical.from_codes(remap[files.cat.codes.to_numpy()[pos[keep]]], categories=cats)
        return pd.DataFrame({"x": x[keep], "y": y[keep], by: col})
    return pd.DataFrame({"x": x[keep], "y": y[keep], by: pd.Categorical(np.asarray(values, dtype=object),
                                                                         categories=cats)})


def load_map_dask(project: Project | str | os.PathLike, *, embedding: str | None = None,
                  by: str | None = None) -> MapData:
    """:func:`load_map` for ``map.png`` on a Dask cluster: the same points, categories, colours,
    counts and ranges, computed on the current Dask scheduler (``render`` sets the cluster's
    client as the scheduler).

    The embedding is read with ``dask.dataframe.read_parquet`` (one partition per row group),
    only the columns the picture needs; each partition is joined with the manifest's labels
    (ok files only; a small Categorical sent once to the workers) and reduced to ``x``, ``y``
    (float32) and the colouring column as categorical codes, persisted on the workers. The
    returned :class:`MapData` holds that Dask DataFrame in ``points`` (no names, paths or
    durations: ``map.html`` is built from :func:`load_map`) and the counts and ranges in ``stats``.
    """
    import dask
    import dask.dataframe as dd
    import pyarrow.parquet as pq

    from ..store import read_parquet_metadata

    project, by, name = _resolve(project, embedding, by)
    path = project.embedding_path(name)
    if not path.exists():
        project.read_embedding(name)                 # the usual "no embedding" error
    path = path.resolve()
    cols = set(pq.read_schema(path).names)
    _check_columns(name, cols, project)
    if by == "cluster" and "cluster" not in cols:
        raise UsageError(f"embedding {name!r} has no 'cluster' column; use by='label'", param="by")
    fid_col = "file_id" if "file_id" in cols else "id"
    read = ["x", "y", fid_col] + (["cluster"] if by == "cluster" else ["label"] if "label" in cols else [])
    man = project.read_manifest()
    man = man[man["status"] == "ok"]
    files = pd.Series(pd.Categorical(_clean_labels(man["label"].reset_index(drop=True))),
                      index=pd.Index(man["id"].astype(str).to_numpy()))
    files_d = dask.delayed(files, pure=True)         # one task holds it; every partition shares it
    ddf = dd.read_parquet(str(path), columns=read, split_row_groups=True)
    parts = ddf.to_delayed()
    summaries = dask.compute(*[dask.delayed(_part_summary)(p, files_d, fid_col, by) for p in parts])
    unknown = sum(s["unknown"] for s in summaries)
    nonfinite = sum(s["nonfinite"] for s in summaries)
    if unknown:
        log.warning("render: %d points refer to files not in the manifest (or skipped); dropped", unknown)
    if nonfinite:
        log.warning("render: %d points with non-finite coordinates dropped", nonfinite)
    if not sum(s["n"] for s in summaries):
        raise UsageError(f"embedding {name!r} has no points of usable files; rerun embed({str(project.path)!r})")
    source = "emb" if any(s["emb_any"] for s in summaries) else "man"
    field_ = "cluster" if by == "cluster" else source
    seen = pd.unique(np.asarray([v for s in summaries for v in s[field_]], dtype=object))  # first appearance
    cats, key = _category_order(list(seen))
    rename: dict[str, str] = {}
    if by == "cluster":
        pairs = pd.concat([s["pairs"] for s in summaries]).groupby(["c", "f"], sort=True)["n"].sum().reset_index()
        cats, key, rename = named_clusters(cats, key, man["path"].astype(str).tolist(), pairs["c"].to_numpy(),
                                           pairs["f"].to_numpy(), pairs["n"].to_numpy())
    meta = pd.DataFrame({"x": np.zeros(0, np.float32), "y": np.zeros(0, np.float32),
                         by: pd.Categorical([], categories=cats)})
    pts = dd.from_delayed([dask.delayed(_part_points)(p, files_d, fid_col, by, source, cats, rename)
                           for p in parts],
                          meta=meta, verify_meta=False).persist()
    x0, x1, y0, y1, counts = dask.compute(pts["x"].min(), pts["x"].max(), pts["y"].min(), pts["y"].max(),
                                          pts[by].value_counts())
    counts = {str(k): int(v) for k, v in counts.items() if v}
    stats = {"n": int(sum(counts.values())), "counts": counts, "x": (x0, x1), "y": (y0, y1)}
    return MapData(points=pts, by=by, color_key=key, embedding=name, params=read_parquet_metadata(path),
                   stats=stats)


def audio_urls_relative(project: Project, rels: list[str], html_dir: Path | None = None) -> list[str]:
    """URLs of library files (paths relative to the library) relative to ``html_dir``
    (default: the project folder), percent-encoded."""
    from urllib.parse import quote

    root = project.library_root
    base = Path(html_dir or project.path)
    out = []
    for rel in rels:
        target = root / rel
        try:
            out.append(quote(os.path.relpath(target, base).replace(os.sep, "/"), safe="/"))
        except ValueError:  # another drive on Windows
            out.append(target.resolve().as_uri())
    return out
