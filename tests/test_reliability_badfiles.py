"""Broken libraries (issue 5): corrupted bytes anywhere, files that change or vanish between
scan and decode, folders named like audio, very deep and very wide trees. Every good file is
mapped, every bad one is skipped with a reason; nothing crashes, nothing hangs."""
from __future__ import annotations

import faulthandler
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from badfiles import add_hostile_cases, corrupt, good_files, make_deep_tree, make_mixed_library, make_wide_folder, tone
from klustr_gpu import Config, Project, SkipFile
from klustr_gpu.library import decode
from klustr_gpu import scan
from klustr_gpu.library.decode import check_header, read_info

REPO = Path(__file__).resolve().parents[1]
AUDIO = Config().audio
HANG_S = 60          # any single scan + decode of a small corrupted file taking this long is a hang


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> dict[str, bytes]:
    return good_files(tmp_path_factory.mktemp("originals"))


def _scan_then_decode(path: Path) -> str:
    """What scan and the features stage do with one file: 'ok' or the skip reason."""
    try:
        info = read_info(path)
        check_header(info, AUDIO)
        x = decode(path, AUDIO)
    except SkipFile as exc:
        assert exc.reason and isinstance(exc.reason, str)
        return exc.reason
    assert x.shape == (int(round(AUDIO.clip_seconds * AUDIO.sample_rate)),) and x.dtype == np.float32
    assert np.isfinite(x).all()
    return "ok"


edits = st.lists(st.tuples(st.integers(0, 1 << 20), st.binary(min_size=1, max_size=16)), min_size=1, max_size=6)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["pcm16.wav", "float.wav", "a.flac", "a.aiff", "a.ogg"]), edits=edits,
       truncate=st.one_of(st.none(), st.integers(0, 1 << 20)), header_bias=st.booleans())
def test_random_corruption_gives_a_clip_or_a_reason(originals, tmp_path, name, edits, truncate, header_bias):
    """Random bytes at random offsets (biased towards the header half of the time), optionally
    truncated: scan + decode either give a clip or a SkipFile with a reason, within HANG_S."""
    data = originals[name]
    if header_bias:
        edits = [(off % 64, chunk) for off, chunk in edits]
    path = tmp_path / f"c_{name}"
    path.write_bytes(corrupt(data, edits, truncate))
    faulthandler.dump_traceback_later(HANG_S, exit=True)     # a hang kills the run with a traceback
    try:
        t0 = time.monotonic()
        result = _scan_then_decode(path)
        # what a features worker does with it (frame mode too): a row or a reason, never a raise
        from klustr_gpu.features.decode import Item, decode_task

        for frames in (None, (0.1, 0.05)):
            [got] = decode_task([Item(0, str(path), 0, 2)], AUDIO, frames)
            rows, reason = got.windows, got.reason
            assert (rows is None) != (reason is None)
            assert rows is None or np.isfinite(rows).all()
        assert time.monotonic() - t0 < HANG_S
    finally:
        faulthandler.cancel_dump_traceback_later()
    assert result == "ok" or len(result) > 3


def test_scan_of_corrupted_library_records_every_file(originals, tmp_path):
    """A whole folder of corrupted variants goes through ``scan``: one row each, skipped ones
    with a reason."""
    lib = tmp_path / "lib"
    lib.mkdir()
    rng = np.random.default_rng(0)
    for name, data in originals.items():
        for k in range(8):
            ed = [(int(rng.integers(0, len(data))), rng.bytes(int(rng.integers(1, 12)))) for _ in range(3)]
            (lib / f"{k}_{name}").write_bytes(corrupt(data, ed, int(rng.integers(0, len(data))) if k % 2 else None))
    df = scan(lib, tmp_path / "proj", progress=False).manifest
    assert len(df) == 8 * len(originals)
    bad = df[df.status != "ok"]
    assert (bad.reason.str.len() > 3).all()
    assert set(df.status) <= {"ok", "skipped"}


# -- change between scan and decode -----------------------------------------------------------
def _small_library(root: Path, n: int = 12) -> None:
    root.mkdir(parents=True)
    for i in range(n):
        sf.write(root / f"s{i:02d}.wav", tone(22050, 0.3, 200 + 90 * i), 22050)


