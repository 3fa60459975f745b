"""Feature sets as thin ``nn.Module``s: constants (windows, mel banks, DCT) are computed once
and registered as buffers, so ``module.to("cuda")`` moves them and the input tensor's device
decides where the maths runs. Every module maps a batch of clips ``(batch, time)`` to a batch
of feature vectors ``(batch, dim)``.

Sets and their layout (``T = 1 + samples // hop`` frames):

``stft``  the 2017 fingerprint: |STFT| (Hann, n_fft, hop, centred, zero padding), frequency
          bins averaged in groups of ``group`` (remainder dropped), optionally in dB
          (``amplitude_to_db``, amin 1e-5, 80 dB floor per clip), cropped to the first ``size``
          groups and ``size`` frames, min-max scaled per clip, zero-padded to ``size x size``;
          flattened frequency-major. dim = size * size.
``mfcc``  ``librosa.feature.mfcc`` (slaney mel bank, power 2, 80 dB floor, orthonormal DCT-II),
          plus ``librosa.feature.delta`` when ``deltas``; ``summary="stats"``: mean and std of
          each coefficient (and delta) over frames, dim = 2 * n_mfcc * (1 + deltas);
          ``"grid"``: the flattened (coefficient, frame) grid, dim = n_mfcc * (1 + deltas) * T.
``mir``   per frame: RMS, spectral centroid, bandwidth, crest, flux, rolloff (85 %), flatness,
          zero-crossing rate. ``"grid"``: each descriptor z-scored over the clip's frames (as in
          2017), dim = 8 * T; ``"stats"``: mean and std of each descriptor, dim = 16.
``mel``   log-mel grid (``power_to_db`` of the slaney mel power spectrogram), dim = n_mels * T.
``timbre`` onset-segment MFCCs + decay times (:class:`Timbre`): segment-major
          ``(n_segments, n_mfcc)`` means, then one log decay time per drop;
          dim = n_mfcc * n_segments + len(decay_drops) (104 by default).

Spectrograms are ``torch.stft`` (what ``torchaudio.transforms.Spectrogram`` calls), centred with
zero padding like ``librosa.stft``; mel banks and the DCT are torchaudio's
(``melscale_fbanks(norm="slaney", mel_scale="slaney")`` = librosa's default bank,
``create_dct(norm="ortho")``). Modules sharing a ``cache`` dict for one batch compute each
(n_fft, hop) spectrogram once.

Deliberate differences from librosa: everything runs in float32 with torch's FFT (librosa
builds its mel bank in float64 and uses scipy/numpy FFTs), so values agree to ~1e-5 relative,
not bit for bit; the STFT fingerprint's dB step (``amplitude_to_db``, amin 1e-5, 80 dB floor)
is applied after averaging the magnitude over bin groups; rolloff may differ by one bin where
the cumulative sum sits on the 85 % threshold within float32 rounding.
"""
from __future__ import annotations

import torch
from torch import nn
import torchaudio

from ..config import Config
from . import functional as FX

MIR_DESCRIPTORS = ("rms", "centroid", "bandwidth", "crest", "flux", "rolloff", "flatness", "zcr")


