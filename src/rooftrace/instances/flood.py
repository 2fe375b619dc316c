"""The marker-controlled flood of :mod:`rooftrace.instances.postprocess`, on the pieces a flood decides.

Inside the mask components that hold two or more seeds, a piece of the mask outside the seeds that touches
seeds of one id only is that id's whatever the flood's order; only the pieces two or more seeds compete for
(contested) are packed into one small mosaic (:func:`pack_boxes`) with the seed pixels they touch and flooded in
one scikit-image watershed call (:func:`flood_contested`), in an order that depends on the pixels alone
(:func:`flood_keys`): by value, seeds of equal value in raster order. The same regions as flooding the whole
components (tested against a plain heap flood of the whole tile). Also the 4-connected labelling every step of
post-processing uses (:func:`label4`). This module does not import torch.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
from scipy import ndimage

try:  # OpenCV: faster connected components
    import cv2 as _cv2
except ImportError:  # pragma: no cover - scipy does the labelling without it
    _cv2 = None

#: 4-connectivity: pixels that share an edge. Every labelling here uses it, so that each region is
#: one polygon when traced on pixel edges (8-connected pixels touch at a corner only, which a
#: polygon cannot express as one ring).
FOUR = ndimage.generate_binary_structure(2, 1)


def label4(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected components as an int32 map (ids in raster order of first pixel) and their number.

    OpenCV's labelling is about 3.5 times faster than scipy's on a 512 x 512 tile and gives the
    same ids; scipy is the fallback when OpenCV is not installed.
    """
    m = np.ascontiguousarray(mask, dtype=bool)
    if _cv2 is not None and m.ndim == 2 and m.size:
        n, lab = _cv2.connectedComponents(m.view(np.uint8), connectivity=4, ltype=_cv2.CV_32S)
        return lab, int(n) - 1
    lab, n = ndimage.label(m, structure=FOUR)
    return lab.astype(np.int32, copy=False), int(n)


def boxes(k: np.ndarray, rows: np.ndarray, cols: np.ndarray, n: int) -> tuple[np.ndarray, ...]:
    """Bounding boxes of ``n`` pixel groups: ``(row min, row max, col min, col max)``, each of length ``n``,
    of the pixels ``(rows, cols)`` that belong to group ``k``."""
    top = np.iinfo(np.int64).max
    r0, c0 = np.full(n, top), np.full(n, top)
    r1, c1 = np.full(n, -1), np.full(n, -1)
    np.minimum.at(r0, k, rows)
    np.minimum.at(c0, k, cols)
    np.maximum.at(r1, k, rows)
    np.maximum.at(c1, k, cols)
    return r0, r1, c0, c1


def shelf_pack(hs: list[int], ws: list[int], order: list[int], width: int) -> tuple[list[int], list[int], int]:
    """Shelf-pack boxes of ``hs`` x ``ws`` (gaps included) in ``order`` into a mosaic ``width`` wide: each box's top row
    and left column, and the mosaic's height."""
    py, px = [0] * len(hs), [0] * len(hs)
    x = y = shelf = 0
    for i in order:
        if x + ws[i] > width:
            x, y, shelf = 0, y + shelf, 0
        py[i], px[i] = y, x
        x += ws[i]
        shelf = max(shelf, hs[i])
    return py, px, y + shelf


