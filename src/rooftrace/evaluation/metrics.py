"""Scoring building footprints as BEGC2024 does: object-wise F1 at an IoU threshold, plus pixel figures.

BEGC2024 ranks submissions by object-wise F1: a predicted footprint is a true positive when its
intersection over union (IoU) with a ground-truth footprint reaches 0.5. F1 is computed per image
and averaged over images (``Score.f1``, the competition's number); the pooled F1 from total counts
(``Score.f1_pooled``) is reported beside it because the mean over images weighs a tile with one
building as much as a tile with three hundred.

Matching modes (:data:`MATCHING_MODES`) say which (ground truth, prediction) pairs may count:

``one-to-one`` (default)
    Each ground truth and each prediction is matched at most once, and the number of matches is
    *maximised* (maximum bipartite matching over the pairs with IoU >= threshold). Greedy
    matching can find fewer matches when footprints overlap; among maximum matchings the one with
    the largest total IoU is reported.
``any``
    The lenient reading of the leaderboard, where near-duplicate predictions were not punished:
    precision is the share of predictions that reach the threshold with *some* ground truth,
    recall the share of ground truths reached by *some* prediction, F1 their harmonic mean.
    Counts in this mode: ``tp`` = ground truths reached by at least one prediction, ``fn`` =
    ground truths reached by none, ``fp`` = predictions that reach no ground truth. So
    ``recall = tp / (tp + fn)`` but ``precision = (n_pred - fp) / n_pred``, which is not
    ``tp / (tp + fp)`` when several predictions reach one ground truth. Per-image and pooled
    figures use these same definitions.
``spacenet``
    SpaceNet's published scoring: ground truths with area < 20 px² and proposals with area
    <= 20 px² are left out; each proposal, in file order, takes the unmatched ground truth of
    highest IoU and is a true positive when that IoU is *strictly* above the threshold (ties go
    to the earlier ground truth). The area filters are in pixels: when the labels are in map
    coordinates (``LabelSet.crs`` set) they are skipped, and ``Score.notes`` says so.

Comparisons ``IoU >= threshold`` allow 1e-9 of floating-point slack, so that identical shapes
(whose computed IoU may be 1 - 1e-16) match at threshold 1; SpaceNet's strict ``>`` has none.

Zero denominators: an image with no ground truth and no prediction scores F1 = precision =
recall = 1 (there was nothing to find and nothing was found); otherwise a figure whose denominator
is zero is 0, so an image with only predictions or only ground truth scores F1 = 0. The same rule
holds for pooled and pixel figures.

Pixel figures (``Score.pixel``) count pixels, by pixel centre, over all images: a pixel is a true
positive when it lies in some ground truth and some prediction. Images are rasterised at the
ground truth's size; see :func:`evaluate_labels`.

Candidate pairs come from a spatial index (:class:`shapely.STRtree`) and IoUs from vectorised
shapely calls, so 1,000 tiles with hundreds of buildings each score in seconds.

This module does not import torch.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import shapely
import shapely.affinity
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import connected_components, maximum_bipartite_matching

from rooftrace.core.errors import RooftraceError
from rooftrace.core.memory import check_pixels
from rooftrace.core.threads import ordered_map
from rooftrace.geometry.shapes import Footprint, footprints_bounds
from rooftrace.labels.records import ImageKey, ImageLabels, LabelSet
from rooftrace.prepare.targets import rasterize_footprints

MATCHING_MODES = ("one-to-one", "any", "spacenet")

#: SpaceNet leaves out ground truths with area below this (px²) ...
SPACENET_MIN_GT_AREA = 20.0
#: ... and proposals with area not above this (px²).
SPACENET_MAX_IGNORED_PROPOSAL_AREA = 20.0

_TOL = 1e-9
#: Components of the candidate graph larger than this (rows x columns) are matched for
#: cardinality only (Hopcroft-Karp), without the IoU tie-break, to bound memory.
_DENSE_LIMIT = 250_000
_NO_SOURCE = "unknown"


@dataclass
class ImageScore:
    """Object figures of one image.

    Attributes:
        image_id: The image key, as in the label sets (int or str).
        tp, fp, fn: Counts; see the module docstring for their meaning in ``any`` mode.
        f1, precision, recall: Figures of this image (1.0 when it has nothing to find and
            nothing was found).
        source: Where the image comes from (the ground truth's ``source``), if known.
        n_gt, n_pred: Footprints scored (after SpaceNet's area filters in ``spacenet`` mode);
            default ``tp + fn`` and ``tp + fp``.
    """

    image_id: ImageKey
    tp: int
    fp: int
    fn: int
    f1: float
    precision: float
    recall: float
    source: str | None = None
    n_gt: int | None = None
    n_pred: int | None = None

    def __post_init__(self) -> None:
        if self.n_gt is None:
            self.n_gt = self.tp + self.fn
        if self.n_pred is None:
            self.n_pred = self.tp + self.fp

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict; ``image_id`` keeps its type (int or str)."""
        return asdict(self)


@dataclass
class PixelScore:
    """Pixel figures from counts accumulated over all images (not averaged per image)."""

    tp: int
    fp: int
    fn: int
    iou: float
    f1: float
    precision: float
    recall: float

    @classmethod
    def from_counts(cls, tp: int, fp: int, fn: int) -> PixelScore:
        """Figures from pixel counts; all 1.0 when there are no building pixels at all."""
        empty = tp + fp + fn == 0
        return cls(
            tp=tp, fp=fp, fn=fn,
            iou=1.0 if empty else tp / (tp + fp + fn),
            f1=1.0 if empty else 2 * tp / (2 * tp + fp + fn),
            precision=_rate(tp, tp + fp, vacuous=fn == 0),
            recall=_rate(tp, tp + fn, vacuous=fp == 0),
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict of all fields."""
        return asdict(self)


@dataclass
class Score:
    """Result of :func:`evaluate_labels`, for all images or for the images of one source.

    Attributes:
        f1: F1 per image averaged over images (BEGC2024's number).
        f1_pooled: F1 from the precision and recall of all objects pooled.
        precision, recall: Pooled over all objects.
        tp, fp, fn: Totals.
        per_image: One entry per image found in either label set (ground truth order, then
            images only in the predictions).
        per_source: The same figures per ``source``, when ground-truth images carry one (images
            without a source are under ``"unknown"``); empty otherwise and in the parts themselves.
        pixel: Pixel figures, or ``None`` when skipped (map coordinates, or not asked for).
        iou_threshold: The IoU threshold used.
        matching: The matching mode used.
        notes: What the user should know about how the figures were made (skipped parts).
    """

    f1: float
    f1_pooled: float
    precision: float
    recall: float
    tp: int
    fp: int
    fn: int
    per_image: list[ImageScore]
    per_source: dict[str, Score]
    pixel: PixelScore | None
    iou_threshold: float
    matching: str
    notes: list[str] = field(default_factory=list)

    @property
    def n_images(self) -> int:
        return len(self.per_image)

    def to_json(self, per_image: bool = True) -> dict[str, Any]:
        """A JSON-serialisable dict of the figures; parts in ``per_source`` omit ``per_image``."""
        out: dict[str, Any] = {
            "matching": self.matching, "iou": self.iou_threshold, "n_images": self.n_images,
            "f1": self.f1, "f1_pooled": self.f1_pooled, "precision": self.precision,
            "recall": self.recall, "tp": self.tp, "fp": self.fp, "fn": self.fn,
            "pixel": self.pixel.to_json() if self.pixel is not None else None,
            "per_source": {k: v.to_json(per_image=False) for k, v in self.per_source.items()},
            "notes": list(self.notes),
        }
        if per_image:
            out["per_image"] = [s.to_json() for s in self.per_image]
        return out

    def summary(self) -> str:
        """A few lines for the terminal: headline figures, a table per source, the worst images."""
        op = ">" if self.matching == "spacenet" else ">="
        lines = [
            f"object F1 (IoU {op} {self.iou_threshold:g}, {self.matching} matching): "
            f"{self.f1:.4f} mean over {self.n_images} images, {self.f1_pooled:.4f} pooled",
            f"  precision {self.precision:.4f}  recall {self.recall:.4f}  "
            f"TP {self.tp}  FP {self.fp}  FN {self.fn}",
        ]
        if self.pixel is not None:
            p = self.pixel
            lines.append(f"pixel IoU {p.iou:.4f}  F1 {p.f1:.4f}  precision {p.precision:.4f}  recall {p.recall:.4f}")
        if len(self.per_source) > 1:
            width = max(len("source"), *(len(k) for k in self.per_source))
            lines.append(f"  {'source':<{width}}  images  F1 mean  F1 pooled  precision  recall  pixel IoU")
            for name, s in self.per_source.items():
                pix = f"{s.pixel.iou:9.4f}" if s.pixel is not None else f"{'-':>9}"
                lines.append(
                    f"  {name:<{width}}  {s.n_images:6d}  {s.f1:7.4f}  {s.f1_pooled:9.4f}  "
                    f"{s.precision:9.4f}  {s.recall:6.4f}  {pix}"
                )
        worst = sorted((s for s in self.per_image if s.f1 < 1.0), key=lambda s: (s.f1, -(s.fp + s.fn)))[:5]
        if worst:
            lines.append("worst images by F1:")
            lines.extend(f"  {s.image_id!s:<20} F1 {s.f1:.4f}  TP {s.tp}  FP {s.fp}  FN {s.fn}" for s in worst)
        elif self.per_image:
            lines.append("every image scores F1 = 1")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Matching


@dataclass
class _Match:
    """Internal result of matching one image: counts, scored sizes and the matched pairs."""

    tp: int
    fp: int
    fn: int
    n_gt: int
    n_pred: int
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray]  # gt index, pred index, IoU

    @property
    def matched_pred(self) -> int:
        """Predictions that count towards precision (``n_pred - fp`` in every mode)."""
        return self.n_pred - self.fp


def _check_args(iou: float, matching: str) -> None:
    if matching not in MATCHING_MODES:
        raise ValueError(f"unknown matching mode {matching!r}: use one of {', '.join(MATCHING_MODES)}")
    if not isinstance(iou, numbers.Real) or isinstance(iou, bool) or not (0.0 < float(iou) <= 1.0):
        raise ValueError(f"IoU threshold must be a number in (0, 1], got {iou!r}")


def _as_array(geoms: Sequence[Footprint]) -> np.ndarray:
    arr = np.empty(len(geoms), dtype=object)
    arr[:] = list(geoms)
    return arr


def _pair_ious(gt: np.ndarray, pred: np.ndarray, gt_area: np.ndarray, pred_area: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(gt index, pred index, IoU)`` of every intersecting pair, sorted by gt then pred index.

    The STRtree finds the pairs whose geometries intersect; only those are intersected, in one
    vectorised call, so the cost follows the number of touching pairs, not ``len(gt) * len(pred)``.
    """
    empty = np.empty(0, dtype=np.intp)
    if len(gt) == 0 or len(pred) == 0:
        return empty, empty, np.empty(0)
    pj, gi = shapely.STRtree(gt).query(pred, predicate="intersects")
    if gi.size == 0:
        return empty, empty, np.empty(0)
    order = np.lexsort((pj, gi))
    gi, pj = gi[order], pj[order]
    try:
        inter = shapely.area(shapely.intersection(gt[gi], pred[pj]))
    except shapely.errors.GEOSException:  # invalid input given straight to match_footprints
        inter = shapely.area(shapely.intersection(shapely.make_valid(gt[gi]), shapely.make_valid(pred[pj])))
    union = gt_area[gi] + pred_area[pj] - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return gi, pj, iou


def _max_matching(gi: np.ndarray, pj: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Indices into the edge list of a maximum-cardinality matching; ties broken by total IoU.

    Edges whose two ends have no other edge are matched as they are (almost all of them in real
    data). The rest is split into connected components, each solved as an assignment problem
    with weight ``big + IoU`` where ``big`` exceeds any possible number of matches, so that more
    matches always beat higher IoU.
    """
    if gi.size == 0:
        return np.empty(0, dtype=np.intp)
    deg_g = np.bincount(gi)
    deg_p = np.bincount(pj)
    trivial = (deg_g[gi] == 1) & (deg_p[pj] == 1)
    chosen = [np.flatnonzero(trivial)]
    rest = np.flatnonzero(~trivial)
    if rest.size:
        gu, g_loc = np.unique(gi[rest], return_inverse=True)
        pu, p_loc = np.unique(pj[rest], return_inverse=True)
        ng, npr = len(gu), len(pu)
        adj = coo_matrix((np.ones(rest.size), (g_loc, ng + p_loc)), shape=(ng + npr, ng + npr))
        _, labels = connected_components(adj, directed=False)
        edge_comp = labels[g_loc]
        order = np.argsort(edge_comp, kind="stable")
        bounds = np.flatnonzero(np.diff(edge_comp[order])) + 1
        for edges in np.split(order, bounds):
            chosen.append(rest[edges[_solve_component(g_loc[edges], p_loc[edges], w[rest[edges]])]])
    return np.sort(np.concatenate(chosen))


def _solve_component(g: np.ndarray, p: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Edge positions of a maximum matching of one connected component of the candidate graph."""
    rows, r = np.unique(g, return_inverse=True)
    cols, c = np.unique(p, return_inverse=True)
    if len(rows) * len(cols) > _DENSE_LIMIT:
        graph = csr_matrix((np.ones(len(r)), (r, c)), shape=(len(rows), len(cols)))
        col_of_row = maximum_bipartite_matching(graph, perm_type="column")
        matched = np.flatnonzero(col_of_row >= 0)
        # Find each matched (row, col) in the edge list without a dense rows x cols table.
        codes = r.astype(np.int64) * len(cols) + c
        order = np.argsort(codes, kind="stable")
        wanted = matched.astype(np.int64) * len(cols) + col_of_row[matched]
        return order[np.searchsorted(codes[order], wanted)]
    edge_at = np.full((len(rows), len(cols)), -1, dtype=np.intp)
    big = min(len(rows), len(cols)) + 1.0
    weight = np.zeros((len(rows), len(cols)))
    weight[r, c] = big + w
    edge_at[r, c] = np.arange(len(r))
    ri, ci = linear_sum_assignment(weight, maximize=True)
    keep = weight[ri, ci] > 0
    return edge_at[ri[keep], ci[keep]]


def _match(gt: np.ndarray, pred: np.ndarray, iou: float, matching: str, area_filter: bool = True) -> _Match:
    """Match one image's footprints (object arrays) under ``matching``; see the module docstring."""
    gt_area = shapely.area(gt) if len(gt) else np.empty(0)
    pred_area = shapely.area(pred) if len(pred) else np.empty(0)
    if matching == "spacenet":
        gt_keep = np.flatnonzero(gt_area >= SPACENET_MIN_GT_AREA) if area_filter else np.arange(len(gt))
        pred_keep = np.flatnonzero(pred_area > SPACENET_MAX_IGNORED_PROPOSAL_AREA) if area_filter else np.arange(len(pred))
        gi, pj, v = _pair_ious(gt[gt_keep], pred[pred_keep], gt_area[gt_keep], pred_area[pred_keep])
        ok = v > iou
        gi, pj, v = gi[ok], pj[ok], v[ok]
        # Proposals in file order; each takes its best still-unmatched ground truth.
        order = np.lexsort((gi, -v, pj))
        used = np.zeros(len(gt_keep), dtype=bool)
        done_pred = -1
        picked: list[int] = []
        for e, g, p in zip(order.tolist(), gi[order].tolist(), pj[order].tolist()):
            if p == done_pred or used[g]:
                continue
            used[g] = True
            done_pred = p
            picked.append(e)
        sel = np.asarray(picked, dtype=np.intp)
        tp = len(sel)
        pairs = (gt_keep[gi[sel]], pred_keep[pj[sel]], v[sel])
        return _Match(tp, len(pred_keep) - tp, len(gt_keep) - tp, len(gt_keep), len(pred_keep), pairs)
    gi, pj, v = _pair_ious(gt, pred, gt_area, pred_area)
    ok = v >= iou - _TOL
    gi, pj, v = gi[ok], pj[ok], v[ok]
    if matching == "any":
        tp = len(np.unique(gi))
        fp = len(pred) - len(np.unique(pj))
        return _Match(tp, fp, len(gt) - tp, len(gt), len(pred), (gi, pj, v))
    sel = _max_matching(gi, pj, v)
    tp = len(sel)
    return _Match(tp, len(pred) - tp, len(gt) - tp, len(gt), len(pred), (gi[sel], pj[sel], v[sel]))


def match_footprints(
    gt: Sequence[Footprint], pred: Sequence[Footprint], iou: float = 0.5, matching: str = "one-to-one"
) -> tuple[int, int, int, list[tuple[int, int, float]]]:
    """Match the footprints of one image and count true positives, false positives and misses.

    Args:
        gt: Ground-truth footprints (pixel coordinates in ``spacenet`` mode, whose area filters
            are in px²).
        pred: Predicted footprints, in file order (which matters in ``spacenet`` mode).
        iou: IoU threshold in (0, 1].
        matching: One of :data:`MATCHING_MODES`; see the module docstring.

    Returns:
        ``(tp, fp, fn, pairs)`` with ``pairs`` the matched ``(gt index, pred index, IoU)``, indices
        into the inputs, sorted by gt index. In ``any`` mode ``pairs`` holds every pair that
        reaches the threshold, so an index may appear more than once.

    Raises:
        ValueError: Unknown matching mode or threshold outside (0, 1].
    """
    _check_args(iou, matching)
    m = _match(_as_array(gt), _as_array(pred), float(iou), matching)
    gi, pj, v = m.pairs
    order = np.lexsort((pj, gi))
    pairs = [(int(a), int(b), float(c)) for a, b, c in zip(gi[order], pj[order], v[order])]
    return m.tp, m.fp, m.fn, pairs


# ---------------------------------------------------------------------------------------------
# Figures


def _rate(num: int, den: int, vacuous: bool) -> float:
    """``num / den``; for ``den == 0``, 1.0 when the other side is empty too (``vacuous``), else 0."""
    if den == 0:
        return 1.0 if vacuous else 0.0
    return num / den


def _figures(tp: int, matched_pred: int, n_gt: int, n_pred: int) -> tuple[float, float, float]:
    """``(f1, precision, recall)`` with precision ``matched_pred / n_pred`` and recall ``tp / n_gt``.

    F1 is computed from integers in one division (``2at / (a n_gt + t n_pred)``, the harmonic mean
    of the two), so in one-to-one mode it equals ``2tp / (2tp + fp + fn)`` to the last bit.
    """
    if n_gt == 0 and n_pred == 0:
        return 1.0, 1.0, 1.0
    precision = _rate(matched_pred, n_pred, vacuous=n_gt == 0)
    recall = _rate(tp, n_gt, vacuous=n_pred == 0)
    num = 2 * matched_pred * tp
    f1 = num / (matched_pred * n_gt + tp * n_pred) if num else 0.0
    return f1, precision, recall


def _pixel_counts(g: ImageLabels | None, p: ImageLabels | None) -> tuple[int, int, int]:
    """Pixel ``(tp, fp, fn)`` of one image, rasterised by pixel centre.

    The size is the ground truth's (else the prediction's) ``height x width``; when neither is
    known, the bounds of both sets' footprints from the origin, so nothing is cut off.
    """
    gfp = g.footprints if g is not None else []
    pfp = p.footprints if p is not None else []
    if not gfp and not pfp:
        return 0, 0, 0
    shape: tuple[int, int] | None = None
    for labels in (g, p):
        if labels is not None and labels.width and labels.height:
            shape = (int(labels.height), int(labels.width))
            break
    if shape is None:
        b = footprints_bounds([*gfp, *pfp])
        assert b is not None
        shape = (max(0, math.ceil(b[3])), max(0, math.ceil(b[2])))
    # Only pixels under a footprint count, so only the footprints' bounding window is rasterised (whole
    # pixels, clipped to the image): memory follows the buildings, not the size a header declares.
    b = footprints_bounds([*gfp, *pfp])
    if b is None:
        return 0, 0, 0
    x0, y0 = max(0, math.floor(b[0])), max(0, math.floor(b[1]))
    x1, y1 = min(shape[1], math.ceil(b[2])), min(shape[0], math.ceil(b[3]))
    if x1 <= x0 or y1 <= y0:
        return 0, 0, 0
    check_pixels(f"image {(g or p).key}", x1 - x0, y1 - y0, 4, "pixel-metric window")  # type: ignore[union-attr]
    window = (y1 - y0, x1 - x0)
    if (x0, y0) != (0, 0):
        gfp = [shapely.affinity.translate(f, -x0, -y0) for f in gfp]
        pfp = [shapely.affinity.translate(f, -x0, -y0) for f in pfp]
    gm = rasterize_footprints(gfp, window).astype(bool)
    pm = rasterize_footprints(pfp, window).astype(bool)
    tp = int(np.count_nonzero(gm & pm))
    return tp, int(np.count_nonzero(pm)) - tp, int(np.count_nonzero(gm)) - tp


def _aggregate(
    images: list[ImageScore], matched_pred: list[int], pixels: list[tuple[int, int, int]] | None,
    iou: float, matching: str, notes: list[str],
) -> Score:
    """Pool per-image figures into a :class:`Score` (no ``per_source``)."""
    tp = sum(s.tp for s in images)
    fp = sum(s.fp for s in images)
    fn = sum(s.fn for s in images)
    n_gt = sum(s.n_gt or 0 for s in images)
    n_pred = sum(s.n_pred or 0 for s in images)
    f1_pooled, precision, recall = _figures(tp, sum(matched_pred), n_gt, n_pred)
    f1 = math.fsum(s.f1 for s in images) / len(images) if images else 1.0
    pixel = None
    if pixels is not None:
        pixel = PixelScore.from_counts(*(int(sum(c[i] for c in pixels)) for i in range(3)))
    return Score(
        f1=f1, f1_pooled=f1_pooled, precision=precision, recall=recall, tp=tp, fp=fp, fn=fn,
        per_image=images, per_source={}, pixel=pixel, iou_threshold=iou, matching=matching, notes=notes,
    )


def _coordinate_frame(gt: LabelSet, pred: LabelSet) -> str | None:
    """The sets' common CRS (``None`` for pixel coordinates); refuse sets in different frames.

    Scoring pixel coordinates against map coordinates would silently give zero, so it is an error.
    """
    if gt.crs is None and pred.crs is None:
        return None
    if gt.crs is None or pred.crs is None:
        which = "ground truth" if gt.crs is not None else "predictions"
        raise RooftraceError(
            f"the {which} are in map coordinates ({gt.crs or pred.crs}) but the others are in pixel "
            "coordinates: read both with their rasters (pixel coordinates), or both without"
        )
    if gt.crs != pred.crs:
        try:
            import pyproj

            same = pyproj.CRS.from_user_input(gt.crs) == pyproj.CRS.from_user_input(pred.crs)
        except Exception:  # pyproj raises CRSError and friends on strings it cannot read
            same = False
        if not same:
            raise RooftraceError(f"ground truth is in {gt.crs} but predictions are in {pred.crs}: reproject one of them first")
    return gt.crs


def evaluate_labels(gt: LabelSet, pred: LabelSet, iou: float = 0.5, matching: str = "one-to-one", pixel: bool = True,
                    threads: int = 1) -> Score:
    """Score predictions against ground truth, image by image, as BEGC2024 does.

    Every image in either set is scored: an image only in the predictions has all its footprints
    as false positives, one only in the ground truth all as misses. Images are matched by key, so
    the keys must agree (see :func:`rooftrace.labels.formats.align_keys` for COCO results).

    Pixel figures rasterise both sets by pixel centre at the ground-truth image's
    ``height x width`` (the prediction's size if the image is not in the ground truth; the bounds
    of both sets' footprints from the origin when no size is known) and add up tp/fp/fn pixels
    over all images. They are skipped (``None``) when the labels are in map coordinates
    (``crs`` set), where there is no pixel grid; in ``spacenet`` mode the px² area filters are then
    skipped too. Both are said in ``Score.notes``.

    Args:
        gt: Ground truth; its images' ``source`` gives the per-part breakdown.
        pred: Predictions.
        iou: IoU threshold in (0, 1].
        matching: One of :data:`MATCHING_MODES`; see the module docstring.
        pixel: Whether to compute pixel figures (the costliest part).
        threads: Images matched at once (shapely's intersections release the GIL); the score is the same for any
            number.

    Raises:
        ValueError: Unknown matching mode or threshold outside (0, 1].
        RooftraceError: One set is in pixel coordinates and the other in map coordinates, or
            they are in different CRSs.
    """
    _check_args(iou, matching)
    iou = float(iou)
    crs = _coordinate_frame(gt, pred)
    notes: list[str] = []
    if crs is not None:
        if matching == "spacenet":
            notes.append(f"SpaceNet area filters (px²) skipped: the labels are in map coordinates ({crs})")
        if pixel:
            notes.append(f"pixel figures skipped: the labels are in map coordinates ({crs})")
    if len(gt) and len(pred) and not any(k in gt.images for k in pred.images):
        notes.append("no image key is in both sets: check that prediction image ids match the ground truth's keys")
    elif len(gt) and len(pred):
        def _some(keys: list) -> str:
            return ", ".join(map(repr, keys[:5])) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")

        no_row = [k for k in gt.images if k not in pred.images]
        extra = [k for k in pred.images if k not in gt.images]
        if no_row:
            notes.append(f"{len(no_row)} ground-truth image(s) have no predictions (no row): {_some(no_row)}; "
                         "scored with every building missed")
        if extra:
            notes.append(f"{len(extra)} predicted image(s) are not in the ground truth: {_some(extra)}; "
                         "scored with every prediction a false positive")
    do_pixel = pixel and crs is None
    keys = list(gt.images) + [k for k in pred.images if k not in gt.images]
    images: list[ImageScore] = []
    matched_pred: list[int] = []
    pixels: list[tuple[int, int, int]] = []

    def one(key: ImageKey) -> tuple[ImageLabels | None, ImageLabels | None, _Match, tuple[int, int, int] | None]:
        g, p = gt.images.get(key), pred.images.get(key)
        m = _match(
            _as_array(g.footprints if g is not None else []), _as_array(p.footprints if p is not None else []),
            iou, matching, area_filter=crs is None,
        )
        return g, p, m, (_pixel_counts(g, p) if do_pixel else None)

    for key, (g, p, m, px) in zip(keys, ordered_map(one, keys, threads, name="rooftrace-evaluate")):
        f1, precision, recall = _figures(m.tp, m.matched_pred, m.n_gt, m.n_pred)
        source = g.source if g is not None else (p.source if p is not None else None)
        images.append(ImageScore(key, m.tp, m.fp, m.fn, f1, precision, recall, source, m.n_gt, m.n_pred))
        matched_pred.append(m.matched_pred)
        if px is not None:
            pixels.append(px)
    score = _aggregate(images, matched_pred, pixels if do_pixel else None, iou, matching, notes)
    if any(s.source is not None for s in images):
        groups: dict[str, list[int]] = {}
        for n, s in enumerate(images):
            groups.setdefault(s.source if s.source is not None else _NO_SOURCE, []).append(n)
        score.per_source = {
            name: _aggregate(
                [images[i] for i in idx], [matched_pred[i] for i in idx],
                [pixels[i] for i in idx] if do_pixel else None, iou, matching, [],
            )
            for name, idx in groups.items()
        }
    return score
