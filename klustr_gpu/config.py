"""One typed configuration object: every default of klustr_gpu lives here, once.

A :class:`Config` is a tree of small dataclasses (``audio``, ``scan``, ``features``, ``stft``,
``mfcc``, ``mir``, ``mel``, ``timbre``, ``descriptors``, ``pitchfree``, ``envelope``, ``general``,
``reduce``, ``render``, ``score``), plus ``decisions``: what automatic rules decided, and why.
It is written to ``PROJECT/klustr.toml`` before any stage starts, so every run is reproducible
and diffable.

Two presets:

``default``
    For any sample library: 22.05 kHz mono, 1 s clips, the ``general`` set and t-SNE
    (perplexity 10) after standardising and PCA to 32 components. ``general`` is blocks of the
    other sets chosen per library by a label-free rule (:mod:`klustr_gpu.features.auto`): a
    library of hits (drums, percussion) gets ``timbre`` (onset-segment MFCCs and decay times)
    + ``descriptors``; a library of sustained notes gets pitch-robust blocks (``descriptors``,
    ``pitchfree``, ``envelope``), because the same instrument plays many pitches and MFCCs follow
    the pitch; a library holding both, ``mixed``. Chosen on four labelled libraries
    (``benchmarks/quality.py``, docs/configuration.md): the Hydrogen kits, the TimGM6mb drums
    and notes, and the demo corpus.
``klustr``
    The 2017 settings: 48 kHz mono, 0.25 s clips, n_fft 1024 / hop 256 STFT fingerprint,
    30 MFCCs as a flattened grid, PCA to 14 components before UMAP with the correlation
    metric, no PCA before t-SNE.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
from dataclasses import dataclass, field, fields, asdict
from pathlib import Path
from typing import Any

import tomli_w

from .errors import UsageError

AUDIO_EXTENSIONS = (".wav", ".flac", ".aiff", ".aif", ".ogg", ".mp3")
FFMPEG_EXTENSIONS = (".m4a", ".aac", ".opus", ".wma", ".mp4", ".webm")
FEATURE_SETS = ("stft", "mfcc", "mir", "mel", "timbre", "descriptors", "pitchfree", "envelope", "general")

# The choices of every enumerated option, defined here once: the config checks them, the
# library refuses anything else, and the command line offers exactly these.
METHODS = ("umap", "tsne", "pca")                    # reduce.method
ENGINES = ("auto", "cuml", "torchdr", "cpu")         # reduce.engine
DEVICES = ("auto", "cpu", "cuda")                    # features.device
COLOUR_BY = ("auto", "label", "cluster")             # render.by
RANK_BY = ("knn_accuracy", "trustworthiness", "knn_preservation", "final")   # score.rank_by
LABEL_FROM = ("parent",)                             # scan: label a file by ...


@dataclass
class AudioConfig:
    """How a file becomes a clip: ``(samples,)`` float32 at ``sample_rate``."""

    sample_rate: int = 22050
    clip_seconds: float = 1.0
    normalize: bool = True          # peak-normalise each clip to 1.0
    silence_threshold: float = 1e-5  # peak below this = all-silent -> skipped
    max_channels: int = 8            # more channels than this -> skipped
    min_sample_rate: int = 4000
    max_sample_rate: int = 384000


@dataclass
class ScanConfig:
    extensions: list[str] = field(default_factory=lambda: list(AUDIO_EXTENSIONS))
    follow_symlinks: bool = True
    workers: int = 0                 # header-reading processes; 0 = one per core (up to 8)
    hash_full_below: int = 16 * 1024 * 1024  # unused: the scan reads no audio bytes (kept so older klustr.toml load)


@dataclass
class FeatureConfig:
    sets: list[str] = field(default_factory=lambda: ["general"])
    device: str = "auto"
    batch_size: int = 256
    workers: int = 0                 # 0 = choose from the CPU count
    shard_size: int = 2048           # rows per committed shard
    frames: bool = False
    window: float = 0.5              # frame mode: seconds per point
    hop: float = 0.25                # frame mode: seconds between points
    cluster: str = ""                # Dask cluster: "" (in-process), local:N, cuda, tcp://HOST:PORT


@dataclass
class STFTConfig:
    n_fft: int = 1024
    hop_length: int = 256
    log: bool = True
    group: int = 10                  # frequency bins averaged per group
    size: int = 32                   # fingerprint is size x size


@dataclass
class MFCCConfig:
    n_mfcc: int = 20
    n_mels: int = 64
    n_fft: int = 1024
    hop_length: int = 256
    deltas: bool = True
    summary: str = "stats"           # "stats" (mean, std per coefficient) or "grid"


@dataclass
class MIRConfig:
    n_fft: int = 1024
    hop_length: int = 256
    summary: str = "stats"           # "stats" or "grid" (per-clip z-scored, as in 2017)


@dataclass
class MelConfig:
    n_mels: int = 64
    n_fft: int = 1024
    hop_length: int = 256


@dataclass
class TimbreConfig:
    """Onset-segment MFCCs + decay times (see :class:`klustr_gpu.features.transforms.Timbre`)."""

    n_mfcc: int = 20
    n_mels: int = 128
    n_fft: int = 1024
    hop_length: int = 128
    floor_db: float = 60.0           # log-mel relative to the clip's peak, floored this far below
    segments: list[float] = field(default_factory=lambda: [0.0, 0.02, 0.05, 0.1, 0.2, 0.5])  # seconds
    decay_drops: list[float] = field(default_factory=lambda: [10.0, 20.0, 40.0, 60.0])      # dB below the peak
    decay_frame: int = 1024          # RMS envelope frame / hop (samples) for the decay times
    decay_hop: int = 256


SEGMENTS = [0.0, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0]   # seconds from the clip's start, cut at its length


@dataclass
class DescriptorsConfig:
    """Eight log-scale per-frame descriptors over onset segments (:class:`~klustr_gpu.features.transforms.Descriptors`)."""

    n_fft: int = 1024
    hop_length: int = 512            # 23 ms frames: as accurate as 256 on the four libraries, half the cost
    segments: list[float] = field(default_factory=lambda: list(SEGMENTS))
    floor_db: float = 80.0           # level: dB below the clip's loudest frame, floored here


@dataclass
class PitchFreeConfig:
    """The spectrum's shape with the pitch factored out (:class:`~klustr_gpu.features.transforms.PitchFree`)."""

    n_fft: int = 2048
    hop_length: int = 1024
    bins_per_octave: int = 24
    fmin: float = 40.0
    fmax: float = 10000.0
    n_coeffs: int = 48
    floor_db: float = 60.0


