"""Reading image tiles (GeoTIFF, TIFF, PNG, JPEG) into arrays, with errors that name the file.

TIFF, GeoTIFF and JPEG tiles are read with rasterio (GDAL); PNG with Pillow, which raises on a
truncated file where GDAL's PNG driver can return the missing rows as zeros without an error. Arrays are ``(height, width, 3)`` uint8 RGB. This module does not import torch.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import ColorInterp
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

from rooftrace.core.errors import RooftraceError
from rooftrace.core.memory import check_pixels

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RooftraceError(f"{folder}: no such folder")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def _check_file(path: Path) -> None:
    """A missing or empty image file is an error naming it (before any decoder sees it)."""
    if not Path(path).exists():
        raise RooftraceError(f"{path}: no such file")
    if Path(path).stat().st_size == 0:
        raise RooftraceError(f"{path}: the file is empty (0 bytes)")


def open_raster(path: Path) -> rasterio.DatasetReader:
    """Open any GDAL raster (GeoTIFF, PNG, JPEG...) with errors that name the file and the problem."""
    _check_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path)
    except RasterioIOError as exc:
        raise RooftraceError(f"{path}: not a readable raster or image ({str(exc).splitlines()[0]})") from None


def read_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of an image, reading only its header."""
    with open_raster(Path(path)) as src:
        return src.width, src.height


#: Read with Pillow: GDAL's PNG driver can return the rows of a truncated file as zeros without an
#: error. JPEG stays with GDAL, which does raise on truncation (and decodes as the shipped model saw).
PIL_SUFFIXES = (".png",)


def read_rgb(path: str | Path, bytes_per_pixel: float = 0) -> np.ndarray:
    """Read an image as ``(H, W, 3)`` uint8 RGB.

    The size its header declares is checked against the allocation bound
    (:func:`rooftrace.core.memory.check_allocation`) before anything is decoded: the bands as stored,
    the RGB result, a float copy for a stretch, and ``bytes_per_pixel`` more for the caller's work
    (a 300 KB sparse GeoTIFF can declare 100,000 x 100,000 pixels).

    One band is repeated three times (a palette band is expanded through its colour table); a
    fourth (alpha) band is dropped; 16-bit and float data are scaled to 8 bits by their 2nd-98th
    percentile stretch. An empty, truncated or corrupt file, or one with another band count,
    raises :class:`RooftraceError` naming the file.
    """
    path = Path(path)
    if path.suffix.lower() in PIL_SUFFIXES:
        data = _read_pil(path, bytes_per_pixel)
    else:
        with open_raster(path) as src:
            item = np.dtype(src.dtypes[0]).itemsize
            check_pixels(path, src.width, src.height, src.count * item + 3 + (4 * src.count if item > 1 else 0) + bytes_per_pixel)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", NotGeoreferencedWarning)
                    data = src.read()
                    if src.count == 1 and src.colorinterp[0] == ColorInterp.palette:
                        data = _apply_colormap(data[0], src.colormap(1))
            except (RasterioIOError, ValueError) as exc:
                raise RooftraceError(f"{path}: truncated or corrupt image ({str(exc).splitlines()[0]})") from None
    bands = data.shape[0]
    if bands == 1:
        data = np.repeat(data, 3, axis=0)
    elif bands == 2:  # gray + alpha
        data = np.repeat(data[:1], 3, axis=0)
    elif bands == 4:
        data = data[:3]
    elif bands != 3:
        raise RooftraceError(f"{path}: has {bands} bands; expected RGB (3), RGBA (4) or one band")
    if data.dtype != np.uint8:
        data = stretch_to_uint8(data)
    return np.ascontiguousarray(data.transpose(1, 2, 0))


def _read_pil(path: Path, bytes_per_pixel: float = 0) -> np.ndarray:
    """A PNG as ``(bands, H, W)``, decoded in full so that truncation is an error."""
    from PIL import Image, UnidentifiedImageError

    _check_file(path)
    try:
        with Image.open(path) as im:
            bands = len(im.getbands())
            check_pixels(path, im.width, im.height, 2 * bands + 3 + (4 * bands if im.mode.startswith("I") else 0) + bytes_per_pixel)
            im.load()
            if im.mode in ("P", "PA", "1", "CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGBA" if im.mode == "PA" or "transparency" in im.info else "RGB")
            arr = np.asarray(im)
    except UnidentifiedImageError:
        raise RooftraceError(f"{path}: not a readable image (not PNG data)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise RooftraceError(f"{path}: truncated or corrupt image ({exc})") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _apply_colormap(index: np.ndarray, cmap: dict[int, tuple[int, ...]]) -> np.ndarray:
    lut = np.zeros((max(256, max(cmap) + 1), 3), np.uint8)
    for k, v in cmap.items():
        lut[k] = v[:3]
    return lut[index].transpose(2, 0, 1)


def stretch_to_uint8(data: np.ndarray, low: float = 2.0, high: float = 98.0) -> np.ndarray:
    """Scale any numeric array to uint8 by its ``low``-``high`` percentile range (per array)."""
    arr = data.astype(np.float32)
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        return np.zeros(data.shape, np.uint8)
    lo, hi = np.percentile(finite, [low, high])
    if hi <= lo:
        hi = lo + 1.0
    return (np.clip((arr - lo) / (hi - lo), 0, 1) * 255 + 0.5).astype(np.uint8)
