"""How cost grows: time and peak memory of each stage of ``klustr`` at 10k, 100k and 1M points.

Each stage runs as the command a user types, in a fresh process, with the default config:
``klustr scan``, ``klustr features``, ``klustr embed``, ``klustr render``. Peak memory is the
largest sum of resident memory over the stage's whole process tree (the command plus its decode
workers), sampled every 50 ms with psutil, so it is what the machine must have free.

Cases (each built once and cached under ``$KLUSTR_BENCH_CACHE``, default ~/.cache/klustr_gpu/bench):
  ``clips:N``   a demo corpus of N one-shots (``klustr demo-corpus DIR --n N``), clip mode;
  ``frames:H``  H hours of long recordings in 28 files (``klustr demo-corpus DIR --long-hours H``),
                frame mode (0.5 s windows, 0.25 s hop): 70 h gives about 1,000,000 points.

    .venv/bin/python benchmarks/scaling.py [--cases clips:10000,clips:100000,frames:70] [--quick]

Figures are merged into ``benchmarks/out/scaling.json`` (a case rerun replaces its rows), the
plot goes to ``benchmarks/scaling.png``, and a markdown table is printed.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
CACHE = Path(os.environ.get("KLUSTR_BENCH_CACHE", Path.home() / ".cache" / "klustr_gpu" / "bench"))
KLUSTR = str(Path(sys.executable).with_name("klustr"))
STAGES = ("scan", "features", "embed", "render")
DEFAULT_CASES = "clips:10000,clips:100000,frames:70"


def run_measured(cmd: list[str], log) -> dict:
    """Run ``cmd``; wall time and the peak of the summed RSS over its process tree."""
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=log)
    peak = 0
    done = threading.Event()

    def sample():
        nonlocal peak
        try:
            root = psutil.Process(proc.pid)
        except psutil.NoSuchProcess:
            return
        while not done.is_set():
            total = 0
            try:
                procs = [root] + root.children(recursive=True)
            except psutil.NoSuchProcess:
                break
            for p in procs:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            peak = max(peak, total)
            done.wait(0.05)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    rc = proc.wait()
    seconds = time.perf_counter() - t0
    done.set()
    th.join()
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with exit {rc}; see {log.name}")
    return {"seconds": round(seconds, 2), "peak_mib": round(peak / 2**20, 1)}


def library(case: str) -> tuple[Path, list[str]]:
    """The case's library (built if missing) and the extra arguments of its scan."""
    kind, size = case.split(":")
    if kind == "clips":
        lib = CACHE / f"demo{int(size)}"
        if not (lib / "labels.csv").is_file() or sum(1 for _ in open(lib / "labels.csv")) - 1 < int(size):
            subprocess.run([KLUSTR, "demo-corpus", str(lib), "--n", str(int(size)), "-q"], check=True)
        return lib, ["--labels", str(lib / "labels.csv")]
    hours = float(size)
    lib = CACHE / f"long{size}h"
    subprocess.run([KLUSTR, "demo-corpus", str(lib), "--long-hours", str(hours), "--long-files", "28", "-q"],
                   check=True)
    return lib, []


def run_case(case: str, workdir: Path) -> list[dict]:
    lib, scan_args = library(case)
    frames = case.startswith("frames:")
    proj = workdir / case.replace(":", "_")
    shutil.rmtree(proj, ignore_errors=True)
    logp = workdir / f"{case.replace(':', '_')}.log"
    rows = []
    with open(logp, "w") as log:
        cmds = {
            "scan": [KLUSTR, "scan", str(lib), "-o", str(proj), "-q", *scan_args]
                    + (["-c", "features.frames=true"] if frames else []),
            "features": [KLUSTR, "features", str(proj), "-q"] + (["--frames"] if frames else []),
            "embed": [KLUSTR, "embed", str(proj), "-q"],
            "render": [KLUSTR, "render", str(proj), "-q"],
        }
        for stage in STAGES:
            print(f"  {case} {stage} ...", file=sys.stderr, flush=True)
            r = run_measured(cmds[stage], log)
            rows.append({"case": case, "stage": stage, **r})
            print(f"  {case} {stage}: {r['seconds']} s, {r['peak_mib']} MiB", file=sys.stderr, flush=True)
    import pandas as pd

    emb = next((proj / "embeddings").glob("*.parquet"))
    n = len(pd.read_parquet(emb, columns=["x"]))
    for r in rows:
        r["points"] = n
    return rows


