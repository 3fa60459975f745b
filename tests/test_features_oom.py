"""CUDA out-of-memory in the features stage, simulated on the CPU: a feature module that
raises torch's CUDA out-of-memory error on chunks larger than the 'GPU' holds. The batch's
chunks are halved, the smaller size is kept for later batches, the rows are exactly those of a
run that never ran out of memory, and one line says so."""
from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from klustr_gpu.features.compute import ChunkSize, compute_stream
from klustr_gpu.features.decode import Decoded, Item


class SmallGPU(nn.Module):
    """Sums and maxima of each window; 'out of memory' above ``limit`` windows at once."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit, self.calls = limit, []

    def forward(self, x, cache=None):
        self.calls.append(len(x))
        if len(x) > self.limit:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {len(x)} MiB")
        return torch.stack([x.sum(-1), x.amax(-1)], dim=-1)


class Partial(nn.Module):
    """A second set run after the first in the same chunk: its rows must never be appended
    from a chunk that failed in another set."""

    def forward(self, x, cache=None):
        return x[:, :3] * 2


def _decoded(n: int) -> list[Decoded]:
    rng = np.random.default_rng(0)
    return [Decoded(Item(i, f"f{i}.wav"), rng.standard_normal((1, 64)).astype(np.float32)) for i in range(n)]


class _Device:         # the compute path of a CUDA device, without one: chunks start at the whole batch
    type = "cuda"


def test_out_of_memory_halves_the_chunk_keeps_it_and_gives_the_same_rows(caplog, monkeypatch):
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: self)
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: self)
    gpu = SmallGPU(limit=20)
    mods = {"a": Partial(), "b": gpu}       # "b" fails after "a" computed its part of the chunk
    with caplog.at_level(logging.WARNING, logger="klustr_gpu.oom"):
        out = list(compute_stream(_decoded(200), mods, _Device(), batch_size=64))
    ref = list(compute_stream(_decoded(200), {"a": Partial(), "b": SmallGPU(10**6)}, None, batch_size=64))
    assert [c.item.unit for c in out] == list(range(200))
    for c, r in zip(out, ref):
        np.testing.assert_array_equal(c.rows["a"], r.rows["a"])
        np.testing.assert_array_equal(c.rows["b"], r.rows["b"])
    # first batch: 64 -> 32 -> 16 (fits); every later batch starts at 16, never at 64 again
    assert gpu.calls[:3] == [64, 32, 16] and max(gpu.calls[3:]) == 16
    assert [r.getMessage() for r in caplog.records] == [
        "CUDA out of memory on a batch of 64 clips; retrying with 32",
        "CUDA out of memory on a batch of 32 clips; retrying with 16"]


def test_chunk_size_is_the_devices_until_memory_runs_out():
    from klustr_gpu.features.compute import CPU_CHUNK, compute_batch

    gpu = SmallGPU(limit=10**6)
    chunk = ChunkSize()
    rows, _ = compute_batch({"b": gpu}, [d.windows for d in _decoded(70)], None, chunk)
    assert rows["b"].shape == (70, 2)
    assert gpu.calls == [CPU_CHUNK] * (70 // CPU_CHUNK) + [70 % CPU_CHUNK] * bool(70 % CPU_CHUNK)
    assert chunk.size is None            # nothing learnt: no out-of-memory
