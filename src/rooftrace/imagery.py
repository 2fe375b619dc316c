"""Reading image tiles (GeoTIFF, TIFF, PNG, JPEG) into arrays, with errors that name the file.

Tiles are read with rasterio (GDAL), which reads every format BEGC2024 and the sample pack use.
Arrays are ``(height, width, 3)`` uint8 RGB. This module does not import torch.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

from .labels import RooftraceError

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RooftraceError(f"{folder}: no such folder")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def open_raster(path: Path) -> rasterio.DatasetReader:
    """Open any GDAL raster (GeoTIFF, PNG, JPEG...) with errors that name the file and the problem."""
    if not Path(path).exists():
        raise RooftraceError(f"{path}: no such file")
    if Path(path).stat().st_size == 0:
        raise RooftraceError(f"{path}: the file is empty (0 bytes)")
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


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image as ``(H, W, 3)`` uint8 RGB.

    One band is repeated three times; a fourth (alpha) band is dropped; 16-bit data is scaled
    to 8 bits by its 2nd-98th percentile stretch. Anything else raises :class:`RooftraceError`.
    """
    path = Path(path)
    with open_raster(path) as src:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                data = src.read()
        except RasterioIOError as exc:
            raise RooftraceError(f"{path}: truncated or corrupt image ({str(exc).splitlines()[0]})") from None
    bands = data.shape[0]
    if bands == 1:
        data = np.repeat(data, 3, axis=0)
    elif bands == 4:
        data = data[:3]
    elif bands != 3:
        raise RooftraceError(f"{path}: has {bands} bands; expected RGB (3), RGBA (4) or one band")
    if data.dtype != np.uint8:
        data = stretch_to_uint8(data)
    return np.ascontiguousarray(data.transpose(1, 2, 0))


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
