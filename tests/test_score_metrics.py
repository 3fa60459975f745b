"""Map-quality metrics on tiny inputs checkable by hand, and on bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest

from klustr_gpu.score import metrics as m


def _square(cx=0.0, cy=0.0, side=1.0):
    h = side / 2
    return np.array([[cx - h, cy - h], [cx + h, cy - h], [cx + h, cy + h], [cx - h, cy + h], [cx, cy]])


def _blobs(n_per=20, centres=((0, 0), (10, 0), (0, 10)), seed=0):
    rng = np.random.default_rng(seed)
    Z = np.concatenate([rng.normal(c, 0.5, size=(n_per, 2)) for c in centres])
    y = np.repeat([f"c{i}" for i in range(len(centres))], n_per)
    return Z, y


# -- the 2017 scores ----------------------------------------------------------------------------
def test_polsby_popper_square_is_pi_over_4():
    assert m.polsby_popper(1.0, 4.0) == pytest.approx(math.pi / 4)
    assert m.roundness(_square(), ["a"] * 5) == pytest.approx(math.pi / 4)


def test_roundness_of_circle_close_to_one():
    a = np.linspace(0, 2 * np.pi, 400, endpoint=False)
    Z = np.c_[np.cos(a), np.sin(a)]
    assert m.roundness(Z, ["a"] * len(Z)) == pytest.approx(1.0, abs=1e-3)


def test_overlap_two_disjoint_squares_by_hand():
    # two unit squares 1 apart: class areas 1 + 1, hull of all = 3 x 1 rectangle (area 3)
    Z = np.concatenate([_square(0.5, 0.5), _square(2.5, 0.5)])
    y = ["a"] * 5 + ["b"] * 5
    assert m.overlap_2017(Z, y) == pytest.approx(3.0 / (2.0 + 3.0))
    sil = m.silhouette(Z, y)
    rnd = m.roundness(Z, y)
    assert rnd == pytest.approx(math.pi / 4)
    assert m.final_2017(sil, rnd, 0.6) == pytest.approx(sil + rnd + 0.6)


def test_single_class_overlap_is_half_and_silhouette_undefined():
    notes: list[str] = []
    Z = _square()
    assert m.overlap_2017(Z, ["a"] * 5) == pytest.approx(0.5)
    assert m.silhouette(Z, ["a"] * 5, notes=notes) is None
    assert any("silhouette not defined" in n for n in notes)
    assert m.kmeans_scores(Z, ["a"] * 5) == {"homogeneity": 1.0, "completeness": 1.0, "v_measure": 1.0}


def test_small_class_has_no_hull_and_is_left_out():
    Z = np.concatenate([_square(), [[5.0, 5.0], [6.0, 5.0]]])
    y = ["a"] * 5 + ["b"] * 2
    notes: list[str] = []
    assert m.roundness(Z, y, notes=notes) == pytest.approx(math.pi / 4)
    assert any("'b' has 2 point(s)" in n for n in notes)
    assert m.overlap_2017(Z, y) is not None
    # no class with a hull at all: roundness not defined, no exception
    notes = []
    assert m.roundness(Z[:4], ["a", "a", "b", "b"], notes=notes) is None
    assert any("roundness not defined" in n for n in notes)


def test_collinear_points_defined_without_exception():
    Z = np.c_[np.arange(6.0), np.arange(6.0)]
    y = ["a"] * 3 + ["b"] * 3
    notes: list[str] = []
    assert m.roundness(Z, y, notes=notes) == 0.0
    assert any("collinear" in n for n in notes)
    assert m.overlap_2017(Z, y, notes=notes) is None
    assert any("overlap not defined" in n for n in notes)
    assert m.knn_accuracy(Z, y, k=2) == pytest.approx(1.0)
    scores = m.map_scores(Z, y, np.c_[Z, Z])
    assert scores["final_2017"] is None and scores["roundness"] == 0.0


def test_no_labels_gives_none_with_note():
    Z = m.standardize(_blobs()[0])   # features are standardised before neighbour scores
    notes: list[str] = []
    s = m.map_scores(Z, None, Z, notes=notes)
    for key in ("knn_accuracy", "silhouette", "roundness", "overlap_2017", "final_2017"):
        assert s[key] is None
    assert s["trustworthiness"] == pytest.approx(1.0)
    assert s["knn_preservation"] == pytest.approx(1.0)
    assert any("no labels" in n for n in notes)
    assert m.map_scores(Z, [None] * len(Z))["silhouette"] is None
    assert m.feature_scores(Z, None) == {"kmeans_homogeneity": None, "kmeans_completeness": None,
                                         "kmeans_v_measure": None, "knn_accuracy_features": None}


def test_unlabelled_points_are_left_out():
    Z, y = _blobs()
    y = y.astype(object)
    y[:5] = None
    notes: list[str] = []
    assert m.knn_accuracy(Z, y, notes=notes) == pytest.approx(1.0)
    assert any("5 unlabelled" in n for n in notes)


def test_tiny_inputs_never_raise():
    for n in (0, 1, 2, 3):
        Z = np.zeros((n, 2))
        y = ["a"] * n
        s = m.map_scores(Z, y, np.zeros((n, 4)))
        assert s["trustworthiness"] is None


# -- neighbour scores ----------------------------------------------------------------------------
def test_knn_accuracy_separated_classes_is_one():
    Z, y = _blobs()
    assert m.knn_accuracy(Z, y) == 1.0
    assert m.knn_accuracy(Z, y, sample=10) == 1.0


def test_knn_accuracy_by_hand_with_tie_to_nearest():
    # points on a line: 0 a, 1 a, 2 b, 3 b ; with k=2 the vote of point 1 is {a (0, d=1), b (2, d=1)}
    Z = np.c_[[0.0, 1.0, 2.1, 3.1], np.zeros(4)]
    y = ["a", "a", "b", "b"]
    # point0: nbrs 1(a),2(b) tie -> nearest a: right. point1: 0(a, d1) 2(b, d1.1) -> a right.
    # point2: 3(b, d1) 1(a, d1.1) -> b right. point3: 2(b), 1(a) -> b right.
    assert m.knn_accuracy(Z, y, k=2) == 1.0
    # k=3 everyone sees both others of the other class: 2 vs 1 against -> all wrong
    assert m.knn_accuracy(Z, y, k=3) == 0.0


def test_knn_accuracy_duplicates_are_neighbours():
    Z = np.zeros((4, 2))
    assert m.knn_accuracy(Z, ["a", "a", "a", "b"], k=3) == pytest.approx(0.75)


def test_trustworthiness_matches_sklearn():
    from sklearn.manifold import trustworthiness

    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 6))
    Z = X[:, :2] + 0.3 * rng.normal(size=(120, 2))
    assert m.trustworthiness(X, Z, sample=None) == pytest.approx(trustworthiness(X, Z, n_neighbors=10), abs=1e-12)


def test_trustworthiness_and_preservation_by_hand():
    X = np.c_[np.arange(30.0), np.zeros(30)]
    assert m.trustworthiness(X, X) == pytest.approx(1.0)
    assert m.knn_preservation(X, X) == pytest.approx(1.0)
    # a reversed line keeps every neighbourhood
    assert m.trustworthiness(X, -X) == pytest.approx(1.0)
    notes: list[str] = []
    assert m.trustworthiness(X[:15], X[:15], notes=notes) is None
    assert notes


def test_trustworthiness_on_sample_is_deterministic():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(400, 5))
    a = m.trustworthiness(X, X[:, :2], sample=100, seed=3)
    b = m.trustworthiness(X, X[:, :2], sample=100, seed=3)
    assert a == b and 0.0 < a < 1.0


def test_kmeans_scores_perfect_on_separated_blobs():
    Z, y = _blobs()
    km = m.kmeans_scores(np.c_[Z, Z], y)
    assert km == pytest.approx({"homogeneity": 1.0, "completeness": 1.0, "v_measure": 1.0})


def test_map_scores_keys_and_ranges():
    Z, y = _blobs()
    s = m.map_scores(Z, y, np.c_[Z, 0.01 * Z])
    assert set(s) == {"knn_accuracy", "silhouette", "roundness", "overlap_2017", "final_2017",
                      "trustworthiness", "knn_preservation"}
    assert s["knn_accuracy"] == 1.0 and s["silhouette"] > 0.8
    assert 0 < s["roundness"] <= 1 and 0 < s["overlap_2017"] < 1


def test_nonfinite_rows_left_out():
    Z, y = _blobs()
    Z[0] = np.nan
    notes: list[str] = []
    s = m.map_scores(Z, y, Z.copy(), notes=notes)
    assert s["knn_accuracy"] == 1.0
    assert any("non-finite" in n for n in notes)


def test_pandas_missing_labels():
    import pandas as pd

    Z = np.c_[np.arange(6.0), np.zeros(6)]
    y = pd.array(["a", "a", None, "b", "b", "b"], dtype="string").to_numpy()
    notes: list[str] = []
    assert m.knn_accuracy(Z, y, k=1, notes=notes) == 1.0          # the gap at 2 is left out
    assert any("1 unlabelled" in n for n in notes)
