"""The served app over HTTP on 127.0.0.1: the audio route and its refusals (no browser)."""
from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from klustr_gpu.store import Project
from test_render import write_fake_embedding

STARTUP_S = 120
AUDIO_KEY = b"klustr-test-audio-key-0123456789"     # the servers of the tests use this secret


def audio_path(file_id: str) -> str:
    """``/audio/<token>`` of a manifest id on a server started by :func:`running_server`."""
    from klustr_gpu.render.security import audio_token

    return f"/audio/{audio_token(str(file_id), AUDIO_KEY)}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port: int, path: str, headers: dict | None = None, method: str = "GET"):
    """A raw request: the path is sent exactly as given (no client-side normalisation)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


@contextlib.contextmanager
def running_server(project: Path, log_path: Path, **serve_kwargs) -> Iterator[int]:
    """``serve(project, audio_key=AUDIO_KEY, **serve_kwargs)`` in a subprocess on a free port
    (loopback unless ``host=`` says otherwise); yields the port once it answers."""
    port = free_port()
    kwargs = ", ".join(f"{k}={v!r}" for k, v in {"audio_key": AUDIO_KEY, **serve_kwargs}.items())
    code = f"import klustr_gpu as kg; kg.serve({str(project)!r}, port={port}, {kwargs})"
    some_id = Project(project).read_manifest()["id"].iloc[0]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
        try:
            deadline = time.monotonic() + STARTUP_S
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"server exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
                try:
                    if http_get(port, audio_path(some_id), method="HEAD")[0] == 200:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"server did not answer within {STARTUP_S} s: {log_path.read_text()[-2000:]}")
                time.sleep(0.5)
            yield port
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)


@pytest.fixture(scope="module")
def served(demo_project, tmp_path_factory):
    dst = tmp_path_factory.mktemp("serve") / "project"
    shutil.copytree(demo_project, dst)
    write_fake_embedding(dst)
    p = Project(dst)
    man = p.read_manifest()
    skipped = man["id"].iloc[-1]
    p.mark_skipped({skipped: "test: skipped"})
    with running_server(dst, dst.parent / "server.log") as port:
        yield port, p.read_manifest(), skipped, dst


def test_audio_route_serves_manifest_files(served):
    port, man = served[:2]
    ok = man[man["status"] == "ok"]
    row = ok[ok["path"].str.endswith(".flac")].iloc[0]
    status, headers, body = http_get(port, audio_path(row['id']))
    assert status == 200 and headers["content-type"].startswith("audio/")
    assert body == Project(served[3]).audio_path(row["path"]).read_bytes()
    assert headers.get("x-content-type-options") == "nosniff"
    status, headers, body = http_get(port, audio_path(row['id']), headers={"Range": "bytes=0-99"})
    assert status == 206 and len(body) == 100 and headers["content-range"].startswith("bytes 0-99/")


def test_aiff_is_served_as_wav_with_ranges(served):
    import io

    import soundfile as sf

    port, man = served[:2]
    ok = man[man["status"] == "ok"]
    row = ok[ok["path"].str.endswith(".aiff")].iloc[0]
    status, headers, body = http_get(port, audio_path(row['id']))
    assert status == 200 and headers["content-type"] == "audio/wav" and body[:4] == b"RIFF"
    data, sr = sf.read(io.BytesIO(body))
    assert sr == int(row["sample_rate"]) and len(data) == int(row["frames"])
    status, headers, part = http_get(port, audio_path(row['id']), headers={"Range": "bytes=10-19"})
    assert status == 206 and part == body[10:20] and headers["content-range"] == f"bytes 10-19/{len(body)}"
    status, headers, _ = http_get(port, audio_path(row['id']), headers={"Range": f"bytes={len(body) + 5}-"})
    assert status == 416


def test_every_format_has_an_audio_content_type(served):
    port, man = served[:2]
    ok = man[man["status"] == "ok"]
    for fmt, row in ok.groupby(ok["path"].str.rsplit(".", n=1).str[-1]).first().iterrows():
        status, headers, _ = http_get(port, audio_path(row['id']), method="HEAD")
        assert status == 200 and headers["content-type"].startswith("audio/"), fmt


@pytest.mark.parametrize("path", [
    "/audio/../../../../etc/passwd",
    "/audio/..%2f..%2f..%2fetc%2fpasswd",
    "/audio/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/audio/%252e%252e%252fetc%252fpasswd",
    "/audio//etc/passwd",
    "/audio/%2fetc%2fpasswd",
    "/audio/kick/kick_000000.wav",
    "/audio/0123456789abcdef",          # well-formed, unknown
    "/audio/0123456789ABCDEF0",
    "/audio/",
    "/audio/%00",
    "/audio/<script>alert(1)</script>",
])
def test_audio_route_refuses_everything_else(served, path):
    port = served[0]
    status, headers, body = http_get(port, path)
    assert status == 404, (path, status)
    assert b"root:" not in body and not headers.get("content-type", "").startswith("audio/")
    assert b"<script>" not in body


def test_skipped_and_path_like_ids_are_404(served):
    port, man, skipped = served[:3]
    assert http_get(port, audio_path(skipped))[0] == 404
    row = man[man["status"] == "ok"].iloc[0]
    assert http_get(port, f"/audio/{row['path']}")[0] == 404
    assert http_get(port, f"/audio/{row['id']}")[0] == 404           # the id a page could derive from the path
    assert http_get(port, audio_path(row["id"]))[0] == 200


def test_app_page_is_served_on_loopback(served):
    port = served[0]
    status, headers, body = http_get(port, "/")
    assert status == 200 and b"bokeh" in body.lower()


def test_serve_binds_loopback_by_default():
    import inspect

    from klustr_gpu import serve
    from klustr_gpu.render.security import is_loopback

    assert inspect.signature(serve).parameters["host"].default == "127.0.0.1"
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2") and not is_loopback("example.org")


def _ws_handshake(port: int, origin: str, host: str | None = None) -> int:
    """The status of a websocket handshake with a fresh session token, from ``origin``."""
    import base64
    import re

    headers = {"Host": host} if host else {}
    status, _, page = http_get(port, "/", headers=headers)
    assert status == 200, status
    token = re.search(rb'"token"\s*:\s*"([^"]+)"', page).group(1).decode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/ws", headers={
            **headers, "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(), "Origin": origin,
            "Sec-WebSocket-Protocol": f"bokeh, {token}"})
        return conn.getresponse().status
    finally:
        conn.close()


def test_all_interfaces_do_not_mean_every_origin(served, tmp_path):
    """``--host 0.0.0.0 --allow-host klustr-box.test``: the websocket (and every request) is
    accepted from the loopback names and the allowed name at the server's port, nowhere else;
    0.0.0.0 never means every origin."""
    project = served[3]
    log = tmp_path / "wide.log"
    with running_server(project, log, host="0.0.0.0", allow_hosts=["klustr-box.test"]) as port:
        box = f"klustr-box.test:{port}"
        assert _ws_handshake(port, f"http://127.0.0.1:{port}") == 101
        assert _ws_handshake(port, f"http://localhost:{port}") == 101
        assert _ws_handshake(port, f"http://{box}", host=box) == 101
        for origin in ("http://evil.example", f"http://evil.example:{port}", "null", f"http://klustr-box.test:{port + 1}",
                       f"http://0.0.0.0:{port}", "http://klustr-box.test"):
            assert _ws_handshake(port, origin) == 403, origin
        assert http_get(port, "/", headers={"Host": f"evil.example:{port}"})[0] == 400
        assert http_get(port, "/", headers={"Host": f"0.0.0.0:{port}"})[0] == 400
    text = log.read_text()
    assert "listening on all interfaces" in text and "'*'" not in text


def test_host_policy_names_and_origins():
    from klustr_gpu.errors import UsageError
    from klustr_gpu.render.server import host_policy

    local = host_policy("127.0.0.1", 5006)
    assert local.names == {"localhost", "127.0.0.1", "::1"}
    assert local.websocket_origins() == ["127.0.0.1:5006", "[::1]:5006", "localhost:5006"]
    wide = host_policy("0.0.0.0", 5006, ["Box.LAN", "proxy.example:443"])
    assert wide.names == {"localhost", "127.0.0.1", "::1", "box.lan", "proxy.example"}
    assert "*" not in wide.websocket_origins() and "proxy.example:443" in wide.websocket_origins()
    assert wide.origin_ok("http://box.lan:5006") and wide.origin_ok("https://proxy.example")
    assert not wide.origin_ok("http://box.lan:5007") and not wide.origin_ok("http://0.0.0.0:5006")
    assert host_policy("192.168.1.5", 80).host_ok("192.168.1.5:80")          # the bound address itself
    assert host_policy("::1", 5006).host_ok("[::1]:5006")
    assert host_policy("0.0.0.0", 5006, ["*"]).websocket_origins() == ["*"]
    for bad in ("bad name", "a/b", "evil.example:99999", "", "[::1", "a..b"):
        with pytest.raises(UsageError):
            host_policy("127.0.0.1", 5006, [bad])


def test_serve_cli_passes_allowed_hosts(demo_project, monkeypatch):
    import klustr_gpu.render.server as server
    from klustr_gpu.cli import main

    got = {}
    monkeypatch.setattr(server, "serve", lambda project, **kw: got.update(kw))
    assert main(["serve", str(demo_project), "--host", "0.0.0.0", "--allow-host", "box.lan",
                 "--allow-host", "proxy.example:443"]) == 0
    assert got["allow_hosts"] == ["box.lan", "proxy.example:443"] and got["host"] == "0.0.0.0"
    assert main(["serve", str(demo_project)]) == 0 and got["allow_hosts"] == []


def test_serve_cli_refuses_a_malformed_host_name(demo_project, capsys):
    from klustr_gpu.cli import main

    assert main(["serve", str(demo_project), "--allow-host", "bad name"]) == 2
    assert "--allow-host" in capsys.readouterr().err
