"""The stage functions a notebook calls, all of one shape::

    stage(project, config=None, **overrides) -> Result

``config`` is a :class:`~klustr_gpu.config.Config` (default: the project's ``klustr.toml``, or
the defaults); keyword arguments override its settings for this call (``device="cpu"`` is
``features.device``; the stage's docstring names each). A keyword a stage does not know is a
``TypeError`` (a setting it does not know, a :class:`UsageError`), both naming it. The stages
that compute stored data (``scan``, ``compute_features``, ``embed``, ``grid``) write the
effective config to ``klustr.toml`` before any work, under the project's lock; those that
only read (``score_maps``, ``render_map``, ``plot``) apply the overrides to this call only.
Every stage returns a dataclass of :mod:`klustr_gpu.results` (``to_dict()`` for JSON,
``summary()`` for the command line), except ``plot`` / ``make_app`` (something to display)
and ``serve`` (which blocks).

The names never collide with a subpackage (``compute_features``, not ``features``), so
``kg.features`` is always the subpackage and every stage stays callable, in any call order.
Heavy libraries (torch, umap-learn, datashader, HoloViews, Panel, Dask) load inside the stage
that needs them, never at ``import klustr_gpu``.
"""
from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

from .config import FEATURE_SETS, LABEL_FROM, Config
from .errors import UsageError
from .results import EmbedResult, FeaturesResult, GridResult, MapResult, RenderResult, ScanResult, ScoreResult
from .runtime import as_project, check_cluster, torch_device, using_cluster
from .store import Project

__all__ = ["scan", "compute_features", "load_features", "embed", "score_maps", "grid", "render_map", "plot",
           "make_app", "serve", "map", "demo_corpus", "project_config"]

log = logging.getLogger(__name__)


def project_config(project: str | Path | Project, *, preset: str | None = None) -> Config:
    """The config a run starts from: the ``preset`` named, else the project's ``klustr.toml``,
    else the defaults."""
    proj = as_project(project)
    if preset is not None or not proj.config_path.exists():
        return Config.preset_named(preset or "default")
    return proj.load_config()


def _config(proj: Project, config: Config | None, overrides: dict[str, Any]) -> Config:
    """``config`` (default: the project's) with ``overrides`` (``{"section.key": value}``; None
    means not given) applied and checked."""
    cfg = config if config is not None else project_config(proj)
    given = {k: v for k, v in overrides.items() if v is not None}
    return cfg.updated(given) if given else cfg


# -- scan ----------------------------------------------------------------------------------------
def scan(library: str | Path, project: str | Path | Project, config: Config | None = None, *,
         labels: str | Path | None = None, label_from: str | None = None, label_regex: bool = False,
         progress: bool = True) -> ScanResult:
    """Walk ``library`` and write ``PROJECT/manifest.parquet``: one row per audio file (id, path,
    size, mtime, rate, channels, duration, label, status and skip reason). Only headers are
    read, in worker processes (``scan.workers``); a rescan reads only the files whose size or
    modification time changed and keeps every other row.

    ``labels``: a CSV of ``path,label`` (paths relative to the library); ``label_from="parent"``:
    the folder name; ``label_regex``: the 2017 keyword rule. Broken files become rows with
    ``status="skipped"`` and a ``reason``.
    """
    from .library.scan import scan_library

    root, labeller = _library(library, labels, label_from, label_regex)
    proj = as_project(project).ensure()
    cfg = _config(proj, config, {})
    t0 = time.perf_counter()
    with proj.lock("scan"):               # refused before klustr.toml is touched when another run holds it
        proj.write_config(cfg)
        df, stats = scan_library(root.resolve(), proj, cfg, labeller, progress=progress)
    skipped = df[df.status != "ok"]
    return ScanResult(project=proj.path, manifest_path=proj.manifest_path, files=len(df), ok=len(df) - len(skipped),
                      skipped=len(skipped), labelled=int(df.label.notna().sum()),
                      skipped_by_reason={str(k): int(v) for k, v in skipped.reason.value_counts().items()},
                      headers_read=stats.headers_read, rows_kept=stats.rows_kept, workers=stats.workers,
                      unlisted_folders=stats.unlisted, seconds=round(time.perf_counter() - t0, 3), manifest=df)