@dataclass
class EnvelopeConfig:
    """The loudness envelope (:class:`~klustr_gpu.features.transforms.Envelope`)."""

    frame: int = 1024
    hop: int = 256
    points: int = 12                 # envelope values at geometrically spaced frames
    floor_db: float = 60.0
    decay_drops: list[float] = field(default_factory=lambda: [10.0, 20.0, 40.0, 60.0])


#: The blocks of the ``general`` set by profile (see :class:`GeneralConfig`).
PROFILES = {
    "hits": ["timbre", "descriptors"],                       # drums, percussion, one-shot effects
    "sustained": ["descriptors", "pitchfree", "envelope"],   # notes of instruments, pads, drones
    "mixed": ["segment_mfcc", "descriptors", "pitchfree", "envelope"],
}
GENERAL_PROFILES = ("auto", *PROFILES, "custom")


@dataclass
class GeneralConfig:
    """The ``general`` set (the default): blocks side by side, chosen by ``profile``.

    ``auto`` (default): the features stage samples the library and decides ``hits`` or
    ``sustained`` by a label-free rule (:mod:`klustr_gpu.features.auto`), written to ``decided``
    (and its reason to ``Config.decisions``) before any feature is computed; ``mixed`` when it
    cannot decide. ``hits``, ``sustained``, ``mixed``: that profile's blocks
    (:data:`PROFILES`). ``custom``: ``blocks``. Block settings: ``timbre`` from the
    ``[timbre]`` section, ``descriptors``/``pitchfree``/``envelope`` from theirs, ``segment_mfcc``
    (the first ``n_mfcc`` MFCCs averaged over the clip's onset segments) from the keys below.
    """

    profile: str = "auto"
    decided: str = ""                # written by the features stage when profile = "auto"
    blocks: list[str] = field(default_factory=lambda: list(PROFILES["mixed"]))   # profile = "custom"
    n_mfcc: int = 8
    n_mels: int = 64
    n_fft: int = 1024
    hop_length: int = 512            # the descriptors' STFT, computed once for both
    floor_db: float = 60.0
    segments: list[float] = field(default_factory=lambda: list(SEGMENTS))

    def active_blocks(self) -> list[str]:
        """The blocks the set computes: the profile's, the decided one's under ``auto`` (``mixed``
        before anything was decided), or ``blocks`` under ``custom``."""
        if self.profile == "custom":
            return list(self.blocks)
        if self.profile == "auto":
            return list(PROFILES.get(self.decided, PROFILES["mixed"]))
        return list(PROFILES[self.profile])


