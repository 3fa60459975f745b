"""The pictures of one session's map: ``GET /view/<session>/<seq>?x0=&x1=&y0=&y1=&w=&h=``.

The app's map (:class:`.components.MapCanvas`) draws images it fetches itself, as soon as the
view changes, rather than waiting for Bokeh's level-of-detail timeout: the picture of the
session's *shown* points (its filter) over the asked range at the canvas's device pixels, with
the session's selection in full colour over the other points dimmed. Each session has a
:class:`ViewState` under a random 128-bit name that only its page knows; the points behind it
are the server's shared :func:`base_raster` and subsets of it.

Speed (what a wheel notch waits for): the picture is :func:`.static.shade`'s, drawn by
:class:`.raster.Raster` (the points held sorted along a grid; pixel for pixel the same picture
in half the time), sent as its non-empty pixels (:func:`runs`: a third of the raw bytes for a
typical map) as they are over loopback and gzipped (level 1) to another machine
(``Content-Encoding``: the browser inflates it natively); either is 5-10 times faster to make
than a PNG of the same pixels. Renders run in a small pool off the IOLoop; a request that a
newer one of the same session has overtaken before it started is answered ``204`` without
rendering, so a burst of wheel events or a long drag never queues stale work. The query is
checked by :func:`.tiles.parse_tile` (the ``/tile.png`` rules).
"""
from __future__ import annotations

import logging
import re
import secrets
import threading
import time
import weakref
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from tornado.web import RequestHandler

from .data import MapData
from .raster import Raster, over_dimmed, pack_runs
from .tiles import BadTile, Tile, parse_tile

log = logging.getLogger(__name__)

DIM_ALPHA = 0.30          # unselected points while a selection is shown: this much of their alpha
DIM_GREY = 0.55           # ... and their colour pulled this far towards light grey
_NAME = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class Layers:
    """What a session's map shows: ``base`` drawn normally (or dimmed under a selection) and
    ``top`` (the selection) in full colour, each a :class:`.raster.Raster`."""

    base: Raster
    top: Raster | None = None


def picture(layers: Layers, tile: Tile) -> np.ndarray:
    """The RGBA picture ``[h, w, 4]`` (uint8, top row first) of ``layers`` over ``tile``."""
    def one(r: Raster) -> np.ndarray:
        return r.picture(tile.x_range, tile.y_range, tile.width, tile.height, max_px=4)

    base = one(layers.base)
    if layers.top is None:
        return base
    return over_dimmed(one(layers.top), base, keep_alpha=DIM_ALPHA, pull=DIM_GREY)


def runs(rgba: np.ndarray) -> bytes:
    """``rgba [h, w, 4]`` (uint8) as its non-empty pixels only: little-endian uint32 words
    ``[n, start_1..start_n, length_1..length_n, pixels...]``, where run ``i`` covers the
    ``length_i`` pixels from flat index ``start_i`` (row-major, top row first) and ``pixels``
    are their RGBA bytes, run after run; every other pixel is 0 (transparent). A map leaves
    most pixels empty: a million points at 1020x884 take ~1 MB instead of 3.6 MB."""
    return pack_runs(rgba).astype("<u4", copy=False).tobytes()


def encode(rgba: np.ndarray, level: int = 1) -> bytes:
    """``rgba`` as :func:`runs`, gzipped at ``level`` (what ``Content-Encoding: gzip``
    carries) or, with ``level=0``, as they are."""
    body = runs(rgba)
    if level <= 0:
        return body
    comp = zlib.compressobj(level, zlib.DEFLATED, 31)
    return comp.compress(body) + comp.flush()


_BASES: dict[int, Raster] = {}
_BASES_LOCK = threading.Lock()


def base_raster(data: MapData) -> Raster:
    """The :class:`.raster.Raster` of all of ``data``'s points, built once per map (sessions
    share it; forgotten with ``data``)."""
    key = id(data)
    with _BASES_LOCK:
        if key not in _BASES:
            _BASES[key] = Raster.from_frame(data.points, by=data.by, color_key=data.color_key)
            weakref.finalize(data, _BASES.pop, key, None)
        return _BASES[key]


def warm_up(data: MapData) -> float:
    """Build the map's :func:`base_raster` and compile the renderer's kernels (numba's cache
    keeps them between runs; datashader's spreading compiles in each process: seconds) before
    the first session asks for a picture; returns the seconds."""
    t0 = time.perf_counter()
    base = base_raster(data)
    (x0, x1), (y0, y1) = data.bounds()
    few = np.zeros(len(base), dtype=bool)
    few[base.order[:50]] = True
    for layers, side in ((Layers(base), 64), (Layers(base.subset(few), base.subset(few & ~few)), 320)):
        picture(layers, Tile((x0, x1), (y0, y1), side, side))      # dense (no spreading), sparse (spreading)
    encode(np.zeros((4, 4, 4), np.uint8))
    return time.perf_counter() - t0


