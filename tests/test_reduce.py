"""Reduction: preprocessing, neighbour graphs, engines, t-SNE / UMAP quality, bad input."""
from __future__ import annotations

import os

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.manifold import trustworthiness
from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors
from sklearn.model_selection import cross_val_score

from klustr_gpu.errors import EngineUnavailable, UsageError
from klustr_gpu.reduce import (cached_knn, fit_embedding, knn_graph, make_reducer, preprocess,
                               resolve_engine, slice_knn)
from klustr_gpu.reduce import engines, neighbours


def knn_accuracy(Y, labels, k=10) -> float:
    return float(cross_val_score(KNeighborsClassifier(k), Y, labels, cv=5).mean())


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    keep = np.random.default_rng(0).permutation(len(y))[:700]
    return X[keep].astype(np.float32), y[keep]


@pytest.fixture(scope="module")
def digits_pre(digits):
    X, y = digits
    Xp = preprocess(X, pca_components=20)
    return Xp, y, knn_graph(Xp, 90)


# -- preprocessing -----------------------------------------------------------------------------
def test_preprocess_standardises_and_drops_constant_columns():
    rng = np.random.default_rng(1)
    X = rng.normal(3.0, 5.0, size=(200, 6)).astype(np.float32)
    X[:, 2] = 7.0
    Z = preprocess(X)
    assert Z.shape == (200, 5) and Z.dtype == np.float32
    np.testing.assert_allclose(Z.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(Z.std(axis=0), 1, atol=1e-4)


def test_preprocess_pca_matches_sklearn(digits):
    from sklearn.decomposition import PCA
    X, _ = digits
    Z = preprocess(X, pca_components=5)
    S = preprocess(X)
    ref = PCA(5).fit_transform(S)
    assert Z.shape == (len(X), 5)
    for j in range(5):  # same components up to sign
        assert abs(np.corrcoef(Z[:, j], ref[:, j])[0, 1]) > 0.999


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_is_a_clear_error(bad):
    X = np.ones((10, 3), np.float32)
    X[4, 1] = bad
    with pytest.raises(UsageError, match="NaN or infinite values in 1 of 10 rows"):
        preprocess(X)


def test_all_constant_columns_give_an_empty_feature_space_and_a_trivial_map():
    X = np.ones((20, 4), np.float32)
    Z = preprocess(X)
    assert Z.shape == (20, 0)
    Y = fit_embedding(Z, "umap")
    assert Y.shape == (20, 2) and np.all(Y == 0)


@pytest.mark.parametrize("X", [np.zeros((0, 3)), np.zeros((5, 0)), np.array(["a", "b"])])
def test_empty_or_non_numeric_input_is_a_usage_error(X):
    with pytest.raises(UsageError):
        preprocess(X)


# -- neighbour graph ---------------------------------------------------------------------------
@pytest.mark.parametrize("metric", ["euclidean", "cosine", "correlation"])
def test_knn_graph_is_exact_and_excludes_self(digits_pre, metric):
    Xp = digits_pre[0]
    idx, dist = knn_graph(Xp, 10, metric=metric)
    assert idx.shape == dist.shape == (len(Xp), 10)
    assert not np.any(idx == np.arange(len(Xp))[:, None])
    assert np.all(np.diff(dist, axis=1) >= -1e-5)
    ref_d, ref_i = NearestNeighbors(n_neighbors=11, metric=metric).fit(Xp).kneighbors(Xp)
    np.testing.assert_allclose(dist, ref_d[:, 1:], atol=2e-3)
    assert np.mean(idx == ref_i[:, 1:]) > 0.98   # ties may swap


@pytest.mark.parametrize("metric", ["euclidean", "correlation"])
def test_knn_graph_annoy_path_has_high_recall_and_is_seeded(digits_pre, monkeypatch, metric):
    Xp = digits_pre[0]
    exact = knn_graph(Xp, 10, metric=metric)
    monkeypatch.setattr(neighbours, "EXACT_CPU_MAX", 10)
    idx, dist = knn_graph(Xp, 10, metric=metric, seed=0)
    assert not np.any(idx == np.arange(len(Xp))[:, None])
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(idx, exact[0])])
    assert recall > 0.95
    assert np.abs(dist - exact[1]).mean() < 0.05 * exact[1].mean()
    np.testing.assert_array_equal(idx, knn_graph(Xp, 10, metric=metric, seed=0)[0])


def test_knn_graph_small_inputs_and_duplicates():
    with pytest.raises(UsageError, match="at least 2 points"):
        knn_graph(np.zeros((1, 3)), 5)
    idx, dist = knn_graph(np.random.default_rng(0).normal(size=(4, 2)), 15)
    assert idx.shape == (4, 3)                       # k clamped to n - 1
    dup = np.repeat(np.arange(5, dtype=np.float32)[:, None], 4, axis=0)  # each point 4 times
    idx, dist = knn_graph(dup, 3)
    assert not np.any(idx == np.arange(len(dup))[:, None])
    assert np.all(dist == 0)


