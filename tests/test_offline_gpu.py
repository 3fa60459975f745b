"""A CUDA host with no network: the wheelhouse (tools/wheelhouse.py), its checks
(tools/wheelcheck.py) and `benchmarks/gpu.sh --offline`. Bad input stops before any work with one
line and exit 2; the whole path (wheelhouse for this Python -> a fresh environment with only torch
and torchaudio -> install with --no-index -> gpu.sh --offline --dry-run) runs end to end."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GPU_SH = REPO / "benchmarks" / "gpu.sh"
HERE_PY = f"{sys.version_info[0]}.{sys.version_info[1]}"


def _module(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(path.stem, mod)
    spec.loader.exec_module(mod)
    return mod


wc = _module(REPO / "tools" / "wheelcheck.py")
wh = _module(REPO / "tools" / "wheelhouse.py")
preflight = _module(REPO / "benchmarks" / "gpu_steps" / "preflight.py")


def _gpu_sh(*args: str, timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    e["PYTHON"] = sys.executable
    e.update(env)
    return subprocess.run(["bash", str(GPU_SH), *args], capture_output=True, text=True, timeout=timeout, env=e)


def _one_line(r: subprocess.CompletedProcess, code: int = 2) -> str:
    assert r.returncode == code, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def _wheel(folder: Path, name: str, version: str = "1.0", tag: str = "py3-none-any") -> Path:
    path = folder / f"{name}-{version}-{tag}.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}-{version}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return path


def _house(tmp_path: Path, name: str = "wh", *, python: str = HERE_PY, tags=("py3-none-any",), assumed=None,
           sha=True) -> Path:
    """A small wheelhouse with a manifest, as tools/wheelhouse.py writes it."""
    d = tmp_path / name
    d.mkdir()
    files = [_wheel(d, f"pkg{i}", tag=t) for i, t in enumerate(tags)]
    m = {"format": 1, "python": python, "platforms": [], "platform_label": "this platform",
         "roots": [["pkg0", ""]], "assumed_present": assumed or {},
         "wheels": [{"file": f.name, "name": f.name.split("-")[0], "version": "1.0", "bytes": f.stat().st_size,
                     "sha256": hashlib.sha256(f.read_bytes()).hexdigest() if sha else None} for f in files]}
    (d / wc.MANIFEST).write_text(json.dumps(m))
    return d


# -- bad input: one line, exit 2, before any work -------------------------------------------------
def test_no_cuda_device_stops_before_any_work(tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    r = _gpu_sh("--out", str(tmp_path / "out"), WORK=str(tmp_path / "work"))
    line = _one_line(r)
    assert line.startswith("gpu.sh: torch ") and "sees no CUDA device" in line and "--dry-run" in line
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()


def test_preflight_names_the_problem():
    assert preflight.verdict(False, None, None, False, 0)[1].startswith("this Python has no torch")
    dev, why = preflight.verdict(False, "2.11.0+cpu", None, False, 0)
    assert dev == "" and "CPU-only build" in why and "--dry-run" in why
    assert "sees no CUDA device" in preflight.verdict(False, "2.11.0", "13.0", False, 0)[1]
    assert preflight.verdict(False, "2.11.0", "13.0", True, 1) == ("cuda", "")
    assert preflight.verdict(True, "2.11.0+cpu", None, False, 0) == ("cpu", "")


def test_missing_wheelhouse(tmp_path):
    line = _one_line(_gpu_sh("--offline", str(tmp_path / "nope"), "--dry-run", "--out", str(tmp_path / "out")))
    assert line == f"gpu.sh: wheelhouse {tmp_path / 'nope'} does not exist; build it with `make wheelhouse` " \
                   "(docs/gpu.md) and pass its folder"
    assert not (tmp_path / "out").exists()


def test_incomplete_or_damaged_wheelhouse(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "is incomplete: no klustr-wheelhouse.json" in _one_line(_gpu_sh("--offline", str(empty), "--dry-run"))
    d = _house(tmp_path, tags=("py3-none-any", "py3-none-any"))
    (d / "pkg1-1.0-py3-none-any.whl").unlink()
    assert "is incomplete: 1 of 2 wheels missing (pkg1-1.0-py3-none-any.whl)" in \
        _one_line(_gpu_sh("--offline", str(d), "--dry-run"))
    with open(d / "pkg0-1.0-py3-none-any.whl", "ab") as fh:
        fh.write(b"x")
    _wheel(d, "pkg1")
    assert "is damaged: pkg0-1.0-py3-none-any.whl differ" in _one_line(_gpu_sh("--offline", str(d), "--dry-run"))


def test_wheelhouse_for_another_python(tmp_path):
    other = "3.12" if HERE_PY != "3.12" else "3.11"
    d = _house(tmp_path, "a", python=other)
    line = _one_line(_gpu_sh("--offline", str(d), "--dry-run"))
    assert f"was built for Python {other} (this platform), but this is Python {HERE_PY}" in line
    assert f"--python {HERE_PY}" in line
    d2 = _house(tmp_path, "b", tags=("py3-none-any", "cp39-cp39-manylinux_2_17_x86_64"))
    line = _one_line(_gpu_sh("--offline", str(d2), "--dry-run"))
    assert "holds pkg1-1.0-cp39-cp39-manylinux_2_17_x86_64.whl, a wheel for another Python or platform" in line


def test_host_lacks_what_the_wheelhouse_left_out(tmp_path):
    d = _house(tmp_path, "a", assumed={"klustr-no-such-package": ["*"]})
    assert "this Python has no klustr-no-such-package, which wheelhouse" in \
        _one_line(_gpu_sh("--offline", str(d), "--dry-run"))
    d = _house(tmp_path, "b", assumed={"numpy": [">=1", ">=99"]})
    assert "but the wheelhouse needs numpy>=1,>=99: rebuild it without numpy in --assume-present" in \
        _one_line(_gpu_sh("--offline", str(d), "--dry-run"))


@pytest.mark.parametrize("args, says", [
    (["--python", "2.7"], "--python 2.7: give a CPython version as X.Y, 3.10 or newer"),
    (["--python", "3.9"], "--python 3.9: give a CPython version"),
    (["--platform", "win_amd64"], "--platform win_amd64: use native, manylinux-x86_64"),
    (["--platform", "manylinux-x86_64", "--glibc", "3.1"], "--glibc 3.1: give the target's glibc as 2.N"),
    (["--assume-present", "no/such preset"], "--assume-present no/such preset: give names"),
    (["--assume-present", "@/no/such/file"], "--assume-present @/no/such/file: no such file"),
])
def test_wheelhouse_bad_input(tmp_path, args, says):
    r = subprocess.run([sys.executable, str(REPO / "tools" / "wheelhouse.py"), "--dest", str(tmp_path / "wh"), *args],
                       capture_output=True, text=True, timeout=60)
    assert _one_line(r).startswith(f"wheelhouse.py: {says}")
    assert not (tmp_path / "wh").exists()


def test_wheelhouse_never_overwrites_another_folder(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    r = subprocess.run([sys.executable, str(REPO / "tools" / "wheelhouse.py"), "--dest", str(tmp_path / "notes")],
                       capture_output=True, text=True, timeout=60)
    assert "exists and is not a wheelhouse: choose a new or empty folder" in _one_line(r)
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"


# -- the requirement walk: the target's markers, not the running Python's ---------------------------
def test_walk_follows_the_target_markers_extras_and_exclusions():
    nodes = {"a": ("1.0", ["b; python_version >= '3.12'", "c; python_version < '3.12'", "d[x]", "g>=2"]),
             "b": ("1.0", []), "c": ("1.0", []), "d": ("1.0", ["e; extra == 'x'", "f; extra == 'y'"]),
             "e": ("1.0", []), "f": ("1.0", []), "g": ("1.5", [])}
    lookup = nodes.get
    env = {**wh.linux_env("3.12", "x86_64")}
    found, excluded, missing = wc.walk([("a", "")], lookup, env)
    assert sorted(found) == ["a", "b", "d", "e"] and found["d"] == ("1.0", {"x"})
    assert missing == [("g>=2", "a", "1.5")]                     # a version outside the specifier
    found, _, _ = wc.walk([("a", "")], lookup, wh.linux_env("3.11", "x86_64"))
    assert sorted(found) == ["a", "c", "d", "e"]
    found, excluded, _ = wc.walk([("a", "")], lookup, env, exclude=["d"], prune={"a": ["b"]})
    assert sorted(found) == ["a"] and excluded == {"d": ["*"]}
    _, _, missing = wc.walk([("a", "")], {k: v for k, v in nodes.items() if k != "b"}.get, env)
    assert ("b", "a", None) in missing


def test_manylinux_tags_and_the_device_preset():
    tags = wh.manylinux_tags("x86_64", 28)
    assert tags[0] == "manylinux_2_28_x86_64" and "manylinux_2_17_x86_64" in tags and "manylinux2014_x86_64" in tags
    assert "manylinux_2_29_x86_64" not in tags
    present = wh.assumed(["device-h200"])
    assert present["torch"] == "2.11.0" and present["torchaudio"] == "2.11.0"
    assert present["numpy"] is None and "scikit-learn" in present and "datashader" not in present


def test_the_device_command_in_the_docs_fits_the_device_tool():
    """docs/gpu.md gives the one command a session with a GPU runs: at most 2,000 characters,
    installing the carried wheelhouse and writing under $OUT."""
    text = (REPO / "docs" / "gpu.md").read_text()
    m = re.search(r"<!-- device-command -->\s*```(?:bash|sh)?\n(.*?)```", text, re.S)
    assert m, "docs/gpu.md lost its device command block"
    cmd = m.group(1).strip()
    assert len(cmd) <= 2000 and "--offline wheelhouse" in cmd and "$OUT" in cmd
    assert '"carry": ["wheelhouse"]' in text


# -- the whole path on this CPU machine -------------------------------------------------------------
def _torch_only(tmp_path: Path) -> Path:
    """A fresh venv whose only packages beyond pip are this Python's torch, torchaudio and their own
    requirements, exposed through a .pth file (symbolic links: no second copy of torch)."""
    from importlib import metadata

    found, _, missing = wc.walk([("torch", ""), ("torchaudio", "")], wc.installed_lookup, wc.default_environment())
    assert not missing, missing
    overlay = tmp_path / "torch-only"
    overlay.mkdir()
    for name in found:
        dist = metadata.distribution(name)
        for top in {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")} - {"__pycache__"}:
            if not (overlay / top).exists():
                (overlay / top).symlink_to(Path(dist.locate_file(top)))
    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "_klustr_torch_only.pth").write_text(f"{overlay}\n")
    return py


@pytest.mark.slow
def test_offline_path_from_a_fresh_environment(tmp_path):
    """`tools/wheelhouse.py` for this Python (network: PyPI), a fresh venv with only torch and
    torchaudio, then `gpu.sh --offline WHEELHOUSE --dry-run` with no index and no network: the
    wheelhouse is checked, installed with --no-index, checked again, and every step passes."""
    house = tmp_path / "wheelhouse"
    r = subprocess.run([sys.executable, str(REPO / "tools" / "wheelhouse.py"), "--dest", str(house)],
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-2000:]
    assert re.search(r"wheelhouse .*: \d+ wheels, [\d.]+ MiB, for Python " + re.escape(HERE_PY), r.stdout)
    m = json.loads((house / wc.MANIFEST).read_text())
    names = {w["name"] for w in m["wheels"]}
    assert {"klustr-gpu", "numpy", "torchdr", "datashader", "pytest", "librosa"} <= names
    assert not names & {"torch", "torchaudio", "panel", "bokeh", "holoviews"} and not any(
        n.startswith(("nvidia-", "cupy", "cuml")) for n in names)
    assert set(m["assumed_present"]) == {"torch", "torchaudio"}
    lock = (house / wc.LOCK).read_text()
    assert all(f"{w['name']}=={w['version']} --hash=sha256:{w['sha256']}" in lock for w in m["wheels"])

    py = _torch_only(tmp_path)
    probe = subprocess.run([str(py), "-c", "import torch, torchaudio\ntry:\n import numpy\nexcept ImportError:\n"
                            " print('numpy absent')"], capture_output=True, text=True, timeout=300,
                           env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert probe.stdout.strip() == "numpy absent", probe.stderr[-1000:]

    no_net = dict(PYTHON=str(py), PIP_INDEX_URL="http://127.0.0.1:9/simple", http_proxy="http://127.0.0.1:9",
                  https_proxy="http://127.0.0.1:9", WORK=str(tmp_path / "work"),
                  N="40", KNN_N="3000", DR_N="300", CPU_REF_N="200", DR_ITERS="40")
    out, site = tmp_path / "out", tmp_path / "site"
    r = _gpu_sh("--offline", str(house), "--dry-run", "--out", str(out), "--site", str(site), timeout=1500, **no_net)
    assert r.returncode == 0, r.stderr[-3000:]
    run = json.loads((out / "gpu.json").read_text())
    status = {k: v["status"] for k, v in run["steps"].items()}
    assert status.pop("install") == "ok"
    assert {k for k, v in status.items() if v != "ok"} == {"cupy", "cuml_umap", "cuml_tsne"}, status
    assert run["steps"]["features_agree"]["figures"]["agree"]
    used = run["device"]["imported_from"]
    assert used["numpy"].startswith(str(site)) and used["klustr_gpu"] == str(REPO / "klustr_gpu")
    assert used["torch"].startswith(str(tmp_path / "torch-only"))
    assert (out / "gpu.md").read_text().startswith("## GPU run on CPU") and (out / "gpu.log").stat().st_size > 0
