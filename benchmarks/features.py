"""Feature extraction throughput: the 2017 way vs ``klustr features`` vs decoding alone.

    .venv/bin/python benchmarks/features.py [--n-demo 10000] [--a-limit 1000] [--corpus hydrogen,demo]

(a) ``2017``: per file, ``librosa.load(sr=48000, mono=True, duration=clip)`` then librosa MFCC
    (30 coefficients, 128 mels, n_fft 2048, hop 512), the STFT fingerprint (librosa.stft 1024/256,
    grouped, dB, cropped 32x32, min-max) and the eight descriptors, one file at a time, one process
    (as the 2017 notebooks did), after an untimed warm-up (numba compilation). Run on at most
    ``--a-limit`` files; its rate is per file.
(b) ``klustr``: ``compute_features(project, device="cpu")`` under the klustr preset (sets stft, mfcc, mir;
    48 kHz, 0.25 s clips), worker-process decoding overlapped with batched torch features.
(c) ``decode``: the same decoding (worker pool, or the main process for small jobs, as (b)
    chooses) with no features at all.

Writes ``benchmarks/out/features.json`` and prints a markdown table. With CUDA available it also
times (b) on the GPU and appends a line with the device name to ``benchmarks/RESULTS.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from klustr_gpu.config import Config  # noqa: E402
from klustr_gpu.store import Project  # noqa: E402

HYDROGEN = Path(os.environ.get("KLUSTR_HYDROGEN", Path.home() / ".cache" / "klustr_gpu" / "hydrogen")) / "library"
DEMO_CACHE = Path(os.environ.get("KLUSTR_BENCH_CACHE", Path.home() / ".cache" / "klustr_gpu" / "bench"))


def way_2017(paths: list[Path], cfg: Config) -> int:
    """The 2017 per-file librosa pipeline; returns the number of files processed."""
    import librosa

    sr, clip = cfg.audio.sample_rate, cfg.audio.clip_seconds
    n = int(round(sr * clip))
    m, s = cfg.mfcc, cfg.stft
    done = 0
    for p in paths:
        try:
            y, _ = librosa.load(p, sr=sr, mono=True, duration=clip)
        except Exception:  # noqa: BLE001 - the 2017 notebooks skipped unreadable files too
            continue
        y = librosa.util.fix_length(y / max(np.abs(y).max(), 1e-9), size=n)
        librosa.feature.mfcc(y=y, sr=sr, n_mfcc=m.n_mfcc, n_mels=m.n_mels, n_fft=m.n_fft, hop_length=m.hop_length)
        S = np.abs(librosa.stft(y, n_fft=s.n_fft, hop_length=s.hop_length))
        g = (S.shape[0] // s.group) * s.group
        G = librosa.amplitude_to_db(S[:g].reshape(g // s.group, s.group, -1).mean(1), ref=1.0)[: s.size, : s.size]
        _ = (G - G.min()) / max(G.max() - G.min(), 1e-12)
        kw = dict(n_fft=cfg.mir.n_fft, hop_length=cfg.mir.hop_length)
        S = np.abs(librosa.stft(y, **kw))
        librosa.feature.rms(y=y, frame_length=kw["n_fft"], hop_length=kw["hop_length"])
        librosa.feature.spectral_centroid(S=S, sr=sr, **kw)
        librosa.feature.spectral_bandwidth(S=S, sr=sr, **kw)
        librosa.feature.spectral_rolloff(S=S, sr=sr, **kw)
        librosa.feature.spectral_flatness(S=S)
        librosa.feature.zero_crossing_rate(y, frame_length=kw["n_fft"], hop_length=kw["hop_length"])
        _ = S.max(0) / np.maximum(S.mean(0), 1e-12), np.linalg.norm(np.diff(S, axis=1), axis=0)
        done += 1
    return done


def decode_only(project: Project, cfg: Config) -> int:
    """(c): the extract pipeline's decoding (same worker pool, same tasks), no features."""
    import torch

    from klustr_gpu.features import decode as D, run as R
    from klustr_gpu.features.plan import Layout

    layout = Layout.from_manifest(project, project.read_manifest(), cfg, False)
    need = np.flatnonzero(layout.ok[layout.unit_pos])
    workers = 0 if len(need) < R.pool_threshold(torch.device("cpu")) else R.resolve_workers(cfg.features.workers)
    n = 0
    with R.main_threads(workers):
        tasks = D.pack(layout.items(need), None, R.TASK_WINDOWS_COMPUTE)
        for _ in D.ordered(tasks, D.decode_task, (cfg.audio, None), workers):
            n += 1
    return n


def _warm(paths: list[Path]) -> None:
    for p in paths:
        with open(p, "rb") as fh:
            while fh.read(1 << 20):
                pass


