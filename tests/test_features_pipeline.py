"""The features stage end to end on real (demo-corpus) audio: store layout, load, resume after
SIGKILL or a failed write, incremental update after a rescan, frame mode, bad input, devices."""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from klustr_gpu.config import Config
from klustr_gpu.errors import EngineUnavailable, StoreError, UsageError
from klustr_gpu.features import FeatureTable, load
from klustr_gpu import compute_features
from klustr_gpu import scan
from klustr_gpu.store import Project

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small_library(demo_library, tmp_path_factory) -> Path:
    """63 demo files (9 per class, every format) plus two that only fail at decode time."""
    root = tmp_path_factory.mktemp("feat") / "library"
    rows = ["path,label"]
    for cls_dir in sorted(p for p in demo_library.iterdir() if p.is_dir()):
        for f in sorted(cls_dir.iterdir())[:9]:
            (root / cls_dir.name).mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, root / cls_dir.name / f.name)
            rows.append(f"{cls_dir.name}/{f.name},{cls_dir.name}")
    bad = root / "bad"
    bad.mkdir()
    sf.write(bad / "silent.wav", np.zeros(8000, np.float32), 22050)
    x = np.random.default_rng(0).standard_normal(8000).astype(np.float32)
    x[100] = np.nan
    sf.write(bad / "nan.wav", x, 22050, subtype="FLOAT")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def _project(library: Path, dest: Path, config: Config | None = None) -> Project:
    proj = Project(dest)
    if config is not None:
        proj.write_config(config)
    scan(library, proj, labels=library / "labels.csv", progress=False)
    return proj


def _cfg(**features) -> Config:
    return Config().updated({f"features.{k}": v for k, v in features.items()})


def test_extract_load_rerun(small_library, tmp_path, monkeypatch):
    monkeypatch.setattr("klustr_gpu.features.run.IN_PROCESS_BELOW", 0)   # decode in a worker pool
    proj = _project(small_library, tmp_path / "p")
    s = compute_features(proj, sets=["mfcc", "mir"], workers=1, progress=False)
    assert s.device == "cpu" and s.sets["mfcc"].dim == 80 and s.sets["mir"].dim == 16
    assert s.sets["mfcc"].computed == 63 and s.sets["mfcc"].n_rows == 63
    assert set(s.skipped.values()) == {"all-silent audio", "audio holds NaN or Inf samples"}
    df = proj.read_manifest()
    assert (df.status == "skipped").sum() == 2 and set(df.loc[df.status == "skipped", "reason"]) == set(s.skipped.values())
    assert Config.load(proj.config_path).features.sets == ["mfcc", "mir"]      # written back
    t = load(proj, "mfcc")
    assert isinstance(t, FeatureTable) and t.X.dtype == np.float32 and t.X.shape == (63, 80)
    assert list(t.ids) == list(df.loc[df.status == "ok", "id"]) and (t.starts == 0).all()
    assert np.isfinite(t.X).all() and t.X.std(axis=0).min() > 0
    # rows are aligned with the manifest: a zarr N x D array with NaN rows for skipped files
    import zarr

    led = json.loads((proj.features_dir("mfcc") / "ledger.json").read_text())
    arr = zarr.open_array(str(proj.features_dir("mfcc") / led["current"]), mode="r")
    assert arr.shape == (65, 80) and np.isnan(arr[:]).all(axis=1).sum() == 2
    t0 = time.perf_counter()
    s2 = compute_features(proj, progress=False)
    assert time.perf_counter() - t0 < 3.0
    assert s2.sets["mfcc"].computed == 0 and s2.sets["mir"].computed == 0 and s2.sets["mfcc"].reused == 63
    np.testing.assert_array_equal(load(proj, "mfcc").X, t.X)
    with pytest.raises(UsageError, match="no features 'stft'"):
        load(proj, "stft")


def test_klustr_preset_dims(small_library, tmp_path):
    cfg = Config.preset_named("klustr")
    proj = _project(small_library, tmp_path / "p", cfg)
    s = compute_features(proj, workers=2, batch_size=5, progress=False)
    assert {k: s.sets[k].dim for k in ("stft", "mfcc", "mir")} == {"stft": 1024, "mfcc": 720, "mir": 376}
    for name in ("stft", "mfcc", "mir"):
        X = load(proj, name).X
        assert X.shape == (63, s.sets[name].dim) and np.isfinite(X).all()
    fp = load(proj, "stft").X
    assert fp.min() == 0.0 and fp.max() == 1.0


