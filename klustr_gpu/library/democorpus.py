"""A synthetic, labelled one-shot drum library for demos, tests and benchmarks.

``demo_corpus(DIR, n=2000)`` writes ``DIR/<class>/<class>_<i>.<ext>`` for the classes kick,
snare, clap, hihat, tom, ride and crash, plus ``DIR/labels.csv``. Every sound is drawn with
randomised pitch, decay, noise colour, transient and level, so the classes overlap the way
real kits do (a high tom near a low snare, an open hi-hat near a short crash). Files come in
mixed formats (16/24-bit and float WAV, FLAC, AIFF, OGG Vorbis), sample rates (22.05, 44.1,
48, 96 kHz) and channel counts (mono, stereo). Generation streams file by file: memory stays
small whatever ``n``.

``long_recordings(DIR, hours=10, files=4)`` writes long mono recordings (drum hits over a
drifting noise floor) for frame mode: tens of hours, millions of frames, streamed block by block.
"""
from __future__ import annotations

import csv
import json
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy import signal
from tqdm.auto import tqdm

from ..errors import UsageError
from ..store import atomic_path

CLASSES = ("kick", "snare", "clap", "hihat", "tom", "ride", "crash")
RATES = (22050, 44100, 44100, 48000, 48000, 96000)
FORMATS = (  # (extension, soundfile format, subtype)
    ("wav", "WAV", "PCM_16"), ("wav", "WAV", "PCM_24"), ("wav", "WAV", "FLOAT"),
    ("flac", "FLAC", "PCM_16"), ("aiff", "AIFF", "PCM_16"), ("ogg", "OGG", "VORBIS"),
)


def _env(t: np.ndarray, decay: float, attack: float = 0.001) -> np.ndarray:
    return np.minimum(1.0, t / max(attack, 1e-4)) * np.exp(-t / decay)


