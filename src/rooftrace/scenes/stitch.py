"""Phase 1 of a scene: run the model window by window and stitch the probabilities, overlap-and-crop,
into a tiled uint8 GeoTIFF on disk, so the scene's probabilities never live in memory."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import rasterio
from rasterio.windows import Window
from tqdm import tqdm

from rooftrace.core.errors import RooftraceError
from rooftrace.imagery.raster import ArrayScene, Scene
from rooftrace.imagery.windows import (
    DEFAULT_OVERLAP,
    DEFAULT_TILE,
    Grid,
    check_tiling,
    run_windows,
)
from rooftrace.inference.runtime import ModelRunner, padded_size

PROB_BLOCK = 256  # block size of the stitched probability GeoTIFF


def _quantise(probs: np.ndarray, n: int, h: int, w: int) -> np.ndarray:
    """Model output checked and stored as uint8 steps of 1/255 (round to nearest)."""
    p = np.asarray(probs)
    if p.ndim != 4 or p.shape[0] != n or p.shape[1] not in (1, 3) or p.shape[2:] != (h, w):
        raise RooftraceError(f"the model returned shape {p.shape}; expected ({n}, 1 or 3, {h}, {w}) probabilities")
    if not np.isfinite(p).all():
        raise RooftraceError("the model returned NaN or infinite probabilities (a diverged model?)")
    return np.rint(np.clip(p, 0.0, 1.0) * 255.0).astype(np.uint8)


def model_channels(runner: ModelRunner, grid: Grid) -> int:
    """The runner's output channels (1 or 3); a callable is asked once, on one black window."""
    if runner.channels is not None:
        return runner.channels
    probe = runner.fn(np.zeros((1, grid.th, grid.tw, 3), dtype=np.uint8))
    channels = int(np.asarray(probe).shape[1]) if np.ndim(probe) == 4 else 0
    if channels not in (1, 3):
        raise RooftraceError(f"the model returned shape {np.shape(probe)}; expected (1, 1 or 3, {grid.th}, {grid.tw})")
    return channels


def quantised_runner(runner: ModelRunner, channels: int, grid: Grid) -> Callable[[np.ndarray], np.ndarray]:
    """``runner`` on a batch of windows, its output checked and quantised (:func:`_quantise`)."""

    def run(batch: np.ndarray) -> np.ndarray:
        q = _quantise(runner.fn(batch), len(batch), grid.th, grid.tw)
        if q.shape[1] != channels:
            raise RooftraceError(f"the model returned {q.shape[1]} channels, then {channels}")
        return q

    return run


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


def prob_profile(width: int, height: int, channels: int, crs: Any = None, transform: Any = None) -> dict[str, Any]:
    """The creation options of a stitched probability GeoTIFF: tiled, compressed, one uint8 band a channel."""
    where = dict(crs=crs, transform=transform) if transform is not None else {}
    return dict(driver="GTiff", width=width, height=height, count=channels, dtype="uint8", **where, tiled=True,
                blockxsize=PROB_BLOCK, blockysize=PROB_BLOCK, BIGTIFF="IF_SAFER", **_compression())


def stitch_windows(grid: Grid, read: Callable, run: Callable[[np.ndarray], np.ndarray], batch_size: int,
                   dst: rasterio.io.DatasetWriter, channels: int, *, jobs: Sequence[tuple[int, int]] | None = None,
                   bar: Any = None, streams: int = 1) -> int:
    """Run windows through :func:`rooftrace.imagery.windows.run_windows` and write what each keeps into ``dst``,
    whose first row is the first row the first window keeps; returns the windows skipped (no valid pixel).

    The one stitching loop: a scene (:func:`stitch_scene`) runs every window; a Dask task
    (:func:`rooftrace.scenes.tasks.window_task`) a run of them, whose first and last rows of windows may be
    partial (what no window of the run keeps stays 0). One strip of windows is held in memory, and rows are
    written in whole blocks of the GeoTIFF as soon as they are final. ``streams``: batches run at once
    (:func:`run_windows`).
    """
    width = grid.width
    strip: np.ndarray | None = None  # the row of windows being stitched
    strip_i = -1
    pending: list[np.ndarray] = []
    state = {"pending_rows": 0, "written": 0, "skipped": 0}

    def write_rows(final: bool) -> None:
        rows = state["pending_rows"]
        n = rows if final else (rows // PROB_BLOCK) * PROB_BLOCK  # whole blocks only, until the end
        if n == 0:
            return
        data = np.concatenate(pending, axis=1) if len(pending) > 1 else pending[0]
        dst.write(data[:, :n], window=Window(0, state["written"], width, n))
        pending.clear()
        if n < rows:
            pending.append(data[:, n:].copy())
        state["written"] += n
        state["pending_rows"] = rows - n

    def close_strip() -> None:
        nonlocal strip
        if strip is not None:
            pending.append(strip)
            state["pending_rows"] += strip.shape[1]
            strip = None
            write_rows(final=False)

    for kept in run_windows(grid, read, run, batch_size, jobs=jobs, streams=streams):
        if kept.i != strip_i:  # windows come row by row, so strips complete in order
            close_strip()
            strip_i = kept.i
            strip = np.zeros((channels, kept.rows.stop - kept.rows.start, width), dtype=np.uint8)
        if kept.part is None:
            state["skipped"] += 1
        else:
            strip[:, :, kept.cols] = kept.part  # type: ignore[index]
        if bar is not None:
            bar.update(1)
    close_strip()
    write_rows(final=True)
    return state["skipped"]


def stitch_scene(scene: Scene | ArrayScene, runner: ModelRunner, out_path: str | Path, *, tile: int = DEFAULT_TILE,
                 overlap: int = DEFAULT_OVERLAP, batch_size: int = 4, progress: bool = True, streams: int | None = None
                 ) -> StitchStats:
    """Run the model over every window of ``scene`` and write the stitched probabilities to ``out_path``.

    The output is a tiled GeoTIFF with the scene's size, CRS and transform, one uint8 band per
    model channel (probability x 255, rounded), 0 on invalid pixels (:func:`stitch_windows`). ``scene``
    is a raster (:class:`Scene`) or an array (:class:`ArrayScene`: no CRS, the output is in its pixels).
    ``streams``: batches run at once (``None``: the runtime's default; :meth:`ModelRunner.streams`); the
    output is the same for any number (PyTorch fp32: probabilities within 1e-5; see :meth:`ModelRunner.streams`).
    """
    check_tiling(tile, overlap)
    if batch_size < 1:
        raise RooftraceError(f"--batch-size {batch_size}: must be at least 1")
    t0 = time.perf_counter()
    grid = Grid.make(scene.width, scene.height, tile, overlap)
    channels = model_channels(runner, grid)
    where = (scene.src.crs, scene.transform) if isinstance(scene, Scene) else (None, None)
    bar = tqdm(total=grid.n_windows, desc=f"predict {scene.path.name}", unit="window", disable=not progress, dynamic_ncols=True)
    try:
        with runner.streams(streams) as granted, \
                rasterio.open(out_path, "w", **prob_profile(scene.width, scene.height, channels, *where)) as dst:
            if granted > 1 and runner.runtime is not None:  # the forward passes one stream would run, spread
                batch_size = runner.runtime.stream_batch(batch_size, *padded_size(grid.th, grid.tw))
            skipped = stitch_windows(grid, scene.read, quantised_runner(runner, channels, grid), batch_size, dst, channels,
                                     bar=bar, streams=granted)
    finally:
        bar.close()
    return StitchStats(grid.n_windows, skipped, channels, time.perf_counter() - t0)
