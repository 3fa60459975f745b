"""The served app against a hostile or busy client on loopback (issue 5): 200 concurrent audio
requests while a second process opens app sessions; a rapid zoom (``/tile.png``) flood from a
second process with audio alongside; path traversal in every encoding; oversize and malformed
requests and tile values; nothing outside the manifest's ok files is ever served."""
from __future__ import annotations

import http.client
import random
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import soundfile as sf

from badfiles import tone
from klustr_gpu.library import file_id
from klustr_gpu import scan
from klustr_gpu.store import Project
from test_render import write_fake_embedding
from test_serve import AUDIO_KEY, audio_path, http_get, running_server

REPO = Path(__file__).resolve().parents[1]
SECRET = b"TOP-SECRET-klustr-marker"


@pytest.fixture(scope="module")
def site(demo_library, tmp_path_factory):
    """A 42-file library (one skipped, one added after the scan, secrets beside and inside it)
    served from a subprocess."""
    root = tmp_path_factory.mktemp("sec")
    lib = root / "lib"
    for f in sorted(demo_library.rglob("*"))[:60]:
        if f.is_file() and f.suffix in (".wav", ".flac", ".ogg", ".aiff"):
            dst = lib / f.parent.name / f.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, dst)
    (root / "secret.txt").write_bytes(SECRET)                # beside the library
    (lib / "notes.txt").write_bytes(SECRET)                  # inside it, not audio
    (root / "outside.wav").write_bytes(b"RIFF" + SECRET)     # audio-named, outside
    (lib / "zz").mkdir()
    (lib / "zz/link_out.wav").symlink_to(root / "outside.wav")  # a link leading outside: listed, but skipped
    proj = Project(root / "proj")
    scan(lib, proj, label_from="parent", progress=False)
    man = proj.read_manifest()
    skipped = str(man[man.status == "ok"]["id"].iloc[-1])
    proj.mark_skipped({skipped: "test: skipped"})
    write_fake_embedding(proj.path)
    sf.write(lib / "added_later.wav", tone(22050, 0.3), 22050)  # on disk, never scanned
    with running_server(proj.path, root / "server.log") as port:
        yield {"port": port, "proj": proj, "lib": lib, "man": proj.read_manifest(), "skipped": skipped,
               "root": root}


def _token(file_id) -> str:
    """What the page sees for a manifest id on these servers."""
    from klustr_gpu.render.security import audio_token

    return audio_token(str(file_id), AUDIO_KEY)


def _ok(site):
    man = site["man"]
    return man[man.status == "ok"]


def raw_request(port: int, raw: bytes, timeout: float = 15) -> tuple[int | None, bytes]:
    """Send bytes exactly as given (plus ``Connection: close`` after an HTTP/1.1 request line);
    (status or None if the server closed without one, whole reply)."""
    raw = raw.replace(b" HTTP/1.1\r\n", b" HTTP/1.1\r\nConnection: close\r\n", 1)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(raw)
        chunks = []
        try:
            while True:
                b = s.recv(65536)
                if not b:
                    break
                chunks.append(b)
                if b"\r\n\r\n" in b"".join(chunks) and sum(map(len, chunks)) > 1 << 22:
                    break
        except (ConnectionResetError, socket.timeout):
            pass
    reply = b"".join(chunks)
    if not reply.startswith(b"HTTP/1."):
        return None, reply
    return int(reply.split(b" ", 2)[1]), reply


def _refused(status, body: bytes, headers: dict | None = None) -> None:
    assert status in (None, 400, 403, 404, 405, 413, 414, 431), status
    assert SECRET not in body and b"root:" not in body
    if headers is not None:
        assert not headers.get("content-type", "").startswith("audio/")


# -- load -------------------------------------------------------------------------------------
SESSIONS = r"""
import sys, time, urllib.request
import panel  # registers the app's bokeh models
import klustr_gpu.render.components  # and the map's component models
import panel.models.tabulator  # the selection table
from bokeh.client import pull_session
port, n = int(sys.argv[1]), int(sys.argv[2])
for i in range(n):                       # each page load makes a session (a MapApp)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=60) as r:
        assert r.status == 200 and b"bokeh" in r.read().lower()
for i in range(2):                       # and full websocket sessions, each with its own map render
    s = pull_session(url=f"http://127.0.0.1:{port}/")
    src = next(m.src for m in s.document.models if type(m).__name__.startswith("MapCanvas"))
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{src}/1?x0=-10&x1=10&y0=-10&y1=10&w=900&h=700",
                                timeout=60) as r:
        assert r.status == 200 and r.headers["X-Klustr-Size"] == "900x700"
    s.close()
print("sessions ok", flush=True)
"""


