"""CUDA out-of-memory recovery (klustr_gpu.oom), simulated on the CPU: a batch function that
raises torch's CUDA out-of-memory error above some batch size, as a GPU would."""
from __future__ import annotations

import logging
import weakref

import numpy as np
import pytest
import torch

from klustr_gpu.errors import KlustrError
from klustr_gpu.oom import DeviceMemoryError, is_cuda_oom, map_batches


def _gpu_with_room_for(limit: int, calls: list | None = None):
    """A batch function that 'runs out of CUDA memory' on batches larger than ``limit``."""
    def fn(start: int, stop: int):
        if calls is not None:
            calls.append((start, stop))
        if stop - start > limit:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {stop - start} GiB")
        return list(range(start, stop))
    return fn


def test_batches_cover_the_range_in_order_without_oom():
    calls = []
    run = map_batches(_gpu_with_room_for(10**9, calls), 10, 4)
    assert calls == [(0, 4), (4, 8), (8, 10)]
    assert sum(run.results, []) == list(range(10))
    assert run.batch_size == 4 and run.oom_at == []


def test_oom_halves_the_batch_goes_on_and_says_so(caplog):
    calls = []
    with caplog.at_level(logging.WARNING, logger="klustr_gpu.oom"):
        run = map_batches(_gpu_with_room_for(100, calls), 1000, 1000, what="clips")
    assert sum(run.results, []) == list(range(1000))          # every item once, in order
    assert run.oom_at == [1000, 500, 250, 125] and run.batch_size == 62
    assert calls[:5] == [(0, 1000), (0, 500), (0, 250), (0, 125), (0, 62)]
    assert all(b - a <= 62 for a, b in calls[4:])              # the smaller size is kept
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs[0] == "CUDA out of memory on a batch of 1000 clips; retrying with 500"
    assert len(msgs) == 4


def test_the_failed_batch_is_released_before_the_retry():
    """The traceback of the failed batch holds its tensors: they must be gone before the retry
    (else emptying the cache frees nothing)."""
    refs = []

    class Big:  # stands for a batch's device tensor
        pass

    def fn(start, stop):
        if refs:
            assert refs[-1]() is None, "the failed batch's data is still alive at the retry"
        big = Big()
        refs.append(weakref.ref(big))
        if stop - start > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory.")
        return start

    assert map_batches(fn, 1, 2).results == [0]
    assert len(refs) == 1 or refs[0]() is None


def test_a_batch_of_one_that_does_not_fit_is_one_clear_error():
    with pytest.raises(DeviceMemoryError, match=r"even on a batch of 1 \(clips\).*--device cpu") as err:
        map_batches(_gpu_with_room_for(0), 5, 4, what="clips")
    assert isinstance(err.value, KlustrError)                  # the CLI prints it as one line
    assert "\n" not in str(err.value)


def test_only_out_of_memory_is_retried():
    def fn(start, stop):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    with pytest.raises(RuntimeError, match="illegal memory access"):
        map_batches(fn, 10, 4)
    assert is_cuda_oom(torch.cuda.OutOfMemoryError("x"))
    assert is_cuda_oom(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate(handle)"))
    assert not is_cuda_oom(MemoryError("host memory"))
    assert not is_cuda_oom(ValueError("CUDA out of memory"))
    with pytest.raises(ValueError):
        map_batches(fn, 10, 0)


def test_knn_tiles_recover_from_oom_with_the_same_graph(monkeypatch, caplog):
    """The torch k-NN graph, with a topk that 'runs out of CUDA memory' on tiles above 100 rows,
    gives exactly the graph of an unconstrained run, and logs the halving."""
    from klustr_gpu.reduce.neighbours import knn_graph

    X = np.random.default_rng(0).standard_normal((600, 8)).astype(np.float32)
    ref_idx, ref_dist = knn_graph(X, 10, device="cpu")
    topk = torch.topk

    def small_gpu_topk(d, *args, **kwargs):
        if d.shape[0] > 100:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return topk(d, *args, **kwargs)

    monkeypatch.setattr(torch, "topk", small_gpu_topk)
    with caplog.at_level(logging.WARNING, logger="klustr_gpu.oom"):
        idx, dist = knn_graph(X, 10, device="cpu")
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_array_equal(dist, ref_dist)
    assert [r.getMessage() for r in caplog.records][:1] == [
        "CUDA out of memory on a batch of 600 k-NN query rows; retrying with 300"]
