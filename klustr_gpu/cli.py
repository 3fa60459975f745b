"""The ``klustr`` command: a translation of flags into the Python API's overrides, and of its
results and errors into text (``klustr_gpu.api``: every command is one stage call).

Exit codes: 0 done; 1 a run failed (store, engine, unexpected error); 2 wrong usage (unknown
option value, missing folder, output inside a file), reported in one line before any work.
The choices of every option are those of :mod:`klustr_gpu.config`; library errors, which
speak of parameters (``device='cuda'``) and stages (``embed('proj')``), are printed with
flags (``--device cuda``) and commands (``klustr embed proj``).
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

from . import api
from .config import COLOUR_BY, DEVICES, ENGINES, FEATURE_SETS, LABEL_FROM, METHODS, PRESETS, RANK_BY, Config
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


def _csv_list(choices: Sequence[str], combine: bool = False):
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if not all(p in choices for p in (t.split("+") if combine else [t]))]
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


def _add_labels(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--labels", metavar="CSV", help="CSV of path,label (paths relative to LIBRARY)")
    g.add_argument("--label-from", choices=LABEL_FROM, help="label each file by its folder name")
    g.add_argument("--label-regex", action="store_true",
                   help="the 2017 rule: keywords kick, tom, snare, clap, hi.hat, ride, crash in the path (two matches: unlabelled)")


def _add_output(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", required=True, metavar="PROJECT", help="project folder (created if missing)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="start from a preset: 'default' or 'klustr' (the 2017 settings)")


def _add_frames(p: argparse.ArgumentParser) -> None:
    p.add_argument("--frames", action="store_true", help="frame mode: one point per window of long recordings")
    p.add_argument("--window", type=_positive_float, metavar="SECONDS", help="frame mode window (default 0.5)")
    p.add_argument("--hop", type=_positive_float, metavar="SECONDS", help="frame mode hop (default 0.25)")


def _map_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("library", metavar="LIBRARY", help="folder of audio files (searched recursively)")
    _add_output(p)
    _add_labels(p)
    p.add_argument("--device", choices=DEVICES, help="where features are computed (default auto)")
    p.add_argument("--engine", choices=ENGINES, help="reduction engine (default auto: cuml, torchdr on GPU, else cpu)")
    p.add_argument("--method", choices=METHODS, help="reduction method (default tsne)")
    p.add_argument("--features", choices=FEATURE_SETS, help="feature set the map is made from (default general)")
    _add_frames(p)
    _add_cluster(p, "run features, the placing of points beyond the fitted sample, and the rendering on a Dask cluster")


def _scan_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("library", metavar="LIBRARY")
    _add_output(p)
    _add_labels(p)


def _features_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("project", metavar="PROJECT")
    p.add_argument("--set", dest="sets", type=_csv_list(FEATURE_SETS), help=f"comma-separated feature sets ({','.join(FEATURE_SETS)})")
    p.add_argument("--device", choices=DEVICES)
    p.add_argument("--batch-size", type=_positive_int, metavar="N")
    p.add_argument("--workers", type=_positive_int, metavar="N", help="decoding processes (default: from the CPU count)")
    _add_frames(p)
    _add_cluster(p)


def _embed_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("project", metavar="PROJECT")
    p.add_argument("--method", choices=METHODS)
    p.add_argument("--features", choices=FEATURE_SETS)
    p.add_argument("--engine", choices=ENGINES)
    p.add_argument("--name", help="embedding name (default FEATURES-METHOD)")
    p.add_argument("--n-neighbors", type=_positive_int, metavar="K", help="UMAP neighbours")
    p.add_argument("--min-dist", type=float, metavar="D", help="UMAP minimum distance")
    p.add_argument("--metric", help="UMAP/k-NN metric, e.g. euclidean, cosine, correlation")
    p.add_argument("--perplexity", type=_positive_float, help="t-SNE perplexity")
    p.add_argument("--pca-components", type=int, metavar="K", help="PCA before t-SNE/UMAP (0: none)")
    p.add_argument("--seed", type=int)
    _add_cluster(p, "place the points beyond the fitted sample (above reduce.sample_threshold) on a Dask cluster")


def _grid_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("project", metavar="PROJECT")
    p.add_argument("--features", type=_csv_list(FEATURE_SETS, combine=True),
                   help="feature sets to try, a+b for two side by side (default: those computed)")
    p.add_argument("--methods", type=_csv_list(METHODS), help="methods to try (default umap,tsne,pca)")
    p.add_argument("--rank-by", choices=RANK_BY, help="the score maps are ranked by (default knn_accuracy)")
    p.add_argument("--engine", choices=ENGINES, help="reduction engine (default auto)")
    p.add_argument("--quick", action="store_true", help="a small grid (a few maps), for a first look")


def _render_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("project", metavar="PROJECT")
    p.add_argument("--embedding", metavar="NAME", help="which embedding (default: the project's default)")
    p.add_argument("--width", type=_positive_int)
    p.add_argument("--height", type=_positive_int)
    p.add_argument("--by", choices=COLOUR_BY,
                   help="colour by label, by the embedding's k-means cluster, or auto (default: label "
                        "when the library has labels, else cluster)")
    _add_cluster(p, "read the embedding and rasterise map.png on a Dask cluster (map.html is built here)")


def _serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("project", metavar="PROJECT")
    p.add_argument("--port", type=int, default=5006, help="port to listen on (default 5006)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--allow-host", metavar="NAME", action="append", default=[], dest="allow_hosts",
                   help="a name (NAME or NAME:PORT) browsers may use to reach the server, besides localhost, "
                        "127.0.0.1 and ::1 and the --host address; repeatable (e.g. the machine's name with "
                        "--host 0.0.0.0). Requests with any other Host header, or from another site's page, "
                        "are refused")
    p.add_argument("--embedding", metavar="NAME")
    p.add_argument("--by", choices=COLOUR_BY,
                   help="colour by label, by the embedding's k-means cluster, or auto (default: the project's "
                        "render.by, auto: label when the library has labels, else cluster)")
    p.add_argument("--neighbours", type=_positive_int, metavar="N",
                   help="similar sounds listed for a clicked sample (default: the project's render.neighbours, 10)")
    p.add_argument("--show", action="store_true", help="open a browser tab")


def _doctor_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("project", metavar="PROJECT")
    p.add_argument("--fix", action="store_true", help="remove leftovers of interrupted writes")


def _demo_corpus_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory", metavar="DIR")
    p.add_argument("--n", type=_positive_int, default=2000, help="number of files (default 2000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--long-hours", type=_positive_float, metavar="H",
                   help="instead of one-shots, write H hours of long recordings for frame mode "
                        "(drum hits over a noise floor; 10 h gives about 144,000 frames)")
    p.add_argument("--long-files", type=_positive_int, default=1, metavar="K",
                   help="split --long-hours over K files (default 1)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="klustr", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Turn an audio library into a zoomable 2-D map of its sounds: similar sounds land together.")
    parser.add_argument("--version", action="version", version=f"klustr_gpu {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_, func, args, settings in (
            ("map", "everything: scan, features, embed, render map.png", run_map, _map_args, True),
            ("scan", "walk a library, read headers and labels -> manifest.parquet", run_scan, _scan_args, True),
            ("features", "batched features -> features/<set>/", run_features, _features_args, True),
            ("embed", "PCA / t-SNE / UMAP -> embeddings/<name>.parquet", run_embed, _embed_args, True),
            ("score", "map-quality scores of every embedding -> scores.json", run_score, _project_args, True),
            ("grid", "a population of maps, scored and ranked -> report.md, grid.png", run_grid, _grid_args, True),
            ("render", "static map.png and a standalone map.html", run_render, _render_args, True),
            ("serve", "the zoomable map in a browser, with playback", run_serve, _serve_args, True),
            ("doctor", "check a project folder and say how to repair it", run_doctor, _doctor_args, False),
            ("demo-corpus", "synthesise a labelled one-shot library", run_demo_corpus, _demo_corpus_args, False)):
        p = sub.add_parser(name, help=help_, description=func.__doc__)
        args(p)
        if settings:
            _add_common(p)
        else:
            p.add_argument("-q", "--quiet", action="store_true")
            p.add_argument("-v", "--verbose", action="store_true")
        p.set_defaults(func=func, **({} if settings else {"settings": []}))
    return parser


def _project_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("project", metavar="PROJECT")


def _version() -> str:
    from . import __version__
    return __version__


# -- flags in, text out ----------------------------------------------------------------------
def _config(project: str, args: argparse.Namespace) -> Config:
    """The config a command starts from (``--preset``, else the project's, else the defaults)
    with its ``-c SECTION.KEY=VALUE`` settings."""
    cfg = api.project_config(project, preset=getattr(args, "preset", None))
    return cfg.updated(dict(args.settings)) if args.settings else cfg


def _given(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The flags among ``names`` that were given, as keyword overrides (an unset switch is no override)."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) not in (None, False)}


#: stage function -> command, in the stage references of library errors
COMMANDS = {"scan": "scan", "compute_features": "features", "embed": "embed", "score_maps": "score", "grid": "grid",
            "render_map": "render"}
#: parameter -> flag, where the flag is not ``--`` + the parameter with dashes
FLAGS = {"sets": "--set", "project": "-o", "settings": "-c"}
#: parameters that are flags of some command (others stay as the library wrote them)
PARAMS = ("device", "engine", "method", "features", "cluster", "sets", "frames", "window", "hop", "labels",
          "label_from", "label_regex", "by", "rank_by", "methods", "port", "host", "width", "height", "metric",
          "perplexity", "n_neighbors", "min_dist", "pca_components", "seed", "name", "embedding", "batch_size",
          "workers")
_VALUE = r"'[^']*'|\"[^\"]*\"|\[[^\]]*\]|[\w.:/+-]+"
_CALL = re.compile(rf"\b({'|'.join(COMMANDS)})\(([^()]*)\)")
_ARG = re.compile(rf"(?:(\w+)=)?({_VALUE})")
_SETTING = re.compile(rf"\b({'|'.join(PARAMS)})=({_VALUE})")


def _flag(param: str) -> str:
    return FLAGS.get(param, "--" + param.replace("_", "-"))


def _word(value: str) -> str:
    """A Python value in an error (``'cuda'``, ``['mfcc']``) as a command-line word."""
    if value.startswith("["):
        return ",".join(v.strip().strip("'\"") for v in value[1:-1].split(",") if v.strip())
    return value.strip("'\"")


def _command(m: re.Match) -> str:
    cmd, words = COMMANDS[m.group(1)], []
    for i, a in enumerate(_ARG.finditer(m.group(2))):
        key, value = a.group(1), shlex.quote(_word(a.group(2)))
        if key is None:
            words.append(f"-o {value}" if cmd == "scan" and i == 1 else value)
        else:
            words.append(_flag(key) if value == "True" else f"{_flag(key)} {value}")
    return "`" + " ".join(["klustr", cmd, *words]) + "`"


def translate(message: str) -> str:
    """A library message for the command line: stage calls as commands, parameters as flags."""
    message = _CALL.sub(_command, message)
    return _SETTING.sub(lambda m: f"{_flag(m.group(1))} {_word(m.group(2))}", message)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


# -- commands --------------------------------------------------------------------------------
def run_map(args: argparse.Namespace) -> int:
    """Scan LIBRARY, compute features, embed (UMAP by default) and render PROJECT/map.png."""
    result = api.map(args.library, args.output, _config(args.output, args), labels=args.labels,
                     label_from=args.label_from, label_regex=args.label_regex, progress=not args.quiet,
                     **_given(args, "device", "engine", "method", "features", "frames", "window", "hop", "cluster"))
    print(result.summary())
    return 0


def run_scan(args: argparse.Namespace) -> int:
    """Walk LIBRARY recursively (wav, flac, aiff, ogg, mp3; more with FFmpeg), read headers, hash
    and label every file, and write PROJECT/manifest.parquet. Broken files are kept as rows with
    status 'skipped' and a reason."""
    result = api.scan(args.library, args.output, _config(args.output, args), labels=args.labels,
                      label_from=args.label_from, label_regex=args.label_regex, progress=not args.quiet)
    print(result.summary())
    return 0


def run_features(args: argparse.Namespace) -> int:
    """Compute feature sets for every ok file of PROJECT in batches (torch, CPU or CUDA) into
    PROJECT/features/<set>/. Resumable: rerun after a crash and only unfinished shards are done."""
    result = api.compute_features(args.project, _config(args.project, args), progress=not args.quiet,
                                  **_given(args, "sets", "device", "batch_size", "workers", "frames", "window", "hop",
                                           "cluster"))
    _print_json(result.to_dict())
    return 0


def run_embed(args: argparse.Namespace) -> int:
    """Reduce a feature set of PROJECT to 2-D (UMAP, t-SNE or PCA) into PROJECT/embeddings/<name>.parquet."""
    result = api.embed(args.project, _config(args.project, args), progress=not args.quiet,
                       **_given(args, "method", "features", "engine", "name", "cluster", "n_neighbors", "min_dist",
                                "metric", "perplexity", "pca_components", "seed"))
    print(result.summary())
    return 0


def run_score(args: argparse.Namespace) -> int:
    """Score every embedding of PROJECT (10-NN accuracy, trustworthiness, the 2017 scores) -> scores.json."""
    result = api.score_maps(args.project, _config(args.project, args), progress=not args.quiet)
    _print_json(result.to_dict())
    print(f"scores: {result.path}", file=sys.stderr)
    return 0


def run_grid(args: argparse.Namespace) -> int:
    """Run a population of maps (feature sets x methods x parameters), score and rank them;
    writes scores.json, report.md and grid.png, and makes the best map the project's default."""
    result = api.grid(args.project, _config(args.project, args), quick=args.quick, progress=not args.quiet,
                      **_given(args, "features", "methods", "rank_by", "engine"))
    print(result.summary())
    return 0


def run_render(args: argparse.Namespace) -> int:
    """Draw PROJECT/map.png (datashader, coloured by label) and a standalone PROJECT/map.html.
    With --cluster the embedding is read and rasterised on a Dask cluster (the same picture)."""
    result = api.render_map(args.project, _config(args.project, args), progress=not args.quiet,
                            **_given(args, "embedding", "width", "height", "by", "cluster"))
    print(result.summary())
    return 0


def run_serve(args: argparse.Namespace) -> int:
    """Serve the zoomable map with hover, click-to-play, neighbours, filters and selection export."""
    api.serve(args.project, port=args.port, host=args.host, embedding=args.embedding, by=args.by,
              neighbours=args.neighbours, show=args.show, allow_hosts=args.allow_hosts)
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
    from .library.democorpus import long_recordings

    out = Path(args.directory)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} is a file, not a folder")
    if args.long_hours:
        paths = long_recordings(out, hours=args.long_hours, files=args.long_files, seed=args.seed,
                                progress=not args.quiet)
        print(f"library: {out}  ({len(paths)} recordings, {args.long_hours:g} h)\n"
              f"map it in frame mode: klustr map {out} -o PROJECT --frames")
        return 0
    labels = api.demo_corpus(out, n=args.n, seed=args.seed, progress=not args.quiet)
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
        print(f"klustr: error: {translate(str(exc))}", file=sys.stderr)
        return 2
    except KlustrError as exc:
        print(f"klustr: error: {translate(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("klustr: interrupted; finished work is kept, rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