def _noise(rng: np.random.Generator, n: int, colour: float) -> np.ndarray:
    """Noise with a 1/f^colour power spectrum (0 white, 1 pink, 2 brown, -1 blue)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(spec.size, dtype=np.float64)
    f[0] = 1.0
    out = np.fft.irfft(spec / f ** (colour / 2.0), n)
    return out / (np.max(np.abs(out)) + 1e-12)


def _band(x: np.ndarray, sr: int, lo: float | None, hi: float | None, order: int = 2) -> np.ndarray:
    nyq = sr / 2.0
    if lo and hi:
        sos = signal.butter(order, [lo / nyq, min(hi / nyq, 0.99)], btype="band", output="sos")
    elif lo:
        sos = signal.butter(order, min(lo / nyq, 0.99), btype="high", output="sos")
    else:
        sos = signal.butter(order, min(hi / nyq, 0.99), btype="low", output="sos")
    return signal.sosfilt(sos, x)


def _sweep(t: np.ndarray, f_end: float, ratio: float, speed: float) -> np.ndarray:
    """Phase of a sine gliding from f_end*ratio down to f_end with time constant ``speed``."""
    freq = f_end * (1.0 + (ratio - 1.0) * np.exp(-t / speed))
    return 2 * np.pi * np.cumsum(freq) / (1.0 / (t[1] - t[0]) if t.size > 1 else 1.0)


def synth(kind: str, sr: int, rng: np.random.Generator) -> np.ndarray:
    """One one-shot of class ``kind`` at ``sr`` Hz, float64 mono, peak about the drawn level."""
    u = rng.uniform
    if kind == "kick":
        dur, decay = u(0.35, 0.9), u(0.08, 0.45)
    elif kind == "tom":
        dur, decay = u(0.4, 1.0), u(0.12, 0.5)
    elif kind in ("snare", "clap"):
        dur, decay = u(0.25, 0.7), u(0.05, 0.25)
    elif kind == "hihat":
        dur, decay = u(0.1, 0.9), u(0.02, 0.35)
    else:  # ride, crash
        dur, decay = u(1.0, 2.5), u(0.4, 1.6)
    n = int(dur * sr)
    t = np.arange(n) / sr
    colour = u(-0.8, 1.5)
    noise = _noise(rng, n, colour)
    click = _band(rng.standard_normal(n), sr, 1500, None) * _env(t, u(0.001, 0.006)) * u(0.0, 0.6)
    if kind == "kick":
        x = np.sin(_sweep(t, u(40, 85), u(2.0, 6.0), u(0.01, 0.05))) * _env(t, decay)
        x += 0.15 * u(0, 1) * _band(noise, sr, None, 400) * _env(t, decay * 0.5)
    elif kind == "tom":
        f0 = u(75, 300)
        x = np.sin(_sweep(t, f0, u(1.1, 1.8), u(0.02, 0.08))) * _env(t, decay)
        x += u(0.1, 0.4) * np.sin(_sweep(t, f0 * u(1.45, 1.65), 1.3, 0.05)) * _env(t, decay * 0.6)
        x += 0.2 * u(0, 1) * _band(noise, sr, 200, 2000) * _env(t, decay * 0.3)
    elif kind == "snare":
        body = np.sin(_sweep(t, u(150, 280), u(1.1, 1.6), 0.02)) * _env(t, u(0.03, 0.12))
        wires = _band(noise, sr, u(1000, 3000), min(u(7000, 14000), 0.45 * sr)) * _env(t, decay)
        x = u(0.3, 1.0) * body + u(0.6, 1.2) * wires
    elif kind == "clap":
        x = np.zeros(n)
        bursts = int(rng.integers(3, 6))
        gap = u(0.006, 0.016)
        for b in range(bursts):
            tb = t - b * gap
            on = tb >= 0
            d = decay if b == bursts - 1 else u(0.004, 0.012)
            x[on] += _env(tb[on], d, attack=0.0005)
        x *= _band(noise, sr, u(700, 1400), min(u(2500, 6000), 0.45 * sr), order=3)
    elif kind == "hihat":
        partials = sum(np.sign(np.sin(2 * np.pi * f * t)) for f in rng.uniform(300, 900, 6))
        metal = _band(partials / 6.0, sr, min(6500, 0.35 * sr), None, order=4)
        x = (u(0.4, 1.0) * _band(noise, sr, min(u(5000, 9000), 0.4 * sr), None, order=4) + u(0.0, 0.6) * metal)
        x *= _env(t, decay)
    else:
        freqs = rng.uniform(250, min(9000, 0.4 * sr), 24 if kind == "ride" else 12)
        metal = sum(np.sin(2 * np.pi * f * t + u(0, 6.28)) * np.exp(-t / (decay * u(0.4, 1.2))) for f in freqs)
        metal /= len(freqs) ** 0.5
        if kind == "ride":
            bell = np.sin(2 * np.pi * u(500, 900) * t) * _env(t, decay * 0.5) * u(0.2, 0.8)
            x = 0.6 * metal + bell + 0.25 * _band(noise, sr, 4000, None) * _env(t, decay * 0.5)
        else:
            wash = _band(noise, sr, u(800, 3000), None) * _env(t, decay, attack=u(0.002, 0.03))
            x = u(0.8, 1.3) * wash + u(0.1, 0.4) * metal
    x = x + click
    x /= np.max(np.abs(x)) + 1e-12
    return x * u(0.2, 0.98)


#: What a directory's generated files were made with; a run with other settings would keep
#: the old files that share a name and leave the others lying next to the new ones.
MARKER = ".klustr-demo-corpus.json"


def _claim(root: Path, kind: str, settings: dict) -> None:
    """Record ``settings`` for ``kind`` in ``root``'s marker, or refuse when the directory
    already holds that kind of corpus made with other settings."""
    marker = root / MARKER
    try:
        held = json.loads(marker.read_text(encoding="utf-8")) if marker.is_file() else {}
    except (OSError, ValueError):
        held = {}
    old = held.get(kind)
    if old is not None and old != settings:
        differ = ", ".join(f"{k} {old.get(k)!r} (now {v!r})" for k, v in settings.items() if old.get(k) != v)
        raise UsageError(f"{root} already holds {kind} made with other settings: {differ}; "
                         "use a new directory, or the same settings to extend it")
    if old is None:
        held[kind] = settings
        with atomic_path(marker, ".json") as tmp:
            tmp.write_text(json.dumps(held, indent=1), encoding="utf-8")


def _write_one(args: tuple[str, int, int, str]) -> tuple[str, str]:
    root, i, seed, kind = args
    rng = np.random.default_rng(seed)
    sr = int(rng.choice(RATES))
    ext, fmt, subtype = FORMATS[int(rng.integers(len(FORMATS)))]
    rel = f"{kind}/{kind}_{i:06d}.{ext}"
    path = Path(root) / rel
    if path.is_file() and path.stat().st_size > 0:   # written by an earlier run (writes are atomic)
        return rel, kind
    x = synth(kind, sr, rng)
    data = np.stack([x, x * rng.uniform(0.7, 1.0)], axis=1) if rng.random() < 0.4 else x
    with atomic_path(path, "." + ext) as tmp:
        sf.write(str(tmp), data.astype(np.float32), sr, format=fmt, subtype=subtype)
    return rel, kind


def _ordered_map(pool: ProcessPoolExecutor, fn, jobs: Iterable, window: int) -> Iterator:
    """``pool.map(fn, jobs)`` with at most ``window`` jobs in flight, so neither the job list nor
    the pending futures grow with the corpus (``Executor.map`` submits everything up front)."""
    pending: deque = deque()
    for job in jobs:
        pending.append(pool.submit(fn, job))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def demo_corpus(
    directory: str | Path,
    *,
    n: int = 2000,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Write ``n`` labelled one-shots (classes in equal shares) under ``directory``.

    Streams: memory stays bounded for any ``n`` (100,000+ files), and labels.csv is written as
    files finish. File ``i`` depends only on ``(seed, i)``, so a larger corpus extends a smaller
    one, and a rerun (after an interruption, or with a larger ``n``) keeps the files that exist.
    A directory remembers its seed (``.klustr-demo-corpus.json``): another seed there is a
    :class:`UsageError`, since it would keep the old seed's files. Returns the path of labels.csv.
    """
    root = Path(directory).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    _claim(root, "one-shots", {"seed": int(seed)})
    jobs = ((str(root), i, seed * 1_000_003 + i, CLASSES[i % len(CLASSES)]) for i in range(n))
    workers = workers or min(4, os.cpu_count() or 1)
    labels = root / "labels.csv"
    bar = tqdm(total=n, desc="demo corpus", unit=" files", disable=not progress)
    with atomic_path(labels) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh, \
            ProcessPoolExecutor(max_workers=workers) as pool:
        w = csv.writer(fh)
        w.writerow(["path", "label"])
        for rel, kind in _ordered_map(pool, _write_one, jobs, window=64 * workers):
            w.writerow((rel, kind))
            bar.update()
    bar.close()
    return labels