class _Spectral(nn.Module):
    """Base: owns a Hann window and computes ``|STFT|**2`` once per (batch, n_fft, hop).

    ``forward(y, cache)``: modules given the same ``cache`` dict for one batch share their
    spectrograms (the klustr preset's ``stft`` and ``mir`` use the same 1024/256 STFT).
    """

    def __init__(self, n_fft: int, hop_length: int):
        super().__init__()
        self.n_fft, self.hop_length = n_fft, hop_length
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    def power(self, y: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        key = ("power", self.n_fft, self.hop_length)
        if cache is not None and key in cache:
            return cache[key]
        P = FX.power_spectrogram(y, self.window, n_fft=self.n_fft, hop_length=self.hop_length)
        if cache is not None:
            cache[key] = P
        return P

    def magnitude(self, y: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        key = ("magnitude", self.n_fft, self.hop_length)
        if cache is not None and key in cache:
            return cache[key]
        S = torch.sqrt(self.power(y, cache))
        if cache is not None:
            cache[key] = S
        return S


class STFTFingerprint(_Spectral):
    """(batch, time) -> (batch, size * size): the 2017 STFT fingerprint (see module doc)."""

    def __init__(self, *, n_fft: int = 1024, hop_length: int = 256, log: bool = True,
                 group: int = 10, size: int = 32):
        super().__init__(n_fft, hop_length)
        self.log, self.group, self.size = log, group, size

    def forward(self, y: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        S = FX.group_mean(self.magnitude(y, cache), self.group)
        if self.log:
            S = FX.amplitude_to_db(S)
        S = FX.minmax(S[..., : self.size, : self.size])
        S = FX.fit_length(FX.fit_length(S, self.size, dim=-2), self.size, dim=-1)
        return S.flatten(-2)


class _Mel(_Spectral):
    def __init__(self, *, sample_rate: int, n_mels: int, n_fft: int, hop_length: int):
        super().__init__(n_fft, hop_length)
        fb = torchaudio.functional.melscale_fbanks(1 + n_fft // 2, 0.0, sample_rate / 2.0, n_mels, sample_rate,
                                                   norm="slaney", mel_scale="slaney")
        self.register_buffer("fb", fb, persistent=False)

    def log_mel(self, y: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        """(batch, time) -> (batch, n_mels, frames): ``power_to_db`` of the mel power spectrogram."""
        mel = torch.matmul(self.power(y, cache).transpose(-1, -2), self.fb).transpose(-1, -2)
        return FX.power_to_db(mel)


class MFCC(_Mel):
    """(batch, time) -> (batch, dim): MFCCs (+ deltas) as stats or a flattened grid."""

    def __init__(self, *, sample_rate: int, n_mfcc: int = 20, n_mels: int = 64, n_fft: int = 1024,
                 hop_length: int = 256, deltas: bool = True, summary: str = "stats"):
        super().__init__(sample_rate=sample_rate, n_mels=n_mels, n_fft=n_fft, hop_length=hop_length)
        if summary not in ("stats", "grid"):
            raise ValueError(f"mfcc summary must be 'stats' or 'grid', got {summary!r}")
        self.register_buffer("dct", torchaudio.functional.create_dct(n_mfcc, n_mels, "ortho"), persistent=False)
        self.deltas, self.summary = deltas, summary

    def coefficients(self, y: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        """(batch, time) -> (batch, n_mfcc, frames), as ``librosa.feature.mfcc``."""
        return torch.matmul(self.log_mel(y, cache).transpose(-1, -2), self.dct).transpose(-1, -2)

    def forward(self, y: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        c = self.coefficients(y, cache)
        if self.deltas:
            c = torch.cat([c, FX.delta(c)], dim=-2)
        return FX.summary_stats(c) if self.summary == "stats" else c.flatten(-2)


class MIR(_Spectral):
    """(batch, time) -> (batch, dim): eight per-frame descriptors, z-scored grid or stats."""

    def __init__(self, *, sample_rate: int, n_fft: int = 1024, hop_length: int = 256, summary: str = "stats"):
        super().__init__(n_fft, hop_length)
        if summary not in ("stats", "grid"):
            raise ValueError(f"mir summary must be 'stats' or 'grid', got {summary!r}")
        self.register_buffer("freqs", FX.fft_frequencies(sample_rate, n_fft), persistent=False)
        self.summary = summary

    def descriptors(self, y: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        """(batch, time) -> (batch, 8, frames) in the order of ``MIR_DESCRIPTORS``."""
        S = self.magnitude(y, cache)
        centroid = FX.spectral_centroid(S, self.freqs)
        rows = [
            FX.rms(y, frame_length=self.n_fft, hop_length=self.hop_length),
            centroid,
            FX.spectral_bandwidth(S, self.freqs, centroid),
            FX.spectral_crest(S),
            FX.spectral_flux(S),
            FX.spectral_rolloff(S, self.freqs),
            FX.spectral_flatness(S, P=self.power(y, cache)),
            FX.zero_crossing_rate(y, frame_length=self.n_fft, hop_length=self.hop_length),
        ]
        return torch.stack(rows, dim=-2)

    def forward(self, y: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        d = self.descriptors(y, cache)
        return FX.summary_stats(d) if self.summary == "stats" else FX.zscore(d).flatten(-2)


class Timbre(_Mel):
    """(batch, time) -> (batch, n_mfcc * n_segments + len(decay_drops)): onset-segment MFCCs
    plus log decay times, a one-shot's attack, body and tail described apart.

    * MFCCs of the log-mel spectrogram of the first ``segments[-1]`` seconds of the clip
      (zero-padded when shorter), taken *relative to the clip's peak* and floored at
      ``-floor_db`` dB (so quiet tails do not dominate the cepstrum), averaged over the frames
      whose time ``k * hop / sr`` lies in each segment ``[segments[i], segments[i + 1])``;
    * for each drop in ``decay_drops``, ``log(t + 1e-3)`` of the time ``t`` (s, from the clip's
      start) of the first frame at or after the RMS envelope's peak that is more than ``drop`` dB
      below the peak (``rms``: frame ``decay_frame``, hop ``decay_hop``, centred, zero padding;
      ``20 log10(rms + 1e-9)``), over the whole clip; a drop never reached gives the clip's
      last frame time + 0.1 s. A clip zero-padded past the end of its file decays at the end.

    Equals the librosa recipe in ``tests/test_features_timbre.py`` (which the earlier
    ``benchmarks/quality.py`` also measured, with the file's duration and 4 s decays added).
    """

    def __init__(self, *, sample_rate: int, n_mfcc: int = 20, n_mels: int = 128, n_fft: int = 1024,
                 hop_length: int = 128, floor_db: float = 60.0,
                 segments: tuple[float, ...] = (0.0, 0.02, 0.05, 0.1, 0.2, 0.5),
                 decay_drops: tuple[float, ...] = (10.0, 20.0, 40.0, 60.0), decay_frame: int = 1024,
                 decay_hop: int = 256):
        super().__init__(sample_rate=sample_rate, n_mels=n_mels, n_fft=n_fft, hop_length=hop_length)
        segments = tuple(float(s) for s in segments)
        if len(segments) < 2 or any(b <= a for a, b in zip(segments[:-1], segments[1:])) or segments[0] < 0:
            raise ValueError(f"timbre segments must be increasing times >= 0, got {segments!r}")
        self.sample_rate, self.floor_db = sample_rate, float(floor_db)
        self.decay_drops = tuple(float(d) for d in decay_drops)
        self.decay_frame, self.decay_hop = decay_frame, decay_hop
        self.seg_samples = int(round(segments[-1] * sample_rate))
        t = torch.arange(FX.n_frames(self.seg_samples, hop_length), dtype=torch.float64) * hop_length / sample_rate
        cols = []
        for a, b in zip(segments[:-1], segments[1:]):
            m = ((t >= a) & (t < b)).to(torch.float64)
            if not m.any():
                raise ValueError(f"timbre segment [{a}, {b}) s holds no frame at hop {hop_length}")
            cols.append(m / m.sum())
        self.register_buffer("seg", torch.stack(cols, dim=1).float(), persistent=False)   # (frames, n_seg)
        self.register_buffer("dct", torchaudio.functional.create_dct(n_mfcc, n_mels, "ortho"), persistent=False)

    def segment_mfcc(self, y: torch.Tensor) -> torch.Tensor:
        """(batch, time) -> (batch, n_segments, n_mfcc): peak-relative MFCCs per segment."""
        y = FX.fit_length(y, self.seg_samples)
        P = FX.power_spectrogram(y, self.window, n_fft=self.n_fft, hop_length=self.hop_length)
        mel = torch.matmul(P.transpose(-1, -2), self.fb)                  # (..., frames, n_mels)
        db = FX.power_to_db(mel + 1e-10, top_db=None)
        db = torch.clamp(db - db.amax(dim=(-2, -1), keepdim=True), min=-self.floor_db)
        c = torch.matmul(db, self.dct)                                    # (..., frames, n_mfcc)
        return torch.matmul(self.seg.transpose(0, 1), c)

    def decay_times(self, y: torch.Tensor) -> torch.Tensor:
        """(batch, time) -> (batch, len(decay_drops)): log decay times (see the class doc)."""
        db = 20.0 * torch.log10(FX.rms(y, frame_length=self.decay_frame, hop_length=self.decay_hop) + 1e-9)
        return FX.decay_times(db, self.decay_hop / self.sample_rate, self.decay_drops)

    def forward(self, y: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        return torch.cat([self.segment_mfcc(y).flatten(-2), self.decay_times(y)], dim=-1)


class LogMel(_Mel):
    """(batch, time) -> (batch, n_mels * frames): the log-mel grid (dB, 80 dB floor per clip)."""

    def forward(self, y: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        return self.log_mel(y, cache).flatten(-2)


DESCRIPTORS = ("level", "centroid", "bandwidth", "crest", "flux", "rolloff", "flatness", "zcr")
DEFAULT_SEGMENTS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


class Descriptors(_Spectral):
    """(batch, time) -> (batch, 8 * (n_segments + 1)): eight per-frame descriptors on log scales,
    averaged over onset segments, then each one's standard deviation over the clip.

    Per frame (``n_fft``/``hop_length`` STFT, centred): the RMS level of the windowed frame
    (from its spectrum, :func:`~klustr_gpu.features.functional.rms_from_power`) in dB relative to
    the clip's loudest frame (floored ``floor_db`` below it), ``log(1 + centroid)``,
    ``log(1 + bandwidth)``, ``log(crest + 1e-3)``, ``log(flux + 1e-4)``, ``log(1 + rolloff)``
    (Hz), ``log(flatness + 1e-8)`` and the zero-crossing rate: the shape of the spectrum and its
    change, with pitch present only coarsely (centroid and roll-off move with it; the shape of
    the partials does not decide them). Log scales make a ratio, not an absolute difference, what
    counts: 100 Hz to 200 Hz weighs like 2 kHz to 4 kHz. Segments: ``segments`` (seconds from
    the clip's start, cut at the clip's length: :func:`~klustr_gpu.features.functional.segment_edges`),
    segment-major: ``(n_segments, 8)`` means, then the 8 standard deviations.
    """

    def __init__(self, *, sample_rate: int, n_samples: int, n_fft: int = 1024, hop_length: int = 256,
                 segments: tuple[float, ...] = DEFAULT_SEGMENTS, floor_db: float = 80.0):
        super().__init__(n_fft, hop_length)
        self.n_samples, self.floor_db = int(n_samples), float(floor_db)
        edges = FX.segment_edges(segments, self.n_samples / sample_rate)
        self.register_buffer("freqs", FX.fft_frequencies(sample_rate, n_fft), persistent=False)
        self.register_buffer("seg", FX.segment_matrix(FX.n_frames(self.n_samples, hop_length), hop_length,
                                                      sample_rate, edges), persistent=False)

    def frames(self, y: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        """(batch, time) -> (batch, 8, frames) in the order of ``DESCRIPTORS``."""
        P = self.power(y, cache)
        S = self.magnitude(y, cache)
        centroid = FX.spectral_centroid(S, self.freqs)
        level = 20.0 * torch.log10(FX.rms_from_power(P, self.n_fft) + 1e-5)
        level = torch.clamp(level - level.amax(dim=-1, keepdim=True), min=-self.floor_db)
        rows = [
            level,
            torch.log1p(centroid),
            torch.log1p(FX.spectral_bandwidth(S, self.freqs, centroid)),
            torch.log(FX.spectral_crest(S) + 1e-3),
            torch.log(FX.spectral_flux(S) + 1e-4),
            torch.log1p(FX.spectral_rolloff(S, self.freqs)),
            torch.log(FX.spectral_flatness(S, P=P) + 1e-8),
            FX.zero_crossing_rate(y, frame_length=self.n_fft, hop_length=self.hop_length),
        ]
        return torch.stack(rows, dim=-2)

    def forward(self, y: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        y = FX.fit_length(y, self.n_samples)
        d = self.frames(y, cache if y.shape[-1] == self.n_samples else None)
        means = torch.matmul(d, self.seg).transpose(-1, -2).flatten(-2)          # segment-major
        return torch.cat([means, d.std(dim=-1, correction=0)], dim=-1)


class PitchFree(_Spectral):
    """(batch, time) -> (batch, n_coeffs): the shape of the spectrum with the pitch factored out.

    Each frame's power spectrum is pooled into log-frequency bands
    (:func:`~klustr_gpu.features.functional.log_frequency_fbank`: ``bins_per_octave`` from
    ``fmin`` to ``fmax``), taken in dB relative to the clip's peak (floored ``floor_db`` below),
    and its pattern along frequency described by
    :func:`~klustr_gpu.features.functional.shift_invariant_spectrum` (coefficients 1..n_coeffs):
    transposing a note shifts that pattern and leaves the coefficients as they were. The
    frames' coefficients are averaged weighted by each frame's power (the sound, not its silent
    tail), then ``log(x + 1e-3)``.
    """

    def __init__(self, *, sample_rate: int, n_samples: int, n_fft: int = 2048, hop_length: int = 512,
                 bins_per_octave: int = 24, fmin: float = 40.0, fmax: float = 10000.0, n_coeffs: int = 48,
                 floor_db: float = 60.0):
        super().__init__(n_fft, hop_length)
        self.n_samples, self.n_coeffs, self.floor_db = int(n_samples), int(n_coeffs), float(floor_db)
        self.register_buffer("fb", FX.log_frequency_fbank(sample_rate, n_fft, bins_per_octave=bins_per_octave,
                                                          fmin=fmin, fmax=fmax), persistent=False)

    def forward(self, y: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        y = FX.fit_length(y, self.n_samples)
        B = torch.matmul(self.power(y, cache if y.shape[-1] == self.n_samples else None).transpose(-1, -2),
                         self.fb)                                                  # (..., frames, bands)
        coeffs = FX.shift_invariant_spectrum(FX.db_relative(B, floor_db=self.floor_db), self.n_coeffs)
        e = B.sum(dim=-1)
        w = e / torch.clamp(e.sum(dim=-1, keepdim=True), min=1e-20)
        return torch.log(torch.einsum("...tk,...t->...k", coeffs, w) + 1e-3)


class Envelope(nn.Module):
    """(batch, time) -> (batch, points + len(decay_drops) + 1): the loudness envelope.

    The RMS level (``frame``/``hop`` samples, centred) in dB relative to the clip's loudest
    frame, floored ``floor_db`` below it, at ``points`` frames spaced geometrically over the
    clip (:func:`~klustr_gpu.features.functional.envelope_points`: dense at the attack); the log
    decay times to ``decay_drops`` dB below the peak (measured before the floor)
    (:func:`~klustr_gpu.features.functional.decay_times`); and ``log(t + 1e-3)`` of the time ``t``
    (s) of the peak itself (the attack).
    """

    def __init__(self, *, sample_rate: int, n_samples: int, frame: int = 1024, hop: int = 256, points: int = 12,
                 floor_db: float = 60.0, decay_drops: tuple[float, ...] = (10.0, 20.0, 40.0, 60.0)):
        super().__init__()
        self.sample_rate, self.n_samples = sample_rate, int(n_samples)
        self.frame, self.hop, self.points, self.floor_db = frame, hop, int(points), float(floor_db)
        self.decay_drops = tuple(float(d) for d in decay_drops)

    def forward(self, y: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        y = FX.fit_length(y, self.n_samples)
        db = 20.0 * torch.log10(FX.rms(y, frame_length=self.frame, hop_length=self.hop) + 1e-9)
        db = db - db.amax(dim=-1, keepdim=True)
        step = self.hop / self.sample_rate
        attack = torch.log(db.argmax(dim=-1).to(y.dtype) * step + 1e-3)
        return torch.cat([FX.envelope_points(torch.clamp(db, min=-self.floor_db), self.points),
                          FX.decay_times(db, step, self.decay_drops), attack[..., None]], dim=-1)


class SegmentMFCC(_Mel):
    """(batch, time) -> (batch, n_segments * n_mfcc): the first ``n_mfcc`` MFCCs (the coarse
    spectral envelope: few coefficients follow the formants and tilt, not the partials of one
    pitch) of the peak-relative log-mel spectrogram (floored ``floor_db`` below the clip's peak),
    averaged over onset segments (seconds, cut at the clip's length), segment-major."""

    def __init__(self, *, sample_rate: int, n_samples: int, n_mfcc: int = 8, n_mels: int = 64, n_fft: int = 1024,
                 hop_length: int = 256, floor_db: float = 60.0, segments: tuple[float, ...] = DEFAULT_SEGMENTS):
        super().__init__(sample_rate=sample_rate, n_mels=n_mels, n_fft=n_fft, hop_length=hop_length)
        self.n_samples, self.floor_db = int(n_samples), float(floor_db)
        edges = FX.segment_edges(segments, self.n_samples / sample_rate)
        self.register_buffer("seg", FX.segment_matrix(FX.n_frames(self.n_samples, hop_length), hop_length,
                                                      sample_rate, edges), persistent=False)
        self.register_buffer("dct", torchaudio.functional.create_dct(n_mfcc, n_mels, "ortho"), persistent=False)

    def forward(self, y: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        y = FX.fit_length(y, self.n_samples)
        P = self.power(y, cache if y.shape[-1] == self.n_samples else None)
        mel = torch.matmul(P.transpose(-1, -2), self.fb)                          # (..., frames, n_mels)
        c = torch.matmul(FX.db_relative(mel + 1e-10, floor_db=self.floor_db), self.dct)
        return torch.matmul(self.seg.transpose(0, 1), c).flatten(-2)


class Blocks(nn.Module):
    """(batch, time) -> (batch, sum of dims): several sets side by side on the clip cut or
    zero-padded to ``n_samples``, one STFT cache shared."""

    def __init__(self, blocks: dict[str, nn.Module], n_samples: int):
        super().__init__()
        self.blocks = nn.ModuleDict(blocks)
        self.n_samples = int(n_samples)

    def forward(self, y: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        if y.shape[-1] != self.n_samples:
            y, cache = FX.fit_length(y, self.n_samples), None
        cache = {} if cache is None else cache
        return torch.cat([m(y, cache) for m in self.blocks.values()], dim=-1)


def analysis_samples(cfg: Config) -> int:
    """Samples per analysed clip: the clip length, or the window in frame mode."""
    seconds = cfg.features.window if cfg.features.frames else cfg.audio.clip_seconds
    return int(round(seconds * cfg.audio.sample_rate))


def _general_block(name: str, cfg: Config, n: int) -> nn.Module:
    sr = cfg.audio.sample_rate
    if name == "timbre":
        return build("timbre", cfg)
    if name == "segment_mfcc":
        g = cfg.general
        return SegmentMFCC(sample_rate=sr, n_samples=n, n_mfcc=g.n_mfcc, n_mels=g.n_mels, n_fft=g.n_fft,
                           hop_length=g.hop_length, floor_db=g.floor_db, segments=tuple(g.segments))
    if name == "descriptors":
        c = cfg.descriptors
        return Descriptors(sample_rate=sr, n_samples=n, n_fft=c.n_fft, hop_length=c.hop_length,
                           segments=tuple(c.segments), floor_db=c.floor_db)
    if name == "pitchfree":
        c = cfg.pitchfree
        return PitchFree(sample_rate=sr, n_samples=n, n_fft=c.n_fft, hop_length=c.hop_length, bins_per_octave=c.bins_per_octave,
                         fmin=c.fmin, fmax=c.fmax, n_coeffs=c.n_coeffs, floor_db=c.floor_db)
    if name == "envelope":
        c = cfg.envelope
        return Envelope(sample_rate=sr, n_samples=n, frame=c.frame, hop=c.hop, points=c.points,
                        floor_db=c.floor_db, decay_drops=tuple(c.decay_drops))
    raise ValueError(f"unknown block {name!r} of the general set; choose from: {', '.join(GENERAL_BLOCKS)}")


GENERAL_BLOCKS = ("timbre", "segment_mfcc", "descriptors", "pitchfree", "envelope")


def build(name: str, cfg: Config) -> nn.Module:
    """The module computing feature set ``name`` under ``cfg`` (in eval mode, on the CPU)."""
    sr = cfg.audio.sample_rate
    if name == "stft":
        c = cfg.stft
        m = STFTFingerprint(n_fft=c.n_fft, hop_length=c.hop_length, log=c.log, group=c.group, size=c.size)
    elif name == "mfcc":
        c = cfg.mfcc
        m = MFCC(sample_rate=sr, n_mfcc=c.n_mfcc, n_mels=c.n_mels, n_fft=c.n_fft, hop_length=c.hop_length,
                 deltas=c.deltas, summary=c.summary)
    elif name == "mir":
        c = cfg.mir
        m = MIR(sample_rate=sr, n_fft=c.n_fft, hop_length=c.hop_length, summary=c.summary)
    elif name == "timbre":
        c = cfg.timbre
        m = Timbre(sample_rate=sr, n_mfcc=c.n_mfcc, n_mels=c.n_mels, n_fft=c.n_fft, hop_length=c.hop_length,
                   floor_db=c.floor_db, segments=tuple(c.segments), decay_drops=tuple(c.decay_drops),
                   decay_frame=c.decay_frame, decay_hop=c.decay_hop)
    elif name == "mel":
        c = cfg.mel
        m = LogMel(sample_rate=sr, n_mels=c.n_mels, n_fft=c.n_fft, hop_length=c.hop_length)
    elif name in ("descriptors", "pitchfree", "envelope"):
        m = _general_block(name, cfg, analysis_samples(cfg))
    elif name == "general":
        n = analysis_samples(cfg)
        m = Blocks({b: _general_block(b, cfg, n) for b in cfg.general.active_blocks()}, n)
    else:
        raise ValueError(f"unknown feature set {name!r}")
    return m.eval()


def output_dim(module: nn.Module, n_samples: int) -> int:
    """Feature dimension of ``module`` for clips of ``n_samples`` samples."""
    with torch.no_grad():
        return int(module(torch.zeros(1, n_samples, device=module_device(module))).shape[-1])


def module_device(module: nn.Module) -> torch.device:
    for b in module.buffers():
        return b.device
    return torch.device("cpu")
