"""Areas in square metres on the ground, whatever the CRS the polygons are in (torch-free).

:func:`area_m2` is what every vector output of rooftrace writes as ``area_m2``:

- **Geographic CRS** (longitude/latitude): the geodesic area on the CRS's own ellipsoid
  (:meth:`pyproj.Geod.polygon_area_perimeter`, Karney's algorithm, exact to floating point), holes
  subtracted, the parts of a multi-polygon added.
- **Projected CRS**: the vertices are taken back to the CRS's own geodetic CRS (its inverse
  projection, no datum shift; one vectorised PROJ call over every vertex of every polygon) and the
  geodesic area is taken there. So the area is the true one in every projection: EPSG:3857 at
  60°N (whose squared metres are 4x the ground's) and UTM (0.04 % off at a zone's edge) alike.
- **A CRS with no ellipsoid** (an engineering or local CRS): the planar area times the square of
  the CRS's linear unit in metres.
- **No CRS**: the planar area times ``metres_per_unit ** 2`` when the caller knows the size of a
  map unit (a scene without a CRS but with ``--gsd``), else NaN (unknown).

The geodesic step is one C call per ring in a tight loop (about 8 µs a ring); everything else is
vectorised over the whole array, so the tens of thousands of buildings of a scene take well under a
second (measured in ``tests/gis/test_gis_outputs.py::test_area_m2_is_fast_for_a_scene_of_buildings``).
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import numpy as np
import shapely
from pyproj import CRS, Geod, Transformer

__all__ = ["area_m2", "geodesic_area"]


def _lonlat_degrees(crs: CRS) -> bool:
    """Whether a geographic CRS's coordinates are degrees (almost all are; grads are not)."""
    axes = crs.axis_info or []
    return all(a.unit_name in ("degree", "degree minute second hemisphere") or abs(a.unit_conversion_factor - np.pi / 180) < 1e-12
               for a in axes[:2]) if axes else True


def geodesic_area(lonlat: np.ndarray, geod: Geod) -> np.ndarray:
    """Geodesic areas (m², non-negative) of polygons or multi-polygons in longitude/latitude degrees
    (x = longitude), on ``geod``'s ellipsoid: exterior rings less their holes, parts added.
    Other geometry types (and empty ones) have area 0."""
    geoms = np.asarray(lonlat, dtype=object)
    out = np.zeros(len(geoms), dtype=np.float64)
    if len(geoms) == 0:
        return out
    parts, owner = shapely.get_parts(geoms, return_index=True)
    polys = shapely.get_type_id(parts) == 3
    parts, owner = parts[polys], owner[polys]
    if len(parts) == 0:
        return out
    rings, ring_owner = shapely.get_rings(parts, return_index=True)  # exterior first, then the holes, part by part
    first = np.ones(len(rings), dtype=bool)
    first[1:] = ring_owner[1:] != ring_owner[:-1]
    sign = np.where(first, 1.0, -1.0)
    coords, vertex_ring = shapely.get_coordinates(rings, return_index=True)
    bounds = np.searchsorted(vertex_ring, np.arange(len(rings) + 1))
    lon, lat = coords[:, 0], coords[:, 1]
    area = geod.polygon_area_perimeter
    ring_area = np.fromiter((abs(area(lon[a:b], lat[a:b])[0]) if b - a >= 4 else 0.0
                             for a, b in pairwise(bounds)), dtype=np.float64, count=len(rings))
    np.add.at(out, owner[ring_owner], sign * ring_area)
    return np.maximum(out, 0.0)


def _transformer(crs: CRS, to: CRS) -> Transformer:
    return Transformer.from_crs(crs, to, always_xy=True)


def area_m2(geoms: Any, crs: Any = None, metres_per_unit: float | None = None) -> np.ndarray:
    """Ground areas in square metres of ``geoms`` (an array of shapely geometries, x = east / longitude)
    given in ``crs`` (anything :meth:`pyproj.CRS.from_user_input` takes, or ``None``); see the module
    docstring for the method in each kind of CRS.

    Args:
        metres_per_unit: For ``crs=None`` only: the size of one map unit in metres (else NaN areas).

    Returns:
        float64 array, one area per geometry (0 for empty geometries).
    """
    geoms = np.asarray(geoms, dtype=object)
    if geoms.ndim == 0:
        geoms = geoms.reshape(1)
    if len(geoms) == 0:
        return np.zeros(0, dtype=np.float64)
    if crs is None:
        if metres_per_unit is None:
            return np.full(len(geoms), np.nan)
        return shapely.area(geoms) * float(metres_per_unit) ** 2
    crs = CRS.from_user_input(crs)
    if crs.is_compound:  # the horizontal part
        crs = next((c for c in crs.sub_crs_list if c.is_geographic or c.is_projected), crs)
    geod = crs.get_geod()
    if geod is None:  # no ellipsoid: a local or engineering CRS, in its linear unit
        unit = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
        return shapely.area(geoms) * unit * unit
    if crs.is_geographic and _lonlat_degrees(crs):
        return geodesic_area(geoms, geod)
    base = crs.geodetic_crs or crs
    if not (base.is_geographic and _lonlat_degrees(base)):  # grads (NTF Paris): the same datum in degrees
        from pyproj.crs import GeographicCRS

        base = GeographicCRS(datum=base.datum)
    tr = _transformer(crs, base)
    lonlat = shapely.transform(geoms, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
    return geodesic_area(lonlat, base.get_geod() or geod)
