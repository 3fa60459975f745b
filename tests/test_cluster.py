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
    from klustr_gpu.features import extract, load

    proj = _copy(demo_project, tmp_path_factory.mktemp("ref"), "ref")
    summary = extract(proj, sets=SETS, progress=False)
    return summary, {s: load(proj, s) for s in SETS}


def _same(proj, reference):
    from klustr_gpu.features import load

    summary, tables = reference
    for s in SETS:
        got = load(proj, s)
        assert np.array_equal(got.X, tables[s].X), s
        assert list(got.ids) == list(tables[s].ids)
        assert got.X.shape[0] == summary[s]["n_rows"]


def test_local_cluster_equals_in_process(demo_project, tmp_path, client, reference):
    from klustr_gpu.features import extract

    proj = _copy(demo_project, tmp_path, "dask")
    summary = extract(proj, sets=SETS, cluster=client, progress=False)
    _same(proj, reference)
    ref = reference[0]
    assert summary["skipped"] == ref["skipped"]
    for s in SETS:
        assert summary[s]["computed"] == ref[s]["computed"] and summary[s]["n_rows"] == ref[s]["n_rows"]
    again = extract(proj, sets=SETS, cluster=client, progress=False)       # complete: nothing to do
    assert all(again[s]["computed"] == 0 for s in SETS)


def test_killed_worker_still_complete_and_identical(demo_project, tmp_path, client, reference):
    from distributed import Client, LocalCluster

    from klustr_gpu.cluster import fast_malloc
    from klustr_gpu.features import distributed as dist, extract

    proj = _copy(demo_project, tmp_path, "killed")
    # a cluster of its own: the killed worker must not disturb the other tests
    with fast_malloc(), LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.CRITICAL) as cluster, Client(cluster) as c:
        pids = c.run(os.getpid)                     # {worker address: pid}
        killed = []
        real = dist._commit

        def commit_then_kill(res, active):
            real(res, active)
            if not killed:                          # after the first shard: kill a worker holding tasks
                busy = [a for a, keys in c.processing().items() if keys and a in pids]
                assert busy, "no worker was running a task"
                os.kill(pids[busy[0]], signal.SIGKILL)
                killed.append(busy[0])

        dist._commit = commit_then_kill
        try:
            extract(proj, sets=SETS, cluster=c, progress=False)
        finally:
            dist._commit = real
    assert killed
    _same(proj, reference)


def test_cli_features_cluster(demo_project, tmp_path, reference, quiet_dask):
    from klustr_gpu.cli import main

    proj = _copy(demo_project, tmp_path, "cli")
    assert main(["features", str(proj), "--set", ",".join(SETS), "--cluster", "local:1", "-q"]) == 0
    _same(proj, reference)


@pytest.mark.parametrize("spec", ["local:0", "local:x", "gpus", "http://host:8786", "tcp://", ""])
def test_parse_errors(spec):
    with pytest.raises(UsageError) as exc:
        parse(spec)
    msg = str(exc.value)
    assert "\n" not in msg and "--cluster" in msg


def test_parse_forms():
    assert parse("local:4") == ("local", 4)
    assert parse("local") == ("local", None)
    assert parse("cuda") == ("cuda", None)
    assert parse("tcp://10.0.0.1:8786") == ("address", "tcp://10.0.0.1:8786")


@pytest.mark.parametrize("command", ["features", "embed", "map"])
def test_cli_bad_cluster_fails_before_work(demo_project, demo_library, tmp_path, capsys, command):
    from klustr_gpu.cli import main

    proj = _copy(demo_project, tmp_path, "bad")
    args = [command, str(demo_library), "-o", str(proj)] if command == "map" else [command, str(proj)]
    rc = main([*args, "--cluster", "local:two"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert "--cluster" in err and len(err.splitlines()) == 1
    assert not (proj / "features").exists()


def test_frames_on_cluster_is_a_clear_error(demo_project, tmp_path):
    from klustr_gpu.features import extract

    proj = _copy(demo_project, tmp_path, "frames")
    with pytest.raises(UsageError, match="frame mode"):
        extract(proj, sets=["mfcc"], frames=True, cluster="local:1", progress=False)


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
    from klustr_gpu.features.distributed import _check_workers_see

    _check_workers_see(client, [tmp_path])
    with pytest.raises(UsageError, match="cannot see"):
        _check_workers_see(client, [tmp_path / "elsewhere"])
