"""Feature maths vs librosa on real audio (Hydrogen kits, else the demo corpus), known-answer
signals, and batched == per-item. Tolerances are stated per transform."""
from __future__ import annotations


import numpy as np
import pytest
import torch

librosa = pytest.importorskip("librosa")

from klustr_gpu.config import Config
from klustr_gpu.features import functional as FX
from klustr_gpu.features.transforms import MFCC, MIR, LogMel, STFTFingerprint, build, output_dim

SR = 22050
N = SR  # 1 s clips


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    """Relative Frobenius error of a against reference b."""
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / max(np.linalg.norm(b), 1e-12))


def test_mfcc_matches_librosa(clips):
    m = MFCC(sample_rate=SR, n_mfcc=20, n_mels=64, n_fft=1024, hop_length=256, deltas=False, summary="grid")
    with torch.no_grad():
        ours = m.coefficients(torch.from_numpy(clips)).numpy()
    for i, y in enumerate(clips):
        ref = librosa.feature.mfcc(y=y, sr=SR, n_mfcc=20, n_mels=64, n_fft=1024, hop_length=256)
        assert ours[i].shape == ref.shape
        assert _rel(ours[i], ref) < 1e-3          # stated tolerance: 1e-3 relative (Frobenius)


def test_mfcc_klustr_preset_matches_librosa(clips):
    cfg = Config.preset_named("klustr")
    y = np.stack([librosa.resample(c, orig_sr=SR, target_sr=48000)[:12000] for c in clips[:3]]).astype(np.float32)
    m = build("mfcc", cfg)
    with torch.no_grad():
        ours = m(torch.from_numpy(y)).numpy()
    for i in range(3):
        ref = librosa.feature.mfcc(y=y[i], sr=48000, n_mfcc=30, n_mels=128, n_fft=2048, hop_length=512)
        assert _rel(ours[i], ref.ravel()) < 1e-3


def test_delta_matches_librosa(clips):
    m = MFCC(sample_rate=SR, deltas=True)
    with torch.no_grad():
        c = m.coefficients(torch.from_numpy(clips[:2]))
        d = FX.delta(c).numpy()
    for i in range(2):
        ref = librosa.feature.delta(c[i].numpy(), width=9, order=1)
        np.testing.assert_allclose(d[i], ref, rtol=1e-4, atol=1e-4)
    short = torch.arange(5.0).view(1, 5) ** 2
    ref = librosa.feature.delta(short.numpy(), width=5)
    np.testing.assert_allclose(FX.delta(short).numpy(), ref, rtol=1e-5, atol=1e-5)


def test_logmel_matches_librosa(clips):
    m = LogMel(sample_rate=SR, n_mels=64, n_fft=1024, hop_length=256)
    with torch.no_grad():
        ours = m(torch.from_numpy(clips)).numpy()
    for i, y in enumerate(clips):
        ref = librosa.power_to_db(librosa.feature.melspectrogram(y=y, sr=SR, n_fft=1024, hop_length=256, n_mels=64))
        assert np.max(np.abs(ours[i] - ref.ravel())) < 1e-2   # dB; stated tolerance 0.01 dB


