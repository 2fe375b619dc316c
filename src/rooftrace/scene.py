"""Georeferenced scenes: a large GeoTIFF in, one GIS-ready polygon per building out.

:func:`predict_scene` runs a model over a scene of any size with memory bounded by the tile and
block sizes, not by the scene, and writes the buildings in the raster's CRS (GeoPackage or
GeoJSON, one feature per building with its ``area`` in map units and a ``score``). Two phases:

1. **Inference and stitching.** The scene is read window by window (``tile`` x ``tile`` pixels,
   consecutive windows ``overlap`` pixels apart; the last window of a row or column is shifted
   back to end at the scene's edge, so no window is padded unless the scene is smaller than a
   tile). Windows are batched and read one batch ahead in a thread. Each pixel takes its
   probability from exactly one window: the one it is most central in. Where two windows
   overlap, the overlap is split at its middle (*overlap-and-crop*, raster-vision's rule
   ``crop = (chip - stride) // 2`` for a regular grid), so a network's weak borders are
   never used and nothing is averaged. Rows are stitched one strip of windows at a time and
   written, as uint8 probabilities (1/255 steps), into a tiled, compressed temporary GeoTIFF with
   the scene's georeference: the scene's probabilities live on disk, never in memory.
2. **Post-processing in blocks.** The stitched map is cut into ``block`` x ``block`` *cores*;
   each core is read with a ``margin`` around it and post-processed as a whole
   (:func:`rooftrace.postprocess.postprocess`). Post-processing is local to *groups*: the
   8-connected components of the building mask dilated by one pixel (every step of ``watershed``
   works inside a 4-connected component of the mask, and ``seed``'s 3 x 3 closing reaches one
   pixel). A group is kept by the block whose core holds its *anchor*, its first pixel in raster
   order, which lies in exactly one core, so every building comes out exactly once, neither cut
   nor duplicated. A group that reaches the edge of its read window (within 2 pixels of a side
   that is not the scene's edge) may go on beyond it: its window is grown on those sides,
   doubling, until the group is whole, and the group alone is post-processed there. So a
   building larger than the margin, a warehouse or a terrace of touching houses, is still one
   building. Growth stops at ``max_group`` pixels a side (4,096 px, 1.2 km at 0.3 m): a group
   larger than that is cut there and counted in :attr:`SceneResult.n_truncated`.

Peak memory is the model and one batch of windows (phase 1), one strip of stitched rows
(``3 x tile x width`` bytes: 30 MB for a 20,000-pixel-wide scene), and one block with its
post-processing (2,304 x 2,304 px at the defaults: 64 MB of float32 probabilities plus the
post-processing's working arrays). GDAL's block cache is capped at 128 MB. Measured by
``benchmarks/scene_scale.py``: 0.93 GB at 4,000 x 4,000 px and 1.05 GB at 20,000 x 20,000 px, of
which about 0.63 GB is importing torch.

Bands (:class:`Scene`): three-band uint8 rasters are read as they are (a fourth band is accepted
when it is an alpha band). Any other band count needs a mapping, ``bands=(1, 1, 1)`` for a
panchromatic band or ``(1, 2, 3)`` for the first three bands of a multispectral image. Other
bit depths (uint16, float) are stretched to uint8 band by band between their 2nd and 98th
percentiles, computed once per scene from a decimated read (at most 2,048 pixels a side, served
from overviews when the file has them): per-window percentiles would give each window its own
contrast and the windows would disagree along every seam. Nodata (nodata values, alpha bands,
internal masks, NaN) is read as invalid: invalid pixels are black to the model and have
probability 0, so no building is found on them, and windows with no valid pixel are not run.

Many scenes, many machines: :func:`predict_scenes` takes a list of scenes and a shard ``(i, n)``
and processes scenes ``i, i + n, i + 2n, ...`` of the sorted list, skipping any whose output
exists, so ``n`` independent processes (one per GPU with ``CUDA_VISIBLE_DEVICES``, one per node
of a batch system, or ``n`` tasks of Dask or Ray) share a nation-sized job with no coordination,
and a killed job resumes where it stopped.

Torch is imported only when a model is run, so reading scenes, stitching and post-processing do
not need it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np
import rasterio
import shapely
from affine import Affine
from pyproj import CRS
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.errors import RasterioIOError
from rasterio.windows import Window
from tqdm import tqdm

from .geometry import pixel_to_map
from .imagery import open_raster
from .labels import RooftraceError, is_strict
from .postprocess import DEFAULT_METHOD, PostprocessSettings, postprocess

if TYPE_CHECKING:  # pragma: no cover
    from .dataset import Normalization
    from .weights import LoadedModel

#: Default window size and overlap (pixels).
DEFAULT_TILE = 512
DEFAULT_OVERLAP = 64
#: Default post-processing core size and the margin read around it (pixels).
DEFAULT_BLOCK = 2048
DEFAULT_MARGIN = 128
#: Largest window (pixels a side) a group of touching buildings is grown to (see module docstring).
DEFAULT_MAX_GROUP = 4096
#: Percentiles of the per-scene stretch of non-uint8 rasters.
DEFAULT_STRETCH = (2.0, 98.0)
#: Longest side of the decimated read the stretch percentiles come from.
OVERVIEW_SIZE = 2048
#: GDAL block cache (MB) while a scene is processed: bounds GDAL's share of the memory.
GDAL_CACHE_MB = 128
#: Output formats by suffix.
OUTPUT_DRIVERS = {".gpkg": "GPKG", ".geojson": "GeoJSON", ".json": "GeoJSON"}
#: Scene files that :func:`list_scenes` picks up in a folder.
SCENE_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img")

#: A model as :func:`predict_scene` takes it: a model file, a loaded model, or any callable from an
#: ``(N, 3, H, W)`` tensor (uint8, or normalised float32 when ``normalization`` is given) to
#: ``(N, C, H, W)`` probabilities (tensor or array), C = 1 or 3.
SceneModel = Callable[[Any], Any]

_PROB_BLOCK = 256  # block size of the stitched probability GeoTIFF
_EDGE = 2  # a group within this many pixels of a cut side may continue beyond it


# ---------------------------------------------------------------------------------------------
# Opening a scene: bands, stretch, nodata


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


# ---------------------------------------------------------------------------------------------
# Windows


def window_starts(size: int, tile: int, overlap: int) -> np.ndarray:
    """Start offsets of the windows along one axis: every ``tile - overlap`` pixels, the last
    one shifted back so that it ends at the edge (one window of the whole size when ``size <= tile``)."""
    if size <= tile:
        return np.zeros(1, dtype=np.int64)
    starts = list(range(0, size - tile + 1, tile - overlap))
    if starts[-1] != size - tile:
        starts.append(size - tile)
    return np.asarray(starts, dtype=np.int64)


def window_keep(starts: np.ndarray, tile: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``[lo, hi)`` along one axis that each window's prediction is kept for.

    Consecutive windows split their overlap at its middle, so the kept ranges tile ``[0, size)``
    exactly and each pixel comes from the window it is most central in (for a regular grid,
    ``overlap // 2`` pixels are cropped on each inner side, raster-vision's ``(chip - stride) // 2``).
    """
    t = min(tile, size)
    mid = (starts[1:] + starts[:-1] + t) // 2
    return np.r_[0, mid].astype(np.int64), np.r_[mid, size].astype(np.int64)