def test_200_concurrent_audio_requests_with_sessions_from_another_process(site, tmp_path):
    port = site["port"]
    ok = _ok(site)
    rows = [ok.iloc[i % len(ok)] for i in range(200)]
    random.Random(0).shuffle(rows)
    expected = {r["id"]: site["proj"].audio_path(r["path"]) for r in rows}
    script = tmp_path / "sessions.py"
    script.write_text(SESSIONS)
    other = subprocess.Popen([sys.executable, str(script), str(port), "8"], cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)

    def fetch(row):
        t0 = time.monotonic()
        status, headers, body = http_get(port, audio_path(row["id"]))
        return row["id"], status, headers, body, time.monotonic() - t0

    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=200) as pool:
        results = list(pool.map(fetch, rows))
    elapsed = time.monotonic() - t0
    try:
        out, err = other.communicate(timeout=180)
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()
    assert other.returncode == 0 and "sessions ok" in out, err[-3000:]
    assert len(results) == 200 and elapsed < 120, elapsed
    for fid, status, headers, body, _ in results:
        assert status == 200 and headers["content-type"].startswith("audio/"), (fid, status)
        path = expected[fid]
        if path.suffix.lower() not in (".aif", ".aiff"):          # aiff is served transcoded
            assert body == path.read_bytes(), fid
    assert http_get(port, audio_path(rows[0]["id"]), method="HEAD")[0] == 200     # still healthy


# -- zoom: /tile.png ----------------------------------------------------------------------------
ZOOM = r"""
import hashlib, http.client, io, json, random, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from PIL import Image
port, spec = int(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text())
out = Path(sys.argv[3])

def get(path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.getheader("Content-Type", ""), r.read()
    finally:
        conn.close()

def tile(x0, x1, y0, y1, w, h):
    q = f"/tile.png?x0={x0!r}&x1={x1!r}&y0={y0!r}&y1={y1!r}&w={w}&h={h}"
    t0 = time.monotonic()
    status, ctype, body = get(q)
    assert status == 200 and ctype == "image/png", (q, status, body[:200])
    assert body[:8] == b"\x89PNG\r\n\x1a\n", q
    img = Image.open(io.BytesIO(body))
    img.load()
    assert img.format == "PNG" and img.size == (w, h), (q, img.size)
    return body, time.monotonic() - t0

(bx0, bx1), (by0, by1), (tx, ty), factor = spec["bounds"]
audio_ok, audio_times, stop = [], [], threading.Event()
def audio_loop():                        # /audio requests interleaved with the zoom flood
    i = 0
    while not stop.is_set() or i < 40:
        fid, size = spec["audio"][i % len(spec["audio"])]
        t0 = time.monotonic()
        status, ctype, body = get(fid)
        audio_times.append(time.monotonic() - t0)
        audio_ok.append(status == 200 and ctype.startswith("audio/") and (size is None or len(body) == size))
        i += 1
t_audio = threading.Thread(target=audio_loop)
t_audio.start()
t0 = time.monotonic()
zoom = []                                # 60 successive zoom-ins toward (tx, ty), as a wheel would
x0, x1, y0, y1 = bx0, bx1, by0, by1
for k in range(60):
    body, _ = tile(x0, x1, y0, y1, 320, 240)
    (out / f"zoom{k:02d}.png").write_bytes(body)
    zoom.append({"range": [x0, x1, y0, y1], "sha": hashlib.sha256(body).hexdigest()})
    x0, x1 = tx + (x0 - tx) * factor, tx + (x1 - tx) * factor
    y0, y1 = ty + (y0 - ty) * factor, ty + (y1 - ty) * factor
(px, py) = spec["deep"]                  # and a deep zoom onto one point (1/100,000 of the map)
s = (bx1 - bx0) * 1e-5
body, _ = tile(px - s, px + s, py - s, py + s, 200, 200)
(out / "deep.png").write_bytes(body)
rng = random.Random(0)
def rand_tile(_):
    cx, cy = rng.uniform(bx0, bx1), rng.uniform(by0, by1)
    s = (bx1 - bx0) * 10 ** rng.uniform(-4, 0.5)
    return tile(cx - s, cx + s, cy - s * 0.75, cy + s * 0.75, rng.randint(1, 600), rng.randint(1, 600))[1]
with ThreadPoolExecutor(max_workers=25) as pool:           # 100 random ranges, 25 at a time
    flood = list(pool.map(rand_tile, range(100)))
stop.set()
t_audio.join()
print(json.dumps({"zoom": zoom, "flood": len(flood), "flood_max_s": max(flood), "seconds": time.monotonic() - t0,
                  "audio": len(audio_ok), "audio_ok": sum(audio_ok), "audio_max_s": max(audio_times)}), flush=True)
"""


