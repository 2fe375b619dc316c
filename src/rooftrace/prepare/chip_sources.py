"""Chips as sources: finding chip files, locating each one (its own georeference, else its web-map tile
name) with its pixel size and footprint on the ground, and planning the size it is written at."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import mercantile
import shapely
from affine import Affine
from pyproj import Geod, Transformer

from rooftrace.core.errors import RooftraceError
from rooftrace.imagery.georef import (
    WGS84,
    Georef,
    parse_tile_name,
    pixel_size_m,
    raster_georef,
    tile_georef,
)

CHIP_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".webp")


SPLITS = ("train", "val", "test")


#: Grid (pixels) the COCO writer rounds coordinates to; pieces are snapped to it before writing.
COCO_GRID = 0.01


#: Pieces of a building smaller than this (px² of the written image) are slivers and dropped.
MIN_PIECE_PX = 1.0


#: Without a target pixel size, chips whose pixel sizes differ by more than this ratio are refused.
GSD_TOLERANCE = 1.10


_GEOD = Geod(ellps="WGS84")


@dataclass
class Chip:
    """One input chip and what becomes of it (pixel sizes in metres)."""

    path: Path
    name: str  #: output stem (the chip's path under CHIPS_DIR, '/' -> '_', without suffix)
    georef: Georef  #: the chip's own place (source pixels)
    tile: mercantile.Tile | None
    input_gsd: float  #: the chip's own (the input's) pixel size
    out_w: int = 0
    out_h: int = 0
    out_transform: Affine = Affine.identity()
    gsd: float = 0.0  #: the written chip's pixel size (``model_gsd`` when resampled to it)
    block: str = ""
    split: str | None = None
    status: str = "kept"  #: kept | empty-outside | empty-skipped | nodata | unreadable | border-only
    pieces: list = field(default_factory=list)  #: (building index, pixel geometry, fraction, centroid inside)
    nodata_px: int = 0

    @property
    def crs_string(self) -> str:
        epsg = self.georef.crs.to_epsg()
        return f"EPSG:{epsg}" if epsg else self.georef.crs.to_wkt()


def find_chips(chips_dir: Path) -> list[Path]:
    """Image files in ``chips_dir`` and below, sorted by path (hidden files and sidecars left out)."""
    if not chips_dir.is_dir():
        raise RooftraceError(f"{chips_dir}: no such folder")
    found = sorted(p for p in chips_dir.rglob("*") if p.is_file() and p.suffix.lower() in CHIP_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(chips_dir).parts))
    if not found:
        raise RooftraceError(f"{chips_dir}: no image chips ({', '.join(CHIP_SUFFIXES)}) in this folder or below")
    return found


def axis_sizes_m(geo: Georef) -> tuple[float, float]:
    """Metres a pixel along x (a column step) and y (a row step) at the image centre, geodesically."""
    to_ll = Transformer.from_crs(geo.crs, WGS84, always_xy=True)
    c, r = geo.width / 2.0, geo.height / 2.0
    (x0, y0), (x1, y1), (x2, y2) = (to_ll.transform(*(geo.transform @ p)) for p in ((c, r), (c + 1, r), (c, r + 1)))
    return abs(_GEOD.inv(x0, y0, x1, y1)[2]), abs(_GEOD.inv(x0, y0, x2, y2)[2])


def locate_chips(paths: list[Path], chips_dir: Path, tms: bool = False) -> list[Chip]:
    """Each chip's place: its own georeference, else its web-map tile name. Raises on chips with neither."""
    from rooftrace.imagery.read import read_size

    chips, lost, names = [], [], {}
    for p in paths:
        tile = parse_tile_name(p, tms=tms)
        geo = raster_georef(p)
        if geo is None:
            if tile is None:
                lost.append(p)
                continue
            geo = tile_georef(tile, *read_size(p))
        name = _output_name(p.relative_to(chips_dir), tile)
        if name in names:
            raise RooftraceError(f"{p}: gives the same output name {name!r} as {names[name]}; rename one of them")
        names[name] = p
        chips.append(Chip(path=p, name=name, georef=geo, tile=tile, input_gsd=geo.gsd()))
    if lost:
        more = f" ({len(lost) - 1} more chips like it)" if len(lost) > 1 else ""
        raise RooftraceError(f"{lost[0]}: no georeference (GeoTIFF tags, .aux.xml sidecar or world file) and its name "
                             f"carries no web-map tile (OAM-<x>-<y>-<z>.png or <z>/<x>/<y>.png){more}")
    return chips


