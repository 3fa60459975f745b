"""Rendering speed: first picture and re-rasterisation at 1M and 10M points; map.png vs matplotlib.

    .venv/bin/python benchmarks/render.py [--sizes 1000000,10000000] [--quick] [--repeat 5]

Points: ``n`` float32 (x, y) in 12 Gaussian blobs with a categorical label, in memory.

* ``first``: the first full-range picture in this process (datashader Canvas.points with
  count_cat, eq_hist shading, dynspread) at 1200x900: includes numba's compilation for the first
  size, which is what a user waits for after `klustr serve` starts.
* ``zoom``: re-rasterisation of a zoomed range (a quarter of the width and height, moving each
  repeat) at the app's plot size 980x850: the work done on every zoom/pan; median of ``--repeat``.
* ``app callback``: ``mapview.picture`` + ``encode``, what the served app runs on every zoom/pan
  (the :class:`Raster` pass: aggregate and mix, equalised alpha, spread; gzip the RGBA rows, as
  for a browser on another machine); the server then sends them to the browser.
* ``hv``: the same through HoloViews' operations (datashade with the hover selector,
  which also gathers each pixel's point for the hover, then dynspread), first the full range
  then the zoomed ones (median). The app's server adds the transfer to the browser.
* ``png``: ``map.png`` of 1M points (klustr_gpu.render.static.render_png: shade + legend + PNG)
  against matplotlib's ``scatter`` of the same points, coloured by label, same pixel size, saved
  as PNG (Agg). Goal: >= 20x faster.

Writes ``benchmarks/out/render.json`` and prints a markdown table on stdout.
"""
from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from klustr_gpu.render.data import MapData, categories  # noqa: E402
from klustr_gpu.render.static import render_png, shade  # noqa: E402

W, H = 1200, 900           # map.png / first picture
APP_W, APP_H = 980, 850    # the app's plot frame


def make_points(n: int, seed: int = 0, k: int = 12) -> MapData:
    rng = np.random.default_rng(seed)
    lab = rng.integers(0, k, n)
    centres = rng.uniform(-20, 20, (k, 2)).astype(np.float32)
    xy = centres[lab] + rng.standard_normal((n, 2), dtype=np.float32) * rng.uniform(0.5, 3, k).astype(np.float32)[lab, None]
    names = np.array([f"class{i:02d}" for i in range(k)], dtype=object)
    cat, key = categories(pd.Series(names[lab]))
    df = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "label": cat})
    return MapData(points=df, by="label", color_key=key, embedding=f"bench{n}")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def time_first(data: MapData) -> float:
    x_range, y_range = data.bounds(aspect=W / H)
    t = time.perf_counter()
    img = shade(data.points, by="label", color_key=data.color_key, width=W, height=H,
                x_range=x_range, y_range=y_range, max_px=1)
    img.to_pil()
    return time.perf_counter() - t


def zoom_ranges(data: MapData, repeat: int):
    (x0, x1), (y0, y1) = data.bounds()
    w, h = (x1 - x0) / 4, (y1 - y0) / 4
    for i in range(repeat):
        cx, cy = x0 + (x1 - x0) * (0.35 + 0.06 * i), y0 + (y1 - y0) * (0.4 + 0.04 * i)
        yield (cx - w / 2, cx + w / 2), (cy - h / 2, cy + h / 2)


def time_zoom(data: MapData, repeat: int) -> list[float]:
    out = []
    for xr, yr in zoom_ranges(data, repeat):
        t = time.perf_counter()
        shade(data.points, by="label", color_key=data.color_key, width=APP_W, height=APP_H,
              x_range=xr, y_range=yr, max_px=4)
        out.append(time.perf_counter() - t)
    return out


def time_app(data: MapData, repeat: int) -> tuple[float, list[float]]:
    """The app's HoloViews operations (datashade with the hover selector, then dynspread) on an
    ``hv.Points`` of all points, at explicit ranges: first the full range, then zoomed ranges."""
    import datashader as ds
    import holoviews as hv
    from holoviews.operation.datashader import datashade, dynspread

    pts = hv.Points(data.points, kdims=["x", "y"], vdims=["label"])

    def picture(xr, yr):
        rgb = datashade(pts, aggregator=ds.count_cat("label"), color_key=data.color_key, cnorm="eq_hist",
                        selector=ds.first("x"), width=APP_W, height=APP_H, x_range=xr, y_range=yr,
                        dynamic=False)
        return dynspread(rgb, max_px=4, threshold=0.5)

    t = time.perf_counter()
    picture(*data.bounds())
    first = time.perf_counter() - t
    lat = []
    for xr, yr in zoom_ranges(data, repeat):
        t = time.perf_counter()
        picture(xr, yr)
        lat.append(time.perf_counter() - t)
    return first, lat


