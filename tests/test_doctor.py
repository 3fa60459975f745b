"""``klustr doctor PROJECT [--fix]``: each kind of damage is found, named, and given a repair."""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from badfiles import small_project, tone
from klustr_gpu import Config, Project
from klustr_gpu.cli import main
from klustr_gpu.doctor import check, healthy
from klustr_gpu import scan
from klustr_gpu.store import read_parquet_metadata

REPO = Path(__file__).resolve().parents[1]
CFG = Config().updated({"features.sets": ["mfcc"], "reduce.features": "mfcc", "features.device": "cpu", "reduce.engine": "cpu",
                        "reduce.method": "pca"})


@pytest.fixture(scope="module")
def base(demo_library, tmp_path_factory) -> tuple[Path, Path]:
    """A small healthy project: 28 demo files scanned, mfcc features, a PCA embedding."""
    lib, proj = small_project(demo_library, tmp_path_factory.mktemp("doctor"), 28, CFG)
    return lib, proj


def clone(base, tmp_path: Path) -> tuple[Path, Project]:
    """A private copy of library and project, the manifest pointing at the copied library."""
    lib, proj = base
    lib2, proj2 = tmp_path / "lib", tmp_path / "proj"
    shutil.copytree(lib, lib2)                      # copy2: mtimes kept, so the scan still matches
    shutil.copytree(proj, proj2)
    p = Project(proj2)
    meta = read_parquet_metadata(p.manifest_path)
    meta["library"] = str(lib2.resolve())
    p.write_manifest(p.read_manifest(), meta)
    return lib2, p


def levels(findings) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"ok": [], "warn": [], "error": []}
    for f in findings:
        out[f.level].append(f.what + " || " + f.fix)
    return out


def one(findings, level: str, text: str) -> str:
    hits = [f.what + " || " + f.fix for f in findings if f.level == level and text in f.what]
    assert len(hits) == 1, (level, text, [f.line() for f in findings])
    return hits[0]


def test_healthy_project(base, tmp_path, capsys):
    _, p = clone(base, tmp_path)
    f = check(p)
    lv = levels(f)
    assert healthy(f) and not lv["error"] and not lv["warn"], lv
    assert any("every ok file is on disk" in x for x in lv["ok"])
    assert any("features mfcc: 28 rows" in x for x in lv["ok"])
    assert any("embedding mfcc-pca: 28 points" in x for x in lv["ok"])
    assert main(["doctor", str(p.path)]) == 0
    assert "ERROR" not in capsys.readouterr().out


def test_missing_audio_files(base, tmp_path, capsys):
    lib, p = clone(base, tmp_path)
    gone = sorted(lib.rglob("*.wav"))[:2]
    for g in gone:
        g.unlink()
    msg = one(check(p), "error", "listed in the manifest are missing")
    assert msg.startswith("2 audio files") and gone[0].name in msg and "klustr scan" in msg
    assert main(["doctor", str(p.path), "-q"]) == 1
    out = capsys.readouterr().out
    assert "ERROR" in out and "fix:" in out and "ok " not in out          # -q: problems only
    shutil.rmtree(lib)
    one(check(p), "error", "the library folder")


def test_changed_audio_files(base, tmp_path):
    lib, p = clone(base, tmp_path)
    f = sorted(lib.rglob("*.wav"))[3]
    sf.write(f, tone(22050, 0.9, 1234), 22050)       # new content, new size
    msg = one(check(p), "warn", "changed since the scan")
    assert msg.startswith("1 audio file changed") and f.name in msg and "klustr features" in msg
    assert healthy(check(p))                          # a warning: the map still works


def test_stale_features_and_embedding_after_rescan(base, tmp_path):
    """Files added, library rescanned: the features are out of date (error, `klustr features`
    repairs); once updated, the embedding is older than its features (warn, `klustr embed`)."""
    from klustr_gpu import compute_features

    lib, p = clone(base, tmp_path)
    for i in range(3):
        sf.write(lib / "new" / f"n{i}.wav" if (lib / "new").is_dir() else _mk(lib / "new") / f"n{i}.wav",
                 tone(22050, 0.4, 300 + 100 * i), 22050)
    scan(lib, p, progress=False)
    f = check(p)
    msg = one(f, "error", "features mfcc")
    assert "out of date" in msg and "klustr features" in msg and not healthy(f)
    summary = compute_features(p, CFG, progress=False)
    assert summary.sets["mfcc"].computed == 3 and summary.sets["mfcc"].reused == 28
    f = check(p)
    assert healthy(f)
    msg = one(f, "warn", "embedding mfcc-pca is older than its features")
    assert "3 files" in msg and "klustr embed" in msg


