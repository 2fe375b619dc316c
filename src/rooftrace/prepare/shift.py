"""Labels that do not sit on the imagery: estimating the shift between a split's labels and its images.

OpenStreetMap buildings are traced over whatever imagery the mapper had, so over another image they are
often a few metres off, the same way over a whole area. A model's footprint probabilities show where the
buildings are in *this* image; cross-correlating them with the rasterised labels, block by block, shows how
far the labels are displaced. The estimate is the peak of the normalised cross-correlation (Pearson's r
of probabilities and label mask, summed over a block's chips, at every whole-pixel offset within
``max_px``), refined to a fraction of a pixel by a parabola through the peak and its neighbours.

Coordinates: offsets are in **pixels of the images** (column ``dx`` to the right, row ``dy`` down): the
labels drawn at ``(x + dx, y + dy)`` match the imagery at ``(x, y)`` best, i.e. the labels lie ``(dx, dy)``
pixels off. :func:`shift_metres` turns that into metres east and north on a north-up image; the
correction is the opposite translation (``prepare_chips(label_shift=...)`` applies it in map coordinates).

An estimate is *clear* when the correlation at its peak is real (r >= :data:`MIN_PEAK_R`), clearly
better than at no shift (by :data:`MIN_GAIN`), and not at the edge of the search window; only clear
estimates of at least half a pixel are worth correcting.

:func:`unlabelled_buildings` flags blocks whose labels look incomplete: many confident predicted
buildings that touch no label.

This module does not import torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

#: The smallest correlation (Pearson's r at the peak) that counts as the labels matching the imagery at all.
MIN_PEAK_R = 0.2
#: How much better than no shift the peak must be (in r) for a shift to be clear.
MIN_GAIN = 0.02


@dataclass
class ShiftEstimate:
    """The labels' offset from the imagery in one block (or one chip), in image pixels.

    Attributes:
        dx, dy: Pixels right and down that the labels lie off the imagery (sub-pixel).
        r_peak: Pearson's r of probabilities and labels at the peak; ``r_zero`` at no shift.
        on_edge: The peak lies on the edge of the search window (the shift may be larger).
        chips: How many chips (with labels) went into the estimate.
    """

    dx: float
    dy: float
    r_peak: float
    r_zero: float
    on_edge: bool
    chips: int

    @property
    def clear(self) -> bool:
        """Real correlation, clearly better than no shift, not at the window's edge."""
        return (self.chips > 0 and self.r_peak >= MIN_PEAK_R and self.r_peak - self.r_zero >= MIN_GAIN
                and not self.on_edge)

    @property
    def size(self) -> float:
        """The length of the offset in pixels."""
        return math.hypot(self.dx, self.dy)

    def to_json(self, gsd: float | None = None) -> dict:
        out = {"dx_px": round(self.dx, 3), "dy_px": round(self.dy, 3), "r_peak": round(self.r_peak, 4),
               "r_zero": round(self.r_zero, 4), "on_edge": self.on_edge, "chips": self.chips, "clear": self.clear}
        if gsd:
            east, north = shift_metres(self.dx, self.dy, gsd)
            out.update(east_m=round(east, 3), north_m=round(north, 3))
        return out


class _Sums:
    """Running sums over chips of what Pearson's r at every offset needs."""

    def __init__(self, m: int):
        size = 2 * m + 1
        self.m = m
        self.n = np.zeros((size, size))
        self.sp = np.zeros((size, size))
        self.sq = np.zeros((size, size))
        self.spp = np.zeros((size, size))
        self.sqq = np.zeros((size, size))
        self.spq = np.zeros((size, size))
        self.chips = 0

    def add(self, prob: np.ndarray, mask: np.ndarray, valid: np.ndarray | None = None) -> None:
        from scipy.signal import fftconvolve

        p = np.asarray(prob, dtype=np.float64)
        q = np.asarray(mask, dtype=np.float64)
        v = np.ones_like(p) if valid is None else np.asarray(valid, dtype=np.float64)
        p, q = p * v, q * v
        m = self.m
        h, w = p.shape

        def corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            # c[dy, dx] = sum_{y, x} a[y, x] * b[y + dy, x + dx] for |dy|, |dx| <= m
            full = fftconvolve(b, a[::-1, ::-1], mode="full")
            cy, cx = h - 1, w - 1
            return full[cy - m:cy + m + 1, cx - m:cx + m + 1]

        self.n += corr(v, v)
        self.sp += corr(p, v)
        self.sq += corr(v, q)
        self.spp += corr(p * p, v)
        self.sqq += corr(v, q * q)
        self.spq += corr(p, q)
        self.chips += 1

    def r(self) -> np.ndarray:
        n = np.maximum(self.n, 1.0)
        cov = self.spq - self.sp * self.sq / n
        vp = np.maximum(self.spp - self.sp ** 2 / n, 0.0)
        vq = np.maximum(self.sqq - self.sq ** 2 / n, 0.0)
        den = np.sqrt(vp * vq)
        r = np.where(den > 0, cov / np.where(den > 0, den, 1.0), 0.0)
        return np.where(self.n >= 16, r, -1.0)


