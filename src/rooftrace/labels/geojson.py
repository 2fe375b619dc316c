"""GeoJSON (and GeoPackage) footprints, in map coordinates with their raster, or in pixels.

Map coordinates: a file of polygons in some CRS, read with pyogrio. Given the GeoTIFF the labels
belong to, the polygons are reprojected to the raster's CRS when it differs and converted to pixel
coordinates through the inverse of its transform; the scene becomes one image keyed by the
raster's stem. Without a raster they stay in map coordinates and the set records the CRS.

Pixel coordinates: rooftrace writes predictions of many tiles as one GeoJSON whose features carry
an ``image_id`` property and whose top level carries ``"rooftrace": {"coordinates": "pixel", "note":
...}`` (and the layer name ``pixel coordinates (not longitude-latitude)``, which GDAL and QGIS show:
a GeoJSON without a CRS would otherwise pass for longitude/latitude); such a file is read back as
pixel labels keyed by ``image_id``.
"""

from __future__ import annotations

import json
import math
import warnings
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import rasterio
import shapely
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError
from rasterio.errors import NotGeoreferencedWarning
from shapely.geometry import shape

from rooftrace.core.errors import RooftraceError
from rooftrace.core.files import atomic_write_text, read_json
from rooftrace.geometry.areas import area_m2
from rooftrace.geometry.shapes import geojson_features, map_to_pixel, pixel_to_map
from rooftrace.labels.begc import sort_keys
from rooftrace.labels.records import ImageKey, LabelSet, LoadReport, image_key
from rooftrace.labels.registry import LabelFormat, Probe

PIXEL_MARKER = {"coordinates": "pixel",
                "note": "x = column, y = row of the image named by image_id (origin: its top-left corner, y downwards); "
                        "NOT longitude/latitude: the images were not georeferenced"}
#: The layer name GDAL and QGIS show for a pixel-coordinate file (it would otherwise pass for EPSG:4326).
PIXEL_LAYER_NAME = "pixel coordinates (not longitude-latitude)"


_LAYER: ContextVar[str | None] = ContextVar("rooftrace_vector_layer", default=None)


@contextmanager
def vector_layer(name: str | None) -> Iterator[None]:
    """Within this block, vector files of several layers (a GeoPackage) are read at layer ``name`` (the
    CLI's ``--layer``); files of one layer are read as they are."""
    token = _LAYER.set(name)
    try:
        yield
    finally:
        _LAYER.reset(token)


def choose_layer(path: str | Path, layer: str | None = None) -> str | int:
    """The layer of a vector file to read: its only one, else ``layer`` (or :func:`vector_layer`'s).

    Raises:
        RooftraceError: Several layers and none chosen, or the chosen one is not there: the message lists them.
    """
    import pyogrio  # only to read (its import costs 0.5 s)

    layer = layer if layer is not None else _LAYER.get()
    try:
        layers = [str(row[0]) for row in pyogrio.list_layers(path)]
    except Exception as exc:  # noqa: BLE001 - pyogrio raises DataSourceError and GDAL errors
        raise RooftraceError(f"{path}: not a readable vector file ({str(exc).splitlines()[0]})") from None
    if len(layers) <= 1:
        return 0
    names = ", ".join(repr(n) for n in layers[:20]) + (f" and {len(layers) - 20} more" if len(layers) > 20 else "")
    if layer is None:
        raise RooftraceError(f"{path}: holds {len(layers)} layers ({names}); choose one with --layer NAME")
    if layer not in layers:
        raise RooftraceError(f"{path}: has no layer {layer!r}; its layers are {names}")
    return layer


