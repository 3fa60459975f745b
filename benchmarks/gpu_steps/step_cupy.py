"""CuPy, where installed: host -> GPU -> host of an n x 32 array and a Gram matrix."""
import sys
import time

from step_common import save, skip

n = int(sys.argv[1])
try:
    import cupy
except ImportError:
    skip("cupy is not installed: skipped")
import numpy as np

X = np.random.default_rng(0).standard_normal((n, 32), dtype=np.float32)
cupy.asarray(X[:1000]).sum()                        # warm-up
cupy.cuda.Device().synchronize()
t = time.perf_counter()
G = cupy.asarray(X)
back = cupy.asnumpy(G)
t_copy = time.perf_counter() - t
t = time.perf_counter()
C = G.T @ G                                          # a 32 x 32 Gram matrix over every point
cupy.cuda.Device().synchronize()
t_gemm = time.perf_counter() - t
assert back.shape == X.shape and np.allclose(cupy.asnumpy(C), X.T.astype(np.float64) @ X, rtol=1e-3, atol=1e-1 * n ** 0.5)
fig = {"points": n, "round_trip_s": round(t_copy, 4), "gram_s": round(t_gemm, 4),
       "round_trip_gb_per_s": round(2 * X.nbytes / t_copy / 1e9, 2), "cupy": cupy.__version__}
fig["summary"] = (f"{n:,} x 32 float32 host->GPU->host {t_copy * 1e3:.1f} ms ({fig['round_trip_gb_per_s']} GB/s), "
                  f"Gram {t_gemm * 1e3:.1f} ms")
save(fig)
