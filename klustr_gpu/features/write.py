"""Writing for the features stage: one routine writes a shard, for every kind of run.

:func:`write_shard` takes a shard of the layout, the sets that still need it and the ordered
stream of :class:`~.compute.Computed` rows of the shard's units that had to be decoded, and
writes every unit's rows of every set in file order: computed rows, rows copied from an older
generation (same file id and identity, size and mtime; or a changed file whose decoded clip
hashes as before), NaN rows (clip mode) for files that are not ok or failed, the skip reasons,
and (clip mode) the hash of the clip each row comes from. The in-process run, a Dask clip task (which writes its shard's
own region and leaves the commit to the client) and the Dask client in frame mode (replaying
a task's rows) all call it; only whether it commits differs.
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import pandas as pd

from .compute import Computed
from .plan import Layout, SetPlan


class ShardWriter:
    """Appends one shard's rows of one set at ``offset`` (default: after the committed rows),
    in file order; :meth:`commit` records the shard in the set's ledger."""

    def __init__(self, plan: SetPlan, frames: bool, offset: int | None = None):
        self.plan, self.frames = plan, frames
        self.offset = plan.gen.rows_done if offset is None else offset
        self.buf: list[np.ndarray] = []
        self.index: list[tuple[np.ndarray, np.ndarray]] = []
        self.n_buf = 0
        self.skipped: dict[str, str] = {}
        self.hashes: dict[str, str] = {}

    def add(self, fid: str, rows: np.ndarray, starts: np.ndarray | None) -> None:
        self.buf.append(rows)
        self.n_buf += len(rows)
        if self.frames and len(rows):
            self.index.append((np.full(len(rows), fid, dtype=object), starts))
            if self.n_buf >= self.plan.gen.chunk_rows:
                self.flush()

    def add_nan(self, fid: str) -> None:
        """Clip mode: the row of a file without features (frame mode: no rows)."""
        if not self.frames:
            self.add(fid, np.full((1, self.plan.gen.dim), np.nan, np.float32), None)

    def dead(self, fid: str) -> bool:
        """The file was found broken (in this shard or a committed one): drop its later blocks."""
        return fid in self.skipped or fid in self.plan.gen.skipped

    def flush(self) -> None:
        if self.buf:
            rows = np.concatenate(self.buf).astype(np.float32, copy=False)
            self.plan.store.write_rows(self.plan.gen, self.offset, rows)
            self.offset += len(rows)
        self.buf, self.n_buf = [], 0

    def commit(self) -> None:
        self.flush()
        index = None
        if self.frames:
            fids = np.concatenate([f for f, _ in self.index]) if self.index else np.array([], dtype=object)
            st = np.concatenate([s for _, s in self.index]) if self.index else np.array([], dtype=float)
            index = pd.DataFrame({"file_id": fids.astype(str), "start": st.astype(np.float64)})
        self.plan.store.commit(self.plan.gen, rows_done=self.offset, skipped=self.skipped, index=index,
                               hashes=self.hashes)
        self.plan.skipped.update(self.skipped)


def write_shard(layout: Layout, k: int, plans: list[SetPlan], need: np.ndarray, computed: Iterator[Computed], *,
                commit: bool = True, offset: int | None = None,
                on_unit: Callable[[int], None] | None = None) -> dict[str, ShardWriter]:
    """Write shard ``k`` of every set in ``plans``.

    ``need``: bool per unit of the shard, the units whose rows come from ``computed`` (in unit
    order); every other unit is copied or is of a file that is not ok. ``commit=False`` writes
    the rows (from ``offset``) without committing: a Dask clip task's share. ``on_unit(u)`` is
    called after each computed unit (progress). Returns the writers, by set.
    """
    lo, hi = layout.shards[k]
    writers = {p.name: ShardWriter(p, layout.frames, offset) for p in plans}
    for u in range(lo, hi):
        if need[u - lo]:
            _emit_computed(_next(computed, u), plans, writers, layout)
            if on_unit is not None:
                on_unit(u)
        else:
            _emit_known(u, plans, writers, layout)
    for w in writers.values():
        w.commit() if commit else w.flush()
    return writers


def _next(computed: Iterator[Computed], u: int) -> Computed:
    c = next(computed, None)
    if c is None:
        raise RuntimeError(f"the computed stream ended before unit {u}")
    if c.item.unit != u:
        raise RuntimeError(f"the computed stream gave unit {c.item.unit} where unit {u} was due")
    return c


def _emit_known(u: int, plans: list[SetPlan], writers: dict[str, ShardWriter], layout: Layout) -> None:
    """A unit nobody computes in this run: of a file that is not ok (NaN row / no rows), or copied."""
    pos = layout.unit_pos[u]
    fid = layout.ids[pos]
    for p in plans:
        w = writers[p.name]
        if not layout.ok[pos]:
            w.add_nan(fid)
            continue
        _copy(u, fid, p, w, layout)


def _copy(u: int, fid: str, p: SetPlan, w: ShardWriter, layout: Layout) -> None:
    """Unit ``u``'s rows of set ``p`` copied from its source generation (with the skip reason
    and clip hash they had)."""
    reason = p.source.reason(fid)
    if reason:
        w.skipped[fid] = reason
        w.add_nan(fid)
        return
    rows, starts = p.source.rows(fid, int(layout.unit_first[u]), int(layout.unit_n[u]))
    w.add(fid, rows, starts)
    if not layout.frames:
        w.hashes[fid] = p.source.hash_of(fid)
    p.reused += len(rows)


def _emit_computed(c: Computed, plans: list[SetPlan], writers: dict[str, ShardWriter], layout: Layout) -> None:
    u = c.item.unit
    pos = layout.unit_pos[u]
    fid = layout.ids[pos]
    copy = plans if c.same else [p for p in plans if p.reusable(fid, layout.identity(pos))]
    for p in copy:
        _copy(u, fid, p, writers[p.name], layout)
    for p in plans:
        p.seconds += c.seconds.get(p.name, 0.0)
        if p in copy:
            continue
        w = writers[p.name]
        if c.reason is not None or w.dead(fid):
            if c.reason is not None:
                w.skipped[fid] = c.reason
            w.add_nan(fid)
            continue
        rows = c.rows[p.name]
        if not layout.frames and not np.isfinite(rows).all():
            w.skipped[fid] = "features not finite"
        starts = (c.item.first + np.arange(len(rows))) * layout.hop if layout.frames else None
        w.add(fid, rows, starts)
        if c.hash:
            w.hashes[fid] = c.hash
        p.computed += len(rows)