def plot(rows: list[dict], target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for stage, marker in zip(STAGES + ("total",), "osD^*"):
        pts = sorted({r["points"] for r in rows})
        if stage == "total":
            t = [sum(r["seconds"] for r in rows if r["points"] == p) for p in pts]
            m = [max(r["peak_mib"] for r in rows if r["points"] == p) for p in pts]
        else:
            sel = sorted((r for r in rows if r["stage"] == stage), key=lambda r: r["points"])
            pts = [r["points"] for r in sel]
            t = [r["seconds"] for r in sel]
            m = [r["peak_mib"] / 1024 for r in sel]
        axes[0].plot(pts, t, marker=marker, label=stage, lw=2 if stage == "total" else 1)
        if stage != "total":
            axes[1].plot(pts, m, marker=marker, label=stage)
    axes[0].set(xscale="log", yscale="log", xlabel="points", ylabel="seconds", title="time per stage")
    axes[1].set(xscale="log", xlabel="points", ylabel="GiB", title="peak memory (process tree)")
    axes[1].axhline(4, color="grey", ls="--", lw=1)
    axes[1].text(axes[1].get_xlim()[0], 4.05, " 4 GiB", color="grey", va="bottom")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("klustr_gpu: cost by stage, one CPU machine (10k and 100k: demo-corpus one-shots, clip mode; 1M: 70 h of recordings, frame mode)", fontsize=10)
    fig.tight_layout()
    fig.savefig(target, dpi=110)


def table(rows: list[dict]) -> str:
    cases = list(dict.fromkeys(r["case"] for r in rows))
    lines = ["| case | points | " + " | ".join(f"{s} s (GiB)" for s in STAGES) + " | total s |",
             "|---|---:|" + "---:|" * (len(STAGES) + 1)]
    for c in cases:
        sel = {r["stage"]: r for r in rows if r["case"] == c}
        cells = [f"{sel[s]['seconds']:.1f} ({sel[s]['peak_mib'] / 1024:.2f})" if s in sel else "–" for s in STAGES]
        total = sum(r["seconds"] for r in sel.values())
        pts = next(iter(sel.values()))["points"]
        lines.append(f"| {c} | {pts:,} | " + " | ".join(cells) + f" | {total:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=DEFAULT_CASES, help=f"comma-separated (default {DEFAULT_CASES})")
    ap.add_argument("--quick", action="store_true", help="small cases: clips:2000,frames:2")
    ap.add_argument("--workdir", default=str(CACHE / "scaling"), help="where the projects are built")
    ap.add_argument("--plot-only", action="store_true", help="redraw the plot and table from scaling.json")
    args = ap.parse_args(argv)
    cases = "" if args.plot_only else "clips:2000,frames:2" if args.quick else args.cases
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    OUT.mkdir(exist_ok=True)
    store = OUT / "scaling.json"
    rows = json.loads(store.read_text()) if store.exists() else []
    for case in filter(None, cases.split(",")):
        new = run_case(case, workdir)
        rows = [r for r in rows if r["case"] != case] + new
        store.write_text(json.dumps(rows, indent=1))
    rows.sort(key=lambda r: (r["points"], STAGES.index(r["stage"])))
    plot(rows, HERE / "scaling.png")
    print("Each stage is the `klustr` command in a fresh process (default config, CPU); peak = summed RSS "
          "of the process tree. Plot: `benchmarks/scaling.png`.\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
