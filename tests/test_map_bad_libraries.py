"""Libraries the defaults must survive (issue 14): one class, one file, identical files, all-silent
files, clips far longer than the analysis window, single-cycle waveforms; and the label-free
rule of the default ``general`` set (hits or sustained, with its fallback). ``klustr map`` gives
a map or one line and a non-zero exit, never a traceback."""
from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from klustr_gpu import Config, Project
from klustr_gpu.features.auto import MIN_CLIPS, choose_profile, sustained
import klustr_gpu as kg

SR = 22050


def _hit(rng, f0: float, decay: float, seconds: float = 0.6, noise: float = 0.3) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    y = (np.sin(2 * np.pi * f0 * t) + noise * rng.standard_normal(len(t))) * np.exp(-t / decay)
    return (0.8 * y / np.abs(y).max()).astype(np.float32)


def _note(f0: float, partials, seconds: float = 1.2) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    y = sum(a * np.sin(2 * np.pi * k * f0 * t) for k, a in enumerate(partials, start=1) if k * f0 < SR / 2)
    env = np.minimum(1.0, t / 0.02) * np.minimum(1.0, (seconds - t) / 0.05)
    return (0.8 * y * env / np.abs(y).max()).astype(np.float32)


def _library(root: Path, files: dict[str, np.ndarray], sr: int = SR) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for rel, y in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(root / rel, y, sr)
        rows.append((rel, rel.split("/")[0]))
    pd.DataFrame(rows, columns=["path", "label"]).to_csv(root / "labels.csv", index=False)
    return root


def _cli_map(lib: Path, proj: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "klustr_gpu.cli", "map", str(lib), "-o", str(proj),
                           "--labels", str(lib / "labels.csv"), "-q"], capture_output=True, text=True, timeout=600)


def _map_or_one_line(r: subprocess.CompletedProcess, proj: Path, n_points: int | None) -> None:
    assert "Traceback" not in r.stderr, r.stderr
    if r.returncode == 0:
        emb, _ = Project(proj).read_embedding()
        assert np.isfinite(emb[["x", "y"]].to_numpy()).all()
        if n_points is not None:
            assert len(emb) == n_points
        assert (proj / "map.png").exists()
    else:
        errors = [ln for ln in r.stderr.splitlines() if "error:" in ln]      # warnings may come before it
        assert len(errors) == 1 and r.stderr.strip().splitlines()[-1] == errors[0], r.stderr


def test_one_class(tmp_path):
    rng = np.random.default_rng(0)
    lib = _library(tmp_path / "lib", {f"kick/k{i}.wav": _hit(rng, 50 + 3 * i, 0.15) for i in range(20)})
    r = _cli_map(lib, tmp_path / "p")
    assert r.returncode == 0, r.stderr
    _map_or_one_line(r, tmp_path / "p", 20)


def test_one_file(tmp_path):
    lib = _library(tmp_path / "lib", {"kick/only.wav": _hit(np.random.default_rng(0), 60, 0.1)})
    r = _cli_map(lib, tmp_path / "p")
    _map_or_one_line(r, tmp_path / "p", 1)


def test_identical_files(tmp_path):
    y = _hit(np.random.default_rng(0), 200, 0.1)
    lib = _library(tmp_path / "lib", {f"snare/s{i}.wav": y for i in range(12)})
    r = _cli_map(lib, tmp_path / "p")
    _map_or_one_line(r, tmp_path / "p", 12)


