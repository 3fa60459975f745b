"""The library stage: scan, decode, labels, manifest, and the demo corpus.

``demo_corpus`` loads lazily, so decode workers do not pay for scipy.signal at start-up.
"""
from .decode import decode, read_info
from .labels import Labeller, label_regex
from .scan import file_id, scan

__all__ = ["decode", "read_info", "demo_corpus", "Labeller", "label_regex", "file_id", "scan"]


def __getattr__(name):
    if name == "demo_corpus":
        from .democorpus import demo_corpus
        return demo_corpus
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
