"""Extraction on a Dask cluster (``--cluster``): same store as in-process, survives a killed worker."""
from __future__ import annotations

import logging
import os
import shutil
import signal

import numpy as np
import pytest

from klustr_gpu.cluster import parse
from klustr_gpu.errors import UsageError

distributed = pytest.importorskip("distributed")

# a LocalCluster that loses a worker warns about it (and about its own shutdown): expected here
pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning:distributed"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning:distributed"),
    pytest.mark.filterwarnings("ignore:.*[Ww]orker.*:UserWarning"),
    pytest.mark.filterwarnings("ignore:Port .* is already in use:UserWarning"),
]

SETS = ["mfcc", "stft"]
SHARD = 16          # 210 files -> 14 shards, so a killed worker lands mid-run


@pytest.fixture(scope="module")
def quiet_dask():
    loggers = [logging.getLogger(n) for n in ("distributed", "distributed.nanny", "distributed.scheduler",
                                              "distributed.worker", "distributed.core")]
    before = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    yield
    for lg, lvl in zip(loggers, before):
        lg.setLevel(lvl)


@pytest.fixture(scope="module")
def client(quiet_dask):
    from distributed import Client, LocalCluster

    from klustr_gpu.cluster import fast_malloc

    with fast_malloc():
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                               silence_logs=logging.CRITICAL)
    with Client(cluster) as c:
        yield c
    cluster.close()


def _copy(demo_project, tmp_path, name):
    from klustr_gpu.config import Config
    from klustr_gpu.store import Project

    dst = tmp_path / name
    shutil.copytree(demo_project, dst)
    proj = Project(dst)
    cfg = proj.load_config(Config()).updated({"features.shard_size": SHARD, "features.device": "cpu"})
    proj.write_config(cfg)
    return dst


@pytest.fixture(scope="module")
def reference(demo_project, tmp_path_factory):
    """The in-process run."""
    from klustr_gpu.features import load
    from klustr_gpu import compute_features

    proj = _copy(demo_project, tmp_path_factory.mktemp("ref"), "ref")
    summary = compute_features(proj, sets=SETS, progress=False)
    return summary, {s: load(proj, s) for s in SETS}


def _same(proj, reference):
    from klustr_gpu.features import load

    summary, tables = reference
    for s in SETS:
        got = load(proj, s)
        assert np.array_equal(got.X, tables[s].X), s
        assert list(got.ids) == list(tables[s].ids)
        assert got.X.shape[0] == summary.sets[s].n_rows


def test_local_cluster_equals_in_process(demo_project, tmp_path, client, reference):
    from klustr_gpu import compute_features

    proj = _copy(demo_project, tmp_path, "dask")
    summary = compute_features(proj, sets=SETS, cluster=client, progress=False)
    _same(proj, reference)
    ref = reference[0]
    assert summary.skipped == ref.skipped
    for s in SETS:
        assert summary.sets[s].computed == ref.sets[s].computed and summary.sets[s].n_rows == ref.sets[s].n_rows
    again = compute_features(proj, sets=SETS, cluster=client, progress=False)       # complete: nothing to do
    assert all(again.sets[s].computed == 0 for s in SETS)


def test_killed_worker_still_complete_and_identical(demo_project, tmp_path, client, reference):
    from distributed import Client, LocalCluster

    from klustr_gpu.cluster import fast_malloc
    from klustr_gpu.features import distributed as dist
    from klustr_gpu import compute_features

    proj = _copy(demo_project, tmp_path, "killed")
    # a cluster of its own: the killed worker must not disturb the other tests
    with fast_malloc(), LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.CRITICAL) as cluster, Client(cluster) as c:
        pids = c.run(os.getpid)                     # {worker address: pid}
        killed = []
        real = dist.commit_clips

        def commit_then_kill(res, active):
            real(res, active)
            if not killed:                          # after the first shard: kill a worker holding tasks
                busy = [a for a, keys in c.processing().items() if keys and a in pids]
                assert busy, "no worker was running a task"
                os.kill(pids[busy[0]], signal.SIGKILL)
                killed.append(busy[0])

        dist.commit_clips = commit_then_kill
        try:
            compute_features(proj, sets=SETS, cluster=c, progress=False)
        finally:
            dist.commit_clips = real
    assert killed
    _same(proj, reference)


def test_cli_features_cluster(demo_project, tmp_path, reference, quiet_dask):
    from klustr_gpu.cli import main

    proj = _copy(demo_project, tmp_path, "cli")
    assert main(["features", str(proj), "--set", ",".join(SETS), "--cluster", "local:1", "-q"]) == 0
    _same(proj, reference)


