"""The pictures of one session's map: ``GET /view/<session>/<seq>?x0=&x1=&y0=&y1=&w=&h=``.

The app's map (:class:`.components.MapCanvas`) draws images it fetches itself, as soon as the
view changes, rather than waiting for Bokeh's level-of-detail timeout: the picture of the
session's *visible* points (its filter) over the asked range at the canvas's device pixels,
with the session's selection in full colour over the other points dimmed. Each session has a
:class:`ViewState` under a random 128-bit name that only its page knows; the points behind it
are the server's shared read-only frame, filtered copies of three columns at most.

Speed (what a wheel notch waits for): the picture is datashader's (:func:`.static.shade`, the
one rendering path), sent as raw RGBA rows, top row first, gzip level 1 (``Content-Encoding``:
the browser inflates it natively) -- 5-10 times faster to encode than a PNG of the same pixels
and as fast to unpack. Renders run in a small pool off the IOLoop; a request that a newer one
of the same session has overtaken before it started is answered ``204`` without rendering, so
a burst of wheel events or a long drag never queues stale work. The query is checked by
:func:`.tiles.parse_tile` (the ``/tile.png`` rules).
"""
from __future__ import annotations

import logging
import re
import secrets
import threading
import time
import warnings
import weakref
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
from tornado.web import RequestHandler

from .data import MapData
from .tiles import BadTile, Tile, parse_tile

log = logging.getLogger(__name__)

DIM_ALPHA = 0.30          # unselected points while a selection is shown: this much of their alpha
DIM_GREY = 0.55           # ... and their colour pulled this far towards light grey
_NAME = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class Layers:
    """What a session's map shows: ``base`` drawn normally (or dimmed under a selection) and
    ``top`` (the selection) in full colour; each a frame of ``x``, ``y`` and the colouring."""

    base: pd.DataFrame
    top: pd.DataFrame | None = None


def dim(rgba: np.ndarray) -> np.ndarray:
    """``rgba [h, w, 4]`` uint8 pulled towards light grey with its alpha scaled by ``DIM_ALPHA``."""
    out = rgba.astype(np.float32)
    out[..., :3] = out[..., :3] * (1 - DIM_GREY) + 200.0 * DIM_GREY
    out[..., 3] *= DIM_ALPHA
    return out.astype(np.uint8)


def over(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """``top`` composited over ``bottom`` (straight alpha, uint8 ``[h, w, 4]``)."""
    a = top[..., 3:4].astype(np.float32) / 255.0
    b = bottom[..., 3:4].astype(np.float32) / 255.0
    out_a = a + b * (1 - a)
    rgb = (top[..., :3] * a + bottom[..., :3] * b * (1 - a)) / np.maximum(out_a, 1e-6)
    return np.concatenate([rgb, out_a * 255.0], axis=-1).round().astype(np.uint8)


def picture(layers: Layers, data: MapData, tile: Tile) -> np.ndarray:
    """The RGBA picture ``[h, w, 4]`` (uint8, top row first) of ``layers`` over ``tile``."""
    from .static import shade

    def one(df: pd.DataFrame) -> np.ndarray:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            img = shade(df, by=data.by, color_key=data.color_key, width=tile.width, height=tile.height,
                        x_range=tile.x_range, y_range=tile.y_range, max_px=4)
        return np.asarray(img.data).view(np.uint8).reshape(tile.height, tile.width, 4)[::-1]

    base = one(layers.base)
    if layers.top is None:
        return np.ascontiguousarray(base)
    top = one(layers.top)
    return over(top, dim(base))


def encode(rgba: np.ndarray, level: int = 1) -> bytes:
    """``rgba`` as a gzip stream of its raw bytes (what ``Content-Encoding: gzip`` carries)."""
    comp = zlib.compressobj(level, zlib.DEFLATED, 31)
    return comp.compress(np.ascontiguousarray(rgba).data) + comp.flush()


def warm_up(data: MapData) -> float:
    """Compile the renderer's kernels (datashader's aggregation, shading and spreading: seconds
    of numba compilation) before the first session asks for a picture; returns the seconds."""
    t0 = time.perf_counter()
    (x0, x1), (y0, y1) = data.bounds()
    for n, side in ((1000, 64), (50, 320)):          # dense (no spreading) and sparse (spreading)
        pts = data.points.iloc[:n]
        picture(Layers(base=pts, top=pts.iloc[:5]), data, Tile((x0, x1), (y0, y1), side, side))
    return time.perf_counter() - t0


class ViewState:
    """One session's map, as the picture route sees it: the layers to draw (replaced whole,
    never mutated, so a render in the pool reads one consistent pair) and the newest request
    number seen."""

    def __init__(self, data: MapData, layers: Layers):
        self.data = data
        self.layers = layers
        self.name = secrets.token_hex(16)
        self.newest = 0
        self.timings: dict[str, float] = {}
        self._lock = threading.Lock()

    def saw(self, seq: int) -> None:
        with self._lock:
            self.newest = max(self.newest, seq)

    def stale(self, seq: int) -> bool:
        return seq < self.newest

    def render(self, tile: Tile, seq: int) -> tuple[bytes, bool] | None:
        """The encoded picture and whether it is empty; ``None`` when overtaken before it began."""
        if self.stale(seq):
            return None
        t0 = time.perf_counter()
        rgba = picture(self.layers, self.data, tile)
        t1 = time.perf_counter()
        body = encode(rgba)
        t2 = time.perf_counter()
        self.timings = {"render_ms": 1e3 * (t1 - t0), "encode_ms": 1e3 * (t2 - t1), "bytes": float(len(body))}
        return body, not bool(rgba[..., 3].any())


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
        try:
            out = await IOLoop.current().run_in_executor(self.registry.pool, state.render, tile, seq)
        except Exception:           # a bug, not the request: logged; the client gets one line
            log.exception("view: render failed for %s", tile)
            self._plain(500, "could not render this view")
            return
        if out is None:
            self.set_status(204)
            self.set_header("Cache-Control", "no-store")
            self.finish()
            return
        body, empty = out
        self.set_header("Content-Type", "application/octet-stream")
        self.set_header("Content-Encoding", "gzip")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Klustr-Size", f"{tile.width}x{tile.height}")
        self.set_header("X-Klustr-Empty", "1" if empty else "0")
        self.set_header("Server-Timing", ", ".join(f"{k.split('_')[0]};dur={v:.1f}"
                                                    for k, v in state.timings.items() if k.endswith("_ms")))
        self.finish(body)

    def write_error(self, status_code: int, **kwargs) -> None:   # 405 and the like: one line, no traceback
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(f"{status_code}\n")


def view_route(registry: Registry = REGISTRY) -> tuple:
    """The tornado route of the session pictures, for ``extra_patterns``."""
    return (r"/view/([0-9a-f]{32})/([0-9]{1,12})", ViewHandler, {"registry": registry})
