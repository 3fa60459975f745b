"""Crash safety (issue 5): ``kill -9`` at random points of ``klustr features``, ``klustr embed``
and ``klustr grid --quick``, then a rerun, equals an uninterrupted run and recomputes nothing
finished; a full disk gives a clear error and leaves earlier outputs intact."""
from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest

from klustr_gpu import Config, Project
from klustr_gpu.errors import StoreError
from klustr_gpu import scan

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", NUMBA_NUM_THREADS="1", PYTHONUNBUFFERED="1")
KLUSTR = [sys.executable, "-m", "klustr_gpu.cli"]
SEEDS = [0, 1, 2]
#: embed and grid runs cost more; one seed each by default, KLUSTR_CRASH_SEEDS=3 for more
MORE = SEEDS[:max(1, int(os.environ.get("KLUSTR_CRASH_SEEDS", "1")))]
CFG = Config().updated({"features.sets": ["mfcc"], "reduce.features": "mfcc", "features.device": "cpu", "features.shard_size": 16,
                        "features.batch_size": 8, "reduce.engine": "cpu", "reduce.method": "umap",
                        "score.methods": ["umap", "pca"]})


def klustr(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*KLUSTR, *map(str, args)], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def kill_during(args: list, *, delay: float, ready: Callable[[], bool] = lambda: True,
                timeout: float = 300) -> bool:
    """Start ``klustr ARGS``; once ``ready()`` (polled) sleep ``delay`` s and SIGKILL its whole
    process group. Returns True if it was killed, False if it had already finished."""
    proc = subprocess.Popen([*KLUSTR, *map(str, args)], cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not ready() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        end = time.monotonic() + delay
        while proc.poll() is None and time.monotonic() < end:
            time.sleep(0.01)
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace")
            assert proc.returncode == 0, err[-2000:]
            return False
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        return True
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        proc.stderr.close()


def copy_project(src: Path, dst: Path, *, keep: tuple[str, ...] = ()) -> Project:
    """``src``'s manifest and config (and the named subfolders) in a fresh folder."""
    dst.mkdir(parents=True)
    for name in ("manifest.parquet", "klustr.toml", *keep):
        s = src / name
        (shutil.copytree if s.is_dir() else shutil.copy2)(s, dst / name)
    return Project(dst)


@pytest.fixture(scope="module")
def ref(demo_library, tmp_path_factory) -> dict:
    """The 210-file demo library scanned once, and an uninterrupted features -> embed -> grid
    run (timed, so kills can land anywhere in a run)."""
    root = tmp_path_factory.mktemp("crash")
    base = Project(root / "base")
    base.write_config(CFG)
    scan(demo_library, base, labels=demo_library / "labels.csv", progress=False)
    full = copy_project(base.path, root / "full")
    times = {}
    for stage, args in [("features", ["features", full.path, "-q"]), ("embed", ["embed", full.path, "-q"]),
                        ("grid", ["grid", full.path, "--quick", "-q"])]:
        t0 = time.monotonic()
        r = klustr(*args)
        times[stage] = time.monotonic() - t0
        assert r.returncode == 0, r.stderr[-3000:]
    return {"base": base.path, "full": full, "times": times, "root": root}


def _features(proj: Project) -> np.ndarray:
    from klustr_gpu.features import load

    return load(proj, "mfcc").X


def _ledger(proj: Project) -> dict:
    p = proj.features_root / "mfcc" / "ledger.json"
    return json.loads(p.read_text()) if p.exists() else {"current": None, "gens": {}}


def _no_torn_files(proj: Project) -> None:
    """What a killed run leaves is either complete or an ignorable temporary file; the doctor
    finds no error and --fix removes the temporaries."""
    from klustr_gpu.doctor import check, healthy

    f = check(proj, fix=True)
    assert healthy(f) or all("features mfcc" in x.what or x.level != "error" for x in f), [x.line() for x in f]
    assert not list(proj.path.rglob("*.tmp")) and not list(proj.path.rglob("*.partial"))


@pytest.mark.parametrize("seed", SEEDS)
def test_features_killed_anywhere_resumes_to_the_same_result(ref, tmp_path, seed):
    rng = random.Random(seed)
    proj = copy_project(ref["base"], tmp_path / "p")
    ledger = proj.features_root / "mfcc" / "ledger.json"
    killed = kill_during(["features", proj.path, "-q"], ready=ledger.exists,
                         delay=rng.uniform(0.0, 0.8) * ref["times"]["features"] * 0.5)
    led = _ledger(proj)
    done_rows = 0
    complete = led["current"] is not None
    if led["gens"] and not complete:
        done_rows = max(g["rows_done"] for g in led["gens"].values())
    print(f"features seed {seed}: killed={killed} complete={complete} committed rows={done_rows}")
    _no_torn_files(proj)
    r = klustr("features", proj.path, "-q")
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout)["sets"]["mfcc"]
    n = 210
    if complete:
        assert (summary["computed"], summary["reused"]) == (0, n)
    else:                             # every committed shard reused, only the rest computed
        assert summary["reused"] == done_rows and summary["computed"] == n - done_rows, (killed, summary, done_rows)
    assert np.array_equal(_features(proj), _features(ref["full"]), equal_nan=True)


