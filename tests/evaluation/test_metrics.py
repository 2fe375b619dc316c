"""Tests of rooftrace.evaluation.metrics: exact small cases counted by hand, then the sample pack's real labels.

Expected figures are computed in the tests from shapely directly or by hand, never by metrics.py.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import shapely
from shapely import affinity
from shapely.geometry import box

from rooftrace.core.errors import RooftraceError
from rooftrace.evaluation import metrics
from rooftrace.evaluation.metrics import (
    MATCHING_MODES,
    evaluate_labels,
    match_footprints,
)
from rooftrace.labels.coco import read_coco
from rooftrace.labels.records import ImageLabels, LabelSet

SAMPLE_DIR = Path(
    os.environ.get("ROOFTRACE_SAMPLE_DIR", Path(__file__).resolve().parents[2].parent / "shared/data/buildings-sample")
)


def make_set(images: dict, sizes: dict | None = None, sources: dict | None = None, crs: str | None = None) -> LabelSet:
    """A LabelSet from ``{key: [footprints]}`` with optional ``{key: (w, h)}`` and ``{key: source}``."""
    ls = LabelSet(crs=crs)
    for key, fps in images.items():
        w, h = (sizes or {}).get(key, (None, None))
        ls.images[key] = ImageLabels(key=key, footprints=list(fps), width=w, height=h, source=(sources or {}).get(key))
    return ls


def f1_of(tp: int, fp: int, fn: int) -> float:
    """Per-image F1 by hand: 1 for an image with nothing to find and nothing found."""
    return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


@pytest.fixture(scope="module")
def sample_test() -> LabelSet:
    path = SAMPLE_DIR / "test" / "test.json"
    if not path.is_file():
        pytest.skip(f"buildings-sample pack not found at {SAMPLE_DIR} (set ROOFTRACE_SAMPLE_DIR to its folder)")
    return read_coco(path, check_images=False)


# ------------------------------------------------------------------------------------------------
# Small exact cases


@pytest.mark.parametrize("mode", MATCHING_MODES)
def test_identical_sets_score_one(mode: str) -> None:
    # Two GTs overlapping with IoU 2/3: each reaches the other's twin too, which must not hurt.
    images = {1: [box(0, 0, 10, 10), box(2, 0, 12, 10), box(30, 30, 45, 40)], 2: [box(5, 5, 25, 9)], 3: []}
    gt = make_set(images, sizes={1: (50, 50), 2: (30, 30), 3: (10, 10)})
    s = evaluate_labels(gt, make_set(images), matching=mode)
    assert (s.f1, s.f1_pooled, s.precision, s.recall) == (1.0, 1.0, 1.0, 1.0)
    assert (s.tp, s.fp, s.fn) == (4, 0, 0)
    assert s.pixel is not None and s.pixel.iou == 1.0 and s.pixel.fp == s.pixel.fn == 0
    assert s.pixel.tp == 10 * 10 + 2 * 10 + 15 * 10 + 20 * 4


@pytest.mark.parametrize("mode", MATCHING_MODES)
@pytest.mark.parametrize("dx, hit", [(3.2, True), (3.5, False)])
def test_shifted_square_just_above_or_below_half(mode: str, dx: float, hit: bool) -> None:
    expected_iou = (10 - dx) / (10 + dx)  # 0.515 and 0.481
    tp, fp, fn, pairs = match_footprints([box(0, 0, 10, 10)], [box(dx, 0, 10 + dx, 10)], matching=mode)
    assert (tp, fp, fn) == ((1, 0, 0) if hit else (0, 1, 1))
    if hit:
        assert pairs[0][:2] == (0, 0) and pairs[0][2] == pytest.approx(expected_iou)
    else:
        assert pairs == []


def test_threshold_is_settable() -> None:
    gt, pred = [box(0, 0, 10, 10)], [box(2, 0, 12, 10)]  # IoU 8/12
    assert match_footprints(gt, pred, iou=0.6)[0] == 1
    assert match_footprints(gt, pred, iou=0.7)[0] == 0
    assert match_footprints(gt, list(gt), iou=1.0)[:3] == (1, 0, 0)  # identical shapes match at 1


@pytest.mark.parametrize("kwargs", [{"iou": 0}, {"iou": 1.5}, {"iou": -0.1}, {"iou": float("nan")}, {"matching": "greedy"}])
def test_bad_arguments_raise_value_error(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="IoU threshold|matching mode"):
        match_footprints([box(0, 0, 1, 1)], [], **kwargs)
    with pytest.raises(ValueError):
        evaluate_labels(make_set({}), make_set({}), **kwargs)


def test_images_in_either_set_all_get_an_entry() -> None:
    gt = make_set({"good": [box(0, 0, 10, 10)], "empty": [], "missed": [box(0, 0, 5, 5), box(10, 10, 15, 15)]})
    pred = make_set({"good": [box(0, 0, 10, 10)], "extra": [box(0, 0, 4, 4), box(9, 9, 14, 14)]})
    s = evaluate_labels(gt, pred)
    by_id = {i.image_id: i for i in s.per_image}
    assert [i.image_id for i in s.per_image] == ["good", "empty", "missed", "extra"]
    assert (by_id["empty"].tp, by_id["empty"].fp, by_id["empty"].fn, by_id["empty"].f1) == (0, 0, 0, 1.0)
    assert (by_id["empty"].precision, by_id["empty"].recall) == (1.0, 1.0)
    assert (by_id["missed"].fn, by_id["missed"].f1) == (2, 0.0)
    assert (by_id["extra"].fp, by_id["extra"].tp, by_id["extra"].f1) == (2, 0, 0.0)
    assert s.f1 == pytest.approx((1 + 1 + 0 + 0) / 4)
    assert (s.tp, s.fp, s.fn) == (1, 2, 2)
    assert s.f1_pooled == pytest.approx(2 * 1 / (2 * 1 + 2 + 2))


def test_empty_label_sets_score_one() -> None:
    s = evaluate_labels(make_set({7: []}, sizes={7: (8, 8)}), make_set({}))
    assert (s.f1, s.f1_pooled, s.n_images) == (1.0, 1.0, 1)
    assert s.pixel is not None and (s.pixel.tp, s.pixel.fp, s.pixel.fn, s.pixel.iou) == (0, 0, 0, 1.0)


# Two heavily overlapping GTs. P1 fits A best (0.905) but also fits B (0.739); P2 fits only A (0.538).
# Greedy by IoU (or by prediction order) gives P1 -> A and leaves P2 and B unmatched: 1 match.
# The maximum matching is P1 -> B, P2 -> A: 2 matches.
TRAP_GT = [box(0, 0, 10, 10), box(2, 0, 12, 10)]
TRAP_PRED = [box(0.5, 0, 10.5, 10), box(-3, 0, 7, 10)]


def test_one_to_one_finds_the_maximum_matching_where_greedy_does_not() -> None:
    ious = [[g.intersection(p).area / g.union(p).area for p in TRAP_PRED] for g in TRAP_GT]
    assert ious[0][0] > ious[1][0] >= 0.5 and ious[0][1] >= 0.5 > ious[1][1]  # the trap is set
    tp, fp, fn, pairs = match_footprints(TRAP_GT, TRAP_PRED)
    assert (tp, fp, fn) == (2, 0, 0)
    assert [(g, p) for g, p, _ in pairs] == [(0, 1), (1, 0)]
    # SpaceNet's scoring is greedy in proposal order, so it falls into the trap.
    assert match_footprints(TRAP_GT, TRAP_PRED, matching="spacenet")[:3] == (1, 1, 1)


def test_maximum_matching_fallback_for_large_components(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "_DENSE_LIMIT", 0)  # force Hopcroft-Karp on every component
    assert match_footprints(TRAP_GT, TRAP_PRED)[:3] == (2, 0, 0)


def _brute_force_max_matching(ok: np.ndarray) -> int:
    """Largest number of (gt, pred) pairs, each used once, among the allowed ones: try all."""
    n_gt, n_pred = ok.shape
    best = 0
    for perm in itertools.permutations(range(n_pred), min(n_gt, n_pred)):
        best = max(best, sum(bool(ok[g, p]) for g, p in zip(range(n_gt), perm)))
    return best


@pytest.mark.parametrize("seed", range(12))
def test_one_to_one_equals_brute_force_on_random_overlapping_squares(seed: int) -> None:
    rng = np.random.default_rng(seed)
    gt = [box(x, y, x + 10, y + 10) for x, y in rng.uniform(0, 8, size=(5, 2))]
    pred = [box(x, y, x + s, y + s) for x, y, s in zip(*rng.uniform(0, 8, size=(2, 5)), rng.uniform(8, 12, size=5))]
    ok = np.array([[g.intersection(p).area / g.union(p).area >= 0.5 for p in pred] for g in gt])
    expected = _brute_force_max_matching(ok)
    tp, fp, fn, pairs = match_footprints(gt, pred)
    assert (tp, fp, fn) == (expected, 5 - expected, 5 - expected)
    assert len({g for g, _, _ in pairs}) == len({p for _, p, _ in pairs}) == tp
    assert all(ok[g, p] for g, p, _ in pairs)


def test_any_mode_does_not_punish_near_duplicates() -> None:
    gt = make_set({1: [box(0, 0, 10, 10)]})
    pred = make_set({1: [box(0, 0, 10, 10), box(0.5, 0, 10.5, 10), box(50, 50, 60, 60)]})
    s = evaluate_labels(gt, pred, matching="any")
    # tp = GTs reached, fp = predictions reaching no GT, fn = GTs reached by none.
    assert (s.tp, s.fp, s.fn) == (1, 1, 0)
    assert s.precision == pytest.approx(2 / 3) and s.recall == 1.0
    assert s.f1 == s.f1_pooled == pytest.approx(2 * (2 / 3) / (2 / 3 + 1))
    assert s.per_image[0].precision == pytest.approx(2 / 3)
    strict = evaluate_labels(gt, pred, matching="one-to-one")
    assert (strict.tp, strict.fp, strict.fn) == (1, 2, 0)
    assert strict.f1 == pytest.approx(2 / 4)
    _, _, _, pairs = match_footprints(gt[1].footprints, pred[1].footprints, matching="any")
    assert [(g, p) for g, p, _ in pairs] == [(0, 0), (0, 1)]


def test_spacenet_area_filters() -> None:
    gt19, gt20 = box(0, 0, 19, 1), box(100, 0, 104, 5)  # 19 px²: left out; 20 px²: kept
    pred20, pred_kept = box(50, 50, 54, 55), box(200, 200, 204.5, 204.5)  # 20 px²: left out; 20.25: kept
    assert (gt19.area, gt20.area, pred20.area, pred_kept.area) == (19, 20, 20, 20.25)
    assert match_footprints([gt19, gt20], [pred20, pred_kept], matching="spacenet")[:3] == (0, 1, 1)
    assert match_footprints([gt19, gt20], [pred20, pred_kept], matching="one-to-one")[:3] == (0, 2, 2)
    # A 19 px² building found exactly is not scored at all in SpaceNet mode; pair indices are the inputs'.
    tp, fp, fn, pairs = match_footprints([gt19, box(10, 10, 20, 20)], [gt19, box(10, 10, 20, 20)], matching="spacenet")
    assert (tp, fp, fn) == (1, 0, 0) and [(g, p) for g, p, _ in pairs] == [(1, 1)]


def test_spacenet_needs_iou_strictly_above_threshold() -> None:
    gt, pred = [box(0, 0, 10, 10)], [box(0, 0, 10, 20)]  # IoU exactly 100 / 200
    assert match_footprints(gt, pred, matching="one-to-one")[:3] == (1, 0, 0)
    assert match_footprints(gt, pred, matching="any")[:3] == (1, 0, 0)
    assert match_footprints(gt, pred, matching="spacenet")[:3] == (0, 1, 1)


def test_spacenet_takes_proposals_in_file_order() -> None:
    gt = [box(0, 0, 10, 10)]
    pred = [box(2, 0, 12, 10), box(0, 0, 10, 10)]  # the first fits worse (2/3) than the second (1)
    assert match_footprints(gt, pred, matching="spacenet")[3] == [(0, 0, pytest.approx(8 / 12))]
    assert match_footprints(gt, pred, matching="one-to-one")[3] == [(0, 1, pytest.approx(1.0))]


def test_per_source_breakdown() -> None:
    a1, a2, b1 = [box(0, 0, 10, 10), box(20, 0, 30, 10)], [box(0, 0, 8, 8)], [box(0, 0, 6, 6)]
    gt = make_set({"a1": a1, "a2": a2, "b1": b1}, sources={"a1": "crowdai", "a2": "crowdai", "b1": "inria"})
    pred = make_set({"a1": a1[:1], "a2": a2, "b1": [box(40, 40, 46, 46)], "stray": [box(0, 0, 3, 3)]})
    s = evaluate_labels(gt, pred)
    assert set(s.per_source) == {"crowdai", "inria", "unknown"}
    a, b, u = s.per_source["crowdai"], s.per_source["inria"], s.per_source["unknown"]
    assert (a.tp, a.fp, a.fn, a.n_images) == (2, 0, 1, 2)
    assert a.f1 == pytest.approx((f1_of(1, 0, 1) + 1.0) / 2) and a.f1_pooled == pytest.approx(f1_of(2, 0, 1))
    assert (b.tp, b.fp, b.fn, b.f1) == (0, 1, 1, 0.0)
    assert (u.tp, u.fp, u.fn, [i.image_id for i in u.per_image]) == (0, 1, 0, ["stray"])
    assert sum(p.tp for p in s.per_source.values()) == s.tp and sum(p.fn for p in s.per_source.values()) == s.fn
    assert a.pixel is not None and a.pixel.tp == 100 + 64 and a.pixel.fn == 100
    assert [i.source for i in s.per_image] == ["crowdai", "crowdai", "inria", None]
    table = s.summary()
    assert "crowdai" in table and "inria" in table
    assert evaluate_labels(make_set({1: a1}), make_set({1: a1})).per_source == {}


def test_pixel_counts_by_pixel_centre() -> None:
    gt = make_set(
        {"overlap": [box(0, 0, 4, 4)], "centre": [box(0, 0, 4, 4)], "edge": [], "nosize": [box(0, 0, 3, 3)]},
        sizes={"overlap": (10, 10), "centre": (10, 10), "edge": (10, 10)},
    )
    pred = make_set(
        {
            "overlap": [box(2, 2, 6, 6)],     # 16 px each, 2 x 2 shared
            "centre": [box(0.4, 0, 4.4, 4)],  # columns whose centre is inside: 0..3, the GT's own pixels
            "edge": [box(8, 8, 12, 12)],      # 2 x 2 inside the GT's 10 x 10 image, the rest cut off
            "nosize": [box(1, 1, 5, 5)],      # no size known: grid from the origin to (5, 5)
        },
        sizes={"edge": (20, 20)},  # a size claimed by the predictions does not override the GT's
    )
    s = evaluate_labels(gt, pred)
    assert s.pixel is not None
    tp, fp, fn = 4 + 16 + 0 + 4, 12 + 0 + 4 + 12, 12 + 0 + 0 + 5
    assert (s.pixel.tp, s.pixel.fp, s.pixel.fn) == (tp, fp, fn)
    assert s.pixel.iou == pytest.approx(tp / (tp + fp + fn))
    assert s.pixel.f1 == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert (s.pixel.precision, s.pixel.recall) == (pytest.approx(tp / (tp + fp)), pytest.approx(tp / (tp + fn)))
    assert evaluate_labels(gt, pred, pixel=False).pixel is None


def test_map_coordinates_skip_pixel_figures_and_spacenet_area_filters() -> None:
    small = box(500000, 4000000, 500004, 4000004)  # 16 m²: would be left out in px²
    gt = make_set({1: [small]}, crs="EPSG:26914")
    s = evaluate_labels(gt, make_set({1: [small]}, crs="EPSG:26914"), matching="spacenet")
    assert s.pixel is None
    assert (s.tp, s.fp, s.fn) == (1, 0, 0)
    assert any("area filters" in n for n in s.notes) and any("pixel" in n for n in s.notes)
    with pytest.raises(RooftraceError, match="map coordinates"):
        evaluate_labels(gt, make_set({1: [small]}))
    with pytest.raises(RooftraceError, match="EPSG:32616"):
        evaluate_labels(gt, make_set({1: [small]}, crs="EPSG:32616"))


def test_to_json_and_summary() -> None:
    gt = make_set({3: [box(0, 0, 10, 10)], "b": [box(0, 0, 5, 5)]}, sizes={3: (20, 20), "b": (20, 20)}, sources={3: "x", "b": "y"})
    pred = make_set({3: [box(0, 0, 10, 10)], "b": []})
    s = evaluate_labels(gt, pred, iou=0.6, matching="any")
    data = json.loads(json.dumps(s.to_json()))
    for key in ("f1", "f1_pooled", "precision", "recall", "tp", "fp", "fn", "per_image", "matching", "iou", "per_source", "pixel"):
        assert key in data
    assert (data["matching"], data["iou"], data["tp"], data["fn"]) == ("any", 0.6, 1, 1)
    assert [i["image_id"] for i in data["per_image"]] == [3, "b"]  # keys keep their type
    assert {"image_id", "tp", "fp", "fn", "f1"} <= set(data["per_image"][0])
    assert data["per_source"]["y"]["fn"] == 1 and "per_image" not in data["per_source"]["y"]
    assert data["pixel"]["tp"] == 100
    text = s.summary()
    assert len(text.splitlines()) < 25
    assert "worst images" in text and "b " in text.split("worst images")[1]
    assert "0.5000" in text  # the mean F1


# ------------------------------------------------------------------------------------------------
# Real labels from the sample pack


@pytest.mark.parametrize("mode", MATCHING_MODES)
def test_sample_labels_against_themselves(sample_test: LabelSet, mode: str) -> None:
    s = evaluate_labels(sample_test, sample_test, matching=mode)
    assert (s.f1, s.f1_pooled, s.precision, s.recall) == (1.0, 1.0, 1.0, 1.0)
    assert (s.tp, s.fp, s.fn) == (sample_test.n_footprints, 0, 0)
    assert s.pixel is not None and s.pixel.iou == 1.0 and s.pixel.tp > 0
    assert s.n_images == len(sample_test)
    assert set(s.per_source) == {img.source for img in sample_test}


def _perturbed(gt: LabelSet) -> tuple[LabelSet, dict, list]:
    """Drop every 5th building, shift every 7th sideways, add spurious squares, lose one image.

    Returns the predictions, ``{key: [(gt index, prediction)]}`` of the buildings kept (shifted or
    not), and ``[(key, square)]`` of the spurious ones.
    """
    pred = LabelSet()
    kept: dict = {}
    spurious: list = []
    n = 0
    keys = list(gt.images)
    lost = next(k for k in keys if len(gt[k].footprints) >= 3)  # an image with buildings, left out
    for key in keys:
        img = gt[key]
        if key == lost:
            continue
        kept[key] = []
        fps = []
        for i, fp in enumerate(img.footprints):
            n += 1
            if n % 5 == 0:
                continue
            if n % 7 == 0:
                minx, _, maxx, _ = fp.bounds
                fp = affinity.translate(fp, xoff=0.4 * (maxx - minx))
            kept[key].append((i, fp))
            fps.append(fp)
        # A 6 x 6 square at the first grid place that touches no building: a false positive.
        if len(spurious) < 4:
            gt_arr = np.array(img.footprints, dtype=object)
            for x, y in itertools.product(range(0, 250, 12), repeat=2):
                square = box(x, y, x + 6, y + 6)
                if not len(gt_arr) or not shapely.intersects(gt_arr, square).any():
                    fps.append(square)
                    spurious.append((key, square))
                    break
        pred.images[key] = ImageLabels(key=key, footprints=fps, width=img.width, height=img.height)
    pred.images[9999] = ImageLabels(key=9999, footprints=[box(0, 0, 10, 10), box(20, 20, 30, 30)])
    return pred, kept, spurious


@pytest.mark.parametrize("mode", MATCHING_MODES)
def test_sample_labels_perturbed_give_the_hand_count(sample_test: LabelSet, mode: str, tmp_path) -> None:
    pred, kept, spurious = _perturbed(sample_test)
    strict = mode == "spacenet"
    reaches = (lambda v: v > 0.5) if strict else (lambda v: v >= 0.5)
    expected: dict = {}
    n_shifted_missed = 0
    for key, img in sample_test.images.items():
        gt_arr = np.array(img.footprints, dtype=object)
        tp = 0
        for i, fp in kept.get(key, []):
            ious = shapely.area(shapely.intersection(gt_arr, fp)) / shapely.area(shapely.union(gt_arr, fp))
            # Precondition of the hand count: no prediction fits any building but its own.
            assert not any(reaches(v) for j, v in enumerate(ious) if j != i)
            if reaches(ious[i]):
                tp += 1
            else:
                n_shifted_missed += 1
        n_pred = len(kept.get(key, [])) + sum(k == key for k, _ in spurious)
        expected[key] = (tp, n_pred - tp, len(img.footprints) - tp)
    expected[9999] = (0, 2, 0)
    assert n_shifted_missed > 10 and len(spurious) == 4  # the perturbation really bites
    assert min(a for img in sample_test for a in shapely.area(np.array(img.footprints, dtype=object))) > 20

    s = evaluate_labels(sample_test, pred, matching=mode)
    assert {i.image_id: (i.tp, i.fp, i.fn) for i in s.per_image} == expected
    tp, fp, fn = (sum(c[j] for c in expected.values()) for j in range(3))
    assert (s.tp, s.fp, s.fn) == (tp, fp, fn)
    assert s.f1 == pytest.approx(sum(f1_of(*c) for c in expected.values()) / len(expected), rel=1e-12)
    assert s.f1_pooled == pytest.approx(2 * tp / (2 * tp + fp + fn), rel=1e-12)
    assert (s.precision, s.recall) == (pytest.approx(tp / (tp + fp)), pytest.approx(tp / (tp + fn)))
    assert s.f1 < 1.0 and s.pixel is not None and s.pixel.iou < 1.0

    # The same hand count through the command line, the predictions written as a BEGC2024 CSV.
    from rooftrace.cli import main
    from rooftrace.labels.begc import write_begc_csv

    csv_path = write_begc_csv(pred, tmp_path / f"{mode}.csv", decimals=6)
    js = tmp_path / f"{mode}.json"
    assert main(["evaluate", "--gt", str(SAMPLE_DIR / "test" / "test.json"), "--pred", str(csv_path), "--matching", mode,
                 "--json", str(js)]) == 0
    out = json.loads(js.read_text())
    assert {i["image_id"]: (i["tp"], i["fp"], i["fn"]) for i in out["per_image"]} == expected
    assert out["f1"] == pytest.approx(s.f1, rel=1e-12) and out["f1_pooled"] == pytest.approx(s.f1_pooled, rel=1e-12)


# ------------------------------------------------------------------------------------------------
# Many tiles


def _synthetic(n_images: int) -> tuple[LabelSet, LabelSet, tuple[int, int, int]]:
    """``n_images`` 500 x 500 tiles of 200 squares; every 3rd prediction is shifted out of reach."""
    xs, ys = np.meshgrid(np.arange(20) * 25 + 2.0, np.arange(10) * 50 + 2.0)
    xs, ys = xs.ravel(), ys.ravel()
    dx = np.where(np.arange(200) % 3 == 0, 7.0, 2.0)  # IoU 11/25 and 16/20
    gt_fps = list(shapely.box(xs, ys, xs + 18, ys + 18))
    pred_fps = list(shapely.box(xs + dx, ys + 1, xs + dx + 18, ys + 19))
    gt, pred = LabelSet(), LabelSet()
    for k in range(n_images):
        gt.images[k] = ImageLabels(key=k, footprints=gt_fps, width=500, height=500)
        pred.images[k] = ImageLabels(key=k, footprints=pred_fps, width=500, height=500)
    misses = int((dx == 7.0).sum()) * n_images
    return gt, pred, (200 * n_images - misses, misses, misses)


def test_many_tiles_small() -> None:
    gt, pred, (tp, fp, fn) = _synthetic(20)
    s = evaluate_labels(gt, pred)
    assert (s.tp, s.fp, s.fn) == (tp, fp, fn)
    assert s.f1 == pytest.approx(2 * tp / (2 * tp + fp + fn))


@pytest.mark.slow
@pytest.mark.parametrize("mode", MATCHING_MODES)
def test_many_tiles_1000_by_200(mode: str) -> None:
    gt, pred, (tp, fp, fn) = _synthetic(1000)
    s = evaluate_labels(gt, pred, matching=mode, pixel=mode == "one-to-one")
    assert (s.tp, s.fp, s.fn) == (tp, fp, fn)
    assert math.isclose(s.f1, 2 * tp / (2 * tp + fp + fn))


@pytest.mark.parametrize("mode", MATCHING_MODES)
def test_images_matched_in_threads_score_as_in_one(sample_test: LabelSet, mode: str) -> None:
    """evaluate_labels(threads=N) matches images in N threads: the same score, image by image and per source."""
    pred = _perturbed(sample_test)[0]
    one = evaluate_labels(sample_test, pred, matching=mode)
    assert 0 < one.f1 < 1  # something to get wrong
    for threads in (2, 3):
        assert evaluate_labels(sample_test, pred, matching=mode, threads=threads) == one