def _output_name(rel: Path, tile: mercantile.Tile | None) -> str:
    """The written image's stem: the chip's path under CHIPS_DIR ('/' -> '_'), and for a chip on the tile
    grid always ``<prefix><x>-<y>-<z>`` with the XYZ ``y``, so that the name still locates the image."""
    parts = list(rel.with_suffix("").parts)
    if tile is None:
        return "_".join(parts)
    import re

    m = re.search(r"(\d+)-(\d+)-(\d{1,2})$", parts[-1])
    if m:  # OAM-<x>-<y>-<z>
        prefix = "_".join(parts[:-1] + [parts[-1][: m.start()]]) if len(parts) > 1 else parts[-1][: m.start()]
    else:  # .../<z>/<x>/<y>
        prefix = "_".join(parts[:-3]) + "_" if len(parts) > 3 else ""
    return f"{prefix}{tile.x}-{tile.y}-{tile.z}"


#: Chips enlarged more than this are noted (a zoom level or pixel size that may be wrong).
NOTE_ENLARGE = 4.0


def plan_sizes(chips: list[Chip], chips_dir: Path, model_gsd: float | None) -> list[str]:
    """Each chip's output size and transform: resampled to ``model_gsd`` metres a pixel (the target), else as it is
    (refused when the chips' pixel sizes differ). Returns notes on chips enlarged more than
    :data:`NOTE_ENLARGE` times.

    Raises:
        RooftraceError: A chip whose resampled size needs more memory than the allocation bound, or
            that would be resampled by more than ``MAX_RESAMPLE`` (32x) either way (a misnamed chip,
            a wrong --gsd), naming the chip.
    """
    from rooftrace.core.memory import check_pixels
    from rooftrace.imagery.resample import MAX_RESAMPLE

    if model_gsd is None:
        zooms = sorted({c.tile.z for c in chips if c.tile is not None and c.georef.origin == "tile-name"})
        sizes = [c.input_gsd for c in chips]
        if len(zooms) > 1 or max(sizes) > GSD_TOLERANCE * min(sizes):
            what = f"zoom levels {', '.join(map(str, zooms))}; " if len(zooms) > 1 else ""
            raise RooftraceError(f"{chips_dir}: chips of several pixel sizes ({what}{min(sizes):.3f}-{max(sizes):.3f} m a pixel); "
                                 "pass --gsd METRES to resample them all to one pixel size (e.g. --gsd 0.3)")
    enlarged: list[tuple[float, str]] = []
    for c in chips:
        w, h = c.georef.width, c.georef.height
        if model_gsd is None:
            c.out_w, c.out_h, c.out_transform = w, h, c.georef.transform
        else:
            gx, gy = axis_sizes_m(c.georef)
            fx, fy = gx / model_gsd, gy / model_gsd
            # Before OpenCV is asked for it: the resampled chip, its validity mask and the PNG encoder's copy.
            check_pixels(c.path, max(w, w * fx), max(h, h * fy), 8, f"chip resampled to --gsd {model_gsd:g}")
            f = max(fx, fy, 1 / min(fx, fy))
            if f > MAX_RESAMPLE:
                how = "enlarged" if max(fx, fy) > 1 else "shrunk"
                src = f"its tile name (zoom {c.tile.z})" if c.georef.origin == "tile-name" and c.tile is not None else "its georeference"
                raise RooftraceError(f"{c.path}: would be {how} {f:.3g}x to --gsd {model_gsd:g} (its pixel size from {src} is "
                                     f"{min(gx, gy):.4g} m); rooftrace resamples by at most {MAX_RESAMPLE:g}x, so the chip's "
                                     "name or georeference, or --gsd, is wrong")
            if max(fx, fy) > NOTE_ENLARGE:
                enlarged.append((max(fx, fy), c.path.name))
            c.out_w, c.out_h = max(1, round(w * fx)), max(1, round(h * fy))
            c.out_transform = c.georef.transform @ Affine.scale(w / c.out_w, h / c.out_h)
        c.gsd = pixel_size_m(c.georef.crs, c.out_transform, c.out_w, c.out_h)
    if not enlarged:
        return []
    enlarged.sort(reverse=True)
    names = ", ".join(f"{n} ({f:.3g}x)" for f, n in enlarged[:3]) + (" ..." if len(enlarged) > 3 else "")
    return [f"note: {len(enlarged)} chip(s) enlarged more than {NOTE_ENLARGE:g}x to --gsd {model_gsd:g}: {names}; "
            "check their names (zoom level) or georeference"]


def chip_polygon(c: Chip) -> shapely.Polygon:
    """The chip's outline in its CRS."""
    t, w, h = c.georef.transform, c.georef.width, c.georef.height
    return shapely.Polygon([t @ (0, 0), t @ (w, 0), t @ (w, h), t @ (0, h)])
