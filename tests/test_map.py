"""``klustr map`` end to end, on the demo corpus and on the real Hydrogen drum kits."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import soundfile as sf
from PIL import Image

from klustr_gpu import Config, Project
import klustr_gpu as kg


def _knn_accuracy(emb: pd.DataFrame, k: int = 10) -> float:
    from klustr_gpu.score.metrics import knn_accuracy

    return float(knn_accuracy(emb[["x", "y"]].to_numpy(), emb["label"].to_numpy(), k=k))


def test_map_command_on_demo_corpus(demo_library, tmp_path):
    proj = tmp_path / "proj"
    r = subprocess.run([sys.executable, "-m", "klustr_gpu.cli", "map", str(demo_library), "-o", str(proj),
                        "--labels", str(demo_library / "labels.csv"), "-q"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "files: 210  ok: 210  skipped: 0" in r.stdout
    assert f"map: {proj / 'map.png'}" in r.stdout
    # where the time went: a total, then one line per stage with its seconds, share and what it did
    lines = r.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("time: "))
    total = float(lines[at].split()[1])
    stages = {line.split()[0]: line for line in lines[at + 1:at + 6]}
    assert list(stages) == ["scan", "features", "embed", "render", "other"]
    assert abs(sum(float(line.split()[1]) for line in stages.values()) - total) < 0.1
    assert "210 files: 210 headers read" in stages["scan"] and "files/s" in stages["scan"]
    assert "210 clips computed, 0 reused, on cpu" in stages["features"]
    assert f"{Config().reduce.method} of 210 points" in stages["embed"] and "210 points" in stages["render"]
    assert any(line.startswith("general: ") and "sampled clips" in line for line in lines)   # the rule's decision
    img = np.asarray(Image.open(proj / "map.png").convert("RGB"))
    assert img.shape[0] > 300 and img.shape[1] > 300
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 7          # seven class colours + background + legend
    emb, meta = Project(proj).read_embedding()
    assert len(emb) == 210 and emb.label.notna().all()
    assert meta.get("method") == Config().reduce.method
    # similar sounds land together: classes are groups on the map
    assert _knn_accuracy(emb) > 0.8
    toml = (proj / "klustr.toml").read_text()
    assert "[reduce]" in toml and "[audio]" in toml


def test_map_skips_bad_files_and_maps_the_rest(tmp_path):
    from badfiles import make_mixed_library

    lib = tmp_path / "lib"
    expected = make_mixed_library(lib)
    summary = kg.map(lib, tmp_path / "proj", label_regex=True, progress=False)
    man = Project(tmp_path / "proj").read_manifest().set_index("path")
    for rel, exp in expected.items():
        if exp == "ok":
            assert man.loc[rel, "status"] == "ok", (rel, man.loc[rel, "reason"])
        else:
            assert man.loc[rel, "status"] == "skipped", rel
            assert exp.lower() in man.loc[rel, "reason"].lower(), (rel, man.loc[rel, "reason"])
    emb, _ = Project(tmp_path / "proj").read_embedding()
    ok_ids = set(man[man.status == "ok"].id)
    assert set(emb.file_id) == ok_ids
    assert summary.skipped == sum(v != "ok" for v in expected.values())
    assert sum(summary.skipped_by_reason.values()) == summary.skipped


def test_map_on_hydrogen_marks_every_readable_file_ok(hydrogen_library, tmp_path):
    labels = pd.read_csv(hydrogen_library / "labels.csv")
    summary = kg.map(hydrogen_library, tmp_path / "proj", labels=hydrogen_library / "labels.csv", progress=False)
    man = Project(tmp_path / "proj").read_manifest()
    readable = 0
    for rel in man.path:
        try:
            sf.info(str(hydrogen_library / rel))
            readable += 1
        except (RuntimeError, sf.LibsndfileError):
            pass
    assert summary.ok == readable == len(labels)
    assert man.label.notna().sum() == len(labels)
    emb, _ = Project(tmp_path / "proj").read_embedding()
    assert len(emb) == len(labels)
    assert _knn_accuracy(emb) > 0.7
    assert (tmp_path / "proj" / "map.png").stat().st_size > 10_000


def test_map_command_in_frame_mode_on_long_recordings(tmp_path):
    """`klustr map --frames` on the long recordings `demo-corpus --long-hours` writes: one point
    per window, each with its file and start time, the windows of a file tiling it."""
    lib, proj = tmp_path / "long", tmp_path / "proj"
    r = subprocess.run([sys.executable, "-m", "klustr_gpu.cli", "demo-corpus", str(lib), "--long-hours", "0.01",
                        "--long-files", "2", "-q"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "klustr_gpu.cli", "map", str(lib), "-o", str(proj), "--frames",
                        "--window", "0.5", "--hop", "0.25", "-q"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "files: 2  ok: 2  skipped: 0" in r.stdout and (proj / "map.png").is_file()
    emb, _ = Project(proj).read_embedding()
    assert len(emb) == 2 * (int((18.0 - 0.5) / 0.25) + 1)                 # 18 s per file
    for _, g in emb.groupby("file_id"):
        starts = np.sort(g["start"].to_numpy())
        np.testing.assert_allclose(np.diff(starts), 0.25, atol=1e-6)
        assert starts[0] == 0.0
    assert np.isfinite(emb[["x", "y"]].to_numpy()).all()
