"""Audio headers parsed straight from the first (and for Ogg the last) few KiB of a file.

The scan needs four numbers per file (format, sample rate, channels, frames) and nothing of the
audio. :func:`parse` reads them for the common layouts of WAV (PCM / IEEE float, plain or
extensible), AIFF / AIFF-C (uncompressed), FLAC and Ogg Vorbis from at most a few small reads
(``pread``), about 30x cheaper than opening the file with libsndfile (which, for Ogg, decodes
the stream's set-up packets). Anything it is not sure of, a layout it does not know, an
inconsistent field, a data chunk that runs past the end of the file, gives ``None``: the
caller then asks libsndfile (:func:`klustr_gpu.library.decode.read_info`), which gives the
same numbers or the same skip reason as before. A test checks that both agree on every file
of the demo corpus and on randomly corrupted files (``tests/test_headers.py``).
"""
from __future__ import annotations

import os
import struct
from typing import Callable, NamedTuple

from ..errors import SkipFile

#: Bytes read from the start of a file for its header (WAV/AIFF chunks beyond it are found
#: with further small reads).
HEAD_BYTES = 16384
#: Bytes read from the end of an Ogg file to find its last page (its granule position is the
#: stream's length in samples).
OGG_TAIL_BYTES = 65536


class Header(NamedTuple):
    format: str          # "wav", "aiff", "flac", "ogg" (the manifest's format names)
    sample_rate: int
    channels: int
    frames: int


Reader = Callable[[int, int], bytes]      # (offset, n) -> up to n bytes at offset


def parse(read: Reader, size: int) -> Header | None:
    """The header of a file of ``size`` bytes whose bytes ``read(offset, n)`` returns, or None
    when this parser is not sure (then ask libsndfile)."""
    head = read(0, min(size, HEAD_BYTES))
    if len(head) < 12:
        return None
    try:
        if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
            return _wav(head, read, size)
        if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
            return _aiff(head, read, size)
        if head[:4] == b"fLaC":
            return _flac(head, read, size)
        if head[:4] == b"OggS":
            return _ogg(head, read, size)
    except (struct.error, IndexError, ValueError, OverflowError):
        return None
    return None


def reader(fd: int) -> Reader:
    """``read(offset, n)`` on an open file descriptor (``os.pread``: no shared file position)."""
    return lambda offset, n: os.pread(fd, n, offset)


def _chunk(head: bytes, read: Reader, pos: int, n: int) -> bytes:
    """``n`` bytes at ``pos``, from ``head`` when it holds them, else read."""
    if pos + n <= len(head):
        return head[pos:pos + n]
    return read(pos, n)


# -- WAV -------------------------------------------------------------------------------------------
_PCM, _FLOAT, _EXTENSIBLE = 1, 3, 0xFFFE


