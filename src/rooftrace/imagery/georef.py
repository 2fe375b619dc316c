"""Where an image lies on the earth: web-map tile names, GeoTIFF transforms, and pixel size in metres.

Two ways an image tile can be located:

- its own georeference (a GeoTIFF's CRS and affine transform, or GDAL's ``.aux.xml`` sidecar beside
  a PNG or TIFF), read by rasterio;
- its name, on the web-map tile grid (XYZ scheme: Web Mercator, ``2**z`` tiles a side, origin at the
  top left): HOT fAIr's ``OAM-<x>-<y>-<z>.png`` and the ``<z>/<x>/<y>.<ext>`` folder layout of tile
  servers. TMS names count ``y`` from the bottom (``tms=True`` flips it). The tile math is mercantile's.

The pixel size (ground sample distance, GSD) is measured on the ground, geodesically, across the
image's centre pixel: so it is in metres whatever the CRS (degrees included), and Web Mercator's
scale error (1 / cos(latitude)) does not leak into it.

This module does not import torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import mercantile
from affine import Affine
from pyproj import CRS, Geod, Transformer

WEB_MERCATOR = CRS.from_epsg(3857)
WGS84 = CRS.from_epsg(4326)
_GEOD = Geod(ellps="WGS84")

#: fAIr / RoboSat-style chip names: ``OAM-<x>-<y>-<z>`` (any prefix before the three numbers).
_NAME_XYZ = re.compile(r"(?:^|[-_])(\d+)-(\d+)-(\d{1,2})$")
MAX_ZOOM = 30


@dataclass(frozen=True)
class Georef:
    """An image's place: its CRS and the affine transform from pixel (col, row) to map (x, y).

    Pixel coordinates follow DESIGN.md: ``(0, 0)`` is the top-left corner of the top-left pixel.
    """

    crs: CRS
    transform: Affine
    width: int
    height: int
    origin: str  #: "geotiff" (the file's own georeference) or "tile-name"

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(minx, miny, maxx, maxy)`` in the CRS."""
        xs, ys = zip(*(self.transform @ (c, r) for c in (0, self.width) for r in (0, self.height)))
        return min(xs), min(ys), max(xs), max(ys)

    def gsd(self) -> float:
        """Ground sample distance in metres a pixel, measured geodesically at the image centre."""
        return pixel_size_m(self.crs, self.transform, self.width, self.height)


def parse_tile_name(path: str | Path, tms: bool = False) -> mercantile.Tile | None:
    """The web-map tile an image's name or path gives, else ``None``.

    Recognised: a stem ending in ``<x>-<y>-<z>`` (``OAM-386693-220243-19.tif``) and the folder
    layout ``.../<z>/<x>/<y>.<ext>``. ``tms=True`` reads ``y`` as TMS (counted from the bottom).
    Numbers outside the grid of their zoom are not a tile (``None``).
    """
    p = Path(str(path))
    found: tuple[int, int, int] | None = None
    m = _NAME_XYZ.search(p.stem)
    if m:
        found = int(m.group(1)), int(m.group(2)), int(m.group(3))
    else:
        parts = p.parts
        if len(parts) >= 3 and p.stem.isdigit() and parts[-2].isdigit() and parts[-3].isdigit():
            found = int(parts[-2]), int(p.stem), int(parts[-3])
    if found is None:
        return None
    x, y, z = found
    if not 0 <= z <= MAX_ZOOM or not (0 <= x < 2**z and 0 <= y < 2**z):
        return None
    if tms:
        y = 2**z - 1 - y
    return mercantile.Tile(x, y, z)


def tile_georef(tile: mercantile.Tile, width: int, height: int) -> Georef:
    """The Web Mercator georeference of an image of ``width x height`` pixels covering ``tile``."""
    b = mercantile.xy_bounds(tile)
    transform = Affine((b.right - b.left) / width, 0.0, b.left, 0.0, -(b.top - b.bottom) / height, b.top)
    return Georef(WEB_MERCATOR, transform, width, height, origin="tile-name")


def pixel_size_m(crs: CRS, transform: Affine, width: int, height: int) -> float:
    """Metres a pixel on the ground at the image centre: the geodesic length of one pixel's edges,
    averaged over its two axes (so a non-square pixel gives the mean of its sides)."""
    to_ll = Transformer.from_crs(CRS.from_user_input(crs), WGS84, always_xy=True)
    c, r = width / 2.0, height / 2.0
    pts = [transform @ (c, r), transform @ (c + 1, r), transform @ (c, r + 1)]
    (x0, y0), (x1, y1), (x2, y2) = (to_ll.transform(x, y) for x, y in pts)
    _, _, dx = _GEOD.inv(x0, y0, x1, y1)
    _, _, dy = _GEOD.inv(x0, y0, x2, y2)
    return (abs(dx) + abs(dy)) / 2.0


def raster_georef(path: str | Path) -> Georef | None:
    """An image file's own georeference (GeoTIFF tags or a GDAL ``.aux.xml`` sidecar), else ``None``."""
    from rooftrace.imagery.read import open_raster

    with open_raster(Path(path)) as src:
        if src.crs is None or src.transform == Affine.identity():
            return None
        return Georef(CRS.from_user_input(src.crs), src.transform, src.width, src.height, origin="geotiff")


def locate_image(path: str | Path, width: int, height: int, tms: bool = False) -> Georef | None:
    """Where an image lies: its own georeference first, else its web-map tile name, else ``None``."""
    geo = raster_georef(path)
    if geo is not None:
        return geo
    tile = parse_tile_name(path, tms=tms)
    return tile_georef(tile, width, height) if tile is not None else None


# ---------------------------------------------------------------------------------------------
# Footprints out: pixel coordinates of many images to one CRS


def pixels_to_map(geoms, transforms):
    """Geometries in pixel coordinates to map coordinates, each through its own affine transform.

    Args:
        geoms: ``(n,)`` shapely geometries (pixel coordinates of their images).
        transforms: ``(n, 6)`` coefficients ``a, b, c, d, e, f`` of each geometry's transform
            (rasterio's order: ``x = a * col + b * row + c``, ``y = d * col + e * row + f``).

    One vectorised pass over all coordinates, whatever the number of images.
    """
    import numpy as np
    import shapely

    geoms = np.asarray(geoms, dtype=object)
    if len(geoms) == 0:
        return geoms
    xy, idx = shapely.get_coordinates(geoms, return_index=True)
    t = np.asarray(transforms, dtype=np.float64)[idx]
    out = np.column_stack([t[:, 0] * xy[:, 0] + t[:, 1] * xy[:, 1] + t[:, 2], t[:, 3] * xy[:, 0] + t[:, 4] * xy[:, 1] + t[:, 5]])
    return shapely.set_coordinates(shapely.transform(geoms, lambda c: c), out)  # transform(): a copy to set


def reproject_geoms(geoms, src: CRS, dst: CRS):
    """Geometries from one CRS to another (x = east, y = north in both, whatever the CRS's axis order)."""
    import numpy as np
    import shapely

    geoms = np.asarray(geoms, dtype=object)
    src, dst = CRS.from_user_input(src), CRS.from_user_input(dst)
    if len(geoms) == 0 or src == dst:
        return geoms
    t = Transformer.from_crs(src, dst, always_xy=True)
    return shapely.transform(geoms, lambda xy: np.column_stack(t.transform(xy[:, 0], xy[:, 1])))
