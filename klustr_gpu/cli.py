"""The ``klustr`` command: a thin layer over the Python API (``klustr_gpu.*``).

Exit codes: 0 done; 1 a run failed (store, engine, unexpected error); 2 wrong usage (unknown
option value, missing folder, output inside a file), reported in one line before any work.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from .config import DEVICES, ENGINES, FEATURE_SETS, METHODS, PRESETS
from .errors import KlustrError, UsageError

log = logging.getLogger("klustr_gpu")

EPILOG = """\
examples:
  klustr demo-corpus demo/library --n 3000
  klustr map demo/library -o demo/project --labels demo/library/labels.csv
  klustr scan ~/Samples -o proj --label-regex
  klustr features proj --set mfcc,stft --device auto
  klustr embed proj --method tsne --perplexity 50
  klustr grid proj && klustr render proj && klustr serve proj

Every command reads and writes the project folder (see docs/project-folder.md)."""


def _csv_list(choices: Sequence[str]):
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"unknown value(s) {', '.join(bad) or repr(text)}; choose from {', '.join(choices)}")
        return items
    return parse


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
    return v


def _setting(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or "." not in key:
        raise argparse.ArgumentTypeError(f"{text!r}: expected SECTION.KEY=VALUE, e.g. audio.sample_rate=44100")
    return key.strip(), value.strip()


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", dest="settings", action="append", type=_setting, default=[], metavar="SECTION.KEY=VALUE",
                   help="override one setting of klustr.toml (repeatable), e.g. -c audio.clip_seconds=0.5")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _add_cluster(p: argparse.ArgumentParser, what: str = "extract features on a Dask cluster") -> None:
    p.add_argument("--cluster", metavar="SPEC",
                   help=f"{what}: local:N (N worker processes here), cuda (one worker per GPU) or "
                        "tcp://HOST:PORT (a running scheduler)")


def _check_cluster(args: argparse.Namespace) -> None:
    """A bad --cluster fails before any work."""
    if getattr(args, "cluster", None):
        from .cluster import parse

        parse(args.cluster)


def _add_labels(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--labels", metavar="CSV", help="CSV of path,label (paths relative to LIBRARY)")
    g.add_argument("--label-from", choices=["parent"], help="label each file by its folder name")
    g.add_argument("--label-regex", action="store_true",
                   help="the 2017 rule: keywords kick, tom, snare, clap, hi.hat, ride, crash in the path (two matches: unlabelled)")


def _add_output(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", required=True, metavar="PROJECT", help="project folder (created if missing)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="start from a preset: 'default' or 'klustr' (the 2017 settings)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="klustr", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Turn an audio library into a zoomable 2-D map of its sounds: similar sounds land together.")
    parser.add_argument("--version", action="version", version=f"klustr_gpu {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("map", help="everything: scan, features, embed, render map.png", description=run_map.__doc__)
    p.add_argument("library", metavar="LIBRARY", help="folder of audio files (searched recursively)")
    _add_output(p)
    _add_labels(p)
    p.add_argument("--device", choices=DEVICES, help="where features are computed (default auto)")
    p.add_argument("--engine", choices=ENGINES, help="reduction engine (default auto: cuml, torchdr on GPU, else cpu)")
    p.add_argument("--method", choices=METHODS, help="reduction method (default umap)")
    p.add_argument("--features", choices=FEATURE_SETS, help="feature set the map is made from (default timbre)")
    p.add_argument("--frames", action="store_true",
                   help="frame mode: one point per window of long recordings (see features --frames)")
    p.add_argument("--window", type=_positive_float, metavar="SECONDS", help="frame mode window (default 0.5)")
    p.add_argument("--hop", type=_positive_float, metavar="SECONDS", help="frame mode hop (default 0.25)")
    _add_cluster(p, "run features, the placing of points beyond the fitted sample, and the rendering on a Dask cluster")
    _add_common(p)
    p.set_defaults(func=run_map)

    p = sub.add_parser("scan", help="walk a library, read headers and labels -> manifest.parquet", description=run_scan.__doc__)
    p.add_argument("library", metavar="LIBRARY")
    _add_output(p)
    _add_labels(p)
    _add_common(p)
    p.set_defaults(func=run_scan)

    p = sub.add_parser("features", help="batched features -> features/<set>/", description=run_features.__doc__)
    p.add_argument("project", metavar="PROJECT")
    p.add_argument("--set", dest="sets", type=_csv_list(FEATURE_SETS), help=f"comma-separated feature sets ({','.join(FEATURE_SETS)})")
    p.add_argument("--device", choices=DEVICES)
    p.add_argument("--batch-size", type=_positive_int, metavar="N")
    p.add_argument("--workers", type=_positive_int, metavar="N", help="decoding processes (default: from the CPU count)")
    p.add_argument("--frames", action="store_true", help="frame mode: one point per window of long recordings")
    p.add_argument("--window", type=_positive_float, metavar="SECONDS", help="frame mode window (default 0.5)")
    p.add_argument("--hop", type=_positive_float, metavar="SECONDS", help="frame mode hop (default 0.25)")
    _add_cluster(p)
    _add_common(p)
    p.set_defaults(func=run_features)

    p = sub.add_parser("embed", help="PCA / t-SNE / UMAP -> embeddings/<name>.parquet", description=run_embed.__doc__)
    p.add_argument("project", metavar="PROJECT")
    p.add_argument("--method", choices=METHODS)
    p.add_argument("--features", choices=FEATURE_SETS)
    p.add_argument("--engine", choices=ENGINES)
    p.add_argument("--name", help="embedding name (default FEATURES-METHOD)")
    p.add_argument("--n-neighbors", type=_positive_int, metavar="K")
    p.add_argument("--min-dist", type=float, metavar="D")
    p.add_argument("--metric", help="UMAP/k-NN metric, e.g. euclidean, cosine, correlation")
    p.add_argument("--perplexity", type=_positive_float)
    p.add_argument("--pca-components", type=int, metavar="K", help="PCA before t-SNE/UMAP (0: none)")
    p.add_argument("--seed", type=int)
    _add_cluster(p, "place the points beyond the fitted sample (above reduce.sample_threshold) on a Dask cluster")
    _add_common(p)
    p.set_defaults(func=run_embed)

    p = sub.add_parser("score", help="map-quality scores of every embedding -> scores.json", description=run_score.__doc__)
    p.add_argument("project", metavar="PROJECT")
    _add_common(p)
    p.set_defaults(func=run_score)

    p = sub.add_parser("grid", help="a population of maps, scored and ranked -> report.md, grid.png", description=run_grid.__doc__)
    p.add_argument("project", metavar="PROJECT")
    p.add_argument("--features", type=_csv_list(FEATURE_SETS), help="feature sets to try (default: those computed)")
    p.add_argument("--methods", type=_csv_list(METHODS), help="methods to try (default umap,tsne,pca)")
    p.add_argument("--rank-by", choices=["knn_accuracy", "trustworthiness", "final"], default="knn_accuracy")
    p.add_argument("--engine", choices=ENGINES, default="auto")
    p.add_argument("--quick", action="store_true", help="a small grid (a few maps), for a first look")
    _add_common(p)
    p.set_defaults(func=run_grid)

    p = sub.add_parser("render", help="static map.png and a standalone map.html", description=run_render.__doc__)
    p.add_argument("project", metavar="PROJECT")
    p.add_argument("--embedding", metavar="NAME", help="which embedding (default: the project's default)")
    p.add_argument("--width", type=_positive_int)
    p.add_argument("--height", type=_positive_int)
    p.add_argument("--by", choices=["auto", "label", "cluster"],
                   help="colour by label, by the embedding's k-means cluster, or auto (default: label "
                        "when the library has labels, else cluster)")
    _add_cluster(p, "read the embedding and rasterise map.png on a Dask cluster (map.html is built here)")
    _add_common(p)
    p.set_defaults(func=run_render)

    p = sub.add_parser("serve", help="the zoomable map in a browser, with playback", description=run_serve.__doc__)
    p.add_argument("project", metavar="PROJECT")
    p.add_argument("--port", type=int, default=5006)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--allow-host", metavar="NAME", action="append", default=[], dest="allow_hosts",
                   help="a name (NAME or NAME:PORT) browsers may use to reach the server, besides localhost, "
                        "127.0.0.1 and ::1 and the --host address; repeatable (e.g. the machine's name with "
                        "--host 0.0.0.0). Requests with any other Host header, or from another site's page, "
                        "are refused")
    p.add_argument("--embedding", metavar="NAME")
    p.add_argument("--show", action="store_true", help="open a browser tab")
    _add_common(p)
    p.set_defaults(func=run_serve)

    p = sub.add_parser("doctor", help="check a project folder and say how to repair it", description=run_doctor.__doc__)
    p.add_argument("project", metavar="PROJECT")
    p.add_argument("--fix", action="store_true", help="remove leftovers of interrupted writes")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=run_doctor, settings=[])

    p = sub.add_parser("demo-corpus", help="synthesise a labelled one-shot library", description=run_demo_corpus.__doc__)
    p.add_argument("directory", metavar="DIR")
    p.add_argument("--n", type=_positive_int, default=2000, help="number of files (default 2000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--long-hours", type=_positive_float, metavar="H",
                   help="instead of one-shots, write H hours of long recordings for frame mode "
                        "(drum hits over a noise floor; 10 h gives about 144,000 frames)")
    p.add_argument("--long-files", type=_positive_int, default=1, metavar="K",
                   help="split --long-hours over K files (default 1)")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=run_demo_corpus, settings=[])
    return parser


def _version() -> str:
    from . import __version__
    return __version__


# -- helpers ---------------------------------------------------------------------------------
def _project(path: str, *, must_exist: bool = True):
    from .store import Project

    proj = Project(path)
    if must_exist:
        proj.require("manifest")
    return proj


def _overrides(args: argparse.Namespace, mapping: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = dict(args.settings)
    for attr, key in mapping.items():
        value = getattr(args, attr, None)
        if value is not None and value is not False:
            out[key] = value
    return out


def _configure(proj, args: argparse.Namespace, mapping: dict[str, str], *, write: bool = True):
    from .pipeline import prepare_config

    return prepare_config(proj, preset=getattr(args, "preset", None), overrides=_overrides(args, mapping), write=write)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


# -- commands --------------------------------------------------------------------------------
def run_map(args: argparse.Namespace) -> int:
    """Scan LIBRARY, compute features, embed (UMAP by default) and render PROJECT/map.png."""
    from .pipeline import format_summary, run_map as _run

    lib = Path(args.library)
    if not lib.is_dir():
        raise UsageError(f"library folder {lib} does not exist" if not lib.exists() else f"library {lib} is not a folder")
    if args.labels and not Path(args.labels).is_file():
        raise UsageError(f"labels file {args.labels} does not exist")
    _check_cluster(args)
    proj = _project(args.output, must_exist=False).ensure()
    overrides = _overrides(args, {"device": "features.device", "engine": "reduce.engine",
                                  "method": "reduce.method", "features": "reduce.features",
                                  "cluster": "features.cluster", "frames": "features.frames",
                                  "window": "features.window", "hop": "features.hop"})
    if args.features:
        from .config import Config
        base = Config.preset_named(args.preset or "default")
        sets = list(dict.fromkeys([*base.features.sets, args.features]))
        overrides["features.sets"] = sets
    summary = _run(lib, proj, labels=args.labels, label_from=args.label_from, label_regex=args.label_regex,
                   preset=args.preset, overrides=overrides, progress=not args.quiet)
    print(format_summary(summary))
    return 0


def run_scan(args: argparse.Namespace) -> int:
    """Walk LIBRARY recursively (wav, flac, aiff, ogg, mp3; more with FFmpeg), read headers, hash
    and label every file, and write PROJECT/manifest.parquet. Broken files are kept as rows with
    status 'skipped' and a reason."""
    from .library.scan import scan

    lib = Path(args.library)
    if not lib.is_dir():
        raise UsageError(f"library folder {lib} does not exist" if not lib.exists() else f"library {lib} is not a folder")
    proj = _project(args.output, must_exist=False).ensure()
    with proj.lock("scan"):  # refused before klustr.toml is touched when another run holds the project
        cfg = _configure(proj, args, {})
        df = scan(lib, proj, config=cfg, labels=args.labels, label_from=args.label_from,
                  label_regex=args.label_regex, progress=not args.quiet)
    ok = int((df.status == "ok").sum())
    print(f"manifest: {proj.manifest_path}  ({len(df)} files, {ok} ok, {len(df) - ok} skipped, "
          f"{int(df.label.notna().sum())} labelled)")
    for reason, n in df[df.status != "ok"].reason.value_counts().items():
        print(f"  skipped {n:>6}  {reason}")
    return 0


def run_features(args: argparse.Namespace) -> int:
    """Compute feature sets for every ok file of PROJECT in batches (torch, CPU or CUDA) into
    PROJECT/features/<set>/. Resumable: rerun after a crash and only unfinished shards are done."""
    _check_cluster(args)
    proj = _project(args.project)
    from .features import extract
    cfg = _configure(proj, args, {"sets": "features.sets", "device": "features.device", "batch_size": "features.batch_size",
                                  "workers": "features.workers", "frames": "features.frames",
                                  "window": "features.window", "hop": "features.hop",
                                  "cluster": "features.cluster"}, write=False)
    summary = extract(proj, cfg, progress=not args.quiet)
    _print_json(summary)
    return 0


def run_embed(args: argparse.Namespace) -> int:
    """Reduce a feature set of PROJECT to 2-D (UMAP, t-SNE or PCA) into PROJECT/embeddings/<name>.parquet."""
    _check_cluster(args)
    proj = _project(args.project)
    from .reduce import embed
    cfg = _configure(proj, args, {"method": "reduce.method", "features": "reduce.features", "engine": "reduce.engine",
                                  "n_neighbors": "reduce.n_neighbors", "min_dist": "reduce.min_dist",
                                  "metric": "reduce.metric", "perplexity": "reduce.perplexity",
                                  "pca_components": "reduce.pca_components", "seed": "seed"}, write=False)
    name = args.name or f"{cfg.reduce.features}-{cfg.reduce.method}"
    df = embed(proj, cfg, name=name, progress=not args.quiet, cluster=args.cluster)
    print(f"embedding: {proj.embedding_path(name)}  ({len(df)} points)")
    return 0


def run_score(args: argparse.Namespace) -> int:
    """Score every embedding of PROJECT (10-NN accuracy, trustworthiness, the 2017 scores) -> scores.json."""
    proj = _project(args.project)
    from .score import score
    result = score(proj, progress=not args.quiet)
    _print_json(result)
    print(f"scores: {proj.path / 'scores.json'}", file=sys.stderr)
    return 0


def run_grid(args: argparse.Namespace) -> int:
    """Run a population of maps (feature sets x methods x parameters), score and rank them;
    writes scores.json, report.md and grid.png, and makes the best map the project's default."""
    proj = _project(args.project)
    from .score import grid

    with proj.lock("grid"):
        cfg = _configure(proj, args, {})
        table = grid(proj, cfg, features=args.features, methods=args.methods, rank_by=args.rank_by,
                     engine=args.engine, quick=args.quick, progress=not args.quiet)
    print(table.head(10).to_string(index=False))
    print(f"report: {proj.path / 'report.md'}\ngrid: {proj.path / 'grid.png'}")
    return 0


