"""The ``timbre`` feature set (onset-segment MFCCs + decay times) vs a NumPy/librosa reference
on real audio (Hydrogen kits, else the demo corpus), a known-answer decay, batched == per-item,
shapes and config. Stated tolerances: segment MFCCs 1e-3 relative (Frobenius, per clip);
decay times within one RMS hop (float32 vs float64 rounding can move a threshold crossing by a
frame), and equal on at least 90 % of the values."""
from __future__ import annotations


import numpy as np
import pytest
import torch

librosa = pytest.importorskip("librosa")

from klustr_gpu.config import FEATURE_SETS, Config
from klustr_gpu.features.transforms import Timbre, build, output_dim

SR = 22050
SEGMENTS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.5)
DROPS = (10.0, 20.0, 40.0, 60.0)


# -- the NumPy / librosa reference (one clip at a time) ---------------------------------------------
def ref_segment_mfcc(y: np.ndarray, *, sr=SR, n_fft=1024, hop=128, n_mels=128, n_mfcc=20, floor_db=60.0,
                     segments=SEGMENTS) -> np.ndarray:
    y = np.pad(y, (0, max(0, int(round(segments[-1] * sr)) - len(y))))[: int(round(segments[-1] * sr))]
    S = np.abs(librosa.stft(y.astype(np.float64), n_fft=n_fft, hop_length=hop)) ** 2
    t = librosa.frames_to_time(np.arange(S.shape[-1]), sr=sr, hop_length=hop)
    lm = librosa.power_to_db(librosa.feature.melspectrogram(S=S, sr=sr, n_mels=n_mels) + 1e-10, top_db=None)
    lm = np.maximum(lm - lm.max(), -floor_db)
    mf = librosa.feature.mfcc(S=lm, n_mfcc=n_mfcc)
    return np.stack([mf[:, (t >= a) & (t < b)].mean(-1) for a, b in zip(segments[:-1], segments[1:])])


def ref_decay_times(y: np.ndarray, *, sr=SR, frame=1024, hop=256, drops=DROPS) -> np.ndarray:
    rms = librosa.feature.rms(y=y.astype(np.float64), frame_length=frame, hop_length=hop)[0]
    db = 20 * np.log10(rms + 1e-9)
    db -= db.max()
    tt = np.arange(len(db)) * hop / sr
    peak = int(db.argmax())
    out = []
    for th in drops:
        below = np.flatnonzero(db[peak:] < -th)
        out.append(tt[peak + below[0]] if len(below) else tt[-1] + 0.1)
    return np.log(np.array(out) + 1e-3)


def _rel(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / max(np.linalg.norm(b), 1e-12))


# -- tests ------------------------------------------------------------------------------------------
def test_timbre_matches_librosa_reference(clips):
    m = Timbre(sample_rate=SR)
    with torch.no_grad():
        seg = m.segment_mfcc(torch.from_numpy(clips)).numpy()
        dec = m.decay_times(torch.from_numpy(clips)).numpy()
    equal = 0
    for i, y in enumerate(clips):
        ref = ref_segment_mfcc(y)
        assert seg[i].shape == ref.shape == (5, 20)
        assert _rel(seg[i], ref) < 1e-3                       # stated tolerance: 1e-3 relative
        rd = ref_decay_times(y)
        assert np.abs(np.exp(dec[i]) - np.exp(rd)).max() <= 256 / SR + 1e-6   # within one hop
        equal += int(np.isclose(dec[i], rd, rtol=0, atol=1e-5).sum())
    assert equal >= 0.9 * dec.size


def test_timbre_batched_equals_per_item(clips):
    m = Timbre(sample_rate=SR)
    x = torch.from_numpy(clips)
    with torch.no_grad():
        batched = m(x).numpy()
        single = np.concatenate([m(x[i:i + 1]).numpy() for i in range(len(x))])
    np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-4)


def test_timbre_shapes_and_config():
    assert "timbre" in FEATURE_SETS
    cfg = Config()
    m = build("timbre", cfg)
    n = int(round(cfg.audio.clip_seconds * cfg.audio.sample_rate))
    dim = cfg.timbre.n_mfcc * (len(cfg.timbre.segments) - 1) + len(cfg.timbre.decay_drops)
    assert dim == 104 and output_dim(m, n) == dim
    # clips shorter than the segments are zero-padded; any batch shape (..., time) works
    with torch.no_grad():
        assert m(torch.randn(3, 2, 4000)).shape == (3, 2, dim)
        assert torch.isfinite(m(torch.zeros(2, 4000))).all()       # silence: defined, finite
    cfg2 = Config.from_toml(cfg.updated({"timbre.n_mfcc": 13, "timbre.segments": "0,0.05,0.5"}).to_toml())
    assert output_dim(build("timbre", cfg2), n) == 13 * 2 + 4
    with pytest.raises(ValueError):
        Timbre(sample_rate=SR, segments=(0.0, 0.002, 0.004, 0.5))  # no frame in [2, 4) ms at hop 128
    with pytest.raises(ValueError):
        Timbre(sample_rate=SR, segments=(0.2, 0.1))


def test_decay_times_known_answer():
    """An exponentially decaying noise burst. Its RMS envelope (centred 1024-sample frames)
    peaks once a frame holds the whole onset, at 512 samples, then falls x dB in x / 8.686 * tau s;
    times are counted from the clip's start."""
    tau = 0.05
    t = np.arange(SR) / SR
    y = (np.random.default_rng(0).standard_normal(SR) * np.exp(-t / tau)).astype(np.float32)
    m = Timbre(sample_rate=SR)
    with torch.no_grad():
        got = np.exp(m.decay_times(torch.from_numpy(y)[None]).numpy()[0]) - 1e-3
    want = 512 / SR + np.array(DROPS) / (20 * np.log10(np.e)) * tau
    assert np.abs(got - want).max() < 2 * 256 / SR              # peak frame + crossing: two hops


def test_timbre_never_reached_and_segments_layout():
    """A flat tone never decays (the clip's last frame + 0.1 s); the output is segment-major."""
    y = torch.from_numpy(np.sin(2 * np.pi * 440 * np.arange(SR) / SR).astype(np.float32))[None]
    m = Timbre(sample_rate=SR)
    with torch.no_grad():
        out = m(y)[0].numpy()
        seg = m.segment_mfcc(y)[0].numpy()
    last = (1 + SR // 256 - 1) * 256 / SR
    np.testing.assert_allclose(out[-4:], np.log(last + 0.1 + 1e-3), rtol=1e-6)
    np.testing.assert_allclose(out[:100], seg.ravel(), rtol=1e-6)
    assert np.allclose(seg[1:-1, 0], seg[1, 0], atol=1e-2)       # a steady tone: the same in each segment (the last
    # one ends at the crop, where the centred frames see zero padding)


@pytest.mark.gpu
def test_timbre_cpu_cuda_agree(clips):
    m = Timbre(sample_rate=SR)
    x = torch.from_numpy(clips)
    with torch.no_grad():
        cpu = m(x)
        gpu = m.to("cuda")(x.to("cuda")).cpu()
    assert torch.linalg.vector_norm(cpu - gpu) / torch.linalg.vector_norm(cpu) < 1e-3
