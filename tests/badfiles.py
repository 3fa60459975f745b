"""Make a library mixing good files with every broken case the foundation issue lists.

``make_mixed_library(root)`` returns ``{relative_path: expected}`` where expected is ``"ok"`` or
a substring of the skip reason.
"""
from __future__ import annotations

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
    sf.write(put("bad/tiny.wav", "too short"), tone(44100, 0.002), 44100)
    # a directory named like an audio file: not a file, never listed
    (root / "bad/folder.wav").mkdir(parents=True, exist_ok=True)
    sf.write(root / "bad/folder.wav/inside.wav", tone(44100, 0.2, 900), 44100)
    exp["bad/folder.wav/inside.wav"] = "ok"
    # not audio by extension: never listed
    (root / "notes.txt").write_text("hello")
    # a symlink cycle
    os.symlink("..", root / "good" / "loop")
    return exp
