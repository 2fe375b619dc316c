"""PNG codecs for the files rooftrace writes: 8-bit images, 3-channel targets and 16-bit instance maps."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from rooftrace.core.errors import RooftraceError


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of a ``(H, W)`` uint8 / uint16 or ``(H, W, 3)`` uint8 array."""
    arr = np.ascontiguousarray(array)
    ok = (arr.ndim == 2 and arr.dtype in (np.uint8, np.uint16)) or (arr.ndim == 3 and arr.shape[2] == 3 and arr.dtype == np.uint8)
    if not ok:
        raise ValueError(f"cannot encode a {arr.dtype} array of shape {arr.shape} as PNG")
    img = Image.fromarray(arr)  # uint16 2-D gives mode I;16, written as a 16-bit grey PNG
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def encode_instances(instances: np.ndarray, where: str = "instances") -> bytes:
    """16-bit PNG bytes of an instance map.

    Raises:
        RooftraceError: An id does not fit in 16 bits (more than 65535 footprints in one image),
            which would silently wrap around and merge buildings.
    """
    top = int(instances.max()) if instances.size else 0
    if top > MAX_INSTANCES:
        raise RooftraceError(
            f"{where}: {top} footprints; a 16-bit instance PNG holds at most {MAX_INSTANCES} (split the image into tiles)"
        )
    return encode_png(instances.astype(np.uint16))


def read_targets(path: str | Path) -> np.ndarray:
    """Read a ``targets/<stem>.png`` back as a ``(3, H, W)`` uint8 0/1 array (footprint, boundary, contact)."""
    with Image.open(path) as img:
        arr = np.asarray(img.convert("RGB"))
    return np.ascontiguousarray((arr > 127).astype(np.uint8).transpose(2, 0, 1))


def read_instances(path: str | Path) -> np.ndarray:
    """Read an ``instances/<stem>.png`` back as an ``(H, W)`` int32 id map."""
    with Image.open(path) as img:
        return np.asarray(img).astype(np.int32)


#: Largest id a 16-bit instance PNG can hold.
MAX_INSTANCES = 65535
