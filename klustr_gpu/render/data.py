"""The map's data: an embedding joined with the manifest, plus the colour key.

``load_map(project)`` returns a :class:`MapData`: one row per point with ``x``, ``y`` (float32),
``id`` (point id), ``file_id``, ``start`` (seconds), ``name`` (file name), ``path`` (relative to
the library), ``label``, ``duration`` and ``cat`` (the colouring category: a pandas
Categorical whose last category is the grey "unlabelled" one when present).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import UsageError
from ..store import Project

log = logging.getLogger(__name__)

UNLABELLED = "(unlabelled)"
GREY = "#a0a0a0"
BY_CHOICES = ("label", "cluster")

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

    @property
    def n(self) -> int:
        return len(self.points)

    def bounds(self, aspect: float | None = None, pad: float = 0.04) -> tuple[tuple[float, float], tuple[float, float]]:
        """Padded ``(x_range, y_range)``; widened to ``aspect`` (width / height) when given."""
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
    bad = s.isna() | (s.astype(str).str.strip() == "")
    return s.where(~bad, UNLABELLED).astype(str)


def _natural(u: str) -> tuple:
    return (0, int(u), "") if u.lstrip("-").isdigit() else (1, 0, u.lower())


def categories(values: pd.Series) -> tuple[pd.Categorical, dict[str, str]]:
    """A Categorical of ``values`` (sorted, unlabelled last) and its colour key (grey for unlabelled)."""
    s = _clean_labels(values)
    uniq = sorted((u for u in s.unique() if u != UNLABELLED), key=_natural)
    cats = uniq + ([UNLABELLED] if (s == UNLABELLED).any() else [])
    key = dict(zip(uniq, palette(len(uniq))))
    if UNLABELLED in cats:
        key[UNLABELLED] = GREY
    return pd.Categorical(s, categories=cats), key


def _cluster_names(cl: pd.Series) -> pd.Series:
    """Cluster ids as strings; NaN and -1 (HDBSCAN noise) become unlabelled."""
    if pd.api.types.is_numeric_dtype(cl):
        vals = pd.to_numeric(cl, errors="coerce")
        out = vals.map(lambda v: None if pd.isna(v) or v == -1 else str(int(v)) if float(v).is_integer() else str(v))
        return out.astype("object")
    return cl.astype("object").map(lambda v: None if v is None or pd.isna(v) or str(v) == "-1" else str(v))


def load_map(project: Project | str | os.PathLike, *, embedding: str | None = None, by: str | None = None) -> MapData:
    """Join the embedding with the manifest (ok files only) and assign colours by ``by``."""
    project = project if isinstance(project, Project) else Project(project)
    project.require("manifest")
    by = by or project.load_config().render.by
    if by not in BY_CHOICES:
        raise UsageError(f"unknown colouring {by!r}; choose one of: {', '.join(BY_CHOICES)}")
    name = embedding or project.default_embedding()
    emb, params = project.read_embedding(name)
    missing = {"id", "x", "y"} - set(emb.columns)
    if missing:
        raise UsageError(f"embedding {name!r} lacks columns {sorted(missing)}; rerun `klustr embed {project.path}`")
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
        raise UsageError(f"embedding {name!r} has no points of usable files; rerun `klustr embed {project.path}`")
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
            raise UsageError(f"embedding {name!r} has no 'cluster' column; use --by label")
        cat, key = categories(_cluster_names(emb["cluster"]))
        pts["cluster"] = cat
    else:
        key = lab_key
    frames = bool((pts["id"] != pts["file_id"]).any())
    return MapData(points=pts, by=by, color_key=key, embedding=name, params=params, frames=frames)


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
