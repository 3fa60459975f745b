"""Shared fixtures: real audio made by the tests (demo corpus) and the real Hydrogen kits."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FETCH = REPO.parent / "shared" / "data" / "fetch_hydrogen.sh"
HYDROGEN_DIR = Path(os.environ.get("KLUSTR_HYDROGEN", Path.home() / ".cache" / "klustr_gpu" / "hydrogen"))


def _cuda() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


def pytest_collection_modifyitems(config, items):
    if _cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def demo_library(tmp_path_factory) -> Path:
    """A 210-file synthetic labelled library (7 classes x 30), mixed formats/rates/channels."""
    from klustr_gpu.library.democorpus import demo_corpus

    root = tmp_path_factory.mktemp("demo") / "library"
    demo_corpus(root, n=210, seed=1, progress=False)
    return root


@pytest.fixture(scope="session")
def demo_project(demo_library, tmp_path_factory) -> Path:
    """``demo_library`` scanned with its labels (manifest only). Treat as read-only; copy to modify."""
    from klustr_gpu import scan

    proj = tmp_path_factory.mktemp("demo_project") / "project"
    scan(demo_library, proj, labels=demo_library / "labels.csv", progress=False)
    return proj


@pytest.fixture(scope="session")
def hydrogen_library() -> Path:
    """The real Hydrogen drum one-shots (about 460 files) with labels.csv; fetched once, cached
    outside git. Skips locally when it cannot be fetched; CI (CI=true) fails instead."""
    lib = HYDROGEN_DIR / "library"
    if not (lib / "labels.csv").exists() and FETCH.exists():
        env = dict(os.environ, PYTHON=sys.executable)
        subprocess.run(["bash", str(FETCH), str(HYDROGEN_DIR)], env=env, capture_output=True, timeout=900)
    if not (lib / "labels.csv").exists():
        if os.environ.get("CI"):
            pytest.fail(f"Hydrogen corpus missing at {lib}; `make hydrogen` fetches it")
        pytest.skip(f"Hydrogen corpus not available at {lib}")
    return lib


@pytest.fixture(scope="session")
def clips(request):
    """Eight real clips (1 s, 22.05 kHz, peak-normalised, ``[8, 22050]``): Hydrogen when present,
    else the demo corpus. For parity tests against librosa."""
    import numpy as np

    from klustr_gpu.config import AudioConfig
    from klustr_gpu.library.decode import decode

    audio = AudioConfig(sample_rate=22050, clip_seconds=1.0)
    try:
        lib = request.getfixturevalue("hydrogen_library")
        paths = sorted(p for p in Path(lib).rglob("*") if p.suffix.lower() in (".wav", ".flac"))
    except pytest.skip.Exception:
        lib = request.getfixturevalue("demo_library")
        paths = sorted(Path(lib).rglob("*.wav"))
    out = []
    for p in paths[:: max(1, len(paths) // 24)]:
        try:
            out.append(decode(p, audio))
        except Exception:  # noqa: BLE001 - a broken sample just is not used here
            continue
        if len(out) == 8:
            break
    assert len(out) == 8
    return np.stack(out)
