"""Phase 1 of a scene: run the model window by window and stitch the probabilities, overlap-and-crop,
into a tiled uint8 GeoTIFF on disk, so the scene's probabilities never live in memory."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
from rasterio.windows import Window
from tqdm import tqdm

from rooftrace.core.errors import RooftraceError
from rooftrace.imagery.raster import Scene
from rooftrace.imagery.windows import DEFAULT_OVERLAP, DEFAULT_TILE, Grid, check_tiling
from rooftrace.inference.runtime import ModelRunner

if TYPE_CHECKING:  # pragma: no cover
    pass


_PROB_BLOCK = 256  # block size of the stitched probability GeoTIFF


def _quantise(probs: np.ndarray, n: int, h: int, w: int) -> np.ndarray:
    """Model output checked and stored as uint8 steps of 1/255 (round to nearest)."""
    p = np.asarray(probs)
    if p.ndim != 4 or p.shape[0] != n or p.shape[1] not in (1, 3) or p.shape[2:] != (h, w):
        raise RooftraceError(f"the model returned shape {p.shape}; expected ({n}, 1 or 3, {h}, {w}) probabilities")
    if not np.isfinite(p).all():
        raise RooftraceError("the model returned NaN or infinite probabilities (a diverged model?)")
    return np.rint(np.clip(p, 0.0, 1.0) * 255.0).astype(np.uint8)


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