def test_files_changing_or_vanishing_after_scan_are_skipped(tmp_path):
    """After the scan: one file deleted, one replaced by garbage, one by a folder, one by a FIFO
    (opening it would block forever), one truncated to its header. The features stage finishes,
    those are skipped with a reason, every other file has features."""
    from klustr_gpu.features import load
    from klustr_gpu import compute_features

    lib = tmp_path / "lib"
    _small_library(lib)
    proj = Project(tmp_path / "proj")
    scan(lib, proj, progress=False)
    (lib / "s00.wav").unlink()
    (lib / "s01.wav").write_bytes(b"garbage" * 100)
    (lib / "s02.wav").unlink()
    (lib / "s02.wav").mkdir()
    (lib / "s03.wav").unlink()
    os.mkfifo(lib / "s03.wav")
    whole = (lib / "s04.wav").read_bytes()
    (lib / "s04.wav").write_bytes(whole[:44])
    summary = compute_features(proj, Config().updated({"features.sets": ["mfcc"], "features.device": "cpu"}), progress=False)
    man = proj.read_manifest().set_index("path")
    expect = {"s00.wav": "vanished", "s01.wav": "", "s02.wav": "not a regular file",
              "s03.wav": "not a regular file", "s04.wav": ""}
    for rel, reason in expect.items():
        assert man.loc[rel, "status"] == "skipped", rel
        assert reason in man.loc[rel, "reason"] and man.loc[rel, "reason"], (rel, man.loc[rel, "reason"])
    table = load(proj, "mfcc")
    assert sorted(table.file_ids) == sorted(man[man.status == "ok"].id)
    assert len(table) == 12 - len(expect) and summary.sets["mfcc"].computed == 12 - len(expect)


HANG_SCRIPT = r"""
import sys, time
import importlib
D = importlib.import_module("klustr_gpu.library.decode")
from klustr_gpu.config import Config
from klustr_gpu import compute_features
from klustr_gpu.store import Project
real = D.decode
def decode(path, *a, **kw):             # one file whose decode never returns (a stuck disk, a codec loop)
    if str(path).endswith("s05.wav"):
        time.sleep(3600)
    return real(path, *a, **kw)
D.decode = decode
cfg = Config().updated({"features.sets": ["mfcc"], "features.device": "cpu"})
importlib.import_module("klustr_gpu.features.decode").DECODE_TIMEOUT_S = 5
if sys.argv[2] == "workers":            # forked decode workers even for 12 files
    importlib.import_module("klustr_gpu.features.run").IN_PROCESS_BELOW = 0
r = compute_features(Project(sys.argv[1]), cfg, progress=False)
print("workers", r.workers)
"""


