"""Map-quality scores and the population grid.

The stages are :func:`klustr_gpu.score_maps` (score every embedding -> ``scores.json``) and
:func:`klustr_gpu.grid` (the population of maps -> ``scores.json``, ``report.md``, ``grid.png``).
Here::

    from klustr_gpu.score import metrics          # pure functions on arrays (silhouette, roundness, ...)
    table, maps = grid_arrays(X, labels)          # the grid on an array, nothing written
"""
from __future__ import annotations

from . import metrics
from .grid import Run, check_grid, grid_arrays, plan, ranked_table, run_grid
from .scoring import read_scores, score_project

__all__ = ["metrics", "grid_arrays", "plan", "Run", "ranked_table", "read_scores", "check_grid", "run_grid",
           "score_project"]