def run_render(args: argparse.Namespace) -> int:
    """Draw PROJECT/map.png (datashader, coloured by label) and a standalone PROJECT/map.html.
    With --cluster the embedding is read and rasterised on a Dask cluster (the same picture)."""
    _check_cluster(args)
    proj = _project(args.project)
    from .render import render
    out = render(proj, embedding=args.embedding, width=args.width, height=args.height, by=args.by,
                 progress=not args.quiet, cluster=args.cluster)
    print(f"map: {out['png']}")
    if out.get("html"):
        print(f"page: {out['html']}")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    """Serve the zoomable map with hover, click-to-play, neighbours, filters and selection export."""
    proj = _project(args.project)
    from .render import serve
    if not (0 < args.port < 65536):
        raise UsageError(f"--port {args.port} is not a valid port (1-65535)")
    serve(proj, port=args.port, host=args.host, embedding=args.embedding, show=args.show,
          allow_hosts=args.allow_hosts)
    return 0


def run_doctor(args: argparse.Namespace) -> int:
    """Check PROJECT: config, manifest vs the audio on disk, features and embeddings vs the
    manifest, leftovers of interrupted runs. Exit 0 when healthy, 1 when something needs repair."""
    from .doctor import check, healthy

    findings = check(args.project, fix=args.fix)
    for f in findings:
        if not (args.quiet and f.level == "ok"):
            print(f.line())
    return 0 if healthy(findings) else 1


