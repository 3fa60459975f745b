"""The scan reads headers only, and a file's identity is its size and mtime (ns): an unchanged
rescan opens no file; changed, vanished and replaced files are caught (at the rescan, or by the
features stage when they change after the scan) with the same skips as before; features are
recomputed only for files whose decoded clip changed."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from badfiles import make_mixed_library, tone
from klustr_gpu import Config, Project, compute_features, scan
from klustr_gpu.features import load

CFG = Config().updated({"features.sets": ["mfcc"], "features.device": "cpu"})


def _library(root: Path, n: int = 8) -> Path:
    root.mkdir(parents=True)
    for i in range(n):
        sub = root / ("a" if i % 2 else "b")
        sub.mkdir(exist_ok=True)
        sf.write(sub / f"s{i:02d}.wav", tone(22050, 0.3, 200 + 90 * i), 22050)
    return root


class _Opens:
    """Counts every open of a file under ``root`` (os.open, open(), libsndfile by path)."""

    def __init__(self, monkeypatch, root: Path):
        import builtins

        import soundfile

        self.root, self.paths = str(root), []
        for owner, name in ((os, "open"), (builtins, "open"), (soundfile, "info"), (soundfile, "SoundFile")):
            real = getattr(owner, name)
            monkeypatch.setattr(owner, name, self._wrap(real))

    def _wrap(self, real):
        def counted(file, *a, **k):
            if isinstance(file, (str, os.PathLike)) and str(file).startswith(self.root):
                self.paths.append(str(file))
            return real(file, *a, **k)
        return counted


def test_unchanged_rescan_opens_no_file(tmp_path, monkeypatch):
    lib = tmp_path / "lib"
    make_mixed_library(lib)
    first = scan(lib, tmp_path / "p", label_regex=True, progress=False)
    assert first.headers_read > 10 and first.rows_kept == 0
    opens = _Opens(monkeypatch, lib)
    again = scan(lib, tmp_path / "p", label_regex=True, progress=False)
    assert opens.paths == []
    assert again.headers_read == 0 and again.rows_kept == first.headers_read
    pd.testing.assert_frame_equal(first.manifest, again.manifest)


def test_changed_size_or_mtime_is_read_again_same_size_and_mtime_is_not(tmp_path):
    lib = _library(tmp_path / "lib")
    proj = Project(tmp_path / "p")
    scan(lib, proj, progress=False)
    compute_features(proj, CFG, progress=False)
    before = load(proj, "mfcc")
    grown, touched, swapped = lib / "a/s01.wav", lib / "b/s02.wav", lib / "a/s03.wav"
    sf.write(grown, tone(22050, 0.5, 3000), 22050)                       # new content, new size
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # same bytes, new mtime
    st = swapped.stat()                                                   # other bytes, same size and mtime:
    other = sf.read(lib / "b/s04.wav", dtype="int16")[0]                  # counted as unchanged (see scan.py)
    sf.write(swapped, other, 22050, subtype="PCM_16")
    os.utime(swapped, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert swapped.stat().st_size == st.st_size
    r = scan(lib, proj, progress=False)
    assert r.headers_read == 2 and r.rows_kept == 6
    row = r.manifest.set_index("path").loc["a/s01.wav"]
    assert row["frames"] == int(0.5 * 22050) and row["size"] == grown.stat().st_size
    s = compute_features(proj, progress=False)
    # the grown file is computed; the touched one decoded again but its clip hashes as before:
    # its rows are copied; the swapped one is not looked at (same identity)
    assert s.sets["mfcc"].computed == 1 and s.sets["mfcc"].reused == 7
    after = load(proj, "mfcc")
    pos = {k: i for i, k in enumerate(after.ids)}
    ids = r.manifest.set_index("path")["id"]
    changed = [pos[ids["a/s01.wav"]]]
    same = [i for i in range(len(after)) if i not in changed]
    np.testing.assert_array_equal(after.X[same], before.X[same])
    assert not np.allclose(after.X[changed], before.X[changed])


def test_files_that_change_after_the_scan_are_skipped_not_mapped_as_something_else(tmp_path):
    """A file rewritten with other (valid) audio after the scan is not decoded as if it were the
    file the manifest describes: skipped "changed since the scan"; the next rescan maps it."""
    lib = _library(tmp_path / "lib")
    proj = Project(tmp_path / "p")
    scan(lib, proj, progress=False)
    sf.write(lib / "a/s01.wav", tone(44100, 0.8, 900), 44100)
    compute_features(proj, CFG, progress=False)
    man = proj.read_manifest().set_index("path")
    assert man.loc["a/s01.wav", "status"] == "skipped"
    assert man.loc["a/s01.wav", "reason"].startswith("changed since the scan")
    scan(lib, proj, progress=False)
    s = compute_features(proj, progress=False)
    assert s.sets["mfcc"].computed == 1 and (proj.read_manifest().status == "ok").all()


def test_vanished_folder_and_fifo_at_rescan(tmp_path):
    lib = _library(tmp_path / "lib")
    proj = Project(tmp_path / "p")
    scan(lib, proj, progress=False)
    (lib / "a/s01.wav").unlink()
    (lib / "a/s03.wav").unlink()
    (lib / "a/s03.wav").mkdir()                      # a folder named like audio: walked, never listed
    (lib / "b/s02.wav").unlink()
    os.mkfifo(lib / "b/s02.wav")                     # would block a reader forever
    t0 = time.monotonic()
    r = scan(lib, proj, progress=False)
    assert time.monotonic() - t0 < 30
    man = r.manifest.set_index("path")
    assert "a/s01.wav" not in man.index and "a/s03.wav" not in man.index
    assert man.loc["b/s02.wav", "status"] == "skipped" and man.loc["b/s02.wav", "reason"] == "not a regular file"
    assert r.headers_read == 0 and r.rows_kept == 5


def test_a_folder_that_cannot_be_listed_keeps_its_files_as_skipped(tmp_path, monkeypatch):
    lib = _library(tmp_path / "lib")
    proj = Project(tmp_path / "p")
    scan(lib, proj, progress=False)
    real = os.scandir

    def scandir(path="."):
        if str(path).endswith("/a"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)
    monkeypatch.setattr(os, "scandir", scandir)
    r = scan(lib, proj, progress=False)
    assert r.unlisted_folders == {"a": "permission denied"}
    assert "could not list a/: permission denied" in r.summary()
    man = r.manifest.set_index("path")
    gone = man.loc[[p for p in man.index if p.startswith("a/")]]
    assert len(gone) == 4 and (gone.status == "skipped").all()
    assert (gone.reason == "its folder could not be listed (permission denied)").all()
    monkeypatch.setattr(os, "scandir", real)
    r = scan(lib, proj, progress=False)               # listed again: the rows are read again, ok
    assert (r.manifest.status == "ok").all() and r.headers_read == 4


def test_a_listing_that_fails_part_way_keeps_what_it_read(tmp_path, monkeypatch):
    lib = _library(tmp_path / "lib", n=6)
    real = os.scandir

    class Broken:
        def __init__(self, it):
            self.it, self.n = it, 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.it.close()

        def __iter__(self):
            return self

        def __next__(self):
            self.n += 1
            if self.n == 3:
                raise OSError(5, "Input/output error")
            return next(self.it)

    monkeypatch.setattr(os, "scandir", lambda path=".": Broken(real(path)) if str(path).endswith("/b") else real(path))
    r = scan(lib, tmp_path / "p", progress=False)
    assert r.unlisted_folders == {"b": "cannot read: Input/output error"}
    assert len([p for p in r.manifest.path if p.startswith("b/")]) == 2 and (r.manifest.status == "ok").all()


@pytest.mark.parametrize("where", ["main process", "worker processes"])
def test_skips_that_may_pass_are_tried_again_at_an_unchanged_rescan(tmp_path, monkeypatch, where):
    """A permission error on one file in the middle of its folder: that file skipped, the rest
    read; at the next rescan (the file unchanged) it is tried again."""
    import klustr_gpu.library.scan as S

    if where == "worker processes":
        monkeypatch.setattr(S, "IN_PROCESS_BELOW", 0)
        monkeypatch.setattr(S, "CHUNK", 1)
    lib = _library(tmp_path / "lib", n=4)
    real = os.open

    def locked(path, *a, **k):
        if str(path).endswith("s01.wav"):
            raise PermissionError(13, "Permission denied")
        return real(path, *a, **k)
    monkeypatch.setattr(os, "open", locked)
    r = scan(lib, tmp_path / "p", progress=False)
    assert r.skipped_by_reason == {"permission denied": 1}
    monkeypatch.setattr(os, "open", real)
    r = scan(lib, tmp_path / "p", progress=False)     # same size and mtime, but permissions are not content
    assert r.skipped == 0 and r.headers_read == 1


@pytest.mark.parametrize("where", ["main process", "worker processes"])
def test_a_hanging_header_read_is_skipped(tmp_path, monkeypatch, where):
    import klustr_gpu.library.headers as H
    import klustr_gpu.library.scan as S

    if where == "worker processes":                  # one task of 4 paths: one worker, one hang
        monkeypatch.setattr(S, "IN_PROCESS_BELOW", 0)

    lib = _library(tmp_path / "lib", n=4)
    real = H.parse

    hangs = []

    def parse(read, size):
        if not hangs:
            hangs.append(1)
            time.sleep(60)                           # a disk that does not answer
        return real(read, size)
    monkeypatch.setattr(H, "parse", parse)
    monkeypatch.setattr(S, "HEADER_TIMEOUT_S", 1.0)
    t0 = time.monotonic()
    r = scan(lib, tmp_path / "p", progress=False)
    assert time.monotonic() - t0 < 20
    assert r.skipped_by_reason == {"header read timed out after 1 s": 1} and r.ok == 3
    assert r.workers == (0 if where == "main process" else 1) or (os.cpu_count() or 1) == 1


def test_worker_processes_give_the_same_manifest(tmp_path, monkeypatch):
    import klustr_gpu.library.scan as S

    lib = tmp_path / "lib"
    make_mixed_library(lib)
    here = scan(lib, tmp_path / "p1", label_regex=True, progress=False).manifest
    monkeypatch.setattr(S, "IN_PROCESS_BELOW", 0)
    monkeypatch.setattr(S, "CHUNK", 3)
    r = scan(lib, tmp_path / "p2", label_regex=True, progress=False)
    assert r.workers >= 2 or (os.cpu_count() or 1) == 1
    pd.testing.assert_frame_equal(here, r.manifest)


def test_a_project_scanned_before_identities_upgrades_by_a_rescan(tmp_path):
    """A manifest written by an older klustr (a content ``hash`` column, no ``mtime_ns``) and
    its features still load; a rescan reads every header again and the next features run
    recomputes the set once."""
    lib = _library(tmp_path / "lib")
    proj = Project(tmp_path / "p")
    scan(lib, proj, progress=False)
    compute_features(proj, CFG, progress=False)
    X = load(proj, "mfcc").X
    man = proj.read_manifest()
    old = man.drop(columns=["mtime_ns"]).assign(hash=[f"{i:032x}" for i in range(len(man))])
    from klustr_gpu.store import read_parquet_metadata, write_parquet

    write_parquet(old, proj.manifest_path, read_parquet_metadata(proj.manifest_path))
    store = proj.features_dir("mfcc")
    files = next(store.glob("g*.files.parquet"))
    write_parquet(pd.read_parquet(files).drop(columns=["size", "mtime_ns"]).assign(hash=old["hash"].to_numpy()), files)
    import json

    led = json.loads((store / "ledger.json").read_text())
    for g in led["gens"].values():
        g["layout"] = "a layout hash of (id, content hash)"
    (store / "ledger.json").write_text(json.dumps(led))
    assert (proj.read_manifest()["mtime_ns"] == -1).all()
    np.testing.assert_array_equal(load(proj, "mfcc").X, X)          # old manifest + old store: readable
    from klustr_gpu.doctor import check

    said = [f.line() for f in check(proj) if f.level == "warn"]
    assert any("older klustr" in line and "klustr scan" in line for line in said), said
    r = scan(lib, proj, progress=False)
    assert r.headers_read == len(man)
    s = compute_features(proj, progress=False)
    assert s.sets["mfcc"].computed == len(man) and s.sets["mfcc"].reused == 0
    np.testing.assert_allclose(load(proj, "mfcc").X, X, rtol=0, atol=0)


def test_a_library_written_again_is_decoded_but_not_recomputed(tmp_path):
    lib = _library(tmp_path / "lib")
    proj = Project(tmp_path / "p")
    scan(lib, proj, progress=False)
    compute_features(proj, CFG, progress=False)
    shutil.rmtree(lib)
    time.sleep(0.01)
    _library(lib)                                    # written again: the same bytes, new mtimes
    r = scan(lib, proj, progress=False)
    assert r.headers_read == 8
    s = compute_features(proj, progress=False)
    assert s.sets["mfcc"].computed == 0 and s.sets["mfcc"].reused == 8      # decoded, hashed, copied


@pytest.mark.parametrize("where", ["main process", "forked workers"])
def test_bad_files_after_the_scan_are_found_with_one_open_each(tmp_path, monkeypatch, where):
    """Between scan and features: one file vanishes, one becomes a folder, one a FIFO, one is
    rewritten with other audio, one cannot be opened any more (permission denied, in the middle
    of its folder). Each is skipped with its reason; every file of the library is opened exactly
    once by the features stage (the skips are found from that one open and its ``fstat``); the
    others get features. The same whether the main process or forked workers decode."""
    import soundfile

    import klustr_gpu.features.run as R

    lib = _library(tmp_path / "lib", n=12)
    proj = Project(tmp_path / "p")
    scan(lib, proj, progress=False)
    (lib / "a/s01.wav").unlink()
    (lib / "a/s03.wav").unlink()
    (lib / "a/s03.wav").mkdir()
    (lib / "a/s05.wav").unlink()
    os.mkfifo(lib / "a/s05.wav")
    sf.write(lib / "a/s07.wav", tone(44100, 0.8, 900), 44100)
    locked = str(lib / "b/s04.wav")
    log = str(tmp_path / "opens.log")                # appended to by this process and its forks
    real_open, real_sf = os.open, soundfile.SoundFile

    def note(path) -> None:
        fd = real_open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, f"{path}\n".encode())
        os.close(fd)

    def counted_open(path, flags, *a, **k):
        if str(path).startswith(str(lib)):
            note(path)
            if str(path) == locked:
                raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *a, **k)

    def counted_sf(file, *a, **k):
        if isinstance(file, (str, os.PathLike)) and str(file).startswith(str(lib)):
            note(file)
        return real_sf(file, *a, **k)
    monkeypatch.setattr(os, "open", counted_open)
    monkeypatch.setattr(soundfile, "SoundFile", counted_sf)
    if where == "forked workers":
        monkeypatch.setattr(R, "IN_PROCESS_BELOW", 0)
    s = compute_features(proj, CFG, progress=False)
    assert s.workers == (0 if where == "main process" else R.resolve_workers(0)) or (os.cpu_count() or 1) == 1
    opened = Path(log).read_text().splitlines()
    assert sorted(opened) == sorted(str(lib / p) for p in proj.read_manifest().path)     # each once
    man = proj.read_manifest().set_index("path")
    expect = {"a/s01.wav": "file vanished", "a/s03.wav": "not a regular file", "a/s05.wav": "not a regular file",
              "a/s07.wav": "changed since the scan", "b/s04.wav": "permission denied"}
    for rel, reason in expect.items():
        assert man.loc[rel, "status"] == "skipped" and man.loc[rel, "reason"].startswith(reason), (rel, man.loc[rel])
    assert (man.drop(index=list(expect)).status == "ok").all()
    assert s.sets["mfcc"].computed == 12 - len(expect) and len(load(proj, "mfcc")) == 12 - len(expect)