def pack_boxes(heights: np.ndarray, widths: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Shelf-pack boxes of ``heights`` x ``widths`` pixels (with a one-pixel gap) into a small mosaic, tallest first:
    each box's top row and left column, and the mosaic's size. The mosaic is the smallest of a few widths (``width``,
    the widest box, and 1 to 2 times the side of a square of the boxes' area): a flood's cost grows with its image's
    pixels, masked or not (on the shipped model's outputs the mosaics are 29 % smaller than at ``width`` alone)."""
    hs, ws = (np.asarray(heights) + 1).tolist(), (np.asarray(widths) + 1).tolist()
    order = sorted(range(len(hs)), key=lambda i: -hs[i])
    widest = max(ws)
    side = math.sqrt(sum(h * w for h, w in zip(hs, ws)))
    best: tuple[int, list[int], list[int], int, int] | None = None
    for wd in sorted({max(widest, width), widest, *(max(widest, int(side * f)) for f in (1.0, 1.25, 1.5, 2.0))}):
        py, px, hm = shelf_pack(hs, ws, order, wd)
        if best is None or hm * wd < best[0]:
            best = (hm * wd, py, px, hm, wd)
    _, py, px, hm, wd = best  # type: ignore[misc]
    return np.asarray(py, dtype=np.int64), np.asarray(px, dtype=np.int64), hm, wd


def float32_order(values: np.ndarray) -> np.ndarray:
    """int64 keys in the order of float32 ``values`` (finite), equal where the values are equal: the bits of each
    value as an unsigned integer, the negative ones reflected below the positive ones (IEEE 754 orders
    non-negative floats as their bits). ``-0.0`` is made ``0.0`` first, so the two zeros share a key."""
    bits = (values.astype(np.float32) + np.float32(0.0)).view(np.uint32).astype(np.int64)
    return np.where(bits >= 2**31, 2**32 - 1 - bits, bits + 2**31)


def flood_keys(values: np.ndarray, seed: np.ndarray, order: np.ndarray) -> np.ndarray:
    """The landscape a flood takes its pixels in, with every tie between seeds broken: float64 keys.

    scikit-image's watershed takes pixels off a heap by value, then by age (every seed pixel 0, each
    later push one more); a pixel pushed from another is given the greater of its own value and that
    pixel's, and takes its id. Seeds of equal value therefore tie, and which the heap takes first
    depends on everything else in it, so on how the image is laid out (a crop, a mosaic, a block of
    a scene). These keys remove that: they order ``(value, 0, order)`` for a seed pixel and
    ``(value, 1)`` for any other. The values' order is kept; at equal value seeds come before
    other pixels, as their age 0 put them; seeds of equal value come in ``order`` (a pixel's raster
    position in the tile); other pixels of equal value share a key, so their age still decides. The
    flood is then a function of the pixels alone, whatever the layout.

    Args:
        values: The landscape at the pixels to flood (1-D, any real dtype, finite).
        seed: Which of them are seed (marker) pixels.
        order: Each pixel's raster position in the tile (read for seed pixels only).
    """
    values = np.asarray(values)
    n_seeds = int(np.count_nonzero(seed))
    rank = None
    if values.dtype == np.float32 and 2**32 * (n_seeds + 1) < 2**53:
        rank = float32_order(values)  # the values' order, ties kept, without a sort
    if rank is None:
        _, rank = np.unique(values, return_inverse=True)  # dense: at most the pixels' number
    tie = np.full(rank.shape, n_seeds, dtype=np.int64)  # other pixels: after every seed of their value
    by_order = np.argsort(order[seed], kind="stable")
    dense = np.empty(n_seeds, dtype=np.int64)
    dense[by_order] = np.arange(n_seeds)  # seeds: their raster order, dense (the inverse of the sorting permutation)
    tie[seed] = dense
    # One integer key, exact in float64: below 2**32 * (n + 1) with n seed pixels from float32 values' bits (fewer
    # than 2 million seed pixels), else at most n * (n + 1) for n pixels, so below 2**53 for any flood under
    # 94 million pixels (a tile, or a scene's block, is a few million at most).
    if (int(rank.max(initial=0)) + 1) * (n_seeds + 1) >= 2**53:
        raise ValueError(f"a flood of {rank.size} pixels is beyond what exact float64 keys can order")
    return (rank.astype(np.int64) * (n_seeds + 1) + tie).astype(np.float64)


def flood_contested(
    markers: np.ndarray, inside: np.ndarray, surface: Callable[[np.ndarray, np.ndarray], np.ndarray], layers: np.ndarray
) -> np.ndarray:
    """The watershed of the markers over the pixels ``inside`` (flat indices of ``markers``' raster, ascending:
    the components with two or more markers), flooding only the pieces whose id a flood decides.

    Free pixels (inside, not a marker) fall into free pieces (4-connected). The flood takes pixels
    in the order of :func:`flood_keys` (by value, at equal value markers first, in raster order;
    a pixel reached at no less than the pixel it was reached from; then in the order they were
    reached) and gives every free pixel the id of the neighbour it was reached from first. A free
    piece that touches markers of one id only gets that id whatever the order: nothing else reaches
    it. A piece that touches two or more ids (contested) depends only on its own pixels and the
    markers it touches: every path into it runs from one of those markers through the piece, and
    the keys order its pixels without regard to anything else on the heap. So flooding the
    contested pieces and the markers they touch alone, packed into one small mosaic, gives the same
    ids as flooding the whole components.

    Returns:
        The id of each pixel of ``inside`` (its marker's, or the one the flood gave it).
    """
    h, w = markers.shape
    w2 = w + 2
    at_pad = inside + (inside // w) * 2 + (w2 + 1)  # in a raster with a border of background: no bounds checks
    ids_in = markers.ravel()[inside]
    mk = np.zeros((h + 2) * w2, dtype=np.int32)
    mk[at_pad] = ids_in
    is_free = ids_in == 0
    fi = at_pad[is_free]
    if len(fi) == 0:
        return ids_in
    free = np.zeros((h + 2, w2), dtype=bool)
    free.ravel()[fi] = True
    piece, n_piece = label4(free)
    pf = piece.ravel()[fi]
    nb = np.concatenate([fi - w2, fi - 1, fi + 1, fi + w2])
    ids = mk[nb]
    touch = ids > 0
    nb, ids, pieces = nb[touch], ids[touch], np.tile(pf, 4)[touch]
    lo = np.full(n_piece + 1, np.iinfo(np.int32).max, dtype=np.int32)
    hi = np.zeros(n_piece + 1, dtype=np.int32)
    np.minimum.at(lo, pieces, ids)
    np.maximum.at(hi, pieces, ids)
    contested = lo != hi
    contested[0] = False
    in_contest = contested[pf]
    free_ids = np.where(in_contest, 0, lo[pf])
    if in_contest.any():
        sel = contested[pieces]
        nb, ids, pieces = nb[sel], ids[sel], pieces[sel]
        # The contested pieces and the markers each touches, each piece in a box of its own (a marker
        # that touches two pieces is copied into both), packed into one small mosaic.
        fc = fi[in_contest]
        who = np.concatenate([pf[in_contest], pieces])  # the piece of each pixel to copy
        src = np.concatenate([fc, nb])
        rr, cc = np.divmod(src, w2)
        cut = np.flatnonzero(contested)
        rank = np.zeros(n_piece + 1, dtype=np.int64)
        rank[cut] = np.arange(len(cut))
        k = rank[who]
        y0, y1, x0, x1 = boxes(k, rr, cc, len(cut))
        py, px, hm, wm = pack_boxes(y1 - y0 + 1, x1 - x0 + 1, w2)
        at = (rr - y0[k] + py[k]) * wm + (cc - x0[k] + px[k])
        # The landscape at those pixels only (surfaces are pixel by pixel), as flood keys.
        ru, cu = rr - 1, cc - 1  # unpadded coordinates
        pts = layers[:, ru, cu][:, None, :]
        values = surface(pts, np.ones((1, len(src)), dtype=bool)).ravel()
        seed = np.zeros(len(src), dtype=bool)
        seed[len(fc):] = True
        land = np.zeros(hm * wm, dtype=np.float64)
        land[at] = flood_keys(values, seed, src)
        from skimage.segmentation import watershed

        m_m = np.zeros(hm * wm, dtype=bool)
        m_m[at] = True
        k_m = np.zeros(hm * wm, dtype=np.int32)
        k_m[at[len(fc):]] = ids
        flooded = watershed(land.reshape(hm, wm), markers=k_m.reshape(hm, wm), mask=m_m.reshape(hm, wm), connectivity=1)
        free_ids[in_contest] = flooded.ravel()[at[: len(fc)]]
    ids_in[is_free] = free_ids
    return ids_in


__all__ = ["FOUR", "boxes", "flood_contested", "flood_keys", "float32_order", "label4", "pack_boxes", "shelf_pack"]
