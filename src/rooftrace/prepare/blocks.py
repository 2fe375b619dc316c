"""Splitting chips into train, val and test by blocks of neighbouring chips (never chip by chip), so that
no place is on two sides of the split: blocks of web-map tiles at a coarser zoom, or squares in Web
Mercator, assigned to splits by a seeded search that meets the asked shares."""

from __future__ import annotations

import math

import mercantile
import numpy as np
import shapely

from rooftrace.core.errors import RooftraceError
from rooftrace.imagery.georef import (
    WEB_MERCATOR,
)
from rooftrace.prepare.chip_labels import to_crs
from rooftrace.prepare.chip_sources import SPLITS, Chip, chip_polygon


def centres_3857(chips: list[Chip]) -> tuple[np.ndarray, float]:
    """Chip centres in Web Mercator and the median chip width there."""
    centres, widths = [], []
    for c in chips:
        outline = to_crs(np.array([chip_polygon(c)], dtype=object), c.georef.crs, WEB_MERCATOR)[0]
        centres.append(shapely.get_coordinates(outline.centroid)[0])
        x0, _, x1, _ = outline.bounds
        widths.append(x1 - x0)
    return np.asarray(centres), float(np.median(widths))


def _needed_blocks(shares: dict[str, float]) -> int:
    held = [v for k, v in shares.items() if k != "train" and v > 0]
    if not held:
        return 1
    return max(len(held) + 1, round(1.0 / min(held)))


def make_blocks(chips: list[Chip], shares: dict[str, float], block: int | None, block_zoom: int | None) -> str:
    """Set each chip's ``block``; returns how the blocks were made.

    Tile-named chips (all of them): the ancestor tile at ``block_zoom``, else at the coarsest zoom
    minus log2(``block``), else 4 x 4, 2 x 2 or 1 x 1 chips of the coarsest zoom, the largest that
    gives enough blocks for the shares. Others: a grid of ``block`` x ``block`` chips over the chip
    centres in Web Mercator (chosen the same way when ``block`` is not given).
    """
    need = _needed_blocks(shares)
    if block is not None and (block < 1 or block & (block - 1)):
        raise RooftraceError(f"--block {block}: must be a power of two (1, 2, 4, 8, ...): blocks are N x N chips")
    if all(c.tile is not None for c in chips):
        zmin = min(c.tile.z for c in chips)
        if block_zoom is not None:
            if not 0 <= block_zoom <= zmin:
                raise RooftraceError(f"--block-zoom {block_zoom}: must be between 0 and the chips' coarsest zoom ({zmin})")
            candidates = [block_zoom]
        elif block is not None:
            candidates = [max(0, zmin - int(math.log2(block)))]
        else:
            candidates = [max(0, zmin - 2), max(0, zmin - 1), zmin]
        for bz in candidates:
            ids = [c.tile if c.tile.z == bz else mercantile.parent(c.tile, zoom=bz) for c in chips]
            if len(set(ids)) >= need:
                break
        for c, t in zip(chips, ids):
            c.block = f"{t.z}/{t.x}/{t.y}"
        return f"web-map tiles at zoom {bz} ({2 ** (zmin - bz)} x {2 ** (zmin - bz)} chips of zoom {zmin})"
    if block_zoom is not None:
        raise RooftraceError("--block-zoom needs chips named on the web-map tile grid; use --block N (N x N chips)")
    centres, width = centres_3857(chips)
    for n in ([block] if block is not None else [4, 2, 1]):
        cell = n * width
        ids = [f"grid{n}:{int(math.floor(x / cell))}_{int(math.floor(y / cell))}" for x, y in centres]
        if len(set(ids)) >= need:
            break
    for c, b in zip(chips, ids):
        c.block = b
    return f"grid of {n} x {n} chips (Web Mercator)"


def assign_blocks(sizes: dict[str, int], shares: dict[str, float], seed: int = 0, trials: int = 256,
                  buildings: dict[str, int] | None = None) -> dict[str, str]:
    """Blocks (name -> chip count) to splits, so that each split's chip count is near its share, and with
    ``buildings`` (name -> buildings in the block) its count of buildings too.

    Seeded random orders, each filled greedily (a block goes where it brings the counts nearest their
    targets, each count measured as a share of its total); the best of ``trials`` wins, and an order that
    leaves a requested split without a block (or, balancing buildings, without a building) loses to any
    that does not (when there are enough blocks).
    """
    names = sorted(sizes)
    splits = [s for s in SPLITS if shares.get(s, 0) > 0]
    # One row per block: its chips and, when balanced too, its buildings, each as a share of all of them.
    counts = np.array([[sizes[b], *(() if buildings is None else (buildings.get(b, 0),))] for b in names], dtype=float)
    if buildings is not None:
        counts /= np.maximum(counts.sum(axis=0), 1.0)
    target = {s: shares[s] * counts.sum(axis=0) for s in splits}
    rng = np.random.default_rng(seed)
    best, best_score = None, None
    for _ in range(trials if len(splits) > 1 else 1):
        got = {s: np.zeros(counts.shape[1]) for s in splits}
        nblocks = dict.fromkeys(splits, 0)
        out = {}
        for i in rng.permutation(len(names)):
            n = counts[i]
            s = min(splits, key=lambda s: (float(np.abs(got[s] + n - target[s]).sum() - np.abs(got[s] - target[s]).sum()),
                                           nblocks[s], -shares[s]))
            got[s] = got[s] + n
            nblocks[s] += 1
            out[names[i]] = s
        empty = sum(nblocks[s] == 0 for s in splits) if len(names) >= len(splits) else 0
        if buildings is not None and sum(v > 0 for v in buildings.values()) >= len(splits):
            empty += sum(got[s][1] == 0 for s in splits)
        score = (empty, float(sum(np.abs(got[s] - target[s]).sum() for s in splits)))
        if best_score is None or score < best_score:
            best, best_score = out, score
    return best
