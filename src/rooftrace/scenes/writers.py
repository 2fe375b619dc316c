"""Writing a scene's buildings: the output file check, writability check and the streaming
GeoPackage/GeoJSON feature writer, in the raster's CRS."""

from __future__ import annotations

import json
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import shapely
from affine import Affine
from pyproj import CRS

from rooftrace.core.errors import RooftraceError
from rooftrace.geometry.shapes import pixel_to_map

if TYPE_CHECKING:  # pragma: no cover
    pass


#: Output formats by suffix.
OUTPUT_DRIVERS = {".gpkg": "GPKG", ".geojson": "GeoJSON", ".json": "GeoJSON"}


def _crs_name(crs: CRS) -> str:
    auth = crs.to_authority()
    return f"{auth[0]}:{auth[1]}" if auth else crs.to_wkt()


def _decimals(transform: Affine) -> int:
    """Decimals that keep GeoJSON coordinates to 1/1000 of a pixel."""
    size = min(abs(transform.a) or 1.0, abs(transform.e) or 1.0)
    return max(0, int(math.ceil(-math.log10(size / 1000.0))))


def check_output(path: str | Path, force: bool = False) -> str:
    """The OGR driver for an output file, after checking its suffix and that it may be written.

    Raises:
        RooftraceError: Unknown suffix, or ``path`` exists and not ``force``.
    """
    path = Path(path)
    driver = OUTPUT_DRIVERS.get(path.suffix.lower())
    if driver is None:
        raise RooftraceError(f"{path}: unknown output format {path.suffix!r}; use .gpkg (GeoPackage) or .geojson")
    if path.exists() and not force:
        raise RooftraceError(f"{path}: already exists; pass --force to overwrite it")
    return driver


def check_writable(folder: str | Path, meant: str | Path) -> None:
    """Make ``folder`` (and its parents) if missing and check that a file can be created in it, before
    any work: a run that cannot write its output stops at once, not after all the inference.

    Raises:
        RooftraceError: Naming ``meant`` (the output) and why (``Not a directory``, ``Permission denied``, ...).
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".rooftrace-", suffix=".probe", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except FileExistsError:
        raise RooftraceError(f"{meant}: cannot write it ({folder} is a file, not a folder); nothing was predicted") from None
    except OSError as exc:
        raise RooftraceError(f"{meant}: cannot write it ({exc.strerror or exc}); nothing was predicted") from None


class FeatureWriter:
    """Buildings into a GeoPackage (appended as they come) or a GeoJSON (streamed), atomically.

    Features go to a temporary file beside ``path`` that is renamed over it only when
    :meth:`close` is called, so a reader never sees half a file and a killed job leaves none.
    Each feature carries ``score`` and ``area`` (in the CRS's units squared).

    Raises:
        RooftraceError: Unknown suffix, or ``path`` exists and not ``force``.
    """

    def __init__(self, path: str | Path, crs: CRS | None, transform: Affine, force: bool = False, chunk: int = 5000):
        self.path = Path(path)
        driver = check_output(self.path, force)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RooftraceError(f"{self.path}: cannot create its folder ({exc.strerror})") from None
        self.driver, self.crs, self.transform, self.chunk = driver, crs, transform, chunk
        self.tmp = self.path.with_name(f".{self.path.stem}.{os.getpid()}.tmp{self.path.suffix}")
        self.count = 0
        self._buffer: list[tuple[np.ndarray, np.ndarray]] = []
        self._buffered = 0
        self._started = False
        self._json = None
        if driver == "GeoJSON":
            with self._writing():
                self._json = open(self.tmp, "w", encoding="utf-8")
            head: dict[str, Any] = {"type": "FeatureCollection", "name": self.path.stem}
            if crs is not None:
                head["crs"] = {"type": "name", "properties": {"name": _crs_name(crs)}}
            self._json.write(json.dumps(head)[:-1] + ', "features": [\n')
            self._decimals = _decimals(transform)

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """An error while writing (a full disk) names the output meant, not the temporary file."""
        import pyogrio.errors

        try:
            yield
        except (OSError, pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError, pyogrio.errors.FieldError) as exc:
            text = getattr(exc, "strerror", None) or str(exc).replace(str(self.tmp), str(self.path)).splitlines()[0]
            raise RooftraceError(f"{self.path}: cannot write it ({text})") from None

    def add(self, pixel_geoms: np.ndarray, scores: np.ndarray) -> None:
        """Add buildings given in scene pixel coordinates, with their scores."""
        if len(pixel_geoms) == 0:
            return
        geoms = pixel_to_map(np.asarray(pixel_geoms, dtype=object), self.transform)
        with self._writing():
            if self._json is not None:
                self._write_json(geoms, np.asarray(scores, dtype=np.float64))
            else:
                self._buffer.append((geoms, np.asarray(scores, dtype=np.float64)))
                self._buffered += len(geoms)
                if self._buffered >= self.chunk:
                    self._flush()
        self.count += len(geoms)

    def _write_json(self, geoms: np.ndarray, scores: np.ndarray) -> None:
        areas = shapely.area(geoms)
        rounded = shapely.set_precision(geoms, 10.0 ** -self._decimals)
        texts = shapely.to_geojson(rounded)
        lines = [f'{{"type": "Feature", "properties": {{"score": {s:.4f}, "area": {a:.3f}}}, "geometry": {t}}}'
                 for s, a, t in zip(scores, areas, texts)]
        assert self._json is not None
        self._json.write((",\n" if self.count else "") + ",\n".join(lines))

    def _flush(self, final: bool = False) -> None:
        import pyogrio.raw

        if not self._buffer and (self._started or not final):
            return
        geoms = np.concatenate([g for g, _ in self._buffer]) if self._buffer else np.empty(0, dtype=object)
        scores = np.concatenate([s for _, s in self._buffer]) if self._buffer else np.empty(0)
        pyogrio.raw.write(self.tmp, shapely.to_wkb(geoms), [scores, shapely.area(geoms)], ["score", "area"],
                          layer=self.path.stem, driver="GPKG", geometry_type="Polygon",
                          crs=self.crs.to_wkt() if self.crs is not None else None, append=self._started)
        self._started = True
        self._buffer.clear()
        self._buffered = 0

    def close(self) -> Path:
        """Finish the file and move it into place; returns its path."""
        with self._writing():
            if self._json is not None:
                self._json.write("\n]}\n")
                self._json.close()
                self._json = None
            else:
                self._flush(final=True)
            os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the temporary file (after an error)."""
        if self._json is not None:
            self._json.close()
            self._json = None
        for p in self.tmp.parent.glob(self.tmp.name + "*"):  # GeoPackage journals too
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
