"""The extraction pipeline: plan, decode in worker processes, compute in batches, store.

Decoding (``klustr_gpu.library.decode``: soundfile + torchaudio resampling) runs in a pool of
spawned worker processes (one torch thread each), a bounded number of tasks ahead of the main
process, in manifest order. On CUDA the main process stacks decoded clips into ``(batch,
time)`` tensors and runs every requested feature module on the GPU (pinned memory,
non-blocking copies), overlapped with the workers' decoding. On the CPU each worker computes
the features of its own task (one small batch) right after decoding it, so every core does
both; the main process only writes the store. Jobs under ``IN_PROCESS_BELOW`` files run in the
main process (a pool takes seconds to start); while a pool starts, or when its workers fall
behind, the main process decodes the next tasks itself. Peak memory is bounded by the tasks in
flight plus one batch and one shard of feature rows, whatever the library size.

Frame mode: each ok file of duration ``d`` gives ``max(1, ceil((d - window / 2) / hop))``
windows starting at ``k * hop`` (a window whose centre lies past the end is dropped; the
last ones are zero-padded); long files are read in blocks of ``batch_size`` windows, never
whole (a block is also the unit of resumption, so a killed run keeps the finished part of a
long recording). Each window is peak-normalised on its own (like a clip) when
``audio.normalize`` and its peak is above ``audio.silence_threshold``. Resampling restarts at
each block, which touches the first few samples of a block's first window (a difference far
below feature precision for the default rates).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import multiprocessing as mp
import os
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..config import AudioConfig, Config
from ..errors import EngineUnavailable, SkipFile
from ..store import Project
from .store import Generation, RowSource, SetStore, layout_hash, store_dir

log = logging.getLogger(__name__)

#: Below this many clips (frame mode: windows) to compute, work in the main process: a pool costs seconds to
#: start (each worker imports torch), which only pays off on larger jobs. On CUDA the pool also
#: overlaps decoding with GPU work, so it pays off sooner.
IN_PROCESS_BELOW = 5000
IN_PROCESS_BELOW_CUDA = 256
#: Decode tasks hold at least this many windows (amortises inter-process overhead).
TASK_WINDOWS = 16
#: CPU runs: windows per worker task, decoded and computed as one batch.
TASK_WINDOWS_COMPUTE = 32
#: On the CPU a batch is computed in chunks of this many windows: the intermediate spectra of
#: a chunk stay in cache (batches of 256 clips run 2-3x slower per clip than chunks of 32).
CPU_CHUNK = 32


# -- device ---------------------------------------------------------------------------------
def resolve_device(name: str | None):
    """``auto`` -> cuda when available else cpu; ``cuda`` without CUDA -> EngineUnavailable."""
    import torch

    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise EngineUnavailable(f"--device cuda: no usable CUDA device (torch {torch.__version__}, {build}); "
                                    "use --device cpu or auto")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise EngineUnavailable(f"unknown device {name!r}; choose auto, cpu or cuda")


def resolve_workers(workers: int) -> int:
    return workers if workers > 0 else max(1, min(os.cpu_count() or 1, 8))


# -- layout ---------------------------------------------------------------------------------
@dataclass
class Layout:
    """Work units in manifest order, grouped into shards (the unit of commit).

    A unit is one file (clips), or a block of at most ``batch_size`` consecutive windows of one
    file (frames), so a long recording spans many shards and a killed run loses at most one
    shard of it. Files that are not ok are one unit with no windows.
    """

    ids: np.ndarray
    hashes: np.ndarray
    ok: np.ndarray
    paths: list[Path]
    n_windows: np.ndarray           # windows per file (1 per ok file for clips)
    unit_pos: np.ndarray            # file position of each unit
    unit_first: np.ndarray          # index of the unit's first window within its file
    unit_n: np.ndarray              # windows in the unit
    shards: list[tuple[int, int]]   # [lo, hi) unit ranges
    frames: bool
    hash: str

    @classmethod
    def from_manifest(cls, project: Project, df: pd.DataFrame, cfg: Config, frames: bool) -> "Layout":
        fc = cfg.features
        ids = df["id"].astype(str).to_numpy()
        hashes = df["hash"].fillna("").astype(str).to_numpy()
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
            units, shards = _frame_units(n_w, max(1, fc.batch_size), fc.shard_size)
            extra = f"frames|{fc.shard_size}|{fc.batch_size}|{fc.window}|{fc.hop}"
        return cls(ids, hashes, ok, paths, n_w, *units, shards, frames, layout_hash(ids, hashes, extra))

    def files_table(self) -> pd.DataFrame:
        return pd.DataFrame({"id": self.ids, "hash": self.hashes, "ok": self.ok})


def _frame_units(n_w: np.ndarray, per: int, shard_rows: int):
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
    h = cfg.section_hash("audio", name)
    return f"{h}:w{cfg.features.window}:h{cfg.features.hop}" if frames else h


# -- decoding (runs in worker processes; everything here must be picklable) -----------------
@dataclass(frozen=True)
class Item:
    unit: int
    path: str
    first: int = 0          # frame mode: index of the block's first window in its file
    n: int = 1              # windows in this block


def _init_worker() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import threading

    import torch

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    parent = mp.parent_process()
    if parent is not None:      # a SIGKILLed parent never tells its pool: leave with it
        threading.Thread(target=_exit_with, args=(parent.sentinel,), daemon=True).start()


def _exit_with(sentinel: int) -> None:
    from multiprocessing.connection import wait

    wait([sentinel])
    os._exit(1)


def _decode_item(item: Item, audio: AudioConfig, frames: tuple[float, float] | None) -> np.ndarray:
    from ..library.decode import decode

    if frames is None:
        return decode(item.path, audio)[None, :]
    window, hop = frames
    sr = audio.sample_rate
    win = int(round(window * sr))
    raw = dataclasses.replace(audio, normalize=False)
    try:
        x = decode(item.path, raw, offset=item.first * hop, seconds=(item.n - 1) * hop + window, strict=False)
    except SkipFile:
        if item.first == 0:
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


def _ready() -> bool:
    return True


#: A file (or block of windows) whose decode takes longer than this many seconds is skipped
#: with the reason "decode timed out": a stuck disk or a codec caught in a loop must not hang the
#: run. 0 disables it. In a process's main thread (the main process and pool workers) it is
#: enforced with SIGALRM, which interrupts the decode itself; in any other thread (Dask workers
#: decode in threads) the decode runs in a helper thread that is abandoned when the time is up
#: (:func:`_decode_timed`).
DECODE_TIMEOUT_S = 120.0


def _timed_out(seconds: float) -> SkipFile:
    return SkipFile(f"decode timed out after {seconds:g} s")


def _alarm_usable(seconds: float) -> bool:
    import signal
    import threading

    return bool(seconds) and hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """SIGALRM after ``seconds`` raises the timeout's SkipFile in the block (main thread only;
    elsewhere it does nothing: see :func:`_decode_timed`)."""
    import signal

    if not _alarm_usable(seconds):
        yield
        return

    def expired(_signum, _frame):
        raise _timed_out(seconds)

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _decode_timed(item: Item, audio: AudioConfig, frames: tuple[float, float] | None,
                  seconds: float) -> np.ndarray:
    """:func:`_decode_item` within ``seconds`` (0: no limit), else SkipFile("decode timed out").

    In the main thread SIGALRM interrupts the decode. In any other thread (a Dask worker's task,
    a caller's thread) signals cannot reach it, so the decode runs in a daemon helper thread and
    this thread waits at most ``seconds`` for it. On expiry the helper is abandoned, not killed
    (Python cannot stop a thread): it may stay blocked (a stuck disk) or finish later, its result
    discarded; being a daemon it never keeps the process alive. Each timed-out file can leave one
    such thread behind, so a library of many hanging files costs that many idle threads.
    """
    if not seconds or _alarm_usable(seconds):
        with _deadline(seconds):
            return _decode_item(item, audio, frames)
    import threading

    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["x"] = _decode_item(item, audio, frames)
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


def decode_task(items: list[Item], audio: AudioConfig, frames: tuple[float, float] | None,
                compute: tuple[str, tuple[str, ...]] | None = None) -> list[tuple]:
    """Decode a list of items -> list of (item, windows ndarray | None, skip reason | None).

    With ``compute=(config json, sets)`` (CPU runs) the features are computed here too, on the
    whole task as one batch -> list of (item, {set: rows} | None, reason, {set: seconds} | None).
    Each item's decode is abandoned (skipped) after ``DECODE_TIMEOUT_S``, in whichever thread
    this runs (:func:`_decode_timed`).
    """
    out = []
    for it in items:
        try:
            x = _decode_timed(it, audio, frames, DECODE_TIMEOUT_S)
            out.append((it, x, None))
        except SkipFile as exc:
            out.append((it, None, exc.reason))
    return out if compute is None else _compute_task(out, *compute)


_MODULES: dict[tuple, dict] = {}     # per process: the modules of the current (config, sets)


def _compute_task(decoded: list[tuple], cfg_json: str, sets: tuple[str, ...]) -> list[tuple]:
    from .transforms import build

    key = (cfg_json, sets)
    if key not in _MODULES:
        _MODULES.clear()
        cfg = Config.from_dict(json.loads(cfg_json))
        _MODULES[key] = {s: build(s, cfg) for s in sets}
    outs, timings = compute_batch(_MODULES[key], [w for _, w, _ in decoded if w is not None])
    res, i = [], 0
    for k, (it, w, reason) in enumerate(decoded):
        m = 0 if w is None else len(w)
        rows = {name: v[i:i + m] for name, v in outs.items()} if w is not None else None
        res.append((it, rows, reason, timings if k == 0 else None))
        i += m
    return res


def compute_batch(modules: dict, windows: list[np.ndarray], device=None) -> tuple[dict, dict]:
    """Run every module on the stacked windows (one batch; on the CPU in chunks of
    ``CPU_CHUNK``; spectrograms shared). Returns ({set: float32 rows}, {set: seconds})."""
    import torch

    if not windows:
        return {}, {}
    host = torch.from_numpy(np.concatenate(windows))
    if device is not None and device.type == "cuda":
        x = host.pin_memory().to(device, non_blocking=True)
    else:
        x = host
    step = len(x) if x.device.type == "cuda" else CPU_CHUNK
    parts: dict[str, list] = {name: [] for name in modules}
    timings = dict.fromkeys(modules, 0.0)
    with torch.inference_mode():
        for i in range(0, len(x), step):
            xi, cache = x[i:i + step], {}          # spectrograms shared by the sets of a chunk
            for name, m in modules.items():
                t0 = time.perf_counter()
                parts[name].append(m(xi, cache).float().cpu().numpy())
                timings[name] += time.perf_counter() - t0
    return {name: np.concatenate(v) for name, v in parts.items()}, timings


def _ordered(tasks: Iterable[list[Item]], audio: AudioConfig, frames, workers: int,
             compute: tuple[str, tuple[str, ...]] | None = None) -> Iterator[tuple]:
    """Decoded items in task order, from ``workers`` processes, a bounded number of tasks ahead.

    A pool takes seconds to start (each worker imports torch): until its first worker is up
    the main process decodes the tasks itself, in order. Afterwards, while the oldest task is
    not back yet, the main process decodes the next unsubmitted one instead of waiting.
    """
    if workers <= 0:
        for t in tasks:
            yield from decode_task(t, audio, frames, compute)
        return
    ctx = mp.get_context("spawn")
    tasks = iter(tasks)
    ahead, steal_limit = 3 * workers, 4 * workers
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker) as pool:
        pending: deque = deque()       # Futures, or result lists decoded here
        stolen = 0
        exhausted = False
        warm = [pool.submit(_ready) for _ in range(workers)]
        try:
            while not any(f.done() for f in warm):
                t = next(tasks, None)
                if t is None:
                    return
                yield from decode_task(t, audio, frames, compute)
            while True:
                while not exhausted and len(pending) - stolen < ahead:
                    t = next(tasks, None)
                    if t is None:
                        exhausted = True
                    else:
                        pending.append(pool.submit(decode_task, t, audio, frames, compute))
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
                        pending.append(decode_task(t, audio, frames, compute))
                        stolen += 1
                    continue
                pending.popleft()
                yield from head.result()
        finally:
            for f in pending:
                if not isinstance(f, list):
                    f.cancel()


def _pack(items: Iterable[Item], shard_of: np.ndarray | None = None, size: int = TASK_WINDOWS) -> Iterator[list[Item]]:
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


# -- planning ---------------------------------------------------------------------------------
@dataclass
class SetPlan:
    name: str
    store: SetStore
    gen: Generation
    source: RowSource | None
    module: Any = None
    done: bool = False              # current generation already matches: nothing to do
    computed: int = 0
    reused: int = 0
    seconds: float = 0.0
    skipped: dict[str, str] = field(default_factory=dict)

    def needs(self, k: int) -> bool:
        return not self.done and k >= self.gen.shards_done

    def reusable(self, fid: str, h: str) -> bool:
        return self.source is not None and self.source.has(fid, h)


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


# -- the run ----------------------------------------------------------------------------------
class _Writer:
    """Appends one shard's rows of one set, in file order, then commits it."""

    def __init__(self, plan: SetPlan, frames: bool):
        self.plan, self.frames = plan, frames
        self.offset = plan.gen.rows_done
        self.buf: list[np.ndarray] = []
        self.index: list[tuple[np.ndarray, np.ndarray]] = []
        self.n_buf = 0
        self.skipped: dict[str, str] = {}

    def add(self, fid: str, rows: np.ndarray, starts: np.ndarray | None) -> None:
        self.buf.append(rows)
        self.n_buf += len(rows)
        if self.frames and len(rows):
            self.index.append((np.full(len(rows), fid, dtype=object), starts))
            if self.n_buf >= self.plan.gen.chunk_rows:
                self.flush()

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
        self.plan.store.commit(self.plan.gen, rows_done=self.offset, skipped=self.skipped, index=index)
        self.plan.skipped.update(self.skipped)


def _items(layout: Layout, units: Iterable[int]) -> Iterator[Item]:
    for u in units:
        yield Item(int(u), str(layout.paths[layout.unit_pos[u]]), int(layout.unit_first[u]), int(layout.unit_n[u]))


class _Computer:
    """Turns the ordered stream of decoded items into per-item feature rows, batch by batch.
    A batch never spans two shards, so batch composition (and so every float) is the same
    whether a run starts from scratch or resumes at a shard. With ``precomputed`` the stream
    already carries feature rows (computed in the worker processes)."""

    def __init__(self, decoded: Iterator[tuple], shard_of: np.ndarray, plans: list[SetPlan], device,
                 batch_size: int, precomputed: bool = False):
        self.decoded = decoded
        self.shard_of, self.plans, self.device, self.batch_size = shard_of, plans, device, batch_size
        self.precomputed = precomputed
        self.by_name = {p.name: p for p in plans}
        self.peek: tuple | None = None
        self.ready: deque = deque()

    def _next_decoded(self):
        if self.peek is not None:
            x, self.peek = self.peek, None
            return x
        return next(self.decoded, None)

    def _fill(self) -> None:
        if self.precomputed:
            x = self._next_decoded()
            if x is None:
                raise RuntimeError("the decoded stream ended before every planned file was seen")
            it, outs, reason, timings = x
            self._add_times(timings or {})
            self.ready.append((it, outs or {}, reason))
            return
        batch: list[tuple] = []
        n = 0
        shard = None
        while n < self.batch_size:
            x = self._next_decoded()
            if x is None:
                break
            k = int(self.shard_of[x[0].unit])
            if shard is not None and k != shard:
                self.peek = x
                break
            shard = k
            batch.append(x)
            n += 0 if x[1] is None else len(x[1])
        if not batch:
            raise RuntimeError("the decoded stream ended before every planned file was seen")
        outs, timings = compute_batch({p.name: p.module for p in self.plans},
                                      [w for _, w, _ in batch if w is not None], self.device)
        self._add_times(timings)
        i = 0
        for it, w, reason in batch:
            m = 0 if w is None else len(w)
            self.ready.append((it, {k: v[i:i + m] for k, v in outs.items()}, reason))
            i += m

    def _add_times(self, timings: dict) -> None:
        for name, sec in timings.items():
            if name in self.by_name:
                self.by_name[name].seconds += sec

    def next(self) -> tuple:
        if not self.ready:
            self._fill()
        return self.ready.popleft()


def plan_run(project: Project, cfg: Config) -> tuple["Layout", dict[str, Any], list["SetPlan"]]:
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


def units_to_decode(layout: "Layout", todo: list["SetPlan"]):
    """``(need, shard_of, work)``: which units must be decoded (of an ok file, in a shard some
    set still needs, and not reusable, same id and content hash, by every such set), each
    unit's shard, and ``[(shard, sets that need it)]``."""
    need = np.zeros(len(layout.unit_pos), bool)
    shard_of = np.zeros(len(layout.unit_pos), np.int32)
    work: list[tuple[int, list[SetPlan]]] = []
    for k, (lo, hi) in enumerate(layout.shards):
        shard_of[lo:hi] = k
        active = [p for p in todo if p.needs(k)]
        if not active:
            continue
        work.append((k, active))
        for u in range(lo, hi):
            pos = layout.unit_pos[u]
            need[u] = layout.ok[pos] and any(not p.reusable(layout.ids[pos], layout.hashes[pos]) for p in active)
    return need, shard_of, work


def run(project: Project, cfg: Config, device, *, progress: bool = True) -> dict[str, Any]:
    """Compute every set of ``cfg.features.sets``; see :func:`klustr_gpu.features.extract`."""
    t_start = time.perf_counter()
    fc = cfg.features
    frames = bool(fc.frames)
    layout, modules, plans = plan_run(project, cfg)
    for p in plans:
        p.module = modules[p.name].to(device)
    todo = [p for p in plans if not p.done]

    need, shard_of, _ = units_to_decode(layout, todo)
    n_files = len(np.unique(layout.unit_pos[need]))
    small = IN_PROCESS_BELOW_CUDA if device.type == "cuda" else IN_PROCESS_BELOW
    n_work = int(layout.unit_n[need].sum())          # clips, or windows in frame mode
    workers = 0 if n_work < min(small, IN_PROCESS_BELOW) else resolve_workers(fc.workers)
    frame_args = (fc.window, fc.hop) if frames else None
    # On the CPU the workers compute the features too (every core does decode + features; the
    # main process only writes); on CUDA they decode and the main process feeds the GPU.
    in_workers = workers > 0 and device.type == "cpu" and bool(todo)
    compute = (json.dumps(cfg.to_dict()), tuple(p.name for p in todo)) if in_workers else None
    size = min(TASK_WINDOWS_COMPUTE, fc.batch_size) if in_workers else TASK_WINDOWS
    tasks = _pack(_items(layout, np.flatnonzero(need)), shard_of, size)
    decoded = _ordered(tasks, cfg.audio, frame_args, workers, compute)
    computer = _Computer(decoded, shard_of, todo, device, fc.batch_size, precomputed=in_workers)
    bar = tqdm(total=int(layout.unit_n[need].sum()) if frames else n_files, desc=f"features {','.join(fc.sets)}",
               unit=" windows" if frames else " files", disable=not progress or not n_files)
    if n_files:
        log.info("features: %d files to decode on %s with %s", n_files, device,
                 f"{workers} worker processes" if workers else "the main process")
    with main_threads(workers, single=in_workers):
        try:
            _run_shards(layout, todo, need, computer, hop=fc.hop, bar=bar)
            for p in todo:
                p.store.finish(p.gen)
        finally:
            bar.close()
            if hasattr(decoded, "close"):
                decoded.close()
    return _summary(project, plans, layout, device, time.perf_counter() - t_start)


def _run_shards(layout: Layout, todo: list[SetPlan], need: np.ndarray, computer: "_Computer", *,
                hop: float, bar) -> None:
    """Write every shard some set still needs, in manifest order, committing each."""
    for k, (lo, hi) in enumerate(layout.shards):
        active = [p for p in todo if p.needs(k)]
        if not active:
            continue
        writers = {p.name: _Writer(p, layout.frames) for p in active}
        for u in range(lo, hi):
            if need[u]:
                _emit_computed(computer, u, active, writers, layout, hop)
                bar.update(int(layout.unit_n[u]) if layout.frames else 1)
            else:
                _emit_known(u, active, writers, layout)
        for w in writers.values():
            w.commit()


@contextlib.contextmanager
def main_threads(workers: int, *, single: bool = False) -> Iterator[None]:
    """Torch threads of the main process while decoding runs: the cores the workers leave
    (oversubscribed OpenMP threads cost far more than they give); one when the workers compute
    the features (then tasks the main process takes over give the workers' exact numbers)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1 if single else max(1, (os.cpu_count() or 1) - max(workers, 1)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _nan_row(dim: int) -> np.ndarray:
    return np.full((1, dim), np.nan, np.float32)


def _dead(w: _Writer, fid: str) -> bool:
    """The file was found broken (in this shard or a committed one): drop its later blocks."""
    return fid in w.skipped or fid in w.plan.gen.skipped


def _emit_known(u: int, active: list[SetPlan], writers: dict[str, _Writer], layout: Layout) -> None:
    """A unit nobody computes in this run: of a file that is not ok (NaN row / no rows), or copied."""
    pos = layout.unit_pos[u]
    fid, h = layout.ids[pos], layout.hashes[pos]
    for p in active:
        w = writers[p.name]
        if not layout.ok[pos]:
            if not layout.frames:
                w.add(fid, _nan_row(p.gen.dim), None)
            continue
        reason = p.source.reason(fid)
        if reason:
            w.skipped[fid] = reason
            if not layout.frames:
                w.add(fid, _nan_row(p.gen.dim), None)
            continue
        first, n = int(layout.unit_first[u]), int(layout.unit_n[u])
        rows, starts = p.source.rows(fid, h, first, n)
        w.add(fid, rows, starts)
        p.reused += len(rows)


def _emit_computed(computer: _Computer, u: int, active: list[SetPlan], writers: dict[str, _Writer],
                   layout: Layout, hop: float) -> None:
    pos = layout.unit_pos[u]
    fid, h = layout.ids[pos], layout.hashes[pos]
    copy = [p for p in active if p.reusable(fid, h)]
    if copy:
        _emit_known(u, copy, writers, layout)
    it, outs, reason = computer.next()
    assert it.unit == u, (it.unit, u)
    for p in active:
        if p in copy:
            continue
        w = writers[p.name]
        if reason is not None or _dead(w, fid):
            if reason is not None:
                w.skipped[fid] = reason
            if not layout.frames:
                w.add(fid, _nan_row(p.gen.dim), None)
            continue
        rows = outs[p.name]
        if not layout.frames and not np.isfinite(rows).all():
            w.skipped[fid] = "features not finite"
        starts = (it.first + np.arange(len(rows))) * hop if layout.frames else None
        w.add(fid, rows, starts)
        p.computed += len(rows)


def _summary(project: Project, plans: list[SetPlan], layout: Layout, device, seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for p in plans:
        cur = p.store.current()
        skipped.update(cur.skipped if cur else {})
        n_rows = int(cur.rows_done) if cur else 0
        if not layout.frames:
            bad = set(cur.skipped) if cur else set()
            n_rows = int(sum(1 for f, ok in zip(layout.ids, layout.ok) if ok and f not in bad))
        out[p.name] = {"n_rows": n_rows, "dim": int(p.gen.dim), "computed": int(p.computed), "reused": int(p.reused),
                       "seconds": round(p.seconds, 3)}
    out["skipped"] = skipped
    out["device"] = str(device)
    out["frames"] = layout.frames
    out["seconds"] = round(seconds, 3)
    return out
