"""Rendering: ``map.png`` / ``map.html`` (datashader), the HoloViews plot, the Panel app.

Four functions::

    render(project)      -> {"png", "html", "n_points", "seconds"}   writes PROJECT/map.png (+ map.html)
    plot(project)        -> a HoloViews DynamicMap, datashaded on every zoom (notebooks)
    make_app(project)    -> the Panel app (map, hover, click-to-play, neighbours, filters, export)
    serve(project)       -> serves the app on 127.0.0.1:5006 with the audio route; blocks

HoloViews and Panel are imported only by the functions that need them.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from ..store import Project

__all__ = ["render", "plot", "make_app", "serve"]

log = logging.getLogger(__name__)


def _project(project) -> Project:
    return project if isinstance(project, Project) else Project(project)


def render(project, *, embedding: str | None = None, width: int | None = None, height: int | None = None,
           by: str | None = None, html: bool = True, progress: bool = True, cluster=None) -> dict:
    """Write ``PROJECT/map.png`` (and ``PROJECT/map.html``) for one embedding (default: the project's).

    ``width`` / ``height`` / ``by`` default to the project's ``[render]`` settings; ``by`` is
    ``"label"``, ``"cluster"`` (the embedding's k-means clusters) or ``"auto"`` (label when the
    library has labels, else cluster).

    ``cluster``: a Dask cluster spec (``local:N``, ``cuda``, ``tcp://HOST:PORT``; see
    :mod:`klustr_gpu.cluster`) or a connected ``distributed.Client``. The embedding is then read
    as a Dask DataFrame on the workers (which must see the project at the same path), joined
    with the manifest's label codes there, and datashader rasterises it partition by partition
    on the cluster: ``map.png`` is the same picture as without a cluster. ``map.html`` is still
    built in this process from pandas (it holds every point up to ``render.html_max_points``,
    100,000 by default, for hover; above that only the picture, which needs no points here).

    Returns ``{"png": Path, "html": Path | None, "n_points": int, "seconds": float}``.
    """
    from tqdm.auto import tqdm

    from .data import load_map
    from .static import render_html, render_png

    t0 = time.perf_counter()
    proj = _project(project)
    cfg = proj.load_config().render
    w, h = int(width or cfg.width), int(height or cfg.height)
    if w < 64 or h < 64:
        from ..errors import UsageError
        raise UsageError(f"map size {w}x{h} is too small; use at least 64x64 pixels")
    proj.require("manifest")             # before the lock, which would create a missing folder
    if isinstance(cluster, str) and cluster:
        from ..cluster import parse
        parse(cluster)                   # a bad spec fails before any work
    steps = ["load", "map.png"] + (["map.html"] if html else [])
    with proj.lock("render"), \
            tqdm(total=len(steps), desc="render", unit=" step", disable=not progress, leave=False) as bar:
        if cluster:
            data, png = _png_on_cluster(proj, cluster, embedding=embedding, by=by or cfg.by, width=w, height=h,
                                        bar=bar)
        else:
            data = load_map(proj, embedding=embedding, by=by or cfg.by)
            bar.update()
            png = render_png(data, proj.path / "map.png", width=w, height=h)
            bar.update()
        page = None
        if html:
            if data.stats is not None and data.n <= cfg.html_max_points:    # hover data: pandas, here
                data = load_map(proj, embedding=data.embedding, by=data.by)
            page = render_html(data, proj, proj.path / "map.html", png=png, max_points=cfg.html_max_points)
            bar.update()
    seconds = time.perf_counter() - t0
    log.info("render: %d points -> %s in %.2f s", data.n, png, seconds)
    return {"png": Path(png), "html": Path(page) if page else None, "n_points": int(data.n), "seconds": seconds}


def _png_on_cluster(proj: Project, cluster, *, embedding, by, width: int, height: int, bar):
    """``map.png`` from a Dask DataFrame of the embedding, aggregated on the cluster's workers."""
    import dask

    from ..cluster import check_workers_see, using
    from .data import load_map_dask
    from .static import render_png

    with using(cluster) as client, dask.config.set(scheduler=client):
        check_workers_see(client, [proj.path.resolve()])
        data = load_map_dask(proj, embedding=embedding, by=by)
        bar.update()
        png = render_png(data, proj.path / "map.png", width=width, height=height)
        bar.update()
    return data, png


def plot(project, *, embedding: str | None = None, by: str = "auto", dynamic: bool = True):
    """A HoloViews object of the map, datashaded (re-rasterised on zoom when ``dynamic``)."""
    from .data import load_map
    from .views import map_plot

    return map_plot(load_map(_project(project), embedding=embedding, by=by), dynamic=dynamic)


def make_app(project, *, embedding: str | None = None):
    """The Panel app for one project (a ``pn.viewable.Viewable``)."""
    from .app import MapApp

    return MapApp.from_project(_project(project), embedding=embedding).layout


def serve(project, *, port: int = 5006, host: str = "127.0.0.1", embedding: str | None = None,
          show: bool = False, allow_hosts=(), audio_key: bytes | None = None) -> None:
    """Serve the app at ``http://HOST:PORT/`` with the ``/audio/<token>`` route; blocks until
    stopped. ``allow_hosts``: names besides the loopback ones the browser may use (see
    :func:`.server.serve`)."""
    from .server import serve as _serve

    _serve(_project(project), port=port, host=host, embedding=embedding, show=show,
           allow_hosts=allow_hosts, audio_key=audio_key)
