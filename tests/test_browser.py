"""A real headless Chromium drives the served app and the standalone map.html.

Needs Debian's chromium at /usr/bin/chromium (``.ci/run`` installs it); skipped locally without
it, a failure in CI (CI=true). Screenshots go to ``test-artifacts/``.
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

# The Bokeh figure's data ranges and its frame's position in the page (CSS pixels).
JS_FRAME = """() => {
  if (!window.Bokeh || !Bokeh.documents || !Bokeh.documents.length) return null;
  for (const doc of Bokeh.documents) for (const m of doc.all_models) {
    if (!(m.x_range && m.y_range && m.renderers && m.renderers.length)) continue;
    const v = Bokeh.index.find_one(m);
    if (!v || !v.frame) continue;
    const r = v.canvas_view.el.getBoundingClientRect(), f = v.frame.bbox;
    if (!(f.width > 0)) return null;
    const img = m.renderers.some(rr => rr.glyph && rr.glyph.constructor.__name__ === 'ImageRGBA');
    return {x0: m.x_range.start, x1: m.x_range.end, y0: m.y_range.start, y1: m.y_range.end,
            left: r.left + f.left, top: r.top + f.top, width: f.width, height: f.height, image: img};
  }
  return null;
}"""


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


def _wait(fn, timeout: float, what: str, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def _pick_isolated(x, y, visible, to_px, min_px: float = 18.0) -> int:
    """A visible point near the frame's centre whose nearest neighbour is >= min_px away."""
    px, py = to_px(x, y)
    cand = np.flatnonzero(visible)
    order = cand[np.argsort(np.hypot(px[cand] - np.median(px[cand]), py[cand] - np.median(py[cand])))]
    for i in order:
        d = np.hypot(px - px[i], py - py[i])
        d[i] = np.inf
        if d.min() >= min_px:
            return int(i)
    pytest.fail("no isolated point in view")


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


def test_served_map_zoom_click_plays_audio(browser, project):
    ARTIFACTS.mkdir(exist_ok=True)
    emb, _ = Project(project).read_embedding()
    man = Project(project).read_manifest().set_index("id")
    x, y = emb["x"].to_numpy(), emb["y"].to_numpy()
    with running_server(project, project.parent / "server.log") as port:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(60_000)
        dialogs = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(f"http://127.0.0.1:{port}/", wait_until="load")
        before = _wait(lambda: (f := page.evaluate(JS_FRAME)) and f["image"] and f, 90, "the plot")
        time.sleep(1.0)
        # zoom in around the frame centre with the mouse wheel (re-rasterised on the server)
        page.mouse.move(before["left"] + before["width"] / 2, before["top"] + before["height"] / 2)
        page.mouse.wheel(0, -250)
        frame = _wait(lambda: (f := page.evaluate(JS_FRAME)) and (f["x1"] - f["x0"]) < 0.9 * (before["x1"] - before["x0"]) and f,
                      30, "the zoom")
        time.sleep(1.5)

        def to_px(xx, yy):
            return (frame["left"] + (xx - frame["x0"]) / (frame["x1"] - frame["x0"]) * frame["width"],
                    frame["top"] + (frame["y1"] - yy) / (frame["y1"] - frame["y0"]) * frame["height"])

        visible = (x > frame["x0"]) & (x < frame["x1"]) & (y > frame["y0"]) & (y < frame["y1"])
        px, py = to_px(x, y)
        visible &= (px > frame["left"] + 30) & (px < frame["left"] + frame["width"] - 30) \
            & (py > frame["top"] + 30) & (py < frame["top"] + frame["height"] - 30)
        names = emb["file_id"].map(man["path"]).map(os.path.basename).to_numpy()
        i = int(np.flatnonzero(names == XSS_NAME)[0])           # the injection-named file, alone mid-map
        assert visible[i] and np.sort(np.hypot(px - px[i], py - py[i]))[1] > 18
        target_id = str(emb["file_id"].iloc[i])
        name = os.path.basename(man.loc[target_id, "path"])
        page.mouse.move(px[i] + 3, py[i] - 2)                  # hover: the app names the point
        _wait(lambda: name in " ".join(page.locator(".klustr-hover").all_text_contents()), 30, "the hover text")
        player = page.locator("audio#klustr-player")
        for _attempt in range(3):                               # a tap lost in a re-render is retried
            page.mouse.move(px[i], py[i])
            time.sleep(0.3)
            page.mouse.down()
            time.sleep(0.05)
            page.mouse.up()
            try:
                _wait(lambda: player.get_attribute("src"), 10, "the audio element's src")
                break
            except pytest.fail.Exception:
                continue
        src = player.get_attribute("src")
        assert src == audio_path(target_id)
        assert page.locator(".klustr-now .klustr-name").first.text_content() == name
        resp = page.request.get(f"http://127.0.0.1:{port}{src}", timeout=30_000)
        assert resp.status == 200 and resp.headers["content-type"].startswith("audio/")
        body = resp.body()
        if man.loc[target_id, "path"].endswith((".aif", ".aiff")):    # served as WAV: browsers lack AIFF
            assert body[:4] == b"RIFF" and resp.headers["content-type"] == "audio/wav"
        else:
            assert len(body) == int(man.loc[target_id, "size"])
        _wait(lambda: player.evaluate("a => a.readyState >= 1 && !a.error"), 20, "the audio to load")
        assert page.locator(".klustr-neighbours audio").count() >= 5
        page.screenshot(path=str(ARTIFACTS / "serve_after_click.png"))
        # names and labels that are HTML stay text: in the legend and in the label filter's dropdown
        assert XSS_LABEL in " ".join(page.locator(".klustr-legend").all_text_contents())
        page.locator(".choices").first.click()
        _wait(lambda: XSS_LABEL in " ".join(page.locator(".choices__list--dropdown").all_text_contents()),
              10, "the label dropdown")
        time.sleep(0.5)
        assert not dialogs and not page.evaluate("() => window.__xss || null")
        page.close()


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
