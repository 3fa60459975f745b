"""The stage functions a notebook calls: one shape, ``stage(project, config=None, **overrides)``.

``config`` is a :class:`~klustr_gpu.config.Config` (default: the project's ``klustr.toml``, or
the defaults); keyword arguments override its settings for this call. Their names never
collide with a subpackage (``compute_features``, not ``features``), so ``kg.features`` is always
the subpackage and every stage function stays callable, whatever was imported before.

Heavy libraries (torch, umap-learn, datashader, HoloViews, Panel, Dask) load inside the stage
that needs them, never at ``import klustr_gpu``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import Config
from .store import Project

__all__ = ["scan", "compute_features", "load_features", "embed", "score_maps", "grid", "render_map", "plot",
           "serve", "make_app", "map", "demo_corpus", "project_config"]


def project_config(project: str | Path | Project, *, preset: str | None = None) -> Config:
    """The config a run starts from: the ``preset`` named, else the project's ``klustr.toml``,
    else the defaults."""
    proj = Project(project)
    if preset is not None or not proj.config_path.exists():
        return Config.preset_named(preset or "default")
    return proj.load_config()


def scan(library: str | Path, project: str | Path | Project, config: Config | None = None, *,
         labels: str | Path | None = None, label_from: str | None = None, label_regex: bool = False,
         progress: bool = True):
    """Walk ``library`` and write ``PROJECT/manifest.parquet`` (one row per audio file).

    ``labels``: a CSV of ``path,label`` (paths relative to the library); ``label_from="parent"``:
    the folder name; ``label_regex``: the 2017 keyword rule. Broken files become rows with
    ``status="skipped"`` and a ``reason``.
    """
    from .library.scan import scan as run

    return run(library, project, config=config, labels=labels, label_from=label_from, label_regex=label_regex,
               progress=progress)


def compute_features(project: str | Path | Project, config: Config | None = None, *, sets=None,
                     device: str | None = None, batch_size: int | None = None, workers: int | None = None,
                     frames: bool | None = None, window: float | None = None, hop: float | None = None,
                     cluster=None, progress: bool = True):
    """Compute the feature sets of every ok file into ``PROJECT/features/<set>/`` (resumable)."""
    from .features import extract

    return extract(project, config, sets=sets, device=device, batch_size=batch_size, workers=workers,
                   frames=frames, window=window, hop=hop, cluster=cluster, progress=progress)


def load_features(project: str | Path | Project, name: str = "mfcc", *, frames: bool | None = None):
    """The usable rows of feature set ``name`` (a ``FeatureTable``: ids, file_ids, starts, X)."""
    from .features import load

    return load(project, name, frames=frames)


def embed(project: str | Path | Project, config: Config | None = None, *, method: str | None = None,
          features: str | None = None, engine: str | None = None, name: str | None = None, cluster=None,
          progress: bool = True, **params):
    """Reduce a feature set to a 2-D map: ``PROJECT/embeddings/<name>.parquet``."""
    from .reduce import embed as run

    return run(project, config, method=method, features=features, engine=engine, name=name, cluster=cluster,
               progress=progress, **params)


def score_maps(project: str | Path | Project, config: Config | None = None, *, names: list[str] | None = None,
               sample: int = 10000, k: int | None = None, rank_by: str | None = None, seed: int | None = None,
               progress: bool = True):
    """Score every map of the project (or the ``names``): ``PROJECT/scores.json``."""
    from .score import score

    return score(project, names=names, sample=sample, k=k, rank_by=rank_by, seed=seed, progress=progress)


def grid(project: str | Path | Project, config: Config | None = None, *, features: list[str] | None = None,
         methods: list[str] | None = None, rank_by: str | None = None, engine: str = "auto", quick: bool = False,
         progress: bool = True):
    """A population of maps, scored and ranked: ``scores.json``, ``report.md``, ``grid.png``."""
    from .score import grid as run

    return run(project, config, features=features, methods=methods, rank_by=rank_by, engine=engine, quick=quick,
               progress=progress)


def render_map(project: str | Path | Project, config: Config | None = None, *, embedding: str | None = None,
               width: int | None = None, height: int | None = None, by: str | None = None, html: bool = True,
               cluster=None, progress: bool = True):
    """Draw ``PROJECT/map.png`` and ``PROJECT/map.html`` for one embedding (default: the project's)."""
    from .render import render

    return render(project, embedding=embedding, width=width, height=height, by=by, html=html, progress=progress,
                  cluster=cluster)


def plot(project: str | Path | Project, config: Config | None = None, *, embedding: str | None = None,
         by: str = "auto", dynamic: bool = True):
    """A HoloViews object of the map, datashaded (re-rasterised on zoom when ``dynamic``)."""
    from .render import plot as run

    return run(project, embedding=embedding, by=by, dynamic=dynamic)


def make_app(project: str | Path | Project, config: Config | None = None, *, embedding: str | None = None):
    """The Panel app of one project (a ``pn.viewable.Viewable``), for a notebook."""
    from .render import make_app as run

    return run(project, embedding=embedding)


def serve(project: str | Path | Project, config: Config | None = None, *, port: int = 5006,
          host: str = "127.0.0.1", embedding: str | None = None, show: bool = False) -> None:
    """Serve the zoomable map at ``http://HOST:PORT/`` with playback; blocks until stopped."""
    from .render import serve as run

    run(project, port=port, host=host, embedding=embedding, show=show)


def map(library: str | Path, project: str | Path | Project, config: Config | None = None, *,  # noqa: A001
        labels: str | Path | None = None, label_from: str | None = None, label_regex: bool = False,
        preset: str | None = None, overrides: dict[str, Any] | None = None, progress: bool = True):
    """Every stage with good defaults: scan, features, embed, ``PROJECT/map.png``; a summary."""
    from .pipeline import run_map

    return run_map(library, project, labels=labels, label_from=label_from, label_regex=label_regex, preset=preset,
                   overrides=overrides, progress=progress)


def demo_corpus(directory: str | Path, *, n: int = 2000, seed: int = 0, progress: bool = True) -> Path:
    """Synthesise ``n`` labelled drum one-shots under ``directory``; returns its labels.csv."""
    from .library.democorpus import demo_corpus as run

    return run(directory, n=n, seed=seed, progress=progress)