@dataclass(frozen=True)
class Grid:
    """The windows of a scene and the part of the scene each one's prediction is kept for."""

    width: int
    height: int
    tw: int
    th: int
    xs: np.ndarray
    ys: np.ndarray
    kx: tuple[np.ndarray, np.ndarray]
    ky: tuple[np.ndarray, np.ndarray]

    @classmethod
    def make(cls, width: int, height: int, tile: int, overlap: int) -> Grid:
        xs, ys = window_starts(width, tile, overlap), window_starts(height, tile, overlap)
        return cls(width, height, min(tile, width), min(tile, height), xs, ys,
                   window_keep(xs, tile, width), window_keep(ys, tile, height))

    @property
    def n_windows(self) -> int:
        return len(self.xs) * len(self.ys)

    def window(self, i: int, j: int) -> Window:
        """Window of row ``i``, column ``j`` of the grid."""
        return Window(int(self.xs[j]), int(self.ys[i]), self.tw, self.th)


def check_tiling(tile: int, overlap: int) -> None:
    """Raise a clear error for a window size and overlap that cannot tile a scene."""
    if tile < 32:
        raise RooftraceError(f"--tile {tile}: must be at least 32 pixels")
    if overlap < 0 or overlap >= tile:
        raise RooftraceError(f"--overlap {overlap}: must be at least 0 and less than --tile ({tile})")


# ---------------------------------------------------------------------------------------------
# Running a model on batches of windows


@dataclass
class ModelRunner:
    """A model as a function from ``(N, H, W, 3)`` uint8 windows to ``(N, C, H, W)`` float32.

    Made once by :func:`make_runner` and passed to :func:`predict_scene` as its ``model`` so that
    many scenes share one loaded network (:func:`predict_scenes` does).
    """

    fn: Callable[[np.ndarray], np.ndarray]
    channels: int | None
    model_path: Path | None = None
    description: str = "callable"
    #: The pixel size in metres the model was trained at (``None``: not recorded; scenes are read as they are).
    gsd: float | None = None


def make_runner(model: str | Path | LoadedModel | ModelRunner | SceneModel | None, device: str = "auto", tta: bool = False,
                normalization: Normalization | None = None, precision: str = "auto") -> ModelRunner:
    """Wrap a model file, a loaded model or a callable as a batch function (torch imported here).

    Loaded models get normalised input padded on the bottom and right to a multiple of 32, as in
    ``rooftrace predict``; callables get the uint8 windows as an ``(N, 3, H, W)`` tensor, or the
    normalised float32 tensor when ``normalization`` is given, and no padding.
    """
    import torch

    from .predict import pick_device, predict_probabilities
    from .weights import LoadedModel, load_model, shipped_model

    if isinstance(model, ModelRunner):
        return model
    if model is None:
        model = shipped_model()
    if isinstance(model, (str, Path)):
        dev = pick_device(device)
        model = load_model(model, device=dev)
    if isinstance(model, LoadedModel):
        loaded = model
        dev = next(loaded.model.parameters()).device if device == "auto" else pick_device(device)
        loaded.model.to(dev).to(memory_format=torch.channels_last)
        mean, std = np.asarray(loaded.mean, np.float32), np.asarray(loaded.std, np.float32)

        def run_loaded(batch: np.ndarray) -> np.ndarray:
            n, h, w, _ = batch.shape
            x = (batch.astype(np.float32) / 255.0 - mean) / std  # as dataset.Normalization.apply
            hp, wp = -(-h // 32) * 32, -(-w // 32) * 32
            padded = np.zeros((n, 3, hp, wp), dtype=np.float32)
            padded[:, :, :h, :w] = x.transpose(0, 3, 1, 2)
            return predict_probabilities(loaded, torch.from_numpy(padded), dev, tta=tta, precision=precision)[:, :, :h, :w]

        return ModelRunner(run_loaded, len(loaded.channels), loaded.path, f"{loaded.path.name} on {dev}", gsd=loaded.gsd)
    if not callable(model):
        raise RooftraceError(f"model {model!r}: expected a model file, a loaded model or a callable")
    fn = model

    def run_callable(batch: np.ndarray) -> np.ndarray:
        if normalization is not None:
            x = torch.from_numpy(np.stack([normalization.apply(b) for b in batch]))
        else:
            x = torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)))
        with torch.inference_mode():
            out = fn(x)
        if torch.is_tensor(out):
            out = out.detach().float().cpu().numpy()
        return np.asarray(out, dtype=np.float32)

    return ModelRunner(run_callable, None, None, getattr(fn, "__name__", "callable"))


