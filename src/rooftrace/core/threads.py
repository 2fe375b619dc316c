"""Work over a few threads with its results in order: :func:`ordered_map`.

The window loop runs its batches in streams (:func:`rooftrace.imagery.windows.run_windows`) and a scene's
blocks are post-processed in threads (:func:`rooftrace.scenes.blocks.postprocess_blocks`) through it: each
needs results in the order of its inputs (stitched rows, buildings in raster order) and memory bounded by
what is in flight.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int, name: str = "rooftrace") -> Iterator[R]:
    """``fn`` over ``items`` in ``workers`` threads, yielding results in the order of ``items``.

    One item per thread runs and one more waits for a free thread, so at most ``workers + 1`` results are
    held at once, and ``items`` is read no further ahead than that. ``workers`` <= 1: in the calling thread,
    one item at a time. An exception of ``fn`` is raised when its result's turn comes; items not started
    by then are cancelled, and the threads are joined before the generator ends or is closed.
    """
    if workers <= 1:
        for item in items:
            yield fn(item)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix=name) as pool:
        running: deque[Future] = deque()
        try:
            for item in items:
                running.append(pool.submit(fn, item))
                while len(running) > workers:
                    yield running.popleft().result()
            while running:
                yield running.popleft().result()
        finally:
            for f in running:
                f.cancel()
