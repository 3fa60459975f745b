"""The library: scanning folders into a manifest, decoding files, labels, the demo corpus.

The stage is :func:`klustr_gpu.scan`. ``demo_corpus`` loads lazily, so decode workers do not
pay for scipy.signal at start-up.
"""
from .decode import decode, read_info
from .labels import Labeller, is_missing, label_regex, manifest_labels
from .scan import file_id, scan_library

__all__ = ["decode", "read_info", "demo_corpus", "Labeller", "is_missing", "label_regex", "manifest_labels",
           "file_id", "scan_library"]


def __getattr__(name):
    if name == "demo_corpus":
        from .democorpus import demo_corpus
        return demo_corpus
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
