"""The general-purpose feature sets (``descriptors``, ``pitchfree``, ``envelope``, ``general``):
NumPy/librosa references on real audio, known-answer signals (a transposed harmonic tone, an
exponential decay, a ramp), batched == per-item, shapes and config. Stated tolerances:
descriptor and MFCC segment means 1e-3 relative (Frobenius, per clip), envelope values 1e-3 dB,
decay and attack times within two hops."""
from __future__ import annotations

import numpy as np
import pytest
import torch

librosa = pytest.importorskip("librosa")

from klustr_gpu.config import FEATURE_SETS, Config
from klustr_gpu.errors import UsageError
from klustr_gpu.features import functional as FX
from klustr_gpu.features.transforms import (DESCRIPTORS, Descriptors, Envelope, PitchFree, SegmentMFCC, build,
                                            output_dim)

SR = 22050
N = SR          # the fixture's clips: 1 s


def _rel(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / max(np.linalg.norm(b), 1e-12))


def _seg_means(x: np.ndarray, hop: int, edges) -> np.ndarray:
    """NumPy segment means of x (..., frames): frames with time in [a, b), the last segment closed."""
    t = np.arange(x.shape[-1]) * hop / SR
    out = []
    for i, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
        m = (t >= a) & ((t < b) | (i == len(edges) - 2))
        out.append(x[..., m].mean(-1))
    return np.stack(out, axis=-1)


# -- references --------------------------------------------------------------------------------------
def ref_descriptors(y: np.ndarray, *, n_fft=1024, hop=512, edges=(0, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)) -> np.ndarray:
    y = y.astype(np.float64)
    S = np.abs(librosa.stft(y, n_fft=n_fft, hop_length=hop))
    rms = librosa.feature.rms(S=S, frame_length=n_fft, hop_length=hop)[0]
    level = 20 * np.log10(rms + 1e-5)
    level = np.maximum(level - level.max(), -80.0)
    cen = librosa.feature.spectral_centroid(S=S, sr=SR)[0]
    rows = np.stack([
        level, np.log1p(cen), np.log1p(librosa.feature.spectral_bandwidth(S=S, sr=SR)[0]),
        np.log(S.max(0) / np.maximum(S.mean(0), 1e-12) * (S.max(0) > 0) + 1e-3),
        np.log(np.concatenate([[0.0], np.linalg.norm(np.diff(S, axis=1), axis=0)]) + 1e-4),
        np.log1p(librosa.feature.spectral_rolloff(S=S, sr=SR)[0]),
        np.log(librosa.feature.spectral_flatness(S=S)[0] + 1e-8),
        librosa.feature.zero_crossing_rate(y, frame_length=n_fft, hop_length=hop)[0],
    ])
    return np.concatenate([_seg_means(rows, hop, edges).T.ravel(), rows.std(axis=1)])


def ref_segment_mfcc(y: np.ndarray, *, n_mfcc=8, n_mels=64, n_fft=1024, hop=512, floor_db=60.0,
                     edges=(0, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)) -> np.ndarray:
    S = np.abs(librosa.stft(y.astype(np.float64), n_fft=n_fft, hop_length=hop)) ** 2
    lm = librosa.power_to_db(librosa.feature.melspectrogram(S=S, sr=SR, n_mels=n_mels) + 1e-10, top_db=None)
    lm = np.maximum(lm - lm.max(), -floor_db)
    return _seg_means(librosa.feature.mfcc(S=lm, n_mfcc=n_mfcc), hop, edges).T.ravel()


# -- parity on real audio -------------------------------------------------------------------------------
def test_descriptors_match_librosa(clips):
    m = Descriptors(sample_rate=SR, n_samples=N, hop_length=512)
    with torch.no_grad():
        ours = m(torch.from_numpy(clips)).numpy()
    assert ours.shape == (len(clips), 8 * 6 + 8)
    for i, y in enumerate(clips):
        ref = ref_descriptors(y)
        # rolloff can move one bin where the cumulative sum sits on the threshold (float32):
        # compare everything but the rolloff means, and the rolloff means to within one bin
        roll = np.arange(5, 48, 8)
        keep = np.setdiff1d(np.arange(len(ref)), roll)
        assert _rel(ours[i, keep], ref[keep]) < 1e-3
        assert np.abs(np.expm1(ours[i, roll]) - np.expm1(ref[roll])).max() < SR / 1024 + 1e-2


def test_segment_mfcc_matches_librosa(clips):
    m = SegmentMFCC(sample_rate=SR, n_samples=N, hop_length=512)
    with torch.no_grad():
        ours = m(torch.from_numpy(clips)).numpy()
    for i, y in enumerate(clips):
        assert _rel(ours[i], ref_segment_mfcc(y)) < 1e-3


