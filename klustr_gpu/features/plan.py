"""Planning for the features stage: which units of which files, in which shards, and what
each feature set's store still needs.

A :class:`Layout` lists the work units of a manifest in order (one per file for clips; blocks
of at most ``batch_size`` windows of one file in frame mode) and groups them into shards, the
unit of commit. A :class:`SetPlan` is one set's side: its store, the generation being written,
the older generation rows can be copied from, and counters. :func:`plan_run` is the start of
every run (in-process and Dask alike) and :func:`units_to_decode` says what it must decode.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pandas as pd

from ..config import Config
from ..store import Project
from .decode import Item
from .store import Generation, RowSource, SetStore, layout_hash, store_dir

log = logging.getLogger(__name__)


@dataclass
class Layout:
    """Work units in manifest order, grouped into shards (the unit of commit).

    A unit is one file (clips), or a block of at most ``batch_size`` consecutive windows of one
    file (frames), so a long recording spans many shards and a killed run loses at most one
    shard of it. Files that are not ok are one unit with no windows.
    """

    ids: np.ndarray
    hashes: np.ndarray
    ok: np.ndarray
    paths: list[Path]
    n_windows: np.ndarray           # windows per file (1 per ok file for clips)
    unit_pos: np.ndarray            # file position of each unit
    unit_first: np.ndarray          # index of the unit's first window within its file
    unit_n: np.ndarray              # windows in the unit
    shards: list[tuple[int, int]]   # [lo, hi) unit ranges
    frames: bool
    hash: str
    window: float = 0.0             # frame mode: seconds per window, seconds between windows
    hop: float = 0.0

    @classmethod
    def from_manifest(cls, project: Project, df: pd.DataFrame, cfg: Config, frames: bool) -> "Layout":
        fc = cfg.features
        ids = df["id"].astype(str).to_numpy()
        hashes = df["hash"].fillna("").astype(str).to_numpy()
        ok = (df["status"] == "ok").to_numpy()
        root = project.library_root if len(df) else Path(".")
        paths = [root / p for p in df["path"]]
        if not frames:
            n_w = ok.astype(np.int64)
            pos = np.arange(len(ids))
            units = (pos, np.zeros(len(ids), np.int64), n_w)
            shards = [(lo, min(lo + fc.shard_size, len(ids))) for lo in range(0, len(ids), fc.shard_size)]
            extra = f"clips|{fc.shard_size}"
        else:
            dur = df["duration"].fillna(0.0).to_numpy(dtype=float)
            n_w = np.where(ok, np.maximum(1, np.ceil((dur - fc.window / 2) / fc.hop)), 0).astype(np.int64)
            units, shards = frame_units(n_w, max(1, fc.batch_size), fc.shard_size)
            extra = f"frames|{fc.shard_size}|{fc.batch_size}|{fc.window}|{fc.hop}"
        window, hop = (fc.window, fc.hop) if frames else (0.0, 0.0)
        return cls(ids, hashes, ok, paths, n_w, *units, shards, frames, layout_hash(ids, hashes, extra), window, hop)

    @property
    def frame_args(self) -> tuple[float, float] | None:
        """``(window, hop)`` in seconds in frame mode (what the decoder cuts), else None."""
        return (self.window, self.hop) if self.frames else None

    def files_table(self) -> pd.DataFrame:
        return pd.DataFrame({"id": self.ids, "hash": self.hashes, "ok": self.ok})

    def items(self, units: Iterable[int]) -> Iterator[Item]:
        """The decoder's work items of ``units``."""
        for u in units:
            yield Item(int(u), str(self.paths[self.unit_pos[u]]), int(self.unit_first[u]), int(self.unit_n[u]))

    def shard_of(self) -> np.ndarray:
        """The shard of every unit."""
        out = np.zeros(len(self.unit_pos), np.int32)
        for k, (lo, hi) in enumerate(self.shards):
            out[lo:hi] = k
        return out


