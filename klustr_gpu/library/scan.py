"""Scan: walk a library, read headers (never full decodes), hash, label -> ``manifest.parquet``."""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator

import pandas as pd
from tqdm.auto import tqdm

from ..config import FFMPEG_EXTENSIONS, Config
from ..errors import SkipFile
from ..store import MANIFEST_COLUMNS, Project
from .decode import check_header, read_info

log = logging.getLogger(__name__)

_SF_FORMAT = {"WAV": "wav", "WAVEX": "wav", "FLAC": "flac", "AIFF": "aiff", "OGG": "ogg", "MP3": "mp3", "RF64": "wav"}


def file_id(rel_path: str) -> str:
    """Stable id of a file: a hash of its path relative to the library (16 hex digits)."""
    return hashlib.blake2b(rel_path.encode("utf-8", "surrogateescape"), digest_size=8).hexdigest()


def content_hash(path: Path, size: int, full_below: int) -> str:
    """blake2b of the bytes; above ``full_below`` bytes, of the size + first and last MiB."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        if size <= full_below:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        else:
            h.update(str(size).encode())
            h.update(fh.read(1 << 20))
            fh.seek(max(0, size - (1 << 20)))
            h.update(fh.read(1 << 20))
    return h.hexdigest()


def extensions(cfg: Config) -> tuple[str, ...]:
    exts = [e.lower() for e in cfg.scan.extensions]
    if shutil.which("ffmpeg"):
        exts += list(FFMPEG_EXTENSIONS)
    return tuple(dict.fromkeys(exts))


def walk(root: Path, exts: tuple[str, ...], follow_symlinks: bool = True) -> Iterator[Path]:
    """Every file under ``root`` whose name ends in one of ``exts``, in sorted order.

    Directories are visited once each by (device, inode), so symlink cycles end; directories
    named like audio files are descended into, never yielded.
    """
    seen: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            st = d.stat()
        except OSError:
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen:
            continue
        seen.add(key)
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as exc:
            log.warning("cannot list %s: %s", d, exc.strerror)
            continue
        subdirs = []
        for e in entries:
            try:
                is_dir = e.is_dir(follow_symlinks=follow_symlinks)
            except OSError:
                continue
            if is_dir:
                subdirs.append(Path(e.path))
            elif e.name.lower().endswith(exts) and not e.name.startswith("._"):
                yield Path(e.path)
        stack.extend(reversed(subdirs))


def _fmt(info) -> str:
    return _SF_FORMAT.get(info.format, info.format.lower())


def _printable(rel: str) -> str:
    """``rel`` itself, or (for a name with bytes that are not UTF-8) a lossy, storable copy."""
    try:
        rel.encode("utf-8")
        return rel
    except UnicodeEncodeError:
        return rel.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _row(path: Path, root: Path, cfg: Config, labeller: Callable[[str], str | None]) -> dict:
    rel = path.relative_to(root).as_posix()
    shown = _printable(rel)
    row = dict(id=file_id(rel), path=shown, size=0, mtime=0.0, hash="", format=path.suffix.lower().lstrip("."),
               sample_rate=0, channels=0, frames=0, duration=0.0, label=labeller(shown), status="ok", reason="")
    if shown != rel:        # the manifest (UTF-8 parquet) cannot hold the real name to find it again
        row.update(status="skipped", reason="file name is not valid UTF-8; rename the file to map it")
        return row
    try:
        st = path.stat()
        row.update(size=st.st_size, mtime=st.st_mtime)
        if not stat.S_ISREG(st.st_mode):
            raise SkipFile("not a regular file")
        info = read_info(path)
        row.update(format=_fmt(info), sample_rate=info.samplerate, channels=info.channels,
                   frames=info.frames, duration=info.frames / info.samplerate if info.samplerate else 0.0)
        check_header(info, cfg.audio)
        row["hash"] = content_hash(path, st.st_size, cfg.scan.hash_full_below)
    except SkipFile as exc:
        row.update(status="skipped", reason=exc.reason)
    except PermissionError:
        row.update(status="skipped", reason="permission denied")
    except FileNotFoundError:
        row.update(status="skipped", reason="file vanished during the scan")
    except OSError as exc:
        row.update(status="skipped", reason=f"cannot read: {exc.strerror}")
    return row


def scan_library(root: Path, proj: Project, cfg: Config, labeller: Callable[[str], str | None], *,
                 progress: bool = True, threads: int = 4) -> pd.DataFrame:
    """Walk the library folder ``root`` (resolved), read every audio file's header, hash and label
    it, and write ``PROJECT/manifest.parquet``; returns the manifest. Broken files become rows
    with ``status="skipped"`` and a ``reason``. The caller holds the project's lock (the
    :func:`klustr_gpu.scan` stage checks its arguments and takes it)."""
    project_dir = proj.path.resolve()
    try:
        project_dir.relative_to(root)
        inside = True
    except ValueError:
        inside = False
    exts = extensions(cfg)
    paths = [p for p in tqdm(walk(root, exts, cfg.scan.follow_symlinks), desc="scan: walk", unit=" files",
                             disable=not progress, leave=False)
             if not (inside and _under(p, project_dir))]
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        rows = list(tqdm(pool.map(lambda p: _row(p, root, cfg, labeller), paths), total=len(paths),
                         desc="scan: headers", unit=" files", disable=not progress))
    df = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    if len(df):
        df = df.drop_duplicates("id").reset_index(drop=True)
    df["label"] = df["label"].astype("object")
    mode = getattr(labeller, "mode", "none")
    proj.write_manifest(df, {"library": str(root), "labels": mode, "config_preset": cfg.preset})
    log.info("scan: %d files, %d ok, %d skipped", len(df), int((df.status == "ok").sum()), int((df.status != "ok").sum()))
    return df


def _under(p: Path, folder: Path) -> bool:
    try:
        p.resolve().relative_to(folder)
        return True
    except (ValueError, OSError):
        return False
