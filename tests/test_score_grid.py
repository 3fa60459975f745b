"""The grid and project scoring end to end on the demo project (quick grid), and bad input."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from klustr_gpu.config import Config
from klustr_gpu.errors import UsageError
from klustr_gpu.score import plan
from klustr_gpu import grid, score_maps
from klustr_gpu.store import Project


@pytest.fixture(scope="module")
def scored_project(demo_project, tmp_path_factory):
    """A copy of the demo project with mfcc features and a quick grid run on it."""
    from klustr_gpu import compute_features

    proj = tmp_path_factory.mktemp("grid") / "project"
    shutil.copytree(demo_project, proj)
    compute_features(proj, sets=["mfcc"], progress=False, workers=1)
    table = grid(proj, quick=True, progress=False).table
    return proj, table


def test_plan_default_grid_size():
    runs = plan(["mfcc", "stft"], ["umap", "tsne", "pca"], Config().score)
    assert len(runs) == 2 * (16 + 4 + 1)
    assert len({r.name for r in runs}) == len(runs)
    quick = plan(["mfcc"], ["umap", "tsne", "pca"], Config().score, quick=True)
    assert [r.method for r in quick] == ["umap", "tsne", "pca"]


def test_quick_grid_end_to_end(scored_project):
    proj, table = scored_project
    p = Project(proj)
    assert list(table["rank"]) == [1, 2, 3]
    assert set(table["method"]) == {"umap", "tsne", "pca"}
    acc = table["knn_accuracy"].to_numpy(dtype=float)
    assert (np.diff(acc) <= 1e-12).all()                     # ranked by 10-NN accuracy
    assert table["knn_accuracy"].iloc[0] > 0.6               # 7 synthetic classes, well above chance
    assert table["trustworthiness"].notna().all() and table["seconds"].notna().all()
    best = table["name"].iloc[0]
    assert p.default_embedding() == best
    data = json.loads((proj / "scores.json").read_text())
    assert data["best"] == best and data["default"] == best and data["rank_by"] == "knn_accuracy"
    assert data["features"]["mfcc"]["scores"]["kmeans_v_measure"] > 0
    report = (proj / "report.md").read_text()
    assert best in report and "10-NN acc" in report and "final*" in report
    assert (proj / "grid.png").stat().st_size > 1000
    df, meta = p.read_embedding(best)
    assert {"id", "file_id", "start", "x", "y", "label"} <= set(df.columns)
    assert meta["features"] == "mfcc" and meta["grid"] is True


def test_score_every_embedding(scored_project):
    proj, table = scored_project
    result = score_maps(proj, progress=False)
    assert set(result.embeddings) == set(table["name"])
    for name, row in result.embeddings.items():
        want = table.set_index("name").loc[name]
        assert row["scores"]["knn_accuracy"] == pytest.approx(want["knn_accuracy"])
        assert row["scores"]["trustworthiness"] == pytest.approx(want["trustworthiness"])
    one = score_maps(proj, names=[table["name"].iloc[-1]], progress=False)
    assert set(one.embeddings) == set(table["name"])         # the others kept from scores.json
    with pytest.raises(UsageError):
        score_maps(proj, names=["nope"], progress=False)


def test_unlabelled_project_ranks_by_trustworthiness(scored_project, tmp_path):
    proj, _ = scored_project
    copy = tmp_path / "nolabels"
    shutil.copytree(proj, copy)
    p = Project(copy)
    df = p.read_manifest()
    df["label"] = None
    p.write_manifest(df, p.manifest_metadata())
    result = score_maps(copy, progress=False)
    assert result.labels is False and result.rank_by == "trustworthiness"
    row = next(iter(result.embeddings.values()))
    assert row["scores"]["knn_accuracy"] is None and row["scores"]["final_2017"] is None
    assert row["scores"]["trustworthiness"] is not None
    trust = [r["scores"]["trustworthiness"] for r in result.embeddings.values()]
    assert trust == sorted(trust, reverse=True)
    assert json.loads((copy / "scores.json").read_text())["labels"] is False


def test_bad_arguments_fail_before_work(scored_project):
    proj, _ = scored_project
    with pytest.raises(UsageError):
        grid(proj, methods=["nope"], progress=False)
    with pytest.raises(UsageError):
        grid(proj, features=["nope"], progress=False)
    with pytest.raises(UsageError):
        grid(proj, rank_by="nope", progress=False)
    with pytest.raises(UsageError):
        grid(proj, features=["stft"], progress=False)       # not computed


def test_score_without_embeddings(demo_project):
    with pytest.raises(UsageError):
        score_maps(demo_project, progress=False)


def _blob_features(n_per=40, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 6, size=(4, 12))
    X = np.concatenate([rng.normal(c, 1.0, size=(n_per, 12)) for c in centres]).astype(np.float32)
    y = np.repeat(["a", "b", "c", "d"], n_per).astype(object)
    return X, y


def test_grid_arrays_separated_blobs():
    from klustr_gpu.score import grid_arrays

    X, y = _blob_features()
    table, maps = grid_arrays(X, y, methods=["tsne", "pca"], quick=True)
    assert set(table["method"]) == {"tsne", "pca"} and list(table["rank"]) == [1, 2]
    assert table["knn_accuracy"].max() == pytest.approx(1.0)
    assert set(maps) == set(table["name"]) and all(z.shape == (len(X), 2) for z in maps.values())


def test_grid_arrays_without_labels_and_with_one_class():
    from klustr_gpu.score import grid_arrays

    X, _ = _blob_features(n_per=15)
    table, _ = grid_arrays(X, None, methods=["pca"], quick=True)
    assert table["knn_accuracy"].isna().all() and table["trustworthiness"].notna().all()
    table, _ = grid_arrays(X, ["a"] * len(X), methods=["pca"], quick=True)
    row = table.iloc[0]
    assert row["knn_accuracy"] == 1.0 and pd.isna(row["silhouette"]) and pd.isna(row["final_2017"])
    assert row["overlap_2017"] == pytest.approx(0.5)


# -- issue 14: combinations and the default's own parameters ------------------------------------------
def test_plan_holds_the_default_maps_parameters():
    from klustr_gpu.config import ReduceConfig

    sc = Config().score
    default = ReduceConfig(perplexity=10.0, n_neighbors=12, min_dist=0.05)
    runs = plan(["general"], ["umap", "tsne"], sc, default=default)
    perps = [r.kwargs["perplexity"] for r in runs if r.method == "tsne"]
    assert [r.kwargs.get("n_iter") for r in runs if r.method == "tsne"] == [None, 500, None, None, None]
    pairs = [(r.kwargs["n_neighbors"], r.kwargs["min_dist"]) for r in runs if r.method == "umap"]
    assert perps == sorted({*sc.perplexities, 10.0}) and (12, 0.05) in pairs and len(pairs) == 17
    quick = plan(["general"], ["umap", "tsne"], sc, quick=True, default=default)
    assert [r.kwargs for r in quick] == [{"n_neighbors": 12, "min_dist": 0.05}, {"perplexity": 10.0}]


def test_combined_sets_are_checked():
    from klustr_gpu.score.grid import check_sets, component_sets

    assert component_sets("timbre+descriptors") == ["timbre", "descriptors"]
    assert check_sets(["mfcc", "mfcc", " timbre + mir "]) == ["mfcc", "timbre+mir"]
    for bad in ("mfcc+", "mfcc+nonsense", "+mir"):
        with pytest.raises(UsageError):
            check_sets([bad])


def test_grid_on_a_combination_of_sets(scored_project, tmp_path):
    """``mfcc+mir``: the two sets' columns side by side, on the rows both have."""
    from klustr_gpu import compute_features
    from klustr_gpu.features import load
    from klustr_gpu.score.grid import combined_table

    proj = tmp_path / "p"
    shutil.copytree(scored_project[0], proj)
    compute_features(proj, sets=["mfcc", "mir"], progress=False, workers=1)
    table = grid(proj, features=["mfcc+mir"], methods=["pca"], progress=False).table
    assert list(table["features"]) == ["mfcc+mir"] and table["knn_accuracy"].iloc[0] > 0.5
    a, b = load(proj, "mfcc"), load(proj, "mir")
    both = combined_table([a, b])
    assert both.X.shape == (len(a), a.X.shape[1] + b.X.shape[1]) and both.name == "mfcc+mir"
    less = type(b)(ids=b.ids[1:], file_ids=b.file_ids[1:], starts=b.starts[1:], X=b.X[1:], name="mir")
    part = combined_table([a, less])                          # a row one set lacks is left out
    assert list(part.ids) == list(a.ids[1:])
    np.testing.assert_array_equal(part.X[:, a.X.shape[1]:], b.X[1:])
    with pytest.raises(UsageError):
        grid(proj, features=["mfcc+stft"], progress=False)     # stft not computed


def test_cli_grid_takes_combinations_and_refuses_unknown_parts(capsys):
    from klustr_gpu.cli import build_parser

    args = build_parser().parse_args(["grid", "p", "--features", "mfcc+mir,timbre"])
    assert args.features == ["mfcc+mir", "timbre"]
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["grid", "p", "--features", "mfcc+loud"])
    assert exc.value.code == 2 and "mfcc+loud" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["features", "p", "--set", "mfcc+mir"])    # only the grid combines
