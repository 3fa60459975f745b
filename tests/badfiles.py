"""Make a library mixing good files with every broken case the foundation issue lists.

``make_mixed_library(root)`` returns ``{relative_path: expected}`` where expected is ``"ok"`` or
a substring of the skip reason.
"""
from __future__ import annotations

import errno
import os
import struct
from pathlib import Path

import numpy as np
import soundfile as sf


def tone(sr: int, seconds: float, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    x = (0.5 * np.sin(2 * np.pi * freq * t) * np.exp(-t * 3)).astype(np.float32)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


def write_sparse_long_wav(path: Path, sr: int = 8000, seconds: int = 3600) -> None:
    """An hour-long 16-bit mono WAV with a tone in its first second; the rest is a sparse hole
    (zeros), so the file is large but costs nothing to make."""
    n = sr * seconds
    data_bytes = n * 2
    head = b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE"
    head += b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, sr, sr * 2, 2, 16)
    head += b"data" + struct.pack("<I", data_bytes)
    first = (tone(sr, 1.0) * 32767).astype("<i2").tobytes()
    with open(path, "wb") as fh:
        fh.write(head + first)
        fh.truncate(len(head) + data_bytes)


def make_mixed_library(root: Path) -> dict[str, str]:
    root.mkdir(parents=True, exist_ok=True)
    exp: dict[str, str] = {}

    def put(rel: str, expected: str) -> Path:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        exp[rel] = expected
        return p

    # good files, including the awkward but valid ones
    sf.write(put("good/kick 01.wav", "ok"), tone(44100, 0.5, 60), 44100)
    sf.write(put("good/snare.flac", "ok"), tone(48000, 0.4, 200), 48000)
    sf.write(put("good/hat.aiff", "ok"), tone(22050, 0.2, 5000), 22050)
    sf.write(put("good/ride.ogg", "ok"), tone(44100, 1.0, 700), 44100, format="OGG", subtype="VORBIS")
    sf.write(put("good/ünïcödé ßpace 鼓.wav", "ok"), tone(44100, 0.3, 300), 44100)
    sf.write(put("good/eight_channels.wav", "ok"), tone(48000, 0.3, 330, channels=8), 48000)
    sf.write(put("good/low_8k.wav", "ok"), tone(8000, 0.5, 300), 8000)
    sf.write(put("good/high_192k.wav", "ok"), tone(192000, 0.3, 1000), 192000, subtype="PCM_24")
    write_sparse_long_wav(put("good/hour_long.wav", "ok"))
    try:
        sf.write(put("good/tone.mp3", "ok"), tone(44100, 0.5, 440), 44100, format="MP3")
    except (sf.LibsndfileError, TypeError, ValueError):
        exp.pop("good/tone.mp3")
        (root / "good/tone.mp3").unlink(missing_ok=True)

    # broken files
    put("bad/empty.wav", "empty").write_bytes(b"")
    put("bad/text.wav", "not a readable audio file").write_text("this is not audio\n" * 20)
    corrupt = bytearray((root / "good/kick 01.wav").read_bytes())
    corrupt[8:16] = b"JUNKJUNK"
    put("bad/corrupt_header.wav", "not a readable audio file").write_bytes(bytes(corrupt))
    whole = (root / "good/kick 01.wav").read_bytes()
    put("bad/truncated.wav", "truncated").write_bytes(whole[: len(whole) // 3])
    sf.write(put("bad/silent.wav", "silent"), np.zeros(22050, np.float32), 44100)
    nan = tone(44100, 0.3)
    nan[100:200] = np.nan
    nan[300] = np.inf
    sf.write(put("bad/nan.wav", "NaN"), nan, 44100, subtype="FLOAT")
    sf.write(put("bad/tiny.wav", "ok"), tone(44100, 0.002), 44100)      # short audio is audio (issue 14)
    # a directory named like an audio file: not a file, never listed
    (root / "bad/folder.wav").mkdir(parents=True, exist_ok=True)
    sf.write(root / "bad/folder.wav/inside.wav", tone(44100, 0.2, 900), 44100)
    exp["bad/folder.wav/inside.wav"] = "ok"
    # not audio by extension: never listed
    (root / "notes.txt").write_text("hello")
    # a symlink cycle
    os.symlink("..", root / "good" / "loop")
    return exp


# -- more hostile libraries (issue 5) ----------------------------------------------------------
def good_files(root: Path) -> dict[str, bytes]:
    """One small valid file of every format soundfile writes here, by name -> bytes (for
    corruption): wav (16-bit, float), flac, aiff, ogg."""
    root.mkdir(parents=True, exist_ok=True)
    out: dict[str, bytes] = {}
    for name, kw in [("pcm16.wav", {}), ("float.wav", {"subtype": "FLOAT"}), ("a.flac", {}), ("a.aiff", {}),
                     ("a.ogg", {"format": "OGG", "subtype": "VORBIS"})]:
        p = root / name
        sf.write(p, tone(22050, 0.25, 440, channels=2 if name == "a.flac" else 1), 22050, **kw)
        out[name] = p.read_bytes()
    return out


def corrupt(data: bytes, edits: list[tuple[int, bytes]], truncate_at: int | None = None) -> bytes:
    """``data`` with each ``(offset, bytes)`` overwritten (offsets taken modulo the length),
    optionally cut at ``truncate_at`` (modulo the length + 1)."""
    buf = bytearray(data)
    for off, chunk in edits:
        off %= max(1, len(buf))
        buf[off:off + len(chunk)] = chunk
    if truncate_at is not None:
        del buf[truncate_at % (len(buf) + 1):]
    return bytes(buf)


def make_deep_tree(root: Path, depth: int, name: str = "deep.wav") -> Path:
    """A valid WAV ``depth`` folders below ``root`` (one-letter folder names keep the path
    short enough for PATH_MAX); returns its path."""
    d = root
    for i in range(depth):
        d = d / ("d" if i % 2 else "e")
    d.mkdir(parents=True, exist_ok=True)
    p = d / name
    sf.write(p, tone(22050, 0.3, 500), 22050)
    return p


def make_wide_folder(root: Path, n: int, *, seconds: float = 0.05) -> list[str]:
    """``n`` names for one tiny valid WAV in one folder: hard links to one file (no data written,
    so 100,000 of them take seconds). Returns the relative paths."""
    root.mkdir(parents=True, exist_ok=True)
    first = root / "w000000.wav"
    sf.write(first, tone(8000, seconds, 700), 8000, subtype="PCM_16")
    data = first.read_bytes()
    names = [f"w{i:06d}.wav" for i in range(n)]
    src = first
    for nm in names[1:]:
        try:
            os.link(src, root / nm)
        except OSError as exc:          # EMLINK (ext4: 65,000 links per file): start a new source
            if exc.errno != errno.EMLINK:
                raise
            src = root / nm
            src.write_bytes(data)
    return [f"{root.name}/{nm}" for nm in names]


def add_hostile_cases(root: Path) -> dict[str, str]:
    """Add to a library made by :func:`make_mixed_library`: folders named like audio files
    (with and without audio inside), a deep tree, a FIFO and a dangling symlink named like
    audio, a file with a valid header but a garbage body, a huge declared sample rate.
    Returns ``{relative_path: expected}`` like :func:`make_mixed_library`."""
    exp: dict[str, str] = {}
    (root / "dirs/empty_dir.flac").mkdir(parents=True)
    (root / "dirs/nested.wav/deeper.aiff").mkdir(parents=True)
    deep = make_deep_tree(root / "deeptree", 120)
    exp[deep.relative_to(root).as_posix()] = "ok"
    os.symlink(root / "nowhere.wav", root / "dirs/dangling.wav")
    exp["dirs/dangling.wav"] = "vanished"
    os.mkfifo(root / "dirs/fifo.wav")
    exp["dirs/fifo.wav"] = "not a regular file"
    whole = bytearray((root / "good/kick 01.wav").read_bytes())
    rng = np.random.default_rng(5)
    body = rng.integers(0, 256, len(whole) - 44, dtype=np.uint8).tobytes()
    p = root / "bad/noise_body.wav"       # a valid header, random 16-bit samples: loud noise, usable
    p.write_bytes(bytes(whole[:44]) + body)
    exp["bad/noise_body.wav"] = "ok"
    rate = bytearray(whole)
    rate[24:28] = struct.pack("<I", 4_000_000_000)
    (root / "bad/huge_rate.wav").write_bytes(bytes(rate))
    exp["bad/huge_rate.wav"] = "*"        # libsndfile or our rate check
    chans = bytearray(whole)
    chans[22:24] = struct.pack("<H", 60000)
    (root / "bad/many_channels.wav").write_bytes(bytes(chans))
    exp["bad/many_channels.wav"] = "*"      # any reason
    latin1 = root / os.fsdecode(b"bad/caf\xe9 latin-1 name.wav")   # not UTF-8: a name parquet cannot hold
    latin1.write_bytes(whole)
    exp["bad/caf\ufffd latin-1 name.wav"] = "not valid UTF-8"
    return exp


def small_project(demo_library: Path, root: Path, n: int, config) -> tuple[Path, Path]:
    """A small healthy project: the first ``n`` demo WAVs copied (labels from their folders),
    scanned, with the config's features and a PCA embedding ``mfcc-pca``. Returns (library, project)."""
    import shutil

    from klustr_gpu import Project
    from klustr_gpu import compute_features
    from klustr_gpu import scan
    from klustr_gpu import embed

    lib = root / "lib"
    for f in sorted(demo_library.rglob("*.wav"))[:n]:
        dst = lib / f.parent.name / f.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, dst)
    proj = Project(root / "proj")
    proj.write_config(config)
    scan(lib, proj, label_from="parent", progress=False)
    compute_features(proj, config, progress=False)
    embed(proj, config, name="mfcc-pca", progress=False)
    return lib, proj.path
