"""Short audio is audio (issue 14): a single-cycle waveform is looped at its own rate to the clip
length, a short decaying file is zero-padded, and skip reasons are grouped by kind."""
from __future__ import annotations

import numpy as np
import soundfile as sf

from klustr_gpu.config import AudioConfig
from klustr_gpu.library.decode import decode, is_single_cycle, reason_kind


def test_single_cycle_is_looped_at_its_own_rate(tmp_path):
    """A 100-sample saw at 22.05 kHz (220.5 Hz) fills the whole 1 s clip with the same period."""
    cycle = (np.arange(100) / 100 * 2 - 1).astype(np.float32)
    sf.write(tmp_path / "saw.wav", cycle, 22050, subtype="FLOAT")
    y = decode(tmp_path / "saw.wav", AudioConfig(sample_rate=22050, clip_seconds=1.0))
    assert y.shape == (22050,)
    np.testing.assert_allclose(y[:100], cycle / np.abs(cycle).max(), atol=1e-6)
    np.testing.assert_allclose(y[100:22000], y[:21900], atol=1e-6)       # periodic to the end, no silence
    assert np.abs(y[-1000:]).max() > 0.5


def test_short_decaying_file_is_zero_padded(tmp_path):
    """A 600-sample click that dies away is not a cycle: it is padded, like every clip."""
    t = np.arange(600)
    click = (np.sin(2 * np.pi * t / 20) * np.exp(-t / 40)).astype(np.float32)
    assert not is_single_cycle(click, 22050)
    sf.write(tmp_path / "click.wav", click, 22050)
    y = decode(tmp_path / "click.wav", AudioConfig(sample_rate=22050, clip_seconds=1.0))
    assert y.shape == (22050,) and np.all(y[600:] == 0)


def test_single_cycle_rule():
    sine = np.sin(2 * np.pi * np.arange(256) / 256)
    assert is_single_cycle(sine, 44100)
    assert is_single_cycle(np.ones(1), 44100)                              # one sample counts
    assert not is_single_cycle(np.zeros(256), 44100)                       # silence is no cycle
    assert not is_single_cycle(np.sin(2 * np.pi * np.arange(4096) / 256), 44100)   # longer than a frame


def test_reason_kinds_drop_the_particulars():
    assert reason_kind("truncated: header declares 4096 bytes of audio, the file holds 100") == "truncated"
    assert reason_kind("3 channels (at most 2 supported)") == "too many channels"
    assert reason_kind("sample rate 500 Hz outside 4000-192000 Hz") == "sample rate out of range"
    assert reason_kind("cannot decode: Error in WAV file. No 'data' chunk marker.") == "cannot decode"
    assert reason_kind("too short (77 frames)") == reason_kind("too short (406 frames)") == "too short"
    assert reason_kind("") == reason_kind(None) == "unknown"
    assert reason_kind("all-silent audio") == "all-silent audio"
