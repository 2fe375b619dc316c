"""Tests of the footprint / boundary / contact targets, on shapes whose answer is known pixel by pixel.

Squares are traced on pixel edges (``box(c0, r0, c1, r1)`` covers columns ``c0..c1-1`` and rows
``r0..r1-1``), so the expected arrays can be written down exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
from shapely.geometry import Polygon, box

from rooftrace.core.errors import RooftraceError
from rooftrace.prepare.targets import (
    Targets,
    TargetSettings,
    boundary_band,
    building_mask,
    contact_map,
    instance_map,
    make_targets,
    rasterize_footprints,
)


def block(shape: tuple[int, int], rows: slice, cols: slice, value: int = 1) -> np.ndarray:
    """A zero array with ``value`` on ``[rows, cols]``."""
    out = np.zeros(shape, dtype=np.int64)
    out[rows, cols] = value
    return out


def brute_boundary(inst: np.ndarray, width: int) -> np.ndarray:
    """Boundary by its definition, pixel by pixel (reference for the vectorised version)."""
    h, w = inst.shape
    out = np.zeros(inst.shape, bool)
    for r in range(h):
        for c in range(w):
            if inst[r, c] == 0:
                continue
            win = inst[max(0, r - width) : r + width + 1, max(0, c - width) : c + width + 1]
            out[r, c] = bool((win != inst[r, c]).any())
    return out


def brute_contact(inst: np.ndarray, width: int) -> np.ndarray:
    """Contact by its definition: two different non-zero ids within the window."""
    h, w = inst.shape
    out = np.zeros(inst.shape, bool)
    for r in range(h):
        for c in range(w):
            win = inst[max(0, r - width) : r + width + 1, max(0, c - width) : c + width + 1]
            out[r, c] = len(set(win[win > 0].tolist())) >= 2
    return out


# --- mask and instances -------------------------------------------------------------------------


def test_square_gives_exactly_its_nine_pixels() -> None:
    mask = building_mask([box(2, 3, 5, 6)], (10, 10))
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, block((10, 10), slice(3, 6), slice(2, 5)).astype(bool))
    t = make_targets([box(2, 3, 5, 6)], (10, 10))
    assert t.mask.dtype == np.uint8 and int(t.mask.sum()) == 9


def test_instance_ids_follow_footprint_order() -> None:
    inst = instance_map([box(0, 0, 2, 2), box(5, 5, 7, 7), box(3, 0, 4, 1)], (8, 8))
    assert inst.dtype == np.int32
    assert inst[0, 0] == 1 and inst[5, 5] == 2 and inst[0, 3] == 3
    assert sorted(np.unique(inst).tolist()) == [0, 1, 2, 3]


def test_overlap_later_footprint_wins() -> None:
    inst = instance_map([box(0, 0, 4, 4), box(2, 2, 6, 6)], (8, 8))
    assert (inst[2:6, 2:6] == 2).all()
    assert (inst[0:2, 0:4] == 1).all() and (inst[2:4, 0:2] == 1).all()
    assert int((inst == 1).sum()) == 16 - 4


def test_hole_stays_empty() -> None:
    ring = Polygon([(1, 1), (8, 1), (8, 8), (1, 8)], holes=[[(3, 3), (6, 3), (6, 6), (3, 6)]])
    t = make_targets([ring], (10, 10), TargetSettings(boundary_width=1, contact_width=1))
    expected = block((10, 10), slice(1, 8), slice(1, 8)) - block((10, 10), slice(3, 6), slice(3, 6))
    np.testing.assert_array_equal(t.mask, expected)
    assert t.instances[4, 4] == 0
    # the pixels around the hole are an edge of the building too
    assert t.boundary[2, 4] == 1 and t.boundary[4, 2] == 1 and t.boundary[6, 6] == 1
    assert t.contact.sum() == 0


def test_multipolygon_is_one_instance() -> None:
    inst = instance_map([box(0, 0, 2, 2).union(box(4, 4, 6, 6))], (6, 6))
    assert int((inst == 1).sum()) == 8


def test_empty_footprint_list_gives_zeros() -> None:
    t = make_targets([], (7, 5))
    for arr in (t.mask, t.instances, t.boundary, t.contact):
        assert arr.shape == (7, 5) and not arr.any()
    stack = t.stack()
    assert stack.shape == (3, 7, 5) and stack.dtype == np.uint8 and not stack.any()


def test_footprint_partly_outside_the_image_is_clipped() -> None:
    t = make_targets([box(-3, -3, 2, 2)], (5, 5))
    np.testing.assert_array_equal(t.mask, block((5, 5), slice(0, 2), slice(0, 2)))


# --- boundary ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("width", "expected"), [(0, 0), (1, 49 - 25), (2, 49 - 9), (3, 49 - 1), (4, 49), (9, 49)])
def test_boundary_width_sets_the_band(width: int, expected: int) -> None:
    inst = instance_map([box(2, 2, 9, 9)], (11, 11))  # 7 x 7
    band = boundary_band(inst, width)
    assert band.dtype == bool
    assert int(band.sum()) == expected
    assert not (band & (inst == 0)).any(), "the band is inside the building"
    if 0 < width < 4:
        core = np.zeros_like(band)
        core[2 + width : 9 - width, 2 + width : 9 - width] = True
        np.testing.assert_array_equal(band, (inst > 0) & ~core)


def test_touching_squares_meet_and_boundary_covers_both_sides() -> None:
    fps = [box(1, 1, 4, 4), box(4, 1, 7, 4)]  # columns 1-3 and 4-6, rows 1-3
    t = make_targets(fps, (6, 9), TargetSettings(boundary_width=1, contact_width=1))
    assert (t.instances[1:4, 1:4] == 1).all() and (t.instances[1:4, 4:7] == 2).all()
    assert (t.instances[1:4, 3] == 1).all() and (t.instances[1:4, 4] == 2).all()  # they meet
    # both sides of the shared edge are boundary: only each square's centre is left as seed
    expected = t.mask.copy()
    expected[2, 2] = expected[2, 5] = 0
    np.testing.assert_array_equal(t.boundary, expected)
    seeds = t.mask & ~t.boundary & ~t.contact
    assert int(seeds.sum()) == 2
    # contact: the two columns along the shared edge, one row above and below (Chebyshev reach 1)
    expected_contact = np.zeros((6, 9), np.uint8)
    expected_contact[0:5, 3:5] = 1
    np.testing.assert_array_equal(t.contact, expected_contact)


def test_image_border_is_not_an_edge() -> None:
    inst = instance_map([box(0, 0, 5, 5)], (5, 8))  # fills the left of the tile
    band = boundary_band(inst, 1)
    expected = np.zeros((5, 8), bool)
    expected[:, 4] = True  # only the side facing the background
    np.testing.assert_array_equal(band, expected)


# --- contact -------------------------------------------------------------------------------------


def test_one_pixel_gap_is_contact_and_nothing_far_away() -> None:
    fps = [box(1, 1, 4, 4), box(5, 1, 8, 4), box(14, 10, 17, 13)]  # gap at column 4; a third far off
    inst = instance_map(fps, (15, 20))
    c1 = contact_map(inst, 1)
    expected = np.zeros((15, 20), bool)
    expected[0:5, 4] = True  # the gap column, with the two diagonal corners above and below
    np.testing.assert_array_equal(c1, expected)
    assert not inst[c1].any(), "with reach 1 only background gap pixels are within 1 px of both"
    c3 = contact_map(inst, 3)
    assert c3[1:4, 4].all()
    rows, cols = np.nonzero(c3)
    assert rows.max() <= 3 + 3 and cols.min() >= 4 - 2 and cols.max() <= 4 + 2  # near the gap
    assert not c3[8:, 10:].any(), "the isolated building gets no contact"


def test_gap_wider_than_twice_the_reach_is_no_contact() -> None:
    # gap of 5 px (columns 4-8): reach 3 flags it (5 <= 2*3-1), reach 2 does not (5 > 3)
    inst = instance_map([box(0, 0, 4, 3), box(9, 0, 13, 3)], (3, 13))
    assert contact_map(inst, 3)[:, 4:9].any()
    assert not contact_map(inst, 2).any()
    assert not contact_map(inst, 0).any()


def test_contact_ignores_a_lone_building_and_background() -> None:
    inst = instance_map([box(3, 3, 8, 8)], (12, 12))
    assert not contact_map(inst, 4).any()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_bands_match_their_definition(seed: int) -> None:
    rng = np.random.default_rng(seed)
    fps = []
    for _ in range(12):
        c, r = rng.integers(0, 28, size=2)
        w, h = rng.integers(1, 8, size=2)
        fps.append(box(int(c), int(r), int(c + w), int(r + h)))
    inst = instance_map(fps, (30, 32))
    for width in (1, 2, 3):
        np.testing.assert_array_equal(boundary_band(inst, width), brute_boundary(inst, width))
        np.testing.assert_array_equal(contact_map(inst, width), brute_contact(inst, width))


def test_bands_accept_any_integer_dtype() -> None:
    inst = instance_map([box(0, 0, 2, 2), box(3, 0, 5, 2)], (3, 5))
    for dtype in (np.uint8, np.uint16, np.int64):
        np.testing.assert_array_equal(contact_map(inst.astype(dtype), 1), contact_map(inst, 1))
        np.testing.assert_array_equal(boundary_band(inst.astype(dtype), 1), boundary_band(inst, 1))
    with pytest.raises(ValueError):
        contact_map(inst.astype(float), 1)


# --- make_targets and settings -------------------------------------------------------------------


def test_make_targets_channels_and_stack() -> None:
    fps = [box(1, 1, 6, 6), box(6, 1, 11, 6)]
    t = make_targets(fps, (8, 12))
    assert isinstance(t, Targets) and t.shape == (8, 12)
    assert t.instances.dtype == np.int32
    for arr in (t.mask, t.boundary, t.contact):
        assert arr.dtype == np.uint8 and set(np.unique(arr).tolist()) <= {0, 1}
    np.testing.assert_array_equal(t.mask, rasterize_footprints(fps, (8, 12)))
    assert not (t.boundary & ~t.mask).any()
    stack = t.stack()
    assert stack.shape == (3, 8, 12) and stack.dtype == np.uint8
    np.testing.assert_array_equal(stack[0], t.mask)
    np.testing.assert_array_equal(stack[1], t.boundary)
    np.testing.assert_array_equal(stack[2], t.contact)
    rgb = t.rgb()
    assert rgb.shape == (8, 12, 3) and set(np.unique(rgb).tolist()) <= {0, 255}
    np.testing.assert_array_equal(rgb[..., 0] // 255, t.mask)


def test_settings_defaults_and_validation() -> None:
    s = TargetSettings()
    assert (s.boundary_width, s.contact_width) == (2, 3)
    assert s.to_dict() == {"boundary_width": 2, "contact_width": 3}
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(RooftraceError, match="boundary_width"):
            TargetSettings(boundary_width=bad)  # type: ignore[arg-type]
    with pytest.raises(RooftraceError, match="contact_width"):
        TargetSettings(contact_width=-2)


def test_many_buildings_on_a_512_tile_keep_their_invariants() -> None:
    """Hundreds of overlapping buildings: the boundary stays inside the mask, every visible
    building has boundary pixels, and contact appears only near two different buildings."""
    rng = np.random.default_rng(7)
    fps = []
    for _ in range(300):
        c, r = rng.integers(0, 500, size=2)
        w, h = rng.integers(6, 30, size=2)
        fps.append(box(int(c), int(r), int(c + w), int(r + h)))
    t = make_targets(fps, (512, 512))
    assert not (t.boundary.astype(bool) & ~t.mask.astype(bool)).any()
    visible = np.unique(t.instances[t.instances > 0])
    with_boundary = np.unique(t.instances[t.boundary.astype(bool)])
    assert set(visible) == set(with_boundary)
    assert t.contact.any()
    assert np.array_equal(t.mask.astype(bool), t.instances > 0)