def _write_long(args: tuple[str, int, int, int, int, float]) -> str:
    path_s, length, sr, seed, k, rate = args
    path = Path(path_s)
    if path.is_file():
        try:
            if sf.info(path_s).frames == length:
                return path_s
        except RuntimeError:
            pass
    rng = np.random.default_rng([seed, k])
    # a bank of hits, reused with random gains: synthesising every hit would cost ~20x more
    kinds = [CLASSES[int(rng.integers(len(CLASSES)))] for _ in range(192)]
    bank = [synth(kind, sr, rng)[: 3 * sr] for kind in kinds]
    block = 60 * sr
    tail = np.zeros(0)                           # the part of hits that rings into the next block
    with atomic_path(path, ".wav") as tmp, sf.SoundFile(str(tmp), "w", samplerate=sr, channels=1,
                                                         format="WAV", subtype="PCM_16") as fh:
        for start in range(0, length, block):
            m = min(block, length - start)
            buf = np.zeros(m + 3 * sr)
            buf[:tail.size] += tail
            pole = rng.uniform(0.0, 0.95)        # the noise floor's colour drifts minute by minute
            floor = signal.lfilter([1.0 - pole], [1.0, -pole], rng.standard_normal(m))
            buf[:m] += 10 ** rng.uniform(-3.5, -2.5) / (np.std(floor) + 1e-12) * floor
            for _ in range(int(rng.poisson(rate * m / sr))):
                hit = bank[int(rng.integers(len(bank)))]
                at = int(rng.integers(0, m))
                buf[at:at + hit.size] += rng.uniform(0.1, 1.0) * hit
            tail = buf[m:].copy()
            fh.write(np.clip(buf[:m], -1.0, 1.0).astype(np.float32))
    return path_s


def long_recordings(
    directory: str | Path,
    *,
    hours: float = 10.0,
    files: int = 1,
    sr: int = 22050,
    seed: int = 0,
    rate: float = 2.0,
    workers: int | None = None,
    progress: bool = True,
) -> list[Path]:
    """Write ``files`` long mono 16-bit WAV recordings totalling ``hours`` of audio under
    ``directory`` (``session_<k>.wav``), for frame mode: drum hits of the demo classes at random
    times (about ``rate`` per second, drawn from a bank of 192 synthesised hits per file) over a
    quiet noise floor that drifts in colour and level.

    Written block by block (one minute at a time), one file per worker process, so memory stays
    small for tens of hours. An existing file of the right length is kept; another seed, file
    count, rate or sample rate in the same directory is a :class:`UsageError`. Returns the paths.
    """
    root = Path(directory).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    total = int(round(hours * 3600 * sr))
    if files < 1 or total < files:
        raise ValueError("long_recordings: need files >= 1 and at least one sample per file")
    _claim(root, "long recordings", {"seed": int(seed), "files": int(files), "sr": int(sr), "rate": float(rate)})
    per = [total // files + (1 if k < total % files else 0) for k in range(files)]
    jobs = [(str(root / f"session_{k:03d}.wav"), length, sr, seed, k, rate) for k, length in enumerate(per)]
    workers = workers or min(4, os.cpu_count() or 1, files)
    bar = tqdm(total=files, desc="long recordings", unit=" files", disable=not progress)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for _ in _ordered_map(pool, _write_long, jobs, window=2 * workers):
            bar.update()
    bar.close()
    return [Path(j[0]) for j in jobs]
