"""Tests of rooftrace.instances.postprocess and the pixel-edge tracer it uses, on shapes whose answer is exact.

Buildings are squares traced on pixel edges (``box(c0, r0, c1, r1)`` covers columns ``c0..c1-1`` and
rows ``r0..r1-1``), and model outputs are their targets (:func:`rooftrace.prepare.targets.make_targets`) as
float32 probabilities, sometimes blurred the way a network blurs them. Expected polygons are written
down by hand or come from shapely / GDAL, never from the code under test.
"""

from __future__ import annotations

import numpy as np
import pytest
import rasterio.features
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage
from shapely import affinity
from shapely.geometry import Polygon, box

from rooftrace.core.errors import RooftraceError
from rooftrace.geometry.polygons import (
    instances_to_footprints,
    instances_to_polygons,
    regularise_polygon,
    simplify_polygons,
)
from rooftrace.instances.postprocess import (
    POSTPROCESSORS,
    Buildings,
    PostprocessSettings,
    as_probabilities,
    instances_from_probabilities,
    postprocess,
    seed_postprocess,
    watershed_postprocess,
)
from rooftrace.prepare.targets import make_targets, rasterize_footprints


def perfect(footprints: list, shape: tuple[int, int]) -> np.ndarray:
    """What a perfect three-channel model outputs: the targets as float32 0/1."""
    return make_targets(footprints, shape).stack().astype(np.float32)


def blurred(footprints: list, shape: tuple[int, int], sigma: float = 1.0) -> np.ndarray:
    """A perfect output blurred per channel, as a network's probabilities are soft at edges."""
    p = perfect(footprints, shape)
    return np.clip(np.stack([ndimage.gaussian_filter(c, sigma) for c in p]), 0.0, 1.0).astype(np.float32)


def iou(a: Polygon, b: Polygon) -> float:
    return a.intersection(b).area / a.union(b).area


def best_iou(truth: Polygon, found: list) -> float:
    return max((iou(truth, f) for f in found), default=0.0)


def same_shape(a: Polygon, b: Polygon) -> bool:
    """Exactly the same point set (vertex order and start do not matter)."""
    return a.symmetric_difference(b).area == 0.0 and a.area == b.area


# --- settings and input ------------------------------------------------------------------------


def test_settings_round_trip_through_plain_dict() -> None:
    s = PostprocessSettings(footprint_threshold=0.4, min_area=12, simplify=1.5, regularise=True, surface="flat")
    d = s.to_dict()
    assert all(isinstance(v, (int, float, bool, str)) for v in d.values())
    assert PostprocessSettings.from_dict(d) == s
    assert PostprocessSettings.from_dict({"simplify": 2}).simplify == 2.0  # JSON ints for floats are fine
    assert PostprocessSettings.from_dict({}) == PostprocessSettings()


@pytest.mark.parametrize(
    "bad",
    [{"simplify": -1.0}, {"min_area": 2.5}, {"regularise": "yes"}, {"surface": "height"}, {"footprint_threshold": 0.0},
     {"seed_contact": float("nan")}, {"min_seed_area": True}, {"min_score": 1.5}, {"min_score": -0.1}],
)
def test_settings_reject_bad_values(bad: dict) -> None:
    with pytest.raises(RooftraceError):
        PostprocessSettings.from_dict(bad)


def test_settings_reject_unknown_key_and_are_frozen() -> None:
    with pytest.raises(RooftraceError, match="footprint_treshold"):
        PostprocessSettings.from_dict({"footprint_treshold": 0.5})
    with pytest.raises(Exception):
        PostprocessSettings().min_area = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "probs",
    [np.zeros((2, 8, 8), np.float32), np.zeros((1, 3, 8, 8), np.float32), np.zeros(8, np.float32), np.full((3, 4, 4), 255.0, np.float32),
     np.full((1, 4, 4), np.nan, np.float32), np.full((1, 4, 4), -0.5, np.float32)],
)
def test_malformed_probabilities_are_refused(probs: np.ndarray) -> None:
    with pytest.raises(ValueError):
        watershed_postprocess(probs)


def test_rounding_noise_is_clipped() -> None:
    p = np.zeros((1, 4, 4), np.float32)
    p[0, 0, 0], p[0, 1, 1] = 1.00001, -0.00001
    q = as_probabilities(p)
    assert q.min() == 0.0 and q.max() == 1.0


def test_two_dimensional_input_is_one_footprint_channel() -> None:
    assert as_probabilities(np.zeros((5, 6))).shape == (1, 5, 6)
    assert as_probabilities(np.zeros((5, 6))).dtype == np.float32


