"""What each stage returns: a dataclass, the same shape in a notebook and on the command line.

``result.to_dict()`` is plain JSON (paths as strings; tables such as a manifest or a map are
left out: they are fields of the object, and files in the project); ``result.summary()`` is
the text the ``klustr`` command prints. Nothing here computes: the stages fill these in.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: field metadata: not part of ``to_dict()`` (a table, kept on the object)
TABLE = {"json": False}


def plain(obj: Any) -> Any:
    """``obj`` as strict JSON data: paths as strings, numpy scalars as Python numbers, NaN and
    infinities as None, results as their ``to_dict()``."""
    if isinstance(obj, Result):
        return obj.to_dict()
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


class Result:
    """Base of the stage results (dataclasses)."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)
                if f.metadata.get("json", True)}

    def summary(self) -> str:  # pragma: no cover - every result says it its own way
        raise NotImplementedError


def _skip_lines(by_reason: dict[str, int]) -> list[str]:
    return [f"  skipped {n:>6}  {reason}" for reason, n in by_reason.items()]


@dataclass
class ScanResult(Result):
    """``scan``: the manifest written, and what it holds."""

    project: Path
    manifest_path: Path
    files: int
    ok: int
    skipped: int
    labelled: int
    skipped_by_reason: dict[str, int]
    headers_read: int = 0               # new or changed files whose header was read
    rows_kept: int = 0                  # unchanged files whose row was kept from the previous scan
    workers: int = 0                    # worker processes that read headers (0: read in this process)
    unlisted_folders: dict[str, str] = field(default_factory=dict)   # folder -> why it could not be listed
    seconds: float = 0.0
    manifest: Any = field(default=None, repr=False, metadata=TABLE)      # the manifest (a DataFrame)

    def summary(self) -> str:
        how = f"{self.workers} worker processes" if self.workers else "in this process"
        lines = [f"manifest: {self.manifest_path}  ({self.files} files, {self.ok} ok, {self.skipped} skipped, "
                 f"{self.labelled} labelled)",
                 f"  read {self.headers_read} headers ({how}), kept {self.rows_kept} unchanged rows, "
                 f"in {self.seconds:.1f} s", *_skip_lines(self.skipped_by_reason)]
        lines += [f"  could not list {folder}/: {why} (its files are not in the manifest)"
                  for folder, why in self.unlisted_folders.items()]
        return "\n".join(lines)


@dataclass
class FeatureSetResult(Result):
    """One feature set of a ``compute_features`` run."""

    n_rows: int
    dim: int
    computed: int
    reused: int
    seconds: float


@dataclass
class FeaturesResult(Result):
    """``compute_features``: each set's rows, the files that could not be decoded (id -> reason)."""

    sets: dict[str, FeatureSetResult]
    skipped: dict[str, str]
    device: str
    frames: bool
    seconds: float
    decoded: int = 0                    # files (frame mode: windows) decoded in this run
    workers: int = 0                    # decoding processes (0: decoded in this process; -1: a Dask cluster)

    def where(self) -> str:
        """How the work ran, in words ("2 worker processes", "this process", "a Dask cluster")."""
        if self.workers < 0:
            return "a Dask cluster"
        return f"{self.workers} worker processes" if self.workers else "this process"

    def summary(self) -> str:
        mode = " (frame mode)" if self.frames else ""
        lines = [f"features on {self.device}{mode} in {self.seconds:.1f} s ({self.decoded} decoded in {self.where()})"]
        for name, s in self.sets.items():
            lines.append(f"  {name:<8} {s.n_rows} rows x {s.dim}  (computed {s.computed}, reused {s.reused})")
        if self.skipped:
            lines.append(f"  {len(self.skipped)} files skipped (the manifest says why)")
        return "\n".join(lines)


@dataclass
class EmbedResult(Result):
    """``embed``: the map written to ``embeddings/<name>.parquet``."""

    name: str
    path: Path
    n_points: int
    method: str
    engine: str
    features: str
    seconds: float
    frame: Any = field(default=None, repr=False, metadata=TABLE)         # id, file_id, start, x, y, label (+ cluster)

    def summary(self) -> str:
        return f"embedding: {self.path}  ({self.n_points} points, {self.method} on {self.engine})"


@dataclass
class ScoreResult(Result):
    """``score_maps``: what ``scores.json`` holds (maps ranked best first, feature sets, notes)."""

    path: Path
    k: int
    sample: int
    labels: bool
    rank_by: str
    ranking: list[str]
    best: str | None
    notes: list[str]
    features: dict[str, Any]
    embeddings: dict[str, Any]

    @classmethod
    def from_scores(cls, path: Path, scores: dict[str, Any]) -> "ScoreResult":
        names = [f.name for f in dataclasses.fields(cls) if f.name != "path"]
        return cls(path=Path(path), **{n: scores[n] for n in names})

    def summary(self) -> str:
        lines = [f"scores: {self.path}  ({len(self.ranking)} maps, ranked by {self.rank_by}; best {self.best})"]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


@dataclass
class GridResult(Result):
    """``grid``: the population of maps, ranked; the best became the project's default map."""

    runs: int
    seconds: float
    default: str | None
    scores_path: Path
    report_path: Path
    grid_png: Path | None
    table: Any = field(default=None, repr=False, metadata=TABLE)         # one row per map, best first

    def summary(self) -> str:
        head = self.table.head(10).to_string(index=False) if self.table is not None else ""
        return f"{head}\nreport: {self.report_path}" + (f"\ngrid: {self.grid_png}" if self.grid_png else "")


@dataclass
class RenderResult(Result):
    """``render_map``: the picture and the page."""

    png: Path
    html: Path | None
    n_points: int
    seconds: float

    def summary(self) -> str:
        return f"map: {self.png}" + (f"\npage: {self.html}" if self.html else "")


@dataclass
class MapResult(Result):
    """``map``: every stage; files ok / skipped (by reason), seconds per stage (``other``: what
    no stage accounts for: loading libraries, checks, reading the manifest back), what each
    stage did (``stages``: one line each), the outputs."""

    project: Path
    files: int
    ok: int
    skipped: int
    skipped_by_reason: dict[str, int]
    labelled: int
    points: int
    seconds: dict[str, float]
    map_png: Path | None
    map_html: Path | None
    stages: dict[str, str] = field(default_factory=dict)
    decisions: dict[str, str] = field(default_factory=dict)     # what automatic rules decided, and why

    def summary(self) -> str:
        lines = [f"files: {self.files}  ok: {self.ok}  skipped: {self.skipped}  labelled: {self.labelled}  "
                 f"points: {self.points}", *_skip_lines(self.skipped_by_reason),
                 *(f"{what}: {why}" for what, why in self.decisions.items())]
        total = sum(self.seconds.values())
        lines.append(f"time: {total:.1f} s")
        for stage, s in self.seconds.items():
            share = f"{100 * s / total:3.0f} %" if total > 0 else ""
            lines.append(f"  {stage:<9}{s:7.1f} s {share}  {self.stages.get(stage, '')}".rstrip())
        if self.map_png:
            lines.append(f"map: {self.map_png}")
        if self.map_html:
            lines.append(f"page: {self.map_html}  (open in a browser; `klustr serve {self.project}` for the zoomable app)")
        return "\n".join(lines)


def rate(n: int, seconds: float, unit: str) -> str:
    """``"1,234 files/s"``, or "" when there is no rate to give."""
    return f"{n / seconds:,.0f} {unit}/s" if n and seconds > 0 else ""
