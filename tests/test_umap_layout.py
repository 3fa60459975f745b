"""UMAP's layout optimisation in deterministic parallel blocks (klustr_gpu.reduce._umap_layout):
one block is umap-learn's own sequential algorithm bit for bit; more blocks give the same map on
any number of threads, as good as the sequential one."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.manifold import trustworthiness
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier

from klustr_gpu.reduce import fit_embedding, knn_graph, preprocess
from klustr_gpu.reduce._numba import import_umap

umap = import_umap()
from klustr_gpu.reduce import _umap_layout as layout  # noqa: E402  (after numba's cache is set)


def knn_accuracy(Y, labels, k=10) -> float:
    return float(cross_val_score(KNeighborsClassifier(k), Y, labels, cv=5).mean())


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    Xp = preprocess(X.astype(np.float32), pca_components=20)
    return Xp, y, knn_graph(Xp, 14)


def test_one_block_is_umap_learns_own_sequential_layout(digits):
    Xp, _, _ = digits
    ref = umap.UMAP(random_state=0, n_epochs=80, n_jobs=1).fit_transform(Xp)
    import umap.umap_ as umap_
    original = umap_.optimize_layout_euclidean
    with layout.deterministic_parallel_layout(1):
        assert umap_.optimize_layout_euclidean is not original
        ours = umap.UMAP(random_state=0, n_epochs=80, n_jobs=1).fit_transform(Xp)
    assert umap_.optimize_layout_euclidean is original          # put back afterwards
    np.testing.assert_array_equal(ours, ref)


def test_blocks_give_the_same_map_on_any_number_of_threads_and_as_good_a_map(digits, monkeypatch):
    """The seeded cpu engine uses the blocks above MIN_PARALLEL_POINTS (lowered here): one
    thread or two, the map is identical, and it scores like umap-learn's sequential layout."""
    from klustr_gpu.reduce import cpu

    Xp, y, knn = digits
    monkeypatch.setattr(layout, "MIN_PARALLEL_POINTS", 0)
    one = fit_embedding(Xp, "umap", knn=knn, seed=0, n_jobs=1)
    two = fit_embedding(Xp, "umap", knn=knn, seed=0, n_jobs=2)
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(one, fit_embedding(Xp, "umap", knn=knn, seed=0, n_jobs=2))
    monkeypatch.setattr(layout, "MIN_PARALLEL_POINTS", 10**9)
    sequential = fit_embedding(Xp, "umap", knn=knn, seed=0)
    assert not np.array_equal(one, sequential)                  # the blocks really ran
    acc_b, acc_s = knn_accuracy(one, y), knn_accuracy(sequential, y)
    tw_b, tw_s = trustworthiness(Xp, one, n_neighbors=10), trustworthiness(Xp, sequential, n_neighbors=10)
    assert acc_b > 0.95 and acc_b >= acc_s - 0.01, (acc_b, acc_s)
    assert tw_b >= tw_s - 0.005, (tw_b, tw_s)
    assert cpu.UMAPLearn(random_state=None).random_state is None   # unseeded: umap-learn's own


def test_blocks_cut_only_between_points():
    rng = np.random.default_rng(0)
    head = np.sort(rng.integers(0, 500, size=6000))
    e, v = layout.blocks(head, 520, 16)
    assert e[0] == 0 and e[-1] == len(head) and np.all(np.diff(e) > 0)
    assert v[0] == 0 and v[-1] == 520 and np.all(np.diff(v) > 0) and len(v) == len(e)
    for p in range(len(e) - 1):          # block p holds exactly the edges of the points it owns
        heads = head[e[p]:e[p + 1]]
        assert heads.min() >= v[p] and heads.max() < v[p + 1]
    assert 8 <= len(e) - 1 <= 16
    e1, v1 = layout.blocks(head, 520, 1)
    assert list(e1) == [0, len(head)] and list(v1) == [0, 520]
