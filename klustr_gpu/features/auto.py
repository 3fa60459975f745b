"""The label-free rule behind the default ``general`` set: hits or sustained sounds?

A drum kit and a set of instrument notes want different descriptions. In a library of hits
(drums, percussion, one-shot effects) what kind of sound it is lives in the spectrum of the
attack and how it decays: the ``hits`` profile (``timbre``'s onset-segment MFCCs and decay
times, plus the ``descriptors``). In a library of sustained notes the same instrument plays many
pitches, and MFCCs follow the pitch as much as the instrument: the ``sustained`` profile leaves
them out for pitch-robust blocks (``descriptors``, ``pitchfree``, ``envelope``).

The rule looks at the sounds only, never at labels. It decodes a seeded sample of the
library's clips (``SAMPLE`` files) and counts the *sustained* ones: those whose level (RMS,
1024-sample frames, hop 256) stays within ``SUSTAIN_DB`` (10 dB) of its peak for at least
``SUSTAIN_SECONDS`` (0.5 s) after it. A hit has decayed by then; a held note has not. Half or
more of the clips sustained -> ``sustained``; under 15 % -> ``hits``; in between, a library
holding both kinds -> ``mixed`` (whole-clip segment MFCCs with only 8 coefficients, the coarse
spectral envelope, beside the three pitch-robust blocks).

The constants were set on the four labelled libraries we have (no label is read; the shares,
over every clip of each): 0 % of the TimGM6mb drums and 3 % of the Hydrogen kits are
sustained, 28 % of the synthetic demo corpus (slowly decaying synthetic cymbals and toms, each
hit at a random pitch), 62 % of the TimGM6mb notes (the rest are piano, guitar and mallet notes
that decay). Of the (dB, seconds) pairs tried (3/6/10 dB x 0.2-0.5 s), 10 dB over 0.5 s leaves
the widest gap between the drum kits and the notes. Each library then got the profile whose
map was best on it: the kits ``hits``, the notes ``sustained``, the demo corpus ``mixed``
(10-NN accuracy of its t-SNE map 0.999, against 0.982 as hits). With fewer than ``MIN_CLIPS``
decodable clips, or in frame mode (a window of a recording is not one sound), the rule cannot
decide: it says so in the log and takes the ``mixed`` profile (every block but ``timbre``),
the documented fallback.

The decision is written to ``klustr.toml`` before any feature is computed: ``general.decided``
(part of the features' settings, so a changed decision recomputes them) and its reason in
``decisions.general`` (not part of them).
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..config import Config
from ..errors import SkipFile
from ..store import Project

log = logging.getLogger(__name__)

SAMPLE = 256                 # clips decoded to decide
MIN_CLIPS = 8                # fewer decodable clips: no decision (fallback)
SUSTAIN_DB = 10.0            # a sustained clip stays within this many dB of its peak ...
SUSTAIN_SECONDS = 0.5        # ... for at least this long after it
HITS_BELOW = 0.15            # fewer sustained clips than this share: the "hits" profile
SUSTAINED_FROM = 0.5         # this share or more: "sustained"; in between: "mixed"
FALLBACK = "mixed"


def sustained(clips: np.ndarray, sample_rate: int) -> np.ndarray:
    """Per clip ``(n, time)``: whether its RMS level (1024-sample frames, hop 256, centred) stays
    within ``SUSTAIN_DB`` of its peak for ``SUSTAIN_SECONDS`` from the first frame within 1 dB of
    the peak (the clip's end counts as still sustained: a clip cut short of its decay is not a
    hit). -> bool ``(n,)``."""
    import torch

    from . import functional as FX

    if len(clips) == 0:
        return np.zeros(0, dtype=bool)
    hop = 256
    with torch.no_grad():
        level = FX.rms(torch.as_tensor(np.asarray(clips, dtype=np.float32)), frame_length=1024, hop_length=hop)
        db = (20.0 * torch.log10(level + 1e-9)).numpy()
    db -= db.max(axis=1, keepdims=True)
    need = int(np.ceil(SUSTAIN_SECONDS * sample_rate / hop))
    out = np.zeros(len(db), dtype=bool)
    for i, row in enumerate(db):
        peak = int(np.argmax(row >= -1.0))          # the first frame within 1 dB of the peak (a steady
        below = np.flatnonzero(row[peak:] < -SUSTAIN_DB)    # tone's maximum may fall anywhere in it)
        held = below[0] if len(below) else len(row) - peak
        out[i] = held >= need
    return out


def _sample_clips(project: Project, cfg: Config, size: int) -> np.ndarray:
    from ..library.decode import decode

    df = project.read_manifest()
    ok = df[df["status"] == "ok"]
    if len(ok) > size:
        ok = ok.iloc[np.sort(np.random.default_rng(cfg.seed).choice(len(ok), size=size, replace=False))]
    root = project.library_root if len(ok) else None

    def one(rel: str) -> np.ndarray | None:
        try:
            return decode(root / rel, cfg.audio)
        except SkipFile:
            return None

    from concurrent.futures import ThreadPoolExecutor

    from ..runtime import usable_cores

    with ThreadPoolExecutor(max_workers=max(1, min(4, usable_cores()))) as pool:   # the decoders release the GIL
        clips = [c for c in pool.map(one, list(ok["path"])) if c is not None]        # in sample order
    n = int(round(cfg.audio.clip_seconds * cfg.audio.sample_rate))
    return np.stack(clips) if clips else np.zeros((0, n), np.float32)


def choose_profile(project: Project, cfg: Config, *, sample: int = SAMPLE) -> tuple[str, str, dict[str, Any]]:
    """``(profile, reason, figures)`` for the project's library under ``cfg`` (see the module doc)."""
    if cfg.features.frames:
        return FALLBACK, (f"cannot decide in frame mode (a window of a recording is not one sound); "
                          f"fallback: {FALLBACK}"), {}
    clips = _sample_clips(project, cfg, sample)
    if len(clips) < MIN_CLIPS:
        return FALLBACK, (f"cannot decide from {len(clips)} decodable clip(s) (needs {MIN_CLIPS}); "
                          f"fallback: {FALLBACK}"), {"clips": int(len(clips))}
    held = sustained(clips, cfg.audio.sample_rate)
    share = float(held.mean())
    if share < HITS_BELOW:
        profile, why = "hits", f"under {HITS_BELOW:.0%}"
    elif share >= SUSTAINED_FROM:
        profile, why = "sustained", f"{SUSTAINED_FROM:.0%} or more"
    else:
        profile, why = "mixed", f"{HITS_BELOW:.0%} to {SUSTAINED_FROM:.0%}: hits and sustained sounds"
    reason = (f"{int(held.sum())} of {len(held)} sampled clips ({share:.0%}) hold within {SUSTAIN_DB:g} dB of "
              f"their peak for {SUSTAIN_SECONDS:g} s ({why}): {profile}")
    return profile, reason, {"clips": int(len(held)), "sustained": int(held.sum()), "share": share}


def resolve(project: Project, cfg: Config) -> Config:
    """``cfg`` with the ``general`` set's profile decided when it is ``auto`` and the set is
    computed: ``general.decided`` and ``decisions["general"]`` filled in, the decision logged.
    Any other config comes back unchanged."""
    if "general" not in cfg.features.sets or cfg.general.profile != "auto":
        return cfg
    profile, reason, _ = choose_profile(project, cfg)
    if profile == FALLBACK and reason.startswith("cannot decide"):
        log.warning("features: general profile: %s", reason)
    else:
        log.info("features: general profile %s (%s)", profile, reason)
    return cfg.updated({"general.decided": profile, "decisions": {**cfg.decisions, "general": reason}})