@dataclass
class ReduceConfig:
    method: str = "tsne"
    features: str = "general"
    engine: str = "auto"
    standardize: bool = True
    pca_components: int = 32         # 0 = no PCA before t-SNE/UMAP
    pca_before_tsne: bool = True
    n_neighbors: int = 15
    min_dist: float = 0.1
    metric: str = "euclidean"
    perplexity: float = 10.0
    tsne_iterations: int = 500      # early exaggeration (a quarter, <= 250) included
    sample_threshold: int = 200_000  # above: fit on a sample, transform the rest
    sample_size: int = 100_000
    umap_epochs: int = 0             # 0 = auto (200)
    transform_batch: int = 100_000   # rows per batch when placing points beyond the sample
    cache_neighbours: bool = True    # keep k-NN graphs in PROJECT/neighbours/ for reuse
    clusters: int = 12               # k-means clusters of the features stored with each map (0 = none)


@dataclass
class RenderConfig:
    width: int = 1200
    height: int = 900
    by: str = "auto"                 # "label", "cluster" or "auto" (label if any, else cluster)
    html_max_points: int = 100_000   # map.html: above this, the raster instead of the points
    neighbours: int = 10             # serve: neighbours listed for a clicked sample


@dataclass
class ScoreConfig:
    """Map-quality scores (``klustr score``) and the population of maps (``klustr grid``)."""

    k: int = 10                      # neighbours for k-NN accuracy, trustworthiness, preservation
    sample: int = 10000              # points scored on maps larger than this (fixed random sample)
    rank_by: str = "knn_accuracy"    # "knn_accuracy", "trustworthiness" or "final" (the 2017 score)
    methods: list[str] = field(default_factory=lambda: ["umap", "tsne", "pca"])
    perplexities: list[float] = field(default_factory=lambda: [5.0, 30.0, 50.0, 100.0])
    n_neighbors: list[int] = field(default_factory=lambda: [5, 15, 30, 50])
    min_dists: list[float] = field(default_factory=lambda: [0.0, 0.01, 0.1, 0.5])
    tsne_iterations: int = 1000      # grid t-SNE: enough to converge at every perplexity



