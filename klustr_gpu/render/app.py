"""The Panel app: the datashaded map, hover, click-to-play, neighbours, filters, selection export.

One :class:`MapApp` per browser session; the points (:class:`MapData`) and the audio index are
loaded once per server and shared read-only. A click finds the nearest visible point (numpy,
brute force: ~50 ms at 10M points), plays it through ``/audio/<file_id>`` (``#t=START`` for
frame points) and lists its nearest neighbours on the map, each playable. ``/tile.png`` serves
the same datashaded picture of any range over plain HTTP (:mod:`.tiles`).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ..store import Project
from .data import MapData, load_map
from .export import copy_selection, selection_csv, selection_m3u
from .views import rgb_element, style
from .security import AudioIndex, audio_url, esc

log = logging.getLogger(__name__)

SIDE_WIDTH = 360


def pn_modules():
    import holoviews as hv
    import holoviews.plotting.bokeh  # noqa: F401  (registers the bokeh renderer)
    import panel as pn

    hv.Store.set_current_backend("bokeh")
    return hv, pn


class MapApp:
    """The app of one session. ``layout`` is the Panel object to show or serve."""

    def __init__(self, data: MapData, index: AudioIndex, *, project: Project | None = None,
                 neighbours: int = 10, export_root: Path | None = None):
        hv, pn = pn_modules()
        self.data, self.index, self.project = data, index, project
        self.k = int(neighbours)
        self.export_root = export_root            # None: any folder (local use)
        pts = data.points
        self._x = pts["x"].to_numpy(np.float32)
        self._y = pts["y"].to_numpy(np.float32)
        self.mask: np.ndarray | None = None       # None = all points visible
        self._visible_df = pts
        self.selected: int | None = None           # index of the clicked point
        self.selection = np.zeros(0, dtype=np.int64)

        # display text escaped: the dropdown (Choices.js) renders option labels as HTML
        labels = {esc(c): str(c) for c in pts["label"].cat.categories}
        self.w_labels = pn.widgets.MultiChoice(label="Labels (empty = all)", options=labels, value=[])
        self.w_text = pn.widgets.TextInput(label="File name contains", placeholder="e.g. snare")
        self._filter_key: tuple | None = None
        for w in (self.w_labels, self.w_text):   # clicks and selections see a new filter at once
            w.param.watch(lambda _e: self.set_filter(self.w_labels.value, self.w_text.value), "value")
        self.range = hv.streams.RangeXY()
        self.size = hv.streams.PlotSize()
        self.dmap = hv.DynamicMap(self._raster, streams=[
            self.range, self.size,
            hv.streams.Params(self.w_labels, ["value"]).rename(value="labels"),
            hv.streams.Params(self.w_text, ["value"]).rename(value="text"),
        ])
        self.pointer = hv.streams.PointerXY(x=None, y=None)
        self.inspect = hv.DynamicMap(self._inspect, streams=[self.pointer])
        self.view = style(self.dmap, data, tools=["tap", "box_select", "lasso_select"], hover=False) * self.inspect
        self.tap = hv.streams.Tap(source=self.dmap, x=None, y=None)
        self.tap.add_subscriber(self._on_tap)
        self.box = hv.streams.BoundsXY(source=self.dmap, bounds=None)
        self.box.add_subscriber(self._on_box)
        self.lasso = hv.streams.Lasso(source=self.dmap, geometry=None)
        self.lasso.add_subscriber(self._on_lasso)
        self.hover = pn.pane.HTML("<p><i>Point at a sample to see its name.</i></p>", sizing_mode="stretch_width")

        self.status = pn.pane.HTML(self._status_html(), sizing_mode="stretch_width")
        self.now = pn.pane.HTML("<p><i>Click a point to play it.</i></p>", sizing_mode="stretch_width")
        self.player = pn.pane.HTML('<audio id="klustr-player" controls preload="none"></audio>',
                                   sizing_mode="stretch_width")
        self.neighbours = pn.pane.HTML("", sizing_mode="stretch_width")
        self.w_csv = pn.widgets.FileDownload(callback=self._csv, filename="selection.csv", label="CSV",
                                             embed=False)
        self.w_m3u = pn.widgets.FileDownload(callback=self._m3u, filename="selection.m3u", label="M3U",
                                             embed=False)
        default_folder = str((project.path / "exports" / "selection") if project else "selection")
        self.w_folder = pn.widgets.TextInput(label="Copy files to folder", value=default_folder)
        self.w_copy = pn.widgets.Button(label="Copy files", color="primary")
        self.w_copy.on_click(self._on_copy)
        self.export_msg = pn.pane.HTML("", sizing_mode="stretch_width")
        side = pn.Column(
            pn.pane.HTML(self._legend_html(), sizing_mode="stretch_width"),
            self.w_labels, self.w_text, self.status, self.hover,
            pn.pane.HTML("<h4>Now playing</h4>"), self.now, self.player,
            pn.pane.HTML("<h4>Nearest on the map</h4>"), self.neighbours,
            pn.pane.HTML("<h4>Export the box / lasso selection</h4>"),
            pn.Row(self.w_csv, self.w_m3u), self.w_folder, self.w_copy, self.export_msg,
            width=SIDE_WIDTH, scroll=True,
        )
        self.plot_pane = pn.pane.HoloViews(self.view, sizing_mode="stretch_both", min_height=600)
        self.layout = pn.Row(self.plot_pane, side, sizing_mode="stretch_both", name="klustr_gpu map")

    @classmethod
    def from_project(cls, project: Project, *, embedding: str | None = None,
                     export_root: Path | None = None) -> "MapApp":
        cfg = project.load_config().render
        data = load_map(project, embedding=embedding, by=cfg.by)
        return cls(data, AudioIndex.from_project(project), project=project, neighbours=cfg.neighbours,
                   export_root=export_root)

    # -- filtering -------------------------------------------------------------------------
    def compute_mask(self, labels: list[str] | None, text: str | None) -> np.ndarray | None:
        pts = self.data.points
        mask = None
        if labels:
            mask = pts["label"].isin(list(labels)).to_numpy()
        if text and text.strip():
            names = pts["name"].cat.categories
            hit = np.asarray(names.str.contains(text.strip(), case=False, regex=False), dtype=bool)
            codes = pts["name"].cat.codes.to_numpy()
            m = np.append(hit, False)[codes]      # code -1 (missing) -> the appended False
            mask = m if mask is None else (mask & m)
        return mask

    def set_filter(self, labels=None, text=None) -> None:
        key = (tuple(labels or ()), (text or "").strip())
        if key == self._filter_key:
            return
        self._filter_key = key
        self.mask = self.compute_mask(labels, text)
        self._visible_df = self.data.points if self.mask is None else self.data.points[self.mask]
        if hasattr(self, "status"):
            self.status.object = self._status_html()

    def _raster(self, x_range=None, y_range=None, width=None, height=None, labels=None, text=None, scale=None):
        """One datashaded picture of the visible range at the plot's pixel size (an ``hv.RGB``)."""
        self.set_filter(labels, text)
        return rgb_element(self._visible_df, self.data, x_range=x_range, y_range=y_range, width=width,
                           height=height)

    def _inspect(self, x=None, y=None):
        """The point under the cursor, ringed, with a hover tooltip (file name, label, duration)."""
        import holoviews as hv

        cols = ["x", "y", "name", "label", "duration"]
        i = self.point_near(x, y, pixels=8)
        if i is None:
            df = self.data.points.iloc[:0][cols]
        else:
            df = self.data.points.iloc[[i]][cols].astype({"name": str, "label": str})
            self.hover.object = f'<p class="klustr-hover">under the cursor: {self._describe(self.data.points.iloc[i])}</p>'
        return hv.Points(df, kdims=["x", "y"], vdims=["name", "label", "duration"]).opts(
            size=16, fill_alpha=0, line_color="black", line_width=2, tools=["hover"],
            hover_tooltips=[("name", "@name"), ("label", "@label"), ("duration", "@duration{0.00} s")])

    def point_near(self, x, y, pixels: float = 8.0) -> int | None:
        """The visible point nearest (x, y) if within ``pixels`` screen pixels, else ``None``."""
        if x is None or y is None:
            return None
        near = self.nearest(x, y, 1)
        if not len(near):
            return None
        i = int(near[0])
        xr, yr = self.range.x_range, self.range.y_range
        w, h = self.size.width, self.size.height
        if xr and yr and w and h and None not in (*xr, *yr):
            dx = (self._x[i] - x) / abs(xr[1] - xr[0]) * w
            dy = (self._y[i] - y) / abs(yr[1] - yr[0]) * h
            if np.hypot(dx, dy) > pixels:
                return None
        return i

    def visible(self) -> np.ndarray:
        return np.arange(self.data.n) if self.mask is None else np.flatnonzero(self.mask)

    # -- click: play and neighbours ----------------------------------------------------------
    def nearest(self, x: float, y: float, k: int = 1) -> np.ndarray:
        """Indices of the ``k`` visible points nearest to (x, y), nearest first (ties: lower index).

        Brute force over float32 coordinates: ~50 ms at 10M points; for k > 1 on big maps the
        partition runs only over the points within a radius estimated from a sample."""
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

    def _on_tap(self, x=None, y=None, **_):
        log.debug("tap at %s, %s", x, y)
        if x is None or y is None:
            return
        near = self.nearest(x, y, 1)
        if not len(near):
            return
        i = int(near[0])
        tol = self.tap_tolerance()
        if tol is not None and np.hypot(self._x[i] - x, self._y[i] - y) > tol:
            self.now.object = "<p><i>No sample there; click on a point.</i></p>"
            return
        self.play(i)

    def tap_tolerance(self, fraction: float = 0.03) -> float | None:
        """How far (data units) a click may land from a point: ``fraction`` of the visible span."""
        xr, yr = self.range.x_range, self.range.y_range
        if not xr or not yr or None in (*xr, *yr):
            return None
        return fraction * max(abs(xr[1] - xr[0]), abs(yr[1] - yr[0]))

    def play(self, i: int) -> None:
        """Play point ``i`` in the page and list its neighbours."""
        self.selected = i
        row = self.data.points.iloc[i]
        url = audio_url(row["file_id"], float(row["start"]))
        self.player.object = (f'<audio id="klustr-player" controls autoplay src="{esc(url)}" '
                              f'data-id="{esc(row["id"])}"></audio>')
        self.now.object = f'<p class="klustr-now">{self._describe(row)}</p>'
        near = [j for j in self.nearest(self._x[i], self._y[i], self.k + 1) if j != i][: self.k]
        items = []
        for j in near:
            r = self.data.points.iloc[j]
            items.append(f'<li>{self._describe(r)}<br><audio controls preload="none" '
                         f'src="{esc(audio_url(r["file_id"], float(r["start"])))}"></audio></li>')
        self.neighbours.object = f'<ol class="klustr-neighbours">{"".join(items)}</ol>'

    @staticmethod
    def _describe(row: pd.Series) -> str:
        start = f" @ {float(row['start']):.2f} s" if float(row["start"]) > 0 else ""
        return (f'<b class="klustr-name">{esc(row["name"])}</b>{esc(start)} · {esc(row["label"])} · '
                f'{float(row["duration"]):.2f} s')

    # -- selection and export ----------------------------------------------------------------
    def _on_box(self, bounds=None, **_):
        if bounds is None:
            return
        x0, y0, x1, y1 = bounds
        inside = (self._x >= min(x0, x1)) & (self._x <= max(x0, x1)) & (self._y >= min(y0, y1)) & (self._y <= max(y0, y1))
        self._select(inside)

    def _on_lasso(self, geometry=None, **_):
        if geometry is None or len(geometry) < 3:
            return
        from matplotlib.path import Path as MplPath

        poly = np.asarray(geometry, dtype=np.float64)
        x0, y0 = poly.min(axis=0)
        x1, y1 = poly.max(axis=0)
        box = (self._x >= x0) & (self._x <= x1) & (self._y >= y0) & (self._y <= y1)
        cand = np.flatnonzero(box)
        inside = np.zeros(self.data.n, dtype=bool)
        if len(cand):
            inside[cand] = MplPath(poly).contains_points(np.column_stack([self._x[cand], self._y[cand]]))
        self._select(inside)

    def _select(self, inside: np.ndarray) -> None:
        if self.mask is not None:
            inside = inside & self.mask
        self.selection = np.flatnonzero(inside)
        self.status.object = self._status_html()

    def selected_points(self) -> pd.DataFrame:
        return self.data.points.iloc[self.selection]

    def _csv(self):
        import io
        return io.StringIO(selection_csv(self.selected_points()))

    def _m3u(self):
        import io
        return io.StringIO(selection_m3u(self.selected_points(), self.index))

    def _on_copy(self, _event=None):
        if not len(self.selection):
            self.export_msg.object = "<p>Select points first (box or lasso tool).</p>"
            return
        try:
            n, folder = copy_selection(self.selected_points(), self.index, self.w_folder.value,
                                       allowed_root=self.export_root)
        except (OSError, ValueError) as exc:
            self.export_msg.object = f"<p>Could not copy: {esc(exc)}</p>"
            return
        self.export_msg.object = f"<p>Copied {n} files into {esc(folder)}.</p>"

    # -- text ----------------------------------------------------------------------------------
    def _status_html(self) -> str:
        shown = self.data.n if self.mask is None else int(self.mask.sum())
        return (f'<p class="klustr-status">showing {shown:,} of {self.data.n:,} points · '
                f'{len(self.selection):,} selected</p>')

    def _legend_html(self) -> str:
        counts = self.data.points[self.data.by].value_counts().to_dict()
        rows = "".join(
            f'<li><span style="display:inline-block;width:12px;height:12px;background:{esc(c)};'
            f'margin-right:6px"></span>{esc(k)} ({counts.get(k, 0):,})</li>'
            for k, c in self.data.color_key.items())
        return f'<h4>{esc(self.data.by)}</h4><ul class="klustr-legend" style="list-style:none;padding:0">{rows}</ul>'
