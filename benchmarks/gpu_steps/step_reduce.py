"""UMAP or t-SNE of n synthetic points (20 Gaussian clusters in 80-d, standardised, PCA 32, the
default parameters, every point fitted) on one engine, with the map's 10-NN label accuracy.

TorchDR's dense torch backend needs about 6.2 n^2 x 4 bytes for t-SNE and 3.4 n^2 x 4 for UMAP
(benchmarks/torchdr_memory.py; t-SNE of 100,000 points would need about 230 GiB), so
``fit_embedding`` fits on as many points as the free memory holds and places the rest; the
figures say how many were fitted. Should a CUDA out-of-memory error still happen, the number of
points is halved and the step goes on; the figures say at which sizes it ran out."""
import importlib.util
import logging
import sys
import time

from step_common import gpu_peak_mib, knn_accuracy, reduce_params, save, skip, synthetic

engine, method, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
if engine != "cpu" and importlib.util.find_spec(engine) is None:
    skip(f"{engine} is not installed: skipped")
logging.basicConfig(level=logging.WARNING)
from klustr_gpu.oom import free_cuda_memory, is_cuda_oom  # noqa: E402
from klustr_gpu.reduce import fit_embedding, make_reducer, preprocess  # noqa: E402

X_all, labels_all = synthetic(n)
oom_at, Y, points = [], None, n
while Y is None:
    X, labels = X_all[:points], labels_all[:points]
    failed = False
    t = time.perf_counter()
    try:
        Xp = preprocess(X, standardize=True, pca_components=32)
        Y = fit_embedding(Xp, method, engine=engine, seed=0, **reduce_params(method))
    except Exception as exc:  # noqa: BLE001 - only CUDA out-of-memory is retried
        if not is_cuda_oom(exc) or points < 2 * 6250:
            raise
        failed = True
    sec = time.perf_counter() - t
    if failed:
        free_cuda_memory()
        oom_at.append(points)
        print(f"CUDA out of memory at {points:,} points; retrying with {points // 2:,}", flush=True)
        points //= 2
acc = knn_accuracy(Y, labels)
limit = make_reducer(method, engine).max_fit_points()
fitted = points if limit is None else min(points, limit)
fig = {"engine": engine, "method": method, "points": points, "asked": n, "oom_at": oom_at, "fitted_on": fitted, "seconds": round(sec, 2),
       "accuracy_10nn": acc, "gpu_peak_mib_torch": gpu_peak_mib(), "params": reduce_params(method),
       "data": "synthetic: 20 Gaussian clusters in 80-d, standardised, PCA 32"}
fig["summary"] = (f"{method} of {points:,} points with --engine {engine}: {sec:.1f} s, 10-NN accuracy {acc}"
                  + (f" (fitted on {fitted:,}, the rest placed)" if fitted < points else "")
                  + (f" (CUDA out of memory at {', '.join(f'{p:,}' for p in oom_at)} points)" if oom_at else ""))
save(fig)
