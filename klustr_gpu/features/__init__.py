"""Features: batched torch features of every ok file -> ``PROJECT/features/<set>/``.

Feature sets (see :mod:`klustr_gpu.features.transforms` for exact definitions):
``stft`` (the 2017 32x32 STFT fingerprint), ``mfcc`` (stats or grid, optional deltas),
``mir`` (8 per-frame descriptors, stats or z-scored grid), ``mel`` (log-mel grid),
``timbre`` (onset-segment MFCCs + decay times), ``descriptors``, ``pitchfree``, ``envelope``
and ``general`` (the default: blocks of those chosen by a label-free rule, see
:mod:`klustr_gpu.features.auto`).

The stage is :func:`klustr_gpu.compute_features`; ``load(project, "mfcc")`` reads a set back
(a :class:`FeatureTable`). Modules, one job each: ``functional`` (pure batched maths),
``transforms`` (the sets as ``nn.Module``\ s), ``plan`` (units, shards, what each set needs),
``decode`` (work items -> windows, the worker pool, timeouts), ``compute`` (windows -> rows,
in batches), ``write`` (one shard writer), ``store`` (the zarr store and its ledger), ``run``
(the in-process run), ``distributed`` (the Dask run).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..errors import StoreError, UsageError

__all__ = ["load", "FeatureTable"]

log = logging.getLogger(__name__)


@dataclass
class FeatureTable:
    """Usable feature rows of one set, in manifest order.

    ``ids``: point ids (the manifest id for clips; ``"<file id>:<frame index>"`` for frames);
    ``file_ids``: manifest id of each row's file; ``starts``: start time (s) of each row (0.0 for
    clips); ``X``: float32 ``[shape=(n_points, dim)]``; ``name``: the feature set.
    """

    ids: np.ndarray
    file_ids: np.ndarray
    starts: np.ndarray
    X: np.ndarray
    name: str

    def __len__(self) -> int:
        return len(self.ids)


def _aligned(files, df) -> bool:
    """Whether a generation's files table describes the manifest ``df``: the same ids, each with
    the same identity (size, mtime in ns), or, for a store and a manifest both written before
    identities, the same content hash."""
    if len(files) != len(df) or not (files["id"].to_numpy() == df["id"].astype(str).to_numpy()).all():
        return False
    if "size" in files.columns:
        return bool((files["size"].to_numpy() == df["size"].to_numpy()).all()
                    and (files["mtime_ns"].to_numpy() == df["mtime_ns"].to_numpy()).all())
    return "hash" in df.columns and bool((files["hash"].to_numpy() == df["hash"].fillna("").astype(str).to_numpy()).all())


def load(project, name: str = "mfcc", *, frames: bool | None = None) -> FeatureTable:
    """The usable rows of feature set ``name`` (ok files only, manifest order).

    ``frames=None``: frame mode if the project's config says so. Raises UsageError when the set
    was never computed and StoreError when it is out of date with the manifest (rescanned).
    """
    from ..runtime import as_project
    from .store import SetStore, store_dir

    proj = as_project(project).require("manifest")
    cfg = proj.load_config()
    frames = bool(cfg.features.frames) if frames is None else bool(frames)
    store = SetStore(store_dir(proj.features_root, name, frames), name, frames)
    gen = store.current()
    mode = "frame mode " if frames else ""
    if gen is None:
        flag = ", frames=True" if frames else ""
        raise UsageError(f"{proj.path} has no {mode}features {name!r}; "
                         f"run compute_features({str(proj.path)!r}, sets=[{name!r}]{flag})")
    df = proj.read_manifest()
    if not _aligned(store.files(gen.name), df):
        raise StoreError(f"features {name!r} in {proj.path} are out of date with the manifest; "
                         f"run compute_features({str(proj.path)!r}) to update them")
    X = np.asarray(store.array(gen.name)[:], dtype=np.float32)
    ok_ids = set(df.loc[df["status"] == "ok", "id"].astype(str)) - set(gen.skipped)
    if frames:
        idx = store.index(gen)
        fids = idx["file_id"].astype(str).to_numpy()
        starts = idx["start"].to_numpy(dtype=np.float64)
        frame_no = idx.groupby("file_id", sort=False).cumcount().to_numpy()
        ids = np.array([f"{f}:{i}" for f, i in zip(fids, frame_no)], dtype=object)
    else:
        fids = df["id"].astype(str).to_numpy()
        starts = np.zeros(len(fids))
        ids = fids
    keep = np.fromiter((f in ok_ids for f in fids), bool, len(fids)) & np.isfinite(X).all(axis=1)
    return FeatureTable(ids=ids[keep].astype(str), file_ids=fids[keep].astype(str), starts=starts[keep],
                        X=np.ascontiguousarray(X[keep]), name=name)