def test_cached_knn_reuses_and_slices(tmp_path, digits_pre):
    Xp = digits_pre[0]
    a = cached_knn(tmp_path, Xp, 30, metric="euclidean", tag="mfcc")
    files = list(tmp_path.glob("mfcc-euclidean-*-k30.npz"))
    assert len(files) == 1
    b = cached_knn(tmp_path, Xp, 12)                 # served by the k=30 graph
    assert len(list(tmp_path.glob("*.npz"))) == 1
    np.testing.assert_array_equal(b[0], a[0][:, :12])
    np.testing.assert_array_equal(*[slice_knn(g, 5)[1] for g in (a, b)])
    cached_knn(tmp_path, Xp + 1.0, 12)               # other data: another graph
    assert len(list(tmp_path.glob("*.npz"))) == 2
    with pytest.raises(UsageError, match="k=12"):
        slice_knn(b, 20)


# -- engines -----------------------------------------------------------------------------------
def test_resolve_engine_rules(monkeypatch):
    assert resolve_engine("cpu") == "cpu"
    monkeypatch.setattr(engines, "has_cuda", lambda: False)
    assert resolve_engine("auto") == "cpu"
    with pytest.raises(EngineUnavailable) as err:
        resolve_engine("cuml")
    assert "\n" not in str(err.value) and "cuml" in str(err.value)
    with pytest.raises(UsageError, match="unknown engine"):
        resolve_engine("tpu")
    monkeypatch.setattr(engines, "has_cuda", lambda: True)
    monkeypatch.setattr(engines, "installed", lambda *names: "cuml" not in names)
    assert resolve_engine("auto") == "torchdr"
    monkeypatch.setattr(engines, "installed", lambda *names: True)
    assert resolve_engine("auto") == "cuml"
    monkeypatch.setattr(engines, "installed", lambda *names: False)
    assert resolve_engine("auto") == "cpu"
    with pytest.raises(EngineUnavailable, match="pip install"):
        resolve_engine("torchdr")


def test_make_reducer_follows_the_estimator_contract():
    r = make_reducer("umap", "cpu", n_neighbors=7, seed=3)
    assert r.n_neighbors == 7 and r.random_state == 3 and not hasattr(r, "embedding_")
    assert "n_neighbors=7" in repr(r)
    params = r.get_params()
    r.fit(np.random.default_rng(0).normal(size=(30, 3)))
    assert r.get_params() == params and r.embedding_.shape == (30, 2)
    from sklearn.base import clone
    from klustr_gpu.reduce import cuml as cuml_engine
    for est in (r, cuml_engine.CumlTSNE(perplexity=5, random_state=3)):   # scikit-learn's clone
        twin = clone(est)
        assert type(twin) is type(est) and twin.get_params() == est.get_params()
    with pytest.raises(UsageError, match="perplexity"):
        make_reducer("umap", "cpu", perplexity=30)
    with pytest.raises(UsageError, match="unknown method"):
        make_reducer("mds", "cpu")
    with pytest.raises(UsageError, match="does not take n_neigbors"):
        fit_embedding(np.zeros((10, 2)), "umap", n_neigbors=5)
    with pytest.raises(UsageError, match="does not take perplexity") as err:     # a t-SNE argument to UMAP
        fit_embedding(np.zeros((10, 2)), "umap", perplexity=30)
    assert err.value.param == "perplexity"


@pytest.mark.parametrize("engine", ["cpu", pytest.param("torchdr", marks=pytest.mark.skipif(
    not engines.installed("torchdr"), reason="TorchDR not installed"))])
def test_pca_transform_is_the_linear_map_of_its_fit(engine):
    """PCA places new points by its own projection (not by neighbours, as t-SNE and UMAP do):
    a point's coordinates are the same whether it was in the fit or transformed later, and
    a map wider than the features is padded with zeros."""
    X = np.random.default_rng(0).normal(size=(200, 6)).astype(np.float32)
    pca = make_reducer("pca", engine).fit(X[:150])
    np.testing.assert_allclose(pca.transform(X[:150]), pca.embedding_, atol=1e-4)
    manual = (X[150:] - pca.mean_) @ np.asarray(pca.components_, dtype=np.float64).T
    np.testing.assert_allclose(pca.transform(X[150:]), manual, atol=1e-4)
    wide = make_reducer("pca", engine, n_components=8).fit(X)
    assert wide.embedding_.shape == (200, 8) and not wide.embedding_[:, 6:].any()