def _fingerprint_reference(y, n_fft=1024, hop=256, group=10, size=32):
    S = np.abs(librosa.stft(y, n_fft=n_fft, hop_length=hop))
    n = (S.shape[0] // group) * group
    S = S[:n].reshape(n // group, group, -1).mean(axis=1)
    S = librosa.amplitude_to_db(S, ref=1.0, amin=1e-5, top_db=80.0)[:size, :size]
    S = (S - S.min()) / max(S.max() - S.min(), 1e-12)
    out = np.zeros((size, size))
    out[: S.shape[0], : S.shape[1]] = S
    return out.ravel()


def test_stft_fingerprint_matches_reference(clips):
    m = STFTFingerprint()
    with torch.no_grad():
        ours = m(torch.from_numpy(clips)).numpy()
    assert ours.shape == (len(clips), 1024)
    for i, y in enumerate(clips):
        np.testing.assert_allclose(ours[i], _fingerprint_reference(y), atol=2e-4)
    short = np.random.default_rng(0).standard_normal(4000).astype(np.float32)   # 16 frames: padded
    with torch.no_grad():
        fp = m(torch.from_numpy(short)[None]).numpy()[0]
    np.testing.assert_allclose(fp, _fingerprint_reference(short), atol=2e-4)
    assert np.all(fp.reshape(32, 32)[:, 16:] == 0)


def test_mir_descriptors_match_librosa(clips):
    m = MIR(sample_rate=SR, n_fft=1024, hop_length=256)
    with torch.no_grad():
        d = m.descriptors(torch.from_numpy(clips)).numpy()
    kw = dict(n_fft=1024, hop_length=256)
    for i, y in enumerate(clips):
        S = np.abs(librosa.stft(y, **kw))
        # librosa-defined descriptors; tolerance 1e-3 relative (Frobenius over the clip)
        assert _rel(d[i, 0], librosa.feature.rms(y=y, frame_length=1024, hop_length=256)[0]) < 1e-3
        assert _rel(d[i, 1], librosa.feature.spectral_centroid(S=S, sr=SR, **kw)[0]) < 1e-3
        assert _rel(d[i, 2], librosa.feature.spectral_bandwidth(S=S, sr=SR, **kw)[0]) < 1e-3
        roll = librosa.feature.spectral_rolloff(S=S, sr=SR, **kw)[0]
        assert np.mean(np.abs(d[i, 5] - roll) <= SR / 1024 + 1e-3) > 0.97   # within one bin on >97% of frames
        assert _rel(d[i, 6], librosa.feature.spectral_flatness(S=S)[0]) < 1e-3
        np.testing.assert_allclose(d[i, 7], librosa.feature.zero_crossing_rate(y, frame_length=1024, hop_length=256)[0],
                                   atol=1.5 / 1024)
        # our own definitions, against NumPy
        crest = S.max(0) / np.maximum(S.mean(0), 1e-12)
        assert _rel(d[i, 3], crest) < 1e-3
        flux = np.concatenate([[0.0], np.linalg.norm(np.diff(S, axis=1), axis=0)])
        assert _rel(d[i, 4], flux) < 1e-3


def test_known_answers():
    """All energy at one bin's frequency: centroid and rolloff at that frequency; a flat spectrum
    has crest 1 and flatness 1; a square wave's ZCR is 2 crossings per period."""
    n_fft, hop = 1024, 256
    f0 = 40 * SR / n_fft
    t = np.arange(N) / SR
    y = torch.from_numpy(np.sin(2 * np.pi * f0 * t).astype(np.float32))[None]
    S = torch.abs(torch.stft(y, n_fft, hop, window=torch.hann_window(n_fft), return_complex=True))
    freqs = FX.fft_frequencies(SR, n_fft)
    mid = slice(4, -4)
    np.testing.assert_allclose(FX.spectral_centroid(S, freqs)[0, mid].numpy(), f0, rtol=1e-3)
    np.testing.assert_allclose(FX.spectral_rolloff(S, freqs)[0, mid].numpy(), f0, atol=SR / n_fft + 1e-3)
    flat = torch.ones(1, 513, 3)
    assert torch.allclose(FX.spectral_crest(flat), torch.ones(1, 3))
    assert torch.allclose(FX.spectral_flatness(flat), torch.ones(1, 3))
    sq = torch.sign(torch.sin(2 * torch.pi * 100 * torch.arange(N) / SR)).view(1, -1)
    z = FX.zero_crossing_rate(sq, frame_length=2048, hop_length=512)[0, 2:-2]
    np.testing.assert_allclose(z.numpy(), 200 / SR, rtol=0.05)


@pytest.mark.parametrize("name", ["stft", "mfcc", "mir", "mel"])
@pytest.mark.parametrize("preset", ["default", "klustr"])
def test_batched_equals_per_item(clips, name, preset):
    cfg = Config.preset_named(preset)
    n = int(round(cfg.audio.sample_rate * cfg.audio.clip_seconds))
    x = torch.from_numpy(np.ascontiguousarray(clips[:, :n]))
    m = build(name, cfg)
    with torch.no_grad():
        batched = m(x)
        single = torch.cat([m(x[i : i + 1]) for i in range(len(x))])
    assert batched.shape == (len(x), output_dim(m, n))
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-4)
    assert torch.isfinite(batched).all()


def test_silence_and_shapes_are_finite():
    cfg = Config()
    x = torch.zeros(3, N)
    x[1, :100] = 1e-3
    for name in ("stft", "mfcc", "mir", "mel"):
        with torch.no_grad():
            out = build(name, cfg)(x)
        assert torch.isfinite(out).all(), name


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["stft", "mfcc", "mir", "mel"])
@pytest.mark.parametrize("preset", ["default", "klustr"])
def test_cpu_and_cuda_modules_agree(clips, name, preset):
    cfg = Config.preset_named(preset)
    n = int(round(cfg.audio.sample_rate * cfg.audio.clip_seconds))
    x = torch.from_numpy(np.ascontiguousarray(clips[:, :n]))
    m = build(name, cfg)
    with torch.no_grad():
        cpu = m(x)
        gpu = m.to("cuda")(x.to("cuda")).cpu()
    assert torch.linalg.vector_norm(cpu - gpu) / torch.linalg.vector_norm(cpu) < 1e-3
