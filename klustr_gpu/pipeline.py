"""``klustr map``: every stage with good defaults, ending in map.png and a summary."""
from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

from .config import Config
from .store import Project

log = logging.getLogger(__name__)


def prepare_config(project: Project, *, preset: str | None = None, overrides: dict[str, Any] | None = None,
                   write: bool = True) -> Config:
    """The config of this run: the preset named (or the project's own, or the default), with
    ``overrides`` (``{"section.key": value}``) applied, written to klustr.toml before any work
    (``write=False`` leaves that to the stage, which first checks that its device or engine can run)."""
    if preset is not None or not project.config_path.exists():
        cfg = Config.preset_named(preset or "default")
    else:
        cfg = project.load_config()
    if overrides:
        cfg = cfg.updated(overrides)
    if write:
        project.write_config(cfg)
    return cfg


def run_map(
    library: str | Path,
    project: str | Path | Project,
    *,
    labels: str | Path | None = None,
    label_from: str | None = None,
    label_regex: bool = False,
    preset: str | None = None,
    overrides: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Scan ``library``, compute features, embed, and render ``PROJECT/map.png``.

    ``overrides`` are config settings such as ``{"features.device": "cpu", "reduce.engine": "cpu"}``.
    Returns a summary: files ok / skipped (by reason), seconds per stage, output paths.
    """
    from .features import extract
    from .runtime import torch_device as resolve_device
    from .library.scan import scan
    from .reduce import embed, resolve_engine
    from .render import render

    proj = project if isinstance(project, Project) else Project(project)
    proj.ensure()
    cfg = prepare_config(proj, preset=preset, overrides=overrides, write=False)
    resolve_device(cfg.features.device)      # an impossible device or engine fails before any work
    resolve_engine(cfg.reduce.engine)
    times: dict[str, float] = {}
    with proj.lock("map"):                   # one lock over every stage (re-entrant in this thread)
        proj.write_config(cfg)

        t = time.perf_counter()
        scan(library, proj, config=cfg, labels=labels, label_from=label_from, label_regex=label_regex,
             progress=progress)
        times["scan"] = time.perf_counter() - t

        t = time.perf_counter()
        extract(proj, cfg, progress=progress)
        times["features"] = time.perf_counter() - t

        t = time.perf_counter()
        emb = embed(proj, cfg, progress=progress, cluster=cfg.features.cluster or None)
        times["embed"] = time.perf_counter() - t
        name = f"{cfg.reduce.features}-{cfg.reduce.method}"
        proj.set_default_embedding(name)

        t = time.perf_counter()
        out = render(proj, embedding=name, progress=progress, cluster=cfg.features.cluster or None)
        times["render"] = time.perf_counter() - t

    return summarize(proj, times=times, outputs=out, n_points=len(emb))


def summarize(project: Project, *, times: dict[str, float], outputs: dict[str, Any], n_points: int) -> dict[str, Any]:
    man = project.read_manifest()
    skipped = man[man.status != "ok"]
    return {
        "project": str(project.path),
        "files": int(len(man)),
        "ok": int((man.status == "ok").sum()),
        "skipped": int(len(skipped)),
        "skipped_by_reason": dict(Counter(skipped.reason).most_common()),
        "labelled": int(man.label.notna().sum()),
        "points": int(n_points),
        "seconds": {k: round(v, 2) for k, v in times.items()},
        "map_png": str(outputs.get("png")) if outputs.get("png") else None,
        "map_html": str(outputs.get("html")) if outputs.get("html") else None,
    }


def format_summary(s: dict[str, Any]) -> str:
    lines = [f"files: {s['files']}  ok: {s['ok']}  skipped: {s['skipped']}  labelled: {s['labelled']}  points: {s['points']}"]
    for reason, n in s["skipped_by_reason"].items():
        lines.append(f"  skipped {n:>6}  {reason}")
    total = sum(s["seconds"].values())
    lines.append("time: " + "  ".join(f"{k} {v:.1f}s" for k, v in s["seconds"].items()) + f"  (total {total:.1f}s)")
    if s.get("map_png"):
        lines.append(f"map: {s['map_png']}")
    if s.get("map_html"):
        lines.append(f"page: {s['map_html']}  (open in a browser; `klustr serve {s['project']}` for the zoomable app)")
    return "\n".join(lines)
