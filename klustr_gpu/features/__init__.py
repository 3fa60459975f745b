"""The features stage: batched torch features of every ok file -> ``PROJECT/features/<set>/``.

Feature sets (see :mod:`klustr_gpu.features.transforms` for exact definitions):
``stft`` (the 2017 32x32 STFT fingerprint), ``mfcc`` (stats or grid, optional deltas),
``mir`` (8 per-frame descriptors, stats or z-scored grid), ``mel`` (log-mel grid),
``timbre`` (onset-segment MFCCs + decay times; the default set).

Public API::

    summary = extract(project, sets=["mfcc"], device="auto")   # compute / resume / update
    table = load(project, "mfcc")                              # FeatureTable(ids, file_ids, starts, X, name)
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Config
from ..errors import StoreError, UsageError
from ..store import Project

__all__ = ["extract", "load", "FeatureTable"]

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


def _project(project: str | Path | Project) -> Project:
    return project if isinstance(project, Project) else Project(project)


def extract(project, config: Config | None = None, *, sets=None, device=None, batch_size=None, workers=None,
            frames=None, window=None, hop=None, cluster=None, progress=True) -> dict[str, Any]:
    """Compute feature sets for every ok file of ``project``'s manifest.

    Writes ``PROJECT/features/<set>/`` (frame mode: ``PROJECT/features/<set>@frames/``).
    ``config`` defaults to the project's ``klustr.toml``; keyword arguments override it, and the
    effective config is written back before any work. ``device``: ``auto`` (cuda when
    available), ``cpu`` or ``cuda`` (:class:`~klustr_gpu.errors.EngineUnavailable` without CUDA).
    Finished shards are kept: a killed run resumes, an unchanged rerun computes nothing, and
    after a rescan only new or changed files are computed. Files that fail to decode are marked
    ``skipped`` in the manifest with their reason.

    ``cluster``: a Dask cluster spec (``local:N``, ``cuda``, ``tcp://HOST:PORT``; see
    :mod:`klustr_gpu.cluster`) or a ``distributed.Client`` already connected: every manifest
    shard is computed as one task on the workers (clip and frame mode), with the same results as
    the in-process run. Default: the config's ``features.cluster`` ("" = in-process).

    Returns ``{set: {n_rows, dim, computed, reused, seconds}, "skipped": {id: reason},
    "device": str, "frames": bool, "seconds": float}``.
    """
    from ..runtime import check_cluster, torch_device, using_cluster

    proj = _project(project).require("manifest")
    cfg = config if config is not None else proj.load_config()
    overrides: dict[str, Any] = {}
    for key, value in (("sets", sets), ("device", device), ("batch_size", batch_size), ("workers", workers),
                       ("frames", frames), ("window", window), ("hop", hop)):
        if value is not None:
            if key == "sets":
                value = [v.strip() for item in ([value] if isinstance(value, str) else value)
                         for v in str(item).split(",") if v.strip()]
            overrides[f"features.{key}"] = value
    if isinstance(cluster, str):
        overrides["features.cluster"] = cluster
    cfg = cfg.updated(overrides) if overrides else cfg
    cfg.validate()
    if not cfg.features.sets:
        raise UsageError("no feature set given; choose from: stft, mfcc, mir, mel, timbre")
    dev = torch_device(cfg.features.device)
    target = cluster if cluster is not None and not isinstance(cluster, str) else cfg.features.cluster
    check_cluster(target)
    with proj.lock("features"):
        proj.write_config(cfg)
        if target:
            from .distributed import run_on_cluster

            with using_cluster(target) as client:
                summary = run_on_cluster(proj, cfg, dev, client, progress=progress)
        else:
            from .run import run_in_process

            summary = run_in_process(proj, cfg, dev, progress=progress)
        new = _new_skips(proj, summary.skipped)
        if new:
            proj.mark_skipped(new)
            log.warning("features: %d files could not be decoded (see manifest reasons)", len(new))
    return summary


def _new_skips(proj: Project, skipped: dict[str, str]) -> dict[str, str]:
    if not skipped:
        return {}
    df = proj.read_manifest()
    ok = set(df.loc[df["status"] == "ok", "id"])
    return {k: v for k, v in skipped.items() if k in ok}


def load(project, name: str = "mfcc", *, frames: bool | None = None) -> FeatureTable:
    """The usable rows of feature set ``name`` (ok files only, manifest order).

    ``frames=None``: frame mode if the project's config says so. Raises UsageError when the set
    was never computed and StoreError when it is out of date with the manifest (rescanned).
    """
    from .store import SetStore, store_dir

    proj = _project(project).require("manifest")
    cfg = proj.load_config()
    frames = bool(cfg.features.frames) if frames is None else bool(frames)
    store = SetStore(store_dir(proj.features_root, name, frames), name, frames)
    gen = store.current()
    mode = "frame mode " if frames else ""
    if gen is None:
        flag = " --frames" if frames else ""
        raise UsageError(f"{proj.path} has no {mode}features {name!r}; run `klustr features {proj.path} --set {name}{flag}`")
    df = proj.read_manifest()
    files = store.files(gen.name)
    if len(files) != len(df) or not (files["id"].to_numpy() == df["id"].astype(str).to_numpy()).all() \
            or not (files["hash"].to_numpy() == df["hash"].fillna("").astype(str).to_numpy()).all():
        raise StoreError(f"features {name!r} in {proj.path} are out of date with the manifest; "
                         f"run `klustr features {proj.path}` to update them")
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
