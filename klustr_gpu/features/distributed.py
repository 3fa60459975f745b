"""Feature extraction over a Dask cluster (``--cluster``), partitioned by manifest shards.

The client (this process) plans exactly like the in-process run (:func:`.pipeline.run`): which
shards of which set still need work, which rows can be copied from an older generation. It
then submits one task per shard. A task decodes and computes that shard's files on its worker
(with the in-process code: the same batches, hence the same floats) and writes the shard's
rows into its own region of each set's zarr array; it returns the shard's skips and counts.
The client alone writes the ledger: it commits shards in manifest order as their tasks finish.

Clip mode only: a shard is then exactly one zarr chunk (``chunk_rows == shard_size``, one row
per manifest row), so concurrent tasks never touch the same chunk file, and a shard's region
is known before it is computed. A worker killed mid-task loses only uncommitted rows: Dask
runs the task again elsewhere and the shard is rewritten whole, so the store ends complete
and identical to an uninterrupted run. A client killed mid-run resumes like the in-process
run (at its last committed shard), with or without a cluster.
"""
from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from tqdm.auto import tqdm

from ..config import Config
from ..errors import UsageError
from ..store import Project
from .pipeline import (TASK_WINDOWS, Layout, SetPlan, _Computer, _emit_computed, _emit_known, _items, _ordered,
                       _pack, _summary, _Writer, plan_set)
from .store import Generation, RowSource, SetStore

log = logging.getLogger(__name__)

#: A task raising an exception is tried this many more times (a killed worker is handled by
#: the scheduler's own ``allowed-failures``).
RETRIES = 2


@dataclass(frozen=True)
class SetSpec:
    """What a worker needs to write one set's rows of one shard (picklable, no open arrays)."""

    name: str
    path: str
    frames: bool
    gen: dict
    source: dict | None     # the complete older generation rows are copied from, if any


class _OneShard:
    """``shard_of`` for a task that holds the units of a single shard."""

    def __init__(self, k: int):
        self.k = k

    def __getitem__(self, unit) -> int:
        return self.k


_CACHE: dict[tuple, Any] = {}      # per worker process: built modules and row sources


def _cached(key: tuple, make):
    if key not in _CACHE:
        if len(_CACHE) > 16:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = make()
    return _CACHE[key]


def _layout(project: str, cfg: Config, cfg_json: str, expected: str) -> Layout:
    """The run's layout, rebuilt from the manifest on the worker (once per process): a task
    depends on no data held by another worker, so any worker can be lost."""
    def make() -> Layout:
        proj = Project(project)
        layout = Layout.from_manifest(proj, proj.read_manifest(), cfg, False)
        if layout.hash != expected:
            raise RuntimeError(f"the manifest of {project} changed during the run; rerun `klustr features`")
        layout.paths = [p.resolve() for p in layout.paths]
        return layout

    return _cached(("layout", project, cfg_json, expected), make)


def shard_task(project: str, cfg_json: str, layout_hash: str, specs: list[SetSpec], k: int,
               need: np.ndarray) -> dict[str, Any]:
    """Decode, compute and write shard ``k`` of every set in ``specs`` (runs on a worker).

    ``need``: bool per unit of the shard, the units to decode (the others are copied or are
    NaN rows of files that are not ok). Rows go to the arrays at the shard's own offset; nothing
    is committed. Returns ``{"shard", "rows_end", "sets": {name: {skipped, computed, reused, seconds}}}``.
    """
    from .pipeline import resolve_device
    from .transforms import build

    cfg = Config.from_dict(json.loads(cfg_json))
    device = resolve_device(cfg.features.device)
    layout = _layout(project, cfg, cfg_json, layout_hash)
    lo, hi = layout.shards[k]
    plans = []
    for s in specs:
        store = SetStore(Path(s.path), s.name, s.frames)
        gen = Generation(**s.gen)
        gen.rows_done = lo                      # clip mode: the shard's first row
        source = None
        if s.source is not None:
            src = Generation(**s.source)
            source = _cached(("source", s.path, src.name),
                             lambda: RowSource(SetStore(Path(s.path), s.name, s.frames), src))
        module = _cached(("module", cfg_json, s.name, str(device)), lambda: build(s.name, cfg).to(device))
        plans.append(SetPlan(s.name, store, gen, source, module=module))
    units = lo + np.flatnonzero(need)
    tasks = _pack(_items(layout, units), None, TASK_WINDOWS)
    decoded = _ordered(tasks, cfg.audio, None, 0)
    computer = _Computer(decoded, _OneShard(k), plans, device, cfg.features.batch_size)
    writers = {p.name: _Writer(p, layout.frames) for p in plans}
    with _worker_threads():
        for u in range(lo, hi):
            if need[u - lo]:
                _emit_computed(computer, u, plans, writers, layout, cfg.features.hop)
            else:
                _emit_known(u, plans, writers, layout)
        for w in writers.values():
            w.flush()
    ends = {w.offset for w in writers.values()}
    if ends != {hi}:
        raise RuntimeError(f"shard {k}: wrote rows up to {sorted(ends)}, expected {hi}")
    return {"shard": k, "rows_end": hi,
            "sets": {p.name: {"skipped": writers[p.name].skipped, "computed": p.computed, "reused": p.reused,
                              "seconds": p.seconds} for p in plans}}


