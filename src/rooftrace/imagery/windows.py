"""Windows over a raster: window starts with overlap, the overlap-and-crop rule that gives each pixel to
exactly one window, and the grid of windows of a scene. Pixel coordinates: (column, row) from the
top-left corner."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from rasterio.windows import Window

from rooftrace.core.errors import RooftraceError

if TYPE_CHECKING:  # pragma: no cover
    pass


#: Default window size and overlap (pixels).
DEFAULT_TILE = 512


DEFAULT_OVERLAP = 64


def window_starts(size: int, tile: int, overlap: int) -> np.ndarray:
    """Start offsets of the windows along one axis: every ``tile - overlap`` pixels, the last
    one shifted back so that it ends at the edge (one window of the whole size when ``size <= tile``)."""
    if size <= tile:
        return np.zeros(1, dtype=np.int64)
    starts = list(range(0, size - tile + 1, tile - overlap))
    if starts[-1] != size - tile:
        starts.append(size - tile)
    return np.asarray(starts, dtype=np.int64)


def window_keep(starts: np.ndarray, tile: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``[lo, hi)`` along one axis that each window's prediction is kept for.

    Consecutive windows split their overlap at its middle, so the kept ranges tile ``[0, size)``
    exactly and each pixel comes from the window it is most central in (for a regular grid,
    ``overlap // 2`` pixels are cropped on each inner side, raster-vision's ``(chip - stride) // 2``).
    """
    t = min(tile, size)
    mid = (starts[1:] + starts[:-1] + t) // 2
    return np.r_[0, mid].astype(np.int64), np.r_[mid, size].astype(np.int64)


@dataclass(frozen=True)
class Grid:
    """The windows of a scene and the part of the scene each one's prediction is kept for."""

    width: int
    height: int
    tw: int
    th: int
    xs: np.ndarray
    ys: np.ndarray
    kx: tuple[np.ndarray, np.ndarray]
    ky: tuple[np.ndarray, np.ndarray]

    @classmethod
    def make(cls, width: int, height: int, tile: int, overlap: int) -> Grid:
        xs, ys = window_starts(width, tile, overlap), window_starts(height, tile, overlap)
        return cls(width, height, min(tile, width), min(tile, height), xs, ys,
                   window_keep(xs, tile, width), window_keep(ys, tile, height))

    @property
    def n_windows(self) -> int:
        return len(self.xs) * len(self.ys)

    def window(self, i: int, j: int) -> Window:
        """Window of row ``i``, column ``j`` of the grid."""
        return Window(int(self.xs[j]), int(self.ys[i]), self.tw, self.th)


def check_tiling(tile: int, overlap: int) -> None:
    """Raise a clear error for a window size and overlap that cannot tile a scene."""
    if tile < 32:
        raise RooftraceError(f"--tile {tile}: must be at least 32 pixels")
    if overlap < 0 or overlap >= tile:
        raise RooftraceError(f"--overlap {overlap}: must be at least 0 and less than --tile ({tile})")
