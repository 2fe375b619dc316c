"""Labels onto chips: reading the footprints file (any CRS, checked against the chips' area), reprojecting
them exactly into each chip's CRS, and clipping them to each chip, in the chip's pixels."""

from __future__ import annotations

import math
import warnings
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import shapely
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError

from rooftrace.core.errors import RooftraceError
from rooftrace.geometry.shapes import clean_footprint
from rooftrace.imagery.georef import (
    WEB_MERCATOR,
)
from rooftrace.labels.geojson import (
    check_degrees,
    geojson_crs_member,
    geoms_from_wkb,
    parse_crs_option,
)
from rooftrace.labels.records import LoadReport
from rooftrace.prepare.chip_sources import COCO_GRID, MIN_PIECE_PX, Chip, chip_polygon


def to_crs(geoms: np.ndarray, src: CRS, dst: CRS) -> np.ndarray:
    if src == dst:
        return geoms
    t = Transformer.from_crs(src, dst, always_xy=True)
    return shapely.transform(geoms, lambda xy: np.column_stack(t.transform(xy[:, 0], xy[:, 1])))


def read_footprints(path: Path, labels_crs: str | None, report: LoadReport) -> tuple[np.ndarray, CRS]:
    """Building polygons of a GeoJSON/GeoPackage (cleaned, in their CRS) and that CRS."""
    from rooftrace.labels.geojson import read_vector_raw

    if not path.exists():
        raise RooftraceError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Non closed ring detected")  # closed and noted below
            meta, _, wkb, _ = read_vector_raw(path)
    except RooftraceError:
        raise
    except Exception as exc:  # pyogrio raises DataSourceError, DataLayerError, CRSError...
        raise RooftraceError(f"{path}: not a readable vector file ({str(exc).splitlines()[0]})") from None
    declared = geojson_crs_member(path)
    if labels_crs is None and declared is not None:
        try:
            CRS.from_user_input(declared)
        except CRSError:
            raise RooftraceError(f"{path}: its CRS {declared!r} is not one pyproj knows; pass --labels-crs with the CRS "
                                 "its coordinates are in") from None
    if labels_crs is not None:
        crs = parse_crs_option(labels_crs, "--labels-crs")
        if meta.get("crs") and CRS.from_user_input(meta["crs"]) != crs:
            report.note(f"the file declares {meta['crs']}; --labels-crs {labels_crs} is used instead")
    elif not meta.get("crs"):
        raise RooftraceError(f"{path}: declares no CRS; pass --labels-crs with the CRS its coordinates are in "
                             "(EPSG:4326 for longitude/latitude)")
    else:
        try:
            crs = CRS.from_user_input(meta["crs"])
        except CRSError:
            raise RooftraceError(f"{path}: its CRS {meta['crs']!r} is not one pyproj knows; pass --labels-crs") from None
    geoms = geoms_from_wkb(wkb, report)
    kept = []
    for n, g in enumerate(geoms):
        if g is None and wkb is not None and wkb[n] is not None:
            continue  # unreadable: reported by geoms_from_wkb
        if g is None or g.is_empty:
            report.skip(f"feature {n}: no geometry; skipped", counter="dropped: no geometry")
            continue
        if shapely.get_type_id(g) not in (3, 6, 7):  # Polygon, MultiPolygon, GeometryCollection
            report.skip(f"feature {n}: a {g.geom_type}, not a polygon; skipped", counter="dropped: not a polygon")
            continue
        cleaned = clean_footprint(g)
        report.add_outcome(cleaned.outcome, f"feature {n}")
        if cleaned.footprint is not None:
            kept.append(cleaned.footprint)
    if not kept:
        raise RooftraceError(f"{path}: holds no building polygons")
    arr = np.asarray(kept, dtype=object)
    check_degrees(path, arr, crs, declared=labels_crs is not None or declared is not None)
    return arr, crs


def shift_footprints(footprints: np.ndarray, crs: CRS, east: float, north: float) -> tuple[np.ndarray, CRS]:
    """Move footprints ``east`` and ``north`` metres on the ground; returns them in Web Mercator, whose
    units are ground metres times ``1 / cos(latitude)`` (taken at the footprints' centre)."""
    from rooftrace.imagery.georef import WEB_MERCATOR, WGS84

    centre = shapely.get_coordinates(shapely.centroid(shapely.union_all(to_crs(shapely.envelope(footprints), crs, WGS84))))[0]
    k = 1.0 / math.cos(math.radians(float(centre[1])))
    moved = shapely.transform(to_crs(footprints, crs, WEB_MERCATOR), lambda xy: xy + np.array([east * k, north * k]))
    return moved, WEB_MERCATOR


def chip_pieces(chips: list[Chip], footprints: np.ndarray, crs: CRS, counts: Counter) -> np.ndarray:
    """Fill each chip's ``pieces``: its buildings clipped to it, in the written image's pixels. Returns
    a boolean array: which buildings have a piece in some chip."""
    in_chip = np.zeros(len(footprints), dtype=bool)
    by_crs: dict[str, list[Chip]] = defaultdict(list)
    for c in chips:
        by_crs[c.georef.crs.to_wkt()].append(c)
    for group in by_crs.values():
        ccrs = group[0].georef.crs
        geoms = to_crs(footprints, crs, ccrs)
        finite = np.isfinite(shapely.get_coordinates(geoms)).all()  # outside a projection's domain
        tree = shapely.STRtree(geoms)
        for c in group:
            idx = tree.query(chip_polygon(c), predicate="intersects")
            if len(idx) == 0:
                continue
            inv = ~c.out_transform
            full = shapely.transform(geoms[idx], lambda xy: np.column_stack(
                (inv.a * xy[:, 0] + inv.b * xy[:, 1] + inv.c, inv.d * xy[:, 0] + inv.e * xy[:, 1] + inv.f)))
            if not finite:
                full = np.asarray([g if np.isfinite(shapely.get_coordinates(g)).all() else shapely.Polygon() for g in full],
                                  dtype=object)
            box = shapely.box(0, 0, c.out_w, c.out_h)
            areas = shapely.area(full)
            inside = shapely.contains_properly(box, shapely.centroid(full))
            clipped = shapely.set_precision(shapely.intersection(full, box), COCO_GRID)
            for k, g, a, cin, whole in zip(idx, clipped, areas, inside, shapely.within(full, box)):
                cleaned = clean_footprint(g)
                if cleaned.footprint is None:
                    continue
                piece = cleaned.footprint
                if piece.area < MIN_PIECE_PX:
                    counts["sliver"] += 1
                    continue
                if not whole:
                    counts["clipped"] += 1
                in_chip[k] = True
                c.pieces.append((int(k), piece, float(piece.area / a) if a > 0 else 0.0, bool(cin)))
    return in_chip


def mapped_area(aoi: Path | None, footprints: np.ndarray, crs: CRS, chip_width: float, report: LoadReport) -> shapely.Geometry:
    """The mapped area in Web Mercator: the AOI file's polygons, else the labels' convex hull grown by half a chip."""
    if aoi is not None:
        geoms, acrs = read_footprints(aoi, None, LoadReport(path=str(aoi)))
        return shapely.union_all(to_crs(geoms, acrs, WEB_MERCATOR))
    pts = shapely.multipoints(shapely.get_coordinates(footprints))
    return shapely.convex_hull(to_crs(np.array([pts], dtype=object), crs, WEB_MERCATOR)[0]).buffer(chip_width / 2)