def test_registry_and_unknown_method() -> None:
    assert set(POSTPROCESSORS) == {"watershed", "seed"}
    with pytest.raises(RooftraceError, match="unknown post-processing"):
        postprocess(np.zeros((3, 4, 4), np.float32), method="magic")


@pytest.mark.parametrize("method", ["watershed", "seed"])
@pytest.mark.parametrize("channels", [1, 3])
def test_empty_input_gives_no_polygons(method: str, channels: int) -> None:
    for probs in (np.zeros((channels, 64, 64), np.float32), np.full((channels, 64, 64), 0.49, np.float32),
                  np.zeros((channels, 0, 0), np.float32)):
        r = postprocess(probs, method)
        assert isinstance(r, Buildings) and len(r) == 0 and r.footprints == [] and r.scores == []


# --- exact geometry ----------------------------------------------------------------------------


@pytest.mark.parametrize("simplify", [0.0, 1.0, 2.5])
@pytest.mark.parametrize("regularise", [False, True])
def test_square_is_exact_through_watershed(simplify: float, regularise: bool) -> None:
    truth = box(3, 2, 13, 9)  # columns 3..12, rows 2..8: 70 pixels
    r = watershed_postprocess(perfect([truth], (20, 20)), PostprocessSettings(simplify=simplify, regularise=regularise))
    assert len(r) == 1
    (found,) = r.footprints
    assert found.geom_type == "Polygon" and found.is_valid
    assert found.bounds == (3.0, 2.0, 13.0, 9.0)
    assert found.area == 70.0 and same_shape(found, truth)
    assert len(found.exterior.coords) == 5  # four corners, no collinear vertices
    assert r.scores == [1.0]
    assert r.instances is not None and r.instances.sum() == 70 and set(np.unique(r.instances)) == {0, 1}


def test_polygon_covers_exactly_its_pixels() -> None:
    """An L-shaped building traced on pixel edges rasterises back to the same pixels."""
    mask = np.zeros((16, 16), bool)
    mask[2:12, 3:6] = True
    mask[9:12, 3:11] = True
    truth = shapely.union_all([box(3, 2, 6, 12), box(3, 9, 11, 12)])
    r = watershed_postprocess(perfect([truth], (16, 16)))
    assert len(r) == 1 and same_shape(r.footprints[0], truth)
    assert np.array_equal(rasterize_footprints(r.footprints, (16, 16)).astype(bool), mask)


def test_buildings_one_pixel_apart_stay_two_with_perfect_targets() -> None:
    a, b = box(10, 10, 30, 30), box(31, 10, 51, 30)
    r = watershed_postprocess(perfect([a, b], (40, 60)))
    assert len(r) == 2
    assert sorted(f.bounds for f in r.footprints) == [a.bounds, b.bounds]
    assert all(same_shape(f, t) for f, t in zip(sorted(r.footprints, key=lambda g: g.bounds), [a, b]))


def test_buildings_one_pixel_apart_stay_two_when_the_blur_bridges_the_gap() -> None:
    a, b = box(10, 10, 30, 30), box(31, 10, 51, 30)
    probs = blurred([a, b], (40, 60), sigma=1.0)
    # The premise: the blurred footprint alone bridges the one-pixel gap into one blob ...
    assert probs[0, 15:25, 30].min() >= 0.5
    assert ndimage.label(probs[0] >= 0.5)[1] == 1
    # ... and a footprint-only post-processing fuses them, while the contact channel separates them.
    assert len(watershed_postprocess(probs[:1])) == 1
    r = watershed_postprocess(probs)
    assert len(r) == 2
    assert best_iou(a, r.footprints) > 0.9 and best_iou(b, r.footprints) > 0.9
    assert all(0.5 < s <= 1.0 for s in r.scores)


@pytest.mark.parametrize("surface, min_iou", [("probability", 0.9), ("flat", 0.9), ("distance", 0.85)])
def test_touching_buildings_with_contact_come_out_as_two(surface: str, min_iou: float) -> None:
    a, b = box(10, 10, 30, 30), box(30, 12, 45, 28)  # they share the edge x = 30, rows 12..27
    probs = perfect([a, b], (40, 60))
    assert ndimage.label(probs[0] >= 0.5)[1] == 1  # one blob in the footprint channel
    r = watershed_postprocess(probs, PostprocessSettings(surface=surface))
    assert len(r) == 2
    # The distance surface knows only the blob's shape, not the edge: the wider building takes
    # two columns of the narrower one (IoU 0.87); the default follows the model's ridges.
    assert best_iou(a, r.footprints) > min_iou and best_iou(b, r.footprints) > min_iou
    # Together they cover exactly the blob, without overlap.
    assert shapely.union_all(r.footprints).area == a.area + b.area == sum(f.area for f in r.footprints)


