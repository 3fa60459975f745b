"""Scan: walk a library, read headers (never audio), label -> ``manifest.parquet``.

A file's identity is its size and modification time in nanoseconds, from the ``stat`` the
walk makes anyway: a rescan re-reads the header of a file only when one of them changed (or
it is new, or its last read failed for a reason that may pass: permission, a vanished file, a
timeout), and copies every other row from the previous manifest. An unchanged rescan opens no
file. Headers are parsed from a few KiB (:mod:`.headers`) in worker processes, a chunk of
paths per task; nothing reads audio bytes before the features stage, which hashes what its
decoder reads and keeps the hash with the features.

Same size and mtime but other bytes (a file replaced by one of the same length whose mtime
was copied, ``cp -p``, ``rsync -t``, ``touch -r``) counts as unchanged: telling them apart
means reading every byte of every file on every rescan, which is what this scan avoids, and
like ``make`` and ``rsync`` a nanosecond mtime is taken as the mark of a change.
"""
from __future__ import annotations

import hashlib
import logging
import operator
import os
import stat
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..config import FFMPEG_EXTENSIONS, Config
from ..errors import SkipFile
from ..runtime import worker_processes
from ..store import MANIFEST_COLUMNS, Project
from .decode import check_header
from .headers import Probe, probe, probe_many

log = logging.getLogger(__name__)

#: Below this many headers to read, read them here: worker processes take a moment to start.
IN_PROCESS_BELOW = 1500
#: Paths per worker task.
CHUNK = 256
#: A header read (a few KiB) taking longer than this is skipped as "header read timed out":
#: a hanging disk must not hang the scan (enforced in worker processes and in the main thread).
HEADER_TIMEOUT_S = 60.0
#: Reasons of a previous scan worth trying again even if the file did not change: the
#: obstacle was outside the file (permissions, a folder, a slow disk, a race).
RETRY_REASONS = ("permission denied", "file vanished", "not a regular file", "cannot read", "header read timed out",
                 "its folder could not be listed", "file name is not valid UTF-8")


def file_id(rel_path: str) -> str:
    """Stable id of a file: a hash of its path relative to the library (16 hex digits)."""
    return hashlib.blake2b(rel_path.encode("utf-8", "surrogateescape"), digest_size=8).hexdigest()


def extensions(cfg: Config) -> tuple[str, ...]:
    exts = [e.lower() for e in cfg.scan.extensions]
    import shutil

    if shutil.which("ffmpeg"):
        exts += list(FFMPEG_EXTENSIONS)
    return tuple(dict.fromkeys(exts))


# -- the walk ------------------------------------------------------------------------------------
@dataclass
class Walk:
    """Every audio-named file under a root, in sorted depth-first order, with its ``stat``
    (``size``, ``mtime_ns``; ``error`` when it could not be stat-ed or is not a regular file),
    and the folders that could not be listed (relative path -> reason)."""

    rels: list[str] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    mtimes: list[int] = field(default_factory=list)
    errors: dict[int, str] = field(default_factory=dict)
    unlisted: dict[str, str] = field(default_factory=dict)


def walk(root: Path, exts: tuple[str, ...], follow_symlinks: bool = True, skip: Path | None = None) -> Walk:
    """Walk ``root`` (see :class:`Walk`). Directories are visited once each by (device, inode),
    so symlink cycles end; directories named like audio files are descended into, never listed;
    ``skip`` (the project folder, when it lies inside the library) is not entered. A folder
    whose listing fails part-way keeps the entries read before the failure."""
    out = Walk()
    seen: set[tuple[int, int]] = set()
    if skip is not None:
        try:
            st = os.stat(skip)
            seen.add((st.st_dev, st.st_ino))
        except OSError:
            pass
    stack = [(str(root), "")]
    while stack:
        d, prefix = stack.pop()
        try:
            st = os.stat(d)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        subdirs = []
        rels, sizes, mtimes, errors = out.rels, out.sizes, out.mtimes, out.errors
        for e in _listing(d, prefix, out.unlisted):
            name = e.name
            try:
                is_dir = e.is_dir(follow_symlinks=follow_symlinks)
            except OSError:
                continue
            if is_dir:
                subdirs.append((e.path, f"{prefix}{name}/"))
                continue
            if not name.lower().endswith(exts) or name.startswith("._"):
                continue
            rels.append(prefix + name)
            try:
                st = e.stat()                            # follows links: a link counts as its target
            except OSError as exc:
                sizes.append(0)
                mtimes.append(0)
                errors[len(rels) - 1] = (
                    "file vanished during the scan" if isinstance(exc, FileNotFoundError) else _os_reason(exc))
                continue
            sizes.append(st.st_size)
            mtimes.append(st.st_mtime_ns)
            if not stat.S_ISREG(st.st_mode):
                errors[len(rels) - 1] = "not a regular file"
        stack.extend(reversed(subdirs))
    return out


