"""Reading a large raster for inference: band choice, the per-scene percentile stretch to uint8 (measured
on an overview, so every window of a scene is stretched alike) and windowed reads."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import rasterio
from affine import Affine
from pyproj import CRS
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from rooftrace.core.errors import RooftraceError
from rooftrace.imagery.read import open_raster

if TYPE_CHECKING:  # pragma: no cover
    pass


#: Percentiles of the per-scene stretch of non-uint8 rasters.
DEFAULT_STRETCH = (2.0, 98.0)


#: Longest side of the decimated read the stretch percentiles come from.
OVERVIEW_SIZE = 2048


#: GDAL block cache (MB) while a scene is processed: bounds GDAL's share of the memory.
GDAL_CACHE_MB = 128


#: Scene files that :func:`list_scenes` picks up in a folder.
SCENE_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img")


def parse_bands(value: str | Sequence[int] | None) -> tuple[int, int, int] | None:
    """A band mapping as three 1-based band numbers (red, green, blue), from ``"1,1,1"`` or a sequence.

    Raises:
        RooftraceError: Not three whole numbers >= 1.
    """
    if value is None:
        return None
    items: Sequence[Any] = value.replace(" ", "").split(",") if isinstance(value, str) else value
    try:
        bands = tuple(int(b) for b in items)
    except (TypeError, ValueError):
        raise RooftraceError(f"--bands {value!r}: expected three band numbers such as 1,2,3 or 1,1,1") from None
    if len(bands) != 3 or any(b < 1 for b in bands):
        raise RooftraceError(f"--bands {value!r}: expected three band numbers >= 1 (red, green, blue), such as 1,2,3 or 1,1,1")
    return bands  # type: ignore[return-value]


@dataclass(frozen=True)
class BandPlan:
    """How a raster's bands become the three uint8 channels a model reads.

    Attributes:
        bands: 1-based band numbers for red, green and blue (repeats allowed).
        dtype: The raster's data type.
        stretch: Per output channel ``(low, high)``: values mapped to 0 and 255; ``None`` for
            uint8 rasters, which are read as they are.
        percentiles: The percentiles ``stretch`` was computed at, when it was.
        masked: Whether the raster has nodata values, an alpha band or a mask (else every pixel
            is valid and no mask is read).
    """

    bands: tuple[int, int, int]
    dtype: str
    stretch: tuple[tuple[float, float], ...] | None
    percentiles: tuple[float, float] | None
    masked: bool

    def describe(self) -> str:
        """One line for the terminal."""
        text = f"bands {','.join(map(str, self.bands))} ({self.dtype})"
        if self.stretch is not None and self.percentiles is not None:
            lo, hi = self.percentiles
            ranges = ", ".join(f"{a:g}-{b:g}" for a, b in self.stretch)
            text += f", stretched per band from the scene's {lo:g}-{hi:g} percentiles: {ranges}"
        return text


def _stretch_to_uint8(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``values`` mapped linearly from ``[lo, hi]`` to ``[0, 255]``, clipped and rounded (float64 maths)."""
    scaled = (np.asarray(values, dtype=np.float64) - lo) / (hi - lo)
    return np.floor(np.clip(np.nan_to_num(scaled, nan=0.0), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _plan_bands(src: rasterio.DatasetReader, path: Path, bands: tuple[int, int, int] | None,
                percentiles: tuple[float, float], overview_size: int) -> BandPlan:
    count, dtype = src.count, src.dtypes[0]
    if bands is None:
        if count == 3:
            bands = (1, 2, 3)
        elif count == 4 and src.colorinterp[3] == ColorInterp.alpha:
            bands = (1, 2, 3)  # RGBA: the alpha band is the mask
        else:
            kind = "a single band" if count == 1 else f"{count} bands"
            raise RooftraceError(
                f"{path}: has {kind} ({dtype}); rooftrace reads red, green and blue, so say which bands to use: "
                "--bands 1,1,1 for a panchromatic band, --bands 1,2,3 (or 3,2,1, ...) for a multispectral image"
            )
    bad = [b for b in bands if b > count]
    if bad:
        raise RooftraceError(f"{path}: has {count} band(s); --bands {','.join(map(str, bands))} names band {bad[0]}")
    masked = any(src.mask_flag_enums[b - 1] != [MaskFlags.all_valid] for b in set(bands))
    masked = masked or np.issubdtype(np.dtype(dtype), np.floating)
    if np.dtype(dtype) == np.uint8:
        return BandPlan(bands, dtype, None, None, masked)
    lo_p, hi_p = percentiles
    if not 0.0 <= lo_p < hi_p <= 100.0:
        raise RooftraceError(f"stretch percentiles {lo_p:g},{hi_p:g}: need 0 <= low < high <= 100")
    uniq = sorted(set(bands))
    f = max(1, math.ceil(max(src.width, src.height) / overview_size))
    shape = (len(uniq), max(1, math.ceil(src.height / f)), max(1, math.ceil(src.width / f)))
    try:
        data = src.read(uniq, out_shape=shape, resampling=Resampling.nearest, masked=True)
    except RasterioIOError as exc:
        raise RooftraceError(f"{path}: could not read an overview for the stretch ({str(exc).splitlines()[0]})") from None
    ranges: dict[int, tuple[float, float]] = {}
    for k, b in enumerate(uniq):
        band = data[k]
        vals = np.asarray(band.compressed(), dtype=np.float64)
        vals = vals[np.isfinite(vals)]
        if vals.size == 0:
            raise RooftraceError(f"{path}: band {b} has no valid pixel (all nodata); nothing to predict")
        lo, hi = (float(v) for v in np.percentile(vals, [lo_p, hi_p]))
        ranges[b] = (lo, hi if hi > lo else lo + 1.0)
    return BandPlan(bands, dtype, tuple(ranges[b] for b in bands), (lo_p, hi_p), masked)


class Scene:
    """An open raster read window by window as ``(H, W, 3)`` uint8 plus its valid pixels.

    The band mapping and the stretch are decided once, when the scene is opened (see the module
    docstring), so every window of a scene is converted the same way.

    Args:
        path: A raster GDAL reads (GeoTIFF, VRT, ...).
        bands: Band mapping (``"1,1,1"`` or three 1-based numbers); required unless the raster
            has three bands (or three and alpha).
        percentiles: Stretch percentiles for rasters that are not uint8.
        overview_size: Longest side of the decimated read the percentiles come from.

    Raises:
        RooftraceError: Unreadable file, bands that need a mapping, a mapping that names a band
            the raster lacks, or a raster with no valid pixel.

    A scene can be read at another pixel size (:meth:`set_scale`): ``width``, ``height``,
    ``transform`` and :meth:`read` then describe a resampled view of the raster, with the same
    extent and CRS, which is all the windows, stitching and blocks ever see.
    """

    def __init__(self, path: str | Path, bands: str | Sequence[int] | None = None,
                 percentiles: tuple[float, float] = DEFAULT_STRETCH, overview_size: int = OVERVIEW_SIZE):
        self.path = Path(path)
        self.scale = 1.0
        self._view: tuple[int, int] | None = None  # (width, height) of the resampled view
        self.src = open_raster(self.path)
        try:
            self.plan = _plan_bands(self.src, self.path, parse_bands(bands), percentiles, overview_size)
        except BaseException:
            self.src.close()
            raise
        self._uniq = sorted(set(self.plan.bands))
        self._index = [self._uniq.index(b) for b in self.plan.bands]
        self._luts: dict[int, np.ndarray] = {}

    def set_scale(self, factor: float) -> None:
        """Read the scene resampled by ``factor`` (0.5: half as many pixels a side): a view of
        ``round(W * f) x round(H * f)`` pixels whose transform is the raster's scaled to cover the
        same extent. Windows are read with GDAL's resampling (average when shrinking, bilinear
        when enlarging). ``1.0`` reads the raster as it is."""
        if factor == 1.0:
            self.scale, self._view = 1.0, None
            return
        self.scale = float(factor)
        self._view = (max(1, round(self.src.width * factor)), max(1, round(self.src.height * factor)))

    @property
    def width(self) -> int:
        return self._view[0] if self._view else self.src.width

    @property
    def height(self) -> int:
        return self._view[1] if self._view else self.src.height

    @property
    def transform(self) -> Affine:
        if self._view is None:
            return self.src.transform
        return self.src.transform * Affine.scale(self.src.width / self._view[0], self.src.height / self._view[1])

    @property
    def crs(self) -> CRS | None:
        return CRS.from_user_input(self.src.crs.to_wkt()) if self.src.crs else None

    def close(self) -> None:
        self.src.close()

    def __enter__(self) -> Scene:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _to_uint8(self, band: np.ndarray, channel: int) -> np.ndarray:
        if self.plan.stretch is None:
            return band
        lo, hi = self.plan.stretch[channel]
        if band.dtype in (np.uint16, np.int16, np.int8):  # a lookup table: one gather per pixel
            offset = int(np.iinfo(band.dtype).min)
            if channel not in self._luts:
                values = np.arange(offset, int(np.iinfo(band.dtype).max) + 1)
                self._luts[channel] = _stretch_to_uint8(values, lo, hi)
            return self._luts[channel][band.astype(np.int64) - offset if offset else band]
        return _stretch_to_uint8(band, lo, hi)

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray | None]:
        """One window as ``(rgb, valid)``: ``(h, w, 3)`` uint8 (invalid pixels 0), and ``(h, w)`` bool
        valid pixels, or ``None`` when the raster has no nodata at all.

        Raises:
            RooftraceError: The window cannot be read (a truncated or corrupt file).
        """
        try:
            if self._view is None:
                data = self.src.read(self._uniq, window=window)
                masks = self.src.read_masks(self._uniq, window=window) if self.plan.masked else None
            else:  # the same window of the resampled view: a fractional window of the raster, resampled
                sx, sy = self.src.width / self._view[0], self.src.height / self._view[1]
                src_window = Window(window.col_off * sx, window.row_off * sy, window.width * sx, window.height * sy)
                shape = (len(self._uniq), int(window.height), int(window.width))
                how = Resampling.average if self.scale < 1 else Resampling.bilinear
                data = self.src.read(self._uniq, window=src_window, out_shape=shape, resampling=how)
                masks = (self.src.read_masks(self._uniq, window=src_window, out_shape=shape, resampling=Resampling.nearest)
                         if self.plan.masked else None)
        except RasterioIOError as exc:
            raise RooftraceError(
                f"{self.path}: could not read rows {window.row_off}-{window.row_off + window.height}, columns "
                f"{window.col_off}-{window.col_off + window.width} ({str(exc).splitlines()[0]})"
            ) from None
        valid = None
        if masks is not None:
            valid = np.all(masks > 0, axis=0)
            if np.issubdtype(data.dtype, np.floating):
                valid &= np.all(np.isfinite(data), axis=0)
        h, w = data.shape[1:]
        rgb = np.empty((h, w, 3), dtype=np.uint8)
        for c, k in enumerate(self._index):
            rgb[..., c] = self._to_uint8(data[k], c)
        if valid is not None:
            rgb[~valid] = 0
        return rgb, valid


class ArrayScene:
    """An ``(H, W, 3)`` uint8 array read window by window as a :class:`Scene` is: what the stitching
    (:func:`rooftrace.scenes.stitch.stitch_scene`) needs of a raster, without a file. Windows are views of
    the array (nothing is copied), every pixel is valid, and there is no CRS: pixel coordinates.

    The Python API runs an image of more than :data:`rooftrace.inference.runtime.WINDOWED_ABOVE` pixels
    through it (:meth:`rooftrace.api.Model.footprints`), so memory stays flat in the image's size.
    """

    scale = 1.0
    crs = None

    def __init__(self, rgb: np.ndarray, name: str = "the array"):
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise RooftraceError(f"{name}: expected an (H, W, 3) uint8 array, got {rgb.shape} {rgb.dtype}")
        self.rgb = rgb
        self.path = Path(name)
        self.transform = Affine.identity()

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    def read(self, window: Window) -> tuple[np.ndarray, None]:
        """One window as ``(rgb, None)`` (every pixel valid)."""
        r, c = int(window.row_off), int(window.col_off)
        return self.rgb[r:r + int(window.height), c:c + int(window.width)], None