def test_touching_buildings_separate_on_contact_alone_and_on_boundary_alone() -> None:
    a, b = box(10, 10, 30, 30), box(30, 12, 45, 28)
    probs = perfect([a, b], (40, 60))
    for chosen in (PostprocessSettings(seed_boundary=2.0), PostprocessSettings(seed_contact=2.0, merge_contact=0.0)):
        r = watershed_postprocess(probs, chosen)
        assert len(r) == 2 and best_iou(a, r.footprints) > 0.9 and best_iou(b, r.footprints) > 0.9


def test_touching_buildings_blurred_come_out_as_two() -> None:
    a, b = box(10, 10, 30, 30), box(30, 12, 45, 28)
    r = watershed_postprocess(blurred([a, b], (40, 60), sigma=0.8))
    assert len(r) == 2 and best_iou(a, r.footprints) > 0.9 and best_iou(b, r.footprints) > 0.9


def test_building_too_small_for_a_seed_is_kept() -> None:
    """3 x 3 and 4 x 4 buildings have no pixel outside the 2 px boundary band: the fallbacks find them."""
    big, tiny, shed = box(10, 10, 30, 30), box(40, 40, 43, 43), box(32, 12, 36, 16)  # shed 2 px from big
    r = watershed_postprocess(perfect([big, tiny, shed], (50, 50)))
    assert len(r) == 3
    for t in (big, tiny, shed):
        assert any(same_shape(f, t) for f in r.footprints)


def test_min_area_drops_specks() -> None:
    speck, house = box(2, 2, 4, 5), box(10, 10, 20, 20)  # 6 px and 100 px
    r = watershed_postprocess(perfect([speck, house], (30, 30)))
    assert [f.area for f in r.footprints] == [100.0]
    r = watershed_postprocess(perfect([speck, house], (30, 30)), PostprocessSettings(min_area=1))
    assert sorted(f.area for f in r.footprints) == [6.0, 100.0]


def test_min_score_drops_faint_buildings_and_keeps_small_certain_ones() -> None:
    """A faint blob (mean footprint probability 0.75) goes at ``min_score`` 0.8, while a small
    building the model is sure of stays, where ``min_area`` would have to drop it with the blob."""
    faint, shed, house = box(2, 2, 14, 14), box(20, 2, 26, 8), box(2, 20, 22, 36)  # 144, 36, 320 px
    probs = perfect([faint, shed, house], (40, 40))
    probs[0][2:14, 2:14] = 0.75  # the blob's footprint only: its boundary band stays as drawn
    everything = watershed_postprocess(probs)
    assert sorted(f.area for f in everything.footprints) == [36.0, 144.0, 320.0]
    assert sorted(everything.scores) == [0.75, 1.0, 1.0]
    r = watershed_postprocess(probs, PostprocessSettings(min_score=0.8))
    assert sorted(f.area for f in r.footprints) == [36.0, 320.0] and min(r.scores) >= 0.8
    assert all(same_shape(a, b) for a, b in zip(sorted(r.footprints, key=lambda f: f.area), [shed, house]))
    # The instance map drops the same building and renumbers the rest 1..n.
    inst = instances_from_probabilities(probs, PostprocessSettings(min_score=0.8))
    assert sorted(np.unique(inst).tolist()) == [0, 1, 2] and (inst[2:14, 2:14] == 0).all()
    # At the blob's score exactly, it stays (the filter drops what is below).
    assert len(watershed_postprocess(probs, PostprocessSettings(min_score=0.75))) == 3


def test_narrow_neck_is_merged_back_but_a_shared_edge_is_not() -> None:
    """A dumbbell (two 12 x 12 blocks joined by a 2 px neck) is one building: its seeds split at
    the neck, and the contact channel, empty there, says to merge them again."""
    dumbbell = shapely.union_all([box(5, 5, 17, 17), box(17, 10, 21, 12), box(21, 5, 33, 17)])
    probs = perfect([dumbbell], (24, 40))
    assert len(watershed_postprocess(probs, PostprocessSettings(merge_contact=0.0))) == 2
    r = watershed_postprocess(probs)
    assert len(r) == 1 and same_shape(r.footprints[0], dumbbell)


def test_scores_are_mean_footprint_probability() -> None:
    probs = perfect([box(4, 4, 14, 14)], (20, 20))
    probs[0] *= 0.8
    probs[0, 4:9, 4:14] = 0.6  # upper half less sure
    r = watershed_postprocess(probs, PostprocessSettings(seed_footprint=0.5))
    assert len(r) == 1 and r.scores[0] == pytest.approx(0.7, abs=1e-6)