def read_vector_raw(path: str | Path, layer: str | None = None, **kwargs: Any) -> tuple:
    """``pyogrio.raw.read`` of the layer :func:`choose_layer` picks (never silently the first of several); a GeoParquet
    file (``.parquet``, what ``predict-scene`` writes) is read with pyarrow into the same ``(meta, fids, wkb, fields)``,
    since pyogrio's GDAL may have no Parquet driver."""
    if Path(path).suffix.lower() == ".parquet":
        wkb, crs, fields = _geoparquet_columns(Path(path))
        meta = {"crs": crs.to_wkt() if crs is not None else None, "fields": np.asarray(list(fields), dtype=object)}
        fids = np.arange(len(wkb)) if kwargs.get("return_fids") else None
        return meta, fids, wkb, list(fields.values())
    import pyogrio.raw

    return pyogrio.raw.read(path, layer=choose_layer(path, layer), **kwargs)


def is_pixel_geojson(data: Any) -> bool:
    """Whether parsed GeoJSON is rooftrace's multi-image, pixel-coordinate kind."""
    return isinstance(data, dict) and data.get("rooftrace", {}).get("coordinates") == "pixel"


def reproject(geoms: np.ndarray, src: CRS, dst: CRS) -> np.ndarray:
    """Reproject an array of shapely geometries between CRSs (x/y in each CRS's axis order: east, north)."""
    if src == dst:
        return geoms
    t = Transformer.from_crs(src, dst, always_xy=True)
    return shapely.transform(geoms, lambda xy: np.column_stack(t.transform(xy[:, 0], xy[:, 1])))


def geoms_from_wkb(wkb: np.ndarray | None, report: LoadReport) -> np.ndarray:
    """Geometries of a vector file's features; a ring that is not closed is closed (with a note naming
    the feature), and a geometry that cannot be read at all is skipped (``None``, reported)."""
    if wkb is None:
        return np.array([], dtype=object)
    geoms = shapely.from_wkb(wkb, on_invalid="ignore")
    for n in np.flatnonzero(shapely.is_missing(geoms) & np.asarray([w is not None for w in wkb], dtype=bool)):
        try:
            fixed = shapely.from_wkb(wkb[n], on_invalid="fix")
        except shapely.errors.GEOSException:
            fixed = None
        if fixed is None or fixed.is_empty:
            report.skip(f"feature {n}: a geometry that cannot be read (e.g. a ring of fewer than 4 points); skipped",
                        counter="dropped: malformed feature")
        else:
            report.note(f"feature {n}: a ring is not closed (its last point is not its first); closed")
            geoms[n] = fixed
    return geoms


def _read_vector(path: Path, report: LoadReport) -> tuple[np.ndarray, CRS | None, dict[str, np.ndarray]]:
    if path.suffix.lower() == ".parquet":
        return _read_geoparquet(path, report)
    import pyogrio  # only to read: writing the GeoJSON needs it not (nor its 0.5 s import)

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Non closed ring detected")  # closed and noted below
            meta, _, wkb, fields = read_vector_raw(path)
    except pyogrio.errors.DataSourceError as exc:
        raise RooftraceError(f"{path}: not a readable vector file ({str(exc).splitlines()[0]})") from None
    geoms = geoms_from_wkb(wkb, report)
    crs = CRS.from_user_input(meta["crs"]) if meta.get("crs") else None
    return geoms, crs, dict(zip(meta.get("fields", []), fields))


def _read_geoparquet(path: Path, report: LoadReport) -> tuple[np.ndarray, CRS | None, dict[str, np.ndarray]]:
    """:func:`_geoparquet_columns` with the geometries read (a ring that is not closed closed, noted)."""
    wkb, crs, fields = _geoparquet_columns(path)
    return geoms_from_wkb(wkb, report), crs, fields


