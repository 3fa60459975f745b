"""Two runs on one project (issue 5): the second is refused at once with a clear message, by
every stage that writes; a killed holder never leaves a stale lock; never a corrupted store."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from badfiles import small_project
from klustr_gpu import Config, Project
from klustr_gpu.errors import StoreError
from klustr_gpu import scan

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
CFG = Config().updated({"features.sets": ["mfcc"], "reduce.features": "mfcc", "features.device": "cpu", "reduce.engine": "cpu",
                        "reduce.method": "pca", "score.methods": ["pca"]})
HOLD = ("import sys, time\nfrom klustr_gpu.store import Project\nwith Project(sys.argv[1]).lock(sys.argv[2]):\n"
        "    print('held', flush=True)\n    time.sleep(300)\n")


@pytest.fixture(scope="module")
def small(demo_library, tmp_path_factory) -> tuple[Path, Path]:
    """24 demo files: scanned, mfcc features, a PCA embedding (the default)."""
    lib, proj = small_project(demo_library, tmp_path_factory.mktemp("lock"), 24, CFG)
    Project(proj).set_default_embedding("mfcc-pca")
    return lib, proj


class Holder:
    """A process holding ``project``'s lock until killed."""

    def __init__(self, project: Path, what: str = "features"):
        self.proc = subprocess.Popen([sys.executable, "-c", HOLD, str(project), what], stdout=subprocess.PIPE,
                                     text=True, cwd=REPO, env=ENV)
        assert self.proc.stdout.readline().strip() == "held"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc.stdout.close()


def _snapshot(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != ".lock"}


def _stages(lib: Path):
    from klustr_gpu import compute_features
    from klustr_gpu import embed
    from klustr_gpu import render_map
    from klustr_gpu import grid, score_maps

    return {
        "scan": lambda p: scan(lib, p, progress=False),
        "features": lambda p: compute_features(p, CFG.updated({"features.sets": ["mfcc", "stft"]}), progress=False),
        "embed": lambda p: embed(p, CFG, name="again", progress=False),
        "grid": lambda p: grid(p, CFG, quick=True, progress=False),
        "render": lambda p: render_map(p, progress=False),
        "score": lambda p: score_maps(p, progress=False),
    }


@pytest.mark.parametrize("stage", [
    "scan", "features", "embed", "grid", "render",
    "score",
])
def test_every_writing_stage_refuses_a_locked_project(small, tmp_path, stage):
    lib, base = small
    proj = Project(tmp_path / "p")
    shutil.copytree(base, proj.path)
    before = _snapshot(proj.path)
    holder = Holder(proj.path, "embed")
    try:
        with pytest.raises(StoreError, match=rf"in use by pid {holder.proc.pid} \(embed\).*wait for it"):
            _stages(lib)[stage](proj)
        assert _snapshot(proj.path) == before             # refused before writing anything
    finally:
        holder.kill()


