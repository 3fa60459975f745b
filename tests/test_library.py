"""Scan, labels and decode on real audio files written by the tests."""
from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from badfiles import make_mixed_library, tone
from klustr_gpu import Config, Project, SkipFile, UsageError
from klustr_gpu.library import decode, demo_corpus, file_id, label_regex
from klustr_gpu import scan
from klustr_gpu.library.labels import Labeller, read_labels_csv


# -- labels -----------------------------------------------------------------------------------
@pytest.mark.parametrize("path, label", [
    ("Kits/808/KICK_01.wav", "kick"),
    ("a/Hi-Hat closed.wav", "hihat"),
    ("a/hihat_open.wav", "hihat"),
    ("a/hi_hat.wav", "hihat"),
    ("toms/low.wav", "tom"),
    ("Crash 18in.flac", "crash"),
    ("snare/clap layer.wav", None),   # two classes: unlabelled
    ("perc/shaker.wav", None),        # no class
])
def test_label_regex_2017_rule(path, label):
    assert label_regex(path) == label


def test_label_from_parent_and_csv(tmp_path):
    lab = Labeller(from_parent=True)
    assert lab("drums/kick/a.wav") == "kick"
    assert lab("a.wav") is None
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text('path,label\n./x/a.wav,kick\n"y/b, c.wav",snare\n\n', encoding="utf-8")
    assert read_labels_csv(csv_path) == {"x/a.wav": "kick", "y/b, c.wav": "snare"}
    with pytest.raises(UsageError, match="does not exist"):
        Labeller(csv_path=tmp_path / "missing.csv")
    with pytest.raises(UsageError, match="choose one"):
        Labeller(csv_path=csv_path, regex=True)


# -- decode -----------------------------------------------------------------------------------
def test_decode_downmix_resample_pad_normalise(tmp_path):
    sr = 44100
    t = np.arange(int(sr * 0.5)) / sr
    left = 0.4 * np.sin(2 * np.pi * 1000 * t)
    stereo = np.stack([left, 0.5 * left], axis=1).astype(np.float32)
    p = tmp_path / "st.wav"
    sf.write(p, stereo, sr, subtype="FLOAT")
    audio = Config().updated({"audio.clip_seconds": 1.0}).audio  # 22050 Hz, 1.0 s, normalise
    x = decode(p, audio)
    assert x.shape == (22050,) and x.dtype == np.float32
    assert abs(np.max(np.abs(x)) - 1.0) < 1e-6            # peak-normalised
    assert np.all(x[int(0.5 * 22050) + 50:] == 0)          # zero-padded after 0.5 s
    spec = np.abs(np.fft.rfft(x[:11025]))
    assert abs(np.argmax(spec) * 22050 / 11025 - 1000) < 3  # 1 kHz survives resampling
    raw = decode(p, Config().updated({"audio.normalize": False, "audio.clip_seconds": 0.25}).audio)
    assert raw.shape == (5512,)
    assert abs(np.max(np.abs(raw)) - 0.3) < 0.01           # mean of 0.4 and 0.2


def test_decode_trims_and_reads_window(tmp_path):
    p = tmp_path / "long.flac"
    sf.write(p, tone(48000, 3.0, 500), 48000)
    audio = Config.preset_named("klustr").audio
    assert decode(p, audio).shape == (12000,)
    w = decode(p, audio, offset=1.0, seconds=0.5, strict=False)
    assert w.shape == (24000,)


def test_hour_long_file_is_not_read_whole(tmp_path):
    from badfiles import write_sparse_long_wav

    p = tmp_path / "hour.wav"
    write_sparse_long_wav(p)
    t0 = time.perf_counter()
    x = decode(p, Config().updated({"audio.clip_seconds": 1.0}).audio)
    assert time.perf_counter() - t0 < 2.0
    assert x.shape == (22050,) and np.abs(x).max() > 0.5


def test_decode_skips_with_reasons(tmp_path):
    audio = Config().audio
    (tmp_path / "e.wav").write_bytes(b"")
    with pytest.raises(SkipFile, match="empty"):
        decode(tmp_path / "e.wav", audio)
    sf.write(tmp_path / "s.wav", np.zeros(4000, np.float32), 16000)
    with pytest.raises(SkipFile, match="silent"):
        decode(tmp_path / "s.wav", audio)
    with pytest.raises(SkipFile, match="vanished"):
        decode(tmp_path / "nope.wav", audio)


# -- scan -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed") / "lib"
    expected = make_mixed_library(root)
    proj = tmp_path_factory.mktemp("mixedproj") / "p"
    df = scan(root, proj, label_regex=True, progress=False).manifest
    return root, proj, expected, df


