"""Decoding for the features stage: work items in, :class:`Decoded` windows out, in order.

An :class:`Item` is one unit of work: a clip (one file), or in frame mode a block of at most
``batch_size`` consecutive windows of one file. :func:`decode_task` decodes a list of items
(``klustr_gpu.library.decode``: soundfile + libsoxr resampling), each within
``DECODE_TIMEOUT_S``; a file that cannot be used becomes a :class:`Decoded` with its skip
reason. :func:`ordered` runs any such task function over a pool of worker processes (forks
of this process where that is safe, :func:`pool_context`; one torch thread each), a bounded
number of tasks ahead, and hands the results back in task order; while the pool starts, or when its workers fall behind, the calling process runs the
next tasks itself. Everything a worker runs is a module-level function of picklable arguments.

Frame mode: each ok file of duration ``d`` gives ``max(1, ceil((d - window / 2) / hop))``
windows starting at ``k * hop`` (a window whose centre lies past the end is dropped; the
last ones are zero-padded); long files are read in blocks, never whole. Each window is
peak-normalised on its own (like a clip) when ``audio.normalize`` and its peak is above
``audio.silence_threshold``. Resampling restarts at each block, which touches the first few
samples of a block's first window (a difference far below feature precision).
"""
from __future__ import annotations

import dataclasses
import logging
import multiprocessing as mp
import os
import warnings
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from ..config import AudioConfig
from ..errors import SkipFile
from ..timeouts import alarm_usable, deadline

log = logging.getLogger(__name__)

#: Decode tasks hold at least this many windows (amortises inter-process overhead).
TASK_WINDOWS = 16

#: A file (or block of windows) whose decode takes longer than this many seconds is skipped
#: with the reason "decode timed out": a stuck disk or a codec caught in a loop must not hang the
#: run. 0 disables it. In a process's main thread (the main process and pool workers) it is
#: enforced with SIGALRM, which interrupts the decode itself; in any other thread (Dask workers
#: decode in threads) the decode runs in a helper thread that is abandoned when the time is up
#: (:func:`decode_within`).
DECODE_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Item:
    """One unit of work: ``unit`` (its index in the layout), the file, in frame mode the
    block's first window within the file and its number of windows; the file's identity at the
    scan (``size``, ``mtime_ns``: a file that no longer has it is skipped as changed, never
    decoded as something the manifest does not describe) and, for a changed file whose rows
    exist, the ``known`` hash of the clip they were computed from."""

    unit: int
    path: str
    first: int = 0          # frame mode: index of the block's first window in its file
    n: int = 1              # windows in this block
    size: int = -1          # -1: not checked
    mtime_ns: int = -1      # -1: not checked (a manifest of an older klustr)
    known: str = ""


@dataclass(slots=True)
class Decoded:
    """An item decoded: ``windows`` float32 ``[shape=(n, samples)]``, or ``None`` and the
    ``reason`` it was skipped; clip mode: ``hash`` of the clip (blake2b-128 of its samples), and
    ``same`` when it equals the item's ``known`` hash (the windows are then dropped: the
    file's rows are copied, not computed)."""

    item: Item
    windows: np.ndarray | None
    reason: str | None = None
    hash: str = ""
    same: bool = False


# -- one item ------------------------------------------------------------------------------------
def decode_item(item: Item, audio: AudioConfig, frames: tuple[float, float] | None) -> np.ndarray:
    """The windows of ``item``: ``[1, samples]`` for a clip, ``[item.n, window samples]`` for a
    block of frames (``frames=(window, hop)`` in seconds). Raises SkipFile."""
    from ..library.decode import FileChanged, decode

    expect = (item.size, item.mtime_ns) if item.size >= 0 else None
    if frames is None:
        return decode(item.path, audio, expect=expect)[None, :]
    window, hop = frames
    sr = audio.sample_rate
    win = int(round(window * sr))
    raw = dataclasses.replace(audio, normalize=False)
    try:
        x = decode(item.path, raw, offset=item.first * hop, seconds=(item.n - 1) * hop + window, strict=False,
                   expect=expect)
    except SkipFile as exc:
        if item.first == 0 or isinstance(exc, FileChanged):
            raise
        x = np.zeros(int(round(((item.n - 1) * hop + window) * sr)), np.float32)
    starts = np.round(np.arange(item.n) * hop * sr).astype(np.int64)
    if len(x) < int(starts[-1]) + win:                       # rounding: pad the last sample or so
        x = np.pad(x, (0, int(starts[-1]) + win - len(x)))
    out = np.stack([x[s:s + win] for s in starts])
    if audio.normalize:
        peak = np.abs(out).max(axis=1, keepdims=True)
        out = np.where(peak >= audio.silence_threshold, out / np.maximum(peak, 1e-30), out)
    return np.ascontiguousarray(out, dtype=np.float32)


def _timed_out(seconds: float) -> SkipFile:
    return SkipFile(f"decode timed out after {seconds:g} s")


