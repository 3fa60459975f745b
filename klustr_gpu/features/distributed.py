"""Feature extraction over a Dask cluster (``--cluster``), partitioned by manifest shards.

The client (this process) plans exactly like the in-process run (:mod:`.run`): which
shards of which set still need work, which rows can be copied from an older generation. It
then submits one task per shard. A task decodes and computes that shard's files on its worker
(with the in-process code: the same batches, hence the same floats) and writes the shard's
rows into its own region of each set's zarr array with :func:`.write.write_shard` (without
committing); it returns the shard's skips and counts.
The client alone writes the ledger: it commits shards in manifest order as their tasks finish.

Clip mode: a shard is exactly one zarr chunk (``chunk_rows == shard_size``, one row per
manifest row), so concurrent tasks never touch the same chunk file, and a shard's region is
known before it is computed. A worker killed mid-task loses only uncommitted rows: Dask runs
the task again elsewhere and the shard is rewritten whole, so the store ends complete and
identical to an uninterrupted run. A client killed mid-run resumes like the in-process run
(at its last committed shard), with or without a cluster.

Frame mode (``--frames``): one task per shard of the frame layout (blocks of windows of long
recordings) decodes and computes its windows on a worker, like clip mode, but *returns* its
rows instead of writing them; the client writes them with :func:`.write.write_shard` and
commits the shards in order. Workers
cannot write frame rows themselves: a frame shard's first row depends on how many windows
every earlier shard kept (a file that fails to decode in one shard drops its blocks in the
later ones), and frame shards do not line up with zarr chunks, so two tasks would share
chunk files. The client's work per shard is a copy of rows it already holds.
"""
from __future__ import annotations

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
from ..results import FeaturesResult
from ..runtime import torch_device, torch_threads
from ..store import Project
from .compute import Computed, compute_stream
from .decode import TASK_WINDOWS, decode_task, ordered, pack
from .plan import Layout, SetPlan, known_hashes, plan_run, units_to_decode
from .run import summarize
from .store import Generation, RowSource, SetStore
from .write import write_shard

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
        layout = Layout.from_manifest(proj, proj.read_manifest(), cfg, bool(cfg.features.frames))
        if layout.hash != expected:
            raise RuntimeError(f"the manifest of {project} changed during the run; rerun compute_features({project!r})")
        layout.paths = [p.resolve() for p in layout.paths]
        return layout

    return _cached(("layout", project, cfg_json, expected), make)


def _modules(cfg: Config, cfg_json: str, sets, device) -> dict:
    """This worker's feature modules of ``sets`` (built once per process and config)."""
    from .transforms import build

    return {name: _cached(("module", cfg_json, name, str(device)), lambda: build(name, cfg).to(device))
            for name in sets}


def _computed(layout: Layout, cfg: Config, modules: dict, device, units: np.ndarray,
              known: dict[str, str] | None = None) -> Iterator[Computed]:
    """The computed rows of ``units`` (one shard), in order, decoded and computed here."""
    decoded = ordered(pack(layout.items(units, known), None, TASK_WINDOWS), decode_task,
                      (cfg.audio, layout.frame_args), 0)
    return compute_stream(decoded, modules, device, cfg.features.batch_size)


def shard_task(project: str, cfg_json: str, layout_hash: str, specs: list[SetSpec], k: int,
               need: np.ndarray) -> dict[str, Any]:
    """Decode, compute and write shard ``k`` of every set in ``specs`` (runs on a worker).

    ``need``: bool per unit of the shard, the units to decode (the others are copied or are
    NaN rows of files that are not ok). Rows go to the arrays at the shard's own offset; nothing
    is committed. Returns ``{"shard", "rows_end", "sets": {name: {skipped, computed, reused, seconds}}}``.
    """
    cfg = Config.from_dict(json.loads(cfg_json))
    device = torch_device(cfg.features.device)
    layout = _layout(project, cfg, cfg_json, layout_hash)
    lo, hi = layout.shards[k]
    plans = [SetPlan(s.name, SetStore(Path(s.path), s.name, s.frames), Generation(**s.gen), _source(s)) for s in specs]
    units = lo + np.flatnonzero(need)
    computed = _computed(layout, cfg, _modules(cfg, cfg_json, [s.name for s in specs], device), device, units,
                         known_hashes(layout, units, [p.source for p in plans]))
    with torch_threads(1):           # one thread per task: parallelism comes from tasks (see module doc)
        writers = write_shard(layout, k, plans, need, computed, commit=False, offset=lo)
    ends = {w.offset for w in writers.values()}
    if ends != {hi}:
        raise RuntimeError(f"shard {k}: wrote rows up to {sorted(ends)}, expected {hi}")
    return {"shard": k, "rows_end": hi,
            "sets": {p.name: {"skipped": writers[p.name].skipped, "computed": p.computed, "reused": p.reused,
                              "seconds": p.seconds, "hashes": writers[p.name].hashes} for p in plans}}


