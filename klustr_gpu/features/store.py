"""The feature store: one folder per feature set, written shard by shard, resumable.

::

    PROJECT/features/<set>/            clips (rows aligned with manifest.parquet)
    PROJECT/features/<set>@frames/     frame mode (one row per window; index per shard)
        ledger.json                    the only source of truth; atomically replaced
        .zgroup                        (the folder is a zarr group)
        g000003/                       a generation: zarr v2 array (rows, dim) float32
        g000003.files.parquet          the generation's layout: id, size, mtime_ns, ok of every manifest row
        g000003.index/000000.parquet   frame mode: file_id, start (s) of each row of shard 0
        g000003.hashes/000000.parquet  clip mode: id, hash of the clip each row of shard 0 was computed from

A *generation* is one complete pass over one manifest layout (the list of (id, size, mtime
in ns): each file's identity at the scan) under one config hash. Its rows are appended shard by shard in manifest order: the rows go to
the zarr array (each chunk file is itself written to a temporary name and renamed), then the
ledger is replaced with ``shards_done``/``rows_done`` advanced. Rows past ``rows_done`` are
uncommitted and are overwritten on resume, so a process killed at any moment resumes at its
last committed shard and ends with the same arrays as an uninterrupted run.

When the manifest changes (files added or edited, then rescanned) or the config changes, a new
generation is started; rows of files whose (id, size, mtime) are unchanged are copied from the
newest complete generation with the same config hash, so only new or changed files are decoded.
A changed file whose decoded clip hashes as before (touched, or copied without its times) has
its rows copied too, not computed. When the new generation completes it becomes ``current``
and older generations are deleted. A generation written before identities were (size, mtime)
(its files table has a content ``hash`` column instead) gives no rows to copy: the first run
after upgrading recomputes it once.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import StoreError
from ..store import atomic_write_text, write_parquet

log = logging.getLogger(__name__)

FORMAT = 1


def store_dir(features_root: Path, name: str, frames: bool) -> Path:
    return Path(features_root) / (f"{name}@frames" if frames else name)


def layout_hash(ids: np.ndarray, sizes: np.ndarray, mtimes: np.ndarray, extra: str) -> str:
    """A hash of a manifest layout: each file's id and identity (size, mtime in ns), in order."""
    h = hashlib.blake2b(digest_size=12)
    h.update(f"identity-v2|{extra}".encode())
    h.update("\n".join(map(str, ids)).encode())
    h.update(np.ascontiguousarray(sizes, dtype="<i8").tobytes())
    h.update(np.ascontiguousarray(mtimes, dtype="<i8").tobytes())
    return h.hexdigest()


