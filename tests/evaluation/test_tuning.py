"""Tests of rooftrace.evaluation.tuning: the settings search ``rooftrace tune`` runs on probabilities.

The probabilities are drawn by hand: perfect targets for the labelled buildings, plus faint blobs the
labels do not hold (as a network's half-sure responses on trees or shadows), so the best settings are
known without running the code under test.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
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


class _Landscape:
    """A scoring stand-in for :func:`score_settings` with two peaks: a local one that the search reaches from
    the defaults one setting at a time (``footprint_threshold`` 0.7, then ``min_area`` 16), and a higher one
    (``footprint_threshold`` 0.4 with ``min_area`` 64) that no single step from the local peak approaches,
    so only a search started near it finds it. It counts how often each setting is scored."""

    def __init__(self) -> None:
        self.calls: dict[PostprocessSettings, int] = {}

    def __call__(self, probs, gt, method, settings, threads=None, memo=None):  # noqa: ANN001 (score_settings' signature)
        self.calls[settings] = self.calls.get(settings, 0) + 1
        t, a = settings.footprint_threshold, settings.min_area
        if a == 64:
            f1 = 0.9 - abs(t - 0.4)  # the high ridge; at t = 0.7 it is 0.6, below the local peak's 0.7
        else:
            f1 = 0.5 + 0.2 * (1 - abs(t - 0.7) / 0.4) + (0.01 if a == 16 else 0.0) - (0.05 if a > 16 else 0.0)
        return type("S", (), {"f1": f1})()


def test_the_search_keeps_the_best_of_every_start_and_scores_no_setting_twice(monkeypatch) -> None:
    import rooftrace.evaluation.tuning as tuning_mod

    probs, gt = _tiles()
    land = _Landscape()
    monkeypatch.setattr(tuning_mod, "score_settings", land)
    alone, alone_score, _, alone_trials = search_settings(probs, gt, "watershed")
    assert (alone.footprint_threshold, alone.min_area) == (0.7, 16) and abs(alone_score.f1 - 0.71) < 1e-9
    assert alone_trials == len(land.calls) and max(land.calls.values()) == 1

    land.calls.clear()
    near = PostprocessSettings(footprint_threshold=0.5, min_area=64)
    best, found, at_defaults, trials = search_settings(probs, gt, "watershed", starts=[None, PostprocessSettings(), near])
    assert (best.footprint_threshold, best.min_area) == (0.4, 64) and abs(found.f1 - 0.9) < 1e-9
    assert abs(at_defaults.f1 - land(probs, gt, "watershed", PostprocessSettings()).f1) < 1e-9
    land.calls[PostprocessSettings()] -= 1  # the check above
    # Every setting scored once, whatever the starts share; the defaults given again are not a second start.
    assert trials == len(land.calls) and max(land.calls.values()) == 1 and trials > alone_trials

    # A start below the defaults' peak does not win over it: the best of the starts is kept.
    land.calls.clear()
    worse = PostprocessSettings(footprint_threshold=0.3, min_area=128)
    kept, kept_score, _, _ = search_settings(probs, gt, "watershed", starts=[worse])
    assert kept_score.f1 >= alone_score.f1 - 1e-9


def test_a_search_from_its_starts_only_does_not_climb_from_the_defaults(monkeypatch) -> None:
    import rooftrace.evaluation.tuning as tuning_mod

    probs, gt = _tiles()
    land = _Landscape()
    monkeypatch.setattr(tuning_mod, "score_settings", land)
    near = PostprocessSettings(footprint_threshold=0.5, min_area=64)
    best, found, at_defaults, trials = search_settings(probs, gt, "watershed", starts=[near], from_defaults=False)
    assert (best.footprint_threshold, best.min_area) == (0.4, 64) and abs(found.f1 - 0.9) < 1e-9
    assert PostprocessSettings() in land.calls  # the defaults scored once, for the third element ...
    # ... but not climbed from: no setting one step from the defaults (and away from the start) was scored.
    assert replace(PostprocessSettings(), seed_contact=0.1) not in land.calls
    # Zero rounds: the start scored as it is; no start at all is a mistake.
    kept, kept_score, _, trials0 = search_settings(probs, gt, "watershed", rounds=0, starts=[near], from_defaults=False)
    assert kept == near and trials0 == 2
    with pytest.raises(ValueError, match="at least one start"):
        search_settings(probs, gt, "watershed", from_defaults=False)


def test_scores_and_the_search_are_the_same_on_any_number_of_threads() -> None:
    """Each trial post-processes the images in threads; the images keep their order, so a tile's buildings are
    scored against its own labels whatever the thread count."""
    probs, gt = _tiles()
    probs = probs + [probs[0][:, ::-1, :].copy()]  # a fourth tile whose buildings are not where tile 0's are
    img = gt.get_or_add("tile3")
    img.footprints = [box(4, 64 - 20, 24, 64 - 4), box(40, 64 - 11, 45, 64 - 6), box(6, 64 - 58, 26, 64 - 36)]
    img.width, img.height = SHAPE[1], SHAPE[0]
    settings = PostprocessSettings(min_score=0.9)
    one = score_settings(probs, gt, "watershed", settings, threads=1)
    assert one.f1 == 1.0  # so tile 3 is scored against its own, flipped, labels
    for threads in (2, 3, 8):
        assert score_settings(probs, gt, "watershed", settings, threads=threads) == one
    assert search_settings(probs, gt, "watershed", threads=1) == search_settings(probs, gt, "watershed", threads=2)


def test_scores_from_kept_candidates_are_the_scores_of_post_processing_again() -> None:
    """score_settings with a search's memo reuses watershed's regions for settings that differ only in
    min_area (from the search's smallest up) and min_score: the same scores, and at most CANDIDATE_SETS sets kept."""
    from rooftrace.evaluation.tuning import CANDIDATE_MIN_AREA, CANDIDATE_SETS, SearchMemo

    probs, gt = _tiles()
    memo = SearchMemo()
    for threshold in (0.4, 0.5, 0.6):
        for min_area in (1, 16, 32):
            for min_score in (0.0, 0.9):
                s = PostprocessSettings(footprint_threshold=threshold, min_area=min_area, min_score=min_score)
                assert score_settings(probs, gt, "watershed", s, memo=memo) == score_settings(probs, gt, "watershed", s)
                assert len(memo.sets) <= CANDIDATE_SETS
    # Kept at the search's smallest min_area; a smaller one (1, above) is post-processed as it is.
    assert memo.sets and all(k.min_area == CANDIDATE_MIN_AREA and k.min_score == 0.0 for k in memo.sets)


def test_a_map_found_again_is_not_traced_again(monkeypatch) -> None:
    """An image whose instance map a later trial finds again (here: settings scored, pushed out of the kept sets,
    then scored again) keeps its candidates: nothing is traced, the score is the same; other maps are traced."""
    import rooftrace.instances.postprocess as pp
    from rooftrace.evaluation.tuning import MAP_MEMO, SearchMemo

    probs, gt = _tiles()
    traced = []
    real = pp.instances_to_polygons
    monkeypatch.setattr(pp, "instances_to_polygons", lambda *a, **k: traced.append(1) or real(*a, **k))
    memo = SearchMemo()
    first = PostprocessSettings(footprint_threshold=0.5)
    score = score_settings(probs, gt, "watershed", first, memo=memo)
    assert len(traced) == len(probs)
    for t in (0.3, 0.7):  # other masks: other maps, traced
        score_settings(probs, gt, "watershed", PostprocessSettings(footprint_threshold=t), memo=memo)
    assert all(k.footprint_threshold != 0.5 for k in memo.sets)  # pushed out of the kept sets
    n = len(traced)
    assert n == 3 * len(probs)
    assert score_settings(probs, gt, "watershed", first, memo=memo) == score
    assert len(traced) == n  # every map known: none traced again
    assert all(len(m) <= MAP_MEMO for m in memo.maps)