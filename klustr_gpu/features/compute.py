"""Computing for the features stage: decoded windows in, :class:`Computed` feature rows out.

:func:`compute_batch` runs every feature module on one batch of stacked windows (on the CPU
in chunks of ``CPU_CHUNK`` windows, with the spectrograms shared by the sets of a chunk; on
CUDA through pinned memory with a non-blocking copy, the whole batch as one chunk, halved
when CUDA runs out of memory, :func:`klustr_gpu.oom.map_batches`, and the smaller size kept). :func:`compute_stream` turns an ordered
stream of :class:`~.decode.Decoded` items into an ordered stream of :class:`Computed` ones,
batch by batch, a batch never spanning two shards: batch composition, and so every float, is
the same whether a run starts from scratch or resumes at a shard. :func:`decode_and_compute`
is the task of a CPU run's worker processes: decode a task, compute it as one batch.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np

from ..config import AudioConfig, Config
from .decode import Decoded, Item, decode_task

#: On the CPU a batch is computed in chunks of this many windows: the intermediate spectra of
#: a chunk stay in cache (batches of 256 clips run 2-3x slower per clip than chunks of 32).
CPU_CHUNK = 16


@dataclass(slots=True)
class Computed:
    """An item's feature rows: ``rows`` ``{set: float32 [shape=(n, dim)]}`` (empty when the
    item was skipped, with its ``reason``); ``seconds`` ``{set: s}`` spent computing the batch
    the item opened (empty on the batch's other items, so sums count each batch once)."""

    item: Item
    rows: dict[str, np.ndarray]
    reason: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    hash: str = ""          # clip mode: the decoded clip's hash
    same: bool = False      # the clip hashes as the one the file's stored rows come from: copy them


@dataclass
class ChunkSize:
    """Windows per chunk of a batch's device work, kept across batches: CUDA starts with the
    whole batch; after an out-of-memory error the smaller size found stays for the rest of the
    run (:func:`klustr_gpu.oom.map_batches`). ``None``: decide from the device."""

    size: int | None = None


def compute_batch(modules: dict, windows: list[np.ndarray], device=None,
                  chunk: ChunkSize | None = None) -> tuple[dict, dict]:
    """Run every module on the stacked windows (one batch; on the CPU in chunks of
    ``CPU_CHUNK``; on CUDA in one chunk, halved on out-of-memory). Returns ({set: float32
    rows}, {set: seconds})."""
    import torch

    from ..oom import map_batches

    if not windows:
        return {}, {}
    host = torch.from_numpy(np.concatenate(windows))
    cuda = device is not None and device.type == "cuda"
    x = host.pin_memory().to(device, non_blocking=True) if cuda else host
    chunk = chunk if chunk is not None else ChunkSize()
    step = chunk.size or (len(x) if cuda else CPU_CHUNK)

    def one_chunk(lo: int, hi: int) -> tuple[dict, dict]:
        """Every set's rows of windows ``lo:hi``, whole or not at all (a CUDA out-of-memory
        error drops the chunk's partial work; the chunk is run again, smaller)."""
        xi, cache, rows, secs = x[lo:hi], {}, {}, {}           # spectrograms shared by the sets of a chunk
        for name, m in modules.items():
            t0 = time.perf_counter()
            rows[name] = m(xi, cache).float().cpu().numpy()
            secs[name] = time.perf_counter() - t0
        return rows, secs

    with torch.inference_mode():
        run = map_batches(one_chunk, len(x), step, what="clips")
    if run.oom_at:
        chunk.size = run.batch_size
    timings = {name: sum(s[name] for _, s in run.results) for name in modules}
    return {name: np.concatenate([r[name] for r, _ in run.results]) for name in modules}, timings


def computed(batch: list[Decoded], modules: dict, device=None, chunk: ChunkSize | None = None) -> list[Computed]:
    """One batch of decoded items computed together, split back per item."""
    outs, timings = compute_batch(modules, [d.windows for d in batch if d.windows is not None], device, chunk)
    res, i = [], 0
    for d in batch:
        m = 0 if d.windows is None else len(d.windows)
        rows = {name: v[i:i + m] for name, v in outs.items()} if d.windows is not None else {}
        res.append(Computed(d.item, rows, d.reason, timings if not res else {}, d.hash, d.same))
        i += m
    return res


def compute_stream(decoded: Iterable[Decoded], modules: dict, device, batch_size: int,
                   shard_of: np.ndarray | None = None) -> Iterator[Computed]:
    """The decoded stream computed in batches of about ``batch_size`` windows, in order; a batch
    never spans two shards (``shard_of[unit]``; None: the stream is one shard)."""
    batch: list[Decoded] = []
    n = 0
    shard = None
    chunk = ChunkSize()                  # a size CUDA out-of-memory taught one batch holds for the next
    for d in decoded:
        k = None if shard_of is None else int(shard_of[d.item.unit])
        if batch and (n >= batch_size or k != shard):
            yield from computed(batch, modules, device, chunk)
            batch, n = [], 0
        batch.append(d)
        n += 0 if d.windows is None else len(d.windows)
        shard = k
    if batch:
        yield from computed(batch, modules, device, chunk)


_MODULES: dict[tuple, dict] = {}     # per worker process: the modules of the current (config, sets)


def decode_and_compute(items: list[Item], audio: AudioConfig, frames: tuple[float, float] | None,
                       cfg_json: str, sets: tuple[str, ...]) -> list[Computed]:
    """A CPU run's worker task: decode ``items``, compute the features of ``sets`` on the whole
    task as one batch (the modules built once per process from the run's config)."""
    from .transforms import build

    key = (cfg_json, sets)
    if key not in _MODULES:
        _MODULES.clear()
        cfg = Config.from_dict(json.loads(cfg_json))
        _MODULES[key] = {s: build(s, cfg) for s in sets}
    return computed(decode_task(items, audio, frames), _MODULES[key])
