"""The process's memory allocator, readied for inference: large arrays reuse freed memory instead of
faulting in fresh pages.

Post-processing a scene's block allocates and frees arrays of tens of megabytes many times a second
(probabilities, masks, markers, labels). By default glibc's ``malloc`` hands every allocation above its
*mmap threshold* (128 KiB at first, rising to at most 32 MiB) to the kernel and back on ``free``, and trims
the top of its heap back to the kernel too, so the next array of that size pays a page fault for every
4 KiB it touches. numpy also advises the kernel to back arrays of 4 MiB or more with transparent huge
pages (``madvise``); on a virtual machine the first touch of such memory can stall: a 64 MiB array once took
0.75 s to fill where it took 0.04 s without the advice (this machine, 2 cores, a one-off script). What it
gains is measured in README, Performance: session 14 (``benchmarks/pipeline_speed.py``).

:func:`ready_allocator` sets, once per process:

* glibc's mmap threshold to :data:`MMAP_THRESHOLD` and its trim threshold to :data:`TRIM_THRESHOLD`
  (``mallopt``), so freed arrays stay in the process for the next block or batch;
* numpy's huge-page advice off (``numpy._core.multiarray._set_madvise_hugepage(False)``, the switch numpy
  documents with its ``NUMPY_MADVISE_HUGEPAGE`` variable).

The peak memory of a run can grow a little, since freed memory is reused rather than returned (the network
alone over 10 batches: about 100 MiB more, 903 against 805 MiB), and what the process holds after its peak is
not given back until it exits. Where glibc refuses a threshold above its own maximum (32 MiB in older releases),
that maximum is set. ``ROOFTRACE_ALLOCATOR=system`` leaves both as they
were. Elsewhere than glibc (macOS, Windows, musl) only numpy's advice is changed.
"""

from __future__ import annotations

import ctypes
import os
import threading

#: Environment variable: ``system`` leaves the allocator as the process found it.
ALLOCATOR_ENV = "ROOFTRACE_ALLOCATOR"
#: Allocations up to this size come from malloc's heap and are reused after ``free`` (bytes).
MMAP_THRESHOLD = 512 * 1024**2
#: Free memory at the top of malloc's heap kept for reuse rather than returned to the kernel (bytes).
TRIM_THRESHOLD = 1024**3

_M_TRIM_THRESHOLD = -1  # glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_GLIBC_MMAP_MAX = 32 * 1024**2  # DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: the most older glibc releases accept

_lock = threading.Lock()
_done: str | None = None


def _mallopt():
    """glibc's ``mallopt``, or ``None`` where the C library is not glibc."""
    try:
        libc = ctypes.CDLL(None)  # the process's own symbols (Windows: TypeError)
        if getattr(libc, "gnu_get_libc_version", None) is None:
            return None
        fn = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return fn


def ready_allocator() -> str:
    """Ready this process's allocator for inference (module docstring); returns what was done, in words.

    Idempotent: the first call decides, later calls return the same words. Thread-safe.
    """
    global _done
    with _lock:
        if _done is not None:
            return _done
        if os.environ.get(ALLOCATOR_ENV, "").strip().lower() == "system":
            _done = f"allocator: as the system set it ({ALLOCATOR_ENV}=system)"
            return _done
        parts = []
        mallopt = _mallopt()
        if mallopt is not None and any(mallopt(_M_MMAP_THRESHOLD, t) == 1 for t in (MMAP_THRESHOLD, _GLIBC_MMAP_MAX)) \
                and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1:
            parts.append("freed memory kept for reuse")
        try:
            from numpy._core import multiarray
        except ImportError:  # pragma: no cover - numpy < 2
            from numpy.core import multiarray
        setter = getattr(multiarray, "_set_madvise_hugepage", None)
        if setter is not None:
            setter(False)
            parts.append("no huge-page advice for numpy arrays")
        _done = "allocator: " + ("; ".join(parts) if parts else "as the system set it (nothing to change here)")
        return _done