def _tile_url(x0, x1, y0, y1, w, h, **extra) -> str:
    q = f"x0={x0!r}&x1={x1!r}&y0={y0!r}&y1={y1!r}&w={w}&h={h}"
    return "/tile.png?" + q + "".join(f"&{k}={v}" for k, v in extra.items())


def test_rapid_zoom_from_another_process_is_answered_in_bounded_time(site, tmp_path):
    """A second process zooms in 60 times toward a point, then sends 100 random ranges 25 at a
    time, while /audio requests run alongside: every tile is a PNG of the size asked, the deeper
    zooms differ, each is the picture the app's own renderer draws, and audio stays answered."""
    import io
    import json

    import numpy as np
    from PIL import Image

    from klustr_gpu.render.data import load_map
    from klustr_gpu.render.tiles import Tile, TileService

    port, ok = site["port"], _ok(site)
    data = load_map(site["proj"])
    (bx, by) = data.bounds()
    p = data.points.iloc[0]
    blob = data.points[data.points["label"] == p["label"]]
    target = [float(blob["x"].mean()), float(blob["y"].mean())]   # the middle of one label's group
    factor = (1.0 / (bx[1] - bx[0])) ** (1 / 60)                   # down to a 1-unit wide view of it
    audio = [[audio_path(r["id"]), None if str(r["path"]).lower().endswith((".aif", ".aiff"))
              else site["proj"].audio_path(r["path"]).stat().st_size] for _, r in ok.iterrows()]
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"bounds": [list(bx), list(by), target, factor], "audio": audio,
                                "deep": [float(p["x"]), float(p["y"])]}))
    script = tmp_path / "zoom.py"
    script.write_text(ZOOM)
    t0 = time.monotonic()
    try:
        r = subprocess.run([sys.executable, str(script), str(port), str(spec), str(tmp_path)], cwd=REPO,
                           capture_output=True, text=True, timeout=150)
    except subprocess.TimeoutExpired:
        pytest.fail("the zoom client did not finish within 150 s")
    elapsed = time.monotonic() - t0
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["flood"] == 100 and elapsed < 120, (elapsed, res["seconds"])
    assert res["audio"] >= 40 and res["audio_ok"] == res["audio"], res
    assert res["audio_max_s"] < 30, res["audio_max_s"]
    shas = [z["sha"] for z in res["zoom"]]
    # deeper zooms give new pictures (two neighbouring steps may match when no dot crosses a pixel)
    assert len(shas) == 60 and len(set(shas)) >= 55, len(set(shas))

    def pixels(png: bytes) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(png)))

    service = TileService(data)                      # the server's pictures are the renderer's own
    for k in (0, 20, 40, 59):
        x0, x1, y0, y1 = res["zoom"][k]["range"]
        want = service.render(Tile((x0, x1), (y0, y1), 320, 240))
        got = (tmp_path / f"zoom{k:02d}.png").read_bytes()
        assert np.array_equal(pixels(got), pixels(want)), k
        assert pixels(got)[..., 3].any(), k                           # points in view at every depth
    deep = pixels((tmp_path / "deep.png").read_bytes())
    assert deep[..., 3].any() and deep.shape == (200, 200, 4)         # the point, 100,000x zoomed
    assert http_get(port, audio_path(ok.iloc[0]["id"]), method="HEAD")[0] == 200


