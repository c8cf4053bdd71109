"""Passes over an n×n matrix tile by tile, on and above the diagonal: no n×n temporaries."""

from __future__ import annotations

import numpy as np


def _upper_tiles(n: int, tile: int = 256):
    """(rows, cols) slices of the tiles on and above the diagonal of an n×n matrix.  Pairs of
    tiles A[r, c] and A[c, r]' are compared tile by tile: a transposed read of a small tile
    stays in cache (about 5× faster than whole row chunks)."""
    for s in range(0, n, tile):
        rows = slice(s, min(n, s + tile))
        for u in range(s, n, tile):
            yield rows, slice(u, min(n, u + tile))


def _scan(values: np.ndarray, chunk: int = 1024):
    """The first non-finite entry (or None), max |K|, and the worst asymmetry
    max |K_ij − K_ji| with its (i, j), i < j (upper triangle); no q×q temporaries."""
    n = len(values)
    scale = 0.0
    for s in range(0, n, chunk):
        rows = values[s:s + chunk]
        hi, lo = float(rows.max()), float(rows.min())  # NaN and ±inf propagate
        if not (np.isfinite(hi) and np.isfinite(lo)):
            i, j = np.argwhere(~np.isfinite(rows))[0]
            return (s + int(i), int(j)), scale, 0.0, (0, 0)
        scale = max(scale, hi, -lo)
    worst, where = 0.0, (0, 0)
    for r, c in _upper_tiles(n):
        d = values[r, c] - values[c, r].T
        if max(float(d.max()), -float(d.min())) > worst:
            k = int(np.argmax(np.abs(d)))
            worst, where = float(abs(d.flat[k])), (r.start + k // d.shape[1], c.start + k % d.shape[1])
    return None, scale, worst, where


def symmetrize(values: np.ndarray) -> None:
    """values ← (values + values')/2 in place, tile by tile."""
    for r, c in _upper_tiles(len(values)):
        upper = (values[r, c] + values[c, r].T) / 2.0
        values[r, c] = upper
        values[c, r] = upper.T


def _mirror_upper(K: np.ndarray) -> None:
    """Copy the upper triangle of K onto its lower triangle, in place, tile by tile."""
    for r, c in _upper_tiles(len(K)):
        if r == c:
            tile = K[r, c]
            low = np.tril_indices(len(tile), -1)
            tile[low] = tile.T[low]
        else:
            K[c, r] = K[r, c].T
