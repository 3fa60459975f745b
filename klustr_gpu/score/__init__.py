"""Map-quality scores and the population grid.

Public API::

    result = score(project)              # score every embedding -> PROJECT/scores.json
    table = grid(project)                # the population of maps -> scores.json, report.md, grid.png
    from klustr_gpu.score import metrics # pure functions on arrays (silhouette, roundness, ...)
"""
from __future__ import annotations

from . import metrics
from .grid import Run, grid, grid_arrays, plan, ranked_table
from .scoring import read_scores, score

__all__ = ["score", "grid", "grid_arrays", "metrics", "plan", "Run", "ranked_table", "read_scores"]
