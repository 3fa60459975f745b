"""Peak memory of TorchDR's dense (backend=None) t-SNE and UMAP, per pair of points.

    python benchmarks/torchdr_memory.py [--n 4000] [--device cpu]

Prints ``peak bytes / (n^2 x 4)`` for each method: the factors in
``klustr_gpu/reduce/torchdr.py`` (DENSE_BYTES_PER_PAIR) that bound how many points one fit
may take before ``fit_embedding`` fits a sample instead. On the CPU the peak is the process's
maximum resident size over a baseline; on CUDA, torch's peak allocated memory. Each method runs
in its own process so one peak does not hide the other.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, warnings
import numpy as np, torch
warnings.simplefilter("ignore")
import torchdr
method, n, device = sys.argv[1], int(sys.argv[2]), sys.argv[3]
X = np.random.default_rng(0).standard_normal((n, 16)).astype(np.float32)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
if device == "cuda":
    torch.cuda.reset_peak_memory_stats()
kw = dict(max_iter=60, backend=None, device=device, verbose=False)
model = (torchdr.TSNE(perplexity=30, early_exaggeration_iter=20, **kw) if method == "tsne"
         else torchdr.UMAP(n_neighbors=15, **kw))
model.fit_transform(X)
peak = (torch.cuda.max_memory_allocated() if device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base)
print(json.dumps({"method": method, "n": n, "device": device, "per_pair": round(peak / (n * n * 4), 2)}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4000, help="points (default 4000: large enough that n^2 dominates)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    a = ap.parse_args()
    for method in ("tsne", "umap"):
        r = subprocess.run([sys.executable, "-c", CHILD, method, str(a.n), a.device],
                           capture_output=True, text=True, check=True)
        print(json.loads(r.stdout.strip().splitlines()[-1]))


if __name__ == "__main__":
    main()
