"""Windows over a raster: window starts with overlap, the overlap-and-crop rule that gives each pixel to
exactly one window, the grid of windows of a scene, and the one loop that runs a model over them
(:func:`run_windows`). Pixel coordinates: (column, row) from the
top-left corner."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np
from rasterio.windows import Window

from rooftrace.core.errors import RooftraceError

if TYPE_CHECKING:  # pragma: no cover
    pass


#: Default window size and overlap (pixels).
DEFAULT_TILE = 512


DEFAULT_OVERLAP = 64


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


@dataclass
class KeptWindow:
    """One window's share of a stitched output: grid row ``i``, column ``j``; ``rows`` and ``cols`` the
    part of the image it is kept for (image pixels); ``part`` the model's output over exactly that
    part, ``(C, rows, cols)``, 0 where the window had no valid pixel; ``None`` when the window had no
    valid pixel at all (it was not run)."""

    i: int
    j: int
    rows: slice
    cols: slice
    part: np.ndarray | None


def run_windows(grid: Grid, read: Callable[[Window], tuple[np.ndarray, np.ndarray | None]],
                run: Callable[[np.ndarray], np.ndarray], batch_size: int,
                jobs: Sequence[tuple[int, int]] | None = None, streams: int = 1) -> Iterator[KeptWindow]:
    """Run ``run`` over the windows of ``grid`` in batches and yield each window's kept part, in job order.

    The one window loop of rooftrace: a large tile (:meth:`rooftrace.inference.runtime.ModelRuntime.windowed_probabilities`),
    a scene (:func:`rooftrace.scenes.stitch.stitch_scene`) and a Dask task's share of a scene
    (:func:`rooftrace.scenes.tasks.window_task`) all stitch through it, so each pixel comes from the
    one window it is most central in (:func:`window_keep`) everywhere.

    Args:
        grid: The windows.
        read: ``Window -> (rgb (th, tw, 3) uint8, valid (th, tw) bool or None for all valid)``. The next
            batch is read in a thread while this one runs (reading releases the GIL).
        run: ``(N, th, tw, 3) uint8 -> (N, C, th, tw)`` (any dtype; its result is cropped, not copied).
        batch_size: Windows per call of ``run``.
        jobs: ``(i, j)`` windows to run, in this order (default every window, row by row).
        streams: Calls of ``run`` at once, each in its own thread (1: in the calling thread, one batch at
            a time); the caller makes ``run`` fit (:meth:`rooftrace.inference.runtime.ModelRuntime.streams`).
            Batches are the same and come back in the same order either way.
    """
    from concurrent.futures import ThreadPoolExecutor

    from rooftrace.core.threads import ordered_map

    jobs = [(i, j) for i in range(len(grid.ys)) for j in range(len(grid.xs))] if jobs is None else list(jobs)
    batches = [jobs[k:k + batch_size] for k in range(0, len(jobs), batch_size)]
    if not batches:
        return
    (ky0, ky1), (kx0, kx1) = grid.ky, grid.kx
    Item = tuple[int, int, np.ndarray, np.ndarray | None]

    def read_batch(batch: list[tuple[int, int]]) -> list[Item]:
        return [(i, j, *read(grid.window(i, j))) for i, j in batch]

    def run_batch(items: list[Item]) -> tuple[list[Item], list[Item], np.ndarray | None]:
        todo = [it for it in items if it[3] is None or it[3].any()]
        return items, todo, (run(np.stack([it[2] for it in todo])) if todo else None)

    def kept(items: list[Item], todo: list[Item], out: np.ndarray | None) -> Iterator[KeptWindow]:
        done = {(it[0], it[1]): n for n, it in enumerate(todo)}
        for i, j, _, valid in items:
            rows, cols = slice(int(ky0[i]), int(ky1[i])), slice(int(kx0[j]), int(kx1[j]))
            n = done.get((i, j))
            if n is None:
                yield KeptWindow(i, j, rows, cols, None)
                continue
            full = out[n]  # type: ignore[index]
            if valid is not None:
                full[:, ~valid] = 0
            y, x = int(grid.ys[i]), int(grid.xs[j])
            yield KeptWindow(i, j, rows, cols, full[:, rows.start - y:rows.stop - y, cols.start - x:cols.stop - x])

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="rooftrace-read") as pool:

        def read_ahead() -> Iterator[list[Item]]:  # each batch read while the one before it runs
            future = pool.submit(read_batch, batches[0])
            for k in range(len(batches)):
                items = future.result()
                if k + 1 < len(batches):
                    future = pool.submit(read_batch, batches[k + 1])
                yield items

        # streams: a batch per stream running, one waiting for a free stream; 1: in this thread
        for done in ordered_map(run_batch, read_ahead(), streams, name="rooftrace-net"):
            yield from kept(*done)
