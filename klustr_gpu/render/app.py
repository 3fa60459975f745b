"""The Panel app of one session: the map, search and facets, what plays and its similar sounds,
the selection and its exports.

One :class:`MapApp` per browser session; the points (:class:`MapData`), the audio index and the
similar-sounds graph (:mod:`.similar`) are loaded once per server and shared read-only. The map
is a :class:`.components.MapCanvas` drawing the session's pictures (:mod:`.mapview`): the
points the filter shows, the selection in full colour over the rest dimmed. A click finds the
nearest shown point (numpy, brute force: ~10 ms at 1M points), plays it through
``/audio/<token>`` (``#t=START`` for frame points) and lists its similar sounds. Box and lasso
selections fill a sortable table (a click plays, a drag carries the file out); filters prune
the selection, and exports hold exactly the selection shown.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ..store import Project
from .components import Facets, MapCanvas, SoundPanel
from .data import MapData, load_map
from .export import copy_selection, selection_csv, selection_m3u
from .filters import PointFilter
from .mapview import REGISTRY, Layers, ViewState, base_raster
from .security import TRANSCODE, AudioIndex, audio_type, esc
from .static import html_anchors

log = logging.getLogger(__name__)

SIDE_WIDTH = 380
SEARCH_DEBOUNCE_MS = 180     # search as you type: applied this long after the last key
ZOOM_IN_LIMIT = 2000         # the view's larger side spans at least the map's extent / this
ZOOM_OUT_LIMIT = 4           # ... and at most this many times the extent
TABLE_COLUMNS = ["drag", "name", "label", "duration", "folder"]
NOTHING_SELECTED = "Nothing selected to {what}: draw a box or a lasso on the map first (Box / Lasso above the map)."


def pn_modules():
    import holoviews as hv
    import holoviews.plotting.bokeh  # noqa: F401  (registers the bokeh renderer)
    import panel as pn

    hv.Store.set_current_backend("bokeh")
    return hv, pn


def drag_spec(path: str, url: str) -> str:
    """Chromium's ``DownloadURL`` drag data for a served file, less the origin: ``mime:name:url``
    (AIFF is served as WAV, so it is named and typed as WAV; ``:`` cannot appear in the name)."""
    name = Path(str(path)).name.replace(":", "_")
    if Path(name).suffix.lower() in TRANSCODE:
        name, mime = Path(name).stem + ".wav", "audio/wav"
    else:
        mime = audio_type(name)
    return f"{mime}:{name}:{url.split('#', 1)[0]}"


class MapApp:
    """The app of one session. ``layout`` is the Panel object to show or serve."""

    def __init__(self, data: MapData, index: AudioIndex, *, project: Project | None = None,
                 neighbours: int = 10, export_root: Path | None = None, similar=None):
        _, pn = pn_modules()
        self.data, self.index, self.project = data, index, project
        self.k = int(neighbours)
        self.export_root = export_root            # None: any folder (local use)
        pts = data.points
        self._x = pts["x"].to_numpy(np.float32)
        self._y = pts["y"].to_numpy(np.float32)
        self.filter = PointFilter(pts, data.by)
        self.mask: np.ndarray | None = None       # None = all points shown
        self.selection = np.zeros(0, dtype=np.int64)
        self.selected: int | None = None          # the clicked point
        self.listed = np.zeros(0, dtype=np.int64)  # its similar sounds, as listed
        self.hovered: int | None = None
        self._plays = 0
        self._typed = 0
        if similar is None and project is not None:
            from .similar import shared
            similar = shared(project, data)
        self.similar = similar
        self._chosen: list[str] = []
        self._text = ""
        self._make_map()
        self._make_filters(pn)
        self._make_exports(pn)
        self.layout = self._make_layout(pn)
        self._forget_on_close(pn)

    def _make_map(self) -> None:
        """The map (its pictures: this session's :class:`.mapview.ViewState`) and the sound panel."""
        data = self.data
        self.raster = base_raster(data)
        self.view = ViewState(Layers(self.raster))
        REGISTRY.add(self.view)
        (x0, x1), (y0, y1) = data.bounds()
        extent = max(x1 - x0, y1 - y0)
        self.canvas = MapCanvas(src=f"/view/{self.view.name}", home=[x0, x1, y0, y1],
                                limits=[extent / ZOOM_IN_LIMIT, extent * ZOOM_OUT_LIMIT],
                                annotations=[{"x": v[0], "y": v[1], "text": k}    # cluster names, as map.html
                                             for k, v in html_anchors(data, (x0, x1), (y0, y1)).items()],
                                sizing_mode="stretch_both",
                                min_height=500)
        self.canvas.on_msg(lambda event: self._on_map_msg(event.data))
        self.sound = SoundPanel(sizing_mode="stretch_width", margin=(5, 10))
        self.sound.on_msg(lambda event: self._on_sound_msg(event.data))
        self.sound.param.watch(self._on_mode, "mode")

    def _make_filters(self, pn) -> None:
        self.w_search = pn.widgets.TextInput(name="Search file names and folders", placeholder="e.g. snare 808",
                                             sizing_mode="stretch_width")
        self.w_search.param.watch(self._on_typing, "value_input")
        self.w_search.param.watch(lambda e: self.set_filter(text=e.new), "value")
        self.facets = Facets(options=self._facet_options(self.filter.totals), sizing_mode="stretch_width",
                             margin=(5, 10))
        self.facets.param.watch(lambda e: self.set_filter(chosen=e.new), "value")
        self.title = pn.pane.HTML(self._title_html(), sizing_mode="stretch_width", margin=(0, 10))
        self.status = pn.pane.HTML(self._status_html(), sizing_mode="stretch_width")

    def _make_exports(self, pn) -> None:
        self.w_clear = pn.widgets.Button(name="Clear", button_type="default", width=70)
        self.w_clear.on_click(lambda _e: self.clear_selection())
        self.w_csv = pn.widgets.Button(name="CSV", width=60)
        self.w_csv.on_click(lambda _e: self.export("csv"))
        self.w_m3u = pn.widgets.Button(name="M3U", width=60)
        self.w_m3u.on_click(lambda _e: self.export("m3u"))
        default_folder = str((self.project.path / "exports" / "selection") if self.project else "selection")
        self.w_folder = pn.widgets.TextInput(name="Copy files to folder", value=default_folder,
                                             sizing_mode="stretch_width")
        self.w_copy = pn.widgets.Button(name="Copy files", button_type="primary", width=90, align="end")
        self.w_copy.on_click(self._on_copy)
        self.export_msg = pn.pane.HTML("", sizing_mode="stretch_width")
        self.table = self._make_table(pn)

    def _make_layout(self, pn):
        """The map with its title on the left; on the right, from the top: search, colours,
        status, exports (always in view), the sound and its similar sounds, the selection table."""
        def heading(text: str):
            return pn.pane.HTML(f"<h4 style='margin:4px 0'>{text}</h4>", margin=(0, 10))

        side = pn.Column(
            self.w_search,
            pn.pane.HTML(f"<b>Colour: {esc(self.data.by)}</b> <small>(tick to show only those)</small>",
                         margin=(0, 10)),
            self.facets, self.status,
            pn.Row(self.w_clear, self.w_csv, self.w_m3u),
            pn.Row(self.w_folder, self.w_copy), self.export_msg,
            heading("Now playing"), self.sound,
            heading("Selection"), self.table,
            width=SIDE_WIDTH, scroll=True, sizing_mode="stretch_height",
        )
        main = pn.Column(self.title, self.canvas, sizing_mode="stretch_both")
        return pn.Row(main, side, sizing_mode="stretch_both", name="klustr_gpu map")

    @classmethod
    def from_project(cls, project: Project, *, embedding: str | None = None,
                     export_root: Path | None = None, render=None) -> "MapApp":
        """The app of ``project``'s map as ``render`` (a ``RenderConfig``; default: the
        project's ``[render]`` settings) says."""
        cfg = render if render is not None else project.load_config().render
        data = load_map(project, embedding=embedding, by=cfg.by)
        return cls(data, AudioIndex.from_project(project), project=project, neighbours=cfg.neighbours,
                   export_root=export_root)

    def _forget_on_close(self, pn) -> None:
        doc = pn.state.curdoc
        if doc is not None and doc.session_context is not None:
            name = self.view.name
            pn.state.on_session_destroyed(lambda _ctx: REGISTRY.remove(name))

    def _make_table(self, pn):
        from bokeh.models.widgets.tables import HTMLTemplateFormatter

        drag = HTMLTemplateFormatter(template='<span draggable="true" data-drag="<%= value %>" '
                                              'title="drag into a DAW or onto the desktop" '
                                              'style="cursor:grab">&#10303;</span>')
        table = pn.widgets.Tabulator(
            self._table_frame(), pagination="remote", page_size=12, disabled=True, show_index=False,
            selectable=False, sortable=True, formatters={"drag": drag, "duration": {"type": "money", "precision": 2,
                                                                                     "symbol": ""}},
            titles={"drag": "", "name": "name", "label": "label", "duration": "s", "folder": "folder"},
            widths={"drag": 24, "duration": 50}, sizing_mode="stretch_width", height=360,
            header_filters=False)
        table.on_click(self._on_table_click)
        return table

    # -- filtering -------------------------------------------------------------------------
    def set_filter(self, chosen=None, text=None) -> None:
        """Show only the points whose path holds every word of ``text`` and, when categories
        are ``chosen``, only those; hidden points leave the selection."""
        key = (tuple(self._chosen if chosen is None else chosen), self._text if text is None else str(text))
        if key == (tuple(self._chosen), self._text):
            return
        self._chosen, self._text = list(key[0]), key[1]
        mask, counts = self.filter.apply(self._chosen, self._text)
        self.mask = mask
        self.facets.options = self._facet_options(counts)
        if mask is not None and len(self.selection):
            self.selection = self.selection[mask[self.selection]]
        self._redraw()

    def _on_typing(self, event) -> None:
        """Search as you type: applied ``SEARCH_DEBOUNCE_MS`` after the last key."""
        import panel as pn

        self._typed += 1
        n, text = self._typed, event.new
        doc = pn.state.curdoc
        if doc is None or doc.session_context is None:
            self.set_filter(text=text)
            return

        def apply() -> None:
            if n == self._typed:
                self.set_filter(text=text)

        doc.add_timeout_callback(apply, SEARCH_DEBOUNCE_MS)

    def shown(self) -> np.ndarray:
        """Indices of the points shown."""
        return np.arange(self.data.n) if self.mask is None else np.flatnonzero(self.mask)

    def _facet_options(self, counts) -> list[dict]:
        return [{"name": c, "colour": self.data.color_key.get(c, "#999"), "count": int(counts[i]),
                 "total": int(self.filter.totals[i])} for i, c in enumerate(self.filter.categories)]

    def _redraw(self) -> None:
        """What the map draws, the title, the status and the table, after a change of filter or selection."""
        sel = np.zeros(self.data.n, dtype=bool)
        sel[self.selection] = True
        shown = np.ones(self.data.n, dtype=bool) if self.mask is None else self.mask
        if len(self.selection):
            layers = Layers(self.raster.subset(shown & ~sel), self.raster.subset(sel))
        else:
            layers = Layers(self.raster if self.mask is None else self.raster.subset(shown))
        self.view.layers = layers
        self.canvas.version += 1
        self.title.object = self._title_html()
        self.status.object = self._status_html()
        self.table.value = self._table_frame()

    # -- the map's messages ------------------------------------------------------------------
    def _on_map_msg(self, msg) -> None:
        kind = msg.get("type") if isinstance(msg, dict) else None
        try:
            if kind == "tap":
                self.tap(float(msg["x"]), float(msg["y"]), float(msg["r"]))
            elif kind == "hover":
                self.hover_at(float(msg["x"]), float(msg["y"]), float(msg["r"]))
            elif kind == "box":
                self.select_box(float(msg["x0"]), float(msg["x1"]), float(msg["y0"]), float(msg["y1"]))
            elif kind == "lasso":
                self.select_lasso(np.column_stack([np.asarray(msg["xs"], float), np.asarray(msg["ys"], float)]))
            elif kind == "clear":
                self.clear_selection()
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("map: malformed %s message ignored (%s)", kind, exc)

    def nearest(self, x: float, y: float, k: int = 1) -> np.ndarray:
        """Indices of the ``k`` shown points nearest to (x, y), nearest first (ties: lower index).

        Brute force over float32 coordinates; for k > 1 on big maps the partition runs only
        over the points within a radius estimated from a sample."""
        d = (self._x - np.float32(x)) ** 2 + (self._y - np.float32(y)) ** 2
        if self.mask is not None:
            d[~self.mask] = np.inf
        if k == 1:
            i = int(np.argmin(d)) if len(d) else -1
            return np.array([i]) if i >= 0 and np.isfinite(d[i]) else np.zeros(0, dtype=np.int64)
        cand = None
        if len(d) > 1_000_000:
            sample = np.sort(d[:: len(d) // 100_000])
            cut = sample[min(len(sample) - 1, int(np.ceil(8 * k * len(sample) / len(d))))]
            cand = np.flatnonzero(d <= cut)
            if len(cand) < k or not np.isfinite(cut):
                cand = None
        if cand is None:
            cand = np.flatnonzero(np.isfinite(d))
        k = min(k, len(cand))
        if k <= 0:
            return np.zeros(0, dtype=np.int64)
        dc = d[cand]
        part = np.argpartition(dc, k - 1)[:k] if k < len(cand) else np.arange(len(cand))
        order = np.lexsort((cand[part], dc[part]))
        return cand[part][order]

    def point_near(self, x: float, y: float, radius: float) -> int | None:
        """The shown point nearest (x, y) if it lies within ``radius`` (data units), else ``None``."""
        near = self.nearest(x, y, 1)
        if not len(near):
            return None
        i = int(near[0])
        return i if np.hypot(self._x[i] - x, self._y[i] - y) <= radius else None

    def tap(self, x: float, y: float, radius: float) -> int | None:
        """A click at (x, y): play the shown point within ``radius``, or say there is none and
        clear the side panel."""
        i = self.point_near(x, y, radius)
        if i is None:
            self.clear_sound("No sample there; click on a point.")
            return None
        self.play(i)
        return i

    def hover_at(self, x: float, y: float, radius: float) -> None:
        i = self.point_near(x, y, radius)
        if i is None:
            self.hovered = None
            self.canvas.hover = {}
            return
        row = self.data.points.iloc[i]
        self.canvas.hover = {"x": float(self._x[i]), "y": float(self._y[i]), "text": self._describe(row)}
        if self.sound.hover_play and i != self.hovered and i != self.selected:
            self.play(i)
        self.hovered = i

    # -- playing and similar sounds ------------------------------------------------------------
    def audio(self, i: int) -> str:
        """The page's URL of point ``i``'s file (``/audio/<token>``, ``#t=START`` for frames)."""
        row = self.data.points.iloc[i]
        return self.index.url(row["file_id"], float(row["start"]))

    def item(self, i: int) -> dict:
        """What the page shows of point ``i``: text, its audio URL and its drag data."""
        row = self.data.points.iloc[i]
        url = self.audio(i)
        return {"name": str(row["name"]), "label": str(row["label"]), "duration": float(row["duration"]),
                "start": float(row["start"]), "url": url, "drag": drag_spec(str(row["path"]), url),
                "id": str(row["id"]), "x": float(self._x[i]), "y": float(self._y[i])}

    def play(self, i: int) -> None:
        """Play point ``i`` in the page and list its similar sounds."""
        self._plays += 1
        self.selected = int(i)
        self.sound.now = dict(self.item(i), play=self._plays)
        self.canvas.marker = [float(self._x[i]), float(self._y[i])]
        self._list(i)

    def _list(self, i: int) -> None:
        near, note = self.similar_to(i)
        self.listed = near
        self.sound.param.update(items=[self.item(j) for j in near], current=-1, note=note)

    def similar_to(self, i: int) -> tuple[np.ndarray, str]:
        """The sounds listed beside point ``i`` and where they come from: the feature-space
        graph (:mod:`.similar`) by default, the nearest on the map when asked or when there is
        no graph; only shown points."""
        if self.sound.mode == "features" and self.similar is not None:
            near = self.similar.neighbours(i, self.k, self.mask)
            if near is not None:
                return near, self.similar.note
            note = self.similar.note
        elif self.sound.mode == "features":
            note = "Nearest on the map (no project, so no feature-space graph)."
        else:
            note = "Nearest on the map (2-D)."
        near = np.array([j for j in self.nearest(self._x[i], self._y[i], self.k + 1) if j != i][: self.k],
                        dtype=np.int64)
        return near, note

    def clear_sound(self, message: str = "Click a point to play it.") -> None:
        self.selected = None
        self.listed = np.zeros(0, dtype=np.int64)
        self.sound.param.update(now={"message": message}, items=[], current=-1)
        self.canvas.marker = []

    def _on_sound_msg(self, msg) -> None:
        if not isinstance(msg, dict) or not isinstance(msg.get("i"), int):
            return
        i = msg["i"]
        if msg.get("type") == "pick":              # the page already plays it: mark it on the map
            j = self.selected if i < 0 else (int(self.listed[i]) if i < len(self.listed) else None)
            if j is not None:
                self.canvas.marker = [float(self._x[j]), float(self._y[j])]
        elif msg.get("type") == "open" and 0 <= i < len(self.listed):
            self.play(int(self.listed[i]))

    def _on_mode(self, _event) -> None:
        if self.selected is not None:
            self._list(self.selected)

    @staticmethod
    def _describe(row: pd.Series) -> str:
        start = f" @ {float(row['start']):.2f} s" if float(row["start"]) > 0 else ""
        return f"{row['name']}{start} · {row['label']} · {float(row['duration']):.2f} s"

    # -- selection and export ----------------------------------------------------------------
    def select_box(self, x0: float, x1: float, y0: float, y1: float) -> None:
        inside = ((self._x >= min(x0, x1)) & (self._x <= max(x0, x1))
                  & (self._y >= min(y0, y1)) & (self._y <= max(y0, y1)))
        self._select(inside)

    def select_lasso(self, poly: np.ndarray) -> None:
        from matplotlib.path import Path as MplPath

        poly = np.asarray(poly, dtype=np.float64)
        if poly.ndim != 2 or len(poly) < 3 or not np.isfinite(poly).all():
            return
        x0, y0 = poly.min(axis=0)
        x1, y1 = poly.max(axis=0)
        cand = np.flatnonzero((self._x >= x0) & (self._x <= x1) & (self._y >= y0) & (self._y <= y1))
        inside = np.zeros(self.data.n, dtype=bool)
        if len(cand):
            inside[cand] = MplPath(poly).contains_points(np.column_stack([self._x[cand], self._y[cand]]))
        self._select(inside)

    def _select(self, inside: np.ndarray) -> None:
        if self.mask is not None:
            inside = inside & self.mask
        self.selection = np.flatnonzero(inside)
        self._redraw()

    def clear_selection(self) -> None:
        self.selection = np.zeros(0, dtype=np.int64)
        self._redraw()

    def selected_points(self) -> pd.DataFrame:
        return self.data.points.iloc[self.selection]

    def _table_frame(self) -> pd.DataFrame:
        pts = self.selected_points()
        paths = pts["path"].astype(str)
        urls = [self.index.url(f, float(s)) for f, s in zip(pts["file_id"], pts["start"])]
        return pd.DataFrame({                      # typed even when empty: the table's columns keep their kind
            "drag": np.array([esc(drag_spec(p, u)) for p, u in zip(paths, urls)], dtype=object),
            "name": pts["name"].astype(str).to_numpy(dtype=object),
            "label": pts["label"].astype(str).to_numpy(dtype=object),
            "duration": pts["duration"].to_numpy(np.float64).round(2),
            "folder": np.array([p.rpartition("/")[0] or "/" for p in paths], dtype=object),
        }, index=pd.Index(self.selection, name="point"))

    def _on_table_click(self, event) -> None:
        if event.column == "drag":
            return
        self.play(int(self.table.value.index[event.row]))

    def export_text(self, kind: str) -> str | None:
        """The selection as ``"csv"`` or ``"m3u"`` text; ``None`` (and a message) when empty."""
        if not len(self.selection):
            self._say(NOTHING_SELECTED.format(what=f"save as {kind.upper()}"))
            return None
        pts = self.selected_points()
        text = selection_csv(pts) if kind == "csv" else selection_m3u(pts, self.index)
        self._say(f"Saved {len(pts):,} sounds as selection.{kind}.")
        return text

    def export(self, kind: str) -> None:
        text = self.export_text(kind)
        if text is not None:
            mime = "text/csv" if kind == "csv" else "audio/x-mpegurl"
            self.sound.download(f"selection.{kind}", text, mime)

    def _on_copy(self, _event=None):
        if not len(self.selection):
            self._say(NOTHING_SELECTED.format(what="copy"))
            return
        try:
            n, folder = copy_selection(self.selected_points(), self.index, self.w_folder.value,
                                       allowed_root=self.export_root)
        except (OSError, ValueError) as exc:
            self._say(f"Could not copy: {exc}")
            return
        self._say(f"Copied {n} files into {folder}.")

    def _say(self, text: str) -> None:
        """One line under the export buttons (escaped)."""
        self.export_msg.object = f"<p class='klustr-export-msg' style='margin:2px 0'>{esc(text)}</p>"

    # -- text ----------------------------------------------------------------------------------
    def n_shown(self) -> int:
        return self.data.n if self.mask is None else int(self.mask.sum())

    def _title_html(self) -> str:
        shown = self.n_shown()
        count = f"{self.data.n:,} points" if shown == self.data.n else f"{shown:,} of {self.data.n:,} points shown"
        return (f'<div class="klustr-title" style="font:600 14px sans-serif">{count} · {esc(self.data.embedding)}'
                f' · coloured by {esc(self.data.by)}</div>')

    def _status_html(self) -> str:
        return (f'<p class="klustr-status" style="margin:2px 0">showing {self.n_shown():,} of '
                f'{self.data.n:,} points · {len(self.selection):,} selected</p>')