def test_incremental_after_rescan(small_library, tmp_path):
    lib = tmp_path / "lib"
    shutil.copytree(small_library, lib)
    proj = _project(lib, tmp_path / "p")
    compute_features(proj, sets=["mfcc"], workers=1, progress=False)
    before = load(proj, "mfcc")
    from klustr_gpu.library.democorpus import demo_corpus

    demo_corpus(tmp_path / "extra", n=7, seed=5, progress=False)
    shutil.copytree(tmp_path / "extra", lib / "extra", ignore=shutil.ignore_patterns("labels.csv"))
    scan(lib, proj, progress=False)                  # new files sort among the old ones
    with pytest.raises(StoreError, match="out of date"):
        load(proj, "mfcc")
    s = compute_features(proj, progress=False)
    assert s.sets["mfcc"].computed == 7                # the 2 bad files keep their reason (same content hash)
    assert s.sets["mfcc"].reused == 63
    df = proj.read_manifest()
    assert set(df.loc[df.status == "skipped", "reason"]) == {"all-silent audio", "audio holds NaN or Inf samples"}
    after = load(proj, "mfcc")
    assert len(after) == 70
    pos = {k: i for i, k in enumerate(after.ids)}
    np.testing.assert_array_equal(after.X[[pos[i] for i in before.ids]], before.X)
    assert len(list(proj.features_dir("mfcc").glob("g*.files.parquet"))) == 1   # old generation removed
    # another mfcc config: everything is recomputed, into a new generation
    cfg = Config.load(proj.config_path).updated({"mfcc.n_mfcc": 13})
    s = compute_features(proj, cfg, progress=False)
    assert s.sets["mfcc"].computed == 70 and s.sets["mfcc"].dim == 52 and load(proj, "mfcc").X.shape == (70, 52)


_CHILD = """
import sys
import time
import klustr_gpu.features.run as P
from klustr_gpu import compute_features
from klustr_gpu.features.store import SetStore

_commit = SetStore.commit


def slow_commit(self, *a, **kw):    # leave the parent time to kill us mid-run, on any machine
    _commit(self, *a, **kw)
    time.sleep(0.15)


if __name__ == "__main__":
    P.IN_PROCESS_BELOW = 0          # killed with its worker pool running
    SetStore.commit = slow_commit
    compute_features(sys.argv[1], sets=["mfcc", "stft"], workers=1, progress=False)
"""


def test_resume_after_sigkill_equals_uninterrupted(small_library, tmp_path):
    cfg = _cfg(shard_size=8, batch_size=8)
    ref = _project(small_library, tmp_path / "ref", cfg)
    compute_features(ref, sets=["mfcc", "stft"], progress=False, workers=1)
    proj = _project(small_library, tmp_path / "p", cfg)
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    ledger = proj.features_dir("stft") / "ledger.json"
    env = dict(os.environ, PYTHONWARNINGS="ignore::UserWarning")   # the orphaned resource tracker's note
    child = subprocess.Popen([sys.executable, str(script), str(proj.path)], cwd=REPO, env=env)
    deadline = time.time() + 60
    while time.time() < deadline and child.poll() is None:
        try:
            gens = json.loads(ledger.read_text())["gens"]
            if any(g["shards_done"] >= 3 for g in gens.values()):
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    done = max(g["shards_done"] for g in json.loads(ledger.read_text())["gens"].values())
    assert 3 <= done < 9, "the child was killed mid-run"
    s = compute_features(proj, progress=False, workers=1)
    assert s.sets["stft"].reused >= 8 * done and s.sets["stft"].computed <= 65 - 8 * done
    for name in ("mfcc", "stft"):
        np.testing.assert_array_equal(load(proj, name).X, load(ref, name).X)


def test_failed_shard_write_is_a_clear_error_and_resumes(small_library, tmp_path, monkeypatch):
    import zarr

    cfg = _cfg(shard_size=16, batch_size=16)
    ref = _project(small_library, tmp_path / "ref", cfg)
    compute_features(ref, sets=["mfcc"], workers=0, progress=False)
    proj = _project(small_library, tmp_path / "p", cfg)
    real = zarr.storage.DirectoryStore.__setitem__
    calls = {"n": 0}

    def full_disk(self, key, value):
        if key.endswith(".0") and not key.startswith("."):
            calls["n"] += 1
            if calls["n"] == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, key, value)

    monkeypatch.setattr(zarr.storage.DirectoryStore, "__setitem__", full_disk)
    with pytest.raises(StoreError, match="No space left on device.*committed shards are intact"):
        compute_features(proj, sets=["mfcc"], workers=0, progress=False)
    led = json.loads((proj.features_dir("mfcc") / "ledger.json").read_text())
    assert [g["shards_done"] for g in led["gens"].values()] == [2]
    monkeypatch.setattr(zarr.storage.DirectoryStore, "__setitem__", real)
    s = compute_features(proj, progress=False, workers=0)
    assert s.sets["mfcc"].reused == 32
    np.testing.assert_array_equal(load(proj, "mfcc").X, load(ref, "mfcc").X)