def decode_within(item: Item, audio: AudioConfig, frames: tuple[float, float] | None,
                  seconds: float) -> np.ndarray:
    """:func:`decode_item` within ``seconds`` (0: no limit), else SkipFile("decode timed out").

    In the main thread SIGALRM interrupts the decode. In any other thread (a Dask worker's task,
    a caller's thread) signals cannot reach it, so the decode runs in a daemon helper thread and
    this thread waits at most ``seconds`` for it. On expiry the helper is abandoned, not killed
    (Python cannot stop a thread): it may stay blocked (a stuck disk) or finish later, its result
    discarded; being a daemon it never keeps the process alive. Each timed-out file can leave one
    such thread behind, so a library of many hanging files costs that many idle threads.
    """
    if not seconds or alarm_usable(seconds):
        with deadline(seconds, lambda: _timed_out(seconds)):
            return decode_item(item, audio, frames)
    import threading

    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["x"] = decode_item(item, audio, frames)
        except BaseException as exc:       # handed to the waiting thread, raised there
            box["exc"] = exc

    helper = threading.Thread(target=work, name=f"klustr-decode-{item.unit}", daemon=True)
    helper.start()
    helper.join(seconds)
    if helper.is_alive():
        log.warning("features: decode of %s still running after %g s; skipped (its thread is abandoned)",
                    item.path, seconds)
        raise _timed_out(seconds)
    if "exc" in box:
        raise box["exc"]
    return box["x"]


def decode_task(items: list[Item], audio: AudioConfig, frames: tuple[float, float] | None) -> list[Decoded]:
    """Decode a list of items, each abandoned (skipped) after ``DECODE_TIMEOUT_S`` in whichever
    thread this runs (:func:`decode_within`); clip mode: hash each clip (see :class:`Decoded`)."""
    out = []
    for it in items:
        try:
            x = decode_within(it, audio, frames, DECODE_TIMEOUT_S)
        except SkipFile as exc:
            out.append(Decoded(it, None, exc.reason))
            continue
        if frames is not None:
            out.append(Decoded(it, x))
            continue
        h = clip_hash(x)
        same = bool(it.known) and h == it.known
        out.append(Decoded(it, None if same else x, None, h, same))
    return out


def clip_hash(x: np.ndarray) -> str:
    """blake2b-128 of a clip's float32 samples: equal hashes, equal clips, equal features."""
    import hashlib

    return hashlib.blake2b(np.ascontiguousarray(x, dtype=np.float32).tobytes(), digest_size=16).hexdigest()


# -- tasks and the pool ------------------------------------------------------------------------------
def pack(items: Iterable[Item], shard_of: np.ndarray | None = None, size: int = TASK_WINDOWS) -> Iterator[list[Item]]:
    """Group items into tasks of about ``size`` windows; a task never spans two shards (so a
    resumed run forms the same tasks, hence the same batches and bit-identical features)."""
    task: list[Item] = []
    n = 0
    shard = None
    for it in items:
        k = None if shard_of is None else int(shard_of[it.unit])
        if task and (n >= size or k != shard):
            yield task
            task, n = [], 0
        task.append(it)
        n += it.n
        shard = k
    if task:
        yield task


def init_worker() -> None:
    """A pool worker: one torch thread, and leave when the parent dies."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import threading

    import torch

    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:        # a forked worker of a process whose inter-op pool is already running
        pass
    parent = mp.parent_process()
    if parent is not None:      # a SIGKILLed parent never tells its pool: leave with it
        threading.Thread(target=_exit_with, args=(parent.sentinel,), daemon=True).start()


def _exit_with(sentinel: int) -> None:
    from multiprocessing.connection import wait

    wait([sentinel])
    os._exit(1)


def _ready() -> bool:
    return True


def pool_context():
    """The start method of decode workers: fork where the platform has it safely (Linux): a
    worker starts in milliseconds with torch, the feature modules and the decoder already
    imported, where a spawned one spends seconds importing them, and it does not re-import the
    caller's ``__main__`` (a script without a main guard works). What a worker runs is safe
    after a fork: it sets torch to one thread before any operation (PyTorch's DataLoader
    workers do the same) and uses no lock another thread of this process may hold. Elsewhere
    (macOS, Windows): spawn."""
    import sys

    if sys.platform.startswith("linux") and "fork" in mp.get_all_start_methods():
        return mp.get_context("fork")
    return mp.get_context("spawn")


def ordered(tasks: Iterable[list[Item]], run: Callable[..., list], args: tuple, workers: int) -> Iterator[Any]:
    """``run(task, *args)`` for every task, results flattened in task order, from ``workers``
    processes, a bounded number of tasks ahead (``workers=0``: here, one task after another).

    Workers are forks of this process (:func:`pool_context`; spawned ones where fork is not
    safe, which take seconds to start): until the first one is up the calling process runs
    the tasks itself, in order. Afterwards, while the oldest task is not back yet, it runs the
    next unsubmitted one instead of waiting.
    """
    if workers <= 0:
        for t in tasks:
            yield from run(t, *args)
        return
    ctx = pool_context()
    tasks = iter(tasks)
    ahead, steal_limit = 3 * workers, 4 * workers
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=init_worker) as pool:
        pending: deque = deque()       # Futures, or result lists run here
        stolen = 0
        exhausted = False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)     # 3.12+: fork of a threaded process
            warm = [pool.submit(_ready) for _ in range(workers)]
        try:
            while not any(f.done() for f in warm):
                t = next(tasks, None)
                if t is None:
                    return
                yield from run(t, *args)
            while True:
                while not exhausted and len(pending) - stolen < ahead:
                    t = next(tasks, None)
                    if t is None:
                        exhausted = True
                    else:
                        pending.append(pool.submit(run, t, *args))
                if not pending:
                    return
                head = pending[0]
                if isinstance(head, list):
                    pending.popleft()
                    stolen -= 1
                    yield from head
                    continue
                if not head.done() and not exhausted and stolen < steal_limit:
                    t = next(tasks, None)
                    if t is None:
                        exhausted = True
                    else:
                        pending.append(run(t, *args))
                        stolen += 1
                    continue
                pending.popleft()
                yield from head.result()
        finally:
            for f in pending:
                if not isinstance(f, list):
                    f.cancel()