def _quantise(probs: np.ndarray, n: int, h: int, w: int) -> np.ndarray:
    """Model output checked and stored as uint8 steps of 1/255 (round to nearest)."""
    p = np.asarray(probs)
    if p.ndim != 4 or p.shape[0] != n or p.shape[1] not in (1, 3) or p.shape[2:] != (h, w):
        raise RooftraceError(f"the model returned shape {p.shape}; expected ({n}, 1 or 3, {h}, {w}) probabilities")
    if not np.isfinite(p).all():
        raise RooftraceError("the model returned NaN or infinite probabilities (a diverged model?)")
    return np.rint(np.clip(p, 0.0, 1.0) * 255.0).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Phase 1: inference and stitching into a probability GeoTIFF


def _compression() -> dict[str, Any]:
    """ZSTD level 1 when GDAL has it (fast, small for mostly-empty maps), else DEFLATE level 1."""
    try:
        from rasterio.enums import Compression

        Compression("ZSTD")
        return {"compress": "zstd", "zstd_level": 1}
    except ValueError:  # pragma: no cover - GDAL built without ZSTD
        return {"compress": "deflate", "zlevel": 1}


@dataclass
class StitchStats:
    """What phase 1 did: windows run and skipped (no valid pixel), output channels, seconds."""

    n_windows: int
    n_skipped: int
    channels: int
    seconds: float


