"""Reduction: features -> 2-D map. PCA, t-SNE and UMAP on the cuml, torchdr or cpu engine.

::

    from klustr_gpu.reduce import embed
    embed("proj", method="umap", n_neighbors=30)        # embeddings/mfcc-umap.parquet

The array-level pieces, for parameter grids::

    Xp = preprocess(X, standardize=True, pca_components=14)
    knn = knn_graph(Xp, 150)                            # once, largest k; self excluded
    Y = fit_embedding(Xp, "tsne", knn=knn, perplexity=50)
    Y = fit_embedding(Xp, "umap", knn=knn, n_neighbors=15, min_dist=0.0)
"""
from __future__ import annotations

from .embed import embed, fit_embedding
from .engines import ENGINES, make_reducer, resolve_engine
from .neighbours import cached_knn, knn_graph, slice_knn
from .pca import preprocess

__all__ = ["embed", "resolve_engine", "make_reducer", "preprocess", "knn_graph", "fit_embedding",
           "slice_knn", "cached_knn", "ENGINES"]