def test_holes_are_filled_unless_kept() -> None:
    ring = box(5, 5, 25, 25).difference(box(10, 10, 20, 20))
    probs = perfect([ring], (30, 30))
    (filled,) = watershed_postprocess(probs).footprints
    assert len(filled.interiors) == 0 and same_shape(filled, box(5, 5, 25, 25))
    (kept,) = watershed_postprocess(probs, PostprocessSettings(keep_holes=True)).footprints
    assert len(kept.interiors) == 1 and same_shape(kept, ring)


def test_instances_follow_footprint_order() -> None:
    fps = [box(2, 2, 10, 10), box(20, 3, 30, 12), box(5, 20, 15, 28)]
    r = watershed_postprocess(perfect(fps, (32, 32)))
    assert r.instances is not None
    for k, f in enumerate(r.footprints, start=1):
        assert np.array_equal(rasterize_footprints([f], (32, 32)).astype(bool), r.instances == k)
    assert np.array_equal(instances_from_probabilities(perfect(fps, (32, 32))), r.instances)


def _rough_maps(n: int, seed: int) -> list[np.ndarray]:
    """Model-like outputs for the flood: blurred touching buildings with noise, and blurred noise; some
    quantised to a few levels (as a bf16 network's saturated outputs are) so that markers tie."""
    rng = np.random.default_rng(seed)
    maps = []
    for i in range(n):
        h, w = (int(v) for v in rng.integers(24, 96, 2))
        if i % 2:
            fps = []
            for _ in range(int(rng.integers(2, 12))):
                x, y = rng.integers(0, w - 6), rng.integers(0, h - 6)
                fps.append(box(x, y, x + rng.integers(4, 24), y + rng.integers(4, 24)))
            p = blurred([f.intersection(box(0, 0, w, h)) for f in fps], (h, w), float(rng.uniform(0.5, 2.0)))
            p = np.clip(p + rng.normal(0, 0.15, p.shape), 0, 1)
        else:
            p = np.stack([ndimage.gaussian_filter(rng.random((h, w)), float(rng.uniform(0.7, 3))) for _ in range(3)])
            p = (p - p.min(axis=(1, 2), keepdims=True)) / (np.ptp(p, axis=(1, 2), keepdims=True) + 1e-6)
        levels = int(rng.choice([0, 4, 16, 64]))
        if levels:
            p = np.round(p * levels) / levels
        maps.append(p.astype(np.float32))
    return maps


def _reference_merge(inst: np.ndarray, contact: np.ndarray, threshold: float) -> np.ndarray:
    """The merge as documented, pair by pair: every two edge-adjacent pixels of different regions (rows of
    horizontal pairs in raster order, then vertical ones) add the mean of their two contact values to
    their regions' frontier; regions whose frontier's mean is below ``threshold`` are one, with the
    smallest id of the group."""
    h, w = inst.shape
    sums: dict[tuple[int, int], list] = {}
    pairs = [((r, c), (r, c + 1)) for r in range(h) for c in range(w - 1)]
    pairs += [((r, c), (r + 1, c)) for r in range(h - 1) for c in range(w)]
    for p, q in pairs:
        a, b = int(inst[p]), int(inst[q])
        if a and b and a != b:
            key = (min(a, b), max(a, b))
            acc = sums.setdefault(key, [0.0, 0])
            acc[0] += float((contact[p] + contact[q]) * np.float32(0.5))
            acc[1] += 1
    parent = list(range(int(inst.max()) + 1))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for (a, b), (total, count) in sums.items():
        if total / count < threshold:
            ra, rb = root(a), root(b)
            parent[max(ra, rb)] = min(ra, rb)
    return np.vectorize(root, otypes=[np.int32])(inst) if inst.size else inst


def _reference_grow(markers, mask, surface, layers, flat, merge_below=0.0):
    """What ``_grow`` must give, written plainly: the whole tile flooded from its markers with a heap of
    Python tuples in the order the module documents. A pixel's key is ``(value, 0, raster position)``
    for a marker and ``(value, 1, 0)`` for any other; a pixel is reached at the greater of its own
    key and the key its neighbour was reached at, and taken off the heap by that, then by age
    (markers 0, each push one more; neighbours in turn up, left, right, down, as scikit-image visits
    them), taking the id of the pixel it was reached from. Components without a marker are
    buildings of their own, numbered after the markers in raster order; the merge is the module's
    own on the flooded components."""
    import heapq

    h, w = mask.shape
    land = surface(layers, mask)
    out = np.where(mask, markers, 0).astype(np.int32)
    heap = [((float(land[r, c]), 0, r * w + c), 0, r, c) for r, c in zip(*np.nonzero(out))]
    heapq.heapify(heap)
    age = 0
    while heap:
        key, _, r, c = heapq.heappop(heap)
        for dr, dc in ((-1, 0), (0, -1), (0, 1), (1, 0)):
            y, x = r + dr, c + dc
            if 0 <= y < h and 0 <= x < w and mask[y, x] and not out[y, x]:
                age += 1
                out[y, x] = out[r, c]
                heapq.heappush(heap, (max((float(land[y, x]), 1, 0), key), age, y, x))
    comp, n_comp = ndimage.label(mask, structure=ndimage.generate_binary_structure(2, 1))
    per_comp = np.bincount(comp[markers > 0], minlength=n_comp + 1)
    flooded = (per_comp >= 2)[comp] & mask
    if merge_below > 0:
        out = np.where(flooded, _reference_merge(np.where(flooded, out, 0), layers[-1], merge_below), out)
    lone = np.flatnonzero(per_comp[1:] == 0) + 1
    lut = np.zeros(n_comp + 1, dtype=np.int32)
    lut[lone] = int(markers.max()) + 1 + np.arange(len(lone), dtype=np.int32)
    return np.where(mask & (out == 0), lut[comp], out).astype(np.int32)