def test_scan_every_file_listed_once_with_header_fields(mixed):
    root, proj, expected, df = mixed
    assert sorted(df.path) == sorted(expected)                 # the cycle ended, no dupes
    assert df.id.is_unique
    assert all(df.id == df.path.map(file_id))                  # stable ids
    row = df.set_index("path").loc["good/low_8k.wav"]
    assert (row.sample_rate, row.channels, row.frames) == (8000, 1, 4000)
    assert row.duration == pytest.approx(0.5)
    hour = df.set_index("path").loc["good/hour_long.wav"]
    assert hour.duration == pytest.approx(3600) and hour.status == "ok"
    assert df.set_index("path").loc["good/kick 01.wav", "label"] == "kick"
    snare = df.set_index("path").loc["good/snare.flac"]          # identity: size and mtime (ns), no hash
    st = (root / "good/snare.flac").stat()
    assert (snare["size"], snare["mtime_ns"]) == (st.st_size, st.st_mtime_ns) and "hash" not in df.columns


def test_scan_records_header_failures(mixed):
    root, proj, expected, df = mixed
    by = df.set_index("path")
    for rel in ("bad/empty.wav", "bad/text.wav", "bad/corrupt_header.wav", "bad/truncated.wav"):
        assert by.loc[rel, "status"] == "skipped", rel
        assert expected[rel].lower() in by.loc[rel, "reason"].lower(), (rel, by.loc[rel, "reason"])
    m = Project(proj).read_manifest()
    assert list(m.columns)[:3] == ["id", "path", "size"]


def test_scan_is_stable_across_runs(mixed, tmp_path):
    root, proj, expected, df = mixed
    again = scan(root, tmp_path / "p2", label_regex=True, progress=False).manifest
    pd.testing.assert_frame_equal(df.drop(columns=["mtime"]), again.drop(columns=["mtime"]))


def test_unreadable_file_is_skipped(tmp_path, monkeypatch):
    lib = tmp_path / "lib"
    lib.mkdir()
    sf.write(lib / "a.wav", tone(44100, 0.3), 44100)
    sf.write(lib / "locked.wav", tone(44100, 0.3), 44100)
    os.chmod(lib / "locked.wav", 0)
    if os.geteuid() == 0:  # root reads anything: make the open fail as it would for a user
        real_open = os.open

        def fake_open(file, *a, **k):
            if str(file).endswith("locked.wav"):
                raise PermissionError(13, "Permission denied")
            return real_open(file, *a, **k)
        monkeypatch.setattr(os, "open", fake_open)
    df = scan(lib, tmp_path / "p", progress=False).manifest.set_index("path")
    assert df.loc["a.wav", "status"] == "ok"
    assert df.loc["locked.wav", "status"] == "skipped"
    assert "permission" in df.loc["locked.wav", "reason"]


