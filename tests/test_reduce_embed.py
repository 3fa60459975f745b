"""``embed``: a project's features -> embeddings/<name>.parquet, end to end on real audio."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier

from klustr_gpu.config import Config
from klustr_gpu.errors import EngineUnavailable, UsageError
from klustr_gpu import embed
from klustr_gpu.reduce import engines
from klustr_gpu.store import Project


def knn_accuracy(df, k=10) -> float:
    return float(cross_val_score(KNeighborsClassifier(k), df[["x", "y"]].to_numpy(), df["label"], cv=5).mean())


@pytest.fixture(scope="module")
def featured(demo_project, tmp_path_factory):
    """The demo project with mfcc features (computed once for this module)."""
    from klustr_gpu import compute_features

    proj = tmp_path_factory.mktemp("reduce") / "project"
    shutil.copytree(demo_project, proj)
    compute_features(proj, Config().updated({"reduce.features": "mfcc"}), sets=["mfcc"], progress=False)
    return proj


@pytest.fixture
def project(featured, tmp_path):
    proj = tmp_path / "project"
    shutil.copytree(featured, proj)
    return proj


def test_embed_umap_writes_the_map_with_labels_and_parameters(project):
    df = embed(project, method="umap", progress=False).frame      # the default method is t-SNE (issue 14)
    assert list(df.columns) == ["id", "file_id", "start", "x", "y", "label", "cluster"]
    # k-means of the features, the colours of an unlabelled map: 12 groups that follow the classes
    from sklearn.metrics import homogeneity_score
    assert df["cluster"].nunique() == 12 and df["cluster"].between(0, 11).all()
    assert homogeneity_score(df["label"], df["cluster"]) > 0.5
    man = Project(project).read_manifest()
    assert len(df) == int((man["status"] == "ok").sum())
    assert df["label"].notna().all() and set(df["label"]) <= set(man["label"])
    back, meta = Project(project).read_embedding("mfcc-umap")
    np.testing.assert_allclose(back[["x", "y"]], df[["x", "y"]])
    assert meta["method"] == "umap" and meta["engine"] == "cpu" and meta["features"] == "mfcc"
    assert meta["n_points"] == len(df) and meta["seed"] == 0 and meta["seconds"] > 0
    assert meta["params"]["n_neighbors"] == 15
    assert knn_accuracy(df) > 0.8                    # 7 drum classes separate on the map
    assert list((project / "neighbours").glob("mfcc-euclidean-*.npz"))


def test_keyword_overrides_reach_the_config_and_the_graph_is_reused(project, caplog):
    df = embed(project, method="tsne", perplexity=20, name="t20", seed=3, progress=False).frame
    graphs = sorted((project / "neighbours").glob("*.npz"))
    assert [g.name.rsplit("-", 1)[1] for g in graphs] == ["k60.npz"]        # what t-SNE needs: 3 x 20
    cfg = Project(project).load_config()
    assert cfg.reduce.method == "tsne" and cfg.reduce.perplexity == 20 and cfg.seed == 3
    caplog.set_level("INFO", logger="klustr_gpu.reduce")
    embed(project, method="umap", name="u", seed=3, progress=False)
    assert sorted((project / "neighbours").glob("*.npz")) == graphs      # t-SNE's graph, sliced, served UMAP
    assert "reusing neighbour graph" in caplog.text
    _, meta = Project(project).read_embedding("t20")
    assert meta["params"]["perplexity"] == 20 and meta["seed"] == 3
    assert knn_accuracy(df) > 0.8


def test_same_seed_same_embedding(project):
    a = embed(project, method="tsne", name="a", progress=False).frame
    b = embed(project, method="tsne", name="b", progress=False).frame
    np.testing.assert_array_equal(a[["x", "y"]], b[["x", "y"]])


def test_klustr_preset_and_pca(project):
    cfg = Config.preset_named("klustr")
    df = embed(project, cfg, method="umap", progress=False).frame     # PCA 14, correlation metric
    _, meta = Project(project).read_embedding("mfcc-umap")
    assert meta["dims_reduced"] == 14 and meta["params"]["metric"] == "correlation"
    assert knn_accuracy(df) > 0.7
    df = embed(project, method="pca", progress=False).frame
    assert Project(project).read_embedding("mfcc-pca")[1]["method"] == "pca"


def test_bad_arguments_fail_before_any_work(project, monkeypatch):
    before = (project / "klustr.toml").read_text() if (project / "klustr.toml").exists() else None
    with pytest.raises(UsageError, match="unknown setting 'n_neigbors'"):
        embed(project, n_neigbors=5, progress=False)
    with pytest.raises(UsageError, match="unknown method"):
        embed(project, method="mds", progress=False)
    monkeypatch.setattr(engines, "has_cuda", lambda: False)
    with pytest.raises(EngineUnavailable):
        embed(project, engine="cuml", progress=False)
    with pytest.raises(UsageError, match="embedding name"):
        embed(project, name="../x", progress=False)
    with pytest.raises(UsageError, match="perplexity is a tsne setting") as err:     # a t-SNE setting for UMAP
        embed(project, method="umap", perplexity=50, progress=False)
    assert err.value.param == "perplexity"
    after = (project / "klustr.toml").read_text() if (project / "klustr.toml").exists() else None
    assert after == before and not (project / "embeddings").exists()


def test_missing_project_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match=r"scan\(LIBRARY"):
        embed(tmp_path / "nothing", progress=False)


def test_real_drum_kits_umap_and_tsne_beat_pca(hydrogen_library, tmp_path):
    """The Hydrogen kits (460 real one-shots, 7 classes): the maps keep the classes together
    better than a linear projection, and stay faithful to the feature space."""
    from sklearn.manifold import trustworthiness

    from klustr_gpu.features import load

    from klustr_gpu import compute_features
    from klustr_gpu import scan
    from klustr_gpu.reduce import preprocess

    proj = tmp_path / "hydrogen"
    scan(hydrogen_library, proj, labels=hydrogen_library / "labels.csv", progress=False)
    compute_features(proj, Config().updated({"reduce.features": "mfcc"}), sets=["mfcc"], progress=False)
    acc = {m: knn_accuracy(embed(proj, method=m, progress=False).frame) for m in ("pca", "umap", "tsne")}
    assert acc["umap"] > acc["pca"] + 0.05 and acc["tsne"] > acc["pca"] + 0.05, acc
    Xp = preprocess(load(proj, "mfcc").X, pca_components=32)
    df, _ = Project(proj).read_embedding("mfcc-umap")
    assert trustworthiness(Xp, df[["x", "y"]].to_numpy(), n_neighbors=10) > 0.85