@pytest.mark.parametrize("options", [
    {}, {"surface": "flat"}, {"surface": "distance"}, {"merge_contact": 0.6}, {"min_seed_area": 4},
    {"footprint_threshold": 0.65, "seed_contact": 0.2, "min_area": 64, "merge_contact": 0.0},
    {"seed_footprint": 0.5, "seed_boundary": 0.9, "seed_contact": 0.9, "merge_contact": 0.5},
])
def test_the_flood_of_contested_pieces_is_the_documented_flood_of_the_whole_tile(monkeypatch, options: dict) -> None:
    """Flooding only the pieces two markers compete for, packed into a mosaic, gives the same buildings,
    polygons and scores as a plain heap flood of the whole tile in the documented order, on model-like
    outputs quantised so that markers of equal value tie (as a bf16 network's do), on every surface,
    and for the single-channel distance split."""
    import rooftrace.instances.postprocess as pp

    settings = PostprocessSettings(**options)
    split = PostprocessSettings(**{**options, "split_distance": 1.5})  # the single-channel flood
    maps = _rough_maps(24, seed=len(str(options)))
    floods = []
    real = pp.flood_contested
    monkeypatch.setattr(pp, "flood_contested", lambda *a: floods.append(1) or real(*a))

    def run() -> list:
        return [(watershed_postprocess(p, settings), watershed_postprocess(p[:1], split)) for p in maps]

    new = run()
    assert floods  # the contested flood ran
    monkeypatch.setattr(pp, "_grow", _reference_grow)
    for pair, ref_pair in zip(new, run()):
        for got, ref in zip(pair, ref_pair):
            assert np.array_equal(got.instances, ref.instances)
            assert got.scores == ref.scores
            assert [shapely.get_coordinates(f).tolist() for f in got.footprints] == \
                [shapely.get_coordinates(f).tolist() for f in ref.footprints]


def test_tied_seeds_give_the_same_buildings_wherever_the_tile_lies() -> None:
    """With every seed of equal value (a flat surface, and saturated bf16-like outputs), the buildings do
    not depend on where the tile lies in a larger raster or on what else that raster holds: the flood's
    order is the pixels', not the heap's."""
    maps = _rough_maps(16, seed=7)
    for options in ({"surface": "flat"}, {}):
        s = PostprocessSettings(**options)
        for p in maps:
            h, w = p.shape[1:]
            alone = watershed_postprocess(p, s)
            for dy, dx, other in ((3, 5, None), (0, 40, maps[0]), (37, 0, maps[3])):
                big = np.zeros((3, h + dy + 100, w + dx + 100), dtype=np.float32)
                big[:, dy:dy + h, dx:dx + w] = p
                if other is not None:  # more buildings below and right of the tile, never touching it
                    oh, ow = other.shape[1:]
                    big[:, h + dy + 2:h + dy + 2 + min(oh, 98), w + dx + 2:w + dx + 2 + min(ow, 98)] = other[:, :98, :98]
                found = watershed_postprocess(big, s)
                inside = [f for f in found.footprints if f.bounds[2] <= dx + w and f.bounds[3] <= dy + h]
                moved = [affinity.translate(f, dx, dy) for f in alone.footprints]
                assert sorted(f.wkb for f in inside) == sorted(f.wkb for f in moved)