def _library(library, labels, label_from, label_regex):
    """The library folder and the labeller its files are labelled by, checked."""
    from .library.labels import Labeller

    root = Path(library).expanduser()
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a folder"
        raise UsageError(f"library {root} {what}", param="library")
    if label_from not in (None, *LABEL_FROM):
        raise UsageError(f"label_from={label_from!r} is not supported; use one of: {', '.join(LABEL_FROM)}",
                         param="label_from")
    return root, Labeller(csv_path=labels, from_parent=label_from == "parent", regex=label_regex)


# -- features ------------------------------------------------------------------------------------
def compute_features(project: str | Path | Project, config: Config | None = None, *, sets=None,
                     device: str | None = None, batch_size: int | None = None, workers: int | None = None,
                     frames: bool | None = None, window: float | None = None, hop: float | None = None,
                     cluster=None, progress: bool = True) -> FeaturesResult:
    """Compute the feature sets of every ok file into ``PROJECT/features/<set>/`` (frame mode:
    ``<set>@frames/``).

    Overrides ``features.*``: ``sets`` (names or "mfcc,stft"), ``device`` (``auto``: CUDA when
    available; ``cuda`` without one is :class:`~klustr_gpu.errors.EngineUnavailable`),
    ``batch_size``, ``workers`` (decoding processes), ``frames`` / ``window`` / ``hop`` (one
    point per window of long recordings), ``cluster`` (a Dask spec, ``local:N``, ``cuda``,
    ``tcp://HOST:PORT``, or a connected ``distributed.Client``: one task per manifest shard,
    the same results). Finished shards are kept: a killed run resumes, an unchanged rerun
    computes nothing, after a rescan only new or changed files are computed. Files that fail
    to decode are marked ``skipped`` in the manifest with their reason.
    """
    proj = as_project(project).require("manifest")
    if isinstance(sets, str):
        sets = [s.strip() for s in sets.split(",") if s.strip()]
    spec = cluster if isinstance(cluster, str) else None
    cfg = _config(proj, config, {"features.sets": sets, "features.device": device, "features.batch_size": batch_size,
                                 "features.workers": workers, "features.frames": frames, "features.window": window,
                                 "features.hop": hop, "features.cluster": spec})
    if not cfg.features.sets:
        raise UsageError(f"no feature set given; choose from: {', '.join(FEATURE_SETS)}", param="sets")
    dev = torch_device(cfg.features.device)          # an impossible device fails before any work
    target = cluster if cluster is not None and spec is None else cfg.features.cluster
    check_cluster(target)
    with proj.lock("features"):
        from .features.auto import resolve

        cfg = resolve(proj, cfg)                       # the general set's profile, decided from the sounds
        proj.write_config(cfg)
        if target:
            from .features.distributed import run_on_cluster

            with using_cluster(target) as client:
                result = run_on_cluster(proj, cfg, dev, client, progress=progress)
        else:
            from .features.run import run_in_process

            result = run_in_process(proj, cfg, dev, progress=progress)
        _record_skips(proj, result.skipped)
    return result


def _record_skips(proj: Project, skipped: dict[str, str]) -> None:
    """Files found broken while decoding become ``skipped`` rows of the manifest."""
    df = proj.read_manifest() if skipped else None
    new = {} if df is None else {k: v for k, v in skipped.items() if k in set(df.loc[df["status"] == "ok", "id"])}
    if new:
        proj.mark_skipped(new)
        log.warning("features: %d files could not be decoded (see manifest reasons)", len(new))


def load_features(project: str | Path | Project, name: str | None = None, *, frames: bool | None = None):
    """The usable rows of feature set ``name`` (default ``reduce.features``): a ``FeatureTable``
    (``ids``, ``file_ids``, ``starts``, ``X [n, dim]``), ok files only, in manifest order."""
    from .features import load

    proj = as_project(project).require("manifest")
    return load(proj, name or proj.load_config().reduce.features, frames=frames)


