"""``klustr doctor PROJECT``: check a project folder and say how to repair it.

Checks the config, the manifest against the library on disk (missing or changed audio files),
every feature set against the manifest, every embedding against the manifest, the default
embedding, leftovers of interrupted writes, and whether another run holds the lock.
"""
from __future__ import annotations

import fcntl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Config
from .errors import KlustrError, UsageError
from .runtime import as_project
from .store import Project


@dataclass
class Finding:
    level: str      # "ok" | "warn" | "error"
    what: str
    fix: str = ""

    def line(self) -> str:
        mark = {"ok": "ok   ", "warn": "warn ", "error": "ERROR"}[self.level]
        return f"{mark} {self.what}" + (f"\n      fix: {self.fix}" if self.fix else "")


#: names left by writes a killed run never finished: ours (store.atomic_path: ``.NAME.XXXX.tmp``)
#: and zarr's chunk writes (``CHUNK.<uuid>.partial``)
LEFTOVER_GLOBS = ("*.tmp", "*.partial")


def _tmp_leftovers(root: Path) -> list[Path]:
    found: dict[Path, None] = {}
    for pattern in LEFTOVER_GLOBS:
        for p in root.rglob(pattern):
            if p.is_file() and not p.is_symlink():
                found[p] = None
    return sorted(found)


def _files(n: int) -> str:
    return f"{n} audio file" + ("" if n == 1 else "s")


