"""The in-process features run: plan, decode in worker processes, compute in batches, write.

Decoding runs in a pool of worker processes (:func:`.decode.ordered`), a bounded
number of tasks ahead of this process, in manifest order. On CUDA this process stacks the
decoded clips into ``(batch, time)`` tensors and runs every requested feature module on the
GPU (:func:`.compute.compute_stream`), overlapped with the workers' decoding. On the CPU each
worker computes the features of its own task (:func:`.compute.decode_and_compute`) right after
decoding it, so every core does both; this process writes, and runs the next task itself
whenever the oldest one is not back yet. Workers are forks of this process (ready in
milliseconds, torch already imported); jobs under ``IN_PROCESS_BELOW`` clips (frame mode:
windows) run here without a pool. Every shard is written by :func:`.write.write_shard` and committed. Peak memory is
bounded by the tasks in flight plus one batch and one shard of feature rows.
"""
from __future__ import annotations

import json
import logging
import os
import time
from contextlib import contextmanager
from typing import Iterator

import numpy as np
from tqdm.auto import tqdm

from ..config import Config
from ..results import FeatureSetResult, FeaturesResult
from ..runtime import torch_threads, worker_processes
from ..store import Project
from .compute import compute_stream, decode_and_compute
from .decode import TASK_WINDOWS, decode_task, ordered, pack
from .plan import Layout, SetPlan, known_hashes, plan_run, units_to_decode
from .write import write_shard

log = logging.getLogger(__name__)

#: Below this many clips (frame mode: windows) to compute, work in the main process. Forked
#: workers start in milliseconds (spawned ones, where fork is unsafe, take seconds: then only
#: jobs of ``IN_PROCESS_BELOW_SPAWN`` pay for them).
IN_PROCESS_BELOW = 200
IN_PROCESS_BELOW_SPAWN = 5000
IN_PROCESS_BELOW_CUDA = 256
#: CPU runs: windows per worker task, decoded and computed as one batch.
TASK_WINDOWS_COMPUTE = 32


def resolve_workers(workers: int) -> int:
    """Decoding processes: ``workers`` if positive, else one per core up to 8."""
    return worker_processes(workers)


def pool_threshold(device) -> int:
    """Jobs of fewer clips (windows) than this are decoded in this process."""
    from .decode import pool_context

    if pool_context().get_start_method() != "fork":
        return IN_PROCESS_BELOW_SPAWN
    return min(IN_PROCESS_BELOW_CUDA, IN_PROCESS_BELOW) if device.type == "cuda" else IN_PROCESS_BELOW


def run_in_process(project: Project, cfg: Config, device, *, progress: bool = True) -> FeaturesResult:
    """Compute every set of ``cfg.features.sets`` into the project's feature stores, here."""
    t_start = time.perf_counter()
    fc = cfg.features
    layout, modules, plans = plan_run(project, cfg)
    todo = [p for p in plans if not p.done]
    need, work = units_to_decode(layout, todo)
    n_files = len(np.unique(layout.unit_pos[need]))
    n_work = int(layout.unit_n[need].sum())          # clips, or windows in frame mode
    workers = 0 if n_work < pool_threshold(device) else resolve_workers(fc.workers)
    # On the CPU the workers compute the features too (every core does decode + features; the
    # main process only writes); on CUDA they decode and the main process feeds the GPU.
    in_workers = workers > 0 and device.type == "cpu" and bool(todo)
    units = np.flatnonzero(need)
    items, shard_of = layout.items(units, known_hashes(layout, units, [p.source for p in todo])), layout.shard_of()
    if in_workers:
        tasks = pack(items, shard_of, min(TASK_WINDOWS_COMPUTE, fc.batch_size))
        args = (cfg.audio, layout.frame_args, json.dumps(cfg.to_dict()), tuple(p.name for p in todo))
        stream = computed = ordered(tasks, decode_and_compute, args, workers)
    else:
        stream = ordered(pack(items, shard_of, TASK_WINDOWS), decode_task, (cfg.audio, layout.frame_args), workers)
        mods = {p.name: modules[p.name].to(device) for p in todo}
        computed = compute_stream(stream, mods, device, fc.batch_size, shard_of)
    bar = tqdm(total=n_work if layout.frames else n_files, desc=f"features {','.join(fc.sets)}",
               unit=" windows" if layout.frames else " files", disable=not progress or not n_files)
    if n_files:
        log.info("features: %d files to decode on %s with %s", n_files, device,
                 f"{workers} worker processes" if workers else "the main process")
    with main_threads(workers, single=in_workers):
        try:
            for k, active in work:
                lo, hi = layout.shards[k]
                write_shard(layout, k, active, need[lo:hi], computed,
                            on_unit=lambda u: bar.update(int(layout.unit_n[u]) if layout.frames else 1))
            for p in todo:
                p.store.finish(p.gen)
        finally:
            bar.close()
            computed.close()
            stream.close()
    return summarize(plans, layout, device, time.perf_counter() - t_start, decoded=n_work, workers=workers)


@contextmanager
def main_threads(workers: int, *, single: bool = False) -> Iterator[None]:
    """Torch threads of the main process while decoding runs: the cores the workers leave
    (oversubscribed OpenMP threads cost far more than they give); one when the workers compute
    the features (then tasks the main process takes over give the workers' exact numbers)."""
    with torch_threads(1 if single else max(1, (os.cpu_count() or 1) - max(workers, 1))):
        yield


def summarize(plans: list[SetPlan], layout: Layout, device, seconds: float, *, decoded: int = 0,
              workers: int = 0) -> FeaturesResult:
    """What a run (in-process or Dask) did, set by set, from the stores' ledgers."""
    sets: dict[str, FeatureSetResult] = {}
    skipped: dict[str, str] = {}
    for p in plans:
        cur = p.store.current()
        skipped.update(cur.skipped if cur else {})
        n_rows = int(cur.rows_done) if cur else 0
        if not layout.frames:
            bad = set(cur.skipped) if cur else set()
            n_rows = int(sum(1 for f, ok in zip(layout.ids, layout.ok) if ok and f not in bad))
        sets[p.name] = FeatureSetResult(n_rows=n_rows, dim=int(p.gen.dim), computed=int(p.computed),
                                        reused=int(p.reused), seconds=round(p.seconds, 3))
    return FeaturesResult(sets=sets, skipped=skipped, device=str(device), frames=layout.frames,
                          seconds=round(seconds, 3), decoded=int(decoded), workers=int(workers))