def run_demo_corpus(args: argparse.Namespace) -> int:
    """Synthesise a labelled one-shot drum library (kick, snare, clap, hihat, tom, ride, crash)
    in mixed formats, rates and channel counts, with DIR/labels.csv; or, with --long-hours,
    long recordings for frame mode. Streams to disk (bounded memory for 100,000+ files), and a
    rerun keeps the files already written."""
    from .library.democorpus import demo_corpus, long_recordings

    out = Path(args.directory)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} is a file, not a folder")
    if args.long_hours:
        paths = long_recordings(out, hours=args.long_hours, files=args.long_files, seed=args.seed,
                                progress=not args.quiet)
        print(f"library: {out}  ({len(paths)} recordings, {args.long_hours:g} h)\n"
              f"map it in frame mode: klustr map {out} -o PROJECT --frames")
        return 0
    labels = demo_corpus(out, n=args.n, seed=args.seed, progress=not args.quiet)
    print(f"library: {out}  ({args.n} files)\nlabels: {labels}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    # our messages at the chosen level; other libraries' only from WARNING up (numba's DEBUG
    # output alone is thousands of lines of compiler IR)
    logging.basicConfig(level=logging.WARNING, format="klustr: %(message)s")
    logging.getLogger("klustr_gpu").setLevel(level)
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"klustr: error: {exc}", file=sys.stderr)
        return 2
    except KlustrError as exc:
        print(f"klustr: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("klustr: interrupted; finished work is kept, rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
