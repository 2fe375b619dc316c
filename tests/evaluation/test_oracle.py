"""Tests of rooftrace.evaluation.oracle: perfect model outputs through post-processing, scored as BEGC2024 does.

Small cases are built in memory with answers known by hand; the real figures come from the sample
pack's labels (read from ``ROOFTRACE_SAMPLE_DIR``, never copied into the repository).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from shapely.geometry import box

from rooftrace.core.errors import RooftraceError
from rooftrace.evaluation.oracle import (
    SUBMISSION_NAME,
    oracle_predictions,
    perfect_probabilities,
    run_oracle,
    score_modes,
)
from rooftrace.instances.postprocess import PostprocessSettings
from rooftrace.labels.begc import read_begc_csv
from rooftrace.labels.formats import read_labels
from rooftrace.labels.records import ImageLabels, LabelSet
from rooftrace.prepare.targets import make_targets


def make_set(images: dict, size: tuple[int, int] = (64, 64)) -> LabelSet:
    ls = LabelSet()
    for key, fps in images.items():
        ls.images[key] = ImageLabels(key=key, footprints=list(fps), width=size[0], height=size[1])
    return ls


# --- in memory ---------------------------------------------------------------------------------


def test_perfect_probabilities_are_the_targets() -> None:
    img = ImageLabels(key=1, footprints=[box(2, 2, 12, 12), box(12, 4, 20, 10)], width=30, height=20)
    p3 = perfect_probabilities(img)
    assert p3.shape == (3, 20, 30) and p3.dtype == np.float32
    assert np.array_equal(p3, make_targets(img.footprints, (20, 30)).stack())
    p1 = perfect_probabilities(img, channels=1)
    assert p1.shape == (1, 20, 30) and np.array_equal(p1[0], p3[0])
    assert set(np.unique(p3).tolist()) == {0.0, 1.0}


def test_perfect_probabilities_need_the_image_size() -> None:
    with pytest.raises(RooftraceError, match="size is unknown"):
        perfect_probabilities(ImageLabels(key=1, footprints=[box(0, 0, 4, 4)]))


def test_touching_rows_of_houses_watershed_finds_all_seed_finds_few() -> None:
    """Row houses sharing walls, and a pair 1 px apart: what the original recipe loses."""
    row = [box(4 + 12 * i, 4, 16 + 12 * i, 20) for i in range(4)]  # four 12 x 16 houses wall to wall
    pair = [box(4, 30, 20, 46), box(21, 30, 37, 46)]  # 1 px apart
    gt = make_set({1: row + pair, 2: [], 3: [box(40, 40, 60, 60)]})
    ws = oracle_predictions(gt)
    assert [len(ws[k].footprints) for k in (1, 2, 3)] == [6, 0, 1]
    scores = score_modes(gt, ws)
    assert scores["one-to-one"].f1 == 1.0 and scores["any"].f1 == 1.0
    assert scores["one-to-one"].pixel is not None and scores["one-to-one"].pixel.iou == 1.0
    seed = score_modes(gt, oracle_predictions(gt, "seed"))["one-to-one"]
    # Image 1: one blob for the row, one for the pair (the close fuses them) -> no match at all.
    assert (seed.per_image[0].tp, seed.per_image[0].fp, seed.per_image[0].fn) == (0, 2, 6)
    # Image 3: the lone 20 x 20 house shrinks to 19 x 19 (IoU 0.9025): still found.
    assert (seed.per_image[2].tp, seed.per_image[2].fp, seed.per_image[2].fn) == (1, 0, 0)
    assert seed.f1 == pytest.approx((0 + 1 + 1) / 3)


def test_footprint_only_model_merges_touching_houses() -> None:
    row = [box(4 + 12 * i, 4, 16 + 12 * i, 20) for i in range(3)]
    gt = make_set({1: row})
    pred = oracle_predictions(gt, "watershed", channels=1)
    assert len(pred[1].footprints) == 1


def test_unknown_method_and_map_coordinates_are_refused() -> None:
    gt = make_set({1: [box(0, 0, 8, 8)]})
    with pytest.raises(RooftraceError, match="unknown post-processing"):
        oracle_predictions(gt, "magic")
    gt.crs = "EPSG:32616"
    with pytest.raises(RooftraceError, match="map coordinates"):
        oracle_predictions(gt)
    with pytest.raises(ValueError):
        score_modes(gt, gt, ("greedy",))


# --- the sample pack ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def labels(sample: Path) -> dict[str, LabelSet]:
    return {split: read_labels(sample / split) for split in ("train", "val", "test")}


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_default_post_processing_loses_almost_nothing(labels: dict[str, LabelSet], split: str) -> None:
    """Measured: train 0.9984 / 0.9981 (two edge slivers of 2 and 5 px, under min_area 8), val
    0.9977 / 0.9983 (a 2 px wide building wall to wall with its neighbour has no pixel of its own
    in any channel), test 1.0 / 1.0 (mean / pooled F1)."""
    gt = labels[split]
    s = score_modes(gt, oracle_predictions(gt))["one-to-one"]
    assert s.f1 >= 0.99 and s.f1_pooled >= 0.99
    assert s.fp == 0 and s.fn <= 2
    assert s.pixel is not None and s.pixel.iou >= 0.999


@pytest.mark.parametrize("split", ["val", "test"])
def test_seed_recipe_loses_clearly_more(labels: dict[str, LabelSet], split: str) -> None:
    """Measured: seed 0.9495 (val) and 0.9279 (test) against 0.9977 and 1.0."""
    gt = labels[split]
    ws = score_modes(gt, oracle_predictions(gt), ("one-to-one",))["one-to-one"]
    seed = score_modes(gt, oracle_predictions(gt, "seed"), ("one-to-one",))["one-to-one"]
    assert seed.f1 < ws.f1 - 0.04
    assert seed.f1_pooled < ws.f1_pooled - 0.05
    assert seed.fn > 30  # buildings under ~11 x 11 px are dropped, neighbours fused


def test_blurred_oracle_degrades_gracefully(labels: dict[str, LabelSet]) -> None:
    """Perfect outputs blurred with a Gaussian of sigma 2 px, as a soft network output. Measured on
    test: watershed 0.9997, footprint-only watershed 0.9763, seed 0.9103 (mean F1)."""
    gt = labels["test"]
    f1 = {
        name: score_modes(gt, oracle_predictions(gt, method, channels=ch, blur=2.0), ("one-to-one",))["one-to-one"].f1
        for name, method, ch in [("ws", "watershed", None), ("ws1", "watershed", 1), ("seed", "seed", None)]
    }
    assert f1["ws"] >= 0.99
    assert f1["seed"] < f1["ws1"] < f1["ws"]


def test_blur_softens_the_targets() -> None:
    img = ImageLabels(key=1, footprints=[box(4, 4, 14, 14)], width=20, height=20)
    p = perfect_probabilities(img, blur=1.0)
    assert p.dtype == np.float32 and 0.0 < p[0, 4, 4] < 1.0 and p[0, 9, 9] > 0.99 and p.max() <= 1.0
    with pytest.raises(ValueError):
        perfect_probabilities(img, blur=-1.0)


def test_run_oracle_writes_a_submission_and_scores_it(sample: Path, tmp_path: Path) -> None:
    score, path = run_oracle(sample / "test", tmp_path)
    assert path == tmp_path / SUBMISSION_NAME and path.is_file()
    assert score.f1 == 1.0 and score.tp == 353 and score.matching == "one-to-one"
    written = read_begc_csv(path)
    assert list(written.images) == list(range(10))  # one row per test image, sorted by ImageID
    assert written.n_footprints == 353
    lines = path.read_text().splitlines()
    assert lines[0] == "ImageID,Coordinates" and len(lines) == 11
    with pytest.raises(RooftraceError, match="already exists"):
        run_oracle(sample / "test", tmp_path)
    seed_score, _ = run_oracle(sample / "test", tmp_path, postprocess="seed", force=True)
    assert seed_score.f1 < 0.95
    any_score, _ = run_oracle(sample / "test", tmp_path, force=True, matching="any")
    assert any_score.matching == "any" and any_score.f1 == 1.0


def test_run_oracle_on_a_split_with_string_keys(sample: Path, tmp_path: Path) -> None:
    score, path = run_oracle(sample / "val" / "val.json", tmp_path, settings=PostprocessSettings(simplify=1.0))
    gt = read_labels(sample / "val")
    written = read_begc_csv(path)
    assert set(written.images) == set(gt.images)  # every val image has a row, images without buildings too
    assert score.f1 >= 0.99
