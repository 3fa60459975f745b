"""The project folder: atomic, resumable reads and writes.

Layout (see docs/project-folder.md)::

    PROJECT/
      klustr.toml                 every parameter of the run
      manifest.parquet            one row per file (id, path, ..., label, status, reason)
      features/<set>/             chunked float32 arrays, rows aligned with the manifest
      embeddings/<name>.parquet   id, x, y (+ label); parameters in the file metadata
      embeddings/DEFAULT          name of the default embedding (for render / serve)
      scores.json, report.md, grid.png, map.png, map.html

Every write goes to a temporary name in the same folder and is renamed into place, so a
killed process never leaves a half-written file. A lock (``flock`` on ``PROJECT/.lock``)
keeps two runs from writing one project at once; the kernel drops it when a process dies,
so a stale lock never blocks the next run.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .config import Config
from .errors import StoreError, UsageError

MANIFEST_COLUMNS = [
    "id", "path", "size", "mtime", "mtime_ns", "format", "sample_rate", "channels", "frames",
    "duration", "label", "status", "reason",
]
META_KEY = b"klustr"


def _file_mode() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _file_mode()


@contextlib.contextmanager
def atomic_path(target: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success.

    On any exception the temporary file is removed and ``target`` is left untouched.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix + ".tmp", dir=target.parent)
        os.fchmod(fd, _FILE_MODE)      # mkstemp makes 0600; outputs get the mode open() would give
        os.close(fd)
    except OSError as exc:
        raise _store_error(exc, target) from exc
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
        _fsync_dir(target.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp_path.unlink(missing_ok=True)
        raise _store_error(exc, target) from exc
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _store_error(exc: OSError, target: Path) -> StoreError:
    if _disk_full(exc):
        return StoreError(f"disk full while writing {target}; previous outputs are intact")
    return StoreError(f"could not write {target}: {exc.strerror or exc}")


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (the folder entry), where the platform allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _disk_full(exc: BaseException) -> bool:
    """ENOSPC / EDQUOT, also when a library (pyarrow, zarr) re-raised it without an errno."""
    if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    return "No space left on device" in text or "Disk quota exceeded" in text


def atomic_write_bytes(target: str | Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target: str | Path, text: str) -> None:
    atomic_write_bytes(target, text.encode("utf-8"))


def write_parquet(df: pd.DataFrame, target: str | Path, metadata: dict[str, Any] | None = None) -> None:
    table = pa.Table.from_pandas(df, preserve_index=False)
    if metadata is not None:
        meta = dict(table.schema.metadata or {})
        meta[META_KEY] = json.dumps(metadata, sort_keys=True, default=str).encode()
        table = table.replace_schema_metadata(meta)
    with atomic_path(target, ".parquet") as tmp:
        pq.write_table(table, tmp)


def read_parquet_metadata(path: str | Path) -> dict[str, Any]:
    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(META_KEY)
    return json.loads(raw) if raw else {}


def upgrade_manifest(df: pd.DataFrame) -> pd.DataFrame:
    """A manifest of an older layout with this one's columns (``mtime_ns = -1`` when unknown)."""
    if "mtime_ns" not in df.columns:
        df = df.assign(mtime_ns=np.full(len(df), -1, np.int64))
    return df


