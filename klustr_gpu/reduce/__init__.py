"""Reduction: features -> 2-D map. PCA, t-SNE and UMAP on the cuml, torchdr or cpu engine.

The project-level stage is :func:`klustr_gpu.embed`. The array-level pieces, for parameter grids::

    Xp = preprocess(X, standardize=True, pca_components=14)
    knn = knn_graph(Xp, 150)                            # once, largest k; self excluded
    Y = fit_embedding(Xp, "tsne", knn=knn, perplexity=50)
    Y = fit_embedding(Xp, "umap", knn=knn, n_neighbors=15, min_dist=0.0)

Modules, each one job: ``validate`` (input checks), ``distances`` (cosine / correlation as
Euclidean), ``neighbours`` (the k-NN graph and its cache), ``base`` (the estimator contract),
``pca`` (preprocessing and PCA, linear), ``cpu`` / ``cuml`` / ``torchdr`` (the engines),
``engines`` (choosing one), ``embed`` (arrays and a project's features in, a map out).
"""
from __future__ import annotations

from .embed import check_method_settings, embed_project, fit_embedding, method_params
from .engines import REDUCERS, make_reducer, resolve_engine
from .neighbours import cached_knn, knn_graph, slice_knn
from .pca import preprocess

__all__ = ["embed_project", "check_method_settings", "resolve_engine", "make_reducer", "preprocess", "knn_graph", "fit_embedding", "method_params",
           "slice_knn", "cached_knn", "REDUCERS"]
