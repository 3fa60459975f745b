"""``klustr doctor PROJECT``: check a project folder and say how to repair it.

Checks the config, the manifest against the library on disk (missing or changed audio files),
every feature set against the manifest, every embedding against the manifest, the default
embedding, leftovers of interrupted writes, and whether another run holds the lock.
"""
from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Config
from .errors import KlustrError, UsageError
from .store import Project


@dataclass
class Finding:
    level: str      # "ok" | "warn" | "error"
    what: str
    fix: str = ""

    def line(self) -> str:
        mark = {"ok": "ok   ", "warn": "warn ", "error": "ERROR"}[self.level]
        return f"{mark} {self.what}" + (f"\n      fix: {self.fix}" if self.fix else "")


def _tmp_leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*.tmp")] + [p for p in root.rglob("*.tmp") if not p.name.startswith(".")]


def check(project: str | Path | Project, *, fix: bool = False, max_missing_listed: int = 5) -> list[Finding]:
    """Return the findings for ``project``; ``fix=True`` removes leftovers of interrupted writes."""
    proj = project if isinstance(project, Project) else Project(project)
    if not proj.path.is_dir():
        raise UsageError(f"no project folder at {proj.path}")
    out: list[Finding] = []
    p = proj.path

    # config
    if proj.config_path.exists():
        try:
            Config.load(proj.config_path)
            out.append(Finding("ok", "klustr.toml is readable"))
        except (KlustrError, ValueError) as exc:
            out.append(Finding("error", f"klustr.toml cannot be read: {exc}",
                               f"fix the file, or delete it and rerun with --preset (defaults are used)"))
    else:
        out.append(Finding("warn", "no klustr.toml", f"any command (e.g. `klustr scan LIBRARY -o {p}`) writes one"))

    # lock
    lock = p / ".lock"
    locked = False
    if lock.exists():
        with open(lock, "a+") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            except BlockingIOError:
                locked = True
                fh.seek(0)
                out.append(Finding("warn", f"a run is in progress ({fh.read().strip() or 'unknown process'})",
                                   "wait for it to finish; results below may change"))

    # manifest and library
    if not proj.manifest_path.exists():
        out.append(Finding("error", "no manifest.parquet", f"run `klustr scan LIBRARY -o {p}`"))
        return out
    try:
        man = proj.read_manifest()
        root = proj.library_root
    except Exception as exc:  # a damaged parquet file can raise many pyarrow errors
        out.append(Finding("error", f"manifest.parquet cannot be read ({type(exc).__name__}: {exc})",
                           f"rescan: `klustr scan LIBRARY -o {p}` rewrites it"))
        return out
    ok = man[man.status == "ok"]
    out.append(Finding("ok", f"manifest: {len(man)} files, {len(ok)} ok, {len(man) - len(ok)} skipped; library {root}"))
    if not root.is_dir():
        out.append(Finding("error", f"the library folder {root} is gone",
                           f"mount or restore it, or rescan its new location: `klustr scan NEWPATH -o {p}`"))
    else:
        missing, changed = [], []
        for rel, size, mtime in zip(ok.path, ok["size"], ok.mtime):
            try:
                st = (root / rel).stat()
            except OSError:
                missing.append(rel)
                continue
            if st.st_size != size or abs(st.st_mtime - mtime) > 1e-3:
                changed.append(rel)
        if missing:
            out.append(Finding("error", f"{len(missing)} audio files listed in the manifest are missing: "
                               + ", ".join(missing[:max_missing_listed]) + (" ..." if len(missing) > max_missing_listed else ""),
                               f"restore them, or rescan: `klustr scan {root} -o {p}` then `klustr features {p}`"))
        if changed:
            out.append(Finding("warn", f"{len(changed)} audio files changed since the scan: "
                               + ", ".join(changed[:max_missing_listed]) + (" ..." if len(changed) > max_missing_listed else ""),
                               f"rescan and update: `klustr scan {root} -o {p}` then `klustr features {p}` (only they are recomputed)"))
        if not missing and not changed:
            out.append(Finding("ok", "every ok file is on disk, unchanged"))

    # features
    feats: dict[str, Any] = {}
    froot = proj.features_root
    if froot.is_dir():
        from .features import load

        for d in sorted(x for x in froot.iterdir() if x.is_dir() and not x.name.startswith(".")):
            name, _, mode = d.name.partition("@")
            try:
                t = load(proj, name, frames=mode == "frames")
                feats[d.name] = t
                out.append(Finding("ok", f"features {d.name}: {len(t)} rows x {t.X.shape[1]}, consistent with the manifest"))
            except KlustrError as exc:
                out.append(Finding("error", f"features {d.name}: {exc}", f"run `klustr features {p} --set {name}`"
                                   + (" --frames" if mode == "frames" else "")))
    else:
        out.append(Finding("warn", "no features yet", f"run `klustr features {p}`"))

    # embeddings
    ids = set(man.id.astype(str))
    for name in proj.list_embeddings():
        try:
            emb, meta = proj.read_embedding(name)
        except Exception as exc:  # damaged parquet
            out.append(Finding("error", f"embedding {name} cannot be read ({type(exc).__name__})",
                               f"delete {proj.embedding_path(name)} and rerun `klustr embed {p} --name {name}`"))
            continue
        need = {"id", "x", "y"}
        if not need <= set(emb.columns):
            out.append(Finding("error", f"embedding {name} lacks columns {sorted(need - set(emb.columns))}",
                               f"rerun `klustr embed {p} --name {name}`"))
            continue
        fid = emb["file_id"] if "file_id" in emb else emb["id"]
        stale = int((~fid.astype(str).isin(ids)).sum())
        if stale:
            out.append(Finding("warn", f"embedding {name}: {stale} points refer to files no longer in the manifest",
                               f"rerun `klustr embed {p} --name {name}`"))
        elif not emb[["x", "y"]].notna().all().all():
            out.append(Finding("error", f"embedding {name} holds NaN coordinates", f"rerun `klustr embed {p} --name {name}`"))
        else:
            out.append(Finding("ok", f"embedding {name}: {len(emb)} points"))
    default = proj.embeddings_dir / "DEFAULT"
    if default.exists():
        target = default.read_text(encoding="utf-8").strip()
        if not proj.embedding_path(target).exists():
            out.append(Finding("warn", f"the default embedding {target!r} does not exist",
                               f"`klustr grid {p}` or `klustr embed {p}` sets a new one"))

    # leftovers
    tmp = _tmp_leftovers(p)
    if tmp:
        if fix and not locked:
            for t in tmp:
                t.unlink(missing_ok=True) if t.is_file() else None
            out.append(Finding("ok", f"removed {len(tmp)} leftovers of interrupted writes"))
        else:
            out.append(Finding("warn", f"{len(tmp)} leftovers of interrupted writes (harmless temporary files)",
                               f"`klustr doctor {p} --fix` removes them"))
    return out


def healthy(findings: list[Finding]) -> bool:
    return not any(f.level == "error" for f in findings)
