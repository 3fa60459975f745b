"""Rendering: ``map.png`` / ``map.html`` (datashader), the HoloViews plot, the Panel app.

The stages are :func:`klustr_gpu.render_map` (``map.png`` + ``map.html``), :func:`klustr_gpu.plot`
(a HoloViews DynamicMap, datashaded on every zoom), :func:`klustr_gpu.make_app` (the Panel app)
and :func:`klustr_gpu.serve` (the app with the audio route; blocks). Here: the files of
:func:`render_files`; ``data`` (the map's points and colours), ``static`` (one shading path for
every picture), ``views`` (HoloViews), ``app`` / ``server`` (Panel), ``tiles``, ``security``,
``export``. HoloViews and Panel are imported only by the functions that need them.
"""
from __future__ import annotations

import logging
import time

from ..config import Config
from ..errors import UsageError
from ..results import RenderResult
from ..store import Project

__all__ = ["render_files"]

log = logging.getLogger(__name__)


def render_files(proj: Project, cfg: Config, *, embedding: str | None = None, html: bool = True, cluster=None,
                 progress: bool = True) -> RenderResult:
    """Write ``PROJECT/map.png`` (and ``PROJECT/map.html``) for one embedding (default: the
    project's), ``render.width`` x ``render.height`` pixels, coloured by ``render.by``.

    ``cluster``: a Dask cluster spec (``local:N``, ``cuda``, ``tcp://HOST:PORT``) or a connected
    ``distributed.Client``. The embedding is then read as a Dask DataFrame on the workers
    (which must see the project at the same path), joined with the manifest's label codes
    there, and datashader rasterises it partition by partition on the cluster: ``map.png`` is
    the same picture as without a cluster. ``map.html`` is still built in this process from
    pandas (it holds every point up to ``render.html_max_points``, 100,000 by default, for
    hover; above that only the picture, which needs no points here).
    """
    from tqdm.auto import tqdm

    from .data import load_map
    from .static import render_html, render_png

    t0 = time.perf_counter()
    rc = cfg.render
    w, h = int(rc.width), int(rc.height)
    if w < 64 or h < 64:
        raise UsageError(f"map size {w}x{h} is too small; use at least 64x64 pixels", param="width")
    steps = ["load", "map.png"] + (["map.html"] if html else [])
    with tqdm(total=len(steps), desc="render", unit=" step", disable=not progress, leave=False) as bar:
        if cluster:
            data, png = _png_on_cluster(proj, cluster, embedding=embedding, by=rc.by, width=w, height=h, bar=bar)
        else:
            data = load_map(proj, embedding=embedding, by=rc.by)
            bar.update()
            png = render_png(data, proj.path / "map.png", width=w, height=h)
            bar.update()
        page = None
        if html:
            if data.stats is not None and data.n <= rc.html_max_points:    # hover data: pandas, here
                data = load_map(proj, embedding=data.embedding, by=data.by)
            page = render_html(data, proj, proj.path / "map.html", png=png, max_points=rc.html_max_points)
            bar.update()
    seconds = time.perf_counter() - t0
    log.info("render: %d points -> %s in %.2f s", data.n, png, seconds)
    return RenderResult(png=png, html=page, n_points=int(data.n), seconds=seconds)


def _png_on_cluster(proj: Project, cluster, *, embedding, by, width: int, height: int, bar):
    """``map.png`` from a Dask DataFrame of the embedding, aggregated on the cluster's workers."""
    import dask

    from ..cluster import check_workers_see
    from ..runtime import using_cluster
    from .data import load_map_dask
    from .static import render_png

    with using_cluster(cluster) as client, dask.config.set(scheduler=client):
        check_workers_see(client, [proj.path.resolve()])
        data = load_map_dask(proj, embedding=embedding, by=by)
        bar.update()
        png = render_png(data, proj.path / "map.png", width=width, height=height)
        bar.update()
    return data, png