class Project:
    """A project folder. Cheap to construct; nothing is created until written."""

    def __init__(self, path: "str | Path | Project"):
        self.path = Path(path.path if isinstance(path, Project) else path)

    def __repr__(self) -> str:
        return f"Project({str(self.path)!r})"

    # -- paths ---------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / "klustr.toml"

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.parquet"

    @property
    def features_root(self) -> Path:
        return self.path / "features"

    def features_dir(self, name: str) -> Path:
        return self.features_root / name

    @property
    def embeddings_dir(self) -> Path:
        return self.path / "embeddings"

    def embedding_path(self, name: str) -> Path:
        return self.embeddings_dir / f"{name}.parquet"

    # -- checks --------------------------------------------------------------------------
    def ensure(self) -> "Project":
        """Create the folder (and parents); one clear error if that is impossible."""
        if self.path.exists() and not self.path.is_dir():
            raise UsageError(f"output {self.path} is a file, not a folder; choose another project folder", param="project")
        for parent in self.path.parents:
            if parent.exists() and not parent.is_dir():
                raise UsageError(f"output {self.path} lies inside the file {parent}; choose another project folder",
                                 param="project")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create project folder {self.path}: {exc.strerror}", param="project") from None
        return self

    def require(self, what: str = "manifest") -> "Project":
        """Fail with a clear message if the project (or one of its stages) is missing."""
        if not self.path.is_dir():
            raise UsageError(f"no project folder at {self.path}; run scan(LIBRARY, {str(self.path)!r}) first")
        if what == "manifest" and not self.manifest_path.exists():
            raise UsageError(f"{self.path} has no manifest.parquet; run scan(LIBRARY, {str(self.path)!r}) first")
        return self

    # -- config --------------------------------------------------------------------------
    def write_config(self, cfg: Config) -> None:
        self.ensure()
        atomic_write_text(self.config_path, cfg.to_toml())

    def load_config(self, default: Config | None = None) -> Config:
        if self.config_path.exists():
            return Config.load(self.config_path)
        return default if default is not None else Config()

    # -- library root (recorded by scan) ---------------------------------------------------
    @property
    def library_root(self) -> Path:
        meta = read_parquet_metadata(self.manifest_path) if self.manifest_path.exists() else {}
        if "library" not in meta:
            raise UsageError(f"{self.path} has no manifest; run scan(LIBRARY, {str(self.path)!r}) first")
        return Path(meta["library"])

    def audio_path(self, rel: str) -> Path:
        return self.library_root / rel

    # -- manifest ------------------------------------------------------------------------
    def read_manifest(self) -> pd.DataFrame:
        """The manifest. One written before file identities had nanoseconds (it has a ``hash``
        column and no ``mtime_ns``) reads with ``mtime_ns = -1``, "unknown": the next scan
        reads every header again and the next features run recomputes every set once."""
        self.require("manifest")
        return upgrade_manifest(pd.read_parquet(self.manifest_path))

    def manifest_metadata(self) -> dict[str, Any]:
        self.require("manifest")
        return read_parquet_metadata(self.manifest_path)

    def write_manifest(self, df: pd.DataFrame, metadata: dict[str, Any]) -> None:
        self.ensure()
        write_parquet(df[MANIFEST_COLUMNS], self.manifest_path, metadata)

    def mark_skipped(self, reasons: dict[str, str]) -> None:
        """Record files found broken after the scan (by id -> reason), atomically."""
        if not reasons:
            return
        df = self.read_manifest()
        meta = self.manifest_metadata()
        hit = df["id"].isin(list(reasons))
        df.loc[hit, "status"] = "skipped"
        df.loc[hit, "reason"] = df.loc[hit, "id"].map(reasons)
        self.write_manifest(df, meta)

    # -- embeddings ----------------------------------------------------------------------
    def write_embedding(self, name: str, df: pd.DataFrame, params: dict[str, Any]) -> Path:
        path = self.embedding_path(name)
        write_parquet(df, path, params)
        return path

    def read_embedding(self, name: str | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
        name = name or self.default_embedding()
        path = self.embedding_path(name)
        if not path.exists():
            known = ", ".join(self.list_embeddings()) or "none"
            raise UsageError(f"no embedding {name!r} in {self.path} (have: {known}); run embed({str(self.path)!r})",
                             param="embedding")
        return pd.read_parquet(path), read_parquet_metadata(path)

    def list_embeddings(self) -> list[str]:
        if not self.embeddings_dir.is_dir():
            return []
        return sorted(p.stem for p in self.embeddings_dir.glob("*.parquet") if not p.name.startswith("."))

    def default_embedding(self) -> str:
        marker = self.embeddings_dir / "DEFAULT"
        if marker.exists():
            name = marker.read_text(encoding="utf-8").strip()
            if self.embedding_path(name).exists():
                return name
        names = self.list_embeddings()
        if not names:
            raise UsageError(f"{self.path} has no embeddings yet; run embed({str(self.path)!r}) first")
        return names[0]

    def set_default_embedding(self, name: str) -> None:
        atomic_write_text(self.embeddings_dir / "DEFAULT", name + "\n")

    # -- locking -------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, what: str = "run") -> Iterator[None]:
        """Hold the project's write lock; a second concurrent run is refused at once.

        Re-entrant within one thread (a stage that calls another keeps the one lock); across
        threads and processes ``flock`` refuses the second holder, and the kernel drops the lock when its
        holder dies (even by SIGKILL), so a stale lock never blocks the next run.
        """
        self.ensure()
        key = (os.getpid(), threading.get_ident(), str(self.path.resolve()))
        with _HELD_GUARD:
            if key in _HELD:
                _HELD[key] += 1
                reentrant = True
            else:
                reentrant = False
        if reentrant:
            try:
                yield
            finally:
                with _HELD_GUARD:
                    _HELD[key] -= 1
            return
        try:
            fh = open(self.path / ".lock", "a+")
        except OSError as exc:
            raise StoreError(f"cannot open the lock file of {self.path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise StoreError(f"{self.path} is in use by {holder}; wait for it to finish (the lock clears when it exits)") from None
        with _HELD_GUARD:
            _HELD[key] = 1
            _LOCK_FDS.add(fh.fileno())
        try:
            try:                      # who holds it: a courtesy for the refusal message only (unbuffered,
                os.ftruncate(fh.fileno(), 0)          # so a full disk cannot fail it later, at close)
                os.pwrite(fh.fileno(), f"pid {os.getpid()} ({what})".encode(), 0)
            except OSError:
                pass
            yield
        finally:
            with _HELD_GUARD:
                _HELD.pop(key, None)
                _LOCK_FDS.discard(fh.fileno())
            with contextlib.suppress(OSError):
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            with contextlib.suppress(OSError):
                fh.close()


#: project locks held here: (pid, thread, resolved folder) -> depth
_HELD: dict[tuple[int, int, str], int] = {}
_HELD_GUARD = threading.Lock()
#: descriptors of the lock files held here
_LOCK_FDS: set[int] = set()


def _drop_inherited_locks() -> None:
    """In a forked child (a scan or decode worker): let go of the parent's project locks. An
    ``flock`` belongs to the open file, which a fork shares: a worker still holding it would
    keep the project locked after its parent was killed. The descriptor is pointed at
    /dev/null, not unlocked (that would unlock the parent) nor closed (its file object closes
    it again at exit)."""
    global _HELD_GUARD
    _HELD_GUARD = threading.Lock()                # a fork may copy it held by another thread
    _HELD.clear()
    if _LOCK_FDS:
        null = os.open(os.devnull, os.O_RDONLY)
        for fd in _LOCK_FDS:
            with contextlib.suppress(OSError):
                os.dup2(null, fd)
        os.close(null)
        _LOCK_FDS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_inherited_locks)