def _parabola(a: float, b: float, c: float) -> float:
    """The vertex of a parabola through (-1, a), (0, b), (1, c), in [-0.5, 0.5]."""
    den = a - 2 * b + c
    if den >= 0:
        return 0.0
    return float(np.clip(0.5 * (a - c) / den, -0.5, 0.5))


def estimate_shift(pairs: Iterable[tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray]],
                   max_px: int = 20) -> ShiftEstimate:
    """The labels' offset in pixels from ``(probabilities, label mask[, valid])`` pairs of the same place.

    Args:
        pairs: Each chip's footprint probabilities (0-1) and rasterised labels (0/1), the same shape, in
            image pixels; an optional third array marks the pixels to use (nodata left out).
        max_px: Offsets up to this many pixels each way are searched.
    """
    if max_px < 1:
        raise ValueError("max_px must be at least 1")
    sums = _Sums(max_px)
    for pair in pairs:
        prob, mask = pair[0], pair[1]
        if not np.asarray(mask).any():
            continue
        sums.add(prob, mask, pair[2] if len(pair) > 2 else None)
    if not sums.chips:
        return ShiftEstimate(0.0, 0.0, 0.0, 0.0, False, 0)
    r = sums.r()
    iy, ix = np.unravel_index(int(np.argmax(r)), r.shape)
    m = max_px
    on_edge = iy in (0, 2 * m) or ix in (0, 2 * m)
    dy, dx = float(iy - m), float(ix - m)
    if not on_edge:
        dy += _parabola(r[iy - 1, ix], r[iy, ix], r[iy + 1, ix])
        dx += _parabola(r[iy, ix - 1], r[iy, ix], r[iy, ix + 1])
    return ShiftEstimate(dx, dy, float(r[iy, ix]), float(r[m, m]), bool(on_edge), sums.chips)


def shift_metres(dx: float, dy: float, gsd: float) -> tuple[float, float]:
    """A pixel offset (right, down) on a north-up image of ``gsd`` metres a pixel -> metres (east, north)."""
    return dx * gsd, -dy * gsd


@dataclass
class AreaShift:
    """Per-block shifts and what to do about them.

    Attributes:
        blocks: Block -> its estimate.
        gsd: Metres a pixel of the images the estimates are in.
        correction: Metres (east, north) to move the labels by, or ``None`` when no clear, consistent shift
            of at least ``min_px`` was found.
        reason: One line saying why (not) corrected.
    """

    blocks: dict[str, ShiftEstimate]
    gsd: float
    correction: tuple[float, float] | None
    reason: str
    whole: ShiftEstimate | None = None

    def to_json(self) -> dict:
        return {"gsd": self.gsd, "correction_m": list(self.correction) if self.correction else None, "reason": self.reason,
                "all_blocks": self.whole.to_json(self.gsd) if self.whole else None,
                "blocks": {b: e.to_json(self.gsd) for b, e in sorted(self.blocks.items())}}

    def summary(self) -> str:
        lines = [f"label shift: {self.reason}"]
        for b, e in sorted(self.blocks.items()):
            east, north = shift_metres(e.dx, e.dy, self.gsd)
            lines.append(f"  block {b}: {east:+.2f} m east, {north:+.2f} m north ({e.dx:+.2f}, {e.dy:+.2f} px; r {e.r_peak:.3f}, "
                         f"{e.r_zero:.3f} at 0; {e.chips} chips){'' if e.clear else ' unclear'}")
        return "\n".join(lines)