def test_flood_keys_order_seeds_by_value_then_position_and_leave_other_ties_to_age() -> None:
    from rooftrace.instances.flood import flood_keys as _flood_keys

    values = np.array([0.5, 0.5, 0.5, 0.2, 0.5, 0.9], dtype=np.float32)
    seed = np.array([True, True, False, False, False, True])
    order = np.array([40, 7, 0, 3, 9, 1])
    k = _flood_keys(values, seed, order)
    assert k[3] < k[1] < k[0] < k[2] == k[4] < k[5]  # by value; seeds at 0.5 by position, before the rest
    assert k.dtype == np.float64
    # Only the seeds' order counts, not how far apart they lie: raster positions of a huge scene give the same keys.
    assert np.array_equal(_flood_keys(values, seed, order * 2**40 + 5), k)


# --- single channel ----------------------------------------------------------------------------


def test_single_channel_components() -> None:
    a, b, c = box(2, 2, 10, 10), box(11, 2, 19, 10), box(2, 12, 10, 20)  # a-b 1 px apart
    r = watershed_postprocess(perfect([a, b, c], (24, 24))[:1])
    assert len(r) == 3 and all(any(same_shape(f, t) for f in r.footprints) for t in (a, b, c))
    touching = watershed_postprocess(perfect([box(2, 2, 10, 10), box(10, 2, 18, 10)], (12, 20))[:1])
    assert len(touching) == 1  # without boundary or contact, touching buildings are one blob


def test_single_channel_distance_split() -> None:
    dumbbell = shapely.union_all([box(2, 2, 16, 16), box(16, 7, 20, 11), box(20, 2, 34, 16)])
    probs = perfect([dumbbell], (18, 36))[:1]
    assert len(watershed_postprocess(probs)) == 1
    r = watershed_postprocess(probs, PostprocessSettings(split_distance=2.0))
    assert len(r) == 2
    assert best_iou(box(2, 2, 16, 16), r.footprints) > 0.8 and best_iou(box(20, 2, 34, 16), r.footprints) > 0.8
    assert shapely.union_all(r.footprints).area == dumbbell.area


# --- the original recipe -----------------------------------------------------------------------


def test_seed_shrinks_a_square_by_half_a_pixel() -> None:
    truth = box(10, 20, 20, 30)  # 10 x 10 pixels, area 100
    probs = perfect([truth], (40, 40))[:1]
    # The recipe's 100 px filter applies to the shrunk contour (81 px): the building is dropped.
    assert len(seed_postprocess(probs)) == 0
    r = seed_postprocess(probs, min_contour_area=0)
    assert len(r) == 1
    (found,) = r.footprints
    # Contour through the pixel indices of the outer pixels: 9 x 9, area 81, integer vertices.
    assert same_shape(found, box(10, 20, 19, 29)) and found.area == 81.0
    assert np.array_equal(np.asarray(found.exterior.coords), np.round(np.asarray(found.exterior.coords)))
    assert iou(found, truth) == pytest.approx(0.81)
    # The default gives the square itself.
    assert same_shape(watershed_postprocess(perfect([truth], (40, 40))).footprints[0], truth)


def test_seed_fuses_buildings_one_pixel_apart_and_drops_small_ones() -> None:
    a, b, small = box(5, 5, 17, 17), box(18, 5, 30, 17), box(5, 25, 14, 34)  # small: 9 x 9 = 81 px
    probs = perfect([a, b, small], (40, 40))
    r = seed_postprocess(probs)
    assert len(r) == 1  # the close fuses a and b; the 8 x 8 contour of `small` is under 100 px
    assert r.footprints[0].intersects(a) and r.footprints[0].intersects(b)
    assert len(watershed_postprocess(probs)) == 3


def test_seed_reads_the_footprint_channel_only() -> None:
    probs = perfect([box(5, 5, 20, 20)], (30, 30))
    assert [f.wkt for f in seed_postprocess(probs).footprints] == [f.wkt for f in seed_postprocess(probs[:1]).footprints]


# --- the pixel-edge tracer ---------------------------------------------------------------------


def filled(geom):
    parts = [Polygon(p.exterior) for p in shapely.get_parts(geom)]
    return shapely.union_all(parts)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    h=st.integers(1, 12), w=st.integers(1, 12), seed=st.integers(0, 2**32 - 1),
    density=st.floats(0.1, 0.95), kind=st.sampled_from(["components", "random ids"]),
)
def test_tracer_matches_gdal_polygonize(h: int, w: int, seed: int, density: float, kind: str) -> None:
    """Same ids and the same point sets as rasterio.features.shapes, 4-connectivity, holes or not."""
    rng = np.random.default_rng(seed)
    m = rng.random((h, w)) < density
    inst = ndimage.label(m)[0] if kind == "components" else (m * rng.integers(1, 4, (h, w))).astype(np.int32)
    ref = instances_to_footprints(inst)  # GDAL, one geometry per id in id order
    for holes in (True, False):
        ids, polys = instances_to_polygons(inst, holes=holes)
        assert ids.tolist() == sorted(set(inst[inst > 0].tolist()))
        for k, p, r in zip(ids, polys, ref):
            assert p.is_valid and p.area > 0
            expected = r if holes else filled(r)
            assert p.symmetric_difference(expected).area == 0.0
            if holes:
                assert p.area == (inst == k).sum()


