"""``GET /tile.png``: the datashaded picture of any data range, over plain HTTP.

``/tile.png?x0=..&x1=..&y0=..&y1=..&w=..&h=..[&labels=a,b]`` returns a ``w``×``h`` PNG of the
points inside ``[x0, x1] × [y0, y1]`` (only the given labels with ``labels=``), drawn by
:func:`.static.shade`, the one rendering path of every picture (the app's map draws the same
picture with :mod:`.raster`, pixel for pixel): a given zoom for any client (a script, a test,
another viewer).

The points are the server's shared read-only :class:`~.data.MapData`; renders run in a small
thread pool off the IOLoop (audio stays answered during a zoom flood), at most
``max_pending`` accepted at once (running or queued); beyond that the answer is 503 with
``Retry-After``, never unbounded memory. Every parameter is checked before anything runs: only
the known names, each once; bounds finite decimals with ``x0 < x1``, ``y0 < y1``, ``|v| <=
1e12``; ``w``, ``h`` integers in 1..4096; a bounded query string. Anything else is a 400 with
a one-line ``text/plain`` body.
"""
from __future__ import annotations

import io
import logging
import math
import re
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import parse_qsl

import numpy as np
from tornado.web import RequestHandler

from .data import MapData

log = logging.getLogger(__name__)

MAX_SIDE = 4096                 # w and h, pixels
MAX_COORD = 1e12                # |x0|, |x1|, |y0|, |y1|
MIN_RELATIVE_SPAN = 1e-9        # x1 - x0 >= this × max(|x0|, |x1|): float32 points hold no more detail
MAX_QUERY = 4096                # characters of the query string
MAX_CELLS = 1 << 28             # w × h × categories of one aggregate (uint32 counts: 1 GiB)
PARAMS = ("x0", "x1", "y0", "y1", "w", "h", "labels")
REQUIRED = PARAMS[:6]
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d{1,4})?")
_INT = re.compile(r"\d{1,9}")


class BadTile(ValueError):
    """A refused request; the message is the 400 body."""


@dataclass(frozen=True)
class Tile:
    x_range: tuple[float, float]
    y_range: tuple[float, float]
    width: int
    height: int
    labels: tuple[str, ...] = ()


def _number(name: str, text: str) -> float:
    if not _NUMBER.fullmatch(text):
        raise BadTile(f"{name} must be a finite decimal number")
    v = float(text)
    if not math.isfinite(v) or abs(v) > MAX_COORD:
        raise BadTile(f"{name} must be finite, at most {MAX_COORD:g} in magnitude")
    return v


def _side(name: str, text: str) -> int:
    if not _INT.fullmatch(text):
        raise BadTile(f"{name} must be a whole number of pixels, 1 to {MAX_SIDE}")
    v = int(text)
    if not 1 <= v <= MAX_SIDE:
        raise BadTile(f"{name} must be 1 to {MAX_SIDE} pixels (got {v})")
    return v


def _span(lo_name: str, lo: float, hi_name: str, hi: float) -> tuple[float, float]:
    if not lo < hi:
        raise BadTile(f"{lo_name} must be less than {hi_name}")
    if hi - lo < MIN_RELATIVE_SPAN * max(abs(lo), abs(hi)):
        raise BadTile(f"{lo_name}..{hi_name} is too narrow (below {MIN_RELATIVE_SPAN:g} of its magnitude)")
    return lo, hi


