"""Where work runs, decided once, here, for every stage: the torch device, the number of
threads, the Dask cluster, and the project folder a stage was given.

Nothing here is imported at ``import klustr_gpu`` beyond this module: torch and distributed
load inside the functions that need them.
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any, Iterator

from .config import DEVICES
from .errors import EngineUnavailable, UsageError
from .store import Project

log = logging.getLogger(__name__)


# -- the project ---------------------------------------------------------------------------------
def as_project(project: str | os.PathLike | Project) -> Project:
    """A :class:`Project` for a folder path (or the project itself)."""
    return project if isinstance(project, Project) else Project(Path(project).expanduser())


# -- devices -------------------------------------------------------------------------------------
def has_cuda() -> bool:
    """Whether torch sees a usable CUDA device."""
    import torch

    return bool(torch.cuda.is_available())


def torch_device(name: str | None = "auto"):
    """The ``torch.device`` for ``name``: ``auto`` (CUDA when torch sees a GPU, else the CPU),
    ``cpu``, ``cuda`` or ``cuda:N``. An explicit ``cuda`` without one is
    :class:`EngineUnavailable` (never a silent fallback); another name is a :class:`UsageError`."""
    import torch

    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if has_cuda() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not has_cuda():
            build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise EngineUnavailable(f"device={name!r}: no usable CUDA device (torch {torch.__version__}, {build}); "
                                    "use device='cpu' or device='auto'", param="device")
        return torch.device(name)
    raise UsageError(f"device={name!r} is unknown; choose one of: {', '.join(DEVICES)}", param="device")


# -- threads -------------------------------------------------------------------------------------
def busy_elsewhere(samples: int = 3, gap: float = 0.005) -> int:
    """Cores that other work keeps busy *now*: the fewest runnable tasks ``/proc/loadavg``
    reports over ``samples`` readings ``gap`` seconds apart, less the reading thread itself.

    Not the 1-minute load average: it lags, so right after ``klustr features`` (or any stage of
    ``klustr map``) our own finished work still reads as 2-3 busy cores and the next stage would
    run on one thread. Where ``/proc/loadavg`` is missing (not Linux), the load average it is."""
    import time

    try:
        seen = []
        for i in range(max(1, samples)):
            with open("/proc/loadavg", encoding="ascii") as fh:
                seen.append(int(fh.read().split()[3].split("/")[0]) - 1)
            if i + 1 < samples:
                time.sleep(gap)
        return max(0, min(seen))
    except (OSError, ValueError, IndexError):
        try:
            return max(0, int(os.getloadavg()[0]) - 1)
        except OSError:  # pragma: no cover
            return 0


def usable_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def n_jobs(value: int) -> int:
    """Threads for a reducer: ``value`` if positive; else the idle cores of this machine (the
    cores this process may use minus those other work keeps busy now, :func:`busy_elsewhere`;
    at least 1). Busy-waiting OpenMP threads on cores that other processes hold slow t-SNE down
    several-fold, and the results do not depend on the thread count."""
    if value and value > 0:
        return int(value)
    cores = usable_cores()
    return max(1, min(cores, cores - busy_elsewhere()))


def worker_processes(value: int, cap: int = 8) -> int:
    """Worker processes for work that scales by processes (the scan's header reads, the
    features' decoding): ``value`` if positive, else one per core this process may use, up to
    ``cap``. Unlike :func:`n_jobs` it does not subtract cores busy elsewhere: a worker process
    waiting for a core costs nothing (it never spins), and on a disk that answers slowly more
    workers keep more reads in flight."""
    if value and value > 0:
        return int(value)
    return max(1, min(usable_cores(), cap))


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` for the block, then restored."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


# -- clusters ------------------------------------------------------------------------------------
def check_cluster(cluster: Any) -> None:
    """A bad cluster spec fails at once, before any work (a connected Client passes)."""
    if isinstance(cluster, str) and cluster:
        from .cluster import parse

        parse(cluster)


@contextlib.contextmanager
def using_cluster(cluster: Any) -> Iterator[Any]:
    """A ``distributed.Client`` for ``cluster``: a spec (``local:N``, ``cuda``, ``tcp://HOST:PORT``;
    started here and closed after the block), a connected Client (yielded as it is, left open),
    or None / "" (yields None: work in this process)."""
    if cluster is None or isinstance(cluster, str):
        from .cluster import client

        with client(cluster or None) as c:
            yield c
    else:
        yield cluster