def test_all_silent_files(tmp_path):
    lib = _library(tmp_path / "lib", {f"quiet/q{i}.wav": np.zeros(SR // 2, np.float32) for i in range(6)})
    r = _cli_map(lib, tmp_path / "p")
    assert r.returncode != 0
    _map_or_one_line(r, tmp_path / "p", None)
    assert "silent" in r.stderr or "no " in r.stderr.lower()


def test_clips_far_longer_than_the_window(tmp_path):
    """Ten 40-second files: only the first second of each is read and analysed."""
    rng = np.random.default_rng(1)
    files = {}
    for i in range(10):
        head = _hit(rng, 80 + 40 * i, 0.3, seconds=1.0)
        files[f"{'low' if i < 5 else 'high'}/long{i}.wav"] = np.concatenate(
            [head, 0.01 * rng.standard_normal(SR * 39).astype(np.float32)])
    lib = _library(tmp_path / "lib", files)
    summary = kg.map(lib, tmp_path / "p", labels=lib / "labels.csv", progress=False)
    assert summary.ok == 10 and summary.points == 10


def test_single_cycle_waveforms_are_mapped_not_skipped(tmp_path):
    """A wavetable folder: 24 single-cycle waveforms of 77-406 samples at 44.1 kHz, three shapes,
    are looped into tones and mapped; none is skipped, and the shapes come apart on the map."""
    rng = np.random.default_rng(2)
    shapes = {"sine": lambda p: np.sin(2 * np.pi * p), "saw": lambda p: 2 * p - 1,
              "square": lambda p: np.where(p < 0.5, 1.0, -1.0)}
    files = {}
    for name, f in shapes.items():
        for i, n in enumerate(rng.integers(77, 407, 8)):
            files[f"{name}/{name}{i}.wav"] = (0.8 * f(np.arange(n) / n)).astype(np.float32)
    lib = _library(tmp_path / "lib", files, sr=44100)
    summary = kg.map(lib, tmp_path / "p", labels=lib / "labels.csv", progress=False)
    assert summary.skipped == 0 and summary.points == 24, summary.skipped_by_reason
    from klustr_gpu.score.metrics import knn_accuracy

    emb, _ = Project(tmp_path / "p").read_embedding()
    assert knn_accuracy(emb[["x", "y"]].to_numpy(), emb["label"].to_numpy(), k=5) > 0.8


def test_skip_reasons_are_grouped_by_kind(tmp_path):
    """Files truncated at different lengths give different reasons; the summary has one line."""
    rng = np.random.default_rng(3)
    lib = _library(tmp_path / "lib", {f"kick/k{i}.wav": _hit(rng, 60, 0.1) for i in range(6)})
    whole = (lib / "kick/k0.wav").read_bytes()
    for i, cut in enumerate((200, 400, 600)):
        (lib / f"kick/cut{i}.wav").write_bytes(whole[: len(whole) // 2 + cut])
    summary = kg.map(lib, tmp_path / "p", progress=False)
    man = Project(tmp_path / "p").read_manifest()
    assert man.loc[man.status != "ok", "reason"].nunique() == 3
    assert summary.skipped_by_reason == {"truncated": 3}
    assert sum("skipped" in ln for ln in summary.summary().splitlines()) == 2    # the totals, one kind


# -- the rule ------------------------------------------------------------------------------------
def _files(lib: Path) -> dict[str, np.ndarray]:
    return {p.name: sf.read(p, dtype="float32")[0] for p in sorted(lib.rglob("*.wav"))}


def test_sustained_clips_are_told_from_hits():
    rng = np.random.default_rng(4)
    hits = np.stack([np.pad(_hit(rng, 100 * (i + 1), 0.03), (0, SR - int(0.6 * SR))) for i in range(4)])
    notes = np.stack([_note(220 * (i + 1), [1, 0.5, 0.3])[:SR] for i in range(4)])
    assert not sustained(hits, SR).any()
    assert sustained(notes, SR).all()


def test_rule_decides_hits_and_sustained_and_records_why(tmp_path):
    rng = np.random.default_rng(5)
    drums = _library(tmp_path / "drums", {f"{c}/{c}{i}.wav": _hit(rng, f, d)
                                          for c, f, d in (("kick", 55, 0.08), ("hat", 3000, 0.03)) for i in range(8)})
    notes = _library(tmp_path / "notes", {f"{c}/{c}{i}.wav": _note(110 * 2 ** (i / 4), p)
                                          for c, p in (("flute", [1, 0.1]), ("reed", [1, 0, 0.6, 0, 0.4]))
                                          for i in range(8)})
    both = _library(tmp_path / "both", {**{f"kick/{k}": v for k, v in _files(drums).items()},
                                        **{f"flute/{k}": v for k, v in list(_files(notes).items())[:6]}})
    for lib, want in ((drums, "hits"), (notes, "sustained"), (both, "mixed")):
        proj = tmp_path / f"p-{want}"
        kg.map(lib, proj, labels=lib / "labels.csv", progress=False)
        cfg = Project(proj).load_config()
        assert cfg.general.profile == "auto" and cfg.general.decided == want
        assert want in cfg.decisions["general"] and "sampled clips" in cfg.decisions["general"]
        assert f"[general]" in (proj / "klustr.toml").read_text()


def test_rule_that_cannot_decide_says_so_and_falls_back(tmp_path, caplog):
    rng = np.random.default_rng(6)
    lib = _library(tmp_path / "lib", {f"kick/k{i}.wav": _hit(rng, 60, 0.1) for i in range(MIN_CLIPS - 1)})
    with caplog.at_level(logging.WARNING, logger="klustr_gpu.features.auto"):
        kg.map(lib, tmp_path / "p", labels=lib / "labels.csv", progress=False)
    cfg = Project(tmp_path / "p").load_config()
    assert cfg.general.decided == "mixed"
    assert cfg.decisions["general"].startswith("cannot decide")
    assert any("cannot decide" in r.getMessage() for r in caplog.records)
    profile, reason, _ = choose_profile(Project(tmp_path / "p"), cfg.updated({"features.frames": True}))
    assert profile == "mixed" and "frame mode" in reason


def test_a_fixed_profile_is_not_decided(tmp_path):
    rng = np.random.default_rng(7)
    lib = _library(tmp_path / "lib", {f"kick/k{i}.wav": _hit(rng, 60, 0.1) for i in range(10)})
    kg.map(lib, tmp_path / "p", Config().updated({"general.profile": "sustained"}), labels=lib / "labels.csv",
           progress=False)
    cfg = Project(tmp_path / "p").load_config()
    assert cfg.general.decided == "" and "general" not in cfg.decisions
    with pytest.raises(Exception, match="general.profile"):
        Config().updated({"general.profile": "loud"})