def parse_tile(query: str, *, known_labels=(), categories: int = 1) -> Tile:
    """The :class:`Tile` a query string asks for, or :class:`BadTile` saying what is wrong."""
    if len(query) > MAX_QUERY:
        raise BadTile(f"query string too long (at most {MAX_QUERY} characters)")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query), errors="strict",
                          max_num_fields=len(PARAMS))
    except (ValueError, UnicodeDecodeError):      # malformed pairs, bad UTF-8, too many fields
        raise BadTile(f"malformed query; expected {'&'.join(p + '=' for p in REQUIRED)} [&labels=]") from None
    got: dict[str, str] = {}
    for k, v in pairs:
        if k not in PARAMS:
            raise BadTile(f"unknown parameter {k[:40]!r}; known: {', '.join(PARAMS)}")
        if k in got:
            raise BadTile(f"parameter {k} given twice")
        got[k] = v
    missing = [k for k in REQUIRED if k not in got]
    if missing:
        raise BadTile(f"missing parameter(s): {', '.join(missing)}")
    x = _span("x0", _number("x0", got["x0"]), "x1", _number("x1", got["x1"]))
    y = _span("y0", _number("y0", got["y0"]), "y1", _number("y1", got["y1"]))
    w, h = _side("w", got["w"]), _side("h", got["h"])
    if w * h * max(1, categories) > MAX_CELLS:
        raise BadTile(f"w*h too large for {categories} categories (at most {MAX_CELLS // max(1, categories)} pixels)")
    labels: tuple[str, ...] = ()
    if got.get("labels"):
        labels = tuple(dict.fromkeys(got["labels"].split(",")))
        known = set(known_labels)
        unknown = [s for s in labels if s not in known]
        if unknown:
            raise BadTile(f"unknown label {unknown[0][:40]!r}")
    return Tile(x, y, w, h, labels)


class TileService:
    """The renderer behind the route: the shared points, a bounded pool and an admission count."""

    def __init__(self, data: MapData, *, workers: int = 2, max_pending: int = 64):
        pts = data.points
        self.data = data
        self._points = pts                         # shared, never copied whole
        self.labels = tuple(str(c) for c in pts["label"].cat.categories)
        self.categories = len(data.color_key)
        self.pool = ThreadPoolExecutor(max_workers=int(workers), thread_name_prefix="klustr-tile")
        self.max_pending = int(max_pending)
        self._pending = 0
        self._lock = threading.Lock()

    def parse(self, query: str) -> Tile:
        return parse_tile(query, known_labels=self.labels, categories=self.categories)

    def admit(self) -> bool:
        """Take a slot (False when ``max_pending`` renders are already running or queued)."""
        with self._lock:
            if self._pending >= self.max_pending:
                return False
            self._pending += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._pending -= 1

    def render(self, tile: Tile) -> bytes:
        """The PNG of ``tile``: :func:`.static.shade`, then PIL."""
        from .static import shade

        df = self._points
        if tile.labels:                            # a copy of only the columns shade() reads
            df = df.loc[df["label"].isin(list(tile.labels)).to_numpy(), ["x", "y", self.data.by]]
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            img = shade(df, by=self.data.by, color_key=self.data.color_key, width=tile.width,
                        height=tile.height, x_range=tile.x_range, y_range=tile.y_range, max_px=4)
        buf = io.BytesIO()
        img.to_pil().save(buf, format="PNG", compress_level=1)
        return buf.getvalue()


class TileHandler(RequestHandler):
    """``GET /tile.png?...``; route it with :func:`tile_route`."""

    def initialize(self, service: TileService) -> None:  # type: ignore[override]
        self.service = service

    def _plain(self, status: int, message: str, **headers: str) -> None:
        self.clear()
        self.set_status(status)
        for name, value in headers.items():
            self.set_header(name.replace("_", "-"), value)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "no-store")
        self.finish(message.replace("\r", " ").replace("\n", " ") + "\n")

    async def get(self) -> None:
        try:
            tile = self.service.parse(self.request.query)
        except BadTile as exc:
            self._plain(400, str(exc))
            return
        if not self.service.admit():
            self._plain(503, "busy: too many tile requests at once; retry shortly", Retry_After="1")
            return
        try:
            png = await _run(self.service, tile)
        except Exception:          # a bug, not the request: logged; the client gets one line
            log.exception("tile: render failed for %s", tile)
            self._plain(500, "could not render this tile")
            return
        finally:
            self.service.release()
        self.set_header("Content-Type", "image/png")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "private, max-age=60")
        self.finish(png)

    def write_error(self, status_code: int, **kwargs) -> None:   # 405 and the like: one line, no traceback
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(f"{status_code}\n")


async def _run(service: TileService, tile: Tile) -> bytes:
    from tornado.ioloop import IOLoop

    return await IOLoop.current().run_in_executor(service.pool, service.render, tile)


def tile_route(data: MapData, *, workers: int = 2, max_pending: int = 64) -> tuple:
    """The tornado route of the tile handler, for ``extra_patterns``."""
    return (r"/tile\.png", TileHandler, {"service": TileService(data, workers=workers, max_pending=max_pending)})
