"""map.png, map.html, the HoloViews plot and the app's logic (no server, no browser)."""
from __future__ import annotations

import csv
import html
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from klustr_gpu.errors import UsageError
from klustr_gpu.store import Project

XSS_LABEL = "</script><script>alert('label')</script>"
XSS_NAME = "<img src=x onerror=alert(1)>.wav"


def write_fake_embedding(proj: Path, name: str = "fake", *, frames: int = 0, seed: int = 0,
                         cluster: bool = False) -> pd.DataFrame:
    """A fake 2-D embedding: one Gaussian blob per label on a circle (so classes form groups).
    ``frames`` > 0: that many frame points per file, ids ``file_id:i``, start ``i * 0.25`` s."""
    p = Project(proj)
    man = p.read_manifest()
    man = man[man["status"] == "ok"].reset_index(drop=True)
    rng = np.random.default_rng(seed)
    labels = sorted(man["label"].dropna().unique())
    angle = {lab: 2 * np.pi * i / max(1, len(labels)) for i, lab in enumerate(labels)}
    reps = max(1, frames)
    fid = np.repeat(man["id"].to_numpy(), reps)
    lab = np.repeat(man["label"].to_numpy(), reps)
    cx = np.array([5 * np.cos(angle[v]) if v in angle else 0.0 for v in lab])
    cy = np.array([5 * np.sin(angle[v]) if v in angle else 0.0 for v in lab])
    idx = np.tile(np.arange(reps), len(man))
    df = pd.DataFrame({
        "id": [f"{f}:{i}" for f, i in zip(fid, idx)] if frames else fid,
        "file_id": fid,
        "start": idx * 0.25 if frames else np.zeros(len(fid)),
        "x": cx + rng.normal(0, 0.8, len(fid)),
        "y": cy + rng.normal(0, 0.8, len(fid)),
        "label": lab,
    })
    if cluster:
        df["cluster"] = [list(angle).index(v) if v in angle else -1 for v in lab]
    p.write_embedding(name, df, {"method": "fake", "seed": seed})
    return df


