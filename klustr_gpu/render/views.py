"""The HoloViews views of a map: points datashaded on every zoom and pan, coloured by category.

``map_plot(data)`` returns ``dynspread(datashade(Points))``: a DynamicMap that re-aggregates
the visible range with datashader (count per category, eq_hist colour mixing) each time the
range changes, with a ``first`` selector so the hover shows the file name, label and duration
of a real point under the cursor. Above ``FAST_ABOVE`` points it returns :func:`fast_raster`
instead (the served app's own renderer: ~10x faster, no per-pixel hover data).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from .data import MapData

FAST_ABOVE = 1_000_000            # plot(): above this many points, the fast raster without hover


def hover_columns(data: MapData) -> list[str]:
    cols = ["name", "label", "duration"]
    if data.by != "label":
        cols.append(data.by)
    if data.frames:
        cols.append("start")
    return cols


def points_element(data: MapData, df: pd.DataFrame | None = None):
    """``hv.Points`` over ``x``, ``y`` with the hover columns as value dimensions."""
    import holoviews as hv

    df = data.points if df is None else df
    cols = hover_columns(data)
    return hv.Points(df[["x", "y", *cols]], kdims=["x", "y"], vdims=cols)


def shaded(element, data: MapData, *, max_px: int = 4, selector: bool = True):
    """Datashade ``element`` (a Points or a DynamicMap of Points) by ``data.by``, then spread;
    with ``selector``, each pixel also carries its first point's columns for the hover."""
    import datashader as ds
    from holoviews.operation.datashader import datashade, dynspread

    kw = dict(aggregator=ds.count_cat(data.by), color_key=data.color_key, cnorm="eq_hist", min_alpha=150)
    if selector:
        kw["selector"] = ds.first("x")
    out = dynspread(datashade(element, **kw), threshold=0.5, max_px=max_px)
    return out


def style(obj, data: MapData, *, tools: list[str] | None = None, height: int = 680, hover: bool = True):
    x_range, y_range = data.bounds()
    extra = {"selector_in_hovertool": False} if hover else {}
    return obj.opts(
        tools=(["hover"] if hover else []) + list(tools or []), **extra, active_tools=["wheel_zoom", "pan"], responsive=True,
        min_height=height, xlim=x_range, ylim=y_range, xaxis=None, yaxis=None,
        default_tools=["pan", "wheel_zoom", "box_zoom", "reset", "save"],
        title=f"{data.n:,} points · {data.embedding} · coloured by {data.by}",
    )


def rgb_element(df, data: MapData, *, x_range=None, y_range=None, width=None, height=None):
    """One picture of ``df`` (x, y, ``data.by``) over the given range at the given pixel size:
    datashader aggregation + compiled shading + dynspread, as an ``hv.RGB``. ~0.3 s at 10M points."""
    import holoviews as hv

    from .static import shade

    bx, by = data.bounds()
    xr = tuple(x_range) if x_range and None not in x_range else bx
    yr = tuple(y_range) if y_range and None not in y_range else by
    w = int(min(max(width or 900, 64), 3000))
    h = int(min(max(height or 680, 64), 3000))
    img = shade(df, by=data.by, color_key=data.color_key, width=w, height=h, x_range=xr, y_range=yr, max_px=4)
    rgba = np.asarray(img.data).view(np.uint8).reshape(h, w, 4)[::-1]
    return hv.RGB(rgba, bounds=(xr[0], yr[0], xr[1], yr[1]), kdims=["x", "y"], vdims=list("RGBA"))


def fast_raster(data: MapData):
    """A DynamicMap re-rasterising all points on every zoom/pan with :func:`rgb_element`."""
    import holoviews as hv

    def picture(x_range=None, y_range=None, width=None, height=None, scale=None):
        return rgb_element(data.points, data, x_range=x_range, y_range=y_range, width=width, height=height)

    return hv.DynamicMap(picture, streams=[hv.streams.RangeXY(), hv.streams.PlotSize()])


def map_plot(data: MapData, *, dynamic: bool = True, source: Callable | None = None):
    """The datashaded map of ``data``; ``dynamic=False`` gives one fixed-resolution raster.

    Up to ``FAST_ABOVE`` points: HoloViews' ``datashade`` with a hover selector (the hover shows
    file name, label, duration); above: :func:`fast_raster` (no per-pixel hover, 10x faster)."""
    element = points_element(data) if source is None else source
    if dynamic and source is None and data.n > FAST_ABOVE:
        return style(fast_raster(data), data, hover=False)
    if not dynamic:
        import datashader as ds
        from holoviews.operation.datashader import datashade

        return style(datashade(points_element(data), aggregator=ds.count_cat(data.by),
                               color_key=data.color_key, dynamic=False), data)
    return style(shaded(element, data), data)
