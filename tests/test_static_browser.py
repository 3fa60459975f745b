"""Headless Chromium on what the static outputs and the hardened server promise a person:
map.html says which files this browser cannot play (never a silent click) and writes the
cluster names on the map; another site's page can neither frame the served app nor load its
tiles and audio, while the app's own page can."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from klustr_gpu.store import Project
from test_render import write_fake_embedding
from test_browser import browser, first_isolated  # noqa: F401  (browser: the suite's headless Chromium)
from test_serve import audio_path, free_port, http_get, running_server

pytestmark = pytest.mark.browser

@pytest.fixture(scope="module")
def project(demo_project, tmp_path_factory) -> Path:
    """The demo project (wav, flac, ogg and aiff files) with a clustered fake embedding."""
    dst = tmp_path_factory.mktemp("static_browser") / "project"
    shutil.copytree(demo_project, dst)
    write_fake_embedding(dst, cluster=True, seed=5)
    return dst


def _wait(fn, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def _answers(port: int) -> bool:
    try:
        return http_get(port, "/index.html")[0] == 200
    except OSError:
        return False


def test_map_html_marks_files_the_browser_cannot_play(browser, project):
    """AIFF (which Chromium cannot play): the side panel counts such files and says
    `klustr serve` converts them; they are drawn hollow; hovering one says so; clicking one
    says so and plays nothing. A WAV point still plays. Cluster names are drawn on the map."""
    from klustr_gpu import render_map

    out = render_map(project, by="cluster", width=600, height=400, progress=False)
    emb, _ = Project(project).read_embedding()
    man = Project(project).read_manifest().set_index("id")
    paths = emb["file_id"].map(man["path"])
    aiff = paths.str.lower().str.endswith((".aif", ".aiff")).to_numpy()
    n_aiff_files = int(man.loc[man["status"] == "ok", "path"].str.lower().str.endswith((".aif", ".aiff")).sum())
    assert 0 < n_aiff_files < len(man)
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(out.html.as_uri(), wait_until="load")
    note = page.locator("#cantplay")
    assert note.is_visible()
    assert note.text_content().startswith(f"{n_aiff_files} of {len(man)} files cannot play in this browser (AIFF")
    assert "`klustr serve` converts AIFF" in note.text_content()
    assert int(page.evaluate("() => document.getElementById('map').dataset.names")) == 7   # every cluster named

    box = page.locator("#map").bounding_box()
    b = page.evaluate("() => JSON.parse(document.getElementById('data').textContent).bounds")
    s = min(box["width"] / (b[1] - b[0]), box["height"] / (b[3] - b[2]))
    cx, cy = (b[0] + b[1]) / 2, (b[2] + b[3]) / 2
    x, y = emb["x"].to_numpy(), emb["y"].to_numpy()
    px, py = box["x"] + (x - cx) * s + box["width"] / 2, box["y"] + box["height"] / 2 - (y - cy) * s
    # pixels of a hollow (unplayable) point: its centre is background, its outline its colour
    i = first_isolated(px, py, np.flatnonzero(aiff), 10.0)
    name = os.path.basename(paths.iloc[i])
    page.mouse.move(px[i], py[i])
    tip = _wait(lambda: (t := page.locator("#tip").text_content() or "") and name in t and t, 10, "the hover tip")
    assert tip.endswith("cannot play here: AIFF; `klustr serve` converts it")
    page.mouse.down()
    page.mouse.up()
    now = _wait(lambda: page.locator("#now").text_content(), 10, "the side panel")
    assert now.startswith(name) and "cannot play here: AIFF" in now
    assert page.locator("#player").evaluate("a => a.paused && !a.getAttribute('src')")
    # a WAV point plays
    j = first_isolated(px, py, np.flatnonzero(paths.str.endswith(".wav").to_numpy()), 10.0)
    page.mouse.move(px[j], py[j])
    page.mouse.down()
    page.mouse.up()
    _wait(lambda: page.locator("#player").evaluate("a => a.readyState >= 1 && !a.error"), 20, "the WAV to load")
    assert "cannot play" not in page.locator("#now").text_content()
    # a missing file is said, not silent
    victim = j
    lib_file = Project(project).audio_path(paths.iloc[victim])
    moved = lib_file.with_name(lib_file.name + ".moved")
    lib_file.rename(moved)
    try:
        page.mouse.move(px[i], py[i])
        page.mouse.down()
        page.mouse.up()
        page.mouse.move(px[victim], py[victim])
        page.mouse.down()
        page.mouse.up()
        _wait(lambda: "could not decode or find" in (page.locator("#now").text_content() or ""), 20,
              "the missing file's message")
    finally:
        moved.rename(lib_file)
    assert not errors, errors
    page.close()


FOREIGN_PAGE = """<!doctype html><body>
<iframe id="f" src="{app}/" width="400" height="300"></iframe>
<img id="tile" src="{app}{tile}"><audio id="snd" src="{app}{audio}" preload="auto"></audio>
<script>
window.results = {{}};
document.getElementById('tile').onload = () => window.results.tile = 'loaded';
document.getElementById('tile').onerror = () => window.results.tile = 'blocked';
document.getElementById('snd').onloadedmetadata = () => window.results.audio = 'loaded';
document.getElementById('snd').onerror = () => window.results.audio = 'blocked';
fetch('{app}{tile}', {{mode: 'no-cors'}}).then(r => window.results.fetch = 'opaque:' + r.type)
  .catch(e => window.results.fetch = 'blocked');
</script></body>"""


def test_another_sites_page_can_neither_frame_nor_load_the_app(browser, project, tmp_path):
    """A page from another origin that frames the app, and loads a tile and an audio file of it
    (with the real token, as if it had learnt one): Chromium shows no app in the frame and the
    tile and audio fail; the same tile and audio load in the app's own page."""
    emb, _ = Project(project).read_embedding()
    fid = str(emb["file_id"].iloc[0])
    tile = "/tile.png?x0=-10&x1=10&y0=-10&y1=10&w=64&h=64"
    log = tmp_path / "server.log"
    with running_server(project, log) as port:
        app = f"http://127.0.0.1:{port}"
        site = tmp_path / "site"
        site.mkdir()
        (site / "index.html").write_text(FOREIGN_PAGE.format(app=app, tile=tile, audio=audio_path(fid)))
        other = free_port()                   # another site on this machine: the browser lets it reach us
        static = subprocess.Popen([sys.executable, "-m", "http.server", str(other), "--bind", "127.0.0.1"],
                                  cwd=site, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        page = browser.new_page()
        try:
            _wait(lambda: _answers(other), 30, "the other site")
            page.goto(f"http://localhost:{other}/index.html", wait_until="load")
            res = _wait(lambda: (r := page.evaluate("() => window.results")) and len(r) == 3 and r, 30, "the loads")
            assert res["tile"] == "blocked" and res["audio"] == "blocked", res
            time.sleep(1.0)
            child = next(f for f in page.frames if f is not page.main_frame)
            assert "klustr_gpu map" not in child.content() and "bokeh" not in child.content().lower(), child.url
        finally:
            page.close()
            static.terminate()
            static.wait(10)
        own = browser.new_page()
        own.goto(f"{app}/", wait_until="load")
        got = own.evaluate(f"""async () => {{
            const img = new Image(); img.src = '{tile}';
            await img.decode();
            const a = await fetch('{audio_path(fid)}');
            return [img.naturalWidth, a.status, a.headers.get('x-frame-options')];
        }}""")
        assert got == [64, 200, "DENY"], got
        own.close()
    text = log.read_text()
    assert "cannot be framed" in text and "another site's page" in text and "Traceback" not in text