def _wav(head: bytes, read: Reader, size: int) -> Header | None:
    pos, fmt = 12, None
    for _ in range(64):                               # chunks before "data" (fmt, LIST, fact, ...)
        hdr = _chunk(head, read, pos, 8)
        if len(hdr) < 8:
            return None
        cid, n = hdr[:4], struct.unpack("<I", hdr[4:])[0]
        body = pos + 8
        if cid == b"fmt ":
            if n < 16 or n > 4096:
                return None
            fmt = _wav_fmt(_chunk(head, read, body, n))
            if fmt is None:
                return None
        elif cid == b"data":
            if fmt is None or n == 0 or n == 0xFFFFFFFF or body + n > size:
                return None                           # no fmt first, streaming size, or truncated
            sr, ch, align = fmt
            return Header("wav", sr, ch, n // align)
        elif cid in (b"RIFF", b"WAVE", b"ds64") or not cid.isascii():
            return None
        pos = body + n + (n & 1)
        if pos + 8 > size:
            return None
    return None


def _wav_fmt(b: bytes) -> tuple[int, int, int] | None:
    """(sample rate, channels, block align) of a PCM / float ``fmt `` chunk, else None."""
    tag, ch, sr, _rate, align, bits = struct.unpack("<HHIIHH", b[:16])
    if tag == _EXTENSIBLE:
        if len(b) < 40 or struct.unpack("<H", b[16:18])[0] < 22:
            return None
        tag = struct.unpack("<H", b[24:26])[0]        # the sub-format GUID's first two bytes
        if b[26:40] != b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71":
            return None
    ok_bits = {_PCM: (8, 16, 24, 32), _FLOAT: (32, 64)}.get(tag)
    if ok_bits is None or bits not in ok_bits or not 1 <= ch <= 1024 or not 1 <= sr <= 10_000_000:
        return None
    if align != ch * bits // 8:
        return None
    return sr, ch, align


# -- AIFF ------------------------------------------------------------------------------------------
def _extended(b: bytes) -> float:
    """An IEEE 754 80-bit extended float (AIFF's sample rate)."""
    exp = struct.unpack(">H", b[:2])[0]
    mant = struct.unpack(">Q", b[2:10])[0]
    sign = -1.0 if exp & 0x8000 else 1.0
    exp &= 0x7FFF
    if exp == 0 and mant == 0:
        return 0.0
    if exp == 0x7FFF:
        raise ValueError("not a finite sample rate")
    return sign * mant * 2.0 ** (exp - 16383 - 63)


def _aiff(head: bytes, read: Reader, size: int) -> Header | None:
    aifc = head[8:12] == b"AIFC"
    pos, comm = 12, None
    for _ in range(64):
        hdr = _chunk(head, read, pos, 8)
        if len(hdr) < 8:
            return None
        cid, n = hdr[:4], struct.unpack(">I", hdr[4:])[0]
        body = pos + 8
        if cid == b"COMM":
            if n < 18 or n > 4096:
                return None
            comm = _aiff_comm(_chunk(head, read, body, n), aifc)
            if comm is None:
                return None
        elif cid == b"SSND":
            if comm is None or n < 8 or body + n > size:
                return None
            sr, ch, frames, width = comm
            offset = struct.unpack(">I", _chunk(head, read, body, 4))[0]
            if offset != 0 or (n - 8) // (ch * width) != frames:
                return None                           # libsndfile would say more: ask it
            return Header("aiff", sr, ch, frames)
        elif not cid.isascii() or cid in (b"FORM",):
            return None
        pos = body + n + (n & 1)
        if pos + 8 > size:
            return None
    return None


def _aiff_comm(b: bytes, aifc: bool) -> tuple[int, int, int, int] | None:
    ch, frames, bits = struct.unpack(">HIH", b[:8])
    rate = _extended(b[8:18])
    if aifc:
        if len(b) < 22 or b[18:22] not in (b"NONE", b"twos"):
            return None
    if bits not in (8, 16, 24, 32) or not 1 <= ch <= 1024 or frames == 0:
        return None
    if rate != int(rate) or not 1 <= rate <= 10_000_000:
        return None
    return int(rate), ch, frames, bits // 8


# -- FLAC ------------------------------------------------------------------------------------------
def _flac(head: bytes, read: Reader, size: int) -> Header | None:
    b = _chunk(head, read, 4, 38)
    if len(b) < 38 or (b[0] & 0x7F) != 0 or struct.unpack(">I", b"\0" + b[1:4])[0] != 34:
        return None
    info = b[4:38]
    min_block, max_block = struct.unpack(">HH", info[:4])
    x = int.from_bytes(info[10:18], "big")
    sr, ch, bits, frames = x >> 44, ((x >> 41) & 0x7) + 1, ((x >> 36) & 0x1F) + 1, x & ((1 << 36) - 1)
    if not (16 <= min_block <= max_block) or sr == 0 or sr > 655350 or bits not in (8, 16, 24) or frames == 0:
        return None
    pos, last = 4, bool(b[0] & 0x80)                  # walk the other metadata blocks' headers
    pos += 4 + 34
    for _ in range(256):
        if last:
            break
        hdr = _chunk(head, read, pos, 4)
        if len(hdr) < 4 or (hdr[0] & 0x7F) in (0, 127):
            return None
        last = bool(hdr[0] & 0x80)
        pos += 4 + int.from_bytes(hdr[1:4], "big")
        if pos > size:
            return None
    else:
        return None
    if _chunk(head, read, pos, 2)[:1] != b"\xff":      # the first audio frame's sync code
        return None
    return Header("flac", sr, ch, frames)


# -- Ogg Vorbis ------------------------------------------------------------------------------------
def _ogg_page(b: bytes, at: int) -> tuple[int, int, int, int] | None:
    """(header type, granule position, serial, page length) of the Ogg page at ``at``."""
    if b[at:at + 4] != b"OggS" or b[at + 4] != 0 or at + 27 > len(b):
        return None
    htype, granule, serial = struct.unpack("<BqI", b[at + 5:at + 18])
    nseg = b[at + 26]
    if at + 27 + nseg > len(b):
        return None
    return htype, granule, serial, 27 + nseg + sum(b[at + 27:at + 27 + nseg])


def _ogg(head: bytes, read: Reader, size: int) -> Header | None:
    first = _ogg_page(head, 0)
    if first is None or first[0] != 0x02:             # a lone beginning-of-stream page
        return None
    body = 27 + head[26]
    pkt = head[body:body + 30]
    if len(pkt) < 30 or pkt[:7] != b"\x01vorbis" or pkt[29] & 1 != 1:
        return None
    version, ch, sr = struct.unpack("<IBI", pkt[7:16])
    if version != 0 or ch == 0 or sr == 0:
        return None
    serial = first[2]
    start = max(0, size - OGG_TAIL_BYTES)
    tail = head if start == 0 and len(head) == size else read(start, size - start)
    at = tail.rfind(b"OggS")
    while at >= 0:                                    # the last whole page of this stream
        page = _ogg_page(tail, at)
        if page is not None and page[2] == serial and at + page[3] <= len(tail):
            if not page[0] & 0x04 or start + at + page[3] != size or page[1] <= 0:
                return None                           # not a cleanly ended stream: ask libsndfile
            return Header("ogg", sr, ch, page[1])
        at = tail.rfind(b"OggS", 0, at)
    return None


# -- one file, as the scan reads it ------------------------------------------------------------------
#: libsndfile's format names -> the manifest's
SF_FORMATS = {"WAV": "wav", "WAVEX": "wav", "FLAC": "flac", "AIFF": "aiff", "OGG": "ogg", "MP3": "mp3", "RF64": "wav"}


class Probe(NamedTuple):
    """What the scan records of one file: its identity (size, mtime in ns, from ``fstat`` of the
    descriptor the header was read through), the header, or the reason there is none."""

    size: int
    mtime_ns: int
    format: str
    sample_rate: int
    channels: int
    frames: int
    reason: str | None


def probe(path: str, timeout: float = 0.0) -> Probe:
    """Identity and header of ``path`` from a few KiB (libsndfile only for layouts :func:`parse`
    leaves to it), within ``timeout`` seconds (0: no limit; enforced in a main thread only)."""
    from ..timeouts import deadline

    size = mtime = 0
    fmt = os.path.splitext(path)[1].lower().lstrip(".")
    try:
        with deadline(timeout, lambda: SkipFile(f"header read timed out after {timeout:g} s")):
            fd = _open(path)
            try:
                st = os.fstat(fd)
                size, mtime = st.st_size, st.st_mtime_ns
                if not _is_regular(st.st_mode):
                    raise SkipFile("not a regular file")
                if size == 0:
                    raise SkipFile("empty file (0 bytes)")
                h = parse(reader(fd), size)
            finally:
                os.close(fd)
            if h is None:
                h = _libsndfile(path)
    except SkipFile as exc:
        return Probe(size, mtime, fmt, 0, 0, 0, exc.reason)
    except OSError as exc:
        return Probe(size, mtime, fmt, 0, 0, 0, f"cannot read: {exc.strerror or exc}")
    return Probe(size, mtime, h.format, h.sample_rate, h.channels, h.frames, None)


def probe_many(paths: list[str], timeout: float) -> list[Probe]:
    """A scan worker's task: :func:`probe` of each path."""
    return [probe(p, timeout) for p in paths]


def _open(path: str) -> int:
    """A read-only descriptor (non-blocking, so a FIFO named like audio cannot hang the open)."""
    try:
        return os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise SkipFile("file vanished during the scan") from None
    except PermissionError:
        raise SkipFile("permission denied") from None


def _is_regular(mode: int) -> bool:
    import stat

    return stat.S_ISREG(mode)


def _libsndfile(path: str) -> Header:
    from .decode import read_info

    info = read_info(path)
    return Header(SF_FORMATS.get(info.format, info.format.lower()), int(info.samplerate), int(info.channels),
                  int(info.frames))