def test_tracer_gives_only_corners() -> None:
    inst = np.zeros((10, 10), np.int32)
    inst[2:8, 1:9] = 3
    ids, polys = instances_to_polygons(inst)
    assert ids.tolist() == [3] and len(polys[0].exterior.coords) == 5 and same_shape(polys[0], box(1, 2, 9, 8))
    # the same as GDAL's polygon
    (geom, value), = list(rasterio.features.shapes(inst, mask=inst > 0, connectivity=4))
    assert value == 3 and same_shape(polys[0], shapely.geometry.shape(geom))


# --- simplification and regularisation never break validity ------------------------------------


blob_rects = st.lists(
    st.tuples(st.integers(0, 40), st.integers(0, 40), st.integers(1, 20), st.integers(1, 20), st.floats(0, 90)),
    min_size=1, max_size=8,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rects=blob_rects, noise=st.floats(0, 0.15), seed=st.integers(0, 2**32 - 1),
       tol=st.sampled_from([0.0, 0.5, 1.0, 2.0, 4.0]), regularise=st.booleans(), sigma=st.sampled_from([0.0, 1.0]))
def test_outputs_are_always_valid_polygons(rects, noise: float, seed: int, tol: float, regularise: bool, sigma: float) -> None:
    """Random blobs (rotated rectangles, overlapping, plus salt noise), blurred or not."""
    rng = np.random.default_rng(seed)
    fps = [affinity.rotate(box(x, y, x + w, y + h), a) for x, y, w, h, a in rects]
    probs = make_targets(fps, (48, 48)).stack().astype(np.float32)
    probs[0] = np.maximum(probs[0], rng.random((48, 48)) < noise)
    if sigma:
        probs = np.clip(np.stack([ndimage.gaussian_filter(c, sigma) for c in probs]), 0, 1).astype(np.float32)
    s = PostprocessSettings(simplify=tol, regularise=regularise, min_area=1)
    for channels in (3, 1):
        r = watershed_postprocess(probs[:channels], s)
        assert len(r.scores) == len(r.footprints)
        for f in r.footprints:
            assert f.geom_type == "Polygon" and f.is_valid and not f.is_empty and f.area > 0


@settings(max_examples=80, deadline=None)
@given(pts=st.lists(st.tuples(st.floats(0, 50), st.floats(0, 50)), min_size=3, max_size=12), tol=st.floats(0, 5))
def test_simplify_and_regularise_keep_any_valid_polygon_valid(pts, tol: float) -> None:
    poly = shapely.make_valid(Polygon(pts))
    polys = [p for p in shapely.get_parts(poly) if isinstance(p, Polygon) and p.area > 1e-6]
    if not polys:
        return
    out = simplify_polygons(np.array(polys, dtype=object), tol)
    for before, after in zip(polys, out):
        assert after.is_valid and after.area > 0
        reg = regularise_polygon(after, 0.85, max(tol, 1.0))
        assert reg.is_valid and reg.area > 0 and reg.geom_type == "Polygon"


def test_regularise_makes_a_rotated_rectangle_a_rectangle() -> None:
    truth = affinity.rotate(box(20, 25, 44, 37), 30, origin="centroid")
    (traced,) = watershed_postprocess(perfect([truth], (64, 64))).footprints
    assert len(traced.exterior.coords) > 20  # a staircase
    (reg,) = watershed_postprocess(perfect([truth], (64, 64)), PostprocessSettings(regularise=True)).footprints
    assert len(reg.exterior.coords) == 5 and reg.is_valid
    assert iou(reg, truth) > 0.93 and iou(reg, truth) > iou(traced, truth)
    assert reg.area == pytest.approx(traced.area)


def test_regularise_squares_off_an_l_shape() -> None:
    truth = shapely.union_all([box(4, 4, 14, 30), box(4, 20, 30, 30)])
    staircase = affinity.rotate(truth, 12, origin="centroid")
    (traced,) = watershed_postprocess(perfect([staircase], (40, 40))).footprints
    reg = regularise_polygon(traced, rectangularity=0.9)
    assert reg.is_valid and len(reg.exterior.coords) == 7  # six right-angled corners
    assert iou(reg, staircase) > 0.85


