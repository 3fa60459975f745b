"""Engine choice: a name -> {method -> estimator class} table and the ``auto`` rule.

``auto`` takes ``cuml`` when cuML and CuPy are installed and torch sees a CUDA GPU, else
``torchdr`` when TorchDR is installed and there is a GPU, else ``cpu``; it logs which it took
and why. An explicit engine that cannot run here raises :class:`EngineUnavailable` (one line),
never a silent fallback. Optional libraries are imported only inside the estimators' ``fit``.
The names (engines with ``auto``, methods) are :data:`klustr_gpu.config.ENGINES` and
:data:`klustr_gpu.config.METHODS`, defined once there.
"""
from __future__ import annotations

import importlib.util
import inspect
import logging

from ..config import ENGINES, METHODS
from ..errors import EngineUnavailable, UsageError
from ..runtime import has_cuda
from . import cpu, cuml, torchdr

log = logging.getLogger(__name__)

#: engine name -> {method -> estimator class}
REDUCERS = {"cuml": cuml.ENGINE, "torchdr": torchdr.ENGINE, "cpu": cpu.ENGINE}
assert set(REDUCERS) == set(ENGINES) - {"auto"} and all(set(t) == set(METHODS) for t in REDUCERS.values())


def installed(*names: str) -> bool:
    """Whether every one of the named modules can be imported (without importing it)."""
    return all(importlib.util.find_spec(n) is not None for n in names)


def resolve_engine(engine: str = "auto") -> str:
    """``'cuml' | 'torchdr' | 'cpu'`` for ``engine`` (``auto`` or one of those)."""
    engine = (engine or "auto").lower()
    if engine == "cpu":
        return "cpu"
    if engine == "cuml":
        if not installed("cuml", "cupy"):
            raise EngineUnavailable("engine='cuml' needs RAPIDS cuML and CuPy, which are not installed "
                                    "(pip install 'klustr_gpu[gpu]' or use environment.yml); try engine='auto'",
                                    param="engine")
        if not has_cuda():
            raise EngineUnavailable("engine='cuml' needs a CUDA GPU and none is visible; try engine='cpu'",
                                    param="engine")
        return "cuml"
    if engine == "torchdr":
        if not installed("torchdr"):
            raise EngineUnavailable("engine='torchdr' needs TorchDR, which is not installed "
                                    "(pip install 'klustr_gpu[torchdr]'); try engine='auto'", param="engine")
        if not has_cuda():
            log.warning("engine 'torchdr' runs on the CPU here (no CUDA GPU): expect it to be slow")
        return "torchdr"
    if engine != "auto":
        raise UsageError(f"unknown engine {engine!r}; choose one of: {', '.join(ENGINES)}", param="engine")
    gpu = has_cuda()
    if gpu and installed("cuml", "cupy"):
        choice, why = "cuml", "cuML installed and a CUDA GPU present"
    elif gpu and installed("torchdr"):
        choice, why = "torchdr", "CUDA GPU present, TorchDR installed, cuML not installed"
    else:
        choice = "cpu"
        why = "no CUDA GPU" if not gpu else "CUDA GPU present but neither cuML nor TorchDR installed"
    log.info("engine auto -> %s (%s)", choice, why)
    return choice


def check_method(method: str) -> str:
    if method not in METHODS:
        raise UsageError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}", param="method")
    return method


def reducer_class(method: str, engine: str):
    """The estimator class of ``method`` on a resolved ``engine``."""
    return REDUCERS[engine][check_method(method)]


def accepted(cls) -> set[str]:
    """The arguments an estimator class takes."""
    return {p for p in inspect.signature(cls.__init__).parameters if p != "self"}


def make_reducer(method: str, engine: str = "auto", **params):
    """An unfitted estimator for ``method`` on ``engine`` (resolved with :func:`resolve_engine`).

    ``params`` are the estimator's arguments (``seed`` is accepted for ``random_state``); an
    argument the estimator does not take (a t-SNE ``perplexity`` given to UMAP) is a
    :class:`UsageError` that names it.
    """
    cls = reducer_class(method, resolve_engine(engine))
    if "seed" in params:
        params["random_state"] = params.pop("seed")
    unknown = set(params) - accepted(cls)
    if unknown:
        raise UsageError(f"{method} ({cls.__name__}) does not take {', '.join(sorted(unknown))}; "
                         f"it takes: {', '.join(sorted(accepted(cls)))}", param=sorted(unknown)[0])
    return cls(**params)