@pytest.fixture(scope="module")
def project(demo_project, tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("render") / "project"
    shutil.copytree(demo_project, dst)
    write_fake_embedding(dst, cluster=True)
    return dst


@pytest.fixture(scope="module")
def xss_project(demo_library, tmp_path_factory) -> Path:
    """A small library with a file name and a label that are HTML/script injections."""
    from klustr_gpu import scan

    base = tmp_path_factory.mktemp("xss")
    lib = base / "library"
    lib.mkdir()
    srcs = sorted(p for p in demo_library.rglob("*.wav"))[:12]
    rows = []
    for i, src in enumerate(srcs):
        name = XSS_NAME if i == 0 else src.name
        shutil.copy(src, lib / name)
        rows.append((name, XSS_LABEL if i < 4 else src.parent.name))
    with open(lib / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label"])
        w.writerows(rows)
    proj = base / "project"
    scan(lib, proj, labels=lib / "labels.csv", progress=False)
    write_fake_embedding(proj)
    return proj


# -- data ------------------------------------------------------------------------------------

def test_load_map_joins_manifest_and_colours(project):
    from klustr_gpu.render.data import GREY, UNLABELLED, load_map

    data = load_map(project)
    assert data.n == 210 and data.by == "label"
    assert list(data.color_key) == sorted(data.color_key)           # 7 classes, no unlabelled
    assert len(set(data.color_key.values())) == 7 and GREY not in data.color_key.values()
    assert set(data.points.columns) >= {"x", "y", "id", "file_id", "start", "name", "label", "duration"}
    assert data.points["name"].astype(str).str.endswith((".wav", ".flac", ".aiff", ".ogg")).all()
    assert UNLABELLED not in data.color_key


def test_categories_unlabelled_grey_and_natural_order():
    from klustr_gpu.render.data import GREY, UNLABELLED, categories

    cat, key = categories(pd.Series(["10", None, "2", "", "1", np.nan]))
    assert list(cat.categories) == ["1", "2", "10", UNLABELLED]
    assert key[UNLABELLED] == GREY and list(cat).count(UNLABELLED) == 3


def test_load_map_by_cluster_and_errors(project, tmp_path):
    from klustr_gpu.render.data import load_map

    data = load_map(project, by="cluster")
    # clusters 0..6 are the demo classes in order; named by the words their paths share
    classes = sorted(Project(project).read_manifest()["label"].unique())
    assert list(data.color_key) == classes and len(classes) == 7
    assert list(data.points["cluster"].cat.categories) == classes
    with pytest.raises(UsageError, match="choose one of"):
        load_map(project, by="colour")
    with pytest.raises(UsageError, match="no embedding 'nope'"):
        load_map(project, embedding="nope")
    with pytest.raises(UsageError, match="no manifest|no project"):
        load_map(tmp_path / "missing")


def test_auto_colours_an_unlabelled_library_by_cluster(project, tmp_path):
    """`auto` (the default): by label when the library has labels; an unlabelled one (frame
    mode, a plain folder) by the embedding's k-means clusters, when it has them."""
    from klustr_gpu.render.data import load_map

    assert load_map(project, by="auto").by == "label"
    dst = tmp_path / "unlabelled"
    shutil.copytree(project, dst)
    p = Project(dst)
    man = p.read_manifest()
    man["label"] = None
    p.write_manifest(man, p.manifest_metadata())
    emb, meta = p.read_embedding("fake")
    p.write_embedding("fake", emb.assign(label=None), meta)
    data = load_map(dst, embedding="fake", by="auto")
    classes = sorted(Project(project).read_manifest()["label"].unique())
    assert data.by == "cluster" and list(data.color_key) == classes     # named from folder and file names
    p.write_embedding("nocl", emb.assign(label=None).drop(columns="cluster"), meta)
    data = load_map(dst, embedding="nocl", by="auto")
    assert data.by == "label" and list(data.color_key) == ["(unlabelled)"]


def test_points_of_skipped_files_are_dropped(project, tmp_path):
    from klustr_gpu.render.data import load_map

    dst = tmp_path / "p"
    shutil.copytree(project, dst)
    p = Project(dst)
    victim = p.read_manifest()["id"].iloc[0]
    p.mark_skipped({victim: "broken"})
    data = load_map(dst)
    assert data.n == 209 and victim not in set(data.points["file_id"])


# -- map.png -----------------------------------------------------------------------------------

def _rgb(hexcol: str) -> tuple[int, int, int]:
    return tuple(int(hexcol[i:i + 2], 16) for i in (1, 3, 5))


def test_render_png_shows_every_class_as_a_group(project):
    from PIL import Image

    from klustr_gpu import render_map
    from klustr_gpu.render.data import load_map

    out = render_map(project, width=600, height=450, progress=False)
    assert out.png == project / "map.png" and out.html == project / "map.html"
    assert out.n_points == 210 and out.seconds > 0
    img = np.asarray(Image.open(out.png).convert("RGB")).astype(int)
    assert img.shape == (450, 600, 3)
    key = load_map(project).color_key
    legend_x = 600 - 150 - 1                                    # the legend strip is >= 150 px wide
    centroids = {}
    for name, colour in key.items():
        dist = np.abs(img[:, :legend_x] - np.array(_rgb(colour))).sum(axis=2)
        ys, xs = np.nonzero(dist < 40)                          # pixels of (nearly) this colour
        assert len(xs) > 20, f"class {name} not drawn"
        centroids[name] = (xs.mean(), ys.mean())
    pts = np.array(list(centroids.values()))
    gaps = np.linalg.norm(pts[:, None] - pts[None], axis=2) + np.eye(len(pts)) * 1e9
    assert gaps.min() > 40                                      # each class is its own group


def test_render_html_escapes_names(xss_project):
    from klustr_gpu import render_map

    out = render_map(xss_project, width=300, height=200, progress=False)
    page = out.html.read_text(encoding="utf-8")
    assert "<script>alert" not in page and "<img src=x" not in page
    assert html.escape(XSS_LABEL) in page                       # legend: escaped text
    data = json.loads(re.search(r'<script type="application/json" id="data">(.*?)</script>', page, re.S).group(1))
    assert XSS_NAME in data["files"]["name"] and XSS_LABEL in data["files"]["label"]
    url = data["files"]["url"][data["files"]["name"].index(XSS_NAME)]
    assert "<" not in url and url.endswith("%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E.wav")
    lib = Project(xss_project).library_root
    assert (xss_project / __import__("urllib.parse").parse.unquote(url)).resolve() == (lib / XSS_NAME).resolve()


def test_render_html_points_and_raster_modes(project, tmp_path):
    from klustr_gpu.config import Config
    from klustr_gpu import render_map

    dst = tmp_path / "p"
    shutil.copytree(project, dst)
    write_fake_embedding(dst, "frames", frames=3)
    out = render_map(dst, embedding="frames", width=300, height=200, progress=False)
    page = out.html.read_text(encoding="utf-8")
    data = json.loads(re.search(r'id="data">(.*?)</script>', page, re.S).group(1))
    assert data["n"] == 630 and len(data["x"]) == 630 and len(data["files"]["name"]) == 210
    assert sorted(set(data["t"])) == [0.0, 0.25, 0.5]
    assert "http" not in "".join(data["files"]["url"])           # relative paths only
    Project(dst).write_config(Config().updated({"render.html_max_points": 100}))
    out = render_map(dst, embedding="frames", width=300, height=200, progress=False)
    page = out.html.read_text(encoding="utf-8")
    assert 'id="data"' not in page and "data:image/png;base64," in page and "630 points" in page
    assert render_map(dst, html=False, width=300, height=200, progress=False).html is None


def test_cluster_names_are_written_on_the_map_and_in_the_legend(project, tmp_path):
    """Coloured by cluster, map.png writes each cluster's name at its group, on a white halo,
    through the one rendering path (the same aggregate as the picture); the legend lists the
    names; map.html carries the same anchors for its script to draw."""
    from PIL import Image

    from klustr_gpu import render_map
    from klustr_gpu.render.data import load_map
    from klustr_gpu.render.static import aggregate, label_anchors

    data = load_map(project, by="cluster")
    out = render_map(project, by="cluster", width=700, height=500, progress=False)
    img = np.asarray(Image.open(out.png).convert("RGB")).astype(int)
    plain = tmp_path / "plain.png"
    from klustr_gpu.render.static import render_png
    render_png(load_map(project, by="label"), plain, width=700, height=500)   # the same groups, no names
    base = np.asarray(Image.open(plain).convert("RGB")).astype(int)
    dark = (img.sum(axis=2) < 120) & (base.sum(axis=2) >= 120)                # text only on the named map
    payload = json.loads(re.search(r'id="data">(.*?)</script>', out.html.read_text(), re.S).group(1))
    anchors = payload["anchors"]
    assert sorted(anchors) == sorted(data.color_key) and payload["by"] == "cluster"
    (bx0, bx1), (by0, by1) = data.bounds()
    for name, (ax, ay) in anchors.items():
        pts = data.points[data.points["cluster"] == name]
        assert abs(ax - pts["x"].median()) < 2.5 and abs(ay - pts["y"].median()) < 2.5, name   # on its group
    map_w = int(np.flatnonzero((img == 221).all(axis=2).all(axis=0))[0])      # the legend's separator line
    (mx0, mx1), (my0, my1) = data.bounds(aspect=map_w / img.shape[0])
    png_anchors = label_anchors(aggregate(data.points, by="cluster", width=map_w, height=img.shape[0],
                                          x_range=(mx0, mx1), y_range=(my0, my1)))
    assert sorted(png_anchors) == sorted(anchors)
    for name, (ax, ay) in png_anchors.items():                                # dark text at every anchor
        px = int((ax - mx0) / (mx1 - mx0) * map_w)
        py = int((my1 - ay) / (my1 - my0) * img.shape[0])
        assert dark[max(0, py - 15):py + 15, max(0, px - 40):px + 40].sum() > 15, name
    agg = aggregate(data.points, by="cluster", width=300, height=300, x_range=(bx0, bx1), y_range=(by0, by1))
    again = label_anchors(agg)
    assert again == label_anchors(agg) and sorted(again) == sorted(anchors)    # deterministic
    labelled = json.loads(re.search(r'id="data">(.*?)</script>', render_map(project, by="label", width=300, height=200,
                                                                          progress=False).html.read_text(), re.S).group(1))
    assert labelled["anchors"] == {}                                          # labels: legend only, as before


def test_html_payload_marks_what_a_browser_cannot_play(project):
    from klustr_gpu.render.data import load_map
    from klustr_gpu.render.static import html_payload

    data = load_map(project)
    payload = html_payload(data, Project(project))
    fmts = payload["files"]["fmt"]
    names = payload["files"]["name"]
    assert len(fmts) == len(names) and {"WAV", "FLAC", "OGG", "AIFF"} <= set(fmts)
    assert all(n.upper().endswith("." + f) for n, f in zip(names, fmts))
    assert payload["types"]["AIFF"] == "audio/aiff" and payload["types"]["WAV"] == "audio/wav"
    assert payload["converted"] == ["AIF", "AIFF"]


def test_render_rejects_tiny_sizes(project):
    from klustr_gpu import render_map

    with pytest.raises(UsageError, match="too small"):
        render_map(project, width=10, height=10, progress=False)


# -- the HoloViews plot ------------------------------------------------------------------------

def test_plot_is_a_datashaded_dynamic_map(project):
    import klustr_gpu
    import klustr_gpu.render.app  # noqa: F401  (importing submodules must not shadow the API)

    import holoviews as hv
    import holoviews.plotting.bokeh  # noqa: F401
    from bokeh.models import HoverTool

    from klustr_gpu import plot

    assert callable(klustr_gpu.plot) and callable(klustr_gpu.render_map)
    obj = plot(project)
    assert isinstance(obj, hv.DynamicMap)
    fig = hv.render(obj, backend="bokeh")
    assert any(type(r.glyph).__name__ == "ImageRGBA" for r in fig.renderers)
    assert any(isinstance(t, HoverTool) for t in fig.tools)
    rgb = obj[()]                                               # one rasterisation of the full range
    assert isinstance(rgb, hv.RGB) and {"name", "label", "duration"} <= set(rgb.data.data_vars)


# -- the app's logic: tests/test_app.py ------------------------------------------------------

def test_copy_is_confined_when_serving_to_the_network(project, tmp_path):
    from klustr_gpu.render.export import copy_selection
    from klustr_gpu.render.security import AudioIndex

    index = AudioIndex.from_project(Project(project))
    pts = pd.DataFrame({"file_id": [next(iter(index._paths))]})
    with pytest.raises(UsageError, match="must be inside"):
        copy_selection(pts, index, tmp_path / "elsewhere", allowed_root=tmp_path / "exports")
    with pytest.raises(UsageError, match="must be inside"):
        copy_selection(pts, index, "../../escape", allowed_root=tmp_path / "exports")
    n, folder = copy_selection(pts, index, "mine", allowed_root=tmp_path / "exports")
    assert n == 1 and folder == (tmp_path / "exports" / "mine").resolve()


def test_plot_of_many_points_uses_the_fast_raster(project, monkeypatch):
    import holoviews as hv

    import klustr_gpu.render.views as views
    from klustr_gpu import plot

    monkeypatch.setattr(views, "FAST_ABOVE", 100)
    obj = plot(project)
    rgb = obj[()]
    assert isinstance(rgb, hv.RGB) and rgb.dimension_values(2, flat=False).shape == (680, 900)
    fig = hv.render(obj, backend="bokeh")
    assert any(type(r.glyph).__name__ == "ImageRGBA" for r in fig.renderers)


def test_make_app_and_cluster_colouring(project):
    import panel as pn
    from PIL import Image

    from klustr_gpu import make_app, render_map
    from klustr_gpu.render.data import load_map

    assert isinstance(make_app(project), pn.Row)
    assert isinstance(make_app(project, by="cluster", neighbours=3), pn.Row)
    with pytest.raises(UsageError, match="unknown by .colour."):
        make_app(project, by="colour")
    out = render_map(project, by="cluster", html=False, width=400, height=300, progress=False)
    img = np.asarray(Image.open(out.png).convert("RGB")).astype(int)
    for colour in load_map(project, by="cluster").color_key.values():
        assert (np.abs(img - np.array(_rgb(colour))).sum(axis=2) < 40).sum() > 10


@pytest.mark.parametrize("n, max_px", [(40, 6), (400, 4), (4000, 3), (60000, 2), (4000, 0)])
def test_dynspread_equals_datashaders_pixel_for_pixel(n, max_px):
    """render.spread.dynspread (cached on disk) draws what datashader's dynspread draws, on
    shaded maps from sparse to dense (every spreading radius taken), overlapping colours and
    alphas included; datashader is still what aggregates, so only the spreading is ours."""
    import datashader as ds
    import datashader.transfer_functions as tf

    from klustr_gpu.render.spread import dynspread, spread_radius
    from klustr_gpu.render.static import shade_categorical

    rng = np.random.default_rng(n)
    pts = pd.DataFrame({"x": rng.normal(size=n), "y": rng.normal(size=n) * 0.6,
                        "c": pd.Categorical(rng.choice(["a", "b", "c"], size=n))})
    agg = ds.Canvas(plot_width=300, plot_height=200).points(pts, "x", "y", ds.count_cat("c"))
    img = shade_categorical(agg, {"a": "#1f77b4", "b": "#d62728", "c": "#2ca02c"})
    radii = set()
    for threshold in (0.3, 0.5, 0.9):
        ours = dynspread(img.data, threshold=threshold, max_px=max_px)
        theirs = tf.dynspread(img, threshold=threshold, max_px=max_px).data
        np.testing.assert_array_equal(ours, theirs)
        radii.add(spread_radius(np.asarray(img.data), threshold=threshold, max_px=max_px))
    assert max(radii) <= max_px
    if n <= 400 and max_px:
        assert max(radii) >= 1                   # sparse maps are spread, so spreading is compared
