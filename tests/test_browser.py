"""A real headless Chromium drives the served app and the standalone map.html.

Needs Debian's chromium at /usr/bin/chromium (``.ci/run`` installs it); skipped locally without
it, a failure in CI (CI=true). Screenshots go to ``test-artifacts/``. The served app's map is a
canvas in a shadow root (Playwright's CSS locators pierce it); ``.klustr-map`` carries the view
(``data-view``: x0,x1,y0,y1), the number of the picture drawn (``data-drawn``), its size
(``data-image``) and whether it is drawn 1:1 (``data-sharp``).
"""
from __future__ import annotations

import csv
import os
import shutil
import time
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest

from klustr_gpu.store import Project
from test_render import XSS_LABEL, XSS_NAME, write_fake_embedding
from test_serve import audio_path, running_server

pytestmark = pytest.mark.browser

CHROMIUM = Path(os.environ.get("KLUSTR_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--autoplay-policy=no-user-gesture-required"]
VIEWPORT = {"width": 1400, "height": 900}


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} missing; .ci/run installs Debian's chromium")
        pytest.skip(f"no chromium at {CHROMIUM}")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True, timeout=60_000)
        try:
            yield b
        finally:
            b.close()


def _wait(fn, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def first_isolated(px, py, candidates, min_px: float) -> int:
    """The first of ``candidates`` whose nearest other point is >= min_px away (in pixels)."""
    for i in candidates:
        d = np.hypot(px - px[i], py - py[i])
        d[i] = np.inf
        if d.min() >= min_px:
            return int(i)
    pytest.fail("no isolated point in view")


def _pick_isolated(x, y, visible, to_px, min_px: float = 18.0) -> int:
    """A visible point near the frame's centre whose nearest neighbour is >= min_px away."""
    px, py = to_px(x, y)
    cand = np.flatnonzero(visible)
    order = cand[np.argsort(np.hypot(px[cand] - np.median(px[cand]), py[cand] - np.median(py[cand])))]
    return first_isolated(px, py, order, min_px)


@pytest.fixture(scope="module")
def project(demo_library, tmp_path_factory) -> Path:
    """The demo library with one file named like an HTML injection, the 'clap' class relabelled
    as a script injection, and a fake embedding that puts the injected file alone in the middle."""
    from klustr_gpu import scan

    base = tmp_path_factory.mktemp("browser")
    lib = base / "library"
    shutil.copytree(demo_library, lib)
    rows = (lib / "labels.csv").read_text().splitlines()
    victim = next(r.split(",")[0] for r in rows[1:] if r.endswith(",snare") and r.split(",")[0].endswith(".wav"))
    (lib / victim).rename(lib / "snare" / XSS_NAME)
    fixed = [rows[0]] + [
        (f"snare/{XSS_NAME}," + r.split(",", 1)[1]) if r.split(",")[0] == victim
        else (r.split(",")[0] + "," + XSS_LABEL) if r.endswith(",clap") else r
        for r in rows[1:]]
    with open(lib / "labels.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([line.split(",", 1) for line in fixed])
    proj = base / "project"
    scan(lib, proj, labels=lib / "labels.csv", progress=False)
    df = write_fake_embedding(proj, seed=3)
    man = Project(proj).read_manifest().set_index("id")
    hit = (df["file_id"].map(man["path"]) == f"snare/{XSS_NAME}").to_numpy()
    assert hit.sum() == 1
    df.loc[hit, ["x", "y"]] = 0.0                              # alone in the middle of the ring
    Project(proj).write_embedding("fake", df, {"method": "fake"})
    return proj


@pytest.fixture(scope="module")
def served(project, tmp_path_factory):
    with running_server(project, tmp_path_factory.mktemp("served") / "server.log") as port:
        yield port


@pytest.fixture(scope="module")
def points(project):
    """The map's points as the app holds them: x, y, file_id, name, label, path."""
    emb, _ = Project(project).read_embedding()
    man = Project(project).read_manifest().set_index("id")
    emb["path"] = emb["file_id"].map(man["path"])
    emb["name"] = emb["path"].map(os.path.basename)
    return emb


class MapPage:
    """A page of the served app, with the map's data <-> page pixel transform."""

    def __init__(self, browser, port: int, *, dpr: float = 1.0, wait_picture: bool = True):
        self.port = port
        self.page = browser.new_page(viewport=VIEWPORT, device_scale_factor=dpr, accept_downloads=True)
        self.page.set_default_timeout(60_000)
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(f"http://127.0.0.1:{port}/", wait_until="load")
        self.map = self.page.locator(".klustr-map")
        _wait(lambda: self.map.count() and self.map.get_attribute("data-view"), 120, "the map")
        if wait_picture:
            _wait(lambda: self.map.get_attribute("data-drawn"), 60, "the first picture")

    def view(self) -> list[float]:
        return [float(v) for v in self.map.get_attribute("data-view").split(",")]

    def drawn(self) -> int:
        return int(self.map.get_attribute("data-drawn") or 0)

    def to_px(self, x, y):
        box, (x0, x1, y0, y1) = self.map.bounding_box(), self.view()
        return (box["x"] + (np.asarray(x) - x0) / (x1 - x0) * box["width"],
                box["y"] + (y1 - np.asarray(y)) / (y1 - y0) * box["height"])

    def inside(self, x, y, margin: float = 30) -> np.ndarray:
        box = self.map.bounding_box()
        px, py = self.to_px(x, y)
        return ((px > box["x"] + margin) & (px < box["x"] + box["width"] - margin)
                & (py > box["y"] + 60) & (py < box["y"] + box["height"] - margin))

    def sharp_after(self, drawn: int, timeout: float = 30) -> None:
        _wait(lambda: self.drawn() > drawn and self.map.get_attribute("data-sharp") == "1", timeout,
              "the sharp picture")

    def click(self, px: float, py: float) -> None:
        self.page.mouse.move(float(px), float(py))
        self.page.mouse.down()
        self.page.mouse.up()

    def src(self) -> str | None:
        return self.page.locator("audio#klustr-player").get_attribute("src")

    def status(self) -> str:
        return self.page.locator(".klustr-status").text_content()

    def pixel(self, px: float, py: float) -> list[int]:
        """The map picture's RGBA at page position (px, py) (the canvas's own pixels)."""
        box = self.map.bounding_box()
        return self.page.locator("canvas.klustr-pic").evaluate(
            "(c, [x, y]) => Array.from(c.getContext('2d').getImageData(Math.round(x * c.width / c.clientWidth),"
            " Math.round(y * c.height / c.clientHeight), 1, 1).data)", [float(px - box["x"]), float(py - box["y"])])

    def play_isolated(self, points, min_px: float = 14) -> int:
        """Click a shown point with no other within ``min_px``; returns its index once it plays."""
        x, y = points["x"].to_numpy(), points["y"].to_numpy()
        i = _pick_isolated(x, y, self.inside(x, y), self.to_px, min_px=min_px)
        px, py = self.to_px(x, y)
        self.click(px[i], py[i])
        _wait(lambda: self.src() == audio_path(points["file_id"].iloc[i]), 10, "the click to play")
        return i

    def close(self) -> None:
        assert not self.dialogs and not self.page.evaluate("() => window.__xss || null")
        assert not self.errors, self.errors
        self.page.close()


def test_served_map_zoom_hover_click_plays_audio(browser, served, points, project):
    ARTIFACTS.mkdir(exist_ok=True)
    port = served
    m = MapPage(browser, port)
    before, drawn = m.view(), m.drawn()
    box = m.map.bounding_box()
    m.page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    m.page.mouse.wheel(0, -100)                                 # one notch: 1.6x, the sharp picture follows
    _wait(lambda: (v := m.view()) and (v[1] - v[0]) < (before[1] - before[0]) / 1.5, 10, "the zoom")
    m.sharp_after(drawn)
    x, y = points["x"].to_numpy(), points["y"].to_numpy()
    i = int(np.flatnonzero(points["name"].to_numpy() == XSS_NAME)[0])   # the injection-named file, alone mid-map
    px, py = m.to_px(x, y)
    assert m.inside(x, y)[i] and np.sort(np.hypot(px - px[i], py - py[i]))[1] > 18
    m.page.mouse.move(float(px[i]) + 3, float(py[i]) - 2)       # hover: the map names the point
    _wait(lambda: XSS_NAME in (m.page.locator(".klustr-tip").text_content() or ""), 20, "the hover tip")
    m.click(px[i], py[i])
    target = str(points["file_id"].iloc[i])
    _wait(lambda: m.src() == audio_path(target), 10, "the player's src")
    assert m.page.locator(".klustr-now .klustr-name").first.text_content() == XSS_NAME
    resp = m.page.request.get(f"http://127.0.0.1:{port}{m.src()}", timeout=30_000)
    assert resp.status == 200 and resp.headers["content-type"].startswith("audio/")
    player = m.page.locator("audio#klustr-player")
    _wait(lambda: player.evaluate("a => a.readyState >= 1 && !a.error"), 20, "the audio to load")
    assert m.page.locator(".klustr-neighbours li").count() >= 5
    m.page.screenshot(path=str(ARTIFACTS / "serve_after_click.png"))
    # names and labels that are HTML stay text: in the facets, the list, the tip
    assert XSS_LABEL in " ".join(m.page.locator(".klustr-facets").all_text_contents())
    m.close()


@pytest.mark.parametrize("dpr", [1, 2])
def test_the_picture_has_the_canvas_device_pixels(browser, served, dpr):
    m = MapPage(browser, served, dpr=dpr)
    size = m.page.locator("canvas.klustr-pic").evaluate("c => [c.width, c.height, c.clientWidth, c.clientHeight]")
    assert size[0] == round(size[2] * dpr) and size[1] == round(size[3] * dpr)
    assert m.map.get_attribute("data-image") == f"{size[0]}x{size[1]}"     # drawn 1:1, not stretched
    assert m.map.get_attribute("data-sharp") == "1"
    m.close()


def _box_select(m: MapPage, xs, ys, pad: float = 8) -> None:
    """Draw a box with the Box tool around the page positions ``xs``, ``ys``."""
    m.page.locator("button[data-tool=box]").click()
    _wait(lambda: "active" in (m.page.locator("button[data-tool=box]").get_attribute("class") or ""), 10, "the box tool")
    m.page.mouse.move(float(xs.min() - pad), float(ys.min() - pad))
    m.page.mouse.down()
    m.page.mouse.move(float(xs.max() + pad), float(ys.max() + pad), steps=6)
    m.page.mouse.up()


def test_box_selection_is_drawn_listed_played_and_exported(browser, served, points, tmp_path):
    m = MapPage(browser, served)
    x, y = points["x"].to_numpy(), points["y"].to_numpy()
    kick = points["label"].to_numpy() == "kick"
    px, py = m.to_px(x, y)
    before = m.drawn()
    _box_select(m, px[kick], py[kick])
    inside = ((px >= px[kick].min() - 8) & (px <= px[kick].max() + 8) & (py >= py[kick].min() - 8)
              & (py <= py[kick].max() + 8))
    n = int(inside.sum())
    _wait(lambda: f"{n:,} selected" in m.status(), 20, "the selection count")
    m.sharp_after(before)
    # drawn: a selected point in full colour, a point outside faint
    sel = int(np.flatnonzero(kick)[np.argmin(np.hypot(px[kick] - px[kick].mean(), py[kick] - py[kick].mean()))])
    out = int(np.flatnonzero(~inside & m.inside(x, y))[0])
    assert m.pixel(px[sel], py[sel])[3] > 150 and 0 < m.pixel(px[out], py[out])[3] < 100
    # listed: the table's rows are the selection; a click on a row plays it
    rows = m.page.locator(".tabulator-row")
    _wait(lambda: rows.count() > 0, 20, "the selection table")
    first = rows.first.locator(".tabulator-cell[tabulator-field=name]").text_content()
    assert first in set(points["name"][inside])
    rows.first.locator(".tabulator-cell[tabulator-field=name]").click()
    want = points["file_id"][(points["name"] == first).to_numpy()].iloc[0]
    _wait(lambda: m.src() == audio_path(want), 10, "the row to play")
    # exported: exactly the selection
    with m.page.expect_download() as dl:
        m.page.locator("button", has_text="CSV").click()
    saved = Path(dl.value.path())
    with open(saved, newline="") as fh:
        got = list(csv.DictReader(fh))
    assert len(got) == n and {r["path"] for r in got} == set(points["path"][inside])
    m.page.screenshot(path=str(ARTIFACTS / "serve_selection.png"))
    # a filter hides the selected points: they leave the selection, and exporting nothing says so
    m.page.locator(".klustr-facet", has_text="snare").locator("input").check()
    _wait(lambda: "0 selected" in m.status(), 20, "the selection to empty")
    downloads = []
    m.page.on("download", lambda d: downloads.append(d))
    for button, what in (("CSV", "save as CSV"), ("M3U", "save as M3U"), ("Copy files", "copy")):
        m.page.locator("button", has_text=button).click()
        _wait(lambda: f"Nothing selected to {what}" in " ".join(m.page.locator(".klustr-export-msg").all_text_contents()),
              10, f"{button} to say nothing is selected")
    time.sleep(1.0)
    assert not downloads
    m.close()


def test_search_as_you_type_facets_and_title(browser, served, points):
    m = MapPage(browser, served)
    search = m.page.get_by_placeholder("e.g. snare 808")
    search.click()
    m.page.keyboard.type("kick", delay=40)                       # no Enter
    n = int(points["path"].str.lower().str.contains("kick").sum())
    _wait(lambda: f"showing {n:,} of {len(points):,}" in m.status(), 10, "the search to apply")
    assert f"{n:,} of {len(points):,} points shown" in m.page.locator(".klustr-title").text_content()
    facets = {f.locator(".klustr-facet-name").text_content(): f.locator(".klustr-facet-count").text_content()
              for f in m.page.locator(".klustr-facet").all()}
    assert facets["kick"] == f"{n}" or facets["kick"].startswith(f"{n} /")
    assert facets["snare"].startswith("0 /")
    search.fill("")
    m.page.keyboard.press("Backspace")
    _wait(lambda: f"showing {len(points):,} of" in m.status(), 10, "the search to clear")
    snare = m.page.locator(".klustr-facet", has_text="snare").locator("input")
    snare.check()
    k = int((points["label"] == "snare").sum())
    _wait(lambda: f"showing {k:,} of" in m.status(), 10, "the facet to apply")
    # the facets close cleanly: nothing drops down over the status line, a click beside picks nothing
    status = m.page.locator(".klustr-status").bounding_box()
    cx, cy = status["x"] + 20, status["y"] + status["height"] / 2
    assert m.page.evaluate("([x, y]) => { let e = document.elementFromPoint(x, y);"
                           " while (e && e.shadowRoot && e.shadowRoot.elementFromPoint(x, y) &&"
                           " e.shadowRoot.elementFromPoint(x, y) !== e) e = e.shadowRoot.elementFromPoint(x, y);"
                           " return e && (e.closest('.klustr-status') !== null); }", [cx, cy])
    m.page.mouse.click(cx, cy)
    facets_box = m.page.locator(".klustr-facets").bounding_box()
    m.page.mouse.click(facets_box["x"] + facets_box["width"] + 3, facets_box["y"] + 10)   # beside the facets
    time.sleep(0.5)
    checked = [f.locator(".klustr-facet-name").text_content() for f in m.page.locator(".klustr-facet").all()
               if f.locator("input").is_checked()]
    assert checked == ["snare"] and f"showing {k:,} of" in m.status()
    m.close()


def test_keys_step_through_the_similar_sounds(browser, served, points):
    m = MapPage(browser, served)
    m.play_isolated(points)
    items = m.page.locator(".klustr-neighbours li")
    _wait(lambda: items.count() >= 3, 10, "the similar sounds")
    names = [li.locator(".klustr-name").text_content() for li in items.all()]
    url = {n: audio_path(f) for n, f in zip(points["name"], points["file_id"])}
    first = m.src()
    m.page.keyboard.press("ArrowDown")
    _wait(lambda: m.src() == url[names[0]], 5, "ArrowDown to play the first")
    m.page.keyboard.press("ArrowDown")
    _wait(lambda: m.src() == url[names[1]], 5, "ArrowDown to play the second")
    assert m.page.locator(".klustr-neighbours li.klustr-current .klustr-name").text_content() == names[1]
    m.page.keyboard.press("ArrowUp")
    _wait(lambda: m.src() == url[names[0]], 5, "ArrowUp to go back")
    player = m.page.locator("audio#klustr-player")
    _wait(lambda: player.evaluate("a => a.readyState >= 1"), 20, "the audio to load")
    player.evaluate("a => { a.pause(); a.currentTime = Math.min(0.2, a.duration / 2); }")
    m.page.keyboard.press(" ")                                   # space replays from the start
    _wait(lambda: player.evaluate("a => a.currentTime < 0.1 || !a.paused"), 5, "space to replay")
    m.page.keyboard.press("Enter")                               # Enter opens it: its own similar sounds
    _wait(lambda: m.page.locator(".klustr-now .klustr-name").first.text_content() == names[0], 10, "Enter to open")
    # keys typed into the search box do not step
    src = m.src()
    m.page.get_by_placeholder("e.g. snare 808").click()
    m.page.keyboard.press("ArrowDown")
    time.sleep(0.5)
    assert m.src() == src and first != src
    m.close()


DRAG_PROBE = """() => { window.__drags = [];
  window.addEventListener('dragstart', e => window.__drags.push({
    download: e.dataTransfer.getData('DownloadURL'), uri: e.dataTransfer.getData('text/uri-list')})); }"""


def test_a_sound_drags_out_as_its_file(browser, served, points, project):
    m = MapPage(browser, served)
    m.page.evaluate(DRAG_PROBE)
    i = m.play_isolated(points)
    px, py = m.to_px(points["x"].to_numpy(), points["y"].to_numpy())
    _wait(lambda: m.page.locator(".klustr-neighbours li").count() >= 3, 10, "the similar sounds")
    m.page.locator(".klustr-neighbours li").first.drag_to(m.map)
    m.page.locator(".klustr-now .klustr-item").drag_to(m.map)
    _box_select(m, px[[i]], py[[i]], pad=6)
    handle = m.page.locator(".tabulator-row [data-drag]").first
    _wait(lambda: handle.count(), 20, "the table's drag handle")
    handle.drag_to(m.map)
    drags = m.page.evaluate("() => window.__drags")
    assert len(drags) == 3, drags
    for d in drags:
        mime, name, url = d["download"].split(":", 2)
        assert mime.startswith("audio/") and url.startswith(f"http://127.0.0.1:{served}/audio/") and d["uri"] == url
        token = {audio_path(f): p for f, p in zip(points["file_id"], points["path"])}
        path = token["/audio/" + url.rsplit("/", 1)[1]]
        body = m.page.request.get(url).body()
        if path.endswith((".aif", ".aiff")):
            assert mime == "audio/wav" and name == Path(path).stem + ".wav" and body[:4] == b"RIFF"
        else:
            assert name == Path(path).name and body == Project(project).audio_path(path).read_bytes()
    m.close()


def test_zoom_is_bounded_and_an_empty_view_says_so(browser, served, points):
    from klustr_gpu.render.app import ZOOM_IN_LIMIT, ZOOM_OUT_LIMIT

    m = MapPage(browser, served)
    x0, x1, y0, y1 = m.view()
    box = m.map.bounding_box()
    from klustr_gpu.render.data import data_bounds
    (bx0, bx1), (by0, by1) = data_bounds(points["x"].to_numpy(), points["y"].to_numpy())
    extent = max(bx1 - bx0, by1 - by0)
    m.page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    for _ in range(12):
        m.page.mouse.wheel(0, 100)
    time.sleep(0.5)
    v = m.view()
    assert max(v[1] - v[0], v[3] - v[2]) <= extent * ZOOM_OUT_LIMIT * 1.001
    m.page.locator("button[data-tool=reset]").click()
    # an empty spot between the blobs of the ring: zoom into it as far as it goes
    xs, ys = points["x"].to_numpy(), points["y"].to_numpy()
    ex, ey = 2.5, 0.0
    while np.hypot(xs - ex, ys - ey).min() < 0.8:
        ey += 0.25
    epx, epy = m.to_px(ex, ey)
    m.page.mouse.move(float(epx), float(epy))
    drawn = m.drawn()
    for _ in range(30):
        m.page.mouse.wheel(0, -100)
    time.sleep(0.5)
    v = m.view()
    assert max(v[1] - v[0], v[3] - v[2]) >= extent / ZOOM_IN_LIMIT * 0.999
    m.sharp_after(drawn)
    hint = m.page.locator(".klustr-hint")
    _wait(lambda: hint.is_visible(), 10, "the empty-view hint")
    assert "No points in this view" in hint.text_content()
    m.page.locator("button[data-tool=reset]").click()
    _wait(lambda: not hint.is_visible(), 20, "the hint to go")
    m.close()


def test_the_side_panel_keeps_exports_in_view_and_players_inside(browser, served, points):
    m = MapPage(browser, served)
    m.play_isolated(points)
    x, y = points["x"].to_numpy(), points["y"].to_numpy()
    _wait(lambda: m.page.locator(".klustr-neighbours li").count() >= 5, 10, "the similar sounds")
    for name in ("CSV", "M3U", "Copy files", "Clear"):
        b = m.page.locator("button", has_text=name).first.bounding_box()
        assert b["y"] + b["height"] <= VIEWPORT["height"], name
    sound = m.page.locator(".klustr-sound")
    right = sound.bounding_box()["x"] + sound.bounding_box()["width"]
    assert sound.evaluate("e => e.scrollWidth <= e.clientWidth")
    for el in [m.page.locator("audio#klustr-player")] + m.page.locator(".klustr-neighbours li").all():
        b = el.bounding_box()
        assert b["x"] + b["width"] <= right + 1 and b["x"] + b["width"] <= VIEWPORT["width"]
    # "No sample there" clears the side panel
    far = m.to_px(*np.array([[x.min() - 0.5], [y.max() + 0.5]]))
    m.click(float(far[0][0]), float(far[1][0]))
    _wait(lambda: "No sample there" in m.page.locator(".klustr-now").text_content(), 10, "the message")
    assert m.page.locator(".klustr-neighbours li").count() == 0 and not m.src()
    m.close()


def test_the_first_click_plays_in_every_fresh_session(browser, served, points):
    """Sixteen fresh sessions, each clicked as soon as its map exists (before its first picture):
    every click plays within 5 s."""
    i = int(np.flatnonzero(points["name"].to_numpy() == XSS_NAME)[0])    # alone mid-map
    want = audio_path(points["file_id"].iloc[i])
    waited = []
    for _ in range(16):
        context = browser.new_context(viewport=VIEWPORT)
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{served}/", wait_until="commit")
        m = page.locator(".klustr-map")
        _wait(lambda: m.count() and m.get_attribute("data-view"), 120, "the map")
        box, (x0, x1, y0, y1) = m.bounding_box(), [float(v) for v in m.get_attribute("data-view").split(",")]
        px = box["x"] + (0.0 - x0) / (x1 - x0) * box["width"]
        py = box["y"] + (y1 - 0.0) / (y1 - y0) * box["height"]
        t = time.monotonic()
        page.mouse.click(px, py)
        _wait(lambda: page.locator("audio#klustr-player").get_attribute("src") == want, 5, "the first click to play")
        waited.append(time.monotonic() - t)
        context.close()
    assert max(waited) < 5


@pytest.fixture(scope="module")
def featured_served(demo_project, tmp_path_factory):
    """The demo library with real features and a UMAP map (its neighbour graph stored)."""
    import klustr_gpu as kg

    dst = tmp_path_factory.mktemp("featured") / "project"
    shutil.copytree(demo_project, dst)
    kg.compute_features(dst, sets=["mfcc"], progress=False)
    kg.embed(dst, method="umap", features="mfcc", progress=False)
    with running_server(dst, dst.parent / "server.log") as port:
        yield port, dst


def test_similar_sounds_come_from_the_feature_graph(browser, featured_served):
    port, proj = featured_served
    m = MapPage(browser, port)
    emb, _ = Project(proj).read_embedding()
    x, y = emb["x"].to_numpy(), emb["y"].to_numpy()
    i = _pick_isolated(x, y, m.inside(x, y), m.to_px, min_px=10)
    px, py = m.to_px(x, y)
    note = m.page.locator(".klustr-note")
    for _ in range(20):                                          # the graph loads in the background
        m.click(px[i], py[i])
        time.sleep(0.5)
        if "feature space" in (note.text_content() or ""):
            break
    assert "mfcc feature space" in note.text_content()
    m.page.locator("select.klustr-mode").select_option("map")
    _wait(lambda: "Nearest on the map (2-D)" in note.text_content(), 10, "the 2-D option")
    assert m.page.locator(".klustr-neighbours li").count() == 10
    m.close()


def test_standalone_map_html_hover_and_click(browser, project):
    from klustr_gpu import render_map

    ARTIFACTS.mkdir(exist_ok=True)
    out = render_map(project, width=600, height=400, progress=False)
    emb, _ = Project(project).read_embedding()
    x, y = emb["x"].to_numpy(), emb["y"].to_numpy()
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    page.set_default_timeout(30_000)
    errors, dialogs = [], []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(out.html.as_uri(), wait_until="load")
    box = page.locator("#map").bounding_box()
    b = page.evaluate("() => JSON.parse(document.getElementById('data').textContent).bounds")
    s = min(box["width"] / (b[1] - b[0]), box["height"] / (b[3] - b[2]))
    cx, cy = (b[0] + b[1]) / 2, (b[2] + b[3]) / 2

    def to_px(xx, yy):
        return box["x"] + (xx - cx) * s + box["width"] / 2, box["y"] + box["height"] / 2 - (yy - cy) * s

    px, py = to_px(x, y)
    paths = Project(project).read_manifest().set_index("id").loc[emb["file_id"], "path"]
    playable = ~paths.str.endswith((".aif", ".aiff")).to_numpy()    # no server here to convert AIFF
    i = _pick_isolated(x, y, playable, to_px, min_px=12)
    page.mouse.move(px[i], py[i])
    name = os.path.basename(Project(project).read_manifest().set_index("id").loc[emb["file_id"].iloc[i], "path"])
    _wait(lambda: name in (page.locator("#tip").text_content() or ""), 10, "the hover tip")
    page.mouse.down()
    page.mouse.up()
    src = _wait(lambda: page.locator("#player").evaluate("a => a.src"), 10, "the player's src")
    assert src.startswith("file://")
    played = Path(unquote(src[len("file://"):]))
    assert played.resolve() == Project(project).audio_path(
        Project(project).read_manifest().set_index("id").loc[emb["file_id"].iloc[i], "path"]).resolve()
    _wait(lambda: page.locator("#player").evaluate("a => a.readyState >= 1 && !a.error"), 20, "the audio to load")
    assert page.locator("#now").text_content().startswith(name)
    page.screenshot(path=str(ARTIFACTS / "map_html_after_click.png"))
    assert not errors and not dialogs
    assert XSS_LABEL in page.locator("#legend").text_content()
    page.close()