@dataclass
class Generation:
    """Bookkeeping of one generation, as stored in the ledger."""

    name: str
    config_hash: str
    dim: int
    layout: str
    shards_total: int
    chunk_rows: int
    shards_done: int = 0
    rows_done: int = 0
    complete: bool = False
    skipped: dict[str, str] = field(default_factory=dict)
    created: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class SetStore:
    """The store of one feature set in one mode (clips or frames)."""

    def __init__(self, path: Path, name: str, frames: bool):
        self.path = Path(path)
        self.name, self.frames = name, frames
        self._arrays: dict[str, Any] = {}

    # -- ledger ----------------------------------------------------------------------------
    @property
    def ledger_path(self) -> Path:
        return self.path / "ledger.json"

    def ledger(self) -> dict[str, Any]:
        if not self.ledger_path.exists():
            return {"format": FORMAT, "name": self.name, "mode": "frames" if self.frames else "clips",
                    "current": None, "gens": {}}
        try:
            data = json.loads(self.ledger_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise StoreError(f"cannot read {self.ledger_path}: {exc}; delete {self.path} to recompute") from None
        if data.get("format") != FORMAT:
            raise StoreError(f"{self.ledger_path} has an unknown format; delete {self.path} to recompute")
        return data

    def _write_ledger(self, data: dict[str, Any]) -> None:
        atomic_write_text(self.ledger_path, json.dumps(data, indent=1, sort_keys=True))

    def generations(self) -> dict[str, Generation]:
        return {k: Generation(**v) for k, v in self.ledger()["gens"].items()}

    def current(self) -> Generation | None:
        led = self.ledger()
        cur = led.get("current")
        return Generation(**led["gens"][cur]) if cur else None

    def save(self, gen: Generation, *, make_current: bool = False) -> None:
        led = self.ledger()
        led["gens"][gen.name] = gen.to_dict()
        if make_current:
            led["current"] = gen.name
        self._write_ledger(led)

    # -- generations -----------------------------------------------------------------------
    def array_path(self, gen: str) -> Path:
        return self.path / gen

    def files_path(self, gen: str) -> Path:
        return self.path / f"{gen}.files.parquet"

    def index_dir(self, gen: str) -> Path:
        return self.path / f"{gen}.index"

    def hashes_dir(self, gen: str) -> Path:
        return self.path / f"{gen}.hashes"

    def array(self, gen: str):
        import zarr

        if gen not in self._arrays:
            self._arrays[gen] = zarr.open_array(zarr.storage.DirectoryStore(str(self.array_path(gen))), mode="r+")
        return self._arrays[gen]

    def begin(self, *, config_hash: str, dim: int, layout: str, shards_total: int, chunk_rows: int,
              files: pd.DataFrame) -> tuple[Generation, bool]:
        """The generation to write for this layout/config: the unfinished one when it matches
        (resume), else a new one. Returns (generation, resumed)."""
        import zarr

        self.path.mkdir(parents=True, exist_ok=True)
        if not (self.path / ".zgroup").exists():
            atomic_write_text(self.path / ".zgroup", json.dumps({"zarr_format": 2}))
        gens = self.generations()
        for g in gens.values():
            if (not g.complete and g.layout == layout and g.config_hash == config_hash and g.dim == dim
                    and g.chunk_rows == chunk_rows and self.array_path(g.name).is_dir()):
                arr = self.array(g.name)
                if arr.shape[0] != g.rows_done:          # drop uncommitted rows
                    arr.resize(g.rows_done, dim)
                return g, True
        self._drop_orphans(gens)
        n = 1 + max([int(k[1:]) for k in gens] + [0])
        gen = Generation(name=f"g{n:06d}", config_hash=config_hash, dim=dim, layout=layout,
                         shards_total=shards_total, chunk_rows=chunk_rows)
        write_parquet(files, self.files_path(gen.name))
        zarr.open_array(zarr.storage.DirectoryStore(str(self.array_path(gen.name))), mode="w",
                        shape=(0, dim), chunks=(chunk_rows, dim), dtype="f4", fill_value=np.nan)
        self.save(gen)
        return gen, False

    def cleanup(self) -> None:
        """Drop leftovers of an interrupted :meth:`finish` or of abandoned generations."""
        gens = self.generations()
        if len(gens) > 1 or any(p.name.startswith("g") and p.name.split(".")[0] not in gens
                                for p in self.path.iterdir()):
            self._drop_orphans(gens)

    def _drop_orphans(self, gens: dict[str, Generation]) -> None:
        """Remove folders of generations the ledger does not know, and unfinished ones that
        can no longer resume (another layout/config)."""
        led = self.ledger()
        stale = [k for k, g in gens.items() if not g.complete and k != led.get("current")]
        if stale:
            for k in stale:
                led["gens"].pop(k)
            self._write_ledger(led)
        keep = set(led["gens"])
        for p in self.path.iterdir():
            base = p.name.split(".")[0]
            if p.name.startswith("g") and base not in keep:
                _remove(p)

    def write_rows(self, gen: Generation, offset: int, rows: np.ndarray) -> None:
        """Write rows at ``offset`` (uncommitted until :meth:`commit`)."""
        if not len(rows):
            return
        arr = self.array(gen.name)
        end = offset + len(rows)
        try:
            if arr.shape[0] < end:
                arr.resize(end, gen.dim)
            arr[offset:end] = rows
        except OSError as exc:
            raise StoreError(f"could not write {self.path.name} rows {offset}-{end} to {self.path}: "
                             f"{exc.strerror or exc}; committed shards are intact, rerun to resume") from exc

    def commit(self, gen: Generation, *, rows_done: int, skipped: dict[str, str],
               index: pd.DataFrame | None = None, hashes: dict[str, str] | None = None) -> None:
        """Record one more finished shard (after its rows are written); ``hashes``: file id ->
        hash of the clip its rows come from (clip mode)."""
        if index is not None:
            write_parquet(index, self.index_dir(gen.name) / f"{gen.shards_done:06d}.parquet")
        if hashes:
            write_parquet(pd.DataFrame({"id": list(hashes), "hash": list(hashes.values())}),
                          self.hashes_dir(gen.name) / f"{gen.shards_done:06d}.parquet")
        gen.shards_done += 1
        gen.rows_done = rows_done
        gen.skipped.update(skipped)
        self.save(gen)

    def finish(self, gen: Generation) -> None:
        """Make ``gen`` current; delete every other generation."""
        arr = self.array(gen.name)
        if arr.shape[0] != gen.rows_done:
            arr.resize(gen.rows_done, gen.dim)
        gen.complete = True
        self.save(gen, make_current=True)
        led = self.ledger()
        for k in [k for k in led["gens"] if k != gen.name]:
            led["gens"].pop(k)
        self._write_ledger(led)
        self._drop_orphans(self.generations())

    # -- reading ---------------------------------------------------------------------------
    def files(self, gen: str) -> pd.DataFrame:
        return pd.read_parquet(self.files_path(gen))

    def hashes(self, gen: Generation) -> dict[str, str]:
        """File id -> clip hash, over the generation's committed shards (clip mode)."""
        d = self.hashes_dir(gen.name)
        parts = []
        for k in range(gen.shards_done):
            try:
                parts.append(pd.read_parquet(d / f"{k:06d}.parquet", columns=["id", "hash"]))
            except FileNotFoundError:
                continue                      # a shard of skipped files only, or before hashes were kept
            except Exception as exc:  # noqa: BLE001 - a damaged file: its files are simply decoded again
                log.warning("features %s: %s/%06d.parquet cannot be read (%s); those files' clips are hashed again",
                            self.name, d, k, exc)
        if not parts:
            return {}
        df = pd.concat(parts, ignore_index=True)
        return dict(zip(df["id"].astype(str), df["hash"].astype(str)))

    def index(self, gen: Generation) -> pd.DataFrame:
        parts = [pd.read_parquet(self.index_dir(gen.name) / f"{k:06d}.parquet") for k in range(gen.shards_done)]
        if not parts:
            return pd.DataFrame({"file_id": pd.Series([], dtype=str), "start": pd.Series([], dtype="f8")})
        return pd.concat(parts, ignore_index=True)


class RowSource:
    """Rows of a complete older generation, found by file id and identity (size, mtime in ns)."""

    def __init__(self, store: SetStore, gen: Generation):
        self.store, self.gen = store, gen
        files = store.files(gen.name)
        if store.frames:
            idx = store.index(gen)
            counts = idx.groupby("file_id", sort=False).size()
            starts = np.concatenate([[0], np.cumsum(counts.to_numpy())[:-1]]) if len(counts) else np.array([], int)
            span = dict(zip(counts.index, zip(starts.tolist(), counts.to_numpy().tolist())))
            self._starts = idx["start"].to_numpy()
        else:
            span = {fid: (i, 1) for i, fid in enumerate(files["id"])}
        self._where: dict[str, tuple[tuple[int, int], int, int]] = {}   # id -> (identity, start, count)
        if "size" in files.columns:              # older generations (a content hash) give nothing to copy
            for fid, size, mtime, ok in zip(files["id"], files["size"], files["mtime_ns"], files["ok"]):
                if ok or fid in gen.skipped:
                    start, count = span.get(fid, (0, 0)) if fid not in gen.skipped else (0, 0)
                    self._where[fid] = ((int(size), int(mtime)), start, count)
        self._hashes = store.hashes(gen) if not store.frames else {}
        self._cache: dict[int, np.ndarray] = {}

    def has(self, fid: str, identity: tuple[int, int]) -> bool:
        """Whether the rows of ``fid`` are here for a file of this identity (size, mtime in ns).
        An unknown mtime (-1: a manifest of an older klustr) never matches."""
        w = self._where.get(fid)
        return w is not None and w[0] == identity and identity[1] >= 0

    def hash_of(self, fid: str) -> str:
        """The hash of the clip ``fid``'s rows were computed from ("" when unknown or when the
        rows are not here)."""
        return self._hashes.get(fid, "") if fid in self._where else ""

    def reason(self, fid: str) -> str | None:
        return self.gen.skipped.get(fid)

    def rows(self, fid: str, first: int = 0, n: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """(rows, frame starts or None) of a known file: its rows ``first:first + n``."""
        _, start, count = self._where[fid]
        n = count - first if n is None else min(n, count - first)
        start += first
        out = np.empty((n, self.gen.dim), np.float32)
        c = self.gen.chunk_rows
        i = start
        while i < start + n:
            k = i // c
            if k not in self._cache:
                if len(self._cache) > 4:
                    self._cache.pop(next(iter(self._cache)))
                self._cache[k] = self.store.array(self.gen.name)[k * c:(k + 1) * c]
            j = min(start + n, (k + 1) * c)
            out[i - start:j - start] = self._cache[k][i - k * c:j - k * c]
            i = j
        starts = self._starts[start:start + n] if self.store.frames else None
        return out, starts


def _remove(p: Path) -> None:
    try:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    except OSError as exc:  # pragma: no cover - best effort cleanup
        log.warning("could not remove %s: %s", p, exc)