@dataclass
class Config:
    preset: str = "default"
    seed: int = 0
    audio: AudioConfig = field(default_factory=AudioConfig)
    scan: ScanConfig = field(default_factory=ScanConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    stft: STFTConfig = field(default_factory=STFTConfig)
    mfcc: MFCCConfig = field(default_factory=MFCCConfig)
    mir: MIRConfig = field(default_factory=MIRConfig)
    mel: MelConfig = field(default_factory=MelConfig)
    timbre: TimbreConfig = field(default_factory=TimbreConfig)
    descriptors: DescriptorsConfig = field(default_factory=DescriptorsConfig)
    pitchfree: PitchFreeConfig = field(default_factory=PitchFreeConfig)
    envelope: EnvelopeConfig = field(default_factory=EnvelopeConfig)
    general: GeneralConfig = field(default_factory=GeneralConfig)
    reduce: ReduceConfig = field(default_factory=ReduceConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    #: what automatic rules decided and why, one line each (written by the stage that decided)
    decisions: dict[str, str] = field(default_factory=dict)

    # -- construction -------------------------------------------------------------------
    @classmethod
    def preset_named(cls, name: str = "default") -> "Config":
        if name not in PRESETS:
            raise UsageError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
        return PRESETS[name]()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Config":
        cfg = cls.preset_named(data.get("preset", "default"))
        return cfg.updated(data)

    def updated(self, data: dict[str, Any]) -> "Config":
        """A copy with ``data`` (nested dict, or ``"section.key"`` keys) applied; checks names."""
        cfg = dataclasses.replace(self)
        for key, value in data.items():
            if "." in key:
                section, _, name = key.partition(".")
                value = {name: value}
                key = section
            _apply(cfg, key, value)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        for s in self.features.sets:
            if s not in FEATURE_SETS:
                raise UsageError(f"unknown feature set {s!r}; choose from: {', '.join(FEATURE_SETS)}")
        for value, choices, param in ((self.features.device, DEVICES, "device"), (self.reduce.method, METHODS, "method"),
                                      (self.reduce.engine, ENGINES, "engine"), (self.render.by, COLOUR_BY, "by"),
                                      (self.score.rank_by, RANK_BY, "rank_by")):
            if value not in choices:
                raise UsageError(f"unknown {param} {value!r}; choose one of: {', '.join(choices)}", param=param)
        if self.audio.sample_rate < 1000 or self.audio.clip_seconds <= 0:
            raise UsageError("audio.sample_rate must be >= 1000 and audio.clip_seconds > 0")
        if self.features.batch_size < 1 or self.features.shard_size < 1:
            raise UsageError("features.batch_size and features.shard_size must be >= 1")
        if self.features.window <= 0 or self.features.hop <= 0:
            raise UsageError("features.window and features.hop must be > 0 seconds")
        g = self.general
        if g.profile not in GENERAL_PROFILES:
            raise UsageError(f"unknown general.profile {g.profile!r}; choose one of: {', '.join(GENERAL_PROFILES)}")
        if g.decided not in ("", *PROFILES):
            raise UsageError(f"general.decided must be empty or one of: {', '.join(PROFILES)}; got {g.decided!r}")
        blocks = ("timbre", "segment_mfcc", "descriptors", "pitchfree", "envelope")
        bad = [b for b in g.blocks if b not in blocks]
        if bad or not g.blocks:
            raise UsageError(f"general.blocks: unknown or none ({', '.join(bad) or 'empty'}); choose from: {', '.join(blocks)}")

    # -- persistence ----------------------------------------------------------------------
    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    @classmethod
    def from_toml(cls, text: str) -> "Config":
        return cls.from_dict(tomllib.loads(text))

    @classmethod
    def load(cls, path: str | Path) -> "Config":
        return cls.from_toml(Path(path).read_text(encoding="utf-8"))

    def section_hash(self, *sections: str) -> str:
        """A short stable hash of the named sections (e.g. ``"audio", "mfcc"``)."""
        d = self.to_dict()
        blob = json.dumps({s: d[s] for s in sections}, sort_keys=True).encode()
        return hashlib.blake2b(blob, digest_size=8).hexdigest()


def _apply(obj: Any, key: str, value: Any) -> None:
    names = {f.name for f in fields(obj)}
    if key not in names:
        raise UsageError(f"unknown setting {key!r}; known: {', '.join(sorted(names))}")
    current = getattr(obj, key)
    if dataclasses.is_dataclass(current):
        if not isinstance(value, dict):
            raise UsageError(f"setting {key!r} is a section; give a table of values")
        sub = dataclasses.replace(current)
        for k, v in value.items():
            _apply(sub, k, v)
        setattr(obj, key, sub)
        return
    if current is not None and value is not None:
        try:
            if isinstance(current, bool):
                if isinstance(value, str):
                    value = value.lower() in ("1", "true", "yes", "on")
                value = bool(value)
            elif isinstance(current, int) and not isinstance(value, bool):
                value = int(value)
            elif isinstance(current, float):
                value = float(value)
            elif isinstance(current, list) and isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
        except (TypeError, ValueError):
            raise UsageError(f"setting {key!r}: cannot use {value!r} as {type(current).__name__}") from None
    setattr(obj, key, value)


def _default() -> Config:
    return Config()


def _klustr2017() -> Config:
    return Config(
        preset="klustr",
        audio=AudioConfig(sample_rate=48000, clip_seconds=0.25, normalize=True),
        features=FeatureConfig(sets=["stft", "mfcc", "mir"]),
        stft=STFTConfig(n_fft=1024, hop_length=256, log=True, group=10, size=32),
        mfcc=MFCCConfig(n_mfcc=30, n_mels=128, n_fft=2048, hop_length=512, deltas=False, summary="grid"),
        mir=MIRConfig(n_fft=1024, hop_length=256, summary="grid"),
        reduce=ReduceConfig(method="umap", features="mfcc", pca_components=14, pca_before_tsne=False,
                            n_neighbors=15, min_dist=0.01, metric="correlation", perplexity=50.0),
    )


PRESETS = {"default": _default, "klustr": _klustr2017}
