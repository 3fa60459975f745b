"""The library stage: scan, decode, labels, manifest, and the demo corpus."""
from .decode import decode, read_info
from .democorpus import demo_corpus
from .labels import Labeller, label_regex
from .scan import file_id, scan

__all__ = ["decode", "read_info", "demo_corpus", "Labeller", "label_regex", "file_id", "scan"]