def frame_units(n_w: np.ndarray, per: int, shard_rows: int):
    """Blocks of ``per`` windows per file; shards close once they hold ``shard_rows`` windows."""
    blocks = np.maximum(1, -(-n_w // per))
    pos = np.repeat(np.arange(len(n_w)), blocks)
    starts = np.concatenate([[0], np.cumsum(blocks)[:-1]]) if len(n_w) else np.zeros(0, np.int64)
    k = np.arange(len(pos)) - np.repeat(starts, blocks)
    first = k * per
    n = np.clip(n_w[pos] - first, 0, per) if len(pos) else np.zeros(0, np.int64)
    shards, lo, acc = [], 0, 0
    for u, m in enumerate(n):
        acc += int(m)
        if acc >= shard_rows:
            shards.append((lo, u + 1))
            lo, acc = u + 1, 0
    if lo < len(pos):
        shards.append((lo, len(pos)))
    return (pos.astype(np.int64), first.astype(np.int64), n.astype(np.int64)), shards


def config_hash(cfg: Config, name: str, frames: bool) -> str:
    """The settings a set's rows depend on: ``audio``, its own section and, for ``general``, the
    sections of the blocks it computes (a changed ``[timbre]`` recomputes a ``hits`` general set)."""
    blocks = [b for b in cfg.general.active_blocks() if b != "segment_mfcc"] if name == "general" else []
    h = cfg.section_hash("audio", name, *blocks)
    return f"{h}:w{cfg.features.window}:h{cfg.features.hop}" if frames else h


# -- each set's plan ------------------------------------------------------------------------
@dataclass
class SetPlan:
    name: str
    store: SetStore
    gen: Generation
    source: RowSource | None
    done: bool = False              # current generation already matches: nothing to do
    computed: int = 0
    reused: int = 0
    seconds: float = 0.0
    skipped: dict[str, str] = field(default_factory=dict)

    def needs(self, k: int) -> bool:
        return not self.done and k >= self.gen.shards_done

    def reusable(self, fid: str, h: str) -> bool:
        return self.source is not None and self.source.has(fid, h)


def plan_set(project: Project, cfg: Config, name: str, layout: Layout, dim: int) -> SetPlan:
    store = SetStore(store_dir(project.features_root, name, layout.frames), name, layout.frames)
    chash = config_hash(cfg, name, layout.frames)
    cur = store.current()
    if cur and cur.layout == layout.hash and cur.config_hash == chash and cur.dim == dim:
        store.cleanup()
        return SetPlan(name, store, cur, None, done=True, reused=int(layout.n_windows.sum()))
    gen, resumed = store.begin(config_hash=chash, dim=dim, layout=layout.hash, shards_total=len(layout.shards),
                               chunk_rows=cfg.features.shard_size, files=layout.files_table())
    source = RowSource(store, cur) if cur and cur.config_hash == chash and cur.dim == dim else None
    plan = SetPlan(name, store, gen, source)
    if resumed:
        plan.reused = gen.rows_done
        log.info("features %s: resuming at shard %d/%d", name, gen.shards_done, gen.shards_total)
    return plan


# -- the run's plan -----------------------------------------------------------------------------
def plan_run(project: Project, cfg: Config) -> tuple[Layout, dict[str, Any], list[SetPlan]]:
    """The layout of the manifest, a module per feature set and each set's plan (what its
    store holds, what it still needs): the start of an in-process and of a Dask run alike."""
    from .transforms import build, output_dim

    fc = cfg.features
    frames = bool(fc.frames)
    layout = Layout.from_manifest(project, project.read_manifest(), cfg, frames)
    n_samples = int(round((fc.window if frames else cfg.audio.clip_seconds) * cfg.audio.sample_rate))
    modules = {s: build(s, cfg) for s in fc.sets}
    plans = [plan_set(project, cfg, s, layout, output_dim(modules[s], n_samples)) for s in fc.sets]
    return layout, modules, plans


def units_to_decode(layout: Layout, todo: list[SetPlan]) -> tuple[np.ndarray, list[tuple[int, list[SetPlan]]]]:
    """``(need, work)``: which units must be decoded (of an ok file, in a shard some set still
    needs, and not reusable, same id and content hash, by every such set), and
    ``[(shard, sets that need it)]``."""
    need = np.zeros(len(layout.unit_pos), bool)
    work: list[tuple[int, list[SetPlan]]] = []
    for k, (lo, hi) in enumerate(layout.shards):
        active = [p for p in todo if p.needs(k)]
        if not active:
            continue
        work.append((k, active))
        for u in range(lo, hi):
            pos = layout.unit_pos[u]
            need[u] = layout.ok[pos] and any(not p.reusable(layout.ids[pos], layout.hashes[pos]) for p in active)
    return need, work
