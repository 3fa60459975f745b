"""numba's on-disk cache for the CPU engines (umap-learn, pynndescent).

umap-learn JIT-compiles about a hundred functions on first use, most without ``cache=True``,
so every new process pays 10-30 s of compilation. :func:`import_umap` points numba at a cache
folder in the user's cache directory (unless the user set ``NUMBA_CACHE_DIR``) *before* numba
is imported, imports umap-learn, and switches on caching for its not-yet-cached dispatchers,
so the second process loads machine code from disk. Nothing happens at ``import klustr_gpu``.
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import warnings
from pathlib import Path

log = logging.getLogger(__name__)

_UMAP_MODULES = ("umap.umap_", "umap.layouts", "umap.utils", "umap.distances", "umap.sparse",
                 "umap.spectral")
_done: set[str] = set()


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/klustr_gpu/numba`` (default ``~/.cache/klustr_gpu/numba``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "klustr_gpu" / "numba"


def configure() -> None:
    """Set ``NUMBA_CACHE_DIR`` unless the user did; if numba is already imported, tell it too."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return
    path = cache_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:  # read-only home: numba falls back to its own locations
        return
    os.environ["NUMBA_CACHE_DIR"] = str(path)
    if "numba" in sys.modules:
        numba = sys.modules["numba"]
        if not getattr(numba.config, "CACHE_DIR", ""):
            numba.config.CACHE_DIR = str(path)


@contextlib.contextmanager
def quiet_cache_warnings():
    """Hide numba's notice that a function cannot be cached (it uses dynamic globals): such
    functions are simply compiled as before."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Cannot cache compiled function")
        yield


def _enable_caching(module_names: tuple[str, ...]) -> int:
    from numba.core.caching import NullCache
    from numba.core.registry import CPUDispatcher

    count = 0
    for name in module_names:
        if name in _done:
            continue
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        for obj in vars(mod).values():
            if isinstance(obj, CPUDispatcher) and isinstance(getattr(obj, "_cache", None), NullCache):
                obj.enable_caching()
                count += 1
        _done.add(name)
    return count


def import_pynndescent():
    """pynndescent, with numba's cache folder set (its own functions choose what to cache)."""
    configure()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)  # tbb / threading-layer notices
        try:
            import pynndescent
        except ImportError:
            raise ImportError("the cpu engine needs pynndescent: pip install pynndescent") from None
    return pynndescent


def import_umap():
    """``umap`` with numba's disk cache switched on for its compiled functions."""
    import_pynndescent()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        warnings.simplefilter("ignore", category=ImportWarning)  # "Tensorflow not installed"
        try:
            import umap
        except ImportError:
            raise ImportError("the cpu engine needs umap-learn: pip install umap-learn") from None
        n = _enable_caching(_UMAP_MODULES)
    if n:
        log.debug("numba disk cache on for %d umap-learn functions (%s)", n, os.environ.get("NUMBA_CACHE_DIR"))
    return umap
