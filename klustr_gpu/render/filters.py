"""What the app shows: search over file names and folders, and the categories ticked.

:class:`PointFilter` answers, for a search text and a set of ticked categories, which points
are shown (a boolean mask, ``None`` when all are) and how many points of each category the
search leaves (the facet counts). The search runs over each *distinct* relative path once
(folder and file name, case-insensitive, every word must occur), with Arrow's compiled
substring match: about 20 ms over a million distinct paths, so it can run as the user types.
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def words(text: str | None) -> list[str]:
    """The search words of ``text`` (lower case; empty for blank text)."""
    return [w for w in (text or "").lower().split() if w]


class PointFilter:
    """Masks over ``points`` (a :class:`~.data.MapData` frame with categorical ``path`` and
    ``by`` columns) for a search text and ticked categories of ``by``."""

    def __init__(self, points: pd.DataFrame, by: str):
        import pyarrow as pa

        path = points["path"]
        self.n = len(points)
        self._paths = pa.array([str(p).lower() for p in path.cat.categories], type=pa.string())
        self._path_codes = path.cat.codes.to_numpy()
        cats = points[by].cat
        self.categories = [str(c) for c in cats.categories]
        self._cat_codes = cats.codes.to_numpy()
        self.totals = np.bincount(self._cat_codes[self._cat_codes >= 0], minlength=len(self.categories))

    def text_mask(self, text: str | None) -> np.ndarray | None:
        """Points whose relative path holds every word of ``text``; ``None`` for blank text."""
        import pyarrow.compute as pc

        ws = words(text)
        if not ws:
            return None
        hit = np.ones(len(self._paths), dtype=bool)
        for w in ws:
            hit &= np.asarray(pc.match_substring(self._paths, pattern=w).to_numpy(zero_copy_only=False),
                              dtype=bool)
        return np.append(hit, False)[self._path_codes]       # code -1 (no path) -> the appended False

    def category_mask(self, chosen) -> np.ndarray | None:
        """Points of the ``chosen`` categories; ``None`` when none is chosen (all shown)."""
        chosen = [c for c in (chosen or ()) if c in self.categories]
        if not chosen:
            return None
        keep = np.zeros(len(self.categories) + 1, dtype=bool)
        keep[[self.categories.index(c) for c in chosen]] = True
        return keep[self._cat_codes]                           # code -1 -> the last (False)

    def counts(self, mask: np.ndarray | None) -> np.ndarray:
        """Points per category within ``mask`` (all points when ``None``)."""
        codes = self._cat_codes if mask is None else self._cat_codes[mask]
        return np.bincount(codes[codes >= 0], minlength=len(self.categories))

    def apply(self, chosen, text: str | None) -> tuple[np.ndarray | None, np.ndarray]:
        """``(shown, counts)``: the mask of points shown (``None``: all) and the points per
        category that the search alone leaves (what the facets show)."""
        by_text = self.text_mask(text)
        by_cat = self.category_mask(chosen)
        counts = self.totals if by_text is None else self.counts(by_text)
        if by_text is None:
            return by_cat, counts
        return (by_text if by_cat is None else by_text & by_cat), counts
