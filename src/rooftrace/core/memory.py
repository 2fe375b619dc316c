"""The allocation bound: sizes declared in a file's header (or an array's shape, or a resampling factor)
are checked against it before any memory is allocated for them.

The bound is half of this machine's physical memory, or ``ROOFTRACE_MEMORY_LIMIT`` (bytes, or with a
``K``/``M``/``G``/``T`` suffix, powers of 1024) when set. A request above it is refused with one line naming
the file and the bytes it would need, instead of a ``MemoryError`` (or the kernel's OOM killer) minutes later.
"""

from __future__ import annotations

import os
import re

from rooftrace.core.errors import RooftraceError

#: Environment variable that overrides the bound.
MEMORY_ENV = "ROOFTRACE_MEMORY_LIMIT"
#: Bytes a tile needs per pixel (of the size the model sees) from reading to polygons: the RGB image (3),
#: float32 probabilities of three channels (12), post-processing's masks, markers and distances (about 25).
#: The API measured about 22 bytes a pixel on a 20,000 x 20,000 array; this errs on the safe side.
TILE_BYTES_PER_PIXEL = 40

_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def physical_memory() -> int:
    """Bytes of physical memory (8 GiB when the system does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 8 * 1024**3


def parse_bytes(text: str) -> int:
    """``"4G"``, ``"512M"``, ``"1000000"`` as bytes.

    Raises:
        RooftraceError: Not a size.
    """
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(I?B)?\s*", str(text).upper())
    if not m or float(m.group(1)) <= 0:
        raise RooftraceError(f"{MEMORY_ENV}={text!r}: not a size in bytes (e.g. 8G, 512M or 1000000)")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def memory_limit() -> int:
    """The allocation bound in bytes (see the module docstring)."""
    env = os.environ.get(MEMORY_ENV)
    if env:
        return parse_bytes(env)
    return physical_memory() // 2


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} EiB"  # pragma: no cover


def _bound_text(limit: int) -> str:
    how = f"{MEMORY_ENV}" if os.environ.get(MEMORY_ENV) else f"half this machine's memory; set {MEMORY_ENV} to change it"
    return f"{format_bytes(limit)} ({how})"


def check_allocation(what: str | os.PathLike, nbytes: float, purpose: str = "") -> None:
    """Refuse to go on when ``nbytes`` exceeds :func:`memory_limit`.

    Args:
        what: The file (or array) the memory is for; the message starts with it.
        nbytes: Bytes the work would allocate.
        purpose: What for (``"a 100000 x 100000 px image"``), shown in the message.

    Raises:
        RooftraceError: ``WHAT: PURPOSE would need N GiB of memory, more than the bound of M GiB (...)``.
    """
    limit = memory_limit()
    if nbytes > limit:
        why = f"{purpose} would need" if purpose else "would need"
        raise RooftraceError(f"{what}: {why} {format_bytes(nbytes)} of memory ({int(nbytes):,} bytes), more than the bound "
                             f"of {_bound_text(limit)}; nothing was allocated")


def check_pixels(what: str | os.PathLike, width: float, height: float, bytes_per_pixel: float, purpose: str = "") -> None:
    """:func:`check_allocation` for ``width x height`` pixels of ``bytes_per_pixel`` each."""
    size = f"a {int(width):,} x {int(height):,} px " + (purpose or "image")
    check_allocation(what, float(width) * float(height) * bytes_per_pixel, size)
