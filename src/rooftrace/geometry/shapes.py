"""Polygon repair and the one conversion between pixel and map coordinates.

Pixel coordinates throughout rooftrace: ``x`` is the column, ``y`` the row, the origin is the
top-left corner of the top-left pixel, so pixel ``(c, r)`` covers ``[c, c + 1) x [r, r + 1)`` and
its centre is ``(c + 0.5, r + 0.5)``. Map coordinates are in the units of a raster's CRS and are
reached only through that raster's affine ``transform`` (the rasterio convention: ``transform *
(x, y)`` gives map coordinates of the pixel-space point ``(x, y)``).

This module does not import torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import shapely
from affine import Affine
from shapely.geometry import MultiPolygon, Polygon, mapping
from shapely.geometry.base import BaseGeometry

#: The areal geometry of one building: a Polygon (possibly with holes) or, for labels that come
#: in several parts, a MultiPolygon. Always valid and of positive area once it is in a LabelSet.
Footprint = Polygon | MultiPolygon


#: Repair (:func:`shapely.make_valid`) of a ring costs time and memory that grow much faster than its
#: self-intersections: a scribble of 400 random points (about 6,000 crossings) takes half a minute, one
#: of 20,000 points more than 20 GB. A geometry with more crossings than this is dropped instead; real
#: footprints that need repair have a handful.
MAX_SELF_INTERSECTIONS = 500


def count_crossings(geom: BaseGeometry, limit: int = MAX_SELF_INTERSECTIONS) -> int:
    """Pairs of non-adjacent edges that meet, over all rings of ``geom``'s polygons, counted up to a
    little past ``limit`` (then the count stops, so that the cost stays bounded: about n log n for n edges)."""
    polys = [p for p in _flat_parts(geom) if isinstance(p, Polygon)]
    rings = shapely.get_rings(np.asarray(polys, dtype=object)) if polys else np.array([], dtype=object)
    starts, ends, ring_id, first, last = [], [], [], [], []
    offset = 0
    for k, ring in enumerate(rings):
        xy = shapely.get_coordinates(ring)
        if len(xy) < 2:
            continue
        n = len(xy) - 1
        starts.append(xy[:-1]); ends.append(xy[1:]); ring_id.append(np.full(n, k))
        first.append(np.full(n, offset)); last.append(np.full(n, offset + n - 1))
        offset += n
    if not offset:
        return 0
    segs = shapely.linestrings(np.stack([np.concatenate(starts), np.concatenate(ends)], axis=1))
    rid, lo, hi = np.concatenate(ring_id), np.concatenate(first), np.concatenate(last)
    tree = shapely.STRtree(segs)
    count, chunk = 0, 64
    for s in range(0, len(segs), chunk):
        a, b = tree.query(segs[s:s + chunk], predicate="intersects")
        a = a + s
        keep = a < b
        a, b = a[keep], b[keep]
        same = rid[a] == rid[b]
        adjacent = same & ((b - a == 1) | ((a == lo[a]) & (b == hi[a])))
        count += int((~adjacent).sum())
        if count > limit:
            break
    return count


def _flat_parts(geom: BaseGeometry) -> list[BaseGeometry]:
    out: list[BaseGeometry] = []
    for part in shapely.get_parts(geom):
        if isinstance(part, (MultiPolygon, shapely.GeometryCollection)):
            out.extend(_flat_parts(part))
        else:
            out.append(part)
    return out


class Outcome:
    """Names for what :func:`clean_footprint` did to a geometry (used as report counters)."""

    KEPT = "kept"
    REPAIRED = "repaired"
    DROPPED_FEW_POINTS = "dropped: ring with fewer than 3 points"
    DROPPED_EMPTY = "dropped: empty or zero-area geometry"
    DROPPED_NOT_FINITE = "dropped: NaN or infinite coordinates"
    DROPPED_UNREPAIRABLE = "dropped: could not be repaired"
    DROPPED_TANGLED = f"dropped: a scribble of more than {MAX_SELF_INTERSECTIONS} self-intersections, too tangled to repair"


def dropped_not_polygon(geom_type: str) -> str:
    """The outcome of a geometry that has no area by its type (a Point, a LineString, ...)."""
    return f"dropped: a {geom_type}, not a polygon"


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
    :func:`shapely.make_valid`; what is left is the union of its areal parts. A geometry with more
    than :data:`MAX_SELF_INTERSECTIONS` crossing edges (a scribble) is dropped instead, because its
    repair would take unbounded time and memory; one with no polygon in it (a Point, a LineString)
    is dropped as not a polygon. A repair that
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
    if not isinstance(geom, (Polygon, MultiPolygon)) and not any(isinstance(p, Polygon) for p in _flat_parts(geom)):
        # a Point, a LineString: nothing to repair
        return Cleaned(None, dropped_not_polygon(geom.geom_type))
    outcome = Outcome.KEPT
    if not geom.is_valid:
        outcome = Outcome.REPAIRED
        if count_crossings(geom) > MAX_SELF_INTERSECTIONS:  # make_valid would take minutes and gigabytes
            return Cleaned(None, Outcome.DROPPED_TANGLED)
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


def geojson_texts(geoms: Sequence[BaseGeometry | None] | np.ndarray) -> list[str]:
    """Each geometry as the text of a GeoJSON geometry object (``null`` for None), from GEOS's GeoJSON writer in
    one vectorised call (:func:`shapely.to_geojson`): 3.1x faster than building ``shapely.geometry.mapping``-style
    lists and ``json.dumps``-ing them, on the 180 outlines of the sample's test split (18,364 points). The same
    JSON as ``mapping`` gives, number for number (GEOS writes each double's shortest round-trip form), without
    spaces; an empty geometry goes through ``mapping`` (GEOS writes an empty polygon as ``[[]]``, GeoJSON's is ``[]``)."""
    arr = np.asarray(geoms, dtype=object)
    if len(arr) == 0:
        return []
    texts = shapely.to_geojson(arr).tolist()
    for k in np.flatnonzero(shapely.is_empty(arr)):
        texts[k] = json.dumps(mapping(arr[k]))
    return [t if t is not None else "null" for t in texts]


def geojson_features(geoms: Sequence[BaseGeometry | None] | np.ndarray, properties: Sequence[str | dict[str, Any]]) -> list[str]:
    """One GeoJSON Feature's text a geometry (:func:`geojson_texts`), with its properties: a dict (written with
    ``json.dumps``) or their JSON text already. Every GeoJSON file rooftrace writes builds its features here."""
    return [f'{{"type": "Feature", "properties": {p if isinstance(p, str) else json.dumps(p)}, "geometry": {t}}}'
            for p, t in zip(properties, geojson_texts(geoms))]


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
