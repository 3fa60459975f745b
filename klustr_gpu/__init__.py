"""klustr_gpu: turn a large audio library into a zoomable 2-D map of its sounds.

The Python API mirrors the ``klustr`` command; every stage takes a project folder, an optional
``config`` and keyword overrides (see :mod:`klustr_gpu.api`)::

    import klustr_gpu as kg
    kg.scan("~/Samples", "proj", labels="~/Samples/labels.csv")
    kg.compute_features("proj")         # features/<set>/
    kg.embed("proj", method="umap")     # embeddings/<name>.parquet
    kg.plot("proj")                     # a HoloViews object (datashaded), for notebooks
    kg.render_map("proj")               # map.png + map.html

Each returns a typed result (``kg.results``: ``to_dict()``, ``summary()``). The stage functions are bound here at import, under names no subpackage has, so they work in
any call order; ``kg.features``, ``kg.render``, ``kg.score`` ... are the subpackages. Heavy
modules (torch, umap, datashader) load on first use, not at import.
"""
from __future__ import annotations

import importlib

from .api import (compute_features, demo_corpus, embed, grid, load_features, make_app, map, plot, project_config,
                  render_map, scan, score_maps, serve)
from .results import (EmbedResult, FeaturesResult, GridResult, MapResult, RenderResult, ScanResult,
                      ScoreResult)
from .config import Config
from .errors import EngineUnavailable, KlustrError, SkipFile, StoreError, UsageError
from .store import Project

__version__ = "0.1.0"

#: The subpackages, imported on first attribute access (``kg.features.load`` ...).
SUBPACKAGES = ("library", "features", "reduce", "score", "render")

__all__ = ["Config", "Project", "KlustrError", "EngineUnavailable", "SkipFile", "StoreError", "UsageError",
           "scan", "compute_features", "load_features", "embed", "score_maps", "grid", "render_map", "plot",
           "serve", "make_app", "map", "demo_corpus", "project_config", "decode",
           "ScanResult", "FeaturesResult", "EmbedResult", "ScoreResult", "GridResult", "RenderResult", "MapResult"]


def __getattr__(name: str):
    if name in SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    if name == "decode":            # array level: a file -> a clip (soundfile loads on first use)
        from .library.decode import decode
        return decode
    raise AttributeError(f"module 'klustr_gpu' has no attribute {name!r}")
