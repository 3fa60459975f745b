"""Scan throughput: ``klustr scan`` (headers only, worker processes; an unchanged rescan only
``stat``s) against the scan it replaced (libsndfile headers and a hash of every byte, 4
threads), in one run, on the same corpus with a warm page cache.

    .venv/bin/python benchmarks/scan.py [--n 100000] [--peer-limit 20000] [--quick]

(a) ``hash every byte``: the previous scan, reproduced here: per file ``soundfile.info`` and
    blake2b of the whole file (files under 16 MiB), in a pool of 4 threads; on the first
    ``--peer-limit`` files (its rate is per file), after one untimed pass that warms the cache;
(b) ``kg.scan`` of a new project (every header read, in worker processes), after an untimed
    scan of another project (the headers in the page cache);
(c) ``kg.scan`` again, nothing changed (every row kept, no file opened);
(d) ``klustr scan`` as a user types it, a fresh process each, first scan and unchanged rescan
    (imports included).

Writes ``benchmarks/out/scan.json`` and prints a markdown table. The corpus is the seed-0 demo
corpus under ``$KLUSTR_BENCH_CACHE`` (default ~/.cache/klustr_gpu/bench/demoN), built if missing.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
OUT = REPO / "benchmarks" / "out"
CACHE = Path(os.environ.get("KLUSTR_BENCH_CACHE", Path.home() / ".cache" / "klustr_gpu" / "bench"))


def old_scan_row(path: str) -> str:
    """What the previous scan did per file: a libsndfile header read, then hash every byte."""
    import soundfile as sf

    try:
        sf.info(path)
    except Exception:  # noqa: BLE001 - broken files were rows with a reason
        return ""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def peer(paths: list[str]) -> float:
    with ThreadPoolExecutor(max_workers=4) as pool:
        t = time.perf_counter()
        list(pool.map(old_scan_row, paths))
        return time.perf_counter() - t


def command(args: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "klustr_gpu.cli", *args], check=True, env=dict(os.environ, PYTHONPATH=str(REPO)),
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="files in the demo corpus (default 100,000)")
    ap.add_argument("--peer-limit", type=int, default=20_000, help="files the slow peer scans (default 20,000)")
    ap.add_argument("--quick", action="store_true", help="the 2,000-file corpus")
    args = ap.parse_args(argv)
    if args.quick:
        args.n = 2000

    import pandas as pd

    import klustr_gpu as kg
    from klustr_gpu.library.democorpus import demo_corpus

    lib = CACHE / f"demo{args.n}"
    if not (lib / "labels.csv").exists():
        demo_corpus(lib, n=args.n, seed=0, progress=False)
    labels = lib / "labels.csv"
    paths = [str(lib / p) for p in pd.read_csv(labels).path]
    res: dict = {"n": len(paths), "cpus": os.cpu_count(), "load_avg_start": os.getloadavg()}
    work = Path(tempfile.mkdtemp(prefix="klustr-scanbench-"))
    try:
        kg.scan(lib, work / "warm", labels=labels, progress=False)          # headers into the page cache
        t = time.perf_counter()
        first = kg.scan(lib, work / "p", labels=labels, progress=False)
        res["first"] = {"seconds": time.perf_counter() - t, "files": first.files, "workers": first.workers,
                        "headers_read": first.headers_read}
        t = time.perf_counter()
        again = kg.scan(lib, work / "p", labels=labels, progress=False)
        res["rescan"] = {"seconds": time.perf_counter() - t, "files": again.files, "headers_read": again.headers_read,
                         "rows_kept": again.rows_kept}
        res["cli_first"] = {"seconds": command(["scan", str(lib), "-o", str(work / "c"), "--labels", str(labels), "-q"])}
        res["cli_rescan"] = {"seconds": command(["scan", str(lib), "-o", str(work / "c"), "--labels", str(labels), "-q"])}
        sub = paths[:args.peer_limit]
        peer(sub)                                                            # every byte into the page cache
        res["peer"] = {"seconds": peer(sub), "files": len(sub)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res["load_avg_end"] = os.getloadavg()
    n = res["n"]
    rates = {"peer": res["peer"]["files"] / res["peer"]["seconds"], "first": n / res["first"]["seconds"],
             "rescan": n / res["rescan"]["seconds"], "cli_first": n / res["cli_first"]["seconds"],
             "cli_rescan": n / res["cli_rescan"]["seconds"]}
    res["files_per_s"] = rates
    OUT.mkdir(exist_ok=True)
    (OUT / "scan.json").write_text(json.dumps(res, indent=1))
    print(f"{n:,} demo-corpus files, {os.cpu_count()} cores; load average {res['load_avg_start'][0]:.1f} at the start, "
          f"{res['load_avg_end'][0]:.1f} at the end.\n")
    print("| scan | seconds | files/s | vs (a) |")
    print("|---|---:|---:|---:|")
    rows = [("(a) previous scan: libsndfile headers + hash of every byte, 4 threads "
             f"({res['peer']['files']:,} files)", "peer"),
            (f"(b) `kg.scan`, first scan ({res['first']['workers']} worker processes)", "first"),
            ("(c) `kg.scan`, unchanged rescan (no file opened)", "rescan"),
            ("(d) `klustr scan`, first scan, fresh process", "cli_first"),
            ("(d) `klustr scan`, unchanged rescan, fresh process", "cli_rescan")]
    for name, key in rows:
        print(f"| {name} | {res[key]['seconds']:.2f} | {rates[key]:,.0f} | {rates[key] / rates['peer']:.1f}× |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