@pytest.mark.parametrize("spec", ["local:0", "local:x", "gpus", "http://host:8786", "tcp://", ""])
def test_parse_errors(spec):
    from klustr_gpu.cli import translate

    with pytest.raises(UsageError) as exc:
        parse(spec)
    msg = str(exc.value)
    assert "\n" not in msg and exc.value.param == "cluster" and msg.startswith("cluster")
    assert translate(msg).startswith("--cluster")               # the command line's words for it


def test_parse_forms():
    assert parse("local:4") == ("local", 4)
    assert parse("local") == ("local", None)
    assert parse("cuda") == ("cuda", None)
    assert parse("tcp://10.0.0.1:8786") == ("address", "tcp://10.0.0.1:8786")


@pytest.mark.parametrize("command", ["features", "embed", "map", "render"])
def test_cli_bad_cluster_fails_before_work(demo_project, demo_library, tmp_path, capsys, command):
    from klustr_gpu.cli import main

    proj = _copy(demo_project, tmp_path, "bad")
    args = [command, str(demo_library), "-o", str(proj)] if command == "map" else [command, str(proj)]
    rc = main([*args, "--cluster", "local:two"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert "--cluster" in err and len(err.splitlines()) == 1
    assert not (proj / "features").exists() and not (proj / "map.png").exists()


@pytest.fixture(scope="module")
def long_project(tmp_path_factory):
    """A few long-ish recordings for frame mode: 12 s and 7 s (two rates, read in blocks spread
    over shards), one whose first block holds a NaN (skipped at decode; its later blocks, in
    later shards, are dropped) and a 0.2 s one."""
    import soundfile as sf

    from klustr_gpu import scan

    base = tmp_path_factory.mktemp("frames")
    lib = base / "lib"
    lib.mkdir()
    rng = np.random.default_rng(5)
    for name, sr, sec in (("a_long.wav", 22050, 12.0), ("b_long.flac", 44100, 7.0), ("c_nan.wav", 22050, 8.0)):
        t = np.arange(int(sec * sr)) / sr
        x = 0.3 * np.sin(2 * np.pi * (150 + 40 * t) * t) * (1 + np.sin(2 * np.pi * 0.7 * t)) / 2
        x = (x + 0.05 * rng.standard_normal(t.size) * (np.sin(2 * np.pi * 3 * t) > 0.6)).astype(np.float32)
        if name.startswith("c_"):
            x[100] = np.nan
        sf.write(lib / name, x, sr, subtype="FLOAT" if name.endswith(".wav") else "PCM_16")
    sf.write(lib / "d_short.wav", (0.5 * np.sin(2 * np.pi * 440 * np.arange(4410) / 22050)).astype(np.float32), 22050)
    proj = base / "project"
    scan(lib, proj, progress=False)
    return proj


FRAMES = dict(frames=True, window=0.5, hop=0.25, batch_size=16, workers=0, device="cpu")


def _frame_copy(src, tmp_path, name):
    from klustr_gpu.config import Config
    from klustr_gpu.store import Project

    dst = tmp_path / name
    shutil.copytree(src, dst)
    # blocks of 16 windows, shards of 16: 5 shards; c_nan.wav's two blocks land in two shards
    Project(dst).write_config(Config().updated({"features.shard_size": 16}))
    return dst


def test_frame_mode_on_cluster_equals_in_process(long_project, tmp_path, client):
    from klustr_gpu.features import load
    from klustr_gpu import compute_features

    ref = _frame_copy(long_project, tmp_path, "ref")
    dask = _frame_copy(long_project, tmp_path, "dask")
    want = compute_features(ref, sets=SETS, progress=False, **FRAMES)
    got = compute_features(dask, sets=SETS, cluster=client, progress=False, **FRAMES)
    assert got.frames and got.skipped == want.skipped and len(got.skipped) == 1
    for s in SETS:
        assert got.sets[s].computed == want.sets[s].computed and got.sets[s].n_rows == want.sets[s].n_rows == 47 + 27 + 1
        a, b = load(ref, s, frames=True), load(dask, s, frames=True)
        assert list(b.ids) == list(a.ids) and np.array_equal(b.starts, a.starts)
        assert np.array_equal(b.X, a.X), s
    again = compute_features(dask, sets=SETS, cluster=client, progress=False, **FRAMES)     # complete: nothing to do
    assert all(again.sets[s].computed == 0 for s in SETS)


@pytest.mark.parametrize("method", ["umap", "tsne"])
def test_sampled_embedding_placed_on_workers_equals_in_process(client, method):
    from klustr_gpu.reduce.embed import fit_embedding

    rng = np.random.default_rng(0)
    X = (rng.normal(size=(400, 6)) + np.repeat(np.eye(6)[:4] * 6, 100, axis=0)).astype(np.float32)
    kw = dict(engine="cpu", seed=0, sample_threshold=150, sample_size=150, transform_batch=60)
    here = fit_embedding(X, method, **kw)
    there = fit_embedding(X, method, client=client, **kw)     # 250 points in 5 batches on 2 workers
    # the same placement; only float noise may differ (thread counts differ between the processes)
    np.testing.assert_allclose(here, there, rtol=0, atol=1e-4 * float(np.ptp(here)))


def test_workers_that_cannot_see_the_project_are_a_clear_error(client, tmp_path):
    from klustr_gpu.cluster import check_workers_see

    check_workers_see(client, [tmp_path])
    with pytest.raises(UsageError, match="cannot see"):
        check_workers_see(client, [tmp_path / "elsewhere"])


# -- render --cluster ---------------------------------------------------------------------------
def _fake_embedding(proj, *, label_column: bool, row_group_size: int = 100):
    """3 points per ok file (frame-like ids), clusters per label, a point of an unknown file and
    one with a NaN coordinate (both dropped); written in row groups of ``row_group_size`` so the
    Dask DataFrame has several partitions."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from klustr_gpu.store import Project

    p = Project(proj)
    man = p.read_manifest()
    man = man[man["status"] == "ok"].reset_index(drop=True)
    rng = np.random.default_rng(7)
    labels = sorted(man["label"].dropna().unique())
    fid = np.repeat(man["id"].to_numpy(), 3)
    lab = np.repeat(man["label"].to_numpy(), 3)
    angle = np.array([2 * np.pi * labels.index(v) / len(labels) if v in labels else 0.0 for v in lab])
    df = pd.DataFrame({
        "id": [f"{f}:{i}" for f, i in zip(fid, np.tile(np.arange(3), len(man)))],
        "file_id": fid,
        "start": np.tile(np.arange(3) * 0.25, len(man)),
        "x": 5 * np.cos(angle) + rng.normal(0, 0.8, len(fid)),
        "y": 5 * np.sin(angle) + rng.normal(0, 0.8, len(fid)),
        "cluster": [labels.index(v) if v in labels and i % 5 else -1 for i, v in enumerate(lab)],
    })
    if label_column:
        df["label"] = [None if i % 7 == 0 else v for i, v in enumerate(lab)]
    df.loc[4, "file_id"] = "no-such-file"
    df.loc[9, "x"] = np.nan
    path = p.write_embedding("fake", df, {"method": "fake"})
    table = pq.read_table(path)
    pq.write_table(table, path, row_group_size=row_group_size)        # keeps the schema metadata
    assert pq.ParquetFile(path).num_row_groups > 3
    p.set_default_embedding("fake")


def _pixels(path):
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


@pytest.mark.parametrize("by,label_column", [("label", False), ("label", True), ("cluster", False)])
def test_render_on_cluster_equals_in_process(demo_project, tmp_path, client, by, label_column):
    from klustr_gpu import render_map

    here, there = (_copy(demo_project, tmp_path, n) for n in ("here", "there"))
    for proj in (here, there):
        _fake_embedding(proj, label_column=label_column)
    a = render_map(here, by=by, width=700, height=500, progress=False)
    b = render_map(there, by=by, width=700, height=500, progress=False, cluster=client)
    assert b.n_points == a.n_points == 3 * 210 - 2
    assert np.array_equal(_pixels(b.png), _pixels(a.png))
    # map.html (630 points: interactive) is built here from pandas either way
    assert b.html.read_text() == a.html.read_text()


def test_cli_render_cluster_local2_equals_in_process(demo_project, tmp_path, quiet_dask):
    from klustr_gpu.cli import main

    here, there = (_copy(demo_project, tmp_path, n) for n in ("here", "there"))
    for proj in (here, there):
        _fake_embedding(proj, label_column=False)
    assert main(["render", str(here), "-q"]) == 0
    assert main(["render", str(there), "--cluster", "local:2", "-q"]) == 0
    assert np.array_equal(_pixels(there / "map.png"), _pixels(here / "map.png"))