def _mk(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.mark.parametrize("damage", ["garbage", "truncated", "nan", "no_columns"])
def test_damaged_embedding(base, tmp_path, damage):
    import pandas as pd

    _, p = clone(base, tmp_path)
    path = p.embedding_path("mfcc-pca")
    if damage == "garbage":
        path.write_bytes(b"PAR1" + b"\x00" * 100)
    elif damage == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif damage == "nan":
        df, meta = p.read_embedding("mfcc-pca")
        df.loc[0, "x"] = np.nan
        p.write_embedding("mfcc-pca", df, meta)
    else:
        p.write_embedding("mfcc-pca", pd.DataFrame({"id": ["a"], "q": [1.0]}), {})
    msg = one(check(p), "error", "embedding mfcc-pca")
    assert "klustr embed" in msg and "--name mfcc-pca" in msg


def test_damaged_manifest_config_and_feature_chunk(base, tmp_path):
    _, p = clone(base, tmp_path)
    chunk = next(x for x in (p.features_root / "mfcc").rglob("*")           # a chunk of the zarr array
                 if x.is_file() and x.name[0].isdigit() and "." not in x.parent.name)
    chunk.write_bytes(b"\x01garbage")
    one(check(p), "error", "features mfcc")
    p.config_path.write_text("[audio\nsample_rate = = 3\n")
    one(check(p), "error", "klustr.toml cannot be read")
    p.manifest_path.write_bytes(b"not parquet at all")
    msg = one(check(p), "error", "manifest.parquet cannot be read")
    assert "klustr scan" in msg


def test_interrupted_features_are_reported_as_resumable(base, tmp_path):
    import json

    _, p = clone(base, tmp_path)
    led_path = p.features_root / "mfcc" / "ledger.json"
    led = json.loads(led_path.read_text())
    led["current"] = None
    for g in led["gens"].values():
        g["complete"] = False
    led_path.write_text(json.dumps(led))
    msg = one(check(p), "warn", "features mfcc: an interrupted run")
    assert "resumes" in msg


def test_leftover_temp_files_and_fix(base, tmp_path, capsys):
    _, p = clone(base, tmp_path)
    leftovers = [p.path / ".manifest.parquet.k2j3.parquet.tmp", p.embeddings_dir / ".x.parquet.abc.parquet.tmp",
                 next((p.features_root / "mfcc").glob("g*/")) / "0.0.6f1e0c.partial"]
    for t in leftovers:
        t.write_bytes(b"half")
    msg = one(check(p), "warn", "3 leftovers of interrupted writes")
    assert "--fix" in msg
    assert main(["doctor", str(p.path), "--fix"]) == 0
    assert "removed 3 leftovers" in capsys.readouterr().out
    assert not any(t.exists() for t in leftovers)
    f = check(p)
    assert not levels(f)["warn"] and healthy(f)
    assert (p.path / "manifest.parquet").exists() and p.read_embedding("mfcc-pca")[0].shape[0] == 28


HOLD = "import sys, time\nfrom klustr_gpu.store import Project\nwith Project(sys.argv[1]).lock('embed'):\n" \
       "    print('held', flush=True)\n    time.sleep(120)\n"


def test_run_in_progress_is_reported_and_fix_waits(base, tmp_path):
    _, p = clone(base, tmp_path)
    tmp = p.path / ".scores.json.zz.tmp"
    tmp.write_text("{")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(p.path)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "held"
        f = check(p, fix=True)
        msg = one(f, "warn", "a run is in progress")
        assert f"pid {holder.pid} (embed)" in msg
        one(f, "warn", "leftovers of interrupted writes not removed")
        assert tmp.exists()                     # a live run's temporary file is never deleted
    finally:
        holder.kill()
        holder.wait(timeout=30)
    f = check(p, fix=True)                      # the kernel dropped the dead holder's lock
    assert not any("in progress" in x.what for x in f) and not tmp.exists()


def test_doctor_usage_errors(tmp_path, capsys):
    assert main(["doctor", str(tmp_path / "nope")]) == 2
    assert "no project folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    f = check(tmp_path / "empty")
    one(f, "error", "no manifest.parquet")