def test_envelope_matches_numpy(clips):
    m = Envelope(sample_rate=SR, n_samples=N)
    with torch.no_grad():
        ours = m(torch.from_numpy(clips)).numpy()
    for i, y in enumerate(clips):
        rms = librosa.feature.rms(y=y.astype(np.float64), frame_length=1024, hop_length=256)[0]
        db = np.maximum(20 * np.log10(rms + 1e-9) - 20 * np.log10(rms.max() + 1e-9), -60.0)
        idx = np.clip(np.round(np.logspace(0, np.log10(len(db)), 12)).astype(int) - 1, 0, len(db) - 1)
        np.testing.assert_allclose(ours[i, :12], db[idx], atol=1e-3)
        peak_t = np.argmax(db) * 256 / SR
        assert abs(np.exp(ours[i, -1]) - 1e-3 - peak_t) <= 256 / SR + 1e-6


# -- known answers ---------------------------------------------------------------------------------------
def _harmonic(f0: float, weights, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    y = sum(w * np.sin(2 * np.pi * k * f0 * t) for k, w in enumerate(weights, start=1) if k * f0 < SR / 2)
    return (y / np.abs(y).max()).astype(np.float32)


def test_pitchfree_follows_timbre_more_than_pitch():
    """One harmonic recipe (12 partials, amplitudes 1/k) at 220 Hz, transposed up 3 semitones and
    a fifth, against another recipe (odd partials only, clarinet-like) at 220 Hz: in ``pitchfree``
    the transpositions stay within 0.5 of the timbre change (0.36 measured); in the whole-clip
    MFCC means they move as far as the timbre change does (1.0): what the set is for. Not exact
    invariance: the FFT's coarse low-frequency resolution and the band edges see the pitch."""
    bright = [1 / k for k in range(1, 13)]
    odd = [(1 / k if k % 2 else 0.0) for k in range(1, 13)]
    x = torch.from_numpy(np.stack([_harmonic(220, bright), _harmonic(261.6, bright), _harmonic(330, bright),
                                   _harmonic(220, odd)]))
    with torch.no_grad():
        pf = PitchFree(sample_rate=SR, n_samples=N)(x).numpy()
        mf = build("mfcc", Config())(x).numpy()[:, :20]

    def ratio(f):
        return max(np.linalg.norm(f[0] - f[1]), np.linalg.norm(f[0] - f[2])) / np.linalg.norm(f[0] - f[3])

    assert ratio(pf) < 0.5
    assert ratio(mf) > 2 * ratio(pf)


def test_shift_invariant_spectrum_ignores_circular_shifts():
    db = torch.randn(3, 96, dtype=torch.float64)
    a = FX.shift_invariant_spectrum(db, 40)
    b = FX.shift_invariant_spectrum(torch.roll(db, 7, dims=-1), 40)
    torch.testing.assert_close(a, b)
    assert FX.shift_invariant_spectrum(db, 60).shape == (3, 60)          # more than the bands hold: padded


def test_envelope_known_decay_and_attack():
    """Noise rising linearly for 0.1 s, then decaying exponentially (tau 0.05 s): the peak
    (attack) near 0.1 s, the decay to -x dB near 0.1 + x / 8.686 * tau s."""
    tau, rise = 0.05, 0.1
    t = np.arange(SR) / SR
    env = np.where(t < rise, t / rise, np.exp(-(t - rise) / tau))
    y = (np.random.default_rng(0).standard_normal(SR) * env).astype(np.float32)
    m = Envelope(sample_rate=SR, n_samples=N)
    with torch.no_grad():
        out = m(torch.from_numpy(y)[None]).numpy()[0]
    drops = np.array([10.0, 20.0, 40.0, 60.0])
    got = np.exp(out[12:16]) - 1e-3
    want = rise + drops / (20 * np.log10(np.e)) * tau
    assert np.abs(got - want).max() < 4 * 256 / SR                    # peak frame + crossing + centring
    assert abs(np.exp(out[16]) - 1e-3 - rise) < 4 * 256 / SR


def test_segment_matrix_and_edges():
    assert FX.segment_edges([0, 0.02, 0.5, 1.0, 2.0], 0.75) == (0.0, 0.02, 0.5, 0.75)
    assert FX.segment_edges([0.1, 0.2], 1.0) == (0.0, 0.1, 0.2, 1.0)
    M = FX.segment_matrix(87, 256, SR, FX.segment_edges([0, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2], 1.0))
    assert M.shape == (87, 6)
    torch.testing.assert_close(M.sum(0), torch.ones(6))
    assert (M > 0).sum() == 87                                       # each frame in exactly one segment
    M = FX.segment_matrix(4, 512, SR, (0.0, 0.001, 0.002, 0.1))      # segments without a frame: nearest one
    torch.testing.assert_close(M.sum(0), torch.ones(3))


def test_log_frequency_fbank_has_no_empty_band():
    W = FX.log_frequency_fbank(SR, 2048)
    assert W.shape[0] == 1025 and W.shape[1] == int(np.floor(np.log2(10000 / 40) * 24)) + 1
    torch.testing.assert_close(W.sum(0), torch.ones(W.shape[1]))
    assert ((W > 0).sum(0) >= 2).all()
    with pytest.raises(ValueError):
        FX.log_frequency_fbank(SR, 2048, fmin=0.0)


# -- batched, shapes, config ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["descriptors", "pitchfree", "envelope", "general"])
def test_batched_equals_per_item_and_dims(clips, name):
    cfg = Config().updated({"audio.clip_seconds": 1.0})
    m = build(name, cfg)
    x = torch.from_numpy(np.ascontiguousarray(clips))
    with torch.no_grad():
        batched = m(x)
        single = torch.cat([m(x[i:i + 1]) for i in range(len(x))])
        short = m(x[:, : N // 3])                                       # shorter clips: zero-padded
        padded = m(torch.nn.functional.pad(x[:, : N // 3], (0, N - N // 3)))
    assert batched.shape == (len(x), output_dim(m, N))
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(short, padded, rtol=1e-5, atol=1e-4)
    assert torch.isfinite(batched).all()


def test_general_set_layout_and_silence():
    assert {"descriptors", "pitchfree", "envelope", "general"} <= set(FEATURE_SETS)
    cfg = Config().updated({"audio.clip_seconds": 1.0})
    n_seg = len(FX.segment_edges(cfg.general.segments, 1.0)) - 1
    dims = {"descriptors": len(DESCRIPTORS) * (n_seg + 1), "pitchfree": cfg.pitchfree.n_coeffs,
            "envelope": cfg.envelope.points + len(cfg.envelope.decay_drops) + 1}
    for name, d in dims.items():
        assert output_dim(build(name, cfg), N) == d
    assert output_dim(build("general", cfg), N) == cfg.general.n_mfcc * n_seg + sum(dims.values())
    only = cfg.updated({"general.profile": "custom", "general.blocks": "segment_mfcc,envelope"})
    assert output_dim(build("general", only), N) == cfg.general.n_mfcc * n_seg + dims["envelope"]
    timbre = cfg.timbre.n_mfcc * (len(cfg.timbre.segments) - 1) + len(cfg.timbre.decay_drops)
    for profile, dim in (("hits", timbre + dims["descriptors"]),
                         ("sustained", dims["descriptors"] + dims["pitchfree"] + dims["envelope"])):
        assert output_dim(build("general", cfg.updated({"general.profile": profile})), N) == dim
        decided = cfg.updated({"general.decided": profile})                  # what the rule wrote
        assert output_dim(build("general", decided), N) == dim
    x = torch.zeros(3, N)
    x[1, :50] = 1e-4
    for name in dims.keys() | {"general"}:
        with torch.no_grad():
            assert torch.isfinite(build(name, cfg)(x)).all(), name
    with pytest.raises(UsageError):
        cfg.updated({"general.profile": "custom", "general.blocks": "segment_mfcc,nonsense"})


def test_frame_mode_uses_the_window_length():
    cfg = Config().updated({"features.frames": True, "features.window": 0.25, "audio.clip_seconds": 2.0})
    n = int(0.25 * SR)
    m = build("descriptors", cfg)
    assert output_dim(m, n) == 8 * (len(FX.segment_edges(cfg.descriptors.segments, 0.25)) - 1 + 1)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["descriptors", "pitchfree", "envelope", "general"])
def test_cpu_and_cuda_agree(clips, name):
    m = build(name, Config().updated({"audio.clip_seconds": 1.0}))
    x = torch.from_numpy(np.ascontiguousarray(clips))
    with torch.no_grad():
        cpu = m(x)
        gpu = m.to("cuda")(x.to("cuda")).cpu()
    assert torch.linalg.vector_norm(cpu - gpu) / torch.linalg.vector_norm(cpu) < 1e-3


def test_general_hash_follows_its_blocks_settings():
    """The ``general`` set's rows depend on its blocks' sections: a changed ``[timbre]`` makes a
    ``hits`` set stale (recomputed), not a ``sustained`` one, which computes no timbre block."""
    from klustr_gpu.features.plan import config_hash

    for profile, moves in (("hits", True), ("sustained", False)):
        cfg = Config().updated({"general.profile": profile})
        other = cfg.updated({"timbre.n_mfcc": 13})
        assert (config_hash(cfg, "general", False) != config_hash(other, "general", False)) is moves
    cfg = Config().updated({"general.profile": "sustained"})
    assert config_hash(cfg, "general", False) != config_hash(cfg.updated({"pitchfree.bins_per_octave": 12}),
                                                            "general", False)
