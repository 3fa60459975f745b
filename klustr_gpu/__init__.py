"""klustr_gpu: turn a large audio library into a zoomable 2-D map of its sounds.

The Python API mirrors the ``klustr`` command; every function takes a project folder::

    import klustr_gpu as kg
    kg.scan("~/Samples", "proj", labels="~/Samples/labels.csv")
    kg.features("proj")                 # features/<set>/
    kg.embed("proj", method="umap")     # embeddings/<name>.parquet
    kg.plot("proj")                     # a HoloViews object (datashaded), for notebooks
    kg.render("proj")                   # map.png + map.html

Heavy modules (torch, umap, datashader) load on first use, not at import.
"""
from __future__ import annotations

import importlib

from .config import Config
from .errors import KlustrError, SkipFile, StoreError, UsageError
from .store import Project

__version__ = "0.1.0"

_LAZY = {
    "scan": ("klustr_gpu.library.scan", "scan"),
    "demo_corpus": ("klustr_gpu.library.democorpus", "demo_corpus"),
    "decode": ("klustr_gpu.library.decode", "decode"),
    "features": ("klustr_gpu.features", "extract"),
    "load_features": ("klustr_gpu.features", "load"),
    "embed": ("klustr_gpu.reduce", "embed"),
    "score": ("klustr_gpu.score", "score"),
    "grid": ("klustr_gpu.score", "grid"),
    "plot": ("klustr_gpu.render", "plot"),
    "render": ("klustr_gpu.render", "render"),
    "serve": ("klustr_gpu.render", "serve"),
    "map": ("klustr_gpu.pipeline", "run_map"),
}

__all__ = ["Config", "Project", "KlustrError", "SkipFile", "StoreError", "UsageError", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'klustr_gpu' has no attribute {name!r}")