def _source(s: SetSpec) -> RowSource | None:
    """The older generation a set copies rows from (cached per worker process)."""
    if s.source is None:
        return None
    src = Generation(**s.source)
    return _cached(("source", s.path, src.name), lambda: RowSource(SetStore(Path(s.path), s.name, s.frames), src))


def frame_shard_task(project: str, cfg_json: str, layout_hash: str, sets: list[str], k: int,
                     need: np.ndarray) -> dict[str, Any]:
    """Frame mode: decode and compute the blocks of shard ``k`` marked in ``need`` (runs on a
    worker) with the in-process code (the same blocks, batches and floats); writes nothing.

    Returns ``{"shard", "units": [Computed, ...]}`` for the client to write (see the module
    docstring for why the client writes frame rows).
    """
    cfg = Config.from_dict(json.loads(cfg_json))
    device = torch_device(cfg.features.device)
    layout = _layout(project, cfg, cfg_json, layout_hash)
    lo, _hi = layout.shards[k]
    computed = _computed(layout, cfg, _modules(cfg, cfg_json, sets, device), device, lo + np.flatnonzero(need))
    with torch_threads(1):
        return {"shard": k, "units": list(computed)}


def run_on_cluster(project: Project, cfg: Config, device, client, *, progress: bool = True) -> FeaturesResult:
    """Like :func:`.run.run_in_process`, with every shard computed as one task on ``client``'s workers."""
    from ..cluster import check_workers_see

    t_start = time.perf_counter()
    layout, _, plans = plan_run(project, cfg)
    todo = [p for p in plans if not p.done]
    need, work = units_to_decode(layout, todo)
    if not layout.frames:
        for p in todo:                 # every task writes its own region: size the arrays once
            arr = p.store.array(p.gen.name)
            if arr.shape[0] < len(layout.ids):
                arr.resize(len(layout.ids), p.gen.dim)
    n_files = len(np.unique(layout.unit_pos[need]))
    if work:
        check_workers_see(client, [project.path.resolve(), project.library_root.resolve()])
        log.info("features: %d shards (%d files to decode%s) on the Dask cluster", len(work), n_files,
                 f", {int(layout.unit_n[need].sum())} windows" if layout.frames else "")
        _submit_and_commit(project, cfg, layout, work, need, client, progress)
    for p in todo:
        p.store.finish(p.gen)
    return summarize(plans, layout, device, time.perf_counter() - t_start, decoded=int(layout.unit_n[need].sum()),
                     workers=-1)


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
    frames = layout.frames
    for k, active in work:
        lo, hi = layout.shards[k]
        if frames:
            f = client.submit(frame_shard_task, path, cfg_json, layout.hash, [p.name for p in active], k,
                              need[lo:hi], key=f"klustr-frames-{k}-{token}", retries=RETRIES, pure=False)
        else:
            f = client.submit(shard_task, path, cfg_json, layout.hash, [_spec(p) for p in active], k, need[lo:hi],
                              key=f"klustr-shard-{k}-{token}", retries=RETRIES, pure=False)
        futures[f] = (k, active)
    order = [k for k, _ in work]
    active_of = dict(work)
    results: dict[int, dict] = {}
    weight = layout.unit_n if frames else np.ones(len(need), np.int64)
    bar = tqdm(total=int(weight[need].sum()), desc=f"features {','.join(cfg.features.sets)} (dask)",
               unit=" windows" if frames else " files", disable=not progress)
    nxt = 0
    try:
        for f in as_completed(list(futures)):
            k, active = futures.pop(f)          # dropping the last reference frees the result on its worker
            results[k] = f.result()
            del f
            lo, hi = layout.shards[k]
            bar.update(int(weight[lo:hi][need[lo:hi]].sum()))
            while nxt < len(order) and order[nxt] in results:        # commit in manifest order
                res, active = results.pop(order[nxt]), active_of[order[nxt]]
                if frames:
                    commit_frames(res, active, layout, need)
                else:
                    commit_clips(res, active)
                nxt += 1
    except BaseException:
        client.cancel(list(futures))
        raise
    finally:
        bar.close()


def commit_clips(res: dict[str, Any], active: list[SetPlan]) -> None:
    """Commit one clip shard a task wrote (its rows are in place), in each set's ledger."""
    for p in active:
        r = res["sets"][p.name]
        p.computed += r["computed"]
        p.reused += r["reused"]
        p.seconds += r["seconds"]
        p.store.commit(p.gen, rows_done=res["rows_end"], skipped=r["skipped"], hashes=r["hashes"])
        p.skipped.update(r["skipped"])


def commit_frames(res: dict[str, Any], active: list[SetPlan], layout: Layout, need: np.ndarray) -> None:
    """Write one frame shard from its task's rows (and rows copied from an older generation),
    exactly as the in-process run writes it, then commit it."""
    lo, hi = layout.shards[res["shard"]]
    write_shard(layout, res["shard"], active, need[lo:hi], iter(res["units"]))
