"""One footprint per building where tiles overlap: the same ground in several chips (zoom levels 19, 20
and 21 of one place, or tiles cut with an overlap) gives each building once per chip. In map coordinates
those copies are found and merged to one, so that a map output holds each building once.

Two footprints of different tiles are copies of one building when their IoU is at least
:data:`DUPLICATE_IOU` (0.5: what the evaluation counts as the same building). Each group of copies keeps
its highest-scoring footprint. Footprints of one tile are never merged (post-processing already separated
them), and a building cut by a tile's edge keeps its cut piece where the piece's IoU with the whole is
below the threshold. Nothing here imports torch.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import shapely

#: IoU from which two footprints of different tiles are one building.
DUPLICATE_IOU = 0.5


def duplicates(geoms: np.ndarray, tiles: Sequence, scores: np.ndarray, iou: float = DUPLICATE_IOU) -> tuple[np.ndarray, int]:
    """Which footprints to keep so that copies of one building from overlapping tiles come out once.

    Args:
        geoms: Footprints in one map CRS.
        tiles: The tile each footprint comes from (any hashable ids).
        scores: Their scores; a group of copies keeps its highest (ties: the first).
        iou: IoU from which two footprints of different tiles are copies.

    Returns:
        ``(keep, n_groups)``: a boolean mask, and how many buildings had more than one copy.
    """
    n = len(geoms)
    keep = np.ones(n, dtype=bool)
    if n < 2:
        return keep, 0
    geoms = np.asarray(geoms, dtype=object)
    tile_ids = np.unique(np.asarray([str(t) for t in tiles], dtype=object), return_inverse=True)[1]
    if tile_ids.max() == tile_ids.min():
        return keep, 0
    tree = shapely.STRtree(geoms)
    a, b = tree.query(geoms, predicate="intersects")
    sel = (a < b) & (tile_ids[a] != tile_ids[b])
    a, b = a[sel], b[sel]
    if not len(a):
        return keep, 0
    inter = shapely.area(shapely.intersection(geoms[a], geoms[b]))
    union = shapely.area(geoms[a]) + shapely.area(geoms[b]) - inter
    same = inter >= iou * np.maximum(union, 1e-12)
    a, b = a[same], b[same]
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(a.tolist(), b.tolist()):
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    roots = np.asarray([find(i) for i in range(n)])
    order = np.lexsort((np.arange(n), -np.asarray(scores, dtype=np.float64)))  # by score, then first
    seen: set[int] = set()
    groups: set[int] = set()
    for i in order.tolist():
        r = int(roots[i])
        if r in seen:
            keep[i] = False
            groups.add(r)
        else:
            seen.add(r)
    return keep, len(groups)