# -- embed ---------------------------------------------------------------------------------------
def embed(project: str | Path | Project, config: Config | None = None, *, method: str | None = None,
          features: str | None = None, engine: str | None = None, name: str | None = None, cluster=None,
          progress: bool = True, **settings) -> EmbedResult:
    """Reduce a feature set to a 2-D map: ``PROJECT/embeddings/<name>.parquet`` (default name
    ``<features>-<method>``).

    Overrides ``reduce.*``: ``method`` (umap, tsne, pca), ``features`` (the set), ``engine``
    (auto, cuml, torchdr, cpu), and any other ``[reduce]`` setting as a keyword
    (``n_neighbors=30``, ``min_dist=0.0``, ``perplexity=50``, ``metric="correlation"``,
    ``pca_components=14``, ...) plus ``seed``. A setting of another method (``perplexity``
    for UMAP) is a :class:`UsageError` naming it. ``cluster``: a Dask spec or Client on which,
    above ``reduce.sample_threshold`` points, those beyond the fitted sample are placed.
    """
    from .reduce import check_method_settings, embed_project, resolve_engine

    proj = as_project(project).require("manifest")
    seed = settings.pop("seed", None)
    over = {"reduce.method": method, "reduce.features": features, "reduce.engine": engine, "seed": seed,
            **{f"reduce.{k}": v for k, v in settings.items()}}
    cfg = _config(proj, config, over)
    check_method_settings(cfg.reduce.method, settings)
    resolved = resolve_engine(cfg.reduce.engine)        # an impossible engine fails before any work
    check_cluster(cluster)
    name = name or f"{cfg.reduce.features}-{cfg.reduce.method}"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.=+-]*", name):
        raise UsageError(f"embedding name {name!r}: use letters, digits and _ . = + - only", param="name")
    with proj.lock("embed"):
        proj.write_config(cfg)
        return embed_project(proj, cfg, engine=resolved, name=name, cluster=cluster, progress=progress)


# -- scores --------------------------------------------------------------------------------------
def score_maps(project: str | Path | Project, config: Config | None = None, *, names: list[str] | None = None,
               k: int | None = None, sample: int | None = None, rank_by: str | None = None, seed: int | None = None,
               progress: bool = True) -> ScoreResult:
    """Score every map of the project (or the ``names``) and write ``PROJECT/scores.json``:
    10-NN accuracy, trustworthiness, k-NN preservation and the 2017 scores per map, feature
    space scores per set, maps ranked best first. Overrides ``score.k``, ``score.sample``,
    ``score.rank_by`` (knn_accuracy, trustworthiness, knn_preservation, final), ``seed``.
    """
    from .score import score_project

    proj = as_project(project).require("manifest")
    cfg = _config(proj, config, {"score.k": k, "score.sample": sample, "score.rank_by": rank_by, "seed": seed})
    with proj.lock("score"):
        return score_project(proj, cfg, names=names, progress=progress)


def grid(project: str | Path | Project, config: Config | None = None, *, features: list[str] | None = None,
         methods: list[str] | None = None, rank_by: str | None = None, engine: str | None = None,
         quick: bool = False, progress: bool = True) -> GridResult:
    """A population of maps (feature sets x methods x parameters), scored and ranked: one
    ``embeddings/grid-*.parquet`` per map, ``scores.json``, ``report.md``, ``grid.png``; the best
    map becomes the project's default.

    ``features``: the sets to try (default: every set computed). Overrides ``score.methods``
    (``methods``), ``score.rank_by`` (``rank_by``) and ``reduce.engine`` (``engine``); the
    parameters come from ``[score]`` (``quick=True``: a few maps, for a first look). Without
    labels the label-free trustworthiness ranks.
    """
    from .score import check_grid, run_grid

    proj = as_project(project).require("manifest")
    cfg = _config(proj, config, {"score.methods": methods, "score.rank_by": rank_by, "reduce.engine": engine})
    engine_, sets, methods_ = check_grid(proj, cfg, features)      # fails before any work
    with proj.lock("grid"):
        proj.write_config(cfg)
        return run_grid(proj, cfg, sets=sets, methods=methods_, engine=engine_, quick=quick, progress=progress)


