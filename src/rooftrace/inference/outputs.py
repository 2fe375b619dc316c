"""Map outputs of tile prediction: ``predictions.geojson`` in EPSG:4326 and ``predictions.gpkg`` in the
tiles' CRS when the tiles are georeferenced or located by their web-map names. Both carry each
building's ``score`` and ``area_m2`` (ground square metres, :func:`rooftrace.geometry.areas.area_m2`) and
the run's provenance (:func:`rooftrace.gis.provenance.make_provenance`), where the scene writers put it."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rooftrace.core.errors import RooftraceError
from rooftrace.core.files import atomic_write_text, write_error_reason
from rooftrace.geometry.shapes import geojson_features
from rooftrace.gis.provenance import crs_label
from rooftrace.gis.writers import LONLAT_DECIMALS
from rooftrace.imagery.georef import Georef
from rooftrace.inference.overlaps import duplicates
from rooftrace.labels.records import ImageKey, LabelSet

#: Output names: footprints in longitude/latitude (or, when no tile is georeferenced, in pixels), in
#: the tiles' CRS, and in pixels for the tiles of a mixed folder that are not georeferenced.
GEOJSON_NAME = "predictions.geojson"


GPKG_NAME = "predictions.gpkg"


PIXEL_GEOJSON_NAME = "predictions-pixels.geojson"


@dataclass
class MapOutputs:
    """The map-coordinate outputs of a folder of tiles (see :func:`write_map_outputs`)."""

    files: list[Path]
    n_located: int  #: tiles with a georeference (each tile that could be read)
    n_unlocated: int  #: readable tiles without one (pixel coordinates only)
    n_features: int
    crs: str  #: the GeoPackage's CRS (the first georeferenced tile's)
    origins: dict[str, int]  #: tiles by where their georeference came from (``geotiff``, ``tile-name``)
    reprojected: list[str] = field(default_factory=list)  #: other tile CRSs, reprojected into ``crs``
    #: Copies of a building from overlapping tiles left out of the map outputs (:mod:`rooftrace.inference.overlaps`),
    #: and the buildings they were copies of.
    n_merged: int = 0
    n_merged_buildings: int = 0


def write_map_outputs(labels: LabelSet, georefs: dict[ImageKey, Georef], out_dir: Path,
                      provenance: dict[str, Any] | None = None) -> MapOutputs | None:
    """Write the footprints of the georeferenced tiles in map coordinates, atomically.

    - ``predictions.geojson``: RFC 7946 GeoJSON, longitude/latitude (EPSG:4326, no ``crs`` member),
      exterior rings counter-clockwise, 8 decimals; per feature ``image_id``, ``file_name``,
      ``score`` and ``area_m2``; ``provenance`` in the top-level ``description`` (JSON text, which
      GDAL reads as layer metadata ``DESCRIPTION``) and ``rooftrace`` members.
    - ``predictions.gpkg``: a GeoPackage (layer ``predictions``, same fields) in the first
      georeferenced tile's CRS; tiles in another CRS are reprojected into it; ``provenance`` in
      the layer metadata (item ``rooftrace``).

    ``area_m2`` is measured in each tile's own CRS (geodesic, so the same in any CRS).

    Where tiles overlap (several zoom levels of one place, overlapping cuts), the copies of a building
    (IoU >= 0.5 between footprints of different tiles) are merged to the highest-scoring one
    (:func:`rooftrace.inference.overlaps.duplicates`); ``submission.csv`` and the COCO results keep every tile's own.

    Footprints go from each tile's pixels through its own affine transform
    (:func:`rooftrace.imagery.georef.pixels_to_map`, vectorised over every vertex), then from each CRS to
    the output's (pyproj, x = east). Returns ``None`` (and writes nothing) when no tile is located.
    """
    import pyogrio
    import shapely

    from rooftrace.geometry.areas import area_m2
    from rooftrace.gis.provenance import (
        geojson_head,
        provenance_metadata,
        with_crs,
    )
    from rooftrace.imagery.georef import WGS84, pixels_to_map, reproject_geoms

    order = [img.key for img in labels if img.key in georefs]
    if not order:
        return None
    first_crs = georefs[order[0]].crs
    groups: dict[str, list[ImageKey]] = {}
    for k in order:
        groups.setdefault(georefs[k].crs.to_wkt(), []).append(k)
    parts_ll, parts_crs, parts_area, keys_out, scores_out = [], [], [], [], []
    reprojected = []
    for keys in groups.values():
        crs = georefs[keys[0]].crs
        if crs != first_crs:
            reprojected.append(crs_label(crs))
        geoms, transforms = [], []
        for k in keys:
            img = labels[k]
            if not img.footprints:
                continue
            t = georefs[k].transform
            geoms.extend(img.footprints)
            transforms.extend([(t.a, t.b, t.c, t.d, t.e, t.f)] * len(img.footprints))
            keys_out.extend([k] * len(img.footprints))
            scores_out.extend(img.scores or [1.0] * len(img.footprints))
        if not geoms:
            continue
        in_crs = pixels_to_map(np.asarray(geoms, dtype=object), np.asarray(transforms))
        parts_area.append(area_m2(in_crs, crs))
        parts_crs.append(reproject_geoms(in_crs, crs, first_crs))
        parts_ll.append(reproject_geoms(in_crs, crs, WGS84))
    # features in the tiles' file order (the groups above are by CRS)
    empty = np.empty(0, dtype=object)
    g_crs = np.concatenate(parts_crs) if parts_crs else empty
    g_ll = np.concatenate(parts_ll) if parts_ll else empty
    rank = {k: n for n, k in enumerate(order)}
    sort = np.argsort(np.asarray([rank[k] for k in keys_out], dtype=np.int64), kind="stable")
    areas = np.concatenate(parts_area) if parts_area else np.empty(0)
    g_crs, g_ll, areas = g_crs[sort], g_ll[sort], np.round(areas[sort], 3)
    keys_out = [keys_out[n] for n in sort]
    scores = np.asarray([round(float(scores_out[n]), 4) for n in sort], dtype=np.float64)
    # Overlapping tiles (several zoom levels of one place, overlapping cuts): each building once.
    keep, n_groups = duplicates(g_crs, keys_out, scores)
    n_merged = int((~keep).sum())
    if n_merged:
        g_crs, g_ll, areas, scores = g_crs[keep], g_ll[keep], areas[keep], scores[keep]
        keys_out = [k for k, y in zip(keys_out, keep) if y]
    names = [labels[k].file_name or "" for k in keys_out]

    # GeoJSON (RFC 7946): lon/lat, right-hand rule, no crs member.
    g_ll = shapely.orient_polygons(shapely.transform(g_ll, lambda xy: np.round(xy, LONLAT_DECIMALS)), exterior_cw=False)
    feats = geojson_features(g_ll, [f'{{"image_id": {json.dumps(k)}, "file_name": {json.dumps(n)}, "score": {sc}, "area_m2": {a}}}'
                                    for k, n, sc, a in zip(keys_out, names, scores.tolist(), areas.tolist())])
    head = geojson_head("predictions", with_crs(provenance, WGS84),
                        {"coordinates": "EPSG:4326", "note": "longitude, latitude (RFC 7946); image_id names the tile"})
    text = head + ",\n".join(feats) + "\n]}\n"
    files = [atomic_write_text(out_dir / GEOJSON_NAME, text, force=True)]

    # GeoPackage in the (first) tiles' CRS.
    gpkg = out_dir / GPKG_NAME
    tmp = out_dir / f".{gpkg.stem}.{os.getpid()}.tmp.gpkg"
    ids = np.asarray(keys_out, dtype=np.int64) if all(isinstance(k, int) for k in keys_out) else np.asarray([str(k) for k in keys_out], dtype=object)
    kinds = set(shapely.get_type_id(g_crs).tolist()) if len(g_crs) else {3}
    try:
        pyogrio.raw.write(tmp, shapely.to_wkb(g_crs) if len(g_crs) else np.empty(0, dtype=object),
                          [ids, np.asarray(names, dtype=object), scores, areas], ["image_id", "file_name", "score", "area_m2"],
                          layer="predictions", driver="GPKG", geometry_type="Polygon" if kinds == {3} else "Unknown",
                          crs=first_crs.to_wkt(), layer_metadata=provenance_metadata(with_crs(provenance, first_crs)))
        os.replace(tmp, gpkg)
    except (OSError, pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError) as exc:  # a full disk: name the output
        raise RooftraceError(f"{gpkg}: cannot write it ({write_error_reason(exc, gpkg, (tmp,))})") from None
    finally:
        for q in tmp.parent.glob(tmp.name + "*"):
            q.unlink(missing_ok=True)
    files.append(gpkg)
    origins: dict[str, int] = {}
    for k in order:
        origins[georefs[k].origin] = origins.get(georefs[k].origin, 0) + 1
    return MapOutputs(files, len(order), 0, len(g_crs), crs_label(first_crs), origins, reprojected, n_merged, n_groups)