class ViewState:
    """One session's map, as the picture route sees it: the layers to draw (replaced whole,
    never mutated, so a render in the pool reads one consistent pair) and the newest request
    number seen."""

    def __init__(self, layers: Layers):
        self.layers = layers
        self.name = secrets.token_hex(16)
        self.newest = 0
        self._lock = threading.Lock()

    def saw(self, seq: int) -> None:
        with self._lock:
            self.newest = max(self.newest, seq)

    def stale(self, seq: int) -> bool:
        return seq < self.newest

    def render(self, tile: Tile, seq: int, level: int = 1, since: float | None = None
               ) -> tuple[bytes, bool, dict] | None:
        """The encoded picture (:func:`encode` at ``level``), whether it is empty, and its
        timings (ms: ``queue`` since ``since``, ``render``, ``encode``); ``None`` when a newer
        request overtook it before it began."""
        if self.stale(seq):
            return None
        t0 = time.perf_counter()
        rgba = picture(self.layers, tile)
        t1 = time.perf_counter()
        body = encode(rgba, level)
        t2 = time.perf_counter()
        timings = {"queue": 1e3 * (t0 - (since or t0)), "render": 1e3 * (t1 - t0), "encode": 1e3 * (t2 - t1)}
        return body, not bool(rgba[..., 3].any()), timings


class Registry:
    """The live sessions' :class:`ViewState` by name (weakly held: a closed session's goes away)."""

    def __init__(self, workers: int = 2):
        self._states: weakref.WeakValueDictionary[str, ViewState] = weakref.WeakValueDictionary()
        self.pool = ThreadPoolExecutor(max_workers=int(workers), thread_name_prefix="klustr-view")

    def add(self, state: ViewState) -> str:
        self._states[state.name] = state
        return state.name

    def remove(self, name: str) -> None:
        self._states.pop(name, None)

    def get(self, name: str) -> ViewState | None:
        return self._states.get(name) if _NAME.fullmatch(name or "") else None

    def __len__(self) -> int:
        return len(self._states)


REGISTRY = Registry()


class ViewHandler(RequestHandler):
    """``GET /view/<session>/<seq>?x0=..&x1=..&y0=..&y1=..&w=..&h=..``; route it with :func:`view_route`."""

    def initialize(self, registry: Registry) -> None:  # type: ignore[override]
        self.registry = registry

    def _plain(self, status: int, message: str) -> None:
        self.clear()
        self.set_status(status)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "no-store")
        self.finish(message + "\n")

    def compress(self) -> bool:
        """gzip for a browser on another machine; the raw bytes over loopback, where sending
        3.6 MB costs less than compressing them (~15 ms for a 1020x884 picture)."""
        if "gzip" not in self.request.headers.get("Accept-Encoding", ""):
            return False
        return self.request.remote_ip not in ("127.0.0.1", "::1")

    async def get(self, name: str, seq_text: str) -> None:
        from tornado.ioloop import IOLoop

        state = self.registry.get(name)
        if state is None:
            self._plain(404, "no such map session (reload the page)")
            return
        try:
            tile = parse_tile(self.request.query)
        except BadTile as exc:
            self._plain(400, str(exc))
            return
        seq = int(seq_text)
        state.saw(seq)
        level = 1 if self.compress() else 0
        try:
            out = await IOLoop.current().run_in_executor(self.registry.pool, state.render, tile, seq, level,
                                                         time.perf_counter())
        except Exception:           # a bug, not the request: logged; the client gets one line
            log.exception("view: render failed for %s", tile)
            self._plain(500, "could not render this view")
            return
        if out is None:
            self.set_status(204)
            self.set_header("Cache-Control", "no-store")
            self.finish()
            return
        body, empty, timings = out
        self.set_header("Content-Type", "application/octet-stream")
        if level:
            self.set_header("Content-Encoding", "gzip")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Klustr-Size", f"{tile.width}x{tile.height}")
        self.set_header("X-Klustr-Empty", "1" if empty else "0")
        self.set_header("Server-Timing", ", ".join(f"{k};dur={v:.1f}" for k, v in timings.items()))
        self.finish(body)

    def write_error(self, status_code: int, **kwargs) -> None:   # 405 and the like: one line, no traceback
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(f"{status_code}\n")


def view_route(registry: Registry = REGISTRY) -> tuple:
    """The tornado route of the session pictures, for ``extra_patterns``."""
    return (r"/view/([0-9a-f]{32})/([0-9]{1,12})", ViewHandler, {"registry": registry})
