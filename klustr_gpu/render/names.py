"""Names a person can read for clusters of files: the words their folders and file names share.

An unlabelled library is coloured by k-means clusters; ``"3"`` says nothing, ``"tabla"`` or
``"kick · 808"`` does. :func:`cluster_names` scores every word of the paths by how much more
often it occurs in a cluster's files than in the whole library and names each cluster by its
one or two most distinctive words, unique across clusters, ``"cluster 3"`` when nothing is
distinctive. Pure functions of their inputs (no I/O, no randomness): the same paths and
clusters always give the same names.

Words come from :func:`path_words`: the relative path split on separators, punctuation, case
changes (``KickHard`` → kick, hard) and digits (``kick01`` → kick); extensions, numbers,
one-letter pieces and :data:`STOP_WORDS` (English function words and audio-file noise such as
``sample``, ``stereo``, ``bpm``) dropped; a plural merged with its singular when both occur.

The score of word *w* in cluster *c* is ``share_c(w) · log(share_c(w) / share(w))`` (the
word's contribution to the KL divergence of the cluster's word distribution from the
library's; with add-½ smoothing): high when most of the cluster's files carry the word and few
others do. A word names a cluster only when at least :data:`MIN_SHARE` of the cluster's files
carry it and it is at least :data:`MIN_LIFT` times more frequent there than in the library.
"""
from __future__ import annotations

import functools
import re
from collections.abc import Sequence

import numpy as np

MIN_SHARE = 0.25        # a naming word is carried by at least this share of the cluster's files
MIN_LIFT = 1.5          # ... and is this many times more frequent there than in the whole library
SECOND_WORD = 0.5       # a second word joins when its score is at least this share of the first's
MAX_WORDS = 2
MAX_PER_CLUSTER = 5000  # items per cluster read for its words (evenly spaced; weights keep the shares)
JOIN = " · "
FALLBACK = "cluster {}"

STOP_WORDS = frozenset("""
a an and are as at be by for from in into is it its of on or the to with without my your our this that
wav wave aif aiff aifc flac ogg oga opus mp3 m4a aac mp4 webm wma caf
sample samples smpl sound sounds snd audio file files track tracks untitled copy new old final finished
stereo mono st ch bpm khz hz bit bits one shot shots oneshot oneshots mix master version ver take edit
edited processed export exported bounce bounced render rendered temp tmp var alt misc other others various
""".split())

_EXT = re.compile(r"\.[A-Za-z0-9]{1,5}$")
_PIECES = re.compile(r"\d+|[^\W\d_]+")                           # runs of digits / runs of letters
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def path_words(path: str) -> list[str]:
    """The words of a relative path, in order, lower case (see the module's docstring).

    >>> path_words("Drums/Kicks/KickHard_01 (copy).WAV")
    ['drums', 'kicks', 'kick', 'hard']
    """
    head, _, last = str(path).replace("\\", "/").rpartition("/")
    return _words(head) + _words(_EXT.sub("", last))


@functools.lru_cache(maxsize=65536)
def _folder_words(folder: str) -> tuple[str, ...]:
    return tuple(_words(folder))


def _words(text: str) -> list[str]:
    words = []
    for piece in _PIECES.findall(text):
        if piece.isdigit():
            continue
        for part in _CAMEL.sub(" ", piece).split():
            w = part.lower()
            if len(w) >= 2 and w not in STOP_WORDS:
                words.append(w)
    return words


def _vocabulary(paths: Sequence[str]) -> tuple[list[str], list[list[int]]]:
    """The sorted vocabulary of ``paths`` (plurals merged into singulars present) and each
    path's distinct word indices."""
    per_path = []
    for p in paths:                                  # folders repeat: their words are computed once
        head, _, last = str(p).replace("\\", "/").rpartition("/")
        per_path.append([*_folder_words(head), *_words(_EXT.sub("", last))])
    vocab = set(w for ws in per_path for w in ws)
    merge = {}
    for w in sorted(vocab):                          # plurals into singulars that occur: kicks, boxes
        for stem in (w[:-1] if w.endswith("s") else None, w[:-2] if w.endswith("es") else None):
            if stem and len(stem) >= 2 and stem in vocab:
                merge[w] = stem
                break
    for w in list(merge):
        while merge[w] in merge:
            merge[w] = merge[merge[w]]
    words = sorted(vocab - set(merge))
    index = {w: i for i, w in enumerate(words)}
    return words, [sorted({index[merge.get(w, w)] for w in ws}) for ws in per_path]


def word_counts(paths: Sequence[str], path_index, cluster_index, n_clusters: int, weights=None):
    """``(words, counts, sizes)``: the vocabulary, ``counts[c, w]`` = weight of cluster ``c``'s
    items whose path carries word ``w``, and ``sizes[c]`` = total weight of cluster ``c``.

    Item ``i`` has path ``paths[path_index[i]]`` and cluster ``cluster_index[i]`` (0 ≤ … <
    ``n_clusters``); ``weights[i]`` (default 1) counts it that many times (e.g. frames of a file)."""
    from scipy import sparse

    words, per_path = _vocabulary(paths)
    pi = np.asarray(path_index, dtype=np.int64)
    ci = np.asarray(cluster_index, dtype=np.int64)
    wt = np.ones(len(pi)) if weights is None else np.asarray(weights, dtype=np.float64)
    by_path = sparse.csr_matrix((wt, (ci, pi)), shape=(n_clusters, len(paths)))        # cluster × path
    rows = np.repeat(np.arange(len(paths)), [len(ws) for ws in per_path])
    cols = np.fromiter((w for ws in per_path for w in ws), dtype=np.int64, count=len(rows))
    has = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(paths), len(words)))
    counts = np.asarray((by_path @ has).todense()).reshape(n_clusters, len(words))
    sizes = np.asarray(by_path.sum(axis=1)).reshape(n_clusters)
    return words, counts, sizes