def time_app_raster(data: MapData, repeat: int) -> tuple[float, list[float]]:
    """The served app's picture of a view (``mapview.picture`` + ``mapview.encode``: datashader
    aggregate, fast shading, dynspread, raw RGBA gzipped for ``/view/<session>/<seq>``) at the
    full range, then at the zoomed ranges."""
    from klustr_gpu.render.mapview import Layers, base_raster, encode, picture
    from klustr_gpu.render.tiles import Tile

    def one(xr, yr):
        encode(picture(Layers(base_raster(data)), Tile(tuple(xr), tuple(yr), APP_W, APP_H)))

    t = time.perf_counter()
    one(*data.bounds())                       # includes building the map's Raster (a grid sort)
    first = time.perf_counter() - t
    lat = []
    for xr, yr in zoom_ranges(data, repeat):
        t = time.perf_counter()
        one(xr, yr)
        lat.append(time.perf_counter() - t)
    return first, lat


def time_png(data: MapData, tmp: Path) -> float:
    t = time.perf_counter()
    render_png(data, tmp / "map.png", width=W, height=H)
    return time.perf_counter() - t


def time_matplotlib(data: MapData, tmp: Path) -> float:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = data.points
    colours = np.array([data.color_key[c] for c in pts["label"].cat.categories], dtype=object)
    t = time.perf_counter()
    fig = plt.figure(figsize=(W / 100, H / 100), dpi=100)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.scatter(pts["x"].to_numpy(), pts["y"].to_numpy(), s=1, c=colours[pts["label"].cat.codes.to_numpy()],
               linewidths=0)
    ax.set_axis_off()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    (tmp / "matplotlib.png").write_bytes(buf.getvalue())
    return time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000000,10000000")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--png-size", type=int, default=1_000_000)
    ap.add_argument("--no-hv", action="store_true", help="skip the HoloViews datashade+selector timings")
    ap.add_argument("--quick", action="store_true", help="sizes 100k,1M and a 200k-point PNG")
    args = ap.parse_args(argv)
    sizes = [100_000, 1_000_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    png_n = 200_000 if args.quick else args.png_size
    results = {"sizes": {}, "png": {}, "plot": [APP_W, APP_H], "picture": [W, H]}
    for n in sizes:
        _log(f"render bench: {n:,} points")
        data = make_points(n)
        first = time_first(data)
        zoom = time_zoom(data, args.repeat)
        r = {"first_s": round(first, 4), "zoom_median_s": round(statistics.median(zoom), 4),
             "zoom_max_s": round(max(zoom), 4)}
        app_first, app_zoom = time_app_raster(data, args.repeat)
        r.update(app_first_s=round(app_first, 4), app_zoom_median_s=round(statistics.median(app_zoom), 4))
        if not args.no_hv:
            hv_first, hv_zoom = time_app(data, args.repeat)
            r.update(hv_first_s=round(hv_first, 4), hv_zoom_median_s=round(statistics.median(hv_zoom), 4))
        results["sizes"][str(n)] = r
        _log(f"  {r}")
        del data
    _log(f"render bench: map.png vs matplotlib at {png_n:,} points")
    data = make_points(png_n, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        time_png(data, tmp)                               # warm (numba compiled above anyway)
        ours = min(time_png(data, tmp) for _ in range(3))
        mpl = time_matplotlib(data, tmp)
    results["png"] = {"n": png_n, "klustr_s": round(ours, 4), "matplotlib_s": round(mpl, 4),
                      "speedup": round(mpl / ours, 1)}
    out = REPO / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "render.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    return 0


def table(results: dict) -> str:
    lines = ["| points | first picture (s) | zoom re-rasterise, median (s) | app callback first (s) | "
             "app callback zoom, median (s) | HoloViews datashade+selector zoom, median (s) |",
             "|---:|---:|---:|---:|---:|---:|"]
    nan = float("nan")
    for n, r in results["sizes"].items():
        lines.append(f"| {int(n):,} | {r['first_s']:.3f} | {r['zoom_median_s']:.3f} | {r['app_first_s']:.3f} | "
                     f"{r['app_zoom_median_s']:.3f} | {r.get('hv_zoom_median_s', nan):.3f} |")
    p = results["png"]
    lines += ["", f"Static map.png of {p['n']:,} points ({results['picture'][0]}x{results['picture'][1]}): "
              f"klustr_gpu {p['klustr_s']:.3f} s vs matplotlib scatter {p['matplotlib_s']:.3f} s: "
              f"**{p['speedup']}x** faster (goal >= 20x). Re-rasterisation goal: < 0.5 s at 10M points "
              f"(plot {results['plot'][0]}x{results['plot'][1]}). \"first picture\" includes numba compilation "
              f"for the first size only. The app uses its own callback (datashader aggregation + compiled "
              f"shading); HoloViews' datashade with the hover selector (used by `plot()` in notebooks) is "
              f"shown for comparison."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
