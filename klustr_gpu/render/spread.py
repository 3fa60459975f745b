"""``dynspread`` for the map's RGBA pictures, compiled once and cached on disk.

datashader's ``transfer_functions.dynspread`` builds its spreading kernel at run time and
imports ``datashader.composite``, whose operators are compiled at import; neither is cached on
disk, so every fresh process paid 3-5 s for them: more than the rest of rendering a
10,000-point map (``klustr map``'s render stage took 6 s with t-SNE, which loads no numba
before it, against 2 s after UMAP). This is the same arithmetic (the density heuristic, the
circle mask, the ``over`` operator in float64 as datashader writes it) with ``cache=True``,
tested pixel for pixel against datashader
(``tests/test_render.py::test_dynspread_equals_datashaders_pixel_for_pixel``).

Pictures are ``[h, w]`` uint32 arrays of packed RGBA (R in the low byte, alpha in the high one),
as in a datashader ``Image``.
"""
from __future__ import annotations

import numpy as np

_KERNELS = None


def _kernels():
    """The numba kernels, compiled on first use (cached on disk)."""
    global _KERNELS
    if _KERNELS is None:
        import numba

        @numba.njit(nogil=True, cache=True)
        def density(arr, px):
            # datashader's _rgb_density: the share of non-empty pixels with a non-empty
            # neighbour within px (inf for an empty picture)
            m, n = arr.shape
            cnt = 0
            has = 0
            for y in range(m):
                for x in range(n):
                    if (arr[y, x] >> 24) & 255:
                        cnt += 1
                        near = 0
                        for i in range(max(0, y - px), min(y + px + 1, m)):
                            for j in range(max(0, x - px), min(x + px + 1, n)):
                                if (arr[i, j] >> 24) & 255:
                                    near += 1
                        if near > 1:
                            has += 1
            return has / cnt if cnt else np.inf

        @numba.njit(nogil=True, cache=True)
        def over(src, dst):
            # datashader.composite.over with extract_scaled / combine_scaled, in float64
            sr = np.float64((src & 255) / 255)
            sg = np.float64(((src >> 8) & 255) / 255)
            sb = np.float64(((src >> 16) & 255) / 255)
            sa = np.float64(((src >> 24) & 255) / 255)
            dr = np.float64((dst & 255) / 255)
            dg = np.float64(((dst >> 8) & 255) / 255)
            db = np.float64(((dst >> 16) & 255) / 255)
            da = np.float64(((dst >> 24) & 255) / 255)
            factor = 1 - sa
            a = sa + da * factor
            if a == 0:
                return np.uint32(0)
            r = (sr * sa + dr * da * factor) / a
            g = (sg * sa + dg * da * factor) / a
            b = (sb * sa + db * da * factor) / a
            r2 = min(255, np.uint32(r * 255))
            g2 = min(255, np.uint32(g * 255))
            b2 = min(255, np.uint32(b * 255))
            a2 = min(255, np.uint32(a * 255))
            return np.uint32((a2 << 24) | (b2 << 16) | (g2 << 8) | r2)

        @numba.njit(nogil=True, cache=True)
        def spread(arr, mask, out):
            # datashader's image spreading kernel: every visible pixel composited 'over' what
            # is already at each place of the mask around it (out is padded by the mask's half)
            m, n = arr.shape
            w = mask.shape[0]
            for y in range(m):
                for x in range(n):
                    el = arr[y, x]
                    if (el >> 24) & 255:
                        for i in range(w):
                            for j in range(w):
                                if mask[i, j]:
                                    d = out[i + y, j + x]
                                    out[i + y, j + x] = el if d == 0 else over(el, d)

        _KERNELS = (density, spread)
    return _KERNELS


def circle_mask(r: int) -> np.ndarray:
    """A boolean disc of diameter ``2 r + 1`` (datashader's circle)."""
    x = np.arange(-r, r + 1, dtype="i4")
    return np.sqrt(x ** 2 + x[:, None] ** 2) <= r + 0.5


def spread_radius(rgba: np.ndarray, *, threshold: float, max_px: int) -> int:
    """How far :func:`dynspread` spreads ``rgba``: the largest radius up to ``max_px`` whose
    density check (within twice the radius) stays at or below ``threshold``."""
    density, _ = _kernels()
    px = 0
    for p in range(1, max_px + 1):
        px = p
        if density(rgba, p * 2) > threshold:
            px -= 1
            break
    return px


def dynspread(rgba: np.ndarray, *, threshold: float = 0.5, max_px: int = 3) -> np.ndarray:
    """datashader's ``dynspread(img, threshold, max_px)`` of a packed RGBA picture ``[h, w]``
    (uint32), circle shape, ``over`` compositing: a new array, or ``rgba`` itself when it
    needs no spreading."""
    if not 0 <= threshold <= 1:
        raise ValueError("threshold must be in [0, 1]")
    rgba = np.ascontiguousarray(rgba, dtype=np.uint32)
    px = spread_radius(rgba, threshold=threshold, max_px=int(max_px))
    if px < 1:
        return rgba
    _, kernel = _kernels()
    m, n = rgba.shape
    buf = np.zeros((m + 2 * px, n + 2 * px), dtype=np.uint32)
    kernel(rgba, circle_mask(px), buf)
    return buf[px:-px, px:-px].copy()
