"""``make bench``: run every benchmark in one go and rewrite benchmarks/RESULTS.md.

Each benchmark is a script in this folder that prints a markdown section on stdout and writes
its raw figures to ``benchmarks/out/<name>.json``. This runner runs them one after another (so
they do not compete for the CPU), in fresh processes, and assembles RESULTS.md from their output
with the machine described at the top.

    .venv/bin/python benchmarks/run_all.py [--only features,reduce] [--quick]
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ["scan", "features", "reduce", "render", "zoom", "quality", "end_to_end", "default_cost", "scaling"]


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, GPU: {gpu}, Python {platform.python_version()}, torch {torch.__version__}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comma-separated benchmark names (default: all)")
    ap.add_argument("--quick", action="store_true", help="pass --quick to benchmarks that have it (smaller sizes)")
    args = ap.parse_args(argv)
    names = args.only.split(",") if args.only else [n for n in ORDER if (HERE / f"{n}.py").exists()]
    sections = []
    for name in names:
        script = HERE / f"{name}.py"
        if not script.exists():
            print(f"skip {name}: no {script.name}", file=sys.stderr)
            continue
        cmd = [sys.executable, str(script)] + (["--quick"] if args.quick else [])
        print(f"== {name}: {' '.join(cmd)}", file=sys.stderr, flush=True)
        t = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True)
        took = time.perf_counter() - t
        sys.stderr.write(r.stderr[-3000:])
        body = r.stdout.strip() if r.returncode == 0 else f"**failed** (exit {r.returncode}):\n\n```\n{r.stderr[-2000:]}\n```"
        sections.append(f"## {name}\n\nCommand: `python benchmarks/{name}.py{' --quick' if args.quick else ''}` "
                        f"({took:.0f} s)\n\n{body}\n")
    head = (f"# Benchmark results\n\nWritten by `make bench` (`benchmarks/run_all.py`) on "
            f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC.\n\nMachine: {machine()}.\n\n"
            "Every comparison is measured in the same run as its peer; ratios > 1 mean klustr_gpu is faster.\n")
    out = HERE / "RESULTS.md"
    if args.only and out.exists():
        print("note: --only given; writing benchmarks/RESULTS.partial.md instead of RESULTS.md", file=sys.stderr)
        out = HERE / "RESULTS.partial.md"
    out.write_text(head + "\n" + "\n".join(sections), encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