@pytest.mark.parametrize("where", ["main", "workers"])
def test_a_hanging_decode_is_skipped_not_waited_for(tmp_path, where):
    lib = tmp_path / "lib"
    _small_library(lib)
    proj = Project(tmp_path / "proj")
    scan(lib, proj, progress=False)
    script = tmp_path / "hang.py"
    script.write_text(HANG_SCRIPT)
    try:
        r = subprocess.run([sys.executable, str(script), str(proj.path), where], cwd=REPO, capture_output=True,
                           text=True, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("extract waited for a hanging decode for 20 s")
    assert r.returncode == 0, r.stderr[-2000:]
    assert ("workers 0" in r.stdout) == (where == "main"), r.stdout
    man = proj.read_manifest().set_index("path")
    assert man.loc["s05.wav", "status"] == "skipped" and "time" in man.loc["s05.wav", "reason"]


def test_a_hanging_decode_in_a_worker_thread_is_skipped_not_waited_for(tmp_path, monkeypatch):
    """Dask workers decode in threads, where SIGALRM cannot reach: the decode Dask's shard task
    runs (``decode.ordered(..., workers=0)``), called from a non-main thread, still gives up on
    a hanging file after ``DECODE_TIMEOUT_S`` with the timeout reason; the good files decode, a
    vanished one keeps its own reason."""
    import importlib
    import threading

    from klustr_gpu.features import decode as pipeline

    D = importlib.import_module("klustr_gpu.library.decode")   # the module (the package exports the function)

    lib = tmp_path / "lib"
    _small_library(lib, 6)
    release = threading.Event()
    real = D.decode

    def decode(path, *a, **kw):          # s03.wav never returns (until the test ends)
        if str(path).endswith("s03.wav"):
            release.wait(60)
        return real(path, *a, **kw)

    monkeypatch.setattr(D, "decode", decode)
    monkeypatch.setattr(pipeline, "DECODE_TIMEOUT_S", 0.5)
    paths = [str(lib / f"s{i:02d}.wav") for i in range(6)] + [str(lib / "gone.wav")]
    tasks = [[pipeline.Item(u, p)] for u, p in enumerate(paths[:3])] + [[pipeline.Item(u + 3, p) for u, p
                                                                         in enumerate(paths[3:])]]
    got: dict = {}

    def worker():                        # what distributed.shard_task does, in a worker's thread
        t0 = time.monotonic()
        got["out"] = list(pipeline.ordered(tasks, pipeline.decode_task, (AUDIO, None), 0))
        got["seconds"] = time.monotonic() - t0

    th = threading.Thread(target=worker, name="not-main")
    try:
        th.start()
        th.join(30)
        assert not th.is_alive(), "the decode in a worker thread waited for a hanging file"
    finally:
        release.set()
    out = {Path(d.item.path).name: (d.windows, d.reason) for d in got["out"]}
    assert list(out) == [Path(p).name for p in paths]
    assert out["s03.wav"][0] is None and out["s03.wav"][1] == "decode timed out after 0.5 s"
    assert out["gone.wav"][0] is None and "vanished" in out["gone.wav"][1]
    for name in ("s00.wav", "s01.wav", "s02.wav", "s04.wav", "s05.wav"):
        x, reason = out[name]
        assert reason is None and x.shape == (1, int(AUDIO.sample_rate * AUDIO.clip_seconds)), name
        assert np.isfinite(x).all() and np.abs(x).max() > 0.1, name
    assert got["seconds"] < 15, got["seconds"]


def test_a_hanging_decode_on_a_dask_worker_is_skipped(tmp_path, monkeypatch):
    """End to end through Dask (``compute_features(cluster=...)``, a threaded in-process worker, so the
    patched decode is the one the worker calls): the hanging file is skipped with the timeout
    reason, every other file gets features, and the run does not wait for the hang."""
    pytest.importorskip("distributed")
    import importlib
    import logging
    import threading

    from distributed import Client, LocalCluster

    from klustr_gpu.features import decode as pipeline, load

    from klustr_gpu import compute_features

    lib = tmp_path / "lib"
    _small_library(lib, 8)
    proj = Project(tmp_path / "proj")
    scan(lib, proj, progress=False)
    D = importlib.import_module("klustr_gpu.library.decode")
    release, real = threading.Event(), D.decode

    def decode(path, *a, **kw):
        if str(path).endswith("s05.wav"):
            release.wait(60)
        return real(path, *a, **kw)

    monkeypatch.setattr(D, "decode", decode)
    monkeypatch.setattr(pipeline, "DECODE_TIMEOUT_S", 0.5)
    cfg = Config().updated({"features.sets": ["mfcc"], "features.device": "cpu"})
    t0 = time.monotonic()
    try:
        # the scheduler's HTTP routes on a free loopback port (not 8787, which other runs may hold)
        with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None,
                          scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                          silence_logs=logging.CRITICAL) as cluster, Client(cluster) as client:
            summary = compute_features(proj, cfg, cluster=client, progress=False)
    finally:
        release.set()
    assert time.monotonic() - t0 < 30
    man = proj.read_manifest().set_index("path")
    assert man.loc["s05.wav", "status"] == "skipped"
    assert man.loc["s05.wav", "reason"] == "decode timed out after 0.5 s"
    assert list(summary.skipped.values()) == ["decode timed out after 0.5 s"]
    ok = man[man.status == "ok"]
    assert len(ok) == 7 and sorted(load(proj, "mfcc").file_ids) == sorted(ok.id)


def test_a_name_that_is_not_utf8_is_skipped_not_fatal(tmp_path):
    """One file named in Latin-1 (bytes that are not UTF-8) once made the whole scan fail while
    writing the manifest; now it is a skipped row with a reason and the others are scanned."""
    lib = tmp_path / "lib"
    lib.mkdir()
    sf.write(lib / "good.wav", tone(22050, 0.3), 22050)
    (lib / os.fsdecode(b"caf\xe9.wav")).write_bytes((lib / "good.wav").read_bytes())
    df = scan(lib, tmp_path / "proj", progress=False).manifest.set_index("path")
    assert df.loc["good.wav", "status"] == "ok"
    assert df.loc["caf\ufffd.wav", "status"] == "skipped" and "UTF-8" in df.loc["caf\ufffd.wav", "reason"]
    assert len(Project(tmp_path / "proj").read_manifest()) == 2


