"""The Python in the README and in docs/ runs as written.

Every ```python block of README.md and of each docs/*.md page is extracted verbatim and run,
the blocks of one page one after another in one fresh interpreter (as a notebook runs its
cells), in an empty folder: the pages use small corpora (``kg.demo_corpus(..., n=200)``), so
this is the whole documented API on real (synthetic) audio. A documented call that breaks,
or that breaks only after another one (the order bug of issue 16: ``kg.render`` became a
module once ``klustr_gpu.render`` was imported), fails here.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def python_blocks(page: Path) -> list[str]:
    """The ```python blocks of a markdown page, in order, as written."""
    return BLOCK.findall(page.read_text(encoding="utf-8"))


def test_the_pages_hold_python():
    assert python_blocks(REPO / "README.md"), "the README's notebook example is gone"
    assert python_blocks(REPO / "docs" / "python-api.md")


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)], ids=lambda p: p.relative_to(REPO).as_posix())
def test_page_python_runs_verbatim(page, tmp_path):
    blocks = python_blocks(page)
    script = tmp_path / "page.py"
    cells = [f"# -- block {i + 1} of {page.name}\n{code}" for i, code in enumerate(blocks)]
    script.write_text("\n".join(cells), encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    work = tmp_path / "work"
    work.mkdir()
    r = subprocess.run([sys.executable, str(script)], cwd=work, env=env,
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, f"{page.name}: its Python failed\n{r.stderr[-4000:]}"


def test_every_stage_stays_callable_after_every_subpackage_is_imported():
    """The order bug itself, without a corpus: import every subpackage, then every stage is
    still a function, and ``kg.<subpackage>`` is the subpackage."""
    code = (
        "import importlib, types, klustr_gpu as kg\n"
        "for sub in kg.SUBPACKAGES:\n"
        "    importlib.import_module('klustr_gpu.' + sub)\n"
        "    assert isinstance(getattr(kg, sub), types.ModuleType), sub\n"
        "for name in kg.api.__all__:\n"
        "    assert callable(getattr(kg, name)) and not isinstance(getattr(kg, name), types.ModuleType), name\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


def test_import_is_light():
    """``import klustr_gpu`` binds every stage but loads none of the heavy libraries."""
    heavy = ("torch", "umap", "openTSNE", "datashader", "holoviews", "panel", "bokeh", "sklearn", "numba", "dask",
             "distributed", "zarr", "torchaudio")
    code = ("import sys, klustr_gpu\n"
            f"loaded = [m for m in {heavy!r} if m in sys.modules]\n"
            "assert not loaded, loaded\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