# -- pictures ------------------------------------------------------------------------------------
def render_map(project: str | Path | Project, config: Config | None = None, *, embedding: str | None = None,
               width: int | None = None, height: int | None = None, by: str | None = None, html: bool = True,
               cluster=None, progress: bool = True) -> RenderResult:
    """Draw ``PROJECT/map.png`` and the standalone ``PROJECT/map.html`` for one embedding
    (default: the project's). Overrides ``render.width``, ``render.height`` and ``render.by``
    (``label``, ``cluster``: the embedding's k-means clusters, or ``auto``: label when the
    library has labels, else cluster). ``cluster``: a Dask spec or Client; the picture is then
    rasterised on its workers (the same picture).
    """
    from .render import render_files

    proj = as_project(project).require("manifest")      # before the lock, which would create a missing folder
    cfg = _config(proj, config, {"render.width": width, "render.height": height, "render.by": by})
    check_cluster(cluster)
    with proj.lock("render"):
        return render_files(proj, cfg, embedding=embedding, html=html, cluster=cluster, progress=progress)


def plot(project: str | Path | Project, config: Config | None = None, *, embedding: str | None = None,
         by: str | None = None, dynamic: bool = True):
    """A HoloViews object of the map, datashaded (re-rasterised on zoom when ``dynamic``), for
    a notebook. Overrides ``render.by``."""
    from .render.data import load_map
    from .render.views import map_plot

    proj = as_project(project)
    cfg = _config(proj, config, {"render.by": by})
    return map_plot(load_map(proj, embedding=embedding, by=cfg.render.by), dynamic=dynamic)


def make_app(project: str | Path | Project, config: Config | None = None, *, embedding: str | None = None,
             by: str | None = None, neighbours: int | None = None):
    """The Panel app of one project (map, hover, click-to-play, similar sounds, filters, export),
    for a notebook, coloured and listed as the ``[render]`` settings say (default: the project's
    ``klustr.toml``). Overrides ``render.by`` and ``render.neighbours`` for this app only."""
    from .render.app import MapApp

    proj = as_project(project).require("manifest")
    cfg = _config(proj, config, {"render.by": by, "render.neighbours": neighbours})
    return MapApp.from_project(proj, embedding=embedding, render=cfg.render).layout


def serve(project: str | Path | Project, config: Config | None = None, *, port: int = 5006,
          host: str = "127.0.0.1", embedding: str | None = None, by: str | None = None,
          neighbours: int | None = None, show: bool = False, allow_hosts=(), audio_key: bytes | None = None) -> None:
    """Serve the zoomable map at ``http://HOST:PORT/`` with the ``/audio/<token>`` route; blocks
    until stopped. The map is coloured and listed as the ``[render]`` settings say (default: the
    project's ``klustr.toml``; ``by`` and ``neighbours`` override ``render.by`` and
    ``render.neighbours`` for this server only). ``allow_hosts``: names (``NAME`` or
    ``NAME:PORT``) browsers may use besides the loopback ones and ``host``; ``audio_key``: the
    secret mixed into audio URLs (default: random at each start). See
    :func:`klustr_gpu.render.server.serve`."""
    from .render.server import serve as run

    if not 0 < int(port) < 65536:
        raise UsageError(f"port={port} is not a valid port (1-65535)", param="port")
    proj = as_project(project).require("manifest")
    cfg = _config(proj, config, {"render.by": by, "render.neighbours": neighbours})
    run(proj, port=port, host=host, embedding=embedding, render=cfg.render, show=show,
        allow_hosts=allow_hosts, audio_key=audio_key)


