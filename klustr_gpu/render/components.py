"""The app's browser components (Panel ``JSComponent``s, their code in ``assets/``).

* :class:`MapCanvas`: the map. It fetches ``/view/<session>/<seq>`` pictures itself the moment
  the view changes, draws the previous picture stretched at once, draws at device pixels, bounds
  zoom to ``limits``, and sends clicks, hovers and box / lasso selections to Python as messages
  (``{"type": "tap" | "hover" | "box" | "lasso" | "clear", ...}``, data coordinates).
* :class:`Facets`: the legend, one row per colour with its counts, ticked to filter.
* :class:`SoundPanel`: what plays now and its similar sounds: playable, draggable into a DAW
  (Chromium's ``DownloadURL``), stepped through with the arrow keys (space replays, Enter opens);
  it also saves exports (:meth:`SoundPanel.download`).

Their code is sent inline with the page (no ``/components`` route is needed).
"""
from __future__ import annotations

from pathlib import Path

import param
from panel.custom import JSComponent

ASSETS = Path(__file__).with_name("assets")
CSS = (ASSETS / "klustr.css").read_text(encoding="utf-8")


class MapCanvas(JSComponent):
    """The map of one session. ``src`` is its picture route; bump ``version`` to redraw."""

    src = param.String(default="", doc="/view/<session>: where the pictures come from")
    version = param.Integer(default=0, doc="bumped when what is drawn changes (filter, selection)")
    home = param.List(default=[-1.0, 1.0, -1.0, 1.0], doc="x0, x1, y0, y1 of the whole map")
    limits = param.List(default=[0.0, 1e300], doc="smallest and largest visible span (data units)")
    tool = param.Selector(default="pan", objects=["pan", "box", "lasso"])
    hover = param.Dict(default={}, doc="the point under the cursor: x, y, text")
    marker = param.List(default=[], doc="x, y of the sound playing")
    annotations = param.List(default=[], doc="names placed on the map: [{x, y, text}]")

    _esm = ASSETS / "mapcanvas.js"
    _stylesheets = [CSS]


class Facets(JSComponent):
    """The colour legend as a filter: tick categories to show only those (none: all)."""

    options = param.List(default=[], doc="[{name, colour, count (shown), total}]")
    value = param.List(default=[], doc="the ticked categories")

    _esm = ASSETS / "facets.js"
    _stylesheets = [CSS]


class SoundPanel(JSComponent):
    """The sound playing and its similar sounds. Python sets ``now`` and ``items``; the page
    sends ``{"type": "pick" | "open", "i": n}`` when a listed sound is played or opened."""

    now = param.Dict(default={}, doc="name, label, duration, url, drag, id, play (a nonce) or message")
    items = param.List(default=[], doc="the similar sounds: name, label, duration, url, drag")
    current = param.Integer(default=-1, doc="the listed sound playing (-1: the clicked one)")
    note = param.String(default="", doc="where the similar sounds come from")
    mode = param.Selector(default="features", objects=["features", "map"])
    hover_play = param.Boolean(default=False, doc="play a sound when the pointer rests on it")

    _esm = ASSETS / "soundpanel.js"
    _stylesheets = [CSS]

    def download(self, name: str, text: str, mime: str = "text/plain") -> None:
        """Save ``text`` as the file ``name`` in the browser."""
        self._send_msg({"type": "download", "name": name, "text": text, "mime": mime})
