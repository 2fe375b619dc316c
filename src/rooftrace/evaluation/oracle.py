"""The post-processing oracle: what post-processing alone loses, given a perfect model.

For every image of a labelled split, the training targets of its ground truth
(:func:`rooftrace.prepare.targets.make_targets`) are taken as if a perfect network had output them, as
float32 probabilities of exactly 0 and 1: footprint, boundary and contact for three-channel methods
(``watershed``), the footprint alone for ``seed`` (the original recipe reads nothing else). They go
through the post-processing, into a BEGC2024 submission CSV, and the CSV is scored against the same
ground truth with the competition's metric.

Any object F1 below 1 is then the post-processing's own loss (plus what the targets cannot say, such
as a building too small to cover a pixel centre): a ceiling no model can beat with that
post-processing. ``blur`` softens the perfect output with a Gaussian (sigma in px, per channel),
the way a network's probabilities are soft at edges and bleed across one-pixel gaps: a cheap stress
test of how gracefully a post-processing degrades before any model exists. It is also the objective ``rooftrace tune`` can search settings on before any model
exists, and the regression test that keeps the default post-processing honest.

The score is computed on the CSV *as written and read back*, not on the polygons in memory, so it
includes everything the submission format does to them (exterior rings only, 2-decimal rounding,
a building in several parts becoming several rows).

This module does not import torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage

from rooftrace.core.errors import RooftraceError
from rooftrace.evaluation.metrics import MATCHING_MODES, Score, evaluate_labels
from rooftrace.instances.postprocess import (
    DEFAULT_METHOD,
    METHOD_CHANNELS,
    POSTPROCESSORS,
    PostprocessSettings,
    postprocess,
)
from rooftrace.labels.begc import read_begc_csv, write_begc_csv
from rooftrace.labels.formats import read_labels
from rooftrace.labels.records import ImageLabels, LabelSet
from rooftrace.prepare.targets import TargetSettings, make_targets

SUBMISSION_NAME = "submission.csv"


def perfect_probabilities(
    img: ImageLabels, channels: int = 3, targets: TargetSettings = TargetSettings(), blur: float = 0.0
) -> np.ndarray:
    """What a perfect model would output for one image: its targets as float32 0/1 probabilities.

    Args:
        img: Ground-truth labels of one image; its ``width`` and ``height`` must be known.
        channels: 3 (footprint, boundary, contact) or 1 (footprint).
        targets: Band widths of the boundary and contact channels.
        blur: Gaussian sigma in px applied to each channel (0 = exact 0/1 targets).

    Returns:
        ``(channels, height, width)`` float32.

    Raises:
        RooftraceError: The image's size is unknown.
    """
    if not img.width or not img.height:
        raise RooftraceError(f"image {img.key!r}: its size is unknown; read the labels with their images (COCO with image files)")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if blur < 0:
        raise ValueError(f"blur must be >= 0 px, got {blur}")
    t = make_targets(img.footprints, (int(img.height), int(img.width)), targets)
    stack = (t.mask[None] if channels == 1 else t.stack()).astype(np.float32)
    if blur > 0:
        stack = np.stack([ndimage.gaussian_filter(c, blur, mode="nearest") for c in stack])
        np.clip(stack, 0.0, 1.0, out=stack)
    return stack


def oracle_predictions(
    gt: LabelSet,
    postprocess_method: str = DEFAULT_METHOD,
    settings: PostprocessSettings | None = None,
    channels: int | None = None,
    targets: TargetSettings = TargetSettings(),
    blur: float = 0.0,
) -> LabelSet:
    """Post-process the perfect outputs of every ground-truth image, in memory.

    Args:
        gt: Ground truth in pixel coordinates, with image sizes.
        postprocess_method: A key of :data:`rooftrace.instances.postprocess.POSTPROCESSORS`.
        settings: Post-processing settings (defaults when ``None``).
        channels: Channels of the perfect output; default the method's own
            (:data:`~rooftrace.instances.postprocess.METHOD_CHANNELS`: 3 for ``watershed``, 1 for ``seed``).
            ``watershed`` with ``channels=1`` measures a footprint-only model.
        targets: Band widths of the boundary and contact channels.
        blur: Gaussian sigma in px applied to the perfect output (see the module docstring).

    Returns:
        A LabelSet with the ground truth's keys, sizes, file names and sources, and one score per
        footprint.

    Raises:
        RooftraceError: Unknown method, labels in map coordinates, or an image of unknown size.
    """
    if postprocess_method not in POSTPROCESSORS:
        raise RooftraceError(f"unknown post-processing {postprocess_method!r}; choose one of {', '.join(POSTPROCESSORS)}")
    if gt.crs is not None:
        raise RooftraceError(f"the ground truth is in map coordinates ({gt.crs}); read it with its raster to get pixels")
    n_ch = channels if channels is not None else METHOD_CHANNELS.get(postprocess_method, 3)
    pred = LabelSet(format="memory")
    for img in gt:
        probs = perfect_probabilities(img, n_ch, targets, blur)
        found = postprocess(probs, postprocess_method, settings)
        pred.images[img.key] = found.to_image_labels(
            img.key, width=img.width, height=img.height, file_name=img.file_name, source=img.source
        )
    return pred


def score_modes(gt: LabelSet, pred: LabelSet, matchings: Sequence[str] = ("one-to-one", "any"), iou: float = 0.5) -> dict[str, Score]:
    """Score one set of predictions in several matching modes (the first with pixel figures).

    ``one-to-one`` is the competition's rule; ``any`` is the lenient reading under which a
    building split in two by post-processing still counts as found, so the gap between the two
    shows how much of a loss is over-splitting.
    """
    for m in matchings:
        if m not in MATCHING_MODES:
            raise ValueError(f"unknown matching mode {m!r}; choose from {', '.join(MATCHING_MODES)}")
    return {m: evaluate_labels(gt, pred, iou=iou, matching=m, pixel=(n == 0)) for n, m in enumerate(matchings)}


def run_oracle(
    gt_path: str | Path,
    out_dir: str | Path,
    postprocess: str = DEFAULT_METHOD,
    settings: PostprocessSettings | None = None,
    force: bool = False,
    channels: int | None = None,
    matching: str = "one-to-one",
    targets: TargetSettings = TargetSettings(),
    blur: float = 0.0,
) -> tuple[Score, Path]:
    """Measure what post-processing loses on a labelled split, and write the submission it makes.

    Reads the ground truth, makes the perfect outputs of every image, post-processes them, writes
    ``out_dir/submission.csv`` (BEGC2024 format, one row for every ground-truth image, written
    atomically) and scores that file, read back, against the ground truth.

    Args:
        gt_path: Ground truth in any format :func:`rooftrace.labels.formats.read_labels` reads, in pixel
            coordinates with image sizes (typically a split folder or its COCO JSON).
        out_dir: Folder for ``submission.csv``; created if needed.
        postprocess: A key of :data:`rooftrace.instances.postprocess.POSTPROCESSORS`.
        settings: Post-processing settings (defaults when ``None``).
        force: Overwrite an existing ``submission.csv``.
        channels: Channels of the perfect output (default: the method's; see
            :func:`oracle_predictions`).
        matching: Matching mode of the returned score (default the competition's one-to-one).
        targets: Band widths of the boundary and contact channels.
        blur: Gaussian sigma in px applied to the perfect output (0: exact targets).

    Returns:
        ``(score, path of submission.csv)``.

    Raises:
        RooftraceError: ``submission.csv`` exists and ``force`` is false (checked before any
            work), unreadable labels, labels in map coordinates, or an unknown method.
    """
    out = Path(out_dir) / SUBMISSION_NAME
    if out.exists() and not force:
        raise RooftraceError(f"{out}: already exists; pass --force to overwrite it")
    if matching not in MATCHING_MODES:
        raise RooftraceError(f"unknown matching mode {matching!r}; choose from {', '.join(MATCHING_MODES)}")
    gt = read_labels(gt_path)
    pred = oracle_predictions(gt, postprocess, settings, channels=channels, targets=targets, blur=blur)
    path = write_begc_csv(pred, out, image_keys=list(gt.images), force=force)
    written = read_begc_csv(path)
    score = evaluate_labels(gt, written, matching=matching)
    return score, path


__all__ = ["SUBMISSION_NAME", "oracle_predictions", "perfect_probabilities", "run_oracle", "score_modes"]