def stitch_scene(scene: Scene, runner: ModelRunner, out_path: str | Path, *, tile: int = DEFAULT_TILE,
                 overlap: int = DEFAULT_OVERLAP, batch_size: int = 4, progress: bool = True) -> StitchStats:
    """Run the model over every window of ``scene`` and write the stitched probabilities to ``out_path``.

    The output is a tiled GeoTIFF with the scene's size, CRS and transform, one uint8 band per
    model channel (probability x 255, rounded), 0 on invalid pixels. Only one strip of windows
    is held in memory; rows are written as soon as they are final.
    """
    check_tiling(tile, overlap)
    if batch_size < 1:
        raise RooftraceError(f"--batch-size {batch_size}: must be at least 1")
    t0 = time.perf_counter()
    grid = Grid.make(scene.width, scene.height, tile, overlap)
    ny, nx = len(grid.ys), len(grid.xs)
    channels = runner.channels
    if channels is None:  # a callable: ask it once what it returns
        probe = runner.fn(np.zeros((1, grid.th, grid.tw, 3), dtype=np.uint8))
        channels = int(np.asarray(probe).shape[1]) if np.ndim(probe) == 4 else 0
        if channels not in (1, 3):
            raise RooftraceError(f"the model returned shape {np.shape(probe)}; expected (1, 1 or 3, {grid.th}, {grid.tw})")
    profile = dict(driver="GTiff", width=scene.width, height=scene.height, count=channels, dtype="uint8",
                   crs=scene.src.crs, transform=scene.transform, tiled=True, blockxsize=_PROB_BLOCK,
                   blockysize=_PROB_BLOCK, BIGTIFF="IF_SAFER", **_compression())
    jobs = [(i, j) for i in range(ny) for j in range(nx)]
    batches = [jobs[k:k + batch_size] for k in range(0, len(jobs), batch_size)]
    ky0, ky1 = grid.ky
    kx0, kx1 = grid.kx
    strips: dict[int, np.ndarray] = {}
    left = {i: nx for i in range(ny)}
    pending: list[np.ndarray] = []
    state = {"pending_rows": 0, "written": 0, "skipped": 0}

    def read_batch(batch: list[tuple[int, int]]) -> list[tuple[int, int, np.ndarray, np.ndarray | None]]:
        return [(i, j, *scene.read(grid.window(i, j))) for i, j in batch]

    def write_rows(dst: rasterio.io.DatasetWriter, final: bool) -> None:
        rows = state["pending_rows"]
        n = rows if final else (rows // _PROB_BLOCK) * _PROB_BLOCK  # whole blocks only, until the end
        if n == 0:
            return
        data = np.concatenate(pending, axis=1) if len(pending) > 1 else pending[0]
        dst.write(data[:, :n], window=Window(0, state["written"], scene.width, n))
        pending.clear()
        if n < rows:
            pending.append(data[:, n:].copy())
        state["written"] += n
        state["pending_rows"] = rows - n

    bar = tqdm(total=len(jobs), desc=f"predict {scene.path.name}", unit="window", disable=not progress, dynamic_ncols=True)
    try:
        with rasterio.open(out_path, "w", **profile) as dst, ThreadPoolExecutor(max_workers=1) as pool:
            future = pool.submit(read_batch, batches[0])
            for k in range(len(batches)):
                items = future.result()
                if k + 1 < len(batches):
                    future = pool.submit(read_batch, batches[k + 1])
                run = [it for it in items if it[3] is None or it[3].any()]
                state["skipped"] += len(items) - len(run)
                q = None
                if run:
                    q = _quantise(runner.fn(np.stack([it[2] for it in run])), len(run), grid.th, grid.tw)
                    if q.shape[1] != channels:
                        raise RooftraceError(f"the model returned {q.shape[1]} channels, then {channels}")
                for n, (i, j, _, valid) in enumerate(run):
                    if i not in strips:
                        strips[i] = np.zeros((channels, ky1[i] - ky0[i], scene.width), dtype=np.uint8)
                    part = q[n]  # type: ignore[index]
                    if valid is not None:
                        part[:, ~valid] = 0
                    r0, r1 = ky0[i] - grid.ys[i], ky1[i] - grid.ys[i]
                    c0, c1 = kx0[j] - grid.xs[j], kx1[j] - grid.xs[j]
                    strips[i][:, :, kx0[j]:kx1[j]] = part[:, r0:r1, c0:c1]
                for i in (it[0] for it in items):
                    left[i] -= 1
                    if left[i] == 0:  # windows come in row order, so strips complete in order
                        strip = strips.pop(i, None)
                        if strip is None:  # every window of the strip had no valid pixel
                            strip = np.zeros((channels, ky1[i] - ky0[i], scene.width), dtype=np.uint8)
                        pending.append(strip)
                        state["pending_rows"] += strip.shape[1]
                        write_rows(dst, final=i == ny - 1)
                bar.update(len(items))
    finally:
        bar.close()
    return StitchStats(len(jobs), state["skipped"], channels, time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------
# Phase 2: post-processing in blocks, each building once


def _groups(p: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Groups of a probability block: 8-connected components of the mask dilated by one pixel.

    Returns ``(labels, stats)``: int32 ids (0 outside) and OpenCV's per-id ``x, y, w, h, area``.
    """
    import cv2

    mask = (p[0] >= threshold).view(np.uint8)
    dilated = cv2.dilate(mask, np.ones((3, 3), np.uint8))
    _, labels, stats, _ = cv2.connectedComponentsWithStats(dilated, connectivity=8, ltype=cv2.CV_32S)
    return labels, stats


def _anchors(labels: np.ndarray, stats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row and column (within the block) of each group's first pixel in raster order (index = id - 1)."""
    n = len(stats) - 1
    tops = stats[1:, 1]
    flat = np.flatnonzero(labels)  # ascending: raster order
    ids = labels.ravel()[flat]
    rows = flat // labels.shape[1]
    on_top = rows == tops[ids - 1]
    first_ids, first = np.unique(ids[on_top], return_index=True)
    cols = np.zeros(n, dtype=np.int64)
    cols[first_ids - 1] = flat[on_top][first] % labels.shape[1]
    return tops.astype(np.int64), cols


def _cut_sides(stats_row: np.ndarray, r0: int, c0: int, r1: int, c1: int, height: int, width: int) -> tuple[bool, bool, bool, bool]:
    """Which sides (top, left, bottom, right) of window ``[r0, r1) x [c0, c1)`` a group may go on beyond."""
    x, y, w, h = (int(v) for v in stats_row[:4])
    return (r0 > 0 and y < _EDGE, c0 > 0 and x < _EDGE,
            r1 < height and y + h > (r1 - r0) - _EDGE, c1 < width and x + w > (c1 - c0) - _EDGE)


def _cut_any(stats: np.ndarray, r0: int, c0: int, r1: int, c1: int, height: int, width: int) -> np.ndarray:
    """:func:`_cut_sides` for many groups at once: whether each may go on beyond the window."""
    x, y, w, h = (stats[:, k].astype(np.int64) for k in range(4))
    return (((r0 > 0) & (y < _EDGE)) | ((c0 > 0) & (x < _EDGE))
            | ((r1 < height) & (y + h > (r1 - r0) - _EDGE)) | ((c1 < width) & (x + w > (c1 - c0) - _EDGE)))


def _shift(geoms: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """Geometries translated by whole pixels (exact in floating point)."""
    if len(geoms) == 0 or (dx == 0 and dy == 0):
        return geoms
    offset = np.array([dx, dy], dtype=np.float64)
    return shapely.transform(geoms, lambda xy: xy + offset)


def _group_of(geoms: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The group id under each building: at a point inside it (0 only if none is found)."""
    if len(geoms) == 0:
        return np.zeros(0, dtype=np.int64)
    pts = shapely.get_coordinates(shapely.point_on_surface(geoms))
    h, w = labels.shape
    col = np.clip(np.floor(pts[:, 0]).astype(np.int64), 0, w - 1)
    row = np.clip(np.floor(pts[:, 1]).astype(np.int64), 0, h - 1)
    g = labels[row, col].astype(np.int64)
    for k in np.flatnonzero(g == 0):  # a ``seed`` contour through pixel centres may put it on an edge
        x0, y0, x1, y1 = shapely.bounds(geoms[k])
        win = labels[max(0, int(y0) - 1): int(math.ceil(y1)) + 1, max(0, int(x0) - 1): int(math.ceil(x1)) + 1]
        if win.any():
            g[k] = np.bincount(win[win > 0]).argmax()
    return g


class _ProbReader:
    """Windows of the stitched probability GeoTIFF as float32 probabilities ``(C, h, w)``."""

    def __init__(self, path: Path):
        self.src = rasterio.open(path)
        self.height, self.width = self.src.height, self.src.width

    def read(self, r0: int, c0: int, r1: int, c1: int) -> np.ndarray:
        q = self.src.read(window=Window(c0, r0, c1 - c0, r1 - r0))
        return q.astype(np.float32) / np.float32(255.0)

    def close(self) -> None:
        self.src.close()


@dataclass
class _BlockOutput:
    geoms: np.ndarray  # scene pixel coordinates
    scores: np.ndarray
    n_truncated: int = 0


def _resolve_group(reader: _ProbReader, seed: tuple[int, int], win: tuple[int, int, int, int], threshold: float,
                   method: str, settings: PostprocessSettings | None, max_group: int) -> tuple[tuple[int, int], np.ndarray, np.ndarray, bool]:
    """Grow the window around a group until it is whole, then post-process the group alone.

    Returns ``(anchor, geometries in scene pixels, scores, truncated)``.
    """
    r0, c0, r1, c1 = win
    H, W = reader.height, reader.width
    while True:
        p = reader.read(r0, c0, r1, c1)
        labels, stats = _groups(p, threshold)
        g = int(labels[seed[0] - r0, seed[1] - c0])
        top, left, bottom, right = _cut_sides(stats[g], r0, c0, r1, c1, H, W)
        if not (top or left or bottom or right):
            truncated = False
            break
        h, w = r1 - r0, c1 - c0
        grow_h, grow_w = max(0, min(h, max_group - h)), max(0, min(w, max_group - w))
        n0 = (max(0, r0 - (grow_h if top else 0)), max(0, c0 - (grow_w if left else 0)),
              min(H, r1 + (grow_h if bottom else 0)), min(W, c1 + (grow_w if right else 0)))
        if n0 == (r0, c0, r1, c1):
            truncated = True
            break
        r0, c0, r1, c1 = n0
    x, y, w, h = (int(v) for v in stats[g][:4])
    anchor_col = x + int(np.argmax(labels[y, x:x + w] == g))
    anchor = (r0 + y, c0 + anchor_col)
    sub = p[:, y:y + h, x:x + w].copy()
    sub[0][labels[y:y + h, x:x + w] != g] = 0.0  # the group alone: post-processing is local to it
    found = postprocess(sub, method=method, settings=settings)
    geoms = _shift(np.asarray(found.footprints, dtype=object), c0 + x, r0 + y)
    return anchor, geoms, np.asarray(found.scores, dtype=np.float64), truncated


def block_cores(height: int, width: int, block: int) -> list[tuple[int, int]]:
    """Top-left ``(row, col)`` of the post-processing cores of a ``height x width`` map, in the order they are run."""
    return [(r, c) for r in range(0, height, block) for c in range(0, width, block)]


def postprocess_blocks(prob_path: str | Path, *, method: str = DEFAULT_METHOD, settings: PostprocessSettings | None = None,
                       block: int = DEFAULT_BLOCK, margin: int = DEFAULT_MARGIN, max_group: int = DEFAULT_MAX_GROUP,
                       progress: bool = True, cores: Sequence[tuple[int, int]] | None = None) -> Iterator[_BlockOutput]:
    """Post-process a stitched probability GeoTIFF block by block; yields each block's buildings.

    Every building of the scene is yielded exactly once (see the module docstring), as a
    polygon in scene pixel coordinates with its score. ``cores`` (top-left ``(row, col)`` of
    cores, from :func:`block_cores`) limits the run to those cores: the ownership rule needs
    nothing from the other cores, so disjoint subsets can run in separate processes
    (:mod:`rooftrace.distributed`) and together give exactly the buildings of one run.
    """
    if block < 64:
        raise RooftraceError(f"--block {block}: must be at least 64 pixels")
    if margin < 2 * _EDGE:
        raise RooftraceError(f"--margin {margin}: must be at least {2 * _EDGE} pixels")
    s = settings or PostprocessSettings()
    threshold = s.footprint_threshold
    reader = _ProbReader(Path(prob_path))
    H, W = reader.height, reader.width
    cores = block_cores(H, W, block) if cores is None else [(int(r), int(c)) for r, c in cores]
    bar = tqdm(total=len(cores), desc="post-process", unit="block", disable=not progress, dynamic_ncols=True)
    try:
        for cr0, cc0 in cores:
            cr1, cc1 = min(H, cr0 + block), min(W, cc0 + block)
            r0, c0, r1, c1 = max(0, cr0 - margin), max(0, cc0 - margin), min(H, cr1 + margin), min(W, cc1 + margin)
            p = reader.read(r0, c0, r1, c1)
            bar.update(1)
            if not (p[0] >= threshold).any():
                continue
            labels, stats = _groups(p, threshold)
            n = len(stats) - 1
            arow, acol = _anchors(labels, stats)
            owned = (arow + r0 >= cr0) & (arow + r0 < cr1) & (acol + c0 >= cc0) & (acol + c0 < cc1)
            cut = _cut_any(stats[1:], r0, c0, r1, c1, H, W)
            take = np.zeros(n + 1, dtype=bool)
            take[1:] = owned & ~cut
            geoms_out, scores_out, truncated = [], [], 0
            if take.any():
                found = postprocess(p, method=method, settings=settings)
                geoms = np.asarray(found.footprints, dtype=object)
                keep = take[_group_of(geoms, labels)]
                geoms_out.append(_shift(geoms[keep], c0, r0))
                scores_out.append(np.asarray(found.scores, dtype=np.float64)[keep])
            seen: set[tuple[int, int]] = set()
            for g in np.flatnonzero(owned & cut) + 1:  # groups that may go on beyond the window
                anchor, geoms, scores, cut_off = _resolve_group(
                    reader, (int(arow[g - 1] + r0), int(acol[g - 1] + c0)), (r0, c0, r1, c1), threshold, method,
                    settings, max(max_group, r1 - r0, c1 - c0))
                if not (cr0 <= anchor[0] < cr1 and cc0 <= anchor[1] < cc1) or anchor in seen:
                    continue  # another block owns it, or it was one of this block's groups already
                seen.add(anchor)
                truncated += int(cut_off)
                geoms_out.append(geoms)
                scores_out.append(scores)
            if geoms_out:
                yield _BlockOutput(np.concatenate(geoms_out), np.concatenate(scores_out), truncated)
    finally:
        bar.close()
        reader.close()


# ---------------------------------------------------------------------------------------------
# Writing features


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


def probabilities_temp(out: str | Path, work_dir: str | Path | None = None) -> Path:
    """Where :func:`predict_scene` stitches the probabilities of the scene predicted into ``out``: a hidden
    file beside it (``.<out name>.probs.tif``, or in ``work_dir``), never the system's temp folder, so a
    killed run leaves nothing behind that the next run of the same output does not remove."""
    out = Path(out)
    return (Path(work_dir) if work_dir is not None else out.parent) / f".{out.name}.probs.tif"


def _remove_probabilities_temp(path: Path) -> None:
    for p in path.parent.glob(path.name + "*"):  # GDAL's .aux.xml and .ovr sidecars too
        p.unlink(missing_ok=True)


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


# ---------------------------------------------------------------------------------------------
# The whole scene


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


@dataclass
class SceneResult:
    """What :func:`predict_scene` did.

    Attributes:
        scene, out: The raster and the vector file written.
        model: The model that ran (file name and device, or the callable's name).
        n_buildings: Features written.
        width, height: Scene size in pixels.
        crs: The scene's CRS (``EPSG:26914``, or WKT), ``None`` when it has none.
        pixel_size: ``(x, y)`` size of a pixel in map units.
        area_km2: Ground area of the scene.
        bands: How bands were read (:meth:`BandPlan.describe`).
        n_windows, n_windows_nodata: Windows in the grid, and those skipped for having no valid pixel.
        n_truncated: Groups of buildings larger than ``max_group`` pixels, cut there.
        seconds_inference, seconds_postprocess, seconds: Time of phase 1, phase 2 and in all.
        probabilities: Where the stitched probabilities were kept, if asked for.
        gsd_input: The scene's pixel size in metres (``None``: unknown), and ``gsd_source`` where
            it came from (``--gsd``, ``geotiff`` or ``unknown``).
        gsd_model: The pixel size the model was trained at (``None``: not recorded).
        scale: The factor the scene was resampled by before the model saw it (1.0: not resampled);
            the model then saw ``round(width * scale) x round(height * scale)`` pixels.
        notes: Lines about the pixel size, printed by :meth:`summary`.
    """

    scene: Path
    out: Path
    model: str
    n_buildings: int
    width: int
    height: int
    crs: str | None
    pixel_size: tuple[float, float]
    area_km2: float | None
    bands: str
    n_windows: int
    n_windows_nodata: int
    n_truncated: int
    seconds_inference: float
    seconds_postprocess: float
    seconds: float
    probabilities: Path | None = None
    gsd_input: float | None = None
    gsd_source: str = "unknown"
    gsd_model: float | None = None
    scale: float = 1.0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A few lines for the terminal."""
        area = f", {self.area_km2:.2f} km²" if self.area_km2 is not None else ""
        per_km2 = f" ({self.seconds / self.area_km2:.1f} s/km²)" if self.area_km2 else ""
        lines = [
            f"{self.scene}: {self.width} x {self.height} px{area}, {self.crs or 'no CRS'}; {self.bands}",
            f"{self.n_buildings} buildings written to {self.out} in {self.seconds:.1f} s{per_km2} ({self.model}): "
            f"inference {self.seconds_inference:.1f} s over {self.n_windows} windows "
            f"({self.n_windows_nodata} skipped as nodata), post-processing {self.seconds_postprocess:.1f} s",
        ]
        if self.n_truncated:
            lines.append(f"warning: {self.n_truncated} group(s) of touching buildings were larger than the largest window "
                         "and were cut there (raise max_group)")
        if self.probabilities is not None:
            lines.append(f"stitched probabilities kept in {self.probabilities}")
        lines.extend(self.notes)
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict of the fields."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}


def _resolve_postprocessing(runner: ModelRunner, method: str | None, settings: PostprocessSettings | None) -> tuple[str, PostprocessSettings | None]:
    if runner.model_path is not None and (method is None or settings is None):
        from .predict import load_tuned

        tuned_method, tuned = load_tuned(runner.model_path)
        method, settings = method or tuned_method, settings or tuned
    return method or DEFAULT_METHOD, settings


def scene_scale(scene: Scene, gsd: float | None, model_gsd: float | None) -> tuple[float, float | None, str, list[str]]:
    """The factor to read a scene at so that its pixels are the model's, and why.

    The scene's pixel size is ``gsd`` when given, else measured on the ground from its transform
    and CRS at its centre (:func:`rooftrace.georef.pixel_size_m`: metres, degrees included), else
    unknown and taken to be the model's. Returns ``(factor, gsd_input, gsd_source, notes)``;
    the factor is 1.0 when the model records no pixel size or the two are within 2 %.
    """
    from .georef import pixel_size_m
    from .predict import resample_factor

    own = None
    if scene.crs is not None:
        try:
            own = float(pixel_size_m(scene.crs, scene.src.transform, scene.src.width, scene.src.height))
            own = own if math.isfinite(own) and own > 0 else None
        except Exception:  # noqa: BLE001 - pyproj raises several types for CRSs it cannot bring to WGS84
            own = None
    notes: list[str] = []
    if gsd is not None:
        g_in, source = gsd, "--gsd"
        if own is not None and not 0.5 <= gsd / own <= 2.0:
            notes.append(f"note: --gsd {gsd:g} overrides the scene's own pixel size, {own:.3g} m, which differs by more than 2x; check --gsd")
    elif own is not None:
        g_in, source = own, "geotiff"
    else:
        g_in, source = None, "unknown"
    factor = resample_factor(g_in, model_gsd)
    if model_gsd is None:
        if gsd is not None:
            notes.append(f"note: the model records no pixel size, so --gsd {gsd:g} changes nothing: the scene is read as it is")
    elif g_in is None:
        notes.append(f"note: the scene has no CRS and no --gsd was given: its pixel size was taken to be the model's "
                     f"({model_gsd:.3g} m) and it was not resampled")
    elif factor != 1.0:
        notes.append(f"pixel size: {g_in:.3g} m ({source}) resampled to the model's {model_gsd:.3g} m (x{factor:.3g}): "
                     f"{scene.src.width} x {scene.src.height} px read as {max(1, round(scene.src.width * factor))} x "
                     f"{max(1, round(scene.src.height * factor))}; footprints are in the scene's CRS")
    else:
        notes.append(f"pixel size: {g_in:.3g} m ({source}), the model's {model_gsd:.3g} m; not resampled")
    return factor, g_in, source, notes


def predict_scene(
    scene: str | Path,
    out: str | Path,
    model: str | Path | LoadedModel | ModelRunner | SceneModel | None = None,
    *,
    gsd: float | None = None,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    batch_size: int = 4,
    device: str = "auto",
    tta: bool = False,
    precision: str = "auto",
    bands: str | Sequence[int] | None = None,
    stretch: tuple[float, float] = DEFAULT_STRETCH,
    method: str | None = None,
    settings: PostprocessSettings | None = None,
    block: int = DEFAULT_BLOCK,
    margin: int = DEFAULT_MARGIN,
    max_group: int = DEFAULT_MAX_GROUP,
    probabilities: str | Path | None = None,
    normalization: Normalization | None = None,
    work_dir: str | Path | None = None,
    force: bool = False,
    progress: bool = True,
) -> SceneResult:
    """Predict the buildings of a georeferenced scene and write them in its CRS.

    Args:
        scene: The raster (any size; read window by window).
        out: ``.gpkg`` (GeoPackage, recommended) or ``.geojson`` (with the legacy ``crs`` member
            that GDAL and QGIS read), one polygon feature per building with ``score`` and
            ``area`` (map units squared).
        model: A rooftrace ``.safetensors`` file, a loaded model, a :class:`ModelRunner`, or a
            callable (see :data:`SceneModel`); default the shipped model.
        gsd: The scene's pixel size in metres (``--gsd``), for a scene without a CRS; it
            overrides what the scene's transform says. When the model records the pixel size it
            was trained at, the scene is read resampled to it (:func:`scene_scale`,
            :meth:`Scene.set_scale`): windows, overlap, blocks and the post-processing
            thresholds are then in the model's pixels, and the footprints go to the scene's CRS
            through the resampled view's transform.
        tile, overlap: Window size and overlap in pixels (of the model's pixel size).
        batch_size: Windows per forward pass.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
        tta: Average the four flips.
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16`` (see :mod:`rooftrace.precision`).
        bands: Band mapping (see :class:`Scene`).
        stretch: Percentiles of the per-scene stretch of non-uint8 rasters.
        method, settings: Post-processing; default what ``rooftrace tune`` saved beside the
            model, else ``watershed`` with default settings.
        block, margin, max_group: Post-processing block geometry (module docstring).
        probabilities: Also keep the stitched probabilities here (a GeoTIFF, uint8 x 255).
        normalization: For callables: give them normalised float input instead of uint8.
        work_dir: Where the temporary probability GeoTIFF goes (default beside ``out``, as
            ``.<out name>.probs.tif``; one a killed run left is removed by the next run of ``out``).
        force: Overwrite ``out`` (and ``probabilities``).
        progress: Show progress bars.

    Raises:
        RooftraceError: Unreadable scene, a band mapping needed, an output that exists, a bad
            option, or a model whose output is not probabilities.
    """
    from .predict import check_gsd

    t0 = time.perf_counter()
    scene, out = Path(scene), Path(out)
    gsd = check_gsd(gsd)
    check_tiling(tile, overlap)
    check_output(out, force)
    if probabilities is not None and Path(probabilities).exists() and not force:
        raise RooftraceError(f"{probabilities}: already exists; pass --force to overwrite it")
    # Before the model is loaded or the scene read: an output that cannot be written stops at once.
    check_writable(out.parent, out)
    if probabilities is not None:
        check_writable(Path(probabilities).parent, probabilities)
    prob_path = probabilities_temp(out, work_dir)
    if work_dir is not None:
        check_writable(work_dir, prob_path)
    _remove_probabilities_temp(prob_path)  # what a killed run of this output left
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), Scene(scene, bands=bands, percentiles=stretch) as sc:
        runner = model if isinstance(model, ModelRunner) else make_runner(model, device=device, tta=tta, normalization=normalization, precision=precision)
        method, settings = _resolve_postprocessing(runner, method, settings)
        factor, gsd_in, gsd_source, notes = scene_scale(sc, gsd, runner.gsd)
        sc.set_scale(factor)
        writer = FeatureWriter(out, sc.crs, sc.transform, force=force)
        try:
            stats = stitch_scene(sc, runner, prob_path, tile=tile, overlap=overlap, batch_size=batch_size, progress=progress)
            t1 = time.perf_counter()
            truncated = 0
            for part in postprocess_blocks(prob_path, method=method, settings=settings, block=block, margin=margin,
                                           max_group=max_group, progress=progress):
                writer.add(part.geoms, part.scores)
                truncated += part.n_truncated
            written = writer.close()
            t2 = time.perf_counter()
            kept = None
            if probabilities is not None:
                kept = Path(probabilities)
                kept.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(prob_path), kept)
        except BaseException:
            writer.abort()
            raise
        finally:
            _remove_probabilities_temp(prob_path)
        crs = sc.crs
        st = sc.src.transform
        return SceneResult(
            scene=scene, out=written, model=runner.description, n_buildings=writer.count, width=sc.src.width, height=sc.src.height,
            crs=_crs_name(crs) if crs is not None else None, pixel_size=(abs(st.a), abs(st.e)),
            area_km2=scene_area_km2(sc.src.width, sc.src.height, st, crs), bands=sc.plan.describe(),
            n_windows=stats.n_windows, n_windows_nodata=stats.n_skipped, n_truncated=truncated,
            seconds_inference=t1 - t0, seconds_postprocess=t2 - t1, seconds=time.perf_counter() - t0, probabilities=kept,
            gsd_input=gsd_in, gsd_source=gsd_source, gsd_model=runner.gsd, scale=factor, notes=notes,
        )


# ---------------------------------------------------------------------------------------------
# Many scenes, many processes


def check_unique_stems(paths: Sequence[Path]) -> None:
    """Refuse scenes whose outputs would collide: one output per file stem (``OUT/<stem>.gpkg``)."""
    stems: dict[str, Path] = {}
    for p in paths:
        if p.stem in stems:
            raise RooftraceError(f"{stems[p.stem]} and {p} share the file stem {p.stem!r}; their outputs would collide")
        stems[p.stem] = p


def list_scenes(inputs: Sequence[str | Path]) -> list[Path]:
    """Scene files from files, folders (their ``.tif``/``.tiff``/``.vrt``/... files) and ``.txt``
    lists (one path a line, relative to the list's folder; ``#`` starts a comment), sorted and
    without duplicates.

    Raises:
        RooftraceError: A path that does not exist, or no scene at all.
    """
    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found.extend(q for q in p.iterdir() if q.suffix.lower() in SCENE_SUFFIXES and not q.name.startswith("."))
        elif p.suffix.lower() == ".txt" and p.is_file():
            for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
                line = line.split("#", 1)[0].strip()
                if line:
                    q = Path(line) if Path(line).is_absolute() else p.parent / line
                    if not q.exists():
                        raise RooftraceError(f"{p}: line {n}: {q} does not exist")
                    found.append(q)
        elif p.exists():
            found.append(p)
        else:
            raise RooftraceError(f"{p}: no such file or folder")
    scenes = sorted({q.resolve() for q in found}, key=str)
    if not scenes:
        raise RooftraceError(f"no scenes found in {', '.join(map(str, inputs))}")
    return scenes


def parse_shard(value: str | tuple[int, int] | None) -> tuple[int, int]:
    """A shard ``(i, n)`` from ``"i/n"`` (0 <= i < n); ``None`` is the whole list ``(0, 1)``."""
    if value is None:
        return 0, 1
    if isinstance(value, str):
        i_s, sep, n_s = value.partition("/")
        try:
            i, n = int(i_s), int(n_s)
        except ValueError:
            raise RooftraceError(f"--shard {value!r}: expected I/N, e.g. 0/4 for the first of 4 workers") from None
    else:
        i, n = value
    if not (n >= 1 and 0 <= i < n):
        raise RooftraceError(f"--shard {i}/{n}: need 0 <= I < N")
    return i, n


def shard_scenes(scenes: Sequence[Path], shard: tuple[int, int]) -> list[Path]:
    """Scenes ``i, i + n, ...`` of the list sorted by path: the share of worker ``i`` of ``n``.

    Deterministic and stateless: workers given the same list agree on who does what without
    talking to each other, and together cover every scene once.
    """
    i, n = shard
    return sorted(scenes, key=str)[i::n]


@dataclass
class ScenesResult:
    """What :func:`predict_scenes` did: per-scene results, scenes skipped (output existed) and failures."""

    out_dir: Path
    shard: tuple[int, int]
    results: list[SceneResult] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)

    def summary(self) -> str:
        i, n = self.shard
        lines = [f"shard {i}/{n}: {len(self.results)} scene(s) predicted, {len(self.skipped)} already done, "
                 f"{len(self.failed)} failed; outputs in {self.out_dir}"]
        lines += [f"  {r.scene.name}: {r.n_buildings} buildings, {r.seconds:.1f} s" for r in self.results]
        lines += [f"  failed {p}: {msg}" for p, msg in self.failed]
        return "\n".join(lines)


def _finished(output: Path) -> bool:
    """Whether a scene's output is there and not empty."""
    try:
        return output.stat().st_size > 0
    except OSError:
        return False


def predict_scenes(
    scenes: Sequence[str | Path],
    out_dir: str | Path,
    model: str | Path | LoadedModel | ModelRunner | SceneModel | None = None,
    *,
    shard: str | tuple[int, int] | None = None,
    fmt: str = "gpkg",
    device: str = "auto",
    tta: bool = False,
    precision: str = "auto",
    normalization: Normalization | None = None,
    force: bool = False,
    progress: bool = True,
    **kwargs: Any,
) -> ScenesResult:
    """Predict this worker's share of many scenes into ``out_dir/<scene stem>.<fmt>``.

    The model is loaded once. Scenes whose output exists are skipped unless ``force`` (outputs
    are written atomically, so one that exists is complete): rerunning a killed worker resumes
    it. A scene that fails with a :class:`RooftraceError` is reported and the others go on.

    Args:
        scenes: Files, folders and ``.txt`` lists (see :func:`list_scenes`).
        shard: ``"i/n"`` or ``(i, n)``: take scenes ``i, i + n, ...`` of the sorted list.
        fmt: ``gpkg`` or ``geojson``.
        kwargs: Passed on to :func:`predict_scene` (tile, overlap, batch_size, bands, ...).

    Raises:
        RooftraceError: No scenes, a bad shard or format, or two scenes with the same file stem.
    """
    from .predict import check_gsd

    if fmt not in ("gpkg", "geojson"):
        raise RooftraceError(f"--format {fmt!r}: choose gpkg or geojson")
    check_gsd(kwargs.get("gsd"))  # before any scene: a bad --gsd stops the run, it does not fail every scene
    i, n = parse_shard(shard)
    every = list_scenes(scenes)
    check_unique_stems(every)
    out_dir = Path(out_dir)
    result = ScenesResult(out_dir, (i, n))
    mine = shard_scenes(every, (i, n))
    # An output of 0 bytes (a copy cut short, a full disk outside rooftrace) is not a finished scene.
    todo = [p for p in mine if force or not _finished(out_dir / f"{p.stem}.{fmt}")]
    result.skipped = [p for p in mine if p not in todo]
    if not todo:
        return result
    check_writable(out_dir, out_dir)  # before the model is loaded: not once per scene, after its inference
    runner = make_runner(model, device=device, tta=tta, normalization=normalization, precision=precision)
    for p in todo:
        try:
            out = out_dir / f"{p.stem}.{fmt}"
            result.results.append(predict_scene(p, out, runner, force=force or out.exists(), progress=progress, **kwargs))
        except RooftraceError as exc:
            if is_strict():  # --strict: stop at the first scene that fails
                raise
            result.failed.append((p, str(exc)))
    return result


__all__ = [
    "BandPlan", "FeatureWriter", "Grid", "ModelRunner", "Scene", "SceneModel", "SceneResult", "ScenesResult", "StitchStats",
    "check_output", "check_tiling", "check_writable", "probabilities_temp", "list_scenes", "make_runner", "parse_bands", "parse_shard", "postprocess_blocks", "predict_scene",
    "predict_scenes", "scene_area_km2", "scene_scale", "shard_scenes", "stitch_scene", "window_keep", "window_starts",
]
