"""Python's cyclic garbage collector during a long run.

A prediction run allocates many small containers (each polygon's coordinate lists, the JSON of its outputs),
so the collector runs hundreds of times a run, and each full collection walks every tracked object, the
network's modules and everything imported included (0.14-0.24 s of a 78-tile ``predict`` of about 7 s here,
in 167-168 collections, counted with ``gc.callbacks``; 0.002-0.003 s in 11 with both helpers below). Nothing here changes what is freed: objects without cycles go when their last
reference does, whatever the collector does.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def heap_frozen() -> Iterator[None]:
    """Leave the objects alive on entry out of the collector's scans until exit (``gc.freeze``, then
    ``gc.unfreeze``): a run's collections then walk what the run made, not the whole process. Nothing is
    frozen when the heap is frozen already (that is its owner's: a server that forks) or the collector is off."""
    if gc.get_freeze_count() or not gc.isenabled():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic collection inside (``gc.disable``; enabled again on exit if it was): for a short burst that
    builds many containers and frees them together, such as writing a JSON file of every building."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