def word_scores(counts: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(score, eligible)`` per cluster and word from :func:`word_counts`' output (see the
    module's docstring); a defined result for empty clusters and an empty vocabulary."""
    counts = np.asarray(counts, dtype=np.float64)
    sizes = np.asarray(sizes, dtype=np.float64)
    share_c = (counts + 0.5) / (sizes[:, None] + 1.0)
    share = (counts.sum(axis=0) + 0.5) / (sizes.sum() + 1.0)
    lift = share_c / share[None, :]
    score = share_c * np.log(lift)
    raw_share = np.divide(counts, sizes[:, None], out=np.zeros_like(counts), where=sizes[:, None] > 0)
    eligible = (raw_share >= MIN_SHARE) & (lift >= MIN_LIFT) & (counts > 0)
    return score, eligible


def _ranked(score_row: np.ndarray, ok_row: np.ndarray) -> list[int]:
    """Eligible word indices by score, best first (ties: the vocabulary's alphabetical order)."""
    idx = np.flatnonzero(ok_row)
    return [int(i) for i in idx[np.lexsort((idx, -score_row[idx]))]]


def _related(a: str, b: str) -> bool:
    return a.startswith(b) or b.startswith(a)


def _first_name(words: list[str], ranked: list[int], score_row: np.ndarray) -> list[str]:
    """The cluster's best word, and a second one when it scores close enough and is not a
    variant of the first."""
    if not ranked:
        return []
    chosen = [ranked[0]]
    for i in ranked[1:]:
        if len(chosen) >= MAX_WORDS or score_row[i] < SECOND_WORD * score_row[chosen[0]]:
            break
        if not any(_related(words[i], words[j]) for j in chosen):
            chosen.append(i)
    return [words[i] for i in chosen]


def cluster_names(paths: Sequence[str], path_index, clusters: Sequence, *, weights=None) -> dict[str, str]:
    """A readable, unique name for every cluster in ``clusters``.

    ``paths``: the distinct relative paths; item ``i`` (a point, or a (cluster, file) pair with
    ``weights[i]`` points) has path ``paths[path_index[i]]`` and cluster ``clusters[i]``
    (any values; named by ``str``). Returns ``{str(cluster): name}``: its one or two most
    distinctive words joined by ``" · "``; clusters that would share a name get their next
    distinctive word, else a number (``"kick 2"``), the best-scoring one keeping the bare
    name; ``"cluster <id>"`` when no word is distinctive."""
    keys = [str(c) for c in clusters]
    ids = sorted(set(keys))
    pos = {c: i for i, c in enumerate(ids)}
    code = np.fromiter((pos[k] for k in keys), dtype=np.int64, count=len(keys))
    sub_paths, sub_index, sub_code, sub_weights = _sample(paths, path_index, code, weights, len(ids))
    words, counts, sizes = word_counts(sub_paths, sub_index, sub_code, len(ids), sub_weights)
    score, ok = word_scores(counts, sizes)
    ranked = [_ranked(score[c], ok[c]) for c in range(len(ids))]
    chosen = [_first_name(words, ranked[c], score[c]) for c in range(len(ids))]
    strength = [float(score[c, words.index(chosen[c][0])]) if chosen[c] else 0.0 for c in range(len(ids))]
    names = [JOIN.join(ws) if ws else FALLBACK.format(ids[c]) for c, ws in enumerate(chosen)]
    return dict(zip(ids, _unique(names, chosen, ranked, words, strength)))


def _sample(paths: Sequence[str], path_index, code: np.ndarray, weights, n_clusters: int):
    """At most :data:`MAX_PER_CLUSTER` items of each cluster, evenly spaced in input order
    (deterministic), their weights scaled to keep each cluster's total; and only the paths they
    use. Shares of words, hence names, barely move; a million files take seconds, not minutes."""
    pi = np.asarray(path_index, dtype=np.int64)
    wt = np.ones(len(pi)) if weights is None else np.asarray(weights, dtype=np.float64)
    keep, scale = [], np.ones(len(pi))
    for c in range(n_clusters):
        idx = np.flatnonzero(code == c)
        if len(idx) > MAX_PER_CLUSTER:
            take = idx[np.unique(np.linspace(0, len(idx) - 1, MAX_PER_CLUSTER).round().astype(np.int64))]
            scale[take] = wt[idx].sum() / wt[take].sum()
            idx = take
        keep.append(idx)
    kept = np.sort(np.concatenate(keep)) if keep else np.zeros(0, np.int64)
    used, sub_index = np.unique(pi[kept], return_inverse=True)
    return [paths[i] for i in used], sub_index.reshape(-1), code[kept], wt[kept] * scale[kept]


def _unique(names: list[str], chosen: list[list[str]], ranked: list[list[int]], words: list[str],
            strength: list[float]) -> list[str]:
    """``names`` made unique: in each group sharing a name, the strongest keeps it; the others
    add their next distinctive word not yet in the name, else a number."""
    out = list(names)
    taken = set()
    order = sorted(range(len(names)), key=lambda c: (-strength[c], c))
    for c in order:
        name = out[c]
        if name in taken and chosen[c]:
            extra = [words[i] for i in ranked[c] if words[i] not in chosen[c]
                     and not any(_related(words[i], w) for w in chosen[c])]
            for w in extra:
                candidate = JOIN.join([chosen[c][0], w])
                if candidate not in taken:
                    name = candidate
                    break
        k = 2
        base = name
        while name in taken:
            name = f"{base} {k}"
            k += 1
        taken.add(name)
        out[c] = name
    return out
