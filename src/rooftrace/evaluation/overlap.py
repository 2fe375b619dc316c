"""Do labels and predictions lie on the same ground? Scoring two sets that nowhere overlap gives F1 0 that
looks like a bad model, when the cause is a wrong CRS, a wrong zone or the wrong scene. ``rooftrace evaluate``
refuses such input, as ``rooftrace report`` does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import shapely

from rooftrace.core.errors import RooftraceError
from rooftrace.labels.records import LabelSet


def _extent(geoms: list) -> np.ndarray | None:
    if not geoms:
        return None
    b = shapely.bounds(np.asarray(geoms, dtype=object))
    return np.array([np.nanmin(b[:, 0]), np.nanmin(b[:, 1]), np.nanmax(b[:, 2]), np.nanmax(b[:, 3])])


def check_overlap(gt: LabelSet, pred: LabelSet, gt_name: str | Path, pred_name: str | Path) -> None:
    """Raise when the labels and the predictions share no ground: in no image that has both do the extents
    of its labels and of its predictions meet. Sets where either side is empty pass (an image without
    buildings, a model that found none are real results).

    Raises:
        RooftraceError: Naming both files, their counts and extents, and what to check (CRS, zone, scene).
    """
    both = [k for k in gt.images if k in pred.images and gt[k].footprints and pred[k].footprints]
    if not both:
        return
    boxes = []
    for k in both:
        g, p = _extent(list(gt[k].footprints)), _extent(list(pred[k].footprints))
        if g is None or p is None:
            return
        if g[0] <= p[2] and p[0] <= g[2] and g[1] <= p[3] and p[1] <= g[3]:
            return  # this image's labels and predictions share ground
        boxes.append((g, p))
    n_gt = sum(len(gt[k].footprints) for k in both)
    n_pred = sum(len(pred[k].footprints) for k in both)
    g, p = boxes[0]
    unit = f" ({gt.crs})" if gt.crs else " (pixels)"
    raise RooftraceError(
        f"{pred_name}: none of its {n_pred} buildings lies on or near any of the {n_gt} labels of {gt_name} "
        f"(labels span x {g[0]:.6g}..{g[2]:.6g}, y {g[1]:.6g}..{g[3]:.6g}; predictions x {p[0]:.6g}..{p[2]:.6g}, "
        f"y {p[1]:.6g}..{p[3]:.6g}{unit}), so every score would be 0; are they of the same place, and in the CRS their "
        "files declare (else give it with --gt-crs or --pred-crs)?")
