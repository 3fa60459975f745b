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


class LogMel(_Mel):
    """(batch, time) -> (batch, n_mels * frames): the log-mel grid (dB, 80 dB floor per clip)."""

    def forward(self, y: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        return self.log_mel(y, cache).flatten(-2)


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
    elif name == "mel":
        c = cfg.mel
        m = LogMel(sample_rate=sr, n_mels=c.n_mels, n_fft=c.n_fft, hop_length=c.hop_length)
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