def _geoparquet_columns(path: Path) -> tuple[np.ndarray, CRS | None, dict[str, np.ndarray]]:
    """A GeoParquet file (1.x: WKB geometry column named in the ``geo`` metadata, CRS as PROJJSON)
    read with pyarrow, since pyogrio's GDAL may have no Parquet driver."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise RooftraceError(f"{path}: reading GeoParquet needs pyarrow: pip install 'rooftrace[parquet]'") from None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for files that are not Parquet
        raise RooftraceError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None
    meta = table.schema.metadata or {}
    try:
        geo = json.loads(meta[b"geo"])
        column = geo["primary_column"]
        info = geo["columns"][column]
    except (KeyError, ValueError, TypeError):
        raise RooftraceError(f"{path}: a Parquet file without GeoParquet 'geo' metadata; not a GeoParquet file") from None
    if info.get("encoding", "WKB").upper() != "WKB":
        raise RooftraceError(f"{path}: geometry encoding {info.get('encoding')!r}; rooftrace reads WKB GeoParquet")
    wkb = np.asarray(table.column(column).to_pylist(), dtype=object)
    crs_json = info["crs"] if "crs" in info else "OGC:CRS84"  # GeoParquet: a missing crs means CRS84, null unknown
    crs = CRS.from_user_input(crs_json) if crs_json is not None else None
    fields = {name: np.asarray(table.column(name).to_pylist(), dtype=object) for name in table.column_names if name != column}
    return wkb, crs, fields


def geojson_crs_member(path: Path, data: Any = None) -> str | None:
    """The name in a GeoJSON file's (legacy) ``crs`` member, which GDAL reads as EPSG:4326 when it does
    not know it; ``None`` for other files and GeoJSON without one (RFC 7946: longitude/latitude)."""
    if path.suffix.lower() not in (".geojson", ".json"):
        return None
    if data is None:
        data = read_json(path)
    crs = data.get("crs") if isinstance(data, dict) else None
    if not isinstance(crs, dict):
        return None
    name = (crs.get("properties") or {}).get("name")
    return str(name) if name else None


def parse_crs_option(value: str, option: str) -> CRS:
    """The CRS given by a ``--labels-crs``-style option, or an error naming the option."""
    try:
        return CRS.from_user_input(value)
    except CRSError:
        raise RooftraceError(f"{option} {value}: not a CRS pyproj knows (e.g. EPSG:4326, EPSG:32645)") from None


def check_degrees(path: Path, geoms: np.ndarray, crs: CRS, declared: bool, option: str = "--labels-crs") -> None:
    """Refuse coordinates that cannot be degrees in a geographic CRS: a GeoJSON without a ``crs``
    member is longitude/latitude (RFC 7946), and GDAL reads it so whatever its numbers are, so UTM
    metres would otherwise land nowhere, silently. ``declared``: the CRS was named (by the file or by
    ``option``) rather than implied."""
    if not crs.is_geographic or len(geoms) == 0:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-empty input gives NaN bounds
        x0, y0, x1, y1 = shapely.total_bounds(np.asarray(geoms, dtype=object))
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        return
    if x0 < -180 or x1 > 360 or y0 < -90 or y1 > 90:
        says = f"its CRS ({crs.to_string()}) says" if declared else "a GeoJSON without a 'crs' member must be (RFC 7946)"
        raise RooftraceError(f"{path}: coordinates reach x {x0:.6g}..{x1:.6g}, y {y0:.6g}..{y1:.6g}, which are not "
                             f"longitude/latitude degrees as {says}; pass {option} with the CRS they are in "
                             "(e.g. EPSG:32645)")


def read_geojson(path: str | Path, raster: str | Path | None = None, crs: str | None = None,
                 crs_option: str = "--labels-crs") -> LabelSet:
    """Read footprints from GeoJSON or GeoPackage.

    Args:
        path: The vector file.
        raster: The GeoTIFF the footprints belong to; when given, the result is in its pixel
            coordinates (one image keyed by the raster's stem, with its size).
        crs: The CRS of the coordinates when the file declares none or a wrong one (it overrides
            the file's); ``crs_option`` is the command-line option that gave it, for messages.

    Raises:
        RooftraceError: Unreadable file; a raster with no CRS or transform while the labels have a CRS;
            coordinates that cannot be degrees in a file that is (or is taken to be) longitude/latitude.
    """
    path = Path(path)
    if not path.exists():
        raise RooftraceError(f"{path}: no such file")
    data = None
    if path.suffix.lower() in (".geojson", ".json"):
        data = read_json(path)
        if is_pixel_geojson(data):
            return _read_pixel_geojson(path, data)
    report = LoadReport(path=str(path))
    geoms, file_crs, fields = _read_vector(path, report)
    named = path.suffix.lower() not in (".geojson", ".json") or geojson_crs_member(path, data) is not None
    if crs is not None:
        given = parse_crs_option(crs, crs_option)
        if file_crs is not None and file_crs != given and named:
            report.note(f"the file declares {file_crs.to_string()}; {crs_option} {crs} is used instead")
        crs, declared = given, True
    else:
        crs, declared = file_crs, named
    if crs is not None:
        check_degrees(path, geoms, crs, declared, crs_option)
    scores = fields.get("score")
    if raster is None:
        ls = LabelSet(report=report, crs=crs.to_string() if crs else None, format="geojson")
        key: ImageKey = image_key(path)
        ls.get_or_add(key)
        report.counts["images"] += 1
        if crs is None:
            report.note("the file declares no CRS; coordinates are taken as they are")
    else:
        raster = Path(raster)
        transform, rcrs, width, height = raster_georeference(raster)
        if crs is not None and rcrs is not None and crs != rcrs:
            report.note(f"labels are in {crs.to_string()}, the raster in {rcrs.to_string()}: reprojected")
            geoms = reproject(geoms, crs, rcrs)
        elif crs is None and rcrs is not None:
            report.note(f"the file declares no CRS; its coordinates are taken to be in the raster's ({rcrs.to_string()})")
        elif rcrs is None and crs is not None:
            report.note(f"{raster} has no CRS; the labels' coordinates are used through its transform as they are")
        geoms = np.asarray([map_to_pixel(g, transform) if g is not None else None for g in geoms], dtype=object)
        ls = LabelSet(report=report, root=raster.parent, format="geojson")
        key = image_key(raster)
        img = ls.get_or_add(key)
        img.file_name, img.width, img.height = raster.name, width, height
        report.counts["images"] += 1
    for n, g in enumerate(geoms):
        score = None
        if scores is not None:
            s = scores[n]
            score = float(s) if s is not None and math.isfinite(float(s)) else None
        ls.add(key, g, f"feature {n}", score=score)
    return ls


def _read_pixel_geojson(path: Path, data: dict) -> LabelSet:
    report = LoadReport(path=str(path))
    ls = LabelSet(report=report, format="geojson")
    for n, feat in enumerate(data.get("features", [])):
        where = f"feature {n}"
        props = (feat or {}).get("properties") or {}
        if "image_id" not in props:
            report.skip(f"{where}: no 'image_id' property; skipped", counter="dropped: malformed feature")
            continue
        key = props["image_id"]
        if isinstance(key, str) and key.isdigit():
            key = int(key)
        if key not in ls:
            report.counts["images"] += 1
        img = ls.get_or_add(key)
        for attr in ("file_name", "width", "height"):
            if props.get(attr) is not None:
                setattr(img, attr, props[attr])
        if feat.get("geometry") is None:
            continue  # an image listed without buildings
        try:
            geom = shape(feat["geometry"])
        except Exception as exc:  # shapely raises several types for malformed GeoJSON geometry
            report.skip(f"{where}: geometry is not valid GeoJSON ({exc}); skipped", counter="dropped: malformed feature")
            continue
        ls.add(key, geom, where, score=props.get("score"))
    return ls


def raster_georeference(raster: str | Path) -> tuple[Any, CRS | None, int, int]:
    """``(transform, crs, width, height)`` of a raster, with a clear error if it cannot be read."""
    raster = Path(raster)
    if not raster.exists():
        raise RooftraceError(f"{raster}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(raster) as src:
                crs = CRS.from_user_input(src.crs.to_wkt()) if src.crs else None
                return src.transform, crs, src.width, src.height
    except rasterio.errors.RasterioIOError as exc:
        raise RooftraceError(f"{raster}: not a readable raster ({str(exc).splitlines()[0]})") from None


def write_geojson(
    ls: LabelSet,
    path: str | Path,
    transform=None,
    crs: str | None = None,
    decimals: int = 2,
    force: bool = False,
) -> Path:
    """Write footprints as a GeoJSON FeatureCollection, atomically.

    Pixel sets without ``transform``: pixel coordinates, features carry ``image_id`` (and the
    file marks itself as pixel GeoJSON so it reads back as such). With ``transform`` (and
    ``crs``), or for a set already in map coordinates (``ls.crs``): map coordinates, the CRS
    recorded in the legacy ``crs`` member that GDAL and QGIS read.
    """
    crs = crs or ls.crs
    in_map = transform is not None or ls.crs is not None
    if in_map and crs is not None and CRS.from_user_input(crs).is_geographic:
        decimals = max(decimals, 8)  # degrees: 2 decimals would be a kilometre; 8 are about a millimetre
    features = []
    for key in sort_keys(ls.images):
        img = ls.images[key]
        scores = img.scores or [1.0] * len(img.footprints)
        if not img.footprints and not in_map:
            features.extend(geojson_features([None], [_props(img, None)]))
        geoms = [pixel_to_map(fp, transform) if transform is not None else fp for fp in img.footprints]
        if decimals is not None and geoms:
            arr = np.asarray(geoms, dtype=object)
            xy = shapely.get_coordinates(arr)
            if not (np.round(xy, decimals) == xy).all():  # pixel-edge outlines are on the grid already
                geoms = list(shapely.set_precision(arr, 10.0**-decimals))
        areas = area_m2(np.asarray(geoms, dtype=object), crs) if in_map and geoms else []
        props = []
        for n, s in enumerate(scores[:len(geoms)]):
            if in_map:  # ground square metres (null when the CRS is unknown), as every map output of rooftrace
                props.append({"score": round(float(s), 4), "area_m2": round(float(areas[n]), 3) if np.isfinite(areas[n]) else None})
            else:
                props.append(_props(img, s))
        features.extend(geojson_features(geoms, props))
    data: dict[str, Any] = {"type": "FeatureCollection"}
    if not in_map:
        data["name"] = PIXEL_LAYER_NAME
        data["rooftrace"] = PIXEL_MARKER
    elif crs is not None:
        data["crs"] = {"type": "name", "properties": {"name": CRS.from_user_input(crs).to_string()}}
    text = json.dumps(data)[:-1] + ', "features": [' + ", ".join(features) + "]}"  # the collection's members, then its features
    return atomic_write_text(path, text, force=force)


def _props(img, score) -> dict:
    p: dict[str, Any] = {"image_id": img.key}
    if img.file_name is not None:
        p["file_name"] = img.file_name
    if img.width is not None:
        p["width"], p["height"] = img.width, img.height
    if score is not None:
        p["score"] = round(float(score), 4)
    return p


def _sniff(probe: Probe) -> bool:
    # Vector files by their suffix; a .json by its content (GeoJSON's "type").
    return probe.suffix != ".json" or (isinstance(probe.data, dict) and probe.data.get("type") in ("FeatureCollection", "Feature"))


FORMAT = LabelFormat(
    name="geojson", title="GeoJSON", content="GeoJSON", sniff=_sniff,
    read=lambda probe, options: read_geojson(probe.path, raster=options.raster, crs=options.crs, crs_option=options.crs_option),
    suffixes=(".gpkg", ".geojson", ".shp", ".fgb", ".parquet", ".json"),
    write=lambda ls, path, images=None, force=False: write_geojson(ls, path, force=force),
    write_suffixes=(".geojson", ".json"), default_for=(".geojson",), map_coordinates=True,
)
"""The registry entry of GeoJSON and the vector files read alike (GeoPackage, FlatGeobuf, GeoParquet, Shapefile;
see :mod:`rooftrace.labels.registry`); written as GeoJSON only (the GIS outputs of predictions are written elsewhere)."""
