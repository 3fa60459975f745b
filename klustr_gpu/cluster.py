"""A Dask cluster from ``--cluster``: ``local:N``, ``cuda`` or a scheduler address.

``local:N``
    a ``distributed.LocalCluster`` with N single-threaded worker processes on this machine;
``cuda``
    ``dask_cuda.LocalCUDACluster``: one worker per visible GPU (needs the ``gpu`` extra);
``tcp://HOST:PORT`` (or ``tls://``)
    an existing scheduler; its workers must have klustr_gpu installed and see the library and
    the project folder at the same paths (a shared file system, or an fsspec URL).

A stage's ``cluster=`` takes such a spec or a connected ``distributed.Client``:
:func:`klustr_gpu.runtime.using_cluster` is the one place that tells them apart.

Scripts that start a LocalCluster need the ``if __name__ == "__main__":`` guard (the ``klustr``
command has it).
"""
from __future__ import annotations

import contextlib
import logging
import re
from typing import Iterator

from .errors import EngineUnavailable, UsageError

log = logging.getLogger(__name__)

_LOCAL = re.compile(r"^local(?::(\d+))?$")


def parse(spec: str) -> tuple[str, int | str | None]:
    """``"local:4"`` -> ("local", 4); ``"cuda"`` -> ("cuda", None); ``"tcp://h:8786"`` -> ("address", ...)."""
    spec = spec.strip()
    m = _LOCAL.match(spec)
    if m:
        n = None if m.group(1) is None else int(m.group(1))
        if n is not None and n < 1:
            raise UsageError(f"cluster={spec!r}: need at least one worker", param="cluster")
        return "local", n
    if spec == "cuda":
        return "cuda", None
    if re.match(r"^(tcp|tls|ucx|inproc)://[^\s/:]+(:\d+)?/?$", spec):
        return "address", spec
    raise UsageError(f"cluster={spec!r}: expected local:N, cuda, or a scheduler address like tcp://host:8786",
                     param="cluster")


@contextlib.contextmanager
def client(spec: str | None) -> Iterator["object | None"]:
    """Yield a ``distributed.Client`` for ``spec`` (None: no cluster, yields None)."""
    if not spec:
        yield None
        return
    kind, arg = parse(spec)
    with _quiet_dask():
        with _open(kind, arg) as c:
            log.info("dask: %s (%d workers)", spec, len(c.scheduler_info().get("workers", {})))
            yield c


def check_workers_see(c, folders) -> None:
    """Every worker of client ``c`` must see ``folders`` at the same paths (else a remote worker
    would find no audio, or no project); a :class:`UsageError` names a blind worker."""
    import os

    for folder in folders:
        seen = c.run(os.path.isdir, str(folder))
        blind = sorted(w for w, ok in seen.items() if not ok)
        if not seen:
            raise UsageError("cluster: the Dask cluster has no workers", param="cluster")
        if blind:
            raise UsageError(f"cluster: {len(blind)} worker(s) cannot see {folder} (e.g. {blind[0]}); "
                             "workers need the library and the project at the same paths", param="cluster")


@contextlib.contextmanager
def _quiet_dask() -> Iterator[None]:
    """Dask's own INFO chatter (scheduler, nannies) only with klustr's debug logging."""
    import distributed  # noqa: F401  (importing it sets its loggers' levels: do that first)

    dl = logging.getLogger("distributed")
    before = dl.level
    if not log.isEnabledFor(logging.DEBUG):
        dl.setLevel(logging.WARNING)
    try:
        yield
    finally:
        dl.setLevel(before)


@contextlib.contextmanager
def fast_malloc() -> Iterator[None]:
    """Start local workers without Dask's ``MALLOC_TRIM_THRESHOLD_=65536``: with it every large
    allocation is a fresh mmap, and torch's CPU features run 2-3x slower (measured). Dask also
    sets it in this process's environment, where later spawned processes would inherit it."""
    import dask

    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        yield


@contextlib.contextmanager
def _open(kind: str, arg) -> Iterator["object"]:
    from distributed import Client, LocalCluster

    if kind == "local":
        import os

        n = arg or max(1, (os.cpu_count() or 2))
        with fast_malloc():
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                                   silence_logs=logging.WARNING)
    elif kind == "cuda":
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError:
            raise EngineUnavailable("cluster='cuda' needs dask-cuda: pip install 'klustr_gpu[gpu]'",
                                    param="cluster") from None
        with fast_malloc():
            cluster = LocalCUDACluster()
    else:
        cluster = None
    try:
        c = Client(cluster if cluster is not None else arg)
    except OSError as exc:          # an address nobody answers at (or a cluster that cannot start)
        if cluster is not None:
            cluster.close()
        raise UsageError(f"cluster={arg!r}: cannot connect to the Dask scheduler: {exc}", param="cluster") from None
    try:
        yield c
    finally:
        c.close()
        if cluster is not None:
            cluster.close()
