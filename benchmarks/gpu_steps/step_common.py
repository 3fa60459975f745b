"""Shared by the GPU-check steps (benchmarks/gpu.sh): each step is a script that gpu.sh runs
under its own `timeout`, writes its figures with :func:`save` (the file named by $KLUSTR_FIG) and
prints a one-line summary. Exit 77 means "skipped" (e.g. an optional library is not installed)."""
from __future__ import annotations

import json
import os
import sys


def save(fig: dict) -> None:
    with open(os.environ["KLUSTR_FIG"], "w") as fh:
        json.dump(fig, fh, default=str)
    print(fig.get("summary", ""), flush=True)


def skip(why: str) -> None:
    print(why, flush=True)
    sys.exit(77)


def gpu_peak_mib():
    import torch
    return round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None


def synthetic(n: int, seed: int = 0):
    """As benchmarks/reduce.py --synthetic: 80-d features in 20 Gaussian clusters."""
    import numpy as np
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4.0, size=(20, 80)).astype(np.float32)
    labels = rng.choice(20, size=n, p=rng.dirichlet(np.ones(20) * 2))
    X = centres[labels] + rng.normal(0, 1.0, size=(n, 80)).astype(np.float32) * \
        rng.uniform(0.5, 2.0, 20)[labels, None].astype(np.float32)
    return X.astype(np.float32), labels


def knn_accuracy(Y, labels, n: int = 20000):
    """5-fold 10-NN label accuracy on the 2-D map, on a fixed random subsample of ``n`` points."""
    import numpy as np
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier
    sub = np.random.default_rng(1).choice(len(Y), size=min(len(Y), n), replace=False)
    return round(float(cross_val_score(KNeighborsClassifier(10), Y[sub], labels[sub], cv=5).mean()), 4)


def reduce_params(method: str) -> dict:
    """The default reduction parameters (klustr_gpu.Config), every point fitted (no sampling);
    $DR_ITERS (dry runs) shortens the optimisation."""
    from klustr_gpu.config import Config
    r = Config().reduce
    its = int(os.environ.get("DR_ITERS") or 0)
    if method == "umap":
        return dict(n_neighbors=r.n_neighbors, min_dist=r.min_dist, metric=r.metric,
                    n_epochs=its or (r.umap_epochs or None))
    return dict(perplexity=r.perplexity, metric=r.metric, n_iter=its or r.tsne_iterations)
