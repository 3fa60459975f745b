"""The library: scanning folders into a manifest, decoding files, labels, the demo corpus.

The stage is :func:`klustr_gpu.scan`. The scan and the demo corpus load lazily, so the scan's
header workers (``headers``) start without pandas and the decode workers without scipy.signal.
"""
from .decode import decode, read_info
from .labels import Labeller, is_missing, label_regex, manifest_labels

__all__ = ["decode", "read_info", "demo_corpus", "Labeller", "is_missing", "label_regex", "manifest_labels",
           "file_id", "scan_library"]

_LAZY = {"demo_corpus": ".democorpus", "file_id": ".scan",
         "scan_library": ".scan"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