# -- odd trees -------------------------------------------------------------------------------
def test_folders_named_like_audio_are_walked_never_listed(tmp_path):
    lib = tmp_path / "lib"
    (lib / "a.wav/b.flac/c.aiff").mkdir(parents=True)
    sf.write(lib / "a.wav/b.flac/c.aiff/real.wav", tone(22050, 0.3), 22050)
    (lib / "empty.ogg").mkdir()
    df = scan(lib, tmp_path / "proj", progress=False).manifest
    assert list(df.path) == ["a.wav/b.flac/c.aiff/real.wav"] and list(df.status) == ["ok"]


def test_very_deep_tree(tmp_path):
    """A file 300 folders down is found, scanned and decoded (no recursion limit, no PATH_MAX
    trouble for a path of ~600 characters)."""
    lib = tmp_path / "lib"
    p = make_deep_tree(lib, 300)
    df = scan(lib, tmp_path / "proj", progress=False).manifest
    assert len(df) == 1 and df.status.iloc[0] == "ok"
    assert df.path.iloc[0] == p.relative_to(lib).as_posix() and df.path.iloc[0].count("/") == 300
    assert decode(p, AUDIO).shape[0] > 0


WIDE_N = int(os.environ.get("KLUSTR_WIDE_N", "100000"))


@pytest.mark.slow
def test_very_wide_folder_scans_in_bounded_time(tmp_path):
    """100,000 files in one folder: listed, header-read and hashed, every one ok, in bounded time."""
    lib = tmp_path / "lib"
    rels = make_wide_folder(lib / "wide", WIDE_N)
    t0 = time.monotonic()
    df = scan(lib, tmp_path / "proj", progress=False).manifest
    seconds = time.monotonic() - t0
    assert len(df) == WIDE_N and (df.status == "ok").all()
    assert df.id.is_unique and set(df.path) == set(rels)
    assert seconds < 240, f"scan of {WIDE_N} files took {seconds:.0f} s"
    shutil.rmtree(lib)


# -- the whole map over a hostile library ------------------------------------------------------
def test_map_over_a_hostile_library_maps_every_good_file(tmp_path, demo_library):
    """Every broken case of the foundation issue plus folders named like audio, a 300-deep file,
    a FIFO, a dangling link, absurd headers, mixed with 40 good demo files: ``klustr map``
    completes; every good file is in the embedding; every bad one skipped with its reason."""
    import klustr_gpu as kg

    lib = tmp_path / "lib"
    expected = make_mixed_library(lib)
    expected.update(add_hostile_cases(lib))
    for f in sorted(demo_library.rglob("*.wav"))[:40]:
        dst = lib / "demo" / f.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, dst)
        expected[f"demo/{f.name}"] = "ok"
    proj = Project(tmp_path / "proj")
    summary = kg.map(lib, proj, label_regex=True, progress=False, device="cpu", engine="cpu")
    man = proj.read_manifest().set_index("path")
    for rel, exp in expected.items():
        assert rel in man.index, rel
        if exp == "ok":
            assert man.loc[rel, "status"] == "ok", (rel, man.loc[rel, "reason"])
        else:
            assert man.loc[rel, "status"] == "skipped", rel
            reason = man.loc[rel, "reason"]
            assert reason and (exp == "*" or exp.lower() in reason.lower()), (rel, reason)
    assert not any(p.endswith(("empty_dir.flac", "nested.wav", "deeper.aiff", "folder.wav")) for p in man.index)
    assert (man[man.status != "ok"].reason.str.len() > 0).all()
    emb, _ = proj.read_embedding()
    assert set(emb.file_id) == set(man[man.status == "ok"].id)
    assert np.isfinite(emb[["x", "y"]].to_numpy()).all()
    assert summary.skipped == int((man.status != "ok").sum()) and summary.points == len(emb)
    assert (proj.path / "map.png").stat().st_size > 0