@pytest.mark.parametrize("tidy", [dict(), dict(simplify=1.0, regularise=True), dict(keep_holes=True)])
def test_candidates_filtered_give_watersheds_buildings(tidy) -> None:
    """A search's shortcut (watershed_candidates, then the filters): the same polygons, in the same order, as
    post-processing with each min_area and min_score, on rough model-like maps and on blurred touching buildings."""
    from rooftrace.instances.postprocess import watershed_candidates

    maps = _rough_maps(12, seed=11)
    maps.append(blurred([box(4, 4, 30, 22), box(30, 4, 50, 22), box(8, 30, 11, 33)], (64, 64), 1.2))
    checked = 0
    for p in maps:
        cands = watershed_candidates(p, PostprocessSettings(**tidy, min_area=4, min_score=0.3))  # its min_score unused
        for min_area in (4, 8, 64):
            for min_score in (0.0, 0.5, 0.9):
                s = PostprocessSettings(**tidy, min_area=min_area, min_score=min_score)
                want = watershed_postprocess(p, s).footprints
                got = cands.footprints(s)
                assert len(got) == len(want) and all(a.equals_exact(b, 0) for a, b in zip(got, want))
                checked += len(want)
    assert checked > 100  # the maps hold buildings that the filters keep and drop


# --- the flood's helpers -------------------------------------------------------------------------


def test_float32_order_keeps_the_order_and_the_ties_of_float32_values() -> None:
    from rooftrace.instances.flood import float32_order as _float32_order

    rng = np.random.default_rng(3)
    v = np.concatenate([rng.normal(0, 3, 500), [0.0, -0.0, 1.0, 1.0, -2.5, -2.5, 3e38, -3e38, 1e-45, -1e-45]]).astype(np.float32)
    k = _float32_order(v)
    order = np.argsort(v, kind="stable")
    assert np.all(np.diff(k[order]) >= 0)  # the values' order
    assert np.array_equal(np.diff(k[order]) == 0, np.diff(v[order]) == 0)  # equal keys exactly where values are equal
    assert k[500] == k[501]  # 0.0 and -0.0


def test_smallest_linked_is_each_node_s_group_minimum() -> None:
    from rooftrace.instances.postprocess import _smallest_linked

    rng = np.random.default_rng(5)
    for n, m in ((1, 0), (6, 3), (40, 25), (300, 120)):
        a, b = rng.integers(0, n, m), rng.integers(0, n, m)
        parent = list(range(n))

        def root(i: int) -> int:
            while parent[i] != i:
                i = parent[i]
            return i

        for x, y in zip(a.tolist(), b.tolist()):
            rx, ry = root(x), root(y)
            parent[max(rx, ry)] = min(rx, ry)
        assert _smallest_linked(n, a, b).tolist() == [root(i) for i in range(n)]
    chain = np.arange(99)  # a path 99 - 98 - ... - 0, given from its far end: labels must travel its length
    assert _smallest_linked(100, chain[::-1] + 1, chain[::-1]).tolist() == [0] * 100


def test_merge_lookup_covers_regions_that_touch_no_other() -> None:
    from rooftrace.instances.postprocess import _merge_uncontacted

    inst = np.zeros((6, 9), dtype=np.int32)
    inst[1:4, 1:3], inst[1:4, 3:5], inst[1:4, 6:8] = 1, 2, 3  # 1 and 2 touch; 3, the largest id, touches none
    lut = _merge_uncontacted(inst, np.zeros(inst.shape, dtype=np.float32), 0.5, 4)
    assert lut is not None and lut.tolist() == [0, 1, 1, 3]
    assert _merge_uncontacted(inst, np.ones(inst.shape, dtype=np.float32), 0.5, 4) is None  # full contact: none merged


def test_pack_places_boxes_apart_in_a_mosaic_no_larger_than_one_row_width() -> None:
    from rooftrace.instances.flood import pack_boxes as _pack
    from rooftrace.instances.flood import shelf_pack as _shelf

    rng = np.random.default_rng(7)
    for _ in range(20):
        k = int(rng.integers(1, 12))
        hs, ws = rng.integers(1, 120, k), rng.integers(1, 200, k)
        py, px, hm, wm = _pack(hs, ws, 300)
        canvas = np.zeros((hm, wm), dtype=np.int32)
        for i in range(k):  # each box with its one-pixel gap, inside the mosaic, overlapping no other
            assert py[i] + hs[i] + 1 <= hm and px[i] + ws[i] + 1 <= wm
            canvas[py[i]:py[i] + hs[i] + 1, px[i]:px[i] + ws[i] + 1] += 1
        assert canvas.max() == 1
        h1, w1 = (hs + 1).tolist(), (ws + 1).tolist()
        order = sorted(range(k), key=lambda i: -h1[i])
        at_width = max(300, max(w1))
        assert hm * wm <= _shelf(h1, w1, order, at_width)[2] * at_width  # never larger than at the given width
