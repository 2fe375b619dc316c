"""Pixels to map coordinates and back (``rooftrace.imagery.georef``, ``rooftrace.imagery.resample``): pure
functions, checked against shapely's own affine transform and exact scale factors. The commands that use them
on georeferenced tiles are tested in ``tests/inference/test_georef_predict.py``."""

from __future__ import annotations

import shapely
from shapely.geometry import box


def test_pixels_to_map_is_each_geometrys_own_affine_transform():
    from shapely import affinity

    from rooftrace.imagery.georef import pixels_to_map

    geoms = [box(0, 0, 3, 2), box(5, 5, 9, 6), shapely.Polygon([(1, 1), (4, 1), (4, 4), (2, 4)], [[(2, 2), (3, 2), (3, 3)]])]
    ts = [(0.3, 0.0, 500000.0, 0.0, -0.3, 3000000.0), (2.0, 0.5, -3.0, 0.1, -1.0, 7.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)]
    got = pixels_to_map(geoms, ts)
    for g, t, out in zip(geoms, ts, got):
        a, b, c, d, e, f = t
        assert shapely.equals_exact(out, affinity.affine_transform(g, [a, b, d, e, c, f]), tolerance=1e-9)
    assert shapely.equals(geoms[0], box(0, 0, 3, 2))  # the input is not changed


def test_footprints_come_back_to_the_tile_grid_exactly():
    from rooftrace.imagery.resample import footprints_to_grid, resample_factor

    assert resample_factor(0.3, 0.3) == 1.0 and resample_factor(0.305, 0.3) == 1.0  # within 2 %: as they are
    assert resample_factor(0.15, 0.3) == 0.5 and resample_factor(None, 0.3) == 1.0 and resample_factor(0.15, None) == 1.0
    fps, scores = footprints_to_grid([box(0, 0, 10, 5), box(160, 100, 171, 110), box(170, 170, 171, 171)], [0.9, 0.8, 0.7],
                                     (171, 171), (512, 512))
    f = 512 / 171
    assert shapely.equals_exact(fps[0], box(0, 0, 10 * f, 5 * f), 1e-9) and scores == [0.9, 0.8, 0.7]
    assert all(0 <= v <= 512 for g in fps for v in shapely.bounds(g))
