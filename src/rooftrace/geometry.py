"""Polygon repair and the one conversion between pixel and map coordinates.

Pixel coordinates throughout rooftrace: ``x`` is the column, ``y`` the row, the origin is the
top-left corner of the top-left pixel, so pixel ``(c, r)`` covers ``[c, c + 1) x [r, r + 1)`` and
its centre is ``(c + 0.5, r + 0.5)``. Map coordinates are in the units of a raster's CRS and are
reached only through that raster's affine ``transform`` (the rasterio convention: ``transform *
(x, y)`` gives map coordinates of the pixel-space point ``(x, y)``).

This module does not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import shapely
from affine import Affine
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

#: The areal geometry of one building: a Polygon (possibly with holes) or, for labels that come
#: in several parts, a MultiPolygon. Always valid and of positive area once it is in a LabelSet.
Footprint = Polygon | MultiPolygon


class Outcome:
    """Names for what :func:`clean_footprint` did to a geometry (used as report counters)."""

    KEPT = "kept"
    REPAIRED = "repaired"
    DROPPED_FEW_POINTS = "dropped: ring with fewer than 3 points"
    DROPPED_EMPTY = "dropped: empty or zero-area geometry"
    DROPPED_NOT_FINITE = "dropped: NaN or infinite coordinates"
    DROPPED_UNREPAIRABLE = "dropped: could not be repaired"


@dataclass(frozen=True)
class Cleaned:
    """Result of :func:`clean_footprint`: the usable footprint (or ``None``) and what happened."""

    footprint: Footprint | None
    outcome: str


def _areal_parts(geom: BaseGeometry) -> list[Polygon]:
    """Polygons of positive area inside any geometry (collections are flattened)."""
    parts = shapely.get_parts(geom)
    out: list[Polygon] = []
    for part in parts:
        if isinstance(part, Polygon):
            if not part.is_empty and part.area > 0:
                out.append(part)
        elif isinstance(part, (MultiPolygon, shapely.GeometryCollection)):
            out.extend(_areal_parts(part))
    return out


def clean_footprint(geom: BaseGeometry | None, min_area: float = 0.0) -> Cleaned:
    """Return a valid areal footprint for ``geom`` and say whether it was kept, repaired or dropped.

    Invalid geometries (self-intersections, bow-ties, repeated points) are repaired with
    :func:`shapely.make_valid`; what is left is the union of its areal parts. A repair that
    leaves nothing of positive area drops the geometry. Coordinates that are NaN or infinite are
    never repaired: the geometry is dropped, because no guess about where it should be is safe.

    Args:
        geom: Any shapely geometry (usually a Polygon or MultiPolygon) in pixel or map units.
        min_area: Footprints whose area is not above this are dropped as empty.
    """
    if geom is None or geom.is_empty:
        return Cleaned(None, Outcome.DROPPED_EMPTY)
    coords = shapely.get_coordinates(geom)
    if not np.isfinite(coords).all():
        return Cleaned(None, Outcome.DROPPED_NOT_FINITE)
    if geom.has_z:
        geom = shapely.force_2d(geom)
    outcome = Outcome.KEPT
    if not geom.is_valid:
        outcome = Outcome.REPAIRED
        geom = shapely.make_valid(geom)
    parts = _areal_parts(geom)
    if outcome == Outcome.KEPT and not isinstance(geom, (Polygon, MultiPolygon)):
        outcome = Outcome.REPAIRED
    if not parts:
        return Cleaned(None, Outcome.DROPPED_EMPTY if outcome == Outcome.KEPT else Outcome.DROPPED_UNREPAIRABLE)
    footprint: Footprint = parts[0] if len(parts) == 1 else shapely.union_all(parts)
    if not isinstance(footprint, (Polygon, MultiPolygon)):  # pragma: no cover - defensive
        footprint = MultiPolygon(_areal_parts(footprint))
    if footprint.area <= min_area:
        return Cleaned(None, Outcome.DROPPED_EMPTY)
    return Cleaned(footprint, outcome)


def polygon_from_rings(rings: Sequence[Sequence[tuple[float, float]]]) -> tuple[BaseGeometry | None, int]:
    """Build one geometry from rings that each outline a part of one object (COCO semantics).

    COCO polygon segmentations list one or more *outer* rings of one object; they are not holes.
    Rings with fewer than 3 distinct points are skipped and counted.

    Returns:
        ``(geometry or None, number of rings skipped for having fewer than 3 points)``.
    """
    polys: list[Polygon] = []
    skipped = 0
    for ring in rings:
        pts = np.asarray(ring, dtype=float).reshape(-1, 2)
        if len(pts) >= 2 and np.array_equal(pts[0], pts[-1]):
            pts = pts[:-1]
        if len(np.unique(pts, axis=0)) < 3 or not np.isfinite(pts).all():  # readers report NaN/inf before this
            skipped += 1
            continue
        polys.append(Polygon(pts))
    if not polys:
        return None, skipped
    if len(polys) == 1:
        return polys[0], skipped
    return MultiPolygon(polys) if all(p.is_valid for p in polys) else shapely.GeometryCollection(polys), skipped


def exterior_rings(footprint: Footprint) -> list[np.ndarray]:
    """The exterior ring of each part, as ``(n, 2)`` arrays without the closing point."""
    return [np.asarray(p.exterior.coords)[:-1] for p in shapely.get_parts(footprint)]


def pixel_to_map(geom: BaseGeometry, transform: Affine) -> BaseGeometry:
    """Map a geometry in pixel coordinates to map coordinates through ``transform``."""
    return shapely.transform(geom, lambda xy: _apply(transform, xy))


def map_to_pixel(geom: BaseGeometry, transform: Affine) -> BaseGeometry:
    """Map a geometry in map coordinates to pixel coordinates through the inverse of ``transform``."""
    return shapely.transform(geom, lambda xy: _apply(~transform, xy))


def _apply(t: Affine, xy: np.ndarray) -> np.ndarray:
    x, y = xy[:, 0], xy[:, 1]
    return np.column_stack([t.a * x + t.b * y + t.c, t.d * x + t.e * y + t.f])


def footprints_bounds(footprints: Iterable[Footprint]) -> tuple[float, float, float, float] | None:
    """``(minx, miny, maxx, maxy)`` over all footprints, or ``None`` when there are none."""
    arr = np.asarray(list(footprints), dtype=object)
    if arr.size == 0:
        return None
    b = shapely.bounds(arr)
    return float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max())