# -- quality, reuse, determinism ---------------------------------------------------------------
@pytest.mark.parametrize("method", ["tsne", "umap"])
def test_quality_and_determinism(digits_pre, method):
    Xp, y, knn = digits_pre
    Y1 = fit_embedding(Xp, method, knn=knn, seed=0)
    assert Y1.shape == (len(Xp), 2) and Y1.dtype == np.float32
    assert knn_accuracy(Y1, y) > 0.9
    assert trustworthiness(Xp, Y1, n_neighbors=10) > 0.9
    Y2 = fit_embedding(Xp, method, knn=knn, seed=0)
    np.testing.assert_array_equal(Y1, Y2)           # same seed, same engine -> same map
    if method == "umap":
        Y3 = fit_embedding(Xp, method, seed=0)      # graph computed inside = the same graph
        np.testing.assert_array_equal(Y1, Y3)


def test_umap_starts_from_pca_above_the_spectral_limit(digits_pre, monkeypatch):
    """init="auto": spectral on small maps, PCA above SPECTRAL_INIT_MAX points (ARPACK's cost
    grows fastest there); the map stays as good, and seeded runs stay identical."""
    from klustr_gpu.reduce import cpu

    Xp, y, knn = digits_pre
    monkeypatch.setattr(cpu, "SPECTRAL_INIT_MAX", 100)
    Y_auto = fit_embedding(Xp, "umap", knn=knn, seed=0)
    Y_pca = fit_embedding(Xp, "umap", knn=knn, seed=0, init="pca")
    np.testing.assert_array_equal(Y_auto, Y_pca)
    assert knn_accuracy(Y_auto, y) > 0.9
    monkeypatch.setattr(cpu, "SPECTRAL_INIT_MAX", 10**9)
    Y_spectral = fit_embedding(Xp, "umap", knn=knn, seed=0)
    np.testing.assert_array_equal(Y_spectral, fit_embedding(Xp, "umap", knn=knn, seed=0, init="spectral"))
    assert not np.array_equal(Y_spectral, Y_pca)


def test_pca_method(digits_pre):
    Xp, y, _ = digits_pre
    Y = fit_embedding(Xp, "pca")
    assert Y.shape == (len(Xp), 2)
    assert Y[:, 0].var() >= Y[:, 1].var()


@pytest.mark.parametrize("search", ["exact", "annoy"])
def test_sample_and_transform_above_threshold(digits_pre, monkeypatch, search):
    Xp, y, _ = digits_pre
    if search == "annoy":
        monkeypatch.setattr(neighbours, "EXACT_CPU_MAX", 10)
    Y = fit_embedding(Xp, "umap", seed=0, sample_threshold=400, sample_size=350, n_epochs=100)
    assert Y.shape == (len(Xp), 2) and np.isfinite(Y).all()
    assert knn_accuracy(Y, y) > 0.85


@pytest.mark.parametrize("method", ["tsne", "umap", "pca"])
@pytest.mark.parametrize("n", [1, 3, 8])
def test_tiny_inputs_are_handled(method, n):
    X = np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32)
    Y = fit_embedding(X, method, **{"tsne": {"perplexity": 30}, "umap": {"n_neighbors": 15}, "pca": {}}[method])
    assert Y.shape == (n, 2) and np.isfinite(Y).all()


@pytest.mark.parametrize("method", ["tsne", "umap"])
def test_duplicate_points_are_handled(method):
    rng = np.random.default_rng(0)
    X = np.repeat(rng.normal(size=(20, 5)).astype(np.float32), 6, axis=0)   # 120 rows, 20 distinct
    Y = fit_embedding(X, method, **{"tsne": {"perplexity": 10}, "umap": {"n_neighbors": 10}}[method])
    assert Y.shape == (120, 2) and np.isfinite(Y).all()


def test_bad_parameters_are_usage_errors(digits_pre):
    Xp = digits_pre[0]
    with pytest.raises(UsageError, match="n_neighbors"):
        fit_embedding(Xp, "umap", n_neighbors=1)
    with pytest.raises(UsageError, match="perplexity"):
        fit_embedding(Xp, "tsne", perplexity=0)
    with pytest.raises(UsageError, match="rows"):
        fit_embedding(Xp, "umap", knn=knn_graph(Xp[:50], 5))


