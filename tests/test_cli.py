"""The ``klustr`` command: wrong usage fails at once with one line and exit code 2."""
from __future__ import annotations

import subprocess
import sys

import pytest

from klustr_gpu.cli import main

KLUSTR = [sys.executable, "-m", "klustr_gpu.cli"]


def run(*args, **kw):
    return subprocess.run([*KLUSTR, *map(str, args)], capture_output=True, text=True, timeout=300, **kw)


def test_help_lists_every_command():
    r = run("--help")
    assert r.returncode == 0
    for cmd in ("map", "scan", "features", "embed", "score", "grid", "render", "serve", "demo-corpus"):
        assert cmd in r.stdout
    r = run("map", "--help")
    assert r.returncode == 0 and "--labels" in r.stdout and "--preset" in r.stdout


@pytest.mark.parametrize("argv, message", [
    (["scan", "{tmp}/missing", "-o", "{tmp}/p"], "does not exist"),
    (["map", "{tmp}/missing", "-o", "{tmp}/p"], "does not exist"),
    (["scan", "{tmp}/lib", "-o", "{tmp}/afile/p"], "inside the file"),
    (["scan", "{tmp}/lib", "-o", "{tmp}/afile"], "is a file"),
    (["features", "{tmp}/nowhere"], "no project folder"),
    (["embed", "{tmp}/lib"], "no manifest"),
    (["map", "{tmp}/lib", "-o", "{tmp}/p", "--labels", "{tmp}/nolabels.csv"], "does not exist"),
    (["scan", "{tmp}/lib", "-o", "{tmp}/p", "-c", "audio.nope=1"], "unknown setting"),
    (["scan", "{tmp}/lib", "-o", "{tmp}/p", "-c", "audio.sample_rate=abc"], "cannot use"),
])
def test_usage_errors_exit_2_with_one_line(tmp_path, capsys, argv, message):
    (tmp_path / "lib").mkdir()
    (tmp_path / "afile").write_text("x")
    code = main([a.format(tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "p" / "manifest.parquet").exists()


@pytest.mark.parametrize("argv", [
    ["features", "{tmp}", "--set", "mfcc,bogus"],
    ["embed", "{tmp}", "--method", "isomap"],
    ["embed", "{tmp}", "--engine", "quantum"],
    ["features", "{tmp}", "--device", "tpu"],
    ["features", "{tmp}", "--batch-size", "0"],
    ["map", "{tmp}", "-o", "{tmp}/p", "--preset", "nope"],
])
def test_bad_option_values_exit_2(tmp_path, argv):
    r = run(*[a.format(tmp=tmp_path) for a in argv])
    assert r.returncode == 2
    assert "error:" in r.stderr and r.stderr.count("error:") == 1


def test_scan_command_writes_manifest_and_config(demo_library, tmp_path):
    r = run("scan", demo_library, "-o", tmp_path / "p", "--labels", demo_library / "labels.csv", "--preset", "klustr", "-q")
    assert r.returncode == 0, r.stderr
    assert "210 files, 210 ok" in r.stdout
    toml = (tmp_path / "p" / "klustr.toml").read_text()
    assert 'preset = "klustr"' in toml and "sample_rate = 48000" in toml


@pytest.mark.parametrize("argv", [
    ["map", "{lib}", "-o", "{tmp}/p", "--engine", "cuml"],
    ["map", "{lib}", "-o", "{tmp}/p", "--device", "cuda"],
])
def test_impossible_engine_or_device_fails_before_work(demo_library, tmp_path, argv):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: these choices can run")
    r = run(*[a.format(lib=demo_library, tmp=tmp_path) for a in argv])
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert f"{argv[-2]} {argv[-1]}" in r.stderr and "=" not in r.stderr     # in flags, as it was given
    assert not (tmp_path / "p" / "manifest.parquet").exists()
    assert not (tmp_path / "p" / "klustr.toml").exists()


def test_failed_engine_choice_is_not_saved(demo_project, tmp_path):
    import shutil

    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    proj = tmp_path / "p"
    shutil.copytree(demo_project, proj)
    before = (proj / "klustr.toml").read_text() if (proj / "klustr.toml").exists() else None
    r = run("embed", proj, "--engine", "cuml", "-q")
    assert r.returncode == 2 and "cuml" in r.stderr.lower()
    after = (proj / "klustr.toml").read_text() if (proj / "klustr.toml").exists() else None
    assert after == before


def test_library_errors_are_printed_in_flags_and_commands():
    """The library speaks of parameters and stages; the command line of flags and commands."""
    from klustr_gpu.cli import translate

    assert translate("device='cuda': no usable CUDA device; use device='cpu' or device='auto'") == \
        "--device cuda: no usable CUDA device; use --device cpu or --device auto"
    assert translate("no project folder at /p; run scan(LIBRARY, '/p') first") == \
        "no project folder at /p; run `klustr scan LIBRARY -o /p` first"
    assert translate("/p has no frame mode features 'mfcc'; run compute_features('/p', sets=['mfcc'], frames=True)") \
        == "/p has no frame mode features 'mfcc'; run `klustr features /p --set mfcc --frames`"
    assert translate("perplexity is a tsne setting; method='umap' does not use it") == \
        "perplexity is a tsne setting; --method umap does not use it"
    assert translate("unknown setting 'n_neigbors'") == "unknown setting 'n_neigbors'"


def test_every_choice_comes_from_the_config():
    """One definition of each enumerated option: the parser offers exactly config.py's choices."""
    from klustr_gpu import config
    from klustr_gpu.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices
    choices = {(cmd, a.dest): tuple(a.choices) for cmd, p in sub.items() for a in p._actions if a.choices}
    assert choices[("map", "device")] == choices[("features", "device")] == config.DEVICES
    assert choices[("map", "engine")] == choices[("embed", "engine")] == choices[("grid", "engine")] == config.ENGINES
    assert choices[("map", "method")] == choices[("embed", "method")] == config.METHODS
    assert choices[("render", "by")] == config.COLOUR_BY and choices[("grid", "rank_by")] == config.RANK_BY
    assert choices[("map", "label_from")] == choices[("scan", "label_from")] == config.LABEL_FROM