@pytest.mark.parametrize("seed", MORE)
def test_embed_killed_anywhere_reruns_to_the_same_map(ref, tmp_path, seed):
    rng = random.Random(100 + seed)
    proj = copy_project(ref["full"].path, tmp_path / "p", keep=("features",))
    killed = kill_during(["embed", proj.path, "-q"], delay=rng.uniform(0.3, 1.0) * ref["times"]["embed"])
    names = proj.list_embeddings()
    assert names in ([], ["mfcc-umap"])
    if names:                                   # written at all: written whole
        assert len(proj.read_embedding("mfcc-umap")[0]) == 210
    print(f"embed seed {seed}: killed={killed} written={names}")
    graphs = {p: p.stat().st_mtime_ns for p in (proj.path / "neighbours").glob("*.npz")} \
        if (proj.path / "neighbours").is_dir() else {}
    _no_torn_files(proj)
    r = klustr("embed", proj.path, "-q")
    assert r.returncode == 0, r.stderr[-3000:]
    for p, mtime in graphs.items():             # a finished neighbour graph is reused, not rebuilt
        assert p.stat().st_mtime_ns == mtime, (killed, p)
    got, meta = proj.read_embedding("mfcc-umap")
    want, _ = ref["full"].read_embedding("mfcc-umap")
    pd.testing.assert_frame_equal(got, want)


@pytest.mark.parametrize("seed", MORE)
def test_grid_killed_anywhere_reruns_to_the_same_ranking(ref, tmp_path, seed):
    rng = random.Random(200 + seed)
    proj = copy_project(ref["full"].path, tmp_path / "p", keep=("features",))
    emb = proj.embeddings_dir
    killed = kill_during(["grid", proj.path, "--quick", "-q"],
                         ready=lambda: emb.is_dir() and any(emb.glob("grid-*.parquet")),
                         delay=rng.uniform(0.0, 0.6) * ref["times"]["grid"] * 0.5)
    finished = {p.name: p.stat().st_mtime_ns for p in emb.glob("grid-*.parquet")} if emb.is_dir() else {}
    for name in finished:
        assert len(proj.read_embedding(name[:-len(".parquet")])[0]) == 210
    _no_torn_files(proj)
    r = klustr("grid", proj.path, "--quick", "-q")
    assert r.returncode == 0, r.stderr[-3000:]
    want = json.loads((ref["full"].path / "scores.json").read_text())
    got = json.loads((proj.path / "scores.json").read_text())
    assert got["ranking"] == want["ranking"] and got["default"] == want["default"]
    for name in want["ranking"]:
        a, b = proj.read_embedding(name)[0], ref["full"].read_embedding(name)[0]
        pd.testing.assert_frame_equal(a, b)
        assert got["embeddings"][name]["scores"] == want["embeddings"][name]["scores"]
    print(f"grid seed {seed}: killed={killed} finished before the kill={sorted(finished)}")
    recomputed = [n for n, m in finished.items() if (emb / n).stat().st_mtime_ns != m]
    assert not recomputed, f"maps finished before the kill were recomputed: {recomputed}"


# -- disk full --------------------------------------------------------------------------------
def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_on_replace_is_a_clear_error_and_keeps_outputs(ref, tmp_path, monkeypatch):
    """Every store write (manifest, embedding, text, config) failing with ENOSPC: StoreError
    naming the disk, the earlier file byte-identical, no temporary file left."""
    from klustr_gpu.store import atomic_write_text

    proj = copy_project(ref["full"].path, tmp_path / "p", keep=("embeddings",))
    before = {p: p.read_bytes() for p in proj.path.rglob("*") if p.is_file()}
    df, meta = proj.read_embedding("mfcc-umap")
    man, mmeta = proj.read_manifest(), proj.manifest_metadata()
    monkeypatch.setattr(os, "replace", _enospc)
    for write in (lambda: proj.write_embedding("mfcc-umap", df.iloc[:5], meta),
                  lambda: proj.write_manifest(man.iloc[:3], mmeta),
                  lambda: proj.write_config(Config()),
                  lambda: atomic_write_text(proj.path / "scores.json", "{}"),
                  lambda: proj.set_default_embedding("x")):
        with pytest.raises(StoreError, match="disk full"):
            write()
    monkeypatch.undo()
    after = {p: p.read_bytes() for p in proj.path.rglob("*") if p.is_file()}
    assert after == before