def test_frame_mode(tmp_path, monkeypatch):
    """A 30 s recording (read in blocks, spread over shards) becomes one point per 0.5 s
    window every 0.25 s; a run that dies mid-file resumes inside the file."""
    from klustr_gpu.features.store import SetStore
    from klustr_gpu.features.transforms import build
    from klustr_gpu.library.decode import decode

    lib = tmp_path / "lib"
    lib.mkdir()
    sr = 22050
    rng = np.random.default_rng(3)
    t = np.arange(30 * sr) / sr
    x = 0.3 * np.sin(2 * np.pi * (200 + 20 * t) * t) + 0.05 * rng.standard_normal(t.size)
    x[5 * sr:6 * sr] *= 0.0
    sf.write(lib / "long.wav", x.astype(np.float32), sr, subtype="FLOAT")
    sf.write(lib / "short.wav", (0.5 * np.sin(2 * np.pi * 440 * t[: sr // 5])).astype(np.float32), sr)
    proj = Project(tmp_path / "p")
    proj.write_config(_cfg(shard_size=32))
    scan(lib, proj, progress=False)
    real_commit = SetStore.commit
    calls = {"n": 0}

    def dying_commit(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_commit(self, *a, **kw)

    monkeypatch.setattr(SetStore, "commit", dying_commit)
    with pytest.raises(KeyboardInterrupt):
        compute_features(proj, sets=["mfcc"], frames=True, window=0.5, hop=0.25, batch_size=16, workers=0, progress=False)
    monkeypatch.setattr(SetStore, "commit", real_commit)
    s = compute_features(proj, progress=False)
    assert s.frames and s.sets["mfcc"].n_rows == 119 + 1
    assert s.sets["mfcc"].reused == 64 and s.sets["mfcc"].computed == 120 - 64   # two shards of the long file kept
    assert (proj.features_root / "mfcc@frames").is_dir()
    tab = load(proj)                                  # config says frame mode
    df = proj.read_manifest().set_index("path")
    long_id = df.loc["long.wav", "id"]
    rows = tab.file_ids == long_id
    assert rows.sum() == 119 and tab.ids[rows][5] == f"{long_id}:5"
    np.testing.assert_allclose(tab.starts[rows], np.arange(119) * 0.25)
    # a window computed alone equals the block-computed row
    cfg = Config.load(proj.config_path)
    k = 37
    w = decode(lib / "long.wav", cfg.audio, offset=k * 0.25, seconds=0.5)
    import torch

    with torch.no_grad():
        alone = build("mfcc", cfg)(torch.from_numpy(w)[None]).numpy()[0]
    np.testing.assert_allclose(tab.X[rows][k], alone, rtol=1e-4, atol=1e-3)
    with pytest.raises(UsageError):
        load(proj, "mfcc", frames=False)
    assert compute_features(proj, progress=False).sets["mfcc"].computed == 0


def test_device_cuda_without_cuda_is_a_clear_error(small_library, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    proj = _project(small_library, tmp_path / "p")
    with pytest.raises(EngineUnavailable, match="device='cuda': no usable CUDA device"):
        compute_features(proj, device="cuda", progress=False)
    assert not proj.features_root.exists()
    with pytest.raises(UsageError, match="unknown feature set"):
        compute_features(proj, sets=["nope"], progress=False)


@pytest.mark.gpu
def test_cpu_and_cuda_agree(small_library, tmp_path):
    cpu = _project(small_library, tmp_path / "cpu", Config.preset_named("klustr"))
    gpu = _project(small_library, tmp_path / "gpu", Config.preset_named("klustr"))
    compute_features(cpu, sets=["stft", "mfcc", "mir", "mel"], device="cpu", progress=False)
    s = compute_features(gpu, sets=["stft", "mfcc", "mir", "mel"], device="cuda", progress=False)
    assert s.device.startswith("cuda")
    for name in ("stft", "mfcc", "mir", "mel"):
        a, b = load(cpu, name).X, load(gpu, name).X
        assert np.linalg.norm(a - b) / np.linalg.norm(a) < 1e-3, name


def test_ten_hour_archive_gives_144k_frame_points(tmp_path):
    """Window count from the manifest duration: a 10-hour file -> ~144,000 points, in blocks."""
    from klustr_gpu.features.plan import Layout

    lib = tmp_path / "lib"
    lib.mkdir()
    sf.write(lib / "a.wav", np.random.default_rng(0).standard_normal(22050).astype(np.float32) * 0.1, 22050)
    proj = Project(tmp_path / "p")
    scan(lib, proj, progress=False)
    df = proj.read_manifest()
    df.loc[0, "duration"] = 10 * 3600.0
    cfg = _cfg(frames=True, window=0.5, hop=0.25, batch_size=256)
    layout = Layout.from_manifest(proj, df, cfg, True)
    assert layout.n_windows[0] == 143_999
    items = list(layout.items(range(len(layout.unit_pos))))
    assert len(items) == 563 and sum(i.n for i in items) == 143_999
    assert max(i.n for i in items) == 256          # never the whole file at once
    assert [i.first for i in items[:3]] == [0, 256, 512]
    assert len(layout.shards) == 71                # ~2048 windows per committed shard