def test_numba_cache_dir_is_set_only_when_unset(monkeypatch, tmp_path):
    import numba
    from klustr_gpu.reduce import _numba

    monkeypatch.setattr(numba.config, "CACHE_DIR", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    _numba.configure()
    import os
    assert os.environ["NUMBA_CACHE_DIR"] == str(tmp_path / "klustr_gpu" / "numba")
    assert numba.config.CACHE_DIR == str(tmp_path / "klustr_gpu" / "numba")
    monkeypatch.setenv("NUMBA_CACHE_DIR", "/somewhere/else")
    _numba.configure()
    assert os.environ["NUMBA_CACHE_DIR"] == "/somewhere/else"


@pytest.mark.skipif(not engines.installed("torchdr"), reason="TorchDR not installed")
def test_torchdr_engine_runs_on_cpu_tiny(digits_pre):
    Xp, y, _ = digits_pre
    Y = fit_embedding(Xp[:200], "umap", engine="torchdr", n_epochs=100, seed=0)
    assert Y.shape == (200, 2) and np.isfinite(Y).all()
    assert knn_accuracy(Y, y[:200]) > 0.7


def test_torchdr_dense_fits_know_what_fits_in_memory():
    """TorchDR's dense backend needs ~6.2 n^2 x 4 B (t-SNE) and ~3.4 n^2 x 4 B (UMAP)
    (benchmarks/torchdr_memory.py): 100,000 points do not fit on a 139 GiB H200, 50,000 do."""
    from klustr_gpu.reduce import torchdr as tdr

    h200 = 139 * 2**30
    assert 60_000 < tdr.dense_fit_limit("tsne", h200) < 100_000
    assert 50_000 < tdr.dense_fit_limit("umap", h200) < 100_000
    assert tdr.dense_fit_limit("umap", h200) > tdr.dense_fit_limit("tsne", h200)
    assert tdr.dense_fit_limit("tsne", 0) == 5
    assert make_reducer("umap", "cpu").max_fit_points() is None   # the k-NN graph, not n^2


@pytest.mark.skipif(not engines.installed("torchdr"), reason="TorchDR not installed")
def test_torchdr_fits_a_sample_when_the_points_do_not_fit_and_places_the_rest(digits_pre, monkeypatch, caplog):
    """Instead of a CUDA out-of-memory error: fit on as many points as fit, place the others."""
    from klustr_gpu.reduce import torchdr as tdr

    Xp, y, _ = digits_pre
    room = int(150**2 * tdr.DENSE_BYTES_PER_PAIR["umap"] / tdr.MEMORY_SHARE) + 1   # 150 points
    monkeypatch.setattr(tdr, "free_memory_bytes", lambda device: room)
    with caplog.at_level("WARNING", logger="klustr_gpu.reduce.embed"):
        Y = fit_embedding(Xp[:400], "umap", engine="torchdr", n_epochs=100, seed=0)
    assert "holds at most 150 of these 400 points in memory: fitting on a sample of 150" in caplog.text
    assert Y.shape == (400, 2) and np.isfinite(Y).all()
    assert knn_accuracy(Y, y[:400]) > 0.7


@pytest.mark.gpu
def test_gpu_knn_graph_matches_cpu_and_auto_takes_a_gpu_engine(digits_pre):
    Xp, y, _ = digits_pre
    for metric in ("euclidean", "correlation"):
        gi, gd = knn_graph(Xp, 15, metric=metric, device="cuda")
        ci, cd = knn_graph(Xp, 15, metric=metric, device="cpu")
        np.testing.assert_allclose(gd, cd, atol=1e-3)
        assert np.mean(gi == ci) > 0.98
    engine = resolve_engine("auto")
    assert engine in ("cuml", "torchdr")
    for method in ("umap", "tsne"):
        Y = fit_embedding(Xp, method, engine=engine, seed=0)
        assert knn_accuracy(Y, y) > 0.85, (engine, method)


def test_threads_follow_the_cores_busy_now_not_the_lagging_load_average(monkeypatch):
    """n_jobs(0) leaves out the cores other processes keep busy at this moment: a CPU-bound
    child is seen while it runs, and finished work does not count (the 1-minute load average
    still counted a finished features stage as 2-3 busy cores, so embed ran on one thread)."""
    import subprocess
    import sys
    import time

    from klustr_gpu import runtime as base

    cores = len(os.sched_getaffinity(0))
    monkeypatch.setattr(base, "busy_elsewhere", lambda: 0)
    assert base.n_jobs(0) == cores and base.n_jobs(3) == 3
    monkeypatch.setattr(base, "busy_elsewhere", lambda: cores + 4)
    assert base.n_jobs(0) == 1
    monkeypatch.undo()
    before = base.busy_elsewhere()
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        assert base.busy_elsewhere() >= 1
    finally:
        spin.kill()
        spin.wait()
    # gone at once (a load average would lag for a minute); other work on a shared machine comes
    # and goes, so a second of readings is allowed to find the moment it is back where it was
    after = []
    for _ in range(20):
        time.sleep(0.05)
        after.append(base.busy_elsewhere())
        if after[-1] <= max(before, 1):
            break
    assert min(after) <= max(before, 1), (before, after)