def test_malformed_or_oversize_tile_requests_are_refused(site):
    port = site["port"]
    good = dict(x0=-10, x1=10, y0=-10, y1=10, w=64, h=48)

    def url(**kw):
        q = {**good, **kw}
        return "/tile.png?" + "&".join(f"{k}={v}" for k, v in q.items() if v is not None)

    bad = [url(x0="nan"), url(x0="NaN"), url(x1="inf"), url(y0="-inf"), url(y1="Infinity"), url(x0=10),
           url(x0=11), url(y0=10), url(w=0), url(w=100000), url(h=-1), url(h=2.5), url(w="abc"), url(x0="1e13"),
           url(x0="0x10"), url(x0="1_0"), url(x0=""), url(x0=None), url(w=None), url(h=None), "/tile.png",
           "/tile.png?", url() + "&foo=1", url() + "&w=32", url() + "&labels=no-such-label", url(x0="%ff"),
           url() + "&&", url() + "&%00=1", url(x0="1%00"), url(x1="10.000000000001", x0="10"),
           "/tile.png?" + "x0=1&" * 40, "/tile.png?a=" + "9" * 5000]
    for path in bad:
        status, headers, body = http_get(port, path)
        assert status == 400, (path[:80], status, body[:200])
        assert headers["content-type"].startswith("text/plain") and len(body) < 300, path[:80]
        assert b"Traceback" not in body and b"<" not in body
    status, _, body = http_get(port, url(w=100000))
    assert b"4096" in body                                        # says what the limit is
    status, reply = raw_request(port, b"GET /tile.png?x0=" + b"1" * 100_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert status in (None, 400, 413, 414, 431), status
    assert b"image/png" not in reply.lower()
    assert http_get(port, url(), method="POST")[0] == 405
    status, headers, body = http_get(port, url(w=4096, h=1))                  # still serving; limits inclusive
    assert status == 200 and headers["content-type"] == "image/png" and body[:4] == b"\x89PNG"
    assert headers["x-content-type-options"] == "nosniff" and "max-age" in headers["cache-control"]
    label = str(_ok(site)["label"].dropna().iloc[0])
    assert http_get(port, url(labels=label))[0] == 200


def test_a_tile_flood_beyond_the_queue_is_told_to_retry(tmp_path):
    """More renders than ``max_pending`` at once: the extra ones get 503 with Retry-After at once
    (bounded memory), the admitted one finishes, and the route serves again afterwards."""
    import asyncio
    import threading

    import numpy as np
    import pandas as pd
    import tornado.httpserver
    import tornado.web

    from klustr_gpu.render.data import MapData
    from klustr_gpu.render.tiles import TileHandler, TileService
    from test_serve import free_port

    pts = pd.DataFrame({"x": np.float32([0, 1, 2]), "y": np.float32([0, 1, 2]),
                        "label": pd.Categorical(["a", "b", "a"])})
    service = TileService(MapData(pts, "label", {"a": "#ff0000", "b": "#0000ff"}, "t"), workers=1, max_pending=1)
    gate = threading.Event()
    real = service.render
    service.render = lambda tile: (gate.wait(30), real(tile))[1]
    port, started = free_port(), threading.Event()
    holder = {}

    def serve():
        async def main():
            holder["loop"] = asyncio.get_running_loop()
            holder["stop"] = asyncio.Event()
            server = tornado.httpserver.HTTPServer(tornado.web.Application([(r"/tile\.png", TileHandler,
                                                                             {"service": service})]))
            server.listen(port, "127.0.0.1")
            started.set()
            await holder["stop"].wait()
            server.stop()
        asyncio.run(main())

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    assert started.wait(10)
    url = _tile_url(-1, 3, -1, 3, 16, 16)
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            first = pool.submit(http_get, port, url)
            try:
                deadline = time.monotonic() + 10
                while service._pending < 1 and time.monotonic() < deadline:
                    time.sleep(0.01)
                for _ in range(5):
                    status, headers, body = http_get(port, url)
                    assert status == 503 and headers.get("retry-after") == "1", status
                    assert b"busy" in body and headers["content-type"].startswith("text/plain")
            finally:
                gate.set()
            status, headers, body = first.result(timeout=30)
            assert status == 200 and body[:4] == b"\x89PNG"
        assert http_get(port, url)[0] == 200 and service._pending == 0
    finally:
        gate.set()
        holder["loop"].call_soon_threadsafe(holder["stop"].set)
        th.join(10)
        service.pool.shutdown(wait=False)


# -- traversal ---------------------------------------------------------------------------------
TRAVERSALS = [
    "/audio/../../../../etc/passwd", "/audio/..%2f..%2f..%2f..%2fetc%2fpasswd", "/audio/%2e%2e/%2e%2e/etc/passwd",
    "/audio/%2E%2E%2F%2E%2E%2Fsecret.txt", "/audio/%252e%252e%252fsecret.txt", "/audio/%25252e%25252e%25252f",
    "/audio/..%5c..%5csecret.txt", "/audio/..\\..\\secret.txt", "/audio/%5c%5c127.0.0.1%5csecret",
    "/audio/%c0%ae%c0%ae%c0%afsecret.txt", "/audio/%e0%80%ae%e0%80%ae/secret.txt", "/audio/%c0%2e%c0%2e%c0%5c",
    "/audio/%2fetc%2fpasswd", "/audio//etc/passwd", "/audio/file:%2f%2f%2fetc%2fpasswd",
    "/audio/notes.txt", "/audio/..%00/secret.txt", "/audio/%00", "/audio/{id}%00.wav", "/audio/{id}%2f..%2f..",
    "/audio/{id}/../../secret.txt", "/audio/{id}/", "/audio/{id}.wav", "/audio/{id}%0a", "/audio/%20{id}",
    "/audio/{ID}", "/audio/{id}0", "/audio/{id}?path=../secret.txt", "/audio/{id};../../secret.txt",
    "/audio/..;/secret.txt", "/%2e%2e/%2e%2e/secret.txt", "/static/..%2f..%2f..%2fsecret.txt",
    "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "/audio/%u002e%u002e%u2215secret.txt",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_traversal_in_every_encoding_is_refused(site, path):
    fid = _token(_ok(site)["id"].iloc[0])
    path = path.replace("{id}", fid).replace("{ID}", fid.upper())
    if "?path=" in path:       # a query on a valid id is ignored: the manifest file, nothing else
        status, headers, body = http_get(site["port"], path)
        assert status == 200 and SECRET not in body
        return
    status, headers, body = http_get(site["port"], path)
    _refused(status, body, headers)


@pytest.mark.parametrize("raw", [
    b"GET /audio/\xc0\xae\xc0\xae/\xc0\xae\xc0\xae/secret.txt HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",   # overlong UTF-8, raw
    b"GET /audio/..\\..\\..\\secret.txt HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    b"GET /audio/\x00../secret.txt HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    b"GET http://127.0.0.1/../../secret.txt HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",                   # absolute-form target
    b"GET ../../secret.txt HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    b"GET /audio/%2e%2e%2fsecret.txt HTTP/1.0\r\n\r\n",
    b"GET /audio/\xff\xfe HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
])
def test_raw_malformed_targets_are_refused(site, raw):
    status, reply = raw_request(site["port"], raw)
    _refused(status, reply)
    assert not reply.lower().count(b"content-type: audio/")


# -- oversize and malformed values --------------------------------------------------------------
def test_oversize_and_malformed_requests_are_refused_and_the_server_survives(site):
    port = site["port"]
    fid = _token(_ok(site)["id"].iloc[0])
    # an oversize target, an oversize query value, an oversize header: refused or closed
    for raw in [b"GET /audio/" + b"a" * 200_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
                f"GET /audio/{fid}?q=".encode() + b"%2e" * 60_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
                f"GET /?bokeh-session-id={'x' * 100_000} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode(),
                f"GET /audio/{fid} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: {'y' * 100_000}\r\n\r\n".encode()]:
        status, reply = raw_request(port, raw)
        assert status in (None, 400, 404, 413, 414, 431), status
        assert SECRET not in reply
    # malformed request lines and a body on GET
    for raw in [b"GARBAGE\r\n\r\n", b"GET\r\n\r\n", b"GET /audio/x HTTP/9.9\r\n\r\n",
                b"GET /audio/x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -5\r\n\r\n",
                b"GET /audio/x HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n"]:
        status, reply = raw_request(port, raw)
        assert status in (None, 400, 404, 405, 505), (raw, status)
    # malformed query values on the app page: a page or a refusal, never a server error
    for q in ["?%zz=%ff", "?a=%00%00", "?" + "&".join(f"k{i}=v" for i in range(2000)), "?theme=../../x"]:
        status, _, body = http_get(port, "/" + q)
        assert status < 500, (q, status)
    # malformed ranges: the whole file, a valid part, or 416; never more than the file, never 500
    size = len(http_get(port, f"/audio/{fid}")[2])
    for rng in ["bytes=abc", "bytes=5-1", "bytes=-0", "bytes=0-1,3-4", "bytes=99999999999999999999-",
                "bytes=-99999999999999999999", "bytes=" + "0-1," * 5000, "lines=0-10", "bytes=0-" + "9" * 400]:
        status, headers, body = http_get(port, f"/audio/{fid}", headers={"Range": rng})
        assert status in (200, 206, 400, 416, 431), (rng, status)
        assert len(body) <= size
    # methods other than GET/HEAD change nothing
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        status, _, _ = http_get(port, f"/audio/{fid}", method=method)
        assert status == 405, (method, status)
    assert http_get(port, f"/audio/{fid}", method="HEAD")[0] == 200


# -- the closed list ---------------------------------------------------------------------------
def test_nothing_outside_the_manifest_ok_files_is_ever_served(site):
    """Every file under and beside the library, asked for by its would-be id, its path, and its
    name: only the manifest's ok files are served (not the skipped one, not the one added later,
    not the link leading outside, not the notes)."""
    port, lib, man = site["port"], site["lib"], site["man"]
    ok_ids = set(_ok(site)["id"])
    served = set()
    for p in sorted(site["root"].rglob("*")):
        if not (p.is_file() or p.is_symlink()) or "proj" in p.parts:
            continue
        try:
            rel = p.relative_to(lib).as_posix()
        except ValueError:
            rel = p.relative_to(site["root"]).as_posix()
        fid = file_id(rel)
        status, headers, body = http_get(port, audio_path(fid), method="HEAD")
        if status == 200:
            served.add(fid)
        assert (status == 200) == (fid in ok_ids), (rel, status)
        assert http_get(port, f"/audio/{rel}")[0] in (404, 400)
        assert http_get(port, f"/audio/{fid}", method="HEAD")[0] == 404      # the path-derived id: never
    assert served == ok_ids and site["skipped"] not in served
    assert file_id("added_later.wav") not in served and file_id("zz/link_out.wav") not in served
    assert man.set_index("path").loc["zz/link_out.wav", "status"] == "skipped"
    assert man["status"].iloc[0] == "ok"


def test_a_file_replaced_after_the_scan_is_not_served(site):
    """(Runs last: it changes the library.) A manifest file replaced by a link to a secret, or
    rewritten, is no longer the file scanned: 404 until a rescan, never the new content."""
    port, ok = site["port"], _ok(site)
    linked, rewritten = ok.iloc[-2], ok.iloc[-3]
    p = site["proj"].audio_path(linked["path"])
    p.unlink()
    p.symlink_to(site["root"] / "secret.txt")
    status, headers, body = http_get(port, audio_path(linked["id"]))
    assert status == 404 and SECRET not in body
    q = site["proj"].audio_path(rewritten["path"])
    q.write_bytes(q.read_bytes() + SECRET)
    status, headers, body = http_get(port, audio_path(rewritten["id"]))
    assert status == 404 and SECRET not in body
    assert http_get(port, audio_path(ok.iloc[0]["id"]), method="HEAD")[0] == 200


def test_websocket_from_another_origin_is_refused(site):
    """A page on another site cannot drive the app: the websocket handshake with a valid session
    token succeeds from the served origin (101) and is refused from any other (403)."""
    import base64
    import os
    import re

    port = site["port"]
    status, _, page = http_get(port, "/")
    token = re.search(rb'"token"\s*:\s*"([^"]+)"', page).group(1).decode()
    got = {}
    for origin in (f"http://127.0.0.1:{port}", "http://evil.example", "null"):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request("GET", "/ws", headers={
                "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(), "Origin": origin,
                "Sec-WebSocket-Protocol": f"bokeh, {token}"})
            got[origin] = conn.getresponse().status
        finally:
            conn.close()
    assert got == {f"http://127.0.0.1:{port}": 101, "http://evil.example": 403, "null": 403}, got


# -- the closed list of routes; hosts, origins, framing (issue 15) ------------------------------
def _log_since(site, offset: int) -> str:
    time.sleep(0.5)                                    # the server's log is written unbuffered
    return (site["root"] / "server.log").read_text(errors="replace")[offset:]


def _log_offset(site) -> int:
    return len((site["root"] / "server.log").read_text(errors="replace"))


CLOSED = ["/components/this/a/b/c", "/components/this/this/__css__/x.css", "/components/..%2f..%2fetc%2fpasswd",
          "/components/%2e%2e%2f%2e%2e/x/y/z", "/components/os/path/__file__/passwd",
          "/components/panel.pane/Markdown/_stylesheets/x.css", "/components/" + "a." * 2000 + "/b/c/d",
          "/metadata", "/autoload.js", "/autoload.js?bokeh-autoload-element=x", "/liveness", "/rest/session_info",
          "/admin", "/login", "/logout", "/panel-preview/render", "/static/../components/this/a/b/c",
          "/audio", "/tile", "/tile.png/..", "/index.html", "/.git/config"]


def test_only_the_closed_list_of_routes_is_served(site):
    """Panel's /components/<module>/... route (it imported any installed module named in a GET:
    `this` printed the Zen of Python) and every other route outside the closed list are a plain
    404: nothing imported, no traceback in the reply or the log; the app and its assets stay."""
    import re
    from urllib.parse import quote

    port, offset = site["port"], _log_offset(site)
    for path in CLOSED:
        for method in ("GET", "HEAD"):
            status, headers, body = http_get(port, path, method=method)
            assert status in (403, 404), (path[:60], method, status)          # 403: a static asset's own refusal
            assert headers["x-frame-options"] == "DENY" and len(body) < 100, (path[:60], body[:200])
            assert status == 403 or body in (b"", b"404 not found\n"), (path[:60], body[:200])
    log = _log_since(site, offset)
    assert "Beautiful is better than ugly" not in log and "Traceback" not in log, log[-2000:]
    status, headers, page = http_get(port, "/")                     # the app, and every asset it names
    assert status == 200 and headers["content-type"].startswith("text/html")
    assets = re.findall(rb'src="\.?/?(static/[^"]+\.js(?:\?v=\w+)?)"', page)
    assert len(assets) >= 4
    for asset in assets:
        status, headers, body = http_get(port, "/" + quote(asset.decode(), safe="/?=@"))
        assert status == 200 and body, asset
        assert headers["content-type"].split(";")[0] in ("application/javascript", "text/javascript"), asset


def test_harden_keeps_only_the_app_and_the_servers_own_routes():
    """The routing table itself: after :func:`harden`, only the app's page, websocket, static
    assets and favicon, plus the server's own routes, behind the host/origin gate."""
    import panel as pn
    from panel.io.server import ComponentResourceHandler, get_server

    from klustr_gpu.render.guard import HostPolicy, NotFoundHandler, RefusedHandler, app_handlers, harden
    from klustr_gpu.render.security import AudioHandler, AudioIndex

    own = [(r"/audio/([^/]*)", AudioHandler, {"index": AudioIndex({})})]
    server = get_server(lambda: pn.pane.Markdown("x"), port=0, address="127.0.0.1", start=False,
                        extra_patterns=list(own), location=False)
    try:
        app = server._tornado
        before = {r.target for r in app.wildcard_router.rules}
        assert ComponentResourceHandler in before                    # what Panel registers by default
        kept = harden(app, HostPolicy(port=server.port), own)
        after = {r.target for r in app.wildcard_router.rules}
        assert after <= set(app_handlers()) | {AudioHandler} and AudioHandler in after
        assert ComponentResourceHandler not in after and len(kept) == len(app.wildcard_router.rules)
        assert app.default_router.rules[0].target is RefusedHandler
        assert app.settings["default_handler_class"] is NotFoundHandler
    finally:
        server.unlisten()


FOREIGN_HOSTS = ["evil.example", "evil.example:{port}", "127.0.0.1.evil.example:{port}", "localhost.evil.example",
                 "evil.example:{port}@127.0.0.1", "0.0.0.0:{port}", "127.0.0.2:{port}", "", " ", "[::1",
                 "local host", "localhost:{port}:1", "%6c%6fcalhost:{port}", "localhost\x00.evil", "x" * 300]


def test_foreign_host_headers_are_refused(site):
    """A DNS-rebinding page reaches the server under its own name: the Host header it sends is
    not a loopback name, so the app, audio, tiles, assets and the websocket all answer 400."""
    port = site["port"]
    token_path = audio_path(_ok(site)["id"].iloc[0])
    targets = ["/", token_path, _tile_url(-10, 10, -10, 10, 32, 32), "/static/js/bokeh.min.js", "/ws", "/nope"]
    for host in FOREIGN_HOSTS:
        host = host.replace("{port}", str(port))
        for target in targets:
            raw = f"GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode("latin-1")
            status, reply = raw_request(port, raw)
            assert status == 400, (host[:40], target[:40], status, reply[:300])
            head, _, body = reply.partition(b"\r\n\r\n")
            if head != b"HTTP/1.1 400 Bad Request":                  # else refused by tornado's parser itself
                assert b"content-type: text/plain" in head.lower() and b"x-frame-options: deny" in head.lower()
            assert b"Traceback" not in body and len(body) < 200 and not body.startswith((b"\x89PNG", b"RIFF", b"OggS"))
    status, reply = raw_request(port, f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nHost: evil.example\r\n\r\n".encode())
    assert status == 400                                                  # two Host headers
    for host in ("127.0.0.1", f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}", f"[::1]:{port}",
                 f"localhost.:{port}"):
        status, headers, body = http_get(port, token_path, headers={"Host": host}, method="HEAD")
        assert status == 200 and headers["content-type"].startswith("audio/"), (host, status)
    assert http_get(port, "/", headers={"Host": f"localhost:{port}"})[0] == 200


def test_requests_from_another_sites_page_are_refused(site):
    """A page elsewhere (another site, another port on this machine, a sandboxed or file:// page)
    cannot make the server answer: its Origin, or its Fetch Metadata, is refused with 403. The
    user opening the app from a link (a top-level navigation) still works."""
    port = site["port"]
    token_path = audio_path(_ok(site)["id"].iloc[0])
    tile = _tile_url(-10, 10, -10, 10, 32, 32)
    foreign = [{"Origin": "http://evil.example"}, {"Origin": f"http://evil.example:{port}"}, {"Origin": "null"},
               {"Origin": f"http://127.0.0.1:{port + 1}"}, {"Origin": f"http://localhost:{port}.evil.example"},
               {"Origin": f"file://"}, {"Origin": f"http://127.0.0.1:{port}/path"}, {"Origin": "garbage"},
               {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"},
               {"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "audio"},
               {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "cors", "Sec-Fetch-Dest": "empty"},
               {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "iframe"},
               {"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "iframe"},
               {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "embed"}]
    for headers in foreign:
        for target in ("/", token_path, tile, "/static/js/bokeh.min.js"):
            status, got, body = http_get(port, target, headers=headers)
            assert status == 403, (headers, target[:30], status)
            assert got["content-type"].startswith("text/plain") and not body.startswith((b"\x89PNG", b"RIFF", b"OggS"))
    own = [{"Origin": f"http://127.0.0.1:{port}"}, {"Origin": f"http://localhost:{port}"},
           {"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "audio"},
           {"Sec-Fetch-Site": "none", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"},
           {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}]
    for headers in own:
        assert http_get(port, token_path, headers=headers)[0] == 200, headers
    assert http_get(port, "/", headers=own[-1])[0] == 200


def test_every_response_forbids_framing(site):
    """X-Frame-Options: DENY and CSP frame-ancestors 'none' on the page, assets, audio, tiles,
    refusals and 404s (plus nosniff and a same-origin resource policy)."""
    port = site["port"]
    token_path = audio_path(_ok(site)["id"].iloc[0])
    cases = [("/", {}), ("/static/js/bokeh.min.js", {}), ("/favicon.ico", {}), (token_path, {}),
             (token_path, {"Range": "bytes=0-9"}), (_tile_url(-10, 10, -10, 10, 16, 16), {}), ("/tile.png?w=0", {}),
             ("/audio/0123456789abcdef", {}), ("/components/this/a/b/c", {}), ("/static/..%2f..%2fx", {}),
             ("/", {"Host": "evil.example"}), ("/", {"Origin": "http://evil.example"})]
    for path, headers in cases:
        status, got, _ = http_get(port, path, headers=headers)
        assert got.get("x-frame-options") == "DENY", (path, status)
        assert got.get("content-security-policy") == "frame-ancestors 'none'", (path, status)
        assert got.get("x-content-type-options") == "nosniff" and got.get("cross-origin-resource-policy") == "same-origin"


def test_audio_ids_cannot_be_derived_from_paths(site):
    """The page sees a keyed token per file; the path-derived manifest id, a token made with
    another key, or any other 32 hex digits get 404, so a page cannot probe for files by path."""
    from klustr_gpu.render.security import audio_token

    port, ok = site["port"], _ok(site)
    row = ok.iloc[0]
    assert http_get(port, audio_path(row["id"]), method="HEAD")[0] == 200
    for path in (f"/audio/{row['id']}", f"/audio/{file_id(row['path'])}",
                 f"/audio/{audio_token(row['id'], b'another-key-0123456789abcdef')}", "/audio/" + "0" * 32,
                 f"/audio/{_token(row['id']).upper()}", f"/audio/{_token(row['id'])[:16]}"):
        status, headers, body = http_get(port, path)
        assert status == 404 and not headers["content-type"].startswith("audio/"), path


def test_audio_tokens_are_keyed_per_server(tmp_path):
    from klustr_gpu.render.security import AudioIndex, audio_token, audio_url, use_audio_key

    ids = [file_id(f"kick/k{i}.wav") for i in range(50)]
    a = AudioIndex({i: tmp_path / f"{i}.wav" for i in ids}, key=b"a" * 32)
    b = AudioIndex({i: tmp_path / f"{i}.wav" for i in ids}, key=b"b" * 32)
    tokens = [a.token(i) for i in ids]
    assert len(set(tokens)) == 50 and all(len(t) == 32 and t not in ids for t in tokens)
    assert [a.resolve(t) for t in tokens] == ids and all(b.resolve(t) is None for t in tokens)
    assert all(a.resolve(i) is None for i in ids)                  # a bare manifest id is no token
    assert a.url(ids[0], 0.75) == f"/audio/{tokens[0]}#t=0.750" == audio_url(ids[0], 0.75, key=b"a" * 32)
    assert audio_token(ids[0], b"a" * 32) == tokens[0]
    assert AudioIndex({}).token(ids[0]) == audio_token(ids[0], use_audio_key())   # default: the process's key
    with pytest.raises(ValueError):
        use_audio_key(b"short")
    for bad in (None, 5, "", "g" * 32, tokens[0] + "0", tokens[0].upper()):
        assert a.resolve(bad) is None


def test_oversize_bodies_and_header_floods_are_refused_and_the_server_survives(site):
    port = site["port"]
    token_path = audio_path(_ok(site)["id"].iloc[0])
    big = f"POST {token_path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {50 << 20}\r\n\r\n".encode() + b"x" * 65536
    status, reply = raw_request(port, big)
    assert status in (None, 400, 405, 413), status
    many = "".join(f"X-H{i}: {'v' * 60}\r\n" for i in range(2000))
    status, reply = raw_request(port, f"GET {token_path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{many}\r\n".encode())
    assert status in (None, 400, 413, 431), status
    status, reply = raw_request(port, f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: {'o' * 50_000}\r\n\r\n".encode())
    assert status in (None, 400, 403, 431), status
    assert http_get(port, token_path, method="HEAD")[0] == 200
