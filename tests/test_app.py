"""The served app's logic without a browser: clicks, similar sounds, search, selection, exports,
the session pictures (``/view/<session>/<seq>``). The browser drives the same in test_browser.py."""
from __future__ import annotations

import csv
import gzip
import html
import io
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from klustr_gpu.store import Project
from test_render import XSS_LABEL, XSS_NAME, write_fake_embedding, xss_project  # noqa: F401 (a fixture)


@pytest.fixture(scope="module")
def project(demo_project, tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("app") / "project"
    shutil.copytree(demo_project, dst)
    write_fake_embedding(dst, cluster=True)
    return dst


@pytest.fixture
def app(project):
    from klustr_gpu.render.app import MapApp

    return MapApp.from_project(Project(project))


@pytest.fixture(scope="module")
def featured(demo_project, tmp_path_factory) -> Path:
    """The demo project with real features and a UMAP map: ``klustr embed`` stored its graph."""
    import klustr_gpu as kg

    dst = tmp_path_factory.mktemp("app-featured") / "project"
    shutil.copytree(demo_project, dst)
    kg.compute_features(dst, sets=["mfcc"], progress=False)
    kg.embed(dst, method="umap", features="mfcc", progress=False)
    assert list((dst / "neighbours").glob("mfcc-*.npz"))
    return dst


def radius(app) -> float:
    (x0, x1), _ = app.data.bounds()
    return 0.01 * (x1 - x0)


# -- clicks ----------------------------------------------------------------------------------------

def test_click_plays_nearest_point_and_lists_map_neighbours(app):
    pts = app.data.points
    i = 17
    app.sound.mode = "map"
    assert app.tap(float(pts["x"][i]) + 1e-4, float(pts["y"][i]), radius(app)) == i
    assert app.selected == i
    now = app.sound.now
    assert now["url"] == app.index.url(pts["file_id"][i]) and now["name"] == str(pts["name"][i])
    assert pts["file_id"][i] not in now["url"]                       # never the path-derived id
    assert app.canvas.marker == [pytest.approx(float(pts["x"][i])), pytest.approx(float(pts["y"][i]))]
    d = np.hypot(pts["x"] - pts["x"][i], pts["y"] - pts["y"][i]).to_numpy()
    expected = np.argsort(d, kind="stable")[1:app.k + 1]
    assert [it["url"] for it in app.sound.items] == [app.index.url(f) for f in pts["file_id"].to_numpy()[expected]]
    assert "map" in app.sound.note.lower()


def test_a_click_beside_every_point_says_so_and_clears_the_side_panel(app):
    pts = app.data.points
    app.tap(float(pts["x"][3]), float(pts["y"][3]), radius(app))
    assert app.sound.items
    assert app.tap(150.0, 150.0, radius(app)) is None
    assert app.sound.now == {"message": "No sample there; click on a point."}
    assert app.sound.items == [] and app.canvas.marker == [] and app.selected is None


def test_clicks_find_only_shown_points(app):
    app.set_filter(chosen=["kick"])
    pts = app.data.points
    snare = int(np.flatnonzero(pts["label"].astype(str) == "snare")[0])
    far = app.nearest(float(pts["x"][snare]), float(pts["y"][snare]), 1)[0]
    assert pts["label"][far] == "kick"
    assert app.tap(float(pts["x"][snare]), float(pts["y"][snare]), 1e-6) is None


def test_hover_names_the_point_and_can_play_it(app):
    pts = app.data.points
    i = 40
    app.hover_at(float(pts["x"][i]), float(pts["y"][i]), radius(app))
    assert app.canvas.hover["text"].startswith(str(pts["name"][i])) and app.selected is None
    app.sound.hover_play = True
    app.hover_at(float(pts["x"][i + 1]), float(pts["y"][i + 1]), 1e-6)
    assert app.selected == i + 1
    app.hover_at(200.0, 200.0, radius(app))
    assert app.canvas.hover == {}


def test_listed_sounds_are_picked_and_opened(app):
    app.sound.mode = "map"
    app.play(5)
    first = int(app.listed[0])
    app._on_sound_msg({"type": "pick", "i": 0})                     # the page plays it; the map marks it
    assert app.canvas.marker == [pytest.approx(float(app._x[first])), pytest.approx(float(app._y[first]))]
    app._on_sound_msg({"type": "open", "i": 0})                     # Enter: it becomes the one listed around
    assert app.selected == first and app.sound.now["url"] == app.audio(first)
    for bad in ({"type": "open", "i": 99}, {"type": "open", "i": "0"}, "nonsense", {"type": "pick"}):
        app._on_sound_msg(bad)
    app._on_map_msg({"type": "tap", "x": "not a number", "y": 0, "r": 1})   # logged, ignored
    assert app.selected == first


def test_frame_points_play_from_their_start(project, tmp_path):
    from klustr_gpu.render.app import MapApp

    dst = tmp_path / "p"
    shutil.copytree(project, dst)
    write_fake_embedding(dst, "frames", frames=4)
    app = MapApp.from_project(Project(dst), embedding="frames")
    pts = app.data.points
    i = int(np.flatnonzero(pts["start"].to_numpy() == 0.75)[0])
    app.play(i)
    assert app.sound.now["url"] == app.index.url(pts["file_id"][i]) + "#t=0.750" and app.sound.now["id"] == pts["id"][i]
    assert "#" not in app.sound.now["drag"]                         # a dragged file is the whole file


def test_drag_data_names_the_file_the_server_sends():
    from klustr_gpu.render.app import drag_spec

    assert drag_spec("kick/kick 1.wav", "/audio/abc") == "audio/wav:kick 1.wav:/audio/abc"
    assert drag_spec("a/b.aiff", "/audio/abc#t=1.000") == "audio/wav:b.wav:/audio/abc"      # served as WAV
    assert drag_spec("a/x:y.flac", "/audio/abc") == "audio/flac:x_y.flac:/audio/abc"


def test_app_escapes_names(xss_project):
    from klustr_gpu.render.app import MapApp

    app = MapApp.from_project(Project(xss_project))
    i = int(np.flatnonzero(app.data.points["name"].astype(str) == XSS_NAME)[0])
    app.select_box(-1e9, 1e9, -1e9, 1e9)
    drag = app.table.value.loc[i, "drag"]                            # goes into an HTML attribute
    assert "<" not in drag and '"' not in drag and html.unescape(drag).endswith(app.audio(i))
    app.play(i)
    assert app.sound.now["name"] == XSS_NAME                          # text: the page writes it with textContent
    assert "<img" not in app._title_html() and XSS_LABEL not in app._status_html()


# -- similar sounds -------------------------------------------------------------------------------

def test_similar_sounds_come_from_the_feature_graph_embed_stored(featured):
    from klustr_gpu.render.app import MapApp
    from klustr_gpu.render.similar import SimilarSounds

    proj = Project(featured)
    app = MapApp.from_project(proj)
    app.similar = SimilarSounds(proj, app.data, background=False)
    assert app.similar.status == "ready" and app.similar.source.parent.name == "neighbours"
    graphs = list((featured / "neighbours").glob("*.npz"))
    assert len(graphs) == 1 and app.similar.source == graphs[0]       # found, not recomputed
    with np.load(graphs[0]) as z:
        rows = z["indices"]
    ids = proj.read_embedding()[0]["id"].to_numpy()                   # graph rows: feature-table order
    i = 11
    row = int(np.flatnonzero(ids == app.data.points["id"][i])[0])
    want = [int(np.flatnonzero(app.data.points["id"].to_numpy() == ids[r])[0]) for r in rows[row]][: app.k]
    app.play(i)
    assert list(app.listed) == want
    assert "feature space" in app.sound.note and graphs[0].name in app.sound.note
    app.sound.mode = "map"                                            # the option: 2-D neighbours
    d = np.hypot(app._x - app._x[i], app._y - app._y[i])
    assert list(app.listed) == list(np.argsort(d, kind="stable")[1:app.k + 1])
    app.sound.mode = "features"
    app.set_filter(chosen=[str(app.data.points["label"][i])])          # only shown sounds are listed
    assert all(app.mask[j] for j in app.similar.neighbours(i, 50, app.mask))


def test_a_missing_graph_is_computed_in_the_same_format(featured, tmp_path):
    from klustr_gpu.render.data import load_map
    from klustr_gpu.render.similar import SimilarSounds

    dst = tmp_path / "p"
    shutil.copytree(featured, dst)
    for g in (dst / "neighbours").glob("*.npz"):
        g.unlink()
    proj = Project(dst)
    data = load_map(proj)
    sim = SimilarSounds(proj, data, background=False)
    assert sim.status == "ready" and "computed now" in sim.note
    with np.load(sim.source) as z:
        assert set(z.files) == {"indices", "distances"} and z["indices"].shape == (data.n, 30)
    for g in (dst / "neighbours").glob("*.npz"):
        g.unlink()
    none = SimilarSounds(proj, data, compute_max=10, background=False)   # too big to compute here
    assert none.status == "none" and "too many" in none.note and none.neighbours(0, 5) is None


def test_a_graph_of_the_same_features_is_matched_by_content(featured, tmp_path):
    from klustr_gpu.render.data import load_map
    from klustr_gpu.render.similar import SimilarSounds

    dst = tmp_path / "p"
    shutil.copytree(featured, dst)
    [g] = (dst / "neighbours").glob("*.npz")
    renamed = g.with_name(re.sub(r"-[0-9a-f]{20}-", "-00000000000000000000-", g.name))   # another hash
    g.rename(renamed)
    sim = SimilarSounds(Project(dst), load_map(Project(dst)), background=False)
    assert sim.status == "ready" and sim.source == renamed and "same features" in sim.note


def test_a_map_without_features_uses_map_neighbours_and_says_so(app):
    app.similar.wait(60)
    assert app.similar.status == "none" and "records no feature set" in app.similar.note
    app.sound.mode = "features"
    app.play(3)
    assert len(app.listed) == app.k and app.sound.note.startswith("Nearest on the map")


# -- search and filters ------------------------------------------------------------------------------

def test_search_matches_every_word_in_name_or_folder():
    from klustr_gpu.render.filters import PointFilter

    paths = ["Drums/Kick/808 kick.wav", "drums/snare/tight.wav", "Pads/warm 808.flac", "fx/riser.wav"]
    pts = pd.DataFrame({"path": pd.Categorical(paths), "label": pd.Categorical(["k", "s", "p", "f"])})
    f = PointFilter(pts, "label")
    assert f.text_mask("  ") is None
    assert list(f.text_mask("808")) == [True, False, True, False]
    assert list(f.text_mask("DRUMS 808")) == [True, False, False, False]          # every word, any case
    assert list(f.text_mask("snare")) == [False, True, False, False]              # a folder
    shown, counts = f.apply(["p", "k"], "808")
    assert list(shown) == [True, False, True, False] and list(counts) == [0, 1, 1, 0]  # f k p s: search only
    assert f.category_mask(["nope"]) is None


def test_filters_update_title_facets_and_prune_the_selection(app):
    app.select_box(-20, 20, -20, 20)
    assert len(app.selection) == 210
    app.set_filter(chosen=["kick", "snare"])
    assert app.mask.sum() == 60 and "showing 60 of 210" in app.status.object
    assert "60 of 210 points shown" in app.title.object
    assert len(app.selection) == 60 and app.mask[app.selection].all()           # hidden points left it
    rows = list(csv.DictReader(io.StringIO(app.export_text("csv"))))
    assert len(rows) == 60 and {r["label"] for r in rows} == {"kick", "snare"}
    app.set_filter(text="KICK_0000")
    names = app.data.points["name"][app.mask].astype(str)
    assert len(names) and names.str.lower().str.contains("kick_0000").all()
    counts = {o["name"]: o["count"] for o in app.facets.options}
    assert counts["kick"] == len(names) and counts["snare"] == 0
    app.set_filter(chosen=[], text="")
    assert app.mask is None and "210 points" in app.title.object
    assert len(app.selection) == len(names)                                     # pruned points stay out


def test_typing_searches_without_enter(app):
    app.w_search.value_input = "snare"
    assert app.n_shown() == 30 and app.w_search.value == ""


# -- selection, table and exports ------------------------------------------------------------------------

def test_box_and_lasso_selection_fill_the_table_and_exports(app, tmp_path):
    app.select_box(-20, 20, -20, 0)                                   # lower half
    sel = app.selected_points()
    assert 0 < len(sel) < 210 and (sel["y"] <= 0).all()
    assert f"{len(sel)} selected" in app.status.object
    table = app.table.value
    assert list(table.columns) == ["drag", "name", "label", "duration", "folder"] and len(table) == len(sel)
    assert list(table.index) == list(app.selection)
    m3u = app.export_text("m3u").splitlines()
    assert m3u[0] == "#EXTM3U" and sum(1 for line in m3u if line.startswith("#EXTINF")) == len(sel)
    assert all(Path(line).is_file() for line in m3u if not line.startswith("#"))
    app.select_lasso(np.array([[-20, 0], [20, 0], [20, 20], [-20, 20]]))    # upper half
    sel2 = app.selected_points()
    assert len(sel2) and (sel2["y"] >= 0).all() and len(sel) + len(sel2) == 210
    app.w_folder.value = str(tmp_path / "out")
    app._on_copy()
    assert len(list((tmp_path / "out").iterdir())) == len(sel2) and f"Copied {len(sel2)} files" in app.export_msg.object

    class Click:                                                       # Tabulator's CellClickEvent
        column, row = "name", 2

    app._on_table_click(Click())
    assert app.selected == int(app.table.value.index[2])
    app.clear_selection()
    assert len(app.selection) == 0 and app.table.value.empty and "0 selected" in app.status.object


def test_exporting_nothing_says_so(app, tmp_path):
    from klustr_gpu.render.app import NOTHING_SELECTED

    app.clear_selection()
    for kind in ("csv", "m3u"):
        assert app.export_text(kind) is None
        assert NOTHING_SELECTED.format(what=f"save as {kind.upper()}") in app.export_msg.object
    app.w_folder.value = str(tmp_path / "never")
    app._on_copy()
    assert NOTHING_SELECTED.format(what="copy") in app.export_msg.object and not (tmp_path / "never").exists()


def test_zoom_limits_follow_the_data_extent(app):
    from klustr_gpu.render.app import ZOOM_IN_LIMIT, ZOOM_OUT_LIMIT

    (x0, x1), (y0, y1) = app.data.bounds()
    extent = max(x1 - x0, y1 - y0)
    assert app.canvas.limits == [pytest.approx(extent / ZOOM_IN_LIMIT), pytest.approx(extent * ZOOM_OUT_LIMIT)]
    assert app.canvas.home == [x0, x1, y0, y1]
    assert app.canvas.annotations == []                                # labels: the legend names them


def test_cluster_names_are_written_on_the_map(project):
    from klustr_gpu.render.app import MapApp
    from klustr_gpu.render.data import load_map
    from klustr_gpu.render.security import AudioIndex
    from klustr_gpu.render.static import html_anchors

    data = load_map(Project(project), by="cluster")
    app = MapApp(data, AudioIndex.from_project(Project(project)))
    want = html_anchors(data, *data.bounds())                           # where map.html writes them
    assert want and {a["text"]: [a["x"], a["y"]] for a in app.canvas.annotations} == want


# -- the session's pictures ----------------------------------------------------------------------------------

def test_the_selection_is_drawn_over_the_rest_dimmed(app):
    from klustr_gpu.render.mapview import picture
    from klustr_gpu.render.tiles import Tile

    (x0, x1), (y0, y1) = app.data.bounds()
    tile = Tile((x0, x1), (y0, y1), 300, 300)

    def alpha_at(rgba, i):                                            # the most opaque pixel around point i
        px = int((app._x[i] - x0) / (x1 - x0) * 300)
        py = int((y1 - app._y[i]) / (y1 - y0) * 300)
        return int(rgba[max(py - 1, 0):py + 2, max(px - 1, 0):px + 2, 3].max())

    plain = picture(app.view.layers, tile)
    app.set_filter(chosen=[], text="")
    app.select_box(-20, 20, -20, 0)
    shown = picture(app.view.layers, tile)
    inside, outside = app.selection[0], int(np.flatnonzero(app._y > 1)[0])
    assert alpha_at(shown, inside) >= alpha_at(plain, inside) - 5
    assert alpha_at(shown, outside) < 0.5 * alpha_at(plain, outside)


def unruns(body: bytes, n: int) -> np.ndarray:
    """The page's unpacking of ``mapview.runs`` (mapcanvas.js ``unpack``), in numpy."""
    u = np.frombuffer(body, "<u4")
    k = int(u[0])
    out = np.zeros(n, np.uint32)
    p = 1 + 2 * k
    for start, length in zip(u[1:1 + k], u[1 + k:1 + 2 * k]):
        out[start:start + length] = u[p:p + length]
        p += length
    assert p == len(u)
    return out


def test_runs_hold_every_pixel():
    from klustr_gpu.render.mapview import runs

    rng = np.random.default_rng(0)
    for density in (0.0, 0.01, 0.3, 1.0):
        rgba = (rng.random((37, 53, 4)) * 255).astype(np.uint8)
        rgba[rng.random((37, 53)) >= density] = 0
        body = runs(rgba)
        assert np.array_equal(unruns(body, 37 * 53).view(np.uint8).reshape(37, 53, 4), rgba)
        assert len(body) <= 4 * (1 + 37 * 53 * 2)


@pytest.fixture
def view_server():
    """A tornado server with only the picture route, in a thread; yields (port, registry)."""
    import asyncio

    from tornado.web import Application

    from klustr_gpu.render.mapview import Registry, view_route

    registry = Registry()
    ready, box = threading.Event(), {}

    def run():
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        server = Application([view_route(registry)]).listen(0, "127.0.0.1")
        box.update(port=list(server._sockets.values())[0].getsockname()[1], loop=loop, server=server)
        ready.set()
        loop.run_forever()
        server.stop()
        loop.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    ready.wait(10)
    yield box["port"], registry
    box["loop"].call_soon_threadsafe(box["loop"].stop)
    t.join(10)


def test_the_picture_route_answers_its_session_only(app, view_server):
    from test_serve import http_get

    from klustr_gpu.render.mapview import encode, picture
    from klustr_gpu.render.tiles import Tile

    port, registry = view_server
    registry.add(app.view)
    q = "x0=-10&x1=10&y0=-8&y1=8&w=200&h=160"
    status, headers, body = http_get(port, f"/view/{app.view.name}/1?{q}", headers={"Accept-Encoding": "gzip"})
    assert status == 200 and headers["x-klustr-size"] == "200x160"
    assert "content-encoding" not in headers                            # loopback: the runs as they are
    rgba = unruns(body, 200 * 160).view(np.uint8).reshape(160, 200, 4)
    assert np.array_equal(rgba, picture(app.view.layers, Tile((-10.0, 10.0), (-8.0, 8.0), 200, 160)))
    assert rgba[..., 3].any() and headers["x-klustr-empty"] == "0"
    assert gzip.decompress(encode(rgba, 1)) == body                     # what another machine gets
    status, headers, body = http_get(port, f"/view/{app.view.name}/2?x0=1000&x1=1001&y0=1000&y1=1001&w=50&h=50")
    assert status == 200 and headers["x-klustr-empty"] == "1"
    assert http_get(port, f"/view/{app.view.name}/1?{q}")[0] == 204      # overtaken by request 2
    assert http_get(port, f"/view/{'0' * 32}/3?{q}")[0] == 404           # another (or no) session
    for bad in ("x0=1&x1=0&y0=0&y1=1&w=10&h=10", "x0=0&x1=1&y0=0&y1=1&w=0&h=10", "w=1", "x0=nan&x1=1&y0=0&y1=1&w=1&h=1"):
        status, _, body = http_get(port, f"/view/{app.view.name}/9?{bad}")
        assert status == 400 and b"Traceback" not in body
    assert http_get(port, f"/view/{app.view.name}/../../etc/passwd")[0] == 404


def test_the_raster_draws_static_shade_pixel_for_pixel(project):
    from klustr_gpu.render.data import load_map
    from klustr_gpu.render.raster import Raster
    from klustr_gpu.render.static import shade

    data = load_map(Project(project))
    raster = Raster.from_frame(data.points, by=data.by, color_key=data.color_key)
    (x0, x1), (y0, y1) = data.bounds()
    kick = (data.points["label"] == "kick").to_numpy()
    for (xr, yr, w, h) in [((x0, x1), (y0, y1), 400, 300), ((-3.0, 1.5), (-2.0, 4.0), 257, 199),
                           ((x0, x1), (y0, y1), 64, 64), ((100.0, 101.0), (0.0, 1.0), 50, 40)]:
        for pts, r in ((data.points, raster), (data.points[kick], raster.subset(kick))):
            want = np.asarray(shade(pts, by=data.by, color_key=data.color_key, width=w, height=h, x_range=xr,
                                    y_range=yr, max_px=4).data).view(np.uint8).reshape(h, w, 4)[::-1]
            assert np.array_equal(r.picture(xr, yr, w, h), want)
    assert len(raster.subset(kick)) == kick.sum() and sorted(raster.subset(kick).order) == list(np.flatnonzero(kick))