def test_cli_refusal_is_one_clear_line(small, tmp_path):
    lib, base = small
    proj = tmp_path / "p"
    shutil.copytree(base, proj)
    holder = Holder(proj, "grid")
    try:
        r = subprocess.run([sys.executable, "-m", "klustr_gpu.cli", "scan", str(lib), "-o", str(proj), "-q"],
                           cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    finally:
        holder.kill()
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("klustr: error: ") and f"pid {holder.proc.pid} (grid)" in lines[0]
    assert "Traceback" not in r.stderr


def test_a_killed_holder_leaves_no_stale_lock(small, tmp_path):
    lib, base = small
    proj = Project(tmp_path / "p")
    shutil.copytree(base, proj.path)
    holder = Holder(proj.path)
    holder.kill()                                          # SIGKILL: no cleanup ran
    assert (proj.path / ".lock").exists()                  # the file stays, the lock does not
    with proj.lock("test"):
        pass
    df = scan(lib, proj, progress=False).manifest          # and a real stage runs at once
    assert len(df) == 24


FORK_HOLD = ("import os, sys, time\nfrom klustr_gpu.store import Project\nwith Project(sys.argv[1]).lock('features'):\n"
             "    pid = os.fork()\n    if pid == 0:\n        time.sleep(300)\n        os._exit(0)\n"
             "    print(pid, flush=True)\n    time.sleep(300)\n")


def test_a_forked_worker_of_a_killed_holder_does_not_keep_the_lock(tmp_path):
    """Scan and decode workers are forks of the process holding the lock; an ``flock`` belongs
    to the open file the fork shares. The holder is killed while its worker lives on: the
    project can be locked at once."""
    proj = Project(tmp_path / "p").ensure()
    holder = subprocess.Popen([sys.executable, "-c", FORK_HOLD, str(proj.path)], stdout=subprocess.PIPE, text=True,
                              cwd=REPO, env=ENV)
    child = int(holder.stdout.readline())
    try:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        os.kill(child, 0)                                  # the worker is still alive
        with proj.lock("test"):
            pass
    finally:
        os.kill(child, signal.SIGKILL)
        holder.stdout.close()


def test_lock_is_reentrant_in_a_thread_exclusive_across_threads(tmp_path):
    proj = Project(tmp_path / "p")
    errors: list[BaseException] = []

    def other():
        try:
            with proj.lock("thread"):
                pass
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread
            errors.append(exc)

    with proj.lock("outer"):
        with proj.lock("inner"):                            # a stage calling a stage: one lock
            t = threading.Thread(target=other)
            t.start()
            t.join(30)
        assert len(errors) == 1 and isinstance(errors[0], StoreError)
    with proj.lock("again"):                                # released after the outer exits
        pass


def test_two_features_runs_at_once_never_corrupt_the_store(small, tmp_path):
    """Two `klustr features` started together: one finishes, the other is refused (or finds
    nothing left to do); the store equals a single run's."""
    from klustr_gpu.features import load
    from klustr_gpu import compute_features

    lib, base = small
    proj = Project(tmp_path / "p")
    proj.path.mkdir()
    for name in ("manifest.parquet", "klustr.toml"):
        shutil.copy2(base / name, proj.path / name)
    cmd = [sys.executable, "-m", "klustr_gpu.cli", "features", str(proj.path), "-q"]
    procs = [subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes in ([0, 0], [0, 1]), [o[1][-1500:] for o in outs]
    for p, (out, err) in zip(procs, outs):
        if p.returncode == 1:
            # "by pid N", or "by another process" when it is refused in the instant between the
            # holder's flock and its writing its pid into the lock file (a courtesy only)
            assert re.search(r"is in use by (pid \d+|another process)", err) and "Traceback" not in err
    got = load(proj, "mfcc")
    want = load(Project(base), "mfcc")
    assert list(got.ids) == list(want.ids)
    np.testing.assert_allclose(got.X, want.X, rtol=1e-4, atol=1e-5)
    again = compute_features(proj, CFG, progress=False).sets["mfcc"]
    assert again.computed == 0                              # complete and consistent


@pytest.mark.parametrize("args", [
    ["embed", "{p}", "--method", "tsne"],
    ["grid", "{p}", "--quick", "-c", "reduce.perplexity=12"],
    ["scan", "{lib}", "-o", "{p}", "-c", "audio.clip_seconds=0.3"],
])
def test_a_refused_cli_run_leaves_the_config_alone(small, tmp_path, args):
    lib, base = small
    proj = tmp_path / "p"
    shutil.copytree(base, proj)
    before = (proj / "klustr.toml").read_bytes()
    holder = Holder(proj, "features")
    try:
        r = subprocess.run([sys.executable, "-m", "klustr_gpu.cli", *[a.format(p=proj, lib=lib) for a in args], "-q"],
                           cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    finally:
        holder.kill()
    assert r.returncode == 1 and "in use" in r.stderr, r.stderr[-2000:]
    assert (proj / "klustr.toml").read_bytes() == before
