"""Labels for the files of a library: from a CSV, from the parent folder, or the 2017 regex rule."""
from __future__ import annotations

import csv
import math
import re
from pathlib import Path, PurePosixPath
from typing import Any

from pandas import NA

from ..errors import UsageError

#: The 2017 klustr rule: case-insensitive keywords on the whole path; "hi.hat" matches
#: hihat, hi-hat, hi_hat, hi hat. A path that matches two classes stays unlabelled.
KLUSTR_2017_CLASSES = {
    "kick": re.compile(r"kick", re.I),
    "tom": re.compile(r"tom", re.I),
    "snare": re.compile(r"snare", re.I),
    "clap": re.compile(r"clap", re.I),
    "hihat": re.compile(r"hi.?hat", re.I),
    "ride": re.compile(r"ride", re.I),
    "crash": re.compile(r"crash", re.I),
}

LABEL_MODES = ("none", "csv", "parent", "regex")


def is_missing(label: Any) -> bool:
    """Whether ``label`` says "no label": None, NaN, pandas' NA / NaT, or text that is empty
    or only spaces. The one rule of the whole package (scores, maps, colours)."""
    if label is None:
        return True
    if isinstance(label, str):
        return not label.strip()
    if isinstance(label, float):
        return math.isnan(label)
    try:
        return bool(label != label)       # NaT and numpy NaN
    except (TypeError, ValueError):       # pandas' NA refuses bool(); anything else array-like is a label
        return label is NA


def missing_mask(values):
    """:func:`is_missing` of every item of ``values`` (a pandas Series or anything list-like),
    vectorised: a boolean array (a million map points in milliseconds, not a Python call each)."""
    import pandas as pd

    s = pd.Series(values, dtype="object") if not isinstance(values, pd.Series) else values.astype("object")
    return (s.isna() | (s.astype(str).str.strip() == "")).to_numpy(dtype=bool)


def clean_label(label: Any) -> str | None:
    """``label`` as text, or None when it is missing (:func:`is_missing`)."""
    return None if is_missing(label) else str(label)


def manifest_labels(project) -> dict[str, str | None]:
    """``{file id: label or None}`` of every file of a project's manifest."""
    df = project.read_manifest()
    if "label" not in df.columns:
        return {}
    return {str(i): clean_label(v) for i, v in zip(df["id"], df["label"])}


def label_regex(rel_path: str) -> str | None:
    """The 2017 rule applied to one relative path; ``None`` when no or several classes match."""
    hits = [name for name, rx in KLUSTR_2017_CLASSES.items() if rx.search(rel_path)]
    return hits[0] if len(hits) == 1 else None


def label_parent(rel_path: str) -> str | None:
    parent = PurePosixPath(rel_path).parent.name
    return parent or None


def read_labels_csv(path: str | Path) -> dict[str, str]:
    """``path,label`` rows (paths relative to the library, header optional) -> dict."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"labels file {path} does not exist", param="labels")
    out: dict[str, str] = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            for i, row in enumerate(csv.reader(fh)):
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) < 2:
                    raise UsageError(f"{path}:{i + 1}: expected 'path,label', got {','.join(row)!r}")
                p, label = row[0].strip(), row[1].strip()
                if i == 0 and p.lower() == "path" and label.lower() == "label":
                    continue
                key = p.replace("\\", "/")
                out[key[2:] if key.startswith("./") else key] = label
    except UnicodeDecodeError:
        raise UsageError(f"labels file {path} is not UTF-8 text") from None
    return out


class Labeller:
    """Callable ``rel_path -> label | None`` for one of the modes."""

    def __init__(self, *, csv_path: str | Path | None = None, from_parent: bool = False, regex: bool = False):
        chosen = sum([csv_path is not None, from_parent, regex])
        if chosen > 1:
            raise UsageError("choose one of labels=CSV, label_from='parent', label_regex=True", param="labels")
        self.mode = "csv" if csv_path is not None else "parent" if from_parent else "regex" if regex else "none"
        self._table = read_labels_csv(csv_path) if csv_path is not None else None

    def __call__(self, rel_path: str) -> str | None:
        if self.mode == "csv":
            return self._table.get(rel_path)
        if self.mode == "parent":
            return label_parent(rel_path)
        if self.mode == "regex":
            return label_regex(rel_path)
        return None
