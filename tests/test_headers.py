"""The scan's own header parser (``klustr_gpu.library.headers``) against libsndfile: the same
format, rate, channels and frames on every file of the demo corpus and of the Hydrogen kits;
on randomly corrupted files it either agrees with libsndfile or leaves the file to it (never a
number libsndfile would not give); a file libsndfile cannot open gives the same skip."""
from __future__ import annotations

from pathlib import Path

import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from badfiles import corrupt, good_files
from klustr_gpu import SkipFile
from klustr_gpu.library.decode import read_info
from klustr_gpu.library.headers import SF_FORMATS, parse, probe, reader


def _libsndfile(path: Path):
    """(format, rate, channels, frames) as libsndfile reads them, or its skip reason."""
    try:
        info = read_info(path)
    except SkipFile as exc:
        return exc.reason
    return SF_FORMATS.get(info.format, info.format.lower()), int(info.samplerate), int(info.channels), int(info.frames)


def _parsed(path: Path):
    import os

    fd = os.open(path, os.O_RDONLY)
    try:
        return parse(reader(fd), os.fstat(fd).st_size)
    finally:
        os.close(fd)


def _agree_on_every_file(files: list[Path]) -> int:
    fast = 0
    for p in files:
        want = _libsndfile(p)
        got = probe(str(p))
        if isinstance(want, str):
            assert got.reason == want, (p, got)
            continue
        assert got.reason is None and tuple(got[2:6]) == want, (p, got, want)
        assert got.size == p.stat().st_size and got.mtime_ns == p.stat().st_mtime_ns
        h = _parsed(p)
        if h is not None:
            fast += 1
            assert tuple(h) == want, (p, h, want)
    return fast


def test_demo_corpus_headers_equal_libsndfile(demo_library):
    files = sorted(p for p in demo_library.rglob("*") if p.suffix.lower() in (".wav", ".flac", ".aiff", ".aif", ".ogg"))
    assert len(files) >= 200
    fast = _agree_on_every_file(files)
    assert fast >= 0.9 * len(files)                  # the parser, not libsndfile, reads nearly all of them


def test_hydrogen_headers_equal_libsndfile(hydrogen_library):
    files = sorted(p for p in hydrogen_library.rglob("*") if p.suffix.lower() in (".wav", ".flac", ".aiff", ".aif", ".ogg"))
    assert len(files) >= 400
    _agree_on_every_file(files)


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> dict[str, bytes]:
    return good_files(tmp_path_factory.mktemp("originals"))


edits = st.lists(st.tuples(st.integers(0, 1 << 12), st.binary(min_size=1, max_size=8)), min_size=1, max_size=4)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["pcm16.wav", "float.wav", "a.flac", "a.aiff", "a.ogg"]), edits=edits,
       truncate=st.one_of(st.none(), st.integers(0, 1 << 16)))
def test_corrupted_headers_agree_or_are_left_to_libsndfile(originals, tmp_path, name, edits, truncate):
    p = tmp_path / name
    p.write_bytes(corrupt(originals[name], edits, truncate))
    h = _parsed(p) if p.stat().st_size else None
    want = _libsndfile(p)
    if h is not None and not isinstance(want, str):
        assert tuple(h) == want, (h, want)
    got = probe(str(p))
    if isinstance(want, str):
        # libsndfile refuses it: the scan skips it with the same reason, or (the parser read a
        # sound header) lets the decoder find out, which reads the file anyway
        assert got.reason == want or (h is not None and got.reason is None), (got, want)
    else:
        assert got.reason is None and tuple(got[2:6]) == want, (got, want)