@contextlib.contextmanager
def _worker_threads() -> Iterator[None]:
    """One torch thread per task (like the in-process decode workers): a worker may run several
    tasks at once, and ``local:N`` runs N workers on this machine; parallelism comes from tasks."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def check_spec(spec: str, frames: bool) -> None:
    """Fail at once on a bad ``--cluster`` (before any work)."""
    from ..cluster import parse

    parse(spec)
    if frames:
        raise UsageError("--cluster does not support frame mode (--frames) yet; run frame mode without --cluster")


def run(project: Project, cfg: Config, device, client, *, progress: bool = True) -> dict[str, Any]:
    """Like :func:`.pipeline.run`, with every shard computed as one task on ``client``'s workers."""
    from .transforms import build, output_dim

    t_start = time.perf_counter()
    fc = cfg.features
    if fc.frames:
        check_spec("local", True)
    df = project.read_manifest()
    layout = Layout.from_manifest(project, df, cfg, False)
    n_samples = int(round(cfg.audio.clip_seconds * cfg.audio.sample_rate))
    modules = {s: build(s, cfg) for s in fc.sets}
    plans = [plan_set(project, cfg, s, layout, output_dim(modules[s], n_samples)) for s in fc.sets]
    todo = [p for p in plans if not p.done]
    need = np.zeros(len(layout.unit_pos), bool)
    work: list[tuple[int, list[SetPlan]]] = []
    for k, (lo, hi) in enumerate(layout.shards):
        active = [p for p in todo if p.needs(k)]
        if active:
            work.append((k, active))
            for u in range(lo, hi):
                need[u] = layout.ok[u] and any(not p.reusable(layout.ids[u], layout.hashes[u]) for p in active)
    for p in todo:                     # every task writes its own region: size the arrays once
        arr = p.store.array(p.gen.name)
        if arr.shape[0] < len(layout.ids):
            arr.resize(len(layout.ids), p.gen.dim)
    n_files = int(need.sum())
    if work:
        _check_workers_see(client, [project.path.resolve(), project.library_root.resolve()])
        log.info("features: %d shards (%d files to decode) on the Dask cluster", len(work), n_files)
        _submit_and_commit(project, cfg, layout, work, need, client, progress)
    for p in todo:
        p.store.finish(p.gen)
    return _summary(project, plans, layout, device, time.perf_counter() - t_start)


def _check_workers_see(client, folders: list[Path]) -> None:
    """Every worker must see the library and the project at the same paths (else a remote
    worker would mark every file undecodable)."""
    import os

    for folder in folders:
        seen = client.run(os.path.isdir, str(folder))
        blind = sorted(w for w, ok in seen.items() if not ok)
        if not seen:
            raise UsageError("--cluster: the Dask cluster has no workers")
        if blind:
            raise UsageError(f"--cluster: {len(blind)} worker(s) cannot see {folder} (e.g. {blind[0]}); "
                             "workers need the library and the project at the same paths")


def _spec(p: SetPlan) -> SetSpec:
    return SetSpec(p.name, str(p.store.path.resolve()), p.store.frames, p.gen.to_dict(),
                   p.source.gen.to_dict() if p.source is not None else None)


def _submit_and_commit(project: Project, cfg: Config, layout: Layout, work: list[tuple[int, list[SetPlan]]],
                       need: np.ndarray, client, progress: bool) -> None:
    """One task per shard; commit finished shards to each set's ledger in manifest order."""
    from distributed import as_completed

    cfg_json = json.dumps(cfg.to_dict())
    token = uuid.uuid4().hex[:8]
    path = str(project.path.resolve())
    futures = {}
    for k, active in work:
        lo, hi = layout.shards[k]
        f = client.submit(shard_task, path, cfg_json, layout.hash, [_spec(p) for p in active], k, need[lo:hi],
                          key=f"klustr-shard-{k}-{token}", retries=RETRIES, pure=False)
        futures[f] = (k, active)
    order = [k for k, _ in work]
    active_of = dict(work)
    results: dict[int, dict] = {}
    bar = tqdm(total=int(need.sum()), desc=f"features {','.join(cfg.features.sets)} (dask)", unit=" files",
               disable=not progress)
    nxt = 0
    try:
        for f in as_completed(list(futures)):
            k, active = futures[f]
            results[k] = f.result()
            lo, hi = layout.shards[k]
            bar.update(int(need[lo:hi].sum()))
            while nxt < len(order) and order[nxt] in results:        # commit in manifest order
                _commit(results.pop(order[nxt]), active_of[order[nxt]])
                nxt += 1
    except BaseException:
        client.cancel(list(futures))
        raise
    finally:
        bar.close()


def _commit(res: dict[str, Any], active: list[SetPlan]) -> None:
    for p in active:
        r = res["sets"][p.name]
        p.computed += r["computed"]
        p.reused += r["reused"]
        p.seconds += r["seconds"]
        p.store.commit(p.gen, rows_done=res["rows_end"], skipped=r["skipped"])
        p.skipped.update(r["skipped"])