def test_scan_errors(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        scan(tmp_path / "missing", tmp_path / "p")
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(UsageError, match="not a folder"):
        scan(f, tmp_path / "p")
    (tmp_path / "lib").mkdir()
    with pytest.raises(UsageError, match="inside the file"):
        scan(tmp_path / "lib", f / "proj")


# -- demo corpus ------------------------------------------------------------------------------
def test_demo_corpus_is_labelled_mixed_and_real(demo_library, demo_project):
    labels = pd.read_csv(demo_library / "labels.csv")
    assert len(labels) == 210
    assert set(labels.label) == {"kick", "snare", "clap", "hihat", "tom", "ride", "crash"}
    m = Project(demo_project).read_manifest()
    assert (m.status == "ok").all()
    assert m.label.notna().all()
    assert m.format.nunique() >= 4 and m.sample_rate.nunique() >= 3 and set(m.channels) == {1, 2}


def test_demo_corpus_deterministic(tmp_path):
    demo_corpus(tmp_path / "a", n=14, seed=3, progress=False, workers=1)
    demo_corpus(tmp_path / "b", n=14, seed=3, progress=False, workers=1)
    for p in sorted((tmp_path / "a").rglob("*.*")):
        if p.suffix in (".wav", ".flac", ".aiff"):
            a, _ = sf.read(p)
            b, _ = sf.read(tmp_path / "b" / p.relative_to(tmp_path / "a"))
            np.testing.assert_array_equal(a, b)


def test_demo_corpus_extends_and_resumes_without_rewriting(tmp_path):
    """A larger n extends a smaller corpus (file i depends only on seed and i), keeping the files
    already written: what lets a 100,000-file corpus resume after an interruption."""
    lib = tmp_path / "lib"
    demo_corpus(lib, n=10, seed=1, progress=False, workers=1)
    first = {p: p.stat().st_mtime_ns for p in lib.rglob("*_*.*")}
    demo_corpus(lib, n=16, seed=1, progress=False, workers=2)
    labels = pd.read_csv(lib / "labels.csv")
    assert len(labels) == 16 and labels.path.is_unique
    assert all((lib / p).is_file() for p in labels.path)
    assert all(p.stat().st_mtime_ns == t for p, t in first.items())      # not rewritten
    assert sum(1 for _ in lib.rglob("*_*.*")) == 16                      # and nothing stray


def test_demo_corpus_with_another_seed_in_the_same_directory_is_refused(tmp_path, capsys):
    """A second seed in the same folder would keep the first seed's files that share a name and
    leave the rest beside the new corpus (a benchmark once scanned 16,676 files of a '10,000'
    corpus that way): one clear error instead, and nothing written."""
    from klustr_gpu.cli import main
    from klustr_gpu.library.democorpus import long_recordings

    lib = tmp_path / "lib"
    demo_corpus(lib, n=6, seed=1, progress=False, workers=1)
    before = sorted(p.name for p in lib.rglob("*") if p.is_file())
    with pytest.raises(UsageError, match=r"seed 1 \(now 2\)"):
        demo_corpus(lib, n=6, seed=2, progress=False, workers=1)
    assert main(["demo-corpus", str(lib), "--n", "8", "--seed", "2", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "use a new directory" in err
    assert sorted(p.name for p in lib.rglob("*") if p.is_file()) == before
    demo_corpus(lib, n=8, seed=1, progress=False, workers=1)           # the same seed extends it
    assert len(pd.read_csv(lib / "labels.csv")) == 8
    long_recordings(tmp_path / "long", hours=0.001, files=1, progress=False)
    with pytest.raises(UsageError, match="files 1 \\(now 2\\)"):
        long_recordings(tmp_path / "long", hours=0.001, files=2, progress=False)


def test_long_recordings_for_frame_mode(tmp_path):
    from klustr_gpu.library.democorpus import long_recordings

    paths = long_recordings(tmp_path / "long", hours=0.02, files=2, progress=False)   # 72 s in 2 files
    assert [p.name for p in paths] == ["session_000.wav", "session_001.wav"]
    infos = [sf.info(str(p)) for p in paths]
    assert sum(i.frames for i in infos) == round(0.02 * 3600 * 22050)
    assert all(i.samplerate == 22050 and i.channels == 1 for i in infos)
    x, sr = sf.read(str(paths[0]))
    # drum hits over a quiet floor: loud peaks, a quiet median, nothing clipped to silence
    env = np.abs(x)
    assert env.max() > 0.3 and np.percentile(env, 10) < 0.01 and np.median(env) < 0.1
    mtime = paths[0].stat().st_mtime_ns
    long_recordings(tmp_path / "long", hours=0.02, files=2, progress=False)           # kept, not rewritten
    assert paths[0].stat().st_mtime_ns == mtime


def test_written_files_get_the_usual_mode_not_mkstemps_0600(tmp_path):
    """Atomic writes go through mkstemp (mode 0600); the renamed file must get the mode a plain
    open() would give, or a web server or a colleague cannot read the samples and maps."""
    from klustr_gpu.store import atomic_path

    mask = os.umask(0o022)
    os.umask(mask)
    with atomic_path(tmp_path / "x.txt") as tmp:
        tmp.write_text("x")
    (tmp_path / "plain.txt").write_text("x")
    assert stat.S_IMODE((tmp_path / "x.txt").stat().st_mode) == stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    assert stat.S_IMODE((tmp_path / "x.txt").stat().st_mode) == 0o666 & ~mask


def test_missing_label_is_one_rule_whether_asked_one_at_a_time_or_for_a_whole_column():
    """The map's colours (vectorised) and the scores (one label at a time) agree on what
    "no label" is: None, NaN, NA, NaT, empty or blank text; "0", 0 and padded text are labels."""
    import pandas as pd

    from klustr_gpu.library.labels import is_missing, missing_mask

    values = [None, float("nan"), pd.NA, pd.NaT, np.nan, "", "   ", "\t", "kick", "0", 0, 1.5, " snare "]
    expected = [True] * 8 + [False] * 5
    assert [is_missing(v) for v in values] == expected
    assert missing_mask(values).tolist() == expected
    assert missing_mask(pd.Series(values, dtype="object")).tolist() == expected
