"""Pixel size: checking a ground sample distance, the resampling factor between a tile's and a model's
pixel size, resizing images, and mapping footprints back to the tile's own pixel grid."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from rooftrace.core.errors import RooftraceError
from rooftrace.core.memory import TILE_BYTES_PER_PIXEL, check_pixels
from rooftrace.imagery.georef import Georef, locate_image

#: Pixel sizes within this fraction of the model's are used as they are (no resampling).
GSD_TOLERANCE = 0.02

#: The most an image is resampled either way (32x: 0.3 m from 0.01 m drone pixels or 9.6 m satellite
#: pixels). A larger factor means a wrong pixel size (a bogus transform, a typo in --gsd), and would
#: shrink an image to nothing or enlarge it past any memory.
MAX_RESAMPLE = 32.0


def check_gsd(gsd: float | None) -> float | None:
    """``gsd`` (metres a pixel, from ``--gsd``) checked: ``None`` or a finite number > 0.

    Raises:
        RooftraceError: Zero, negative, infinite or NaN.
    """
    if gsd is None:
        return None
    try:
        value = float(gsd)
    except (TypeError, ValueError):
        raise RooftraceError(f"--gsd {gsd!r}: expected a pixel size in metres, such as 0.3") from None
    if not (np.isfinite(value) and value > 0):
        raise RooftraceError(f"--gsd {gsd:g}: the pixel size must be a number of metres greater than 0, such as 0.3")
    return value


def gsd_alias(value: float | None, gsd: float | None, name: str) -> float | None:
    """A pixel size given by its name (``input_gsd``: the input's; ``model_gsd``: the model's or the target's) or by
    the older keyword ``gsd``, which public functions still take with its old meaning: whichever is given.

    Raises:
        RooftraceError: Both given, and different.
    """
    if gsd is None:
        return value
    if value is not None and value != gsd:
        raise RooftraceError(f"{name}={value!r} and gsd={gsd!r}: give one (gsd is the older name of {name})")
    return gsd


def checked_input_gsd(input_gsd: float | None, gsd: float | None = None) -> float | None:
    """The input's pixel size, given as ``input_gsd`` or by its older keyword ``gsd`` (:func:`gsd_alias`), checked
    (:func:`check_gsd`): what every public function that takes the input's pixel size does first."""
    return check_gsd(gsd_alias(input_gsd, gsd, "input_gsd"))


def resample_factor(input_gsd: float | None, model_gsd: float | None, tolerance: float = GSD_TOLERANCE) -> float:
    """How much to scale an image of pixel size ``input_gsd`` so that its pixels are ``model_gsd``:
    ``input_gsd / model_gsd``, or exactly 1.0 when either is unknown or they differ by at most
    ``tolerance`` (2 %).

    Raises:
        RooftraceError: A factor beyond :data:`MAX_RESAMPLE` either way.
    """
    if not input_gsd or not model_gsd:
        return 1.0
    f = float(input_gsd) / float(model_gsd)
    if not 1 / MAX_RESAMPLE <= f <= MAX_RESAMPLE:
        raise RooftraceError(f"a pixel size of {float(input_gsd):.4g} m is {f:.3g}x the model's {float(model_gsd):g} m; rooftrace "
                             f"resamples by at most {MAX_RESAMPLE:g}x either way, so this pixel size is wrong (a typo in "
                             "--gsd, or a georeference that is not the image's): fix it or give the right --gsd")
    return 1.0 if abs(f - 1.0) <= tolerance else f


def check_resampled(where: str | Path, width: int, height: int, factor: float,
                    bytes_per_pixel: float = TILE_BYTES_PER_PIXEL) -> None:
    """Refuse, before resizing, an image whose resampled size (``round(w * f) x round(h * f)``) needs more
    memory than the allocation bound (:func:`rooftrace.core.memory.check_allocation`)."""
    if factor > 1.0:
        check_pixels(where, max(1, round(width * factor)), max(1, round(height * factor)), bytes_per_pixel,
                     f"image resampled x{factor:.3g} to its model's pixel size")


def resample_rgb(rgb: np.ndarray, factor: float) -> np.ndarray:
    """An ``(H, W, 3)`` image scaled by ``factor`` to ``round(W * f) x round(H * f)`` pixels (at
    least 1), as training resamples tiles (:func:`rooftrace.imagery.resample.resize_image`: area averaging when
    shrinking, bilinear when enlarging)."""
    if factor == 1.0:
        return rgb
    h, w = rgb.shape[:2]
    return resize_image(rgb, (max(1, round(h * factor)), max(1, round(w * factor))))


def footprints_to_grid(footprints: list, scores: list, from_size: tuple[int, int],
                       to_size: tuple[int, int]) -> tuple[list, list]:
    """Footprints traced on a resampled image of ``from_size = (h, w)`` pixels brought back to the
    image's own grid of ``to_size = (H, W)`` pixels: scaled by ``(W / w, H / h)`` about the origin
    (the top-left corner), clipped to the image, empty ones dropped (with their scores)."""
    import shapely

    (h, w), (H, W) = from_size, to_size
    if not footprints or (h, w) == (H, W):
        return list(footprints), list(scores)
    arr = np.asarray(footprints, dtype=object)
    scale = np.array([W / w, H / h])
    arr = shapely.transform(arr, lambda xy: xy * scale)
    b = shapely.bounds(arr)
    out = (b[:, 0] < 0) | (b[:, 1] < 0) | (b[:, 2] > W) | (b[:, 3] > H)  # floating-point rounding at the far edges
    if out.any():
        arr[out] = shapely.clip_by_rect(arr[out], 0.0, 0.0, float(W), float(H))
    keep = ~shapely.is_empty(arr) & (shapely.area(arr) > 0)
    return list(arr[keep]), [v for v, k in zip(scores, keep) if k]


def resize_image(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``rgb`` resized to ``(height, width)``: area-averaged when shrinking, bilinear when enlarging."""
    h, w = size
    if (h, w) == rgb.shape[:2]:
        return rgb
    shrink = h * w < rgb.shape[0] * rgb.shape[1]
    return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


@dataclass(frozen=True)
class TilePlace:
    """Where a tile lies and the pixel size it was predicted at.

    Attributes:
        georef: Its georeference (:func:`rooftrace.imagery.georef.locate_image`), ``None`` when it has none.
        input_gsd: Metres a pixel of the input, ``None`` when unknown.
        gsd_source: ``--gsd``, ``geotiff``, ``tile-name`` or ``unknown``.
        own_gsd: The tile's own pixel size from its georeference (also when ``--gsd`` overrides it).
        factor: The scale it was resampled by before the model saw it (1.0: not resampled).
    """

    georef: Georef | None
    input_gsd: float | None
    gsd_source: str
    own_gsd: float | None
    factor: float


def place_tile(path: Path, width: int, height: int, input_gsd: float | None = None, model_gsd: float | None = None,
               tms: bool = False) -> TilePlace:
    """Locate a tile and decide its input pixel size and resampling factor (see :func:`predict_folder`)."""
    try:
        geo = locate_image(path, width, height, tms=tms)
    except RooftraceError:
        geo = None
    return place_georef(geo, input_gsd, model_gsd, path)


def place_georef(geo: Georef | None, input_gsd: float | None, model_gsd: float | None, where: str | Path) -> TilePlace:
    """The input pixel size of an image with georeference ``geo`` (``None``: none) and its resampling
    factor to ``model_gsd``: ``input_gsd`` when given (``--input-gsd``), else the image's own, measured geodesically; errors
    name ``where``. The one pixel-size rule: tiles (:func:`place_tile`), the API and scenes
    (:func:`rooftrace.scenes.predict.scene_scale`) all decide through it."""
    own = None
    if geo is not None:
        try:
            own = float(geo.gsd())
            own = own if np.isfinite(own) and own > 0 else None
        except Exception:  # noqa: BLE001 - pyproj raises several types for CRSs it cannot bring to WGS84
            own = None
    if input_gsd is not None:
        g_in, source = input_gsd, "--gsd"  # the recorded source keeps its name (written into outputs)
    elif own is not None:
        g_in, source = own, geo.origin  # type: ignore[union-attr]
    else:
        g_in, source = None, "unknown"
    try:
        factor = resample_factor(g_in, model_gsd)
    except RooftraceError as exc:
        raise RooftraceError(f"{where}: {exc} (the pixel size is from {source})") from None
    return TilePlace(geo, g_in, source, own, factor)
