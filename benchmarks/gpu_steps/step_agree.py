"""The CUDA and CPU feature arrays of the same clips agree: relative Frobenius error per set
below 1e-3, the tolerance tests/test_features_pipeline.py::test_cpu_and_cuda_agree states."""
import sys

import numpy as np

import klustr_gpu as kg

from step_common import save

TOL = 1e-3
a_proj, b_proj = sys.argv[1:3]
errs, rows = {}, {}
for name in sorted(p.name for p in kg.Project(a_proj).features_root.iterdir() if p.is_dir()):
    a, b = kg.load_features(a_proj, name), kg.load_features(b_proj, name)
    if list(a.ids) != list(b.ids):
        print(f"{name}: the two projects hold different rows ({len(a.ids)} vs {len(b.ids)})")
        sys.exit(1)
    errs[name] = float(np.linalg.norm(a.X - b.X) / max(np.linalg.norm(b.X), 1e-30))
    rows[name] = len(a.ids)
if not errs:
    print("no feature set to compare")
    sys.exit(1)
worst = max(errs, key=errs.get)
fig = {"relative_error": {k: float(f"{v:.3g}") for k, v in errs.items()}, "rows": rows, "tolerance": TOL,
       "agree": errs[worst] < TOL}
fig["summary"] = (f"{'agree' if fig['agree'] else 'DIFFER'}: " + ", ".join(f"{k} {v:.2g}" for k, v in errs.items())
                  + f" (relative, tolerance {TOL:g}; {rows[worst]:,} rows)")
save(fig)
sys.exit(0 if fig["agree"] else 1)
