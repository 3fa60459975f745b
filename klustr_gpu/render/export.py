"""Exports of a selection of points: CSV, an M3U playlist, or the files copied into a folder."""
from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pandas as pd

from ..errors import UsageError
from .security import AudioIndex

CSV_COLUMNS = ["id", "file_id", "start", "path", "name", "label", "duration", "x", "y"]


def selection_csv(points: pd.DataFrame) -> str:
    """The selected points as CSV (one row per point)."""
    cols = [c for c in CSV_COLUMNS + ["cluster"] if c in points.columns]
    buf = io.StringIO()
    points[cols].to_csv(buf, index=False)
    return buf.getvalue()


def selection_m3u(points: pd.DataFrame, index: AudioIndex) -> str:
    """An extended M3U playlist of the selected points (absolute paths; VLC start times for frames)."""
    lines = ["#EXTM3U"]
    for row in points.itertuples(index=False):
        path = index.lookup(str(row.file_id))
        if path is None:
            continue
        title = str(row.name).replace("\n", " ").replace("\r", " ")
        lines.append(f"#EXTINF:{max(1, round(float(row.duration)))},{title}")
        if float(row.start) > 0:
            lines.append(f"#EXTVLCOPT:start-time={float(row.start):.3f}")
        lines.append(str(path))
    return "\n".join(lines) + "\n"


def copy_selection(points: pd.DataFrame, index: AudioIndex, folder: str | Path, *,
                   allowed_root: Path | None = None) -> tuple[int, Path]:
    """Copy the selected files (each once) into ``folder``; returns (count, folder).

    Names that clash get the file id appended. With ``allowed_root``, ``folder`` must lie
    inside it (used when the server is reachable from other machines).
    """
    folder = Path(folder).expanduser()
    if allowed_root is not None:
        folder = (allowed_root / folder).resolve() if not folder.is_absolute() else folder.resolve()
        root = allowed_root.resolve()
        if folder != root and root not in folder.parents:
            raise UsageError(f"export folder must be inside {root}")
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder} is a file, not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    seen: set[str] = set()
    for fid in dict.fromkeys(points["file_id"].astype(str)):
        src = index.lookup(fid)
        if src is None or not src.is_file():
            continue
        name = os.path.basename(src.name)
        if name in seen or (folder / name).exists():
            stem, ext = os.path.splitext(name)
            name = f"{stem}_{fid}{ext}"
        seen.add(name)
        shutil.copy2(src, folder / name)
        n += 1
    return n, folder
