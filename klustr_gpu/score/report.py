"""The human side of a grid: ``report.md`` (ranked table) and ``grid.png`` (contact sheet)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..store import Project, atomic_path, atomic_write_text
from .scoring import FEATURE_KEYS, MAP_KEYS

PANEL_POINTS = 20000      # points drawn per panel of the contact sheet (a fixed sample above)
COLS = 6

_HEAD = {"knn_accuracy": "10-NN acc", "trustworthiness": "trust", "knn_preservation": "10-NN pres",
         "silhouette": "silh", "roundness": "round", "overlap_2017": "overlap*", "final_2017": "final*",
         "knn_accuracy_features": "10-NN acc (features)", "kmeans_homogeneity": "k-means hom",
         "kmeans_completeness": "k-means compl", "kmeans_v_measure": "k-means V"}


def _f(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def report_markdown(result: dict[str, Any], table: pd.DataFrame) -> str:
    g = result.get("grid") or {}
    k = result.get("k", 10)
    lines = ["# klustr grid report", ""]
    lines.append(f"{len(table)} maps in {_f(g.get('seconds'), 1)} s; feature sets {', '.join(g.get('features', []))}; "
                 f"methods {', '.join(g.get('methods', []))}; engine {g.get('engine', 'auto')}"
                 + (" (quick grid)" if g.get("quick") else "") + ".")
    lines.append(f"Ranked by **{result.get('rank_by')}**; best map: **{result.get('best')}** "
                 f"(the project's default for render and serve).")
    if not result.get("labels"):
        lines.append("The library has no labels: only the label-free scores are defined.")
    for n in result.get("notes") or []:
        lines.append(f"- {n}")
    lines += ["", "## Maps", ""]
    heads = ["rank", "map", "params", *(_HEAD[c] for c in MAP_KEYS), "seconds"]
    lines.append("| " + " | ".join(heads) + " |")
    lines.append("|" + "---|" * len(heads))
    for _, r in table.iterrows():
        cells = [str(r["rank"]), f"`{r['name']}`", r["params"] or "-", *(_f(r[c]) for c in MAP_KEYS),
                 _f(r["seconds"], 1) + (" (failed)" if isinstance(r.get("error"), str) else "")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Scores: {k}-NN accuracy is the leave-one-out majority vote of the {k} nearest points in the "
              "map; trustworthiness and k-NN preservation compare the map's neighbourhoods with the standardised "
              f"features' (k = {k}, on a sample of at most {result.get('sample')} points). "
              "\\* overlap and final are the 2017 scores (final = silhouette + roundness + overlap); overlap "
              "rewards small class hulls more than separated ones, so they are reported, not used to rank. "
              "seconds: the fit alone; the shared preprocessing and neighbour graph are listed below.", ""]
    feats = result.get("features") or {}
    if feats:
        lines += ["## Feature sets", ""]
        heads = ["features", "points", "dim", *(_HEAD[c] for c in FEATURE_KEYS), "prep s"]
        lines.append("| " + " | ".join(heads) + " |")
        lines.append("|" + "---|" * len(heads))
        for fs, b in feats.items():
            s = b.get("scores") or {}
            lines.append("| " + " | ".join([fs, str(b.get("n_points")), str(b.get("dim")),
                                            *(_f(s.get(c)) for c in FEATURE_KEYS),
                                            _f(b.get("prepare_seconds"), 1)]) + " |")
        lines.append("")
    notes = [(n, r.get("notes") or []) for n, r in (result.get("embeddings") or {}).items()]
    notes = [(n, ns) for n, ns in notes if ns]
    if notes:
        lines += ["## Notes", ""]
        for n, ns in notes:
            lines.append(f"- `{n}`: " + "; ".join(ns))
        lines.append("")
    return "\n".join(lines) + "\n"


def write_report(proj: Project, result: dict[str, Any], table: pd.DataFrame) -> Path:
    path = proj.path / "report.md"
    atomic_write_text(path, report_markdown(result, table))
    return path


def write_contact_sheet(proj: Project, result: dict[str, Any], *, cols: int = COLS) -> Path | None:
    """``grid.png``: every map of the grid (best first) coloured by label, titled with its
    parameters and ranking score."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    names = [n for n in result["ranking"] if result["embeddings"][n].get("error") is None]
    if not names:
        return None
    key = result.get("rank_by", "knn_accuracy")
    cols = max(1, min(cols, len(names)))
    rows = int(math.ceil(len(names) / cols))
    fig = Figure(figsize=(2.4 * cols, 2.6 * rows), dpi=90)
    classes: list[str] = []
    frames = {}
    for n in names:
        df, _ = proj.read_embedding(n)
        if len(df) > PANEL_POINTS:
            df = df.iloc[np.sort(np.random.default_rng(0).choice(len(df), PANEL_POINTS, replace=False))]
        frames[n] = df
        if "label" in df.columns:
            classes += [str(v) for v in df["label"].dropna().unique()]
    classes = sorted(set(classes))
    cmap = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"]
    colour = {c: cmap(i % cmap.N) for i, c in enumerate(classes)}
    grey = (0.6, 0.6, 0.6, 1.0)
    for i, n in enumerate(names):
        ax = fig.add_subplot(rows, cols, i + 1)
        df = frames[n]
        labels = df["label"].astype(object).where(df["label"].notna(), None) if "label" in df.columns else [None] * len(df)
        c = [colour.get(v, grey) if v is not None else grey for v in labels]
        ax.scatter(df["x"], df["y"], c=c, s=max(0.5, 6.0 - len(df) / 400), linewidths=0, rasterized=True)
        r = result["embeddings"][n]
        ax.set_title(f"{r.get('rank')}. {r.get('title', n)}\n{key} {_f((r.get('scores') or {}).get(key))}", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    if classes:
        handles = [matplotlib.lines.Line2D([], [], marker="o", ls="", color=colour[c], label=c) for c in classes]
        fig.legend(handles=handles, loc="lower center", ncol=min(len(classes), 10), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, min(0.3, 0.35 / fig.get_figheight()) if classes else 0, 1, 1))
    path = proj.path / "grid.png"
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, format="png")
    return path
