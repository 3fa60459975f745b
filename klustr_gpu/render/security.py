"""What the server exposes, and nothing more.

* The audio route ``/audio/<token>`` serves only files listed in the manifest with
  ``status="ok"``, looked up by their token (:func:`audio_token`: the manifest id keyed with a
  secret made when the server starts, so a page cannot derive a file's URL from its path), and
  only while the file is still the one scanned (same size and modification time); no part of the
  request is ever used as a path. Anything else (unknown, malformed, encoded traversal, a bare
  manifest id) is a 404.
* Names (file names, labels, paths) are escaped wherever they enter HTML: :func:`esc`.
* The server binds 127.0.0.1 unless told otherwise: :func:`is_loopback`.
"""
from __future__ import annotations

import functools
import hashlib
import html
import io
import ipaddress
import logging
import mimetypes
import re
import secrets
import stat
from pathlib import Path

from tornado import httputil
from tornado.web import HTTPError, StaticFileHandler

from ..store import Project

log = logging.getLogger(__name__)

ID_RE = re.compile(r"[0-9a-f]{16}")               # a manifest id (a hash of the relative path)
TOKEN_RE = re.compile(r"[0-9a-f]{32}")            # what the page sees: keyed, 128 bits
MIN_KEY_BYTES = 16
_KEY: bytes | None = None
AUDIO_TYPES = {
    ".wav": "audio/wav", ".flac": "audio/flac", ".aif": "audio/aiff", ".aiff": "audio/aiff",
    ".ogg": "audio/ogg", ".oga": "audio/ogg", ".opus": "audio/ogg", ".mp3": "audio/mpeg",
    ".m4a": "audio/mp4", ".aac": "audio/aac", ".mp4": "audio/mp4", ".webm": "audio/webm",
    ".wma": "audio/x-ms-wma",
}


def esc(text) -> str:
    """``text`` made safe for HTML text and quoted attributes."""
    return html.escape("" if text is None else str(text), quote=True)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def use_audio_key(key: bytes | None = None) -> bytes:
    """The secret mixed into the audio URLs of this process: ``key`` from now on when given (at
    least 16 bytes; to reproduce URLs across restarts, e.g. in tests), else the current one
    (random, made on first use: every server start gets new URLs)."""
    global _KEY
    if key is not None:
        if not isinstance(key, bytes) or len(key) < MIN_KEY_BYTES:
            raise ValueError(f"the audio key must be at least {MIN_KEY_BYTES} bytes")
        _KEY = bytes(key)
    elif _KEY is None:
        _KEY = secrets.token_bytes(32)
    return _KEY


def audio_token(file_id: str, key: bytes | None = None) -> str:
    """The id a page sees for manifest id ``file_id``: keyed BLAKE2b (a MAC) of the id with
    ``key`` (default :func:`use_audio_key`), 32 hex digits; without the key it cannot be
    computed from a path, and it says nothing about the path."""
    digest = hashlib.blake2b(str(file_id).encode(), key=key or use_audio_key(), digest_size=16)
    return digest.hexdigest()


# Browsers (Chromium, Firefox) cannot play these; the route serves them as 16-bit WAV instead.
TRANSCODE = {".aif", ".aiff"}
TRANSCODE_MAX_BYTES = 256 * 1024 * 1024


