"""Recovering from CUDA out-of-memory: run work in batches, halve the batch when the GPU says no.

A batch size that fits one card (or one library) can overflow another: a smaller GPU, a GPU
shared with another process, longer clips. :func:`map_batches` runs ``fn(start, stop)`` over
``[0, n)`` in batches; when a batch raises CUDA's out-of-memory error it frees what the failed
batch held (``gc`` and ``torch.cuda.empty_cache``), logs one warning, halves the batch and goes
on from the same ``start``. The smaller size is kept for the rest of the run (and returned, so a
caller can start its next run there); at a batch of 1 it gives up with :class:`DeviceMemoryError`,
one line that says what to do. The pattern is accelerate's ``find_executable_batch_size``, applied
per batch instead of per run so finished batches are never recomputed.

A leaf module: it imports torch only when an exception has to be classified, so it costs nothing
on the CPU path and works with every torch this package supports (``torch.cuda.OutOfMemoryError``
exists since torch 1.13; ``torch.OutOfMemoryError``, its device-agnostic alias, only since 2.5).
"""
from __future__ import annotations

import gc
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import KlustrError

log = logging.getLogger(__name__)

#: Messages of out-of-memory failures that torch raises as a plain ``RuntimeError`` (cuBLAS /
#: cuDNN workspace allocations, and torch builds older than 1.13).
_OOM_MESSAGES = ("CUDA out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED",
                 "cudaErrorMemoryAllocation")


class DeviceMemoryError(KlustrError, MemoryError):
    """Even a batch of one item does not fit in the GPU's memory."""


def is_cuda_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is a CUDA out-of-memory failure (torch's error class, or a
    ``RuntimeError`` with one of CUDA's allocation-failure messages)."""
    try:
        import torch
        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in _OOM_MESSAGES)


def free_cuda_memory() -> None:
    """Drop unreachable tensors and hand the caching allocator's free blocks back to CUDA.
    Call it after the failed batch's exception is gone: its traceback holds the batch's tensors."""
    gc.collect()
    try:
        import torch
        if torch.cuda.is_initialized():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


@dataclass
class BatchRun:
    """What :func:`map_batches` did: each batch's result in order, the batch size it ended with
    (start the next run there), and the batch sizes at which CUDA ran out of memory."""

    results: list[Any] = field(default_factory=list)
    batch_size: int = 1
    oom_at: list[int] = field(default_factory=list)


def map_batches(fn: Callable[[int, int], Any], n: int, batch_size: int, *, what: str = "items") -> BatchRun:
    """Call ``fn(start, stop)`` for consecutive batches covering ``[0, n)``, halving the batch
    after a CUDA out-of-memory error and retrying from the same ``start``.

    ``fn`` must do all of a batch's GPU work (a failed batch is simply run again, smaller), and
    must not keep state from a batch that failed. ``what`` names the items in the log line
    ("CUDA out of memory on a batch of 4096 query rows; retrying with 2048"). Any other
    exception propagates unchanged. Raises :class:`DeviceMemoryError` when a batch of 1 fails.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    run = BatchRun(batch_size=min(batch_size, max(n, 1)))
    start = 0
    while start < n:
        stop = min(n, start + run.batch_size)
        failed = ""
        try:
            run.results.append(fn(start, stop))
        except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled; others re-raised
            if not is_cuda_oom(exc):
                raise
            failed = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if not failed:
            start = stop
            continue
        # The exception (and the batch's tensors its traceback holds) is released here.
        free_cuda_memory()
        size = stop - start
        run.oom_at.append(size)
        if size <= 1:
            raise DeviceMemoryError(f"CUDA out of memory even on a batch of 1 ({what}): {failed}; "
                                    "free GPU memory (other processes?) or run on the CPU (--device cpu)")
        run.batch_size = size // 2
        log.warning("CUDA out of memory on a batch of %d %s; retrying with %d", size, what, run.batch_size)
    return run