def _lock_holder(lock: Path) -> str | None:
    """Who holds the project's lock (its note), or None when nobody does."""
    if not lock.exists():
        return None
    with open(lock, "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            return fh.read().strip() or "unknown process"
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    return None


def check(project: str | Path | Project, *, fix: bool = False, max_missing_listed: int = 5) -> list[Finding]:
    """Return the findings for ``project``; ``fix=True`` removes leftovers of interrupted writes."""
    proj = as_project(project)
    if not proj.path.is_dir():
        raise UsageError(f"no project folder at {proj.path}", param="project")
    out = _check_config(proj)
    holder = _lock_holder(proj.path / ".lock")
    if holder is not None:
        out.append(Finding("warn", f"a run is in progress ({holder})", "wait for it to finish; results below may change"))
    found = _check_manifest(proj, out)
    if found is None:
        return out
    man, root = found
    ok = man[man.status == "ok"]
    out.append(Finding("ok", f"manifest: {len(man)} files, {len(ok)} ok, {len(man) - len(ok)} skipped; library {root}"))
    out += _check_library(proj, ok, root, max_missing_listed)
    feats: dict[str, Any] = {}
    if proj.features_root.is_dir():
        for d in sorted(x for x in proj.features_root.iterdir() if x.is_dir() and not x.name.startswith(".")):
            out.append(_check_features(proj, d, feats))
    else:
        out.append(Finding("warn", "no features yet", f"run `klustr features {proj.path}`"))
    ok_ids = set(ok.id.astype(str))
    out += [_check_embedding(proj, name, ok_ids, feats) for name in proj.list_embeddings()]
    out += _check_default(proj) + _check_leftovers(proj, fix)
    return out


def _check_config(proj: Project) -> list[Finding]:
    p = proj.path
    if not proj.config_path.exists():
        return [Finding("warn", "no klustr.toml", f"any command (e.g. `klustr scan LIBRARY -o {p}`) writes one")]
    try:
        Config.load(proj.config_path)
        return [Finding("ok", "klustr.toml is readable")]
    except Exception as exc:  # noqa: BLE001 - a damaged file can fail in many ways; report, never crash
        return [Finding("error", f"klustr.toml cannot be read: {exc}",
                        "fix the file, or delete it and rerun with --preset (defaults are used)")]


def _check_manifest(proj: Project, out: list[Finding]):
    """``(manifest, library root)``, or None after a finding that says why there is none."""
    p = proj.path
    if not proj.manifest_path.exists():
        out.append(Finding("error", "no manifest.parquet", f"run `klustr scan LIBRARY -o {p}`"))
        return None
    try:
        man = proj.read_manifest()
        root = proj.library_root
        lacking = {"id", "path", "size", "mtime", "status"} - set(man.columns)
        if lacking:
            raise KlustrError(f"columns {sorted(lacking)} are missing")
    except Exception as exc:  # noqa: BLE001 - a damaged parquet file can raise many pyarrow errors
        out.append(Finding("error", f"manifest.parquet cannot be read ({type(exc).__name__}: {exc})",
                           f"rescan: `klustr scan LIBRARY -o {p}` rewrites it"))
        return None
    return man, root


def _listed(paths: list[str], n: int) -> str:
    return ", ".join(paths[:n]) + (" ..." if len(paths) > n else "")


def _check_library(proj: Project, ok, root: Path, n: int) -> list[Finding]:
    """The ok files of the manifest against the audio on disk."""
    p = proj.path
    if not root.is_dir():
        return [Finding("error", f"the library folder {root} is gone",
                        f"mount or restore it, or rescan its new location: `klustr scan NEWPATH -o {p}`")]
    missing, changed = [], []
    for rel, size, mtime, mtime_ns in zip(ok.path, ok["size"], ok.mtime, ok.mtime_ns):
        try:
            st = (root / rel).stat()
        except OSError:
            missing.append(rel)
            continue
        same_time = st.st_mtime_ns == mtime_ns if mtime_ns >= 0 else abs(st.st_mtime - mtime) <= 1e-3
        if st.st_size != size or not same_time:
            changed.append(rel)
    out = []
    if len(ok) and (ok.mtime_ns < 0).all():
        out.append(Finding("warn", "the manifest was written by an older klustr (file identities without nanoseconds)",
                           f"rescan: `klustr scan {root} -o {p}`; the next `klustr features {p}` then recomputes "
                           "each feature set once"))
    if missing:
        out.append(Finding("error", f"{_files(len(missing))} listed in the manifest {'is' if len(missing) == 1 else 'are'} "
                           f"missing: {_listed(missing, n)}",
                           f"restore them, or rescan: `klustr scan {root} -o {p}` then `klustr features {p}`"))
    if changed:
        out.append(Finding("warn", f"{_files(len(changed))} changed since the scan: {_listed(changed, n)}",
                           f"rescan and update: `klustr scan {root} -o {p}` then `klustr features {p}` "
                           "(only they are recomputed)"))
    if not missing and not changed:
        out.append(Finding("ok", "every ok file is on disk, unchanged"))
    return out


def _check_default(proj: Project) -> list[Finding]:
    default = proj.embeddings_dir / "DEFAULT"
    if default.exists():
        target = default.read_text(encoding="utf-8").strip()
        if not proj.embedding_path(target).exists():
            return [Finding("warn", f"the default embedding {target!r} does not exist",
                            f"`klustr grid {proj.path}` or `klustr embed {proj.path}` sets a new one")]
    return []


def _check_leftovers(proj: Project, fix: bool) -> list[Finding]:
    p = proj.path
    tmp = _tmp_leftovers(p)
    if not tmp:
        return []
    if not fix:
        return [Finding("warn", f"{len(tmp)} leftovers of interrupted writes (harmless temporary files)",
                        f"`klustr doctor {p} --fix` removes them")]
    try:
        with proj.lock("doctor --fix"):      # never delete the temporary file of a live run
            for t in _tmp_leftovers(p):
                t.unlink(missing_ok=True)
        return [Finding("ok", f"removed {len(tmp)} leftovers of interrupted writes")]
    except KlustrError as exc:
        return [Finding("warn", f"{len(tmp)} leftovers of interrupted writes not removed: {exc}",
                        f"rerun `klustr doctor {p} --fix` when the run has finished")]


def _check_features(proj: Project, d: Path, feats: dict[str, Any]) -> Finding:
    """One feature set folder: loadable and aligned with the manifest?"""
    from .features import load
    from .features.store import SetStore

    p = proj.path
    name, _, mode = d.name.partition("@")
    frames = mode == "frames"
    again = f"`klustr features {p} --set {name}" + (" --frames`" if frames else "`")
    try:
        store = SetStore(d, name, frames)
        if store.current() is None:
            if store.generations():
                return Finding("warn", f"features {d.name}: an interrupted run left it unfinished",
                               f"{again} resumes where it stopped")
            return Finding("warn", f"features {d.name}: empty folder", f"{again} computes it")
        t = load(proj, name, frames=frames)
    except KlustrError as exc:
        return Finding("error", f"features {d.name}: {exc}", f"{again} updates it (unchanged files are reused)")
    except Exception as exc:  # noqa: BLE001 - damaged chunks raise zarr/numcodecs/OS errors
        return Finding("error", f"features {d.name} cannot be read ({type(exc).__name__}: {exc})",
                       f"delete {d} and run {again}")
    feats[name if not frames else d.name] = t
    return Finding("ok", f"features {d.name}: {len(t)} rows x {t.X.shape[1]}, consistent with the manifest")


def _check_embedding(proj: Project, name: str, ok_ids: set[str], feats: dict[str, Any]) -> Finding:
    p = proj.path
    again = f"`klustr embed {p} --name {name}`"
    try:
        emb, meta = proj.read_embedding(name)
    except Exception as exc:  # noqa: BLE001 - damaged parquet
        return Finding("error", f"embedding {name} cannot be read ({type(exc).__name__})",
                       f"delete {proj.embedding_path(name)} and rerun {again}")
    need = {"id", "x", "y"}
    if not need <= set(emb.columns):
        return Finding("error", f"embedding {name} lacks columns {sorted(need - set(emb.columns))}", f"rerun {again}")
    if not emb[["x", "y"]].notna().all().all():
        return Finding("error", f"embedding {name} holds NaN coordinates", f"rerun {again}")
    fid = (emb["file_id"] if "file_id" in emb else emb["id"]).astype(str)
    stale = int((~fid.isin(ok_ids)).sum())
    if stale:
        return Finding("warn", f"embedding {name}: {stale} points refer to files no longer usable (removed or skipped)",
                       f"rerun {again}")
    table = feats.get(str(meta.get("features"))) if isinstance(meta, dict) else None
    if table is not None:
        missing = len(set(map(str, table.file_ids)) - set(fid))
        if missing:
            return Finding("warn", f"embedding {name} is older than its features: {missing} files are not on it",
                           f"rerun {again}")
    return Finding("ok", f"embedding {name}: {len(emb)} points")


def healthy(findings: list[Finding]) -> bool:
    return not any(f.level == "error" for f in findings)
