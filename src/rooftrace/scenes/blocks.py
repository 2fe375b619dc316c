"""Phase 2 of a scene: post-process the stitched probability raster in blocks with a margin, each
building decided by exactly one block, so the result equals post-processing the whole scene at once."""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import rasterio
import shapely
from rasterio.windows import Window
from tqdm import tqdm

from rooftrace.core.allocator import ready_allocator
from rooftrace.core.errors import RooftraceError
from rooftrace.core.threads import ordered_map
from rooftrace.instances.postprocess import (
    DEFAULT_METHOD,
    PostprocessSettings,
    postprocess,
)

#: Default post-processing core size and the margin read around it (pixels).
DEFAULT_BLOCK = 2048


DEFAULT_MARGIN = 128


#: Largest window (pixels a side) a group of touching buildings is grown to (see module docstring).
DEFAULT_MAX_GROUP = 4096


_EDGE = 2  # a group within this many pixels of a cut side may continue beyond it


def _groups(p: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Groups of a probability block: 8-connected components of the mask dilated by one pixel.

    Returns ``(labels, stats)``: int32 ids (0 outside) and OpenCV's per-id ``x, y, w, h, area``.
    """
    import cv2

    mask = (p[0] >= threshold).view(np.uint8)
    dilated = cv2.dilate(mask, np.ones((3, 3), np.uint8))
    _, labels, stats, _ = cv2.connectedComponentsWithStats(dilated, connectivity=8, ltype=cv2.CV_32S)
    return labels, stats


def _anchors(labels: np.ndarray, stats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row and column (within the block) of each group's first pixel in raster order (index = id - 1)."""
    n = len(stats) - 1
    tops = stats[1:, 1]
    flat = np.flatnonzero(labels)  # ascending: raster order
    ids = labels.ravel()[flat]
    rows = flat // labels.shape[1]
    on_top = rows == tops[ids - 1]
    first_ids, first = np.unique(ids[on_top], return_index=True)
    cols = np.zeros(n, dtype=np.int64)
    cols[first_ids - 1] = flat[on_top][first] % labels.shape[1]
    return tops.astype(np.int64), cols


def _cut_sides(stats_row: np.ndarray, r0: int, c0: int, r1: int, c1: int, height: int, width: int) -> tuple[bool, bool, bool, bool]:
    """Which sides (top, left, bottom, right) of window ``[r0, r1) x [c0, c1)`` a group may go on beyond."""
    x, y, w, h = (int(v) for v in stats_row[:4])
    return (r0 > 0 and y < _EDGE, c0 > 0 and x < _EDGE,
            r1 < height and y + h > (r1 - r0) - _EDGE, c1 < width and x + w > (c1 - c0) - _EDGE)


def _cut_any(stats: np.ndarray, r0: int, c0: int, r1: int, c1: int, height: int, width: int) -> np.ndarray:
    """:func:`_cut_sides` for many groups at once: whether each may go on beyond the window."""
    x, y, w, h = (stats[:, k].astype(np.int64) for k in range(4))
    return (((r0 > 0) & (y < _EDGE)) | ((c0 > 0) & (x < _EDGE))
            | ((r1 < height) & (y + h > (r1 - r0) - _EDGE)) | ((c1 < width) & (x + w > (c1 - c0) - _EDGE)))


def _shift(geoms: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """Geometries translated by whole pixels (exact in floating point)."""
    if len(geoms) == 0 or (dx == 0 and dy == 0):
        return geoms
    offset = np.array([dx, dy], dtype=np.float64)
    return shapely.transform(geoms, lambda xy: xy + offset)


def _group_of(geoms: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The group id under each building: at a point inside it (0 only if none is found)."""
    if len(geoms) == 0:
        return np.zeros(0, dtype=np.int64)
    pts = shapely.get_coordinates(shapely.point_on_surface(geoms))
    h, w = labels.shape
    col = np.clip(np.floor(pts[:, 0]).astype(np.int64), 0, w - 1)
    row = np.clip(np.floor(pts[:, 1]).astype(np.int64), 0, h - 1)
    g = labels[row, col].astype(np.int64)
    for k in np.flatnonzero(g == 0):  # a ``seed`` contour through pixel centres may put it on an edge
        x0, y0, x1, y1 = shapely.bounds(geoms[k])
        win = labels[max(0, int(y0) - 1): int(math.ceil(y1)) + 1, max(0, int(x0) - 1): int(math.ceil(x1)) + 1]
        if win.any():
            g[k] = np.bincount(win[win > 0]).argmax()
    return g


class _ProbReader:
    """Windows of the stitched probability GeoTIFF as float32 probabilities ``(C, h, w)``."""

    def __init__(self, path: Path):
        self.src = rasterio.open(path)
        self.height, self.width = self.src.height, self.src.width

    def read(self, r0: int, c0: int, r1: int, c1: int) -> np.ndarray:
        p = self.src.read(window=Window(c0, r0, c1 - c0, r1 - r0)).astype(np.float32)
        p /= np.float32(255.0)  # in place: the same values as dividing into a new array, one block's memory less
        return p

    def close(self) -> None:
        self.src.close()


@dataclass
class _BlockOutput:
    geoms: np.ndarray  # scene pixel coordinates
    scores: np.ndarray
    n_truncated: int = 0
    #: Regions of this block's groups that the score filter dropped (``Buildings.n_below_score``), each counted once.
    n_below_score: int = 0


def _resolve_group(reader: _ProbReader, seed: tuple[int, int], win: tuple[int, int, int, int], threshold: float,
                   method: str, settings: PostprocessSettings | None, max_group: int
                   ) -> tuple[tuple[int, int], np.ndarray, np.ndarray, bool, int]:
    """Grow the window around a group until it is whole, then post-process the group alone.

    Returns ``(anchor, geometries in scene pixels, scores, truncated, regions the score filter dropped)``.
    """
    r0, c0, r1, c1 = win
    H, W = reader.height, reader.width
    while True:
        p = reader.read(r0, c0, r1, c1)
        labels, stats = _groups(p, threshold)
        g = int(labels[seed[0] - r0, seed[1] - c0])
        top, left, bottom, right = _cut_sides(stats[g], r0, c0, r1, c1, H, W)
        if not (top or left or bottom or right):
            truncated = False
            break
        h, w = r1 - r0, c1 - c0
        grow_h, grow_w = max(0, min(h, max_group - h)), max(0, min(w, max_group - w))
        n0 = (max(0, r0 - (grow_h if top else 0)), max(0, c0 - (grow_w if left else 0)),
              min(H, r1 + (grow_h if bottom else 0)), min(W, c1 + (grow_w if right else 0)))
        if n0 == (r0, c0, r1, c1):
            truncated = True
            break
        r0, c0, r1, c1 = n0
    x, y, w, h = (int(v) for v in stats[g][:4])
    anchor_col = x + int(np.argmax(labels[y, x:x + w] == g))
    anchor = (r0 + y, c0 + anchor_col)
    sub = p[:, y:y + h, x:x + w].copy()
    sub[0][labels[y:y + h, x:x + w] != g] = 0.0  # the group alone: post-processing is local to it
    found = postprocess(sub, method=method, settings=settings)
    geoms = _shift(np.asarray(found.footprints, dtype=object), c0 + x, r0 + y)
    return anchor, geoms, np.asarray(found.scores, dtype=np.float64), truncated, found.n_below_score


def block_cores(height: int, width: int, block: int) -> list[tuple[int, int]]:
    """Top-left ``(row, col)`` of the post-processing cores of a ``height x width`` map, in the order they are run."""
    return [(r, c) for r in range(0, height, block) for c in range(0, width, block)]


#: The smallest core the default block is cut to so that each post-processing thread has one (pixels a side).
MIN_AUTO_BLOCK = 512


def block_size(height: int, width: int, threads: int, block: int | None = None) -> int:
    """The post-processing core size of a ``height x width`` map: ``block`` when given; else
    :data:`DEFAULT_BLOCK`, halved while the map has fewer cores than ``threads`` (not below
    :data:`MIN_AUTO_BLOCK`), so that a scene of one or two default blocks keeps every thread busy.

    The buildings do not depend on the core size (each is decided by the one core that holds its anchor),
    only the order in which blocks yield them; smaller cores also hold less in memory.
    """
    if block is not None:
        return block
    size = DEFAULT_BLOCK
    while size // 2 >= MIN_AUTO_BLOCK and len(block_cores(height, width, size)) < threads:
        size //= 2
    return size


def block_threads() -> int:
    """Post-processing threads for a scene's blocks when nothing else runs: the cores, at most 4 (each holds
    one block with its margin, about 0.3 GB at the default 2,048 px)."""
    return max(1, min(4, os.cpu_count() or 1))


def postprocess_blocks(prob_path: str | Path, *, method: str = DEFAULT_METHOD, settings: PostprocessSettings | None = None,
                       block: int | None = None, margin: int = DEFAULT_MARGIN, max_group: int = DEFAULT_MAX_GROUP,
                       progress: bool = True, cores: Sequence[tuple[int, int]] | None = None, threads: int = 1
                       ) -> Iterator[_BlockOutput]:
    """Post-process a stitched probability GeoTIFF block by block; yields each block's buildings.

    Every building of the scene is yielded exactly once (see the module docstring), as a
    polygon in scene pixel coordinates with its score. ``cores`` (top-left ``(row, col)`` of
    cores, from :func:`block_cores`) limits the run to those cores: the ownership rule needs
    nothing from the other cores, so disjoint subsets can run in separate processes
    (:mod:`rooftrace.scenes.distributed`) and together give exactly the buildings of one run.
    ``threads``: blocks post-processed at once (each thread reads the GeoTIFF through its own handle;
    OpenCV, scikit-image and numpy release the GIL); blocks are yielded in the same order, with the same
    buildings, for any number (:func:`block_threads` is the default of ``predict-scene`` and the API).
    ``block``: the core size (``None``: :func:`block_size`'s, from the map's size and ``threads``; with ``cores``
    given, :data:`DEFAULT_BLOCK`).
    """
    if block is not None and block < 64:
        raise RooftraceError(f"--block {block}: must be at least 64 pixels")
    if margin < 2 * _EDGE:
        raise RooftraceError(f"--margin {margin}: must be at least {2 * _EDGE} pixels")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise RooftraceError(f"post-processing threads {threads!r}: must be 1 or more")
    ready_allocator()  # each block's arrays reuse the last one's memory (rooftrace.core.allocator)
    s = settings or PostprocessSettings()
    threshold = s.footprint_threshold
    path = Path(prob_path)
    first = _ProbReader(path)
    H, W = first.height, first.width
    # Cores given were cut by their caller (``block_cores``): a block not given is then the default, never resized.
    block = block_size(H, W, threads, block) if cores is None else (block or DEFAULT_BLOCK)
    readers = [first]
    local = threading.local()
    local.reader = first if threads == 1 else None
    lock = threading.Lock()

    def reader() -> _ProbReader:
        if getattr(local, "reader", None) is None:  # one handle per thread: a GDAL dataset is not shared across threads
            local.reader = _ProbReader(path)
            with lock:
                readers.append(local.reader)
        return local.reader

    def one(core: tuple[int, int]) -> _BlockOutput | None:
        return _block(reader(), core, H, W, block, margin, threshold, method, settings, max_group)

    cores = block_cores(H, W, block) if cores is None else [(int(r), int(c)) for r, c in cores]
    bar = tqdm(total=len(cores), desc="post-process", unit="block", disable=not progress, dynamic_ncols=True)
    try:
        # a block per thread, in raster order: memory is about ``threads + 1`` blocks
        for out in ordered_map(one, cores, threads, name="rooftrace-blocks"):
            bar.update(1)
            if out is not None:
                yield out
    finally:
        bar.close()
        for r in readers:
            r.close()


def _block(reader: _ProbReader, core: tuple[int, int], H: int, W: int, block: int, margin: int, threshold: float, method: str,
           settings: PostprocessSettings | None, max_group: int) -> _BlockOutput | None:
    """One core's buildings (``None``: none): the core with its margin post-processed, each group kept by the
    block that owns its anchor, and groups cut by the margin grown until whole (:func:`_resolve_group`)."""
    cr0, cc0 = core
    cr1, cc1 = min(H, cr0 + block), min(W, cc0 + block)
    r0, c0, r1, c1 = max(0, cr0 - margin), max(0, cc0 - margin), min(H, cr1 + margin), min(W, cc1 + margin)
    p = reader.read(r0, c0, r1, c1)
    if not (p[0] >= threshold).any():
        return None
    labels, stats = _groups(p, threshold)
    n = len(stats) - 1
    arow, acol = _anchors(labels, stats)
    owned = (arow + r0 >= cr0) & (arow + r0 < cr1) & (acol + c0 >= cc0) & (acol + c0 < cc1)
    cut = _cut_any(stats[1:], r0, c0, r1, c1, H, W)
    take = np.zeros(n + 1, dtype=bool)
    take[1:] = owned & ~cut
    geoms_out, scores_out, truncated, below = [], [], 0, 0
    if take.any():
        found = postprocess(p, method=method, settings=settings)
        geoms = np.asarray(found.footprints, dtype=object)
        keep = take[_group_of(geoms, labels)]
        geoms_out.append(_shift(geoms[keep], c0, r0))
        scores_out.append(np.asarray(found.scores, dtype=np.float64)[keep])
        if found.n_below_score:  # the dropped regions of the groups this block keeps whole, by a pixel of each
            at = found.below_score_at
            below = int(take[labels[at[:, 0], at[:, 1]]].sum())
    seen: set[tuple[int, int]] = set()
    for g in np.flatnonzero(owned & cut) + 1:  # groups that may go on beyond the window
        anchor, geoms, scores, cut_off, group_below = _resolve_group(
            reader, (int(arow[g - 1] + r0), int(acol[g - 1] + c0)), (r0, c0, r1, c1), threshold, method,
            settings, max(max_group, r1 - r0, c1 - c0))
        if not (cr0 <= anchor[0] < cr1 and cc0 <= anchor[1] < cc1) or anchor in seen:
            continue  # another block owns it, or it was one of this block's groups already
        seen.add(anchor)
        truncated += int(cut_off)
        below += group_below
        geoms_out.append(geoms)
        scores_out.append(scores)
    if not geoms_out and not below:
        return None
    if not geoms_out:
        return _BlockOutput(np.zeros(0, dtype=object), np.zeros(0, dtype=np.float64), truncated, below)
    return _BlockOutput(np.concatenate(geoms_out), np.concatenate(scores_out), truncated, below)
