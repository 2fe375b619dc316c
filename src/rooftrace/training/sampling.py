"""What a training batch is drawn from: tiles weighted by what they teach, crops that find buildings.

Uniform sampling over tiles lets the source with the most tiles dominate (Kampala's 81 mostly
empty chips against the sample pack's 55 dense tiles) and spends most crops on easy ground. With
``data.sampling: balanced``, :func:`tile_weights` gives each tile a weight from:

- its **size**, in crops of ``data.crop_size`` (square root: a large tile holds more distinct
  crops, but they overlap in what they teach);
- its **building density** against the median tile's (capped at 3x): dense urban tiles, where small
  roofs touch, are the main error of the shipped model;
- its share of **small buildings** (under ``small_px`` pixels at the model's pixel size);
- its **vegetation** share off the buildings (green-red index): trees are the hard negatives
  that the model outlines, most of all on panchromatic input.

Each source (one ``data.train`` split spec) then gets a share of the batches proportional to the
square root of its tiles' total weight, times its spec's ``weight``: a large source is seen more,
but not in proportion, so a small one still teaches. With ``augment.focus`` a crop is placed on a
building (small ones more often, by ``area ** -0.5``) rather than anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import shapely

SMALL_PX = 400.0  #: a building under this many pixels at the model's pixel size is small (36 m² at 0.3 m)


@dataclass
class TileStats:
    """One tile's buildings and ground, in the pixels of its resampled image."""

    size: tuple[int, int]  #: (height, width)
    centroids: np.ndarray  #: (N, 2) x, y of each building
    areas: np.ndarray  #: (N,) pixels
    vegetation: float  #: share of the pixels off the buildings that look like vegetation

    @property
    def buildings(self) -> int:
        return len(self.areas)

    def small(self, small_px: float = SMALL_PX) -> int:
        return int((self.areas < small_px).sum())

    def pick_building(self, rng: np.random.Generator) -> tuple[float, float] | None:
        """A building's centroid, small buildings more often (probability ``area ** -0.5``); None if none."""
        if not len(self.areas):
            return None
        w = 1.0 / np.sqrt(np.maximum(self.areas, 1.0))
        j = int(rng.choice(len(w), p=w / w.sum()))
        return float(self.centroids[j, 0]), float(self.centroids[j, 1])


def tile_stats(rgb: np.ndarray, footprint: np.ndarray, polygons: Sequence) -> TileStats:
    """Statistics of one tile: its image ``(H, W, 3)``, footprint mask ``(H, W)`` and building polygons."""
    from rooftrace.training.augment import green_red_index

    polys = [p for p in polygons if p is not None and not p.is_empty]
    if polys:
        arr = np.asarray(polys, dtype=object)
        areas = shapely.area(arr).astype(np.float64)
        c = shapely.centroid(arr)
        centroids = np.stack([shapely.get_x(c), shapely.get_y(c)], axis=1)
    else:
        areas, centroids = np.zeros(0), np.zeros((0, 2))
    off = footprint == 0
    valid = rgb.max(axis=2) > 0  # nodata written black is not ground
    ground = off & valid
    veg = float(((green_red_index(rgb) > 0.06) & ground).sum() / max(int(ground.sum()), 1))
    return TileStats(size=(int(rgb.shape[0]), int(rgb.shape[1])), centroids=centroids, areas=areas, vegetation=veg)


def tile_weights(stats: Sequence[TileStats], sources: Sequence[int], crop: int,
                 source_weights: Sequence[float] | None = None, small_px: float = SMALL_PX) -> np.ndarray:
    """Sampling probabilities of the tiles (summing to 1), as the module docstring describes.

    Args:
        stats: One :class:`TileStats` a tile.
        sources: The source (split spec index) of each tile.
        crop: The training crop size in pixels.
        source_weights: A multiplier per source index (default 1 each).
        small_px: Pixel area under which a building counts as small.
    """
    n = len(stats)
    if n == 0:
        return np.zeros(0)
    crops = np.array([max(1.0, s.size[0] * s.size[1] / crop**2) for s in stats])
    density = np.array([s.buildings for s in stats]) / crops
    typical = float(np.median(density[density > 0])) if (density > 0).any() else 1.0
    small = np.array([s.small(small_px) / max(s.buildings, 1) for s in stats])
    veg = np.array([s.vegetation for s in stats])
    w = np.sqrt(crops) * (1.0 + np.minimum(density / typical, 3.0)) * (1.0 + small) * (1.0 + veg)
    src = np.asarray(sources)
    out = np.zeros(n)
    for s in np.unique(src):
        mask = src == s
        share = np.sqrt(w[mask].sum()) * (source_weights[s] if source_weights is not None and s < len(source_weights) else 1.0)
        out[mask] = share * w[mask] / w[mask].sum()
    return out / out.sum()


def focus_window(point: tuple[float, float] | None, win: int, size: tuple[int, int],
                 rng: np.random.Generator) -> tuple[int, int]:
    """Top-left ``(y0, x0)`` of a ``win``-pixel window in a tile of ``size`` (h, w) that holds ``point``.

    The point lands at a uniformly random place in the middle 80 % of the window (not always the
    centre, so the network does not learn that buildings sit in the middle); the window stays inside
    the tile where the tile is larger than it. Without a point, the window is placed anywhere.
    """
    h, w = size
    if point is None:
        return int(rng.integers(0, max(h - win, 0) + 1)), int(rng.integers(0, max(w - win, 0) + 1))
    x, y = point
    out = []
    for c, extent in ((y, h), (x, w)):
        off = rng.uniform(0.1, 0.9) * win
        lo = int(round(c - off))
        out.append(int(min(max(lo, 0), max(extent - win, 0))))
    return out[0], out[1]
