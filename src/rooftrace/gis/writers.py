"""Writing buildings to GIS files: the output file check, writability check, provenance and the streaming
feature writer (every format of :mod:`rooftrace.gis.formats`, chosen by the output's suffix).

Every building carries ``score`` (the model's confidence, 0-1) and ``area_m2`` (its area on the
ground in square metres, :func:`rooftrace.geometry.areas.area_m2`: geodesic on the CRS's
ellipsoid, so the same in every CRS). Every file carries its provenance (:func:`make_provenance`:
the model file and its SHA-256, the post-processing method and settings, the source raster, the
rooftrace version and the CRS) in the format's own metadata. Each format's entry in :mod:`rooftrace.gis.formats` says where (``.gpkg``: layer metadata ``rooftrace``
and ``DESCRIPTION``; ``.fgb``: the header's ``metadata`` and ``description``; ``.parquet``: GeoParquet 1.1
``geo`` and a ``rooftrace`` key-value; ``.geojson``: the ``description`` and ``rooftrace`` members) and in
which coordinates (the scene's CRS, or EPSG:4326 longitude/latitude for GeoJSON).

:func:`read_provenance` reads it back from any of them. A GeoJSON is always written in
longitude/latitude (reprojected from the scene's CRS; ``area_m2`` is measured before), because
RFC 7946 says so and most web maps and many GIS read GeoJSON as longitude/latitude whatever a
``crs`` member says; a scene without a CRS is refused as GeoJSON (its coordinates would be read
as degrees) and can be written to the other formats, whose CRS is then left unknown.

Streaming, by the entry's write kind: a GeoPackage (``ogr``) is appended to in chunks and a GeoJSON
(``geojson``) is streamed as text; FlatGeobuf (``ogr-staged``) cannot be appended to, so its features are streamed into a hidden GeoPackage beside the output
and converted once at the end through GDAL's Arrow stream (record batches, never the whole layer
in memory); a GeoParquet (``parquet``) is written one row group per chunk (pyarrow's ``ParquetWriter``). Every
format goes to a temporary file beside the output that is renamed over it only when the writer
is closed.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import shapely
from affine import Affine
from pyproj import CRS

from rooftrace.core.errors import RooftraceError
from rooftrace.core.files import probe_writable, write_error_reason
from rooftrace.geometry.areas import area_m2
from rooftrace.geometry.shapes import geojson_features, pixel_to_map
from rooftrace.gis.formats import OutputFormat, output_drivers, output_format
from rooftrace.gis.provenance import (
    FIELDS,
    PROVENANCE_KEY,
    crs_name,
    geojson_head,
    make_provenance,
    provenance_metadata,
    read_provenance,
    with_crs,
)

#: Output formats by suffix (OGR driver names; ``Parquet`` is written with pyarrow, not GDAL), from :data:`rooftrace.gis.formats.FORMATS`.
OUTPUT_DRIVERS = output_drivers()
#: Decimals of longitude/latitude in a GeoJSON (at least, for a scene; exactly, for tile predictions): 1e-8 degrees is about a millimetre.
LONLAT_DECIMALS = 8


def _lonlat_transformer(path: Path, crs: CRS) -> Any:
    """The transformer from ``crs`` to the longitude/latitude of a GeoJSON output (``None``: it is
    EPSG:4326 already).

    Raises:
        RooftraceError: A CRS that cannot be brought to longitude/latitude (a local or engineering CRS).
    """
    from pyproj import Transformer
    from pyproj.exceptions import ProjError

    lonlat = CRS.from_epsg(4326)
    if crs.equals(lonlat):
        return None
    try:
        return Transformer.from_crs(crs, lonlat, always_xy=True)
    except ProjError:
        name = crs.to_string() if len(crs.to_string()) < 80 else crs.to_string()[:77] + "..."
        raise RooftraceError(f"{path}: the scene's CRS ({name}) cannot be brought to longitude/latitude, which GeoJSON "
                             "is (RFC 7946): it is a local or engineering CRS; write .gpkg, .fgb or .parquet, which keep "
                             "the scene's CRS") from None


def _decimals(transform: Affine, crs: CRS | None) -> int:
    """Decimals of longitude/latitude that keep GeoJSON coordinates to 1/1000 of a pixel (at least 8)."""
    size = min(math.hypot(transform.a, transform.d) or 1.0, math.hypot(transform.b, transform.e) or 1.0)
    if crs is not None and not crs.is_geographic:
        unit = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
        size = size * unit / 111_320.0  # metres to degrees (of latitude; a degree of longitude is no longer)
    return min(12, max(LONLAT_DECIMALS, math.ceil(-math.log10(size / 1000.0))))


def check_output(path: str | Path, force: bool = False) -> str:
    """The driver for an output file (its format's in :mod:`rooftrace.gis.formats`), after checking its
    suffix, that it may be written, and that what the format needs (pyarrow for GeoParquet) is installed.

    Raises:
        RooftraceError: Unknown suffix, ``path`` exists and not ``force``, or no pyarrow for ``.parquet``.
    """
    path = Path(path)
    fmt = output_format(path)
    if path.is_dir():  # found now, not by the rename at the end of a run
        raise RooftraceError(f"{path}: a folder, not a file; choose another --out (a folder of outputs takes no "
                             f"{path.suffix} suffix); nothing was predicted")
    if path.exists() and not force:
        raise RooftraceError(f"{path}: already exists; pass --force to overwrite it")
    if fmt.needs is not None:
        import importlib

        try:
            importlib.import_module(fmt.needs)
        except ImportError:
            raise RooftraceError(f"{path}: {fmt.title} needs {fmt.needs.split('.')[0]}: {fmt.install}") from None
    return fmt.driver


def check_writable(folder: str | Path, meant: str | Path) -> None:
    """Make ``folder`` (and its parents) if missing and check that a file can be created in it, before
    any work: a run that cannot write its output stops at once, not after all the inference.

    Raises:
        RooftraceError: Naming ``meant`` (the output) and why (``Not a directory``, ``Permission denied``, ...).
    """
    probe_writable(folder, meant, "; nothing was predicted")


def output_complete(path: str | Path, source: str | Path | None = None) -> str | None:
    """Whether a scene's output is finished: ``None`` when it is, else why not.

    Finished means more than "there": the file opens in its format, every feature reads back (a
    FlatGeobuf or GeoPackage cut short, a GeoJSON without its end, a GeoParquet without its footer
    do not), and it carries the provenance the run recorded, for ``source`` when given. A file
    another program left under that name, or garbage, is not finished.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            return "it is empty (0 bytes)"
    except OSError:
        return "it is not there"
    fmt = output_format(path)
    try:
        if fmt.write == "parquet":
            import pyarrow.parquet as pq

            pq.read_table(path)
        elif fmt.write == "geojson":
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or not isinstance(data.get("features"), list):
                return "it is not a GeoJSON FeatureCollection"
        else:
            import pyogrio
            import pyogrio.raw

            info = pyogrio.read_info(path)
            _, _, wkb, _ = pyogrio.raw.read(path, columns=[])
            if info.get("features", -1) not in (-1, len(wkb)):
                return f"it declares {info['features']} features but {len(wkb)} read back"
        prov = read_provenance(path)
    except Exception as exc:  # noqa: BLE001 - any reader's error: the file is not a finished output
        return f"it does not read back ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})"
    if not isinstance(prov, dict):
        return "it carries no rooftrace provenance (not written by rooftrace, or cut short)"
    if source is not None:
        recorded = (prov.get("source") or {}).get("raster") if isinstance(prov.get("source"), dict) else None
        if recorded is None or Path(recorded).name != Path(source).name:
            return f"its provenance names another source ({recorded})"
    return None


def read_features(path: str | Path) -> tuple[np.ndarray, dict[str, np.ndarray], CRS | None]:
    """Read back what :class:`FeatureWriter` wrote, in any registered format: the geometries (shapely),
    the fields by name (``score``, ``area_m2``) and the file's CRS (``None``: unknown).

    Raises:
        RooftraceError: A suffix no format has (naming ``path``).
    """
    path = Path(path)
    fmt = output_format(path)
    if fmt.write == "parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        geo = json.loads((table.schema.metadata or {}).get(b"geo", b"{}"))
        crs_json = (geo.get("columns", {}).get(geo.get("primary_column", "geometry")) or {}).get("crs")
        geoms = shapely.from_wkb(np.asarray(table.column("geometry").to_pylist(), dtype=object))
        fields = {n: table.column(n).to_numpy(zero_copy_only=False) for n in table.column_names if n != "geometry"}
        return geoms, fields, CRS.from_json_dict(crs_json) if crs_json else None
    import pyogrio.raw

    meta, _, wkb, values = pyogrio.raw.read(path)
    geoms = shapely.from_wkb(wkb) if len(wkb) else np.empty(0, dtype=object)
    return geoms, dict(zip(list(meta["fields"]), values)), CRS.from_user_input(meta["crs"]) if meta.get("crs") else None


# ---------------------------------------------------------------------------------------------
# Provenance


#: How many buildings' areas a writer keeps for the model-card size check (:func:`rooftrace.inference.card.size_warning`).
AREA_SAMPLE = 100_000


def scene_provenance(runner: Any, method: str | None, settings: Any, scene: str | Path, crs: CRS | None) -> dict[str, Any]:
    """:func:`make_provenance` for a scene predicted by ``runner`` (a :class:`rooftrace.inference.runtime.ModelRunner`)."""
    runtime = getattr(runner, "runtime", None)
    return make_provenance(source=scene, crs=crs, model_path=getattr(runner, "model_path", None),
                           model_description=getattr(runner, "description", None), method=method, settings=settings,
                           runtime=runtime.runtime_line if runtime is not None else None)


def unit_metres(crs: CRS | None, input_gsd: float | None, transform: Affine) -> float | None:
    """For a scene without a CRS whose pixel size ``input_gsd`` (metres) is known: the size of one of its map
    units (``transform``'s, the raster's own pixels when it has none) in metres, for ``area_m2``;
    ``None`` otherwise (a CRS says it, or nothing does)."""
    if crs is not None or not input_gsd:
        return None
    size = math.sqrt(abs(transform.determinant)) or 1.0
    return float(input_gsd) / size


# ---------------------------------------------------------------------------------------------
# GeoJSON text and GeoParquet metadata


def geoparquet_metadata(crs: CRS | None, geometry_types: list[str]) -> dict[str, Any]:
    """GeoParquet 1.1 ``geo`` metadata of a WKB ``geometry`` column (``crs: null``: unknown, not CRS84)."""
    return {"version": "1.1.0", "primary_column": "geometry",
            "columns": {"geometry": {"encoding": "WKB", "geometry_types": geometry_types,
                                     "crs": crs.to_json_dict() if crs is not None else None}}}


# ---------------------------------------------------------------------------------------------
# The streaming writer


@contextmanager
def _unknown_crs_allowed() -> Iterator[None]:
    """pyogrio warns when no CRS is given; a scene without one is written with an unknown CRS on purpose."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="'crs' was not provided", category=UserWarning)
        yield


class FeatureWriter:
    """Buildings into any format of :mod:`rooftrace.gis.formats` (by the suffix: GeoPackage, FlatGeobuf,
    GeoParquet, GeoJSON), streamed, atomically.

    Features go to a temporary file beside ``path`` that is renamed over it only when
    :meth:`close` is called, so a reader never sees half a file and a killed job leaves none.
    Each feature carries ``score`` and ``area_m2``; the file carries ``provenance`` (see the
    module docstring for where each format keeps it). Memory holds at most ``chunk`` features.

    Args:
        crs, transform: The scene's CRS (``None``: none) and its pixel-to-map transform; the
            features are written in ``crs``, except in a longitude/latitude format (GeoJSON: EPSG:4326).
        provenance: :func:`make_provenance`'s dict (its ``crs`` is set to the output's here).
        metres_per_unit: For a scene without a CRS: the size of a map unit in metres, for
            ``area_m2`` (else it is left empty).

    Raises:
        RooftraceError: Unknown suffix, ``path`` exists and not ``force``, or a GeoJSON of a
            scene without a CRS.
    """

    def __init__(self, path: str | Path, crs: CRS | None, transform: Affine, force: bool = False, chunk: int = 5000,
                 provenance: dict[str, Any] | None = None, metres_per_unit: float | None = None):
        self.path = Path(path)
        check_output(self.path, force)
        fmt = output_format(self.path)
        if fmt.lonlat and crs is None:
            raise RooftraceError(f"{self.path}: the scene has no CRS, and GeoJSON is longitude/latitude (RFC 7946), so a GIS "
                                 "would read its pixel coordinates as degrees; write .gpkg or .fgb (CRS left unknown) instead, "
                                 "or give the scene a CRS")
        to_lonlat = _lonlat_transformer(self.path, crs) if fmt.lonlat else None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RooftraceError(f"{self.path}: cannot create its folder ({exc.strerror})") from None
        self.format: OutputFormat = fmt
        self.driver, self.crs, self.transform, self.chunk = fmt.driver, crs, transform, chunk
        self.metres_per_unit = metres_per_unit
        self.out_crs = CRS.from_epsg(4326) if fmt.lonlat else crs
        self.provenance = with_crs(provenance, self.out_crs)
        if crs is not None and not crs.equals(self.out_crs):
            self.provenance["reprojected_from"] = crs_name(crs)
        self.tmp = self.path.with_name(f".{self.path.stem}.{os.getpid()}.tmp{self.path.suffix}")
        # A format that cannot be appended to (FlatGeobuf): its features are staged in a GeoPackage (removed by abort's glob too).
        self.stage = self.tmp.with_name(self.tmp.name + ".gpkg") if fmt.write == "ogr-staged" else self.tmp
        self.count = 0
        #: Ground areas (m²) of the first :data:`AREA_SAMPLE` buildings, for the model-card size check.
        self.area_sample: list[float] = []
        self._buffer: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._buffered = 0
        self._started = False
        self._json = None
        self._parquet: Any = None
        self._to_lonlat: Any = None
        if fmt.write == "geojson":
            with self._writing():  # a failure removes the temporary file (abort), so none outlives the run
                self._json = open(self.tmp, "w", encoding="utf-8")
                self._json.write(geojson_head(self.path.stem, self.provenance))
                self._json.flush()
            self._decimals = _decimals(transform, crs)
            self._to_lonlat = to_lonlat

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """An error while writing (a full disk) names the output meant, not the temporary file."""
        errors: tuple[type[BaseException], ...] = (OSError, RuntimeError, ValueError)  # pyarrow's ArrowIOError is an OSError
        if self.format.through_ogr:  # GDAL's "Write failed" is a DataSourceError; pyogrio imported only for these formats
            import pyogrio.errors

            errors += (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError, pyogrio.errors.FieldError)
        try:
            yield
        except RooftraceError:
            self.abort()
            raise
        except errors as exc:
            self.abort()
            raise RooftraceError(f"{self.path}: cannot write it ({self._why(exc)})") from None

    def _why(self, exc: BaseException) -> str:
        """The reason of a write error, for the user (:func:`rooftrace.core.files.write_error_reason`): the system's
        when there is one (a full disk, a read-only folder), never the temporary file's name."""
        return write_error_reason(exc, self.path, (self.stage, self.tmp))

    def add(self, pixel_geoms: np.ndarray, scores: np.ndarray) -> None:
        """Add buildings given in scene pixel coordinates, with their scores."""
        if len(pixel_geoms) == 0:
            return
        geoms = pixel_to_map(np.asarray(pixel_geoms, dtype=object), self.transform)
        scores = np.asarray(scores, dtype=np.float64)
        areas = area_m2(geoms, self.crs, self.metres_per_unit)
        if len(self.area_sample) < AREA_SAMPLE:
            self.area_sample.extend(areas[: AREA_SAMPLE - len(self.area_sample)].tolist())
        with self._writing():
            if self._json is not None:
                self._write_json(geoms, scores, areas)
            else:
                self._buffer.append((geoms, scores, areas))
                self._buffered += len(geoms)
                if self._buffered >= self.chunk:
                    self._flush()
        self.count += len(geoms)

    def _write_json(self, geoms: np.ndarray, scores: np.ndarray, areas: np.ndarray) -> None:
        if self._to_lonlat is not None:
            tr = self._to_lonlat
            geoms = shapely.transform(geoms, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
        d = self._decimals
        geoms = shapely.orient_polygons(shapely.transform(geoms, lambda xy: np.round(xy, d)), exterior_cw=False)
        lines = geojson_features(geoms, [f'{{"score": {s:.4f}, "area_m2": {a:.3f}}}' for s, a in zip(scores, areas)])
        assert self._json is not None
        self._json.write((",\n" if self.count else "") + ",\n".join(lines))

    def _take(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not self._buffer:
            return np.empty(0, dtype=object), np.empty(0), np.empty(0)
        out = tuple(np.concatenate([b[k] for b in self._buffer]) for k in range(3))
        self._buffer.clear()
        self._buffered = 0
        return out  # type: ignore[return-value]

    def _flush(self, final: bool = False) -> None:
        if not self._buffer and (self._started or not final):
            return
        geoms, scores, areas = self._take()
        if self.format.write == "parquet":
            self._write_parquet(geoms, scores, areas)
            return
        import pyogrio.raw

        meta = {} if self._started else {"layer_metadata": provenance_metadata(self.provenance)}
        with _unknown_crs_allowed():
            pyogrio.raw.write(self.stage, shapely.to_wkb(geoms), [scores, areas], list(FIELDS), layer=self.path.stem,
                              driver="GPKG" if self.format.write == "ogr-staged" else self.driver, geometry_type="Polygon",
                              crs=self.crs.to_wkt() if self.crs is not None else None,
                              append=self._started, **meta)
        self._started = True

    def _write_parquet(self, geoms: np.ndarray, scores: np.ndarray, areas: np.ndarray) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._parquet is None:
            meta = {b"geo": json.dumps(geoparquet_metadata(self.crs, ["Polygon"])).encode(),
                    PROVENANCE_KEY.encode(): json.dumps(self.provenance, sort_keys=True).encode()}
            schema = pa.schema([("geometry", pa.binary()), ("score", pa.float64()), ("area_m2", pa.float64())], metadata=meta)
            self._parquet = pq.ParquetWriter(self.tmp, schema, compression="zstd")
        table = pa.table({"geometry": pa.array(list(shapely.to_wkb(geoms)) if len(geoms) else [], type=pa.binary()),
                          "score": pa.array(scores, type=pa.float64()),
                          "area_m2": pa.array(areas, type=pa.float64(), from_pandas=True)},  # NaN (unknown) as null
                         schema=self._parquet.schema)
        self._parquet.write_table(table)
        self._started = True

    def _convert_staged(self) -> None:
        """The staged GeoPackage into the output's format (FlatGeobuf), record batch by record batch (GDAL's Arrow stream)."""
        import pyogrio.raw

        with pyogrio.raw.open_arrow(self.stage, batch_size=self.chunk, use_pyarrow=False) as (meta, stream), _unknown_crs_allowed():
            pyogrio.raw.write_arrow(stream, self.tmp, driver=self.driver, layer=self.path.stem,
                                    geometry_name=meta["geometry_name"] or "geometry", geometry_type="Polygon",
                                    crs=self.crs.to_wkt() if self.crs is not None else None,
                                    layer_metadata=provenance_metadata(self.provenance))
        for p in self.stage.parent.glob(self.stage.name + "*"):
            p.unlink(missing_ok=True)

    def close(self) -> Path:
        """Finish the file and move it into place; returns its path."""
        with self._writing():
            if self._json is not None:
                self._json.write("\n]}\n")
                self._json.close()
                self._json = None
            else:
                self._flush(final=True)
                if self._parquet is not None:
                    self._parquet.close()
                    self._parquet = None
                if self.format.write == "ogr-staged":
                    self._convert_staged()
            os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the temporary file (after an error)."""
        if self._json is not None:
            with suppress(OSError):  # closing flushes, which fails again on a full disk
                self._json.close()
            self._json = None
        if self._parquet is not None:
            with suppress(Exception):  # the file is removed below whatever state it is in
                self._parquet.close()
            self._parquet = None
        for p in self.tmp.parent.glob(self.tmp.name + "*"):  # GeoPackage journals and FlatGeobuf staging too
            p.unlink(missing_ok=True)


def scene_area_km2(width: int, height: int, transform: Affine, crs: CRS | None) -> float | None:
    """Ground area a scene covers in km², from its transform and CRS (``None`` when it has no CRS)."""
    if crs is None:
        return None
    if crs.is_geographic:
        from pyproj import Geod

        corners = [transform @ (0, 0), transform @ (width, 0), transform @ (width, height), transform @ (0, height)]
        lon, lat = zip(*corners)
        area, _ = Geod(ellps="WGS84").polygon_area_perimeter(lon, lat)
        return abs(area) / 1e6
    unit = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
    return width * height * abs(transform.determinant) * unit * unit / 1e6