def area_shift(by_block: dict[str, Sequence[tuple[np.ndarray, ...]]], gsd: float, max_px: int = 20,
               min_px: float = 0.5, agree_m: float = 1.0) -> AreaShift:
    """Estimate each block's shift and decide on one correction for the area.

    The labels of one area are usually off the imagery the same way everywhere (they were traced over
    another image), and a shift estimated over every block together is steadier than any one block's. So
    the area is corrected by the estimate over all blocks when it is clear and at least ``min_px``
    pixels, and the clear blocks agree with it within ``agree_m`` metres; blocks that disagree are reported
    and nothing is corrected.
    """
    blocks = {b: estimate_shift(pairs, max_px) for b, pairs in by_block.items()}
    whole = estimate_shift([p for pairs in by_block.values() for p in pairs], max_px)
    clear = {b: e for b, e in blocks.items() if e.clear}
    east, north = shift_metres(whole.dx, whole.dy, gsd)
    if not whole.clear:
        why = ("no labelled chip" if not whole.chips else
               f"no clear shift (r {whole.r_peak:.3f} at {east:+.2f} m east, {north:+.2f} m north; {whole.r_zero:.3f} at 0"
               + ("; the peak is at the edge of the search" if whole.on_edge else "") + ")")
        return AreaShift(blocks, gsd, None, why + "; labels left as they are", whole)
    far = [b for b, e in clear.items() if math.dist(shift_metres(e.dx, e.dy, gsd), (east, north)) > agree_m]
    if far:
        return AreaShift(blocks, gsd, None, f"blocks disagree ({', '.join(far)} differ by more than {agree_m:g} m from the area's "
                         f"{east:+.2f} m east, {north:+.2f} m north); labels left as they are", whole)
    if whole.size < min_px:
        return AreaShift(blocks, gsd, None, f"{east:+.2f} m east, {north:+.2f} m north ({whole.size:.2f} px, r {whole.r_peak:.3f}): "
                         f"under {min_px:g} px, labels left as they are", whole)
    return AreaShift(blocks, gsd, (-east, -north),
                     f"labels lie {east:+.2f} m east, {north:+.2f} m north of the imagery ({whole.dx:+.2f}, {whole.dy:+.2f} px; "
                     f"r {whole.r_peak:.3f} against {whole.r_zero:.3f} unshifted; {len(clear)} of {len(blocks)} blocks clear): "
                     f"corrected by {-east:+.2f} m east, {-north:+.2f} m north", whole)


@dataclass
class Completeness:
    """How many confident predicted buildings touch no label, per block.

    Attributes:
        blocks: Block -> ``(confident predicted buildings, of them touching no label, labelled buildings)``.
        flagged: Blocks whose labels look incomplete.
    """

    blocks: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    flagged: list[str] = field(default_factory=list)
    share: float = 0.3
    min_count: int = 3

    def to_json(self) -> dict:
        return {"rule": f"at least {self.min_count} confident predicted buildings touching no label, and at least "
                        f"{self.share:.0%} of the confident ones",
                "blocks": {b: {"confident": c, "unlabelled": u, "labelled": n} for b, (c, u, n) in sorted(self.blocks.items())},
                "flagged": self.flagged}

    def summary(self) -> str:
        if not self.flagged:
            return f"labels look complete: no block has {self.min_count}+ confident buildings without a label"
        parts = [f"{b} ({self.blocks[b][1]} of {self.blocks[b][0]} confident buildings have no label)" for b in self.flagged]
        return f"labels look incomplete in {len(self.flagged)} of {len(self.blocks)} blocks: " + "; ".join(parts)


def unlabelled_buildings(by_block: dict[str, Sequence[tuple[np.ndarray, np.ndarray]]], confident: float = 0.8,
                         min_area_px: int = 64, share: float = 0.3, min_count: int = 3) -> Completeness:
    """Flag blocks whose labels look incomplete: connected regions where the model is confident (probability
    >= ``confident``, at least ``min_area_px`` pixels) that touch no labelled pixel, when there are at
    least ``min_count`` of them and they are at least ``share`` of the confident regions."""
    from scipy import ndimage

    out = Completeness(share=share, min_count=min_count)
    for b, pairs in by_block.items():
        conf = unl = lab = 0
        for prob, mask, *_ in pairs:
            regions, n = ndimage.label(np.asarray(prob) >= confident)
            if n:
                sizes = ndimage.sum_labels(np.ones_like(regions), regions, index=np.arange(1, n + 1))
                touched = ndimage.maximum(np.asarray(mask) > 0, regions, index=np.arange(1, n + 1))
                big = sizes >= min_area_px
                conf += int(big.sum())
                unl += int((big & ~np.asarray(touched, dtype=bool)).sum())
            lab += int(ndimage.label(np.asarray(mask) > 0)[1])
        out.blocks[b] = (conf, unl, lab)
        if unl >= min_count and unl >= share * max(conf, 1):
            out.flagged.append(b)
    return out


__all__ = ["AreaShift", "Completeness", "ShiftEstimate", "area_shift", "estimate_shift", "shift_metres", "unlabelled_buildings"]