@functools.lru_cache(maxsize=32)
def _wav_bytes(path: str, mtime_ns: int) -> bytes:
    import soundfile as sf

    data, sr = sf.read(path, dtype="int16", always_2d=True)
    buf = io.BytesIO()
    sf.write(buf, data, sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def browser_wav(path: Path) -> bytes | None:
    """``path`` decoded to WAV bytes when browsers cannot play its format (and it is not huge)."""
    if path.suffix.lower() not in TRANSCODE:
        return None
    st = path.stat()
    if st.st_size > TRANSCODE_MAX_BYTES:
        return None
    try:
        return _wav_bytes(str(path), st.st_mtime_ns)
    except (RuntimeError, OSError, ValueError) as exc:  # soundfile's LibsndfileError is a RuntimeError
        log.warning("audio: cannot transcode %s: %s", path, exc)
        return None


def audio_type(path: str | Path) -> str:
    ext = Path(path).suffix.lower()
    return AUDIO_TYPES.get(ext) or mimetypes.guess_type(str(path))[0] or "application/octet-stream"


class AudioIndex:
    """id → absolute path of every ``ok`` file of the manifest; a closed list, built once, and
    the tokens the page sees for them (:func:`audio_token` with ``key``, default the process's).

    With ``stats`` (id → (size, mtime) recorded by the scan), :meth:`current` also refuses a file
    that is no longer the one scanned (replaced, e.g. by a link to something else)."""

    def __init__(self, paths: dict[str, Path], stats: dict[str, tuple[int, float]] | None = None, *,
                 key: bytes | None = None):
        self._paths = dict(paths)
        self._stats = dict(stats or {})
        self._key = key or use_audio_key()
        self._ids = {audio_token(i, self._key): i for i in self._paths}

    def token(self, file_id: str) -> str:
        """The token of manifest id ``file_id`` (what ``/audio/<token>`` takes)."""
        return audio_token(file_id, self._key)

    def resolve(self, token: object) -> str | None:
        """The manifest id of a token, or ``None`` for anything malformed or unknown."""
        if not isinstance(token, str) or not TOKEN_RE.fullmatch(token):
            return None
        return self._ids.get(token)

    def url(self, file_id: str, start: float = 0.0) -> str:
        """:func:`audio_url` with this index's key."""
        return audio_url(file_id, start, key=self._key)

    @classmethod
    def from_project(cls, project: Project, *, key: bytes | None = None) -> "AudioIndex":
        man = project.read_manifest()
        man = man[man["status"] == "ok"]
        root = project.library_root
        ids = [str(i) for i in man["id"]]
        return cls({i: root / str(p) for i, p in zip(ids, man["path"])},
                   {i: (int(s), float(m)) for i, s, m in zip(ids, man["size"], man["mtime"])}, key=key)

    def current(self, file_id: object) -> Path | None:
        """:meth:`lookup`, and only while the file on disk is a regular file with the size and
        modification time the scan recorded; else ``None`` (rescan to serve a changed file)."""
        path = self.lookup(file_id)
        if path is None:
            return None
        try:
            st = path.stat()
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        want = self._stats.get(str(file_id))
        if want is not None and (st.st_size != want[0] or abs(st.st_mtime - want[1]) > 1e-3):
            log.warning("audio: %s changed since the scan; not served (rescan the library)", path)
            return None
        return path

    def __len__(self) -> int:
        return len(self._paths)

    def __contains__(self, file_id: object) -> bool:
        return self.lookup(file_id) is not None

    def lookup(self, file_id: object) -> Path | None:
        """The file of ``file_id``, or ``None`` for anything malformed or unknown."""
        if not isinstance(file_id, str) or not ID_RE.fullmatch(file_id):
            return None
        return self._paths.get(file_id)


def audio_url(file_id: str, start: float = 0.0, *, key: bytes | None = None) -> str:
    """The app's URL of manifest id ``file_id``: ``/audio/<token>`` (:func:`audio_token`), with a
    media fragment ``#t=START`` for frame points."""
    if not ID_RE.fullmatch(str(file_id)):
        raise ValueError(f"not a file id: {file_id!r}")
    return f"/audio/{audio_token(file_id, key)}" + (f"#t={float(start):.3f}" if start and start > 0 else "")


class AudioHandler(StaticFileHandler):
    """``GET /audio/<token>``: the manifest file of that token, with Range support; else 404.

    Route it as ``(r"/audio/([^/]*)", AudioHandler, {"index": AudioIndex})``.
    """

    def initialize(self, index: AudioIndex) -> None:  # type: ignore[override]
        super().initialize(path="/")
        self._index = index
        self._file: Path | None = None
        self._in_memory = False

    async def get(self, token: str, include_body: bool = True) -> None:  # type: ignore[override]
        file_id = self._index.resolve(token)
        path = None if file_id is None else self._index.current(file_id)
        if path is None:
            raise HTTPError(404)
        self._file = path
        wav = browser_wav(path)
        if wav is not None:
            self._in_memory = True
            self._send_bytes(wav, "audio/wav", include_body)
            return
        await super().get(token, include_body=include_body)

    def _send_bytes(self, body: bytes, content_type: str, include_body: bool) -> None:
        """A small in-memory response with single-range support (what media elements ask for)."""
        self.set_header("Content-Type", content_type)
        self.set_header("Accept-Ranges", "bytes")
        self.set_extra_headers("")
        start, end = 0, len(body)
        rng = self.request.headers.get("Range")
        parsed = httputil._parse_request_range(rng) if rng else None
        if parsed is not None:
            a, b = parsed
            a = 0 if a is None else (max(0, len(body) + a) if a < 0 else a)
            b = len(body) if b is None else min(b, len(body))
            if a >= len(body) or a >= b:
                self.set_status(416)
                self.set_header("Content-Range", f"bytes */{len(body)}")
                return
            start, end = a, b
            self.set_status(206)
            self.set_header("Content-Range", httputil._get_content_range(start, end, len(body)))
        self.set_header("Content-Length", end - start)
        if include_body:
            self.write(body[start:end])

    def get_absolute_path(self, root: str, path: str) -> str:  # type: ignore[override]
        if self._file is None:  # never reached: get() resolves the file first
            raise HTTPError(404)
        return str(self._file)

    def validate_absolute_path(self, root: str, absolute_path: str) -> str | None:  # type: ignore[override]
        if self._file is None or absolute_path != str(self._file) or not Path(absolute_path).is_file():
            raise HTTPError(404)
        return absolute_path

    def compute_etag(self) -> str | None:
        return None if self._in_memory else super().compute_etag()

    def get_content_type(self) -> str:
        return audio_type(self._file or "")

    def set_extra_headers(self, path: str) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "private, max-age=3600")

    def write_error(self, status_code: int, **kwargs) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(f"{status_code}\n")