_NAME = operator.attrgetter("name")


def _listing(d: str, prefix: str, unlisted: dict[str, str]) -> list[os.DirEntry]:
    entries: list[os.DirEntry] = []
    try:
        with os.scandir(d) as it:
            for e in it:
                entries.append(e)
    except OSError as exc:
        unlisted[prefix.rstrip("/") or "."] = _os_reason(exc)
        log.warning("cannot list %s: %s", d, exc.strerror or exc)
    entries.sort(key=_NAME)
    return entries


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, PermissionError):
        return "permission denied"
    return f"cannot read: {exc.strerror or exc}"


# -- headers -------------------------------------------------------------------------------------
def read_headers(paths: list[str], workers: int, *, progress: bool = True) -> list[Probe]:
    """:func:`.headers.probe` of every path: in ``workers`` processes, a chunk of paths per
    task, or here when there are few (or ``workers <= 1``)."""
    bar = tqdm(total=len(paths), desc="scan: headers", unit=" files", disable=not progress or not paths, leave=False)
    try:
        if not processes_for(len(paths), workers):
            out = []
            for p in paths:
                out.append(probe(p, HEADER_TIMEOUT_S))
                bar.update()
            return out
        return _in_workers(paths, workers, bar)
    finally:
        bar.close()


def processes_for(n_paths: int, workers: int) -> int:
    """Worker processes :func:`read_headers` uses for ``n_paths`` headers (0: reads them here)."""
    if workers <= 1 or n_paths < IN_PROCESS_BELOW:
        return 0
    return min(workers, -(-n_paths // CHUNK))


def _context():
    """Forked workers where the platform has fork: they start at once, and, unlike spawned
    ones, do not re-import the caller's ``__main__`` (a script without a main guard works).
    What they run is plain file I/O, none of the threaded libraries fork can upset."""
    import multiprocessing as mp

    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")


def _in_workers(paths: list[str], workers: int, bar) -> list[Probe]:
    import warnings

    chunks = [paths[i:i + CHUNK] for i in range(0, len(paths), CHUNK)]
    results: list[list[Probe] | None] = [None] * len(chunks)
    with warnings.catch_warnings(), ProcessPoolExecutor(max_workers=processes_for(len(paths), workers),
                                                        mp_context=_context()) as pool:
        warnings.simplefilter("ignore", DeprecationWarning)       # 3.12+: fork of a threaded process
        todo = iter(range(len(chunks)))
        running = {}
        for k in todo:                                  # a bounded number of chunks in flight
            running[pool.submit(probe_many, chunks[k], HEADER_TIMEOUT_S)] = k
            if len(running) >= 4 * workers:
                break
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for f in done:
                k = running.pop(f)
                results[k] = f.result()
                bar.update(len(chunks[k]))
                nxt = next(todo, None)
                if nxt is not None:
                    running[pool.submit(probe_many, chunks[nxt], HEADER_TIMEOUT_S)] = nxt
    return [r for chunk in results for r in chunk]


# -- the manifest --------------------------------------------------------------------------------
@dataclass
class ScanStats:
    """What a scan did: headers read (new or changed files), rows kept from the previous scan,
    the worker processes that read headers (0: read here), folders that could not be listed."""

    headers_read: int
    rows_kept: int
    workers: int
    unlisted: dict[str, str]


def scan_library(root: Path, proj: Project, cfg: Config, labeller: Callable[[str], str | None], *,
                 progress: bool = True, workers: int | None = None) -> tuple[pd.DataFrame, ScanStats]:
    """Walk the library folder ``root`` (resolved), read the header of every new or changed
    audio file, label every file, and write ``PROJECT/manifest.parquet``; returns the manifest.
    Rows of files unchanged since the previous scan of the same folder (same size and mtime)
    are copied from the previous manifest. Broken files become rows with ``status="skipped"``
    and a ``reason``. Returns the manifest and what the scan did (:class:`ScanStats`). The
    caller holds the project's lock (the :func:`klustr_gpu.scan` stage checks its arguments and
    takes it)."""
    project_dir = proj.path.resolve()
    inside = project_dir != root and root in project_dir.parents
    w = walk(root, extensions(cfg), cfg.scan.follow_symlinks, skip=project_dir if inside else None)
    df = _walked_frame(w)
    prev = _previous(proj, root)
    audio_hash = cfg.section_hash("audio")
    reuse = _reusable(df, prev, audio_hash)
    fresh = np.flatnonzero(~reuse & df["reason"].isna().to_numpy())
    n_workers = worker_processes(cfg.scan.workers if workers is None else workers)
    base = os.path.join(str(root), "")
    probes = read_headers([base + w.rels[i] for i in fresh], n_workers, progress=progress)
    _fill_read(df, fresh, probes, cfg)
    _fill_reused(df, reuse, prev, cfg, same_audio=prev is not None and prev.attrs.get("audio") == audio_hash)
    df = pd.concat([df, _unlisted_rows(prev, w.unlisted, set(df["path"]))], ignore_index=True)
    unknown = (df["format"] == "").to_numpy()
    df.loc[unknown, "format"] = [os.path.splitext(p)[1].lower().lstrip(".") for p in df.loc[unknown, "path"]]
    df["label"] = pd.Series([labeller(p) for p in df["path"]], dtype="object")
    df["status"] = np.where(df["reason"].isna(), "ok", "skipped")
    df["reason"] = df["reason"].fillna("")
    df["duration"] = np.where(df["sample_rate"] > 0, df["frames"] / df["sample_rate"].clip(lower=1), 0.0)
    df["mtime"] = df["mtime_ns"] / 1e9
    df = df[MANIFEST_COLUMNS].drop_duplicates("id").reset_index(drop=True)
    mode = getattr(labeller, "mode", "none")
    proj.write_manifest(df, {"library": str(root), "labels": mode, "config_preset": cfg.preset, "audio": audio_hash})
    log.info("scan: %d files, %d ok, %d skipped; %d headers read, %d rows kept from the previous scan", len(df),
             int((df.status == "ok").sum()), int((df.status != "ok").sum()), len(fresh), int(reuse.sum()))
    return df, ScanStats(headers_read=len(fresh), rows_kept=int(reuse.sum()), workers=processes_for(len(fresh), n_workers),
                         unlisted=dict(w.unlisted))


def _walked_frame(w: Walk) -> pd.DataFrame:
    """One row per walked file: id, path, identity, the walk's error (None when it went well)."""
    n = len(w.rels)
    shown = [_printable(r) for r in w.rels]
    reason = np.full(n, None, dtype=object)
    for i, r in w.errors.items():
        reason[i] = r
    for i, (r, s) in enumerate(zip(w.rels, shown)):
        if r != s:                                      # the manifest (UTF-8 parquet) cannot hold the real name
            reason[i] = "file name is not valid UTF-8; rename the file to map it"
    return pd.DataFrame({
        "id": [file_id(r) for r in w.rels], "path": pd.Series(shown, dtype=object),
        "size": np.asarray(w.sizes, np.int64), "mtime_ns": np.asarray(w.mtimes, np.int64),
        "format": np.full(n, "", dtype=object),
        "sample_rate": np.zeros(n, np.int64), "channels": np.zeros(n, np.int64), "frames": np.zeros(n, np.int64),
        "reason": reason})


def _previous(proj: Project, root: Path) -> pd.DataFrame | None:
    """The previous manifest of this library, indexed by path (None: no usable one)."""
    if not proj.manifest_path.exists():
        return None
    try:
        meta = proj.manifest_metadata()
        if meta.get("library") != str(root):
            return None
        prev = proj.read_manifest()
    except Exception as exc:  # noqa: BLE001 - a damaged manifest is simply rescanned
        log.warning("scan: the previous manifest cannot be read (%s); every header is read again", exc)
        return None
    if "mtime_ns" not in prev.columns or (prev["mtime_ns"] < 0).any():
        return None                                    # written before identities had nanoseconds
    prev = prev.drop_duplicates("path").set_index("path")
    prev.attrs["audio"] = meta.get("audio")
    return prev


def _reusable(df: pd.DataFrame, prev: pd.DataFrame | None, audio_hash: str) -> np.ndarray:
    """Rows whose file has the identity it had at the previous scan, whose previous row can stand."""
    if prev is None or not len(df):
        return np.zeros(len(df), bool)
    old = prev.reindex(df["path"])
    same = (old["size"].to_numpy() == df["size"].to_numpy()) & (old["mtime_ns"].to_numpy() == df["mtime_ns"].to_numpy())
    reason = old["reason"].fillna("").astype(str)
    retry = reason.str.startswith(RETRY_REASONS).to_numpy() | (reason.str.startswith("decode timed out").to_numpy())
    return same & ~retry & df["reason"].isna().to_numpy()


def _fill_read(df: pd.DataFrame, rows: np.ndarray, probes: list[Probe], cfg: Config) -> None:
    if not len(rows):
        return
    cols = list(zip(*probes))
    for k, col in enumerate(("size", "mtime_ns", "format", "sample_rate", "channels", "frames")):
        df.loc[rows, col] = np.asarray(cols[k], dtype=object if col == "format" else np.int64)
    df.loc[rows, "reason"] = np.array([p.reason if p.reason else _header_problem(p, cfg) for p in probes], dtype=object)


def _fill_reused(df: pd.DataFrame, rows: np.ndarray, prev: pd.DataFrame | None, cfg: Config, *, same_audio: bool) -> None:
    """Copy the previous rows' header fields; their status is decided again from the header
    (the audio settings may have changed; skips found by the features stage are its store's
    to repeat), except for headers that could not be read at all."""
    if prev is None or not rows.any():
        return
    idx = np.flatnonzero(rows)
    old = prev.reindex(df["path"].to_numpy()[idx])
    for col in ("format", "sample_rate", "channels", "frames"):
        df.loc[idx, col] = old[col].to_numpy()
    ok = (old["status"] == "ok").to_numpy()
    valid = (old["frames"].to_numpy() > 0) & (old["sample_rate"].to_numpy() > 0)
    reasons = np.where(valid, None, old["reason"].to_numpy()).astype(object)
    for j in np.flatnonzero(valid & ~(ok & same_audio)):
        o = old.iloc[j]
        reasons[j] = _header_problem(o, cfg)
    df.loc[idx, "reason"] = reasons


def _header_problem(h, cfg: Config) -> str | None:
    try:
        check_header(_HeaderView(int(h.channels), int(h.sample_rate), int(h.frames)), cfg.audio)
    except SkipFile as exc:
        return exc.reason
    return None


@dataclass(frozen=True)
class _HeaderView:
    channels: int
    samplerate: int
    frames: int


def _unlisted_rows(prev: pd.DataFrame | None, unlisted: dict[str, str], walked: set[str]) -> pd.DataFrame:
    """Files of the previous scan inside folders that could not be listed now: kept, skipped
    with the reason (not silently dropped)."""
    if prev is None or not unlisted:
        return pd.DataFrame(columns=["id", "path", "size", "mtime_ns", "format", "sample_rate", "channels", "frames",
                                     "reason"])
    rows = []
    for path, r in prev.iterrows():
        if path in walked:
            continue
        for folder, why in unlisted.items():
            if folder == "." or path.startswith(folder + "/"):
                rows.append({"id": r["id"], "path": path, "size": r["size"], "mtime_ns": r["mtime_ns"],
                             "format": r["format"], "sample_rate": r["sample_rate"], "channels": r["channels"],
                             "frames": r["frames"], "reason": f"its folder could not be listed ({why})"})
                break
    return pd.DataFrame(rows)


def _printable(rel: str) -> str:
    """``rel`` itself, or (for a name with bytes that are not UTF-8) a lossy, storable copy."""
    try:
        rel.encode("utf-8")
        return rel
    except UnicodeEncodeError:
        return rel.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
