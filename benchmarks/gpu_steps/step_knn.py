"""The torch k-NN graph (klustr_gpu.reduce.neighbours.knn_graph, exact, k=15) of n random 32-d points."""
import sys
import time

import numpy as np

from klustr_gpu.reduce.neighbours import knn_graph

from step_common import gpu_peak_mib, save

n, device = int(sys.argv[1]), sys.argv[2]
k = 15
X = np.random.default_rng(0).standard_normal((n, 32), dtype=np.float32)
knn_graph(X[:5000], k, device=device)               # warm-up: CUDA context, kernels
t = time.perf_counter()
idx, dist = knn_graph(X, k, device=device)
sec = time.perf_counter() - t
assert idx.shape == (n, k) and np.all(np.diff(dist, axis=1) >= -1e-4)
# a spot check against numpy on a few rows
rows = np.random.default_rng(2).choice(n, size=min(200 if n <= 50_000 else 20, n), replace=False)
d = np.stack([((X - X[r]) ** 2).sum(1) for r in rows])
d[np.arange(len(rows)), rows] = np.inf
exact = np.sort(d, axis=1)[:, :k] ** 0.5
err = float(np.abs(exact - dist[rows]).max())
fig = {"points": n, "dim": 32, "k": k, "device": device, "seconds": round(sec, 3), "points_per_s": round(n / sec),
       "gpu_peak_mib": gpu_peak_mib(), "max_abs_error_vs_numpy": round(err, 6)}
fig["summary"] = f"{n:,} x 32-d, k={k} (exact) on {device}: {sec:.2f} s; distances within {err:.1e} of numpy"
save(fig)
sys.exit(0 if err < 1e-3 else 1)
