"""Cluster names from paths (klustr_gpu.render.names): hand-made paths with a known answer, and
the real pipeline's k-means clusters on the demo corpus, whose folder and file names carry the class."""
from __future__ import annotations

import random

import numpy as np
import pytest

from klustr_gpu.render.names import FALLBACK, cluster_names, path_words, word_counts, word_scores


def _name(paths_by_cluster: dict[str, list[str]], **kw) -> dict[str, str]:
    paths = [p for ps in paths_by_cluster.values() for p in ps]
    clusters = [c for c, ps in paths_by_cluster.items() for _ in ps]
    return cluster_names(paths, np.arange(len(paths)), clusters, **kw)


@pytest.mark.parametrize("path,words", [
    ("Drums/Kicks/KickHard_01 (copy).WAV", ["drums", "kicks", "kick", "hard"]),
    ("tabla/TablaNa-3.aiff", ["tabla", "tabla", "na"]),
    ("808_Snare v2 [120bpm].wav", ["snare"]),
    ("Pads\\WarmPAD_C3.flac", ["pads", "warm", "pad"]),
    ("FX/riser.long.final.mp3", ["fx", "riser", "long"]),
    ("Perc/conga_hi.ogg", ["perc", "conga", "hi"]),
    ("Trommel/größe.wav", ["trommel", "größe"]),
    ("a/b/1234.wav", []),
    ("", []),
    ("HHOpen.wav", ["hh", "open"]),
    ("noext", ["noext"]),
])
def test_path_words(path, words):
    assert path_words(path) == words


def test_clusters_are_named_by_their_distinctive_words():
    names = _name({
        "0": [f"Library/Percussion/tabla_{i:02d}.wav" for i in range(20)],
        "1": [f"Library/Drums/Kicks/kick_{i:02d}.wav" for i in range(20)],
        "2": [f"Library/Synth/Pads/WarmPad{i}.aiff" for i in range(20)],
    })
    # "library" is everywhere (not distinctive); "kicks" folds into "kick"; "pads" into "pad"
    assert names["0"].split(" · ")[0] in ("tabla", "percussion") and "tabla" in names["0"]
    assert names["1"].startswith("kick") or names["1"].startswith("drums")
    assert "kick" in names["1"] and "pad" in names["2"]
    assert not any("library" in n for n in names.values())


def test_one_or_two_words_and_the_second_only_when_close():
    names = _name({
        "0": [f"vintage/kick_{i}.wav" for i in range(10)] + [f"vintage/snare_{i}.wav" for i in range(10)],
        "1": [f"acoustic/kick_{i}.wav" for i in range(20)],
        "2": [f"acoustic/hat_{i}.wav" for i in range(20)],
    })
    assert names["0"].split(" · ")[0] == "vintage"
    assert len(names["0"].split(" · ")) <= 2 and all(len(n.split(" · ")) <= 2 for n in names.values())
    assert names["2"].startswith("hat")


def test_names_are_unique():
    names = _name({
        "0": [f"kick/kick_{i}.wav" for i in range(30)],
        "1": [f"kick/kick_hard_{i}.wav" for i in range(10)],
        "2": [f"kick/kick_{i}b.wav" for i in range(10)],
        "3": [f"snare/snare_{i}.wav" for i in range(30)],
    })
    assert len(set(names.values())) == 4
    assert names["3"] == "snare"
    assert names["1"] == "hard"                      # "kick" is in three clusters: "hard" says more
    assert names["0"] == "kick" and names["2"] == "kick 2"        # the strongest keeps the bare name


def test_fallback_when_nothing_is_distinctive():
    same = [f"loops/loop_{i}.wav" for i in range(10)]
    names = _name({"0": same[:5], "1": same[5:]})
    assert names == {"0": FALLBACK.format("0"), "1": FALLBACK.format("1")}
    assert _name({"7": ["x/1.wav", "y/2.wav"]}) == {"7": "cluster 7"}      # one cluster: the whole library
    assert _name({"0": ["aa/1.wav"], "1": ["bb/2.wav"]}) == {"0": "aa", "1": "bb"}


def test_deterministic_and_order_free():
    rng = random.Random(0)
    groups = {str(c): [f"{w}/{w}{rng.choice(['Hard', 'Soft', ''])}_{i}.wav" for i in range(rng.randint(3, 30))]
              for c, w in enumerate(["kick", "snare", "clap", "tom", "ride", "crash"])}
    paths = [(p, c) for c, ps in groups.items() for p in ps]
    first = cluster_names([p for p, _ in paths], np.arange(len(paths)), [c for _, c in paths])
    rng.shuffle(paths)
    again = cluster_names([p for p, _ in paths], np.arange(len(paths)), [c for _, c in paths])
    assert first == again and first == {"0": "kick", "1": "snare", "2": "clap", "3": "tom", "4": "ride", "5": "crash"}


def test_weights_count_frames_of_a_file():
    paths = ["long/rain.wav", "long/thunder.wav"]
    # frames: cluster 0 holds 90 frames of rain and 10 of thunder; cluster 1 the rest of thunder
    names = cluster_names(paths, [0, 1, 1], ["0", "0", "1"], weights=[90, 10, 80])
    assert names == {"0": "rain", "1": "thunder"}


def test_scores_are_defined_for_empty_input():
    words, counts, sizes = word_counts([], [], [], 2)
    score, ok = word_scores(counts, sizes)
    assert words == [] and score.shape == (2, 0) and not ok.any()
    words, counts, sizes = word_counts(["a/kick.wav", "b/snare.wav"], [0, 1], [0, 2], 3)   # cluster 1 empty
    score, ok = word_scores(counts, sizes)
    assert np.isfinite(score).all() and ok[0].any() and ok[2].any() and not ok[1].any()


def test_demo_corpus_clusters_are_named_after_their_classes(demo_library, tmp_path):
    """The whole pipeline on the demo corpus without labels: the map is coloured by its 12
    k-means clusters, each named; the name is the class most of the cluster's files belong to
    (the demo's folders and file names carry the class), and the legend of map.png and
    map.html shows the names, not numbers."""
    import klustr_gpu as kg
    from klustr_gpu import Project
    from klustr_gpu.render.data import load_map

    proj = tmp_path / "proj"
    kg.map(demo_library, proj, progress=False)                             # no labels: an unlabelled library
    data = load_map(proj)
    assert data.by == "cluster"
    names = [k for k in data.color_key if k != "(unlabelled)"]
    assert len(names) == len(set(names)) >= 8 and not any(n.isdigit() for n in names)
    man = Project(proj).read_manifest().set_index("id")
    cls = data.points["file_id"].map(man["path"]).str.split("/").str[0]
    right = 0
    for name in names:
        members = cls[(data.points["cluster"] == name).to_numpy()]
        majority = members.value_counts().index[0]
        share = members.value_counts().iloc[0] / len(members)
        if name.split(" · ")[0].split(" ")[0] == majority:
            right += 1
        elif share > 0.8:
            pytest.fail(f"cluster {name!r} is {share:.0%} {majority} but not named so")
    assert right >= 0.75 * len(names), (right, names)
    page = (proj / "map.html").read_text()
    assert all(f">{n}</li>" in page for n in names)
