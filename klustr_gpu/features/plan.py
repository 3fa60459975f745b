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
    sizes: np.ndarray               # each file's identity at the scan: size in bytes,
    mtimes: np.ndarray              # modification time in ns (-1: unknown, a manifest of an older klustr)
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
        sizes = df["size"].to_numpy(dtype=np.int64)
        mtimes = df["mtime_ns"].to_numpy(dtype=np.int64)
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
        return cls(ids, sizes, mtimes, ok, paths, n_w, *units, shards, frames,
                   layout_hash(ids, sizes, mtimes, extra), window, hop)

    @property
    def frame_args(self) -> tuple[float, float] | None:
        """``(window, hop)`` in seconds in frame mode (what the decoder cuts), else None."""
        return (self.window, self.hop) if self.frames else None

    def files_table(self) -> pd.DataFrame:
        return pd.DataFrame({"id": self.ids, "size": self.sizes, "mtime_ns": self.mtimes, "ok": self.ok})

    def identity(self, pos: int) -> tuple[int, int]:
        """(size, mtime in ns) of the file at ``pos``, as the scan saw it."""
        return int(self.sizes[pos]), int(self.mtimes[pos])

    def items(self, units: Iterable[int], known: dict[str, str] | None = None) -> Iterator[Item]:
        """The decoder's work items of ``units``; ``known``: file id -> the clip hash its rows
        were computed from, for files whose identity changed (see :func:`known_hashes`)."""
        known = known or {}
        for u in units:
            pos = self.unit_pos[u]
            yield Item(int(u), str(self.paths[pos]), int(self.unit_first[u]), int(self.unit_n[u]),
                       int(self.sizes[pos]), int(self.mtimes[pos]), known.get(self.ids[pos], ""))

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

    def reusable(self, fid: str, identity: tuple[int, int]) -> bool:
        """Rows of file ``fid`` can be copied: the source has it with this identity."""
        return self.source is not None and self.source.has(fid, identity)


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
    needs, and not reusable, same id, size and mtime, by every such set), and
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
            need[u] = layout.ok[pos] and any(not p.reusable(layout.ids[pos], layout.identity(pos)) for p in active)
    return need, work


def known_hashes(layout: Layout, units: np.ndarray, sources: list[RowSource | None]) -> dict[str, str]:
    """Clip mode: file id -> the hash of the clip its rows were computed from, for the files of
    ``units`` that every set's source holds under one hash. A file whose size or mtime changed
    (touched, copied without its times) is decoded again; when its clip hashes the same, its
    rows are copied instead of computed (:func:`.decode.decode_task`)."""
    if layout.frames or not sources or any(s is None for s in sources):
        return {}
    out = {}
    for u in units:
        fid = layout.ids[layout.unit_pos[u]]
        hs = {s.hash_of(fid) for s in sources}
        if len(hs) == 1 and "" not in hs:
            out[fid] = hs.pop()
    return out