def bench_corpus(name: str, library: Path, labels: Path | None, args, work: Path) -> dict:
    from klustr_gpu import compute_features, scan

    cfg = Config.preset_named("klustr").updated({"features.device": "cpu"})
    proj = Project(work / name)
    shutil.rmtree(proj.path, ignore_errors=True)
    proj.write_config(cfg)
    df = scan(library, proj, labels=labels, progress=False).manifest
    ok = df[df.status == "ok"]
    paths = [library / p for p in ok["path"]]
    clip_h = float(np.minimum(ok["duration"].to_numpy(), cfg.audio.clip_seconds).sum()) / 3600
    _warm(paths)
    res: dict = {"files": len(paths), "clip_hours": clip_h, "library_hours": float(ok["duration"].sum()) / 3600}

    with _Timer() as t:
        n_c = decode_only(proj, cfg)
    res["c_decode"] = _rates(n_c, t, clip_h * n_c / len(paths))

    with _Timer() as t:
        s = compute_features(proj, progress=False)
    res["b_klustr"] = _rates(len(paths), t, clip_h)
    res["b_klustr"]["set_seconds"] = {k: s.sets[k].seconds for k in ("stft", "mfcc", "mir")}

    sub = paths[: args.a_limit]
    way_2017(sub[:5], cfg)                # warm-up: librosa's numba functions compile once
    with _Timer() as t:
        n_a = way_2017(sub, cfg)
    res["a_2017"] = _rates(n_a, t, clip_h * n_a / len(paths))
    res["a_2017"]["note"] = f"first {len(sub)} files, one process"

    import torch

    if torch.cuda.is_available():
        shutil.rmtree(proj.features_root, ignore_errors=True)
        with _Timer() as t:
            compute_features(proj, device="cuda", progress=False)
        res["b_klustr_cuda"] = _rates(len(paths), t, clip_h)
        res["b_klustr_cuda"]["device"] = torch.cuda.get_device_name()
    res["b_vs_a_speedup"] = res["b_klustr"]["clips_per_s"] / res["a_2017"]["clips_per_s"]
    res["b_over_c_time"] = res["b_klustr"]["seconds"] / res["c_decode"]["seconds"]
    res["b_vs_a_cpu_ratio"] = res["a_2017"]["cpu_ms_per_clip"] / res["b_klustr"]["cpu_ms_per_clip"]
    return res


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the decode workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


class _Timer:
    def __enter__(self):
        self.t, self.c = time.perf_counter(), _cpu()
        return self

    def __exit__(self, *exc):
        self.seconds, self.cpu = time.perf_counter() - self.t, _cpu() - self.c


def _rates(n: int, timer: "_Timer", hours: float) -> dict:
    """Wall-clock rates, plus CPU milliseconds per clip (robust to other jobs on the machine)."""
    return {"clips": n, "seconds": round(timer.seconds, 3), "clips_per_s": round(n / timer.seconds, 1),
            "audio_hours_per_s": round(hours / timer.seconds, 5), "cpu_seconds": round(timer.cpu, 3),
            "cpu_ms_per_clip": round(1000 * timer.cpu / max(n, 1), 3)}


def table(results: dict) -> str:
    lines = ["| corpus | files | (a) 2017 clips/s | (b) klustr clips/s | (c) decode clips/s | (b) audio h/s "
             "| (b)/(a) speed-up | (b)/(c) time | CPU ms/clip (a) / (b) / (c) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results["corpora"].items():
        a, b, c = r["a_2017"], r["b_klustr"], r["c_decode"]
        lines.append(f"| {name} | {r['files']} | {a['clips_per_s']} | {b['clips_per_s']} | "
                     f"{c['clips_per_s']} | {b['audio_hours_per_s']} | "
                     f"{r['b_vs_a_speedup']:.1f}x | {r['b_over_c_time']:.2f}x | "
                     f"{a['cpu_ms_per_clip']} / {b['cpu_ms_per_clip']} / {c['cpu_ms_per_clip']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-demo", type=int, default=10_000)
    ap.add_argument("--a-limit", type=int, default=1000, help="files timed for the (slow) 2017 way")
    ap.add_argument("--corpus", default="hydrogen,demo")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "features.json"))
    args = ap.parse_args(argv)
    import torch

    results = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                           "torch_threads": torch.get_num_threads(), "load_avg_start": os.getloadavg()},
               "corpora": {}}
    with tempfile.TemporaryDirectory(prefix="klustr-bench-") as tmp:
        work = Path(tmp)
        for name in args.corpus.split(","):
            if name == "hydrogen":
                if not (HYDROGEN / "labels.csv").exists():
                    print(f"skipping hydrogen: not at {HYDROGEN}", file=sys.stderr)
                    continue
                results["corpora"]["hydrogen"] = bench_corpus("hydrogen", HYDROGEN, HYDROGEN / "labels.csv", args, work)
            elif name == "demo":
                from klustr_gpu.library.democorpus import demo_corpus

                lib = DEMO_CACHE / f"demo{args.n_demo}"
                labels = lib / "labels.csv"
                if not labels.exists():          # generated once, kept between runs (not timed)
                    demo_corpus(lib, n=args.n_demo, seed=0, workers=2, progress=False)
                results["corpora"][f"demo{args.n_demo}"] = bench_corpus(f"demo{args.n_demo}", lib, labels, args, work)
            print(f"done: {name}", file=sys.stderr)
    results["machine"]["load_avg_end"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(table(results))
    cuda = [r for r in results["corpora"].values() if "b_klustr_cuda" in r]
    if cuda:
        with open(REPO / "benchmarks" / "RESULTS.md", "a", encoding="utf-8") as fh:
            for name, r in results["corpora"].items():
                c = r.get("b_klustr_cuda")
                if c:
                    fh.write(f"| features (b) CUDA | {c['device']} | {name} | {c['clips_per_s']} clips/s | "
                             f"{c['audio_hours_per_s']} audio h/s |\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
