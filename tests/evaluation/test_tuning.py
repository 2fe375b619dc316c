"""Tests of rooftrace.evaluation.tuning: the settings search ``rooftrace tune`` runs on probabilities.

The probabilities are drawn by hand: perfect targets for the labelled buildings, plus faint blobs the
labels do not hold (as a network's half-sure responses on trees or shadows), so the best settings are
known without running the code under test.
"""

from __future__ import annotations

import numpy as np
from shapely.geometry import box

from rooftrace.evaluation.tuning import SEARCH_SPACE, score_settings, search_settings
from rooftrace.instances.postprocess import PostprocessSettings
from rooftrace.labels.records import LabelSet
from rooftrace.prepare.targets import make_targets

SHAPE = (64, 64)


def _tiles() -> tuple[list[np.ndarray], LabelSet]:
    """Three tiles: each holds labelled buildings (a 5 x 5 shed among them, drawn as sure as the rest)
    and one large faint blob (mean footprint 0.85) that is not a building."""
    rng = np.random.default_rng(0)
    gt, probs = LabelSet(), []
    for k in range(3):
        real = [box(4, 4, 24, 20), box(40, 6, 45, 11), box(6 + k, 36, 26 + k, 58)]
        p = make_targets(real, SHAPE).stack().astype(np.float32)
        blob = (slice(34, 58), slice(36, 60))  # 24 x 24 = 576 px, larger than any building
        p[0][blob] = 0.85 + rng.uniform(-0.02, 0.02, size=(24, 24)).astype(np.float32)
        probs.append(p)
        img = gt.get_or_add(f"tile{k}")
        img.footprints = real
        img.width, img.height = SHAPE[1], SHAPE[0]
    return probs, gt


def test_the_search_finds_the_score_filter_where_no_area_filter_can_help() -> None:
    probs, gt = _tiles()
    default = score_settings(probs, gt, "watershed", PostprocessSettings())
    assert default.f1 < 0.9  # the blobs are false positives at the defaults
    # No area filter alone removes them: the blob is larger than every building, the shed smaller.
    for area in SEARCH_SPACE["min_area"]:
        assert score_settings(probs, gt, "watershed", PostprocessSettings(min_area=area)).f1 < 0.9
    best, found, at_defaults, trials = search_settings(probs, gt, "watershed")
    assert at_defaults.f1 == default.f1 and trials > len(SEARCH_SPACE)
    assert found.f1 == 1.0 and best.min_score > 0.87  # above every blob pixel's 0.83-0.87, below the buildings' 1.0


def test_the_seed_recipe_searches_only_its_threshold() -> None:
    probs, gt = _tiles()
    _, _, _, trials = search_settings(probs, gt, "seed", rounds=1)
    assert trials == len(SEARCH_SPACE["footprint_threshold"])  # the defaults' trial plus every other value


def test_a_footprint_only_model_searches_the_score_filter_too() -> None:
    probs, gt = _tiles()
    one = [p[:1] for p in probs]
    best, found, _, _ = search_settings(one, gt, "watershed")
    # Without boundary or contact the touching-free buildings are still found; the blob goes by its score.
    assert found.f1 == 1.0 and best.min_score > 0.87