def test_disk_full_text_only_errors_are_recognised(tmp_path, monkeypatch):
    """A library that re-raises ENOSPC without an errno (pyarrow does) is still 'disk full'."""
    import pyarrow.parquet as pq

    from klustr_gpu.store import write_parquet

    def full(*_a, **_k):
        raise OSError("IOError: No space left on device. Detail: [errno 28]")

    monkeypatch.setattr(pq, "write_table", full)
    target = tmp_path / "x.parquet"
    target.write_bytes(b"old")
    with pytest.raises(StoreError, match="disk full"):
        write_parquet(pd.DataFrame({"a": [1]}), target)
    assert target.read_bytes() == b"old" and list(tmp_path.iterdir()) == [target]


def test_disk_full_during_features_then_resume(ref, tmp_path, monkeypatch):
    """ENOSPC at the 7th rename of a features run (zarr chunks and the ledger are renamed into
    place): StoreError, committed shards kept; with space again the rerun reuses them and ends
    equal to an uninterrupted run."""
    from klustr_gpu import compute_features

    proj = copy_project(ref["base"], tmp_path / "p")
    real = os.replace
    calls = {"n": 0}

    def replace(a, b, *rest, **kw):
        calls["n"] += 1
        if calls["n"] >= 7:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(a, b, *rest, **kw)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(StoreError) as info:
        compute_features(proj, CFG, progress=False)
    monkeypatch.undo()
    assert "disk full" in str(info.value) or "No space left" in str(info.value)
    done = max(g["rows_done"] for g in _ledger(proj)["gens"].values())
    summary = compute_features(proj, CFG, progress=False).sets["mfcc"]
    assert summary.reused == done and summary.computed == 210 - done
    assert np.array_equal(_features(proj), _features(ref["full"]), equal_nan=True)


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 4 MiB tmpfs (needs root and mount rights; skipped where unavailable)."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode(errors='replace').strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as fh:
        for size in (65536, 4096, 512, 1):             # down to the last byte
            try:
                while True:
                    fh.write(b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    return filler


def test_real_full_disk_embed_is_a_clear_error(ref, tiny_tmpfs):
    """A project on a genuinely full filesystem: `klustr embed` exits 1 with one line naming
    the full disk; every earlier output is byte-identical; freeing space and rerunning works."""
    proj = copy_project(ref["full"].path, tiny_tmpfs / "p", keep=("features", "embeddings"))
    before = {p: p.read_bytes() for p in proj.path.rglob("*") if p.is_file()}
    filler = _fill(tiny_tmpfs)
    r = klustr("embed", proj.path, "--name", "again", "-q")
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    assert "disk full" in r.stderr and "Traceback" not in r.stderr
    after = {p: p.read_bytes() for p in proj.path.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == {p: b for p, b in before.items() if p.name != ".lock"}
    filler.unlink()
    r = klustr("embed", proj.path, "--name", "again", "-q")
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(proj.read_embedding("again")[0]) == 210


def test_no_room_for_even_a_temporary_file(tmp_path, monkeypatch):
    """ENOSPC already when creating the temporary file (no inodes left): StoreError too."""
    import tempfile

    from klustr_gpu.store import atomic_write_text

    target = tmp_path / "scores.json"
    target.write_text("old")
    monkeypatch.setattr(tempfile, "mkstemp", _enospc)
    with pytest.raises(StoreError, match="disk full"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"


def test_grid_rerun_reuses_only_identical_finished_maps(ref, tmp_path):
    """A grid rerun reuses a map an earlier run finished (file untouched, same scores) and
    recomputes one whose features changed since."""
    from klustr_gpu import grid

    proj = copy_project(ref["full"].path, tmp_path / "p", keep=("features",))
    grid(proj, CFG, quick=True, progress=False)
    emb = proj.embeddings_dir
    first = json.loads((proj.path / "scores.json").read_text())
    stamps = {p.name: p.stat().st_mtime_ns for p in emb.glob("grid-*.parquet")}
    victim = sorted(stamps)[0]
    (emb / victim).unlink()
    time.sleep(0.01)
    grid(proj, CFG, quick=True, progress=False)
    again = json.loads((proj.path / "scores.json").read_text())
    assert again["ranking"] == first["ranking"]
    for name in first["ranking"]:
        assert again["embeddings"][name]["scores"] == first["embeddings"][name]["scores"]
    for name, mtime in stamps.items():
        assert ((emb / name).stat().st_mtime_ns == mtime) == (name != victim), name
    # different features (another seed changes nothing here; a standardisation change does)
    grid(proj, CFG.updated({"reduce.standardize": not CFG.reduce.standardize}), quick=True, progress=False)
    assert all((emb / n).stat().st_mtime_ns != m for n, m in stamps.items() if n != victim)