# -- everything ----------------------------------------------------------------------------------
def map(library: str | Path, project: str | Path | Project, config: Config | None = None, *,  # noqa: A001
        labels: str | Path | None = None, label_from: str | None = None, label_regex: bool = False,
        preset: str | None = None, device: str | None = None, engine: str | None = None, method: str | None = None,
        features: str | None = None, frames: bool | None = None, window: float | None = None,
        hop: float | None = None, cluster: str | None = None, progress: bool = True) -> MapResult:
    """Every stage with good defaults: scan ``library``, compute features, embed, render
    ``PROJECT/map.png``; returns what each did and where the map is.

    ``config`` (or the ``preset`` named, else the project's, else the defaults) with the
    overrides ``device`` (``features.device``), ``engine`` / ``method`` / ``features``
    (``reduce.*``; the set is also computed), ``frames`` / ``window`` / ``hop`` and ``cluster``
    (``features.*``; the cluster also places points and renders). An impossible device or
    engine fails before anything is written.
    """
    from .reduce import resolve_engine

    _library(library, labels, label_from, label_regex)             # a bad library or labels file: before any work
    proj = as_project(project).ensure()
    base = config if config is not None else project_config(proj, preset=preset)
    sets = list(dict.fromkeys([*base.features.sets, features])) if features else None
    cfg = _config(proj, base, {"features.device": device, "reduce.engine": engine, "reduce.method": method,
                               "reduce.features": features, "features.sets": sets, "features.frames": frames,
                               "features.window": window, "features.hop": hop, "features.cluster": cluster})
    torch_device(cfg.features.device)
    resolve_engine(cfg.reduce.engine)
    check_cluster(cfg.features.cluster)
    times: dict[str, float] = {}
    t_start = time.perf_counter()
    with proj.lock("map"):                   # one lock over every stage (re-entrant in this thread)
        t = time.perf_counter()
        sc = scan(library, proj, cfg, labels=labels, label_from=label_from, label_regex=label_regex, progress=progress)
        times["scan"] = time.perf_counter() - t
        t = time.perf_counter()
        fe = compute_features(proj, cfg, progress=progress)
        times["features"] = time.perf_counter() - t
        cfg = proj.load_config()             # with what the features stage decided (features.auto)
        t = time.perf_counter()
        emb = embed(proj, cfg, cluster=cfg.features.cluster or None, progress=progress)
        times["embed"] = time.perf_counter() - t
        proj.set_default_embedding(emb.name)
        t = time.perf_counter()
        out = render_map(proj, cfg, embedding=emb.name, cluster=cfg.features.cluster or None, progress=progress)
        times["render"] = time.perf_counter() - t
    man = proj.read_manifest()
    skipped = man[man.status != "ok"]
    times["other"] = max(0.0, time.perf_counter() - t_start - sum(times.values()))
    return MapResult(project=proj.path, files=len(man), ok=len(man) - len(skipped), skipped=len(skipped),
                     skipped_by_reason=_by_kind(skipped.reason),
                     labelled=int(man.label.notna().sum()), points=emb.n_points,
                     seconds={k: round(v, 2) for k, v in times.items()}, map_png=out.png, map_html=out.html,
                     stages=_stage_lines(sc, fe, emb, out, times), decisions=dict(cfg.decisions))


def _by_kind(reasons) -> dict[str, int]:
    """Skip reasons counted by kind (``library.decode.reason_kind``: "truncated: header declares
    N bytes ..." once, not once per N), most frequent first."""
    from collections import Counter

    from .library.decode import reason_kind

    return dict(Counter(reason_kind(r) for r in reasons).most_common())


def _stage_lines(sc: ScanResult, fe: FeaturesResult, emb: EmbedResult, out: RenderResult,
                 times: dict[str, float]) -> dict[str, str]:
    """One line per stage of ``map``: what it did, how, how fast."""
    from .results import rate

    how = f"{sc.workers} processes" if sc.workers else "this process"
    computed = max((s.computed for s in fe.sets.values()), default=0)
    reused = max((s.reused for s in fe.sets.values()), default=0)
    unit = "windows" if fe.frames else "clips"
    return {
        "scan": f"{sc.files:,} files: {sc.headers_read:,} headers read ({how}), {sc.rows_kept:,} unchanged "
                f"({rate(sc.files, times['scan'], 'files')})",
        "features": f"{computed:,} {unit} computed, {reused:,} reused, on {fe.device}, decoded in {fe.where()} "
                    f"({rate(fe.decoded, times['features'], unit if fe.frames else 'files')})",
        "embed": f"{emb.method} of {emb.n_points:,} points on {emb.engine}",
        "render": f"map.png{' + map.html' if out.html else ''}, {out.n_points:,} points",
        "other": "loading libraries, checks, reading the manifest back",
    }


def demo_corpus(directory: str | Path, *, n: int = 2000, seed: int = 0, workers: int | None = None,
                progress: bool = True) -> Path:
    """Synthesise ``n`` labelled drum one-shots (kick, snare, clap, hihat, tom, ride, crash) in
    mixed formats, rates and channel counts under ``directory`` (``workers`` processes, default
    up to 4); returns its ``labels.csv``."""
    from .library.democorpus import demo_corpus as run

    return run(directory, n=n, seed=seed, workers=workers, progress=progress)
