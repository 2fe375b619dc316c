"""What a model file says about itself, safetensors or ONNX, read and checked without torch.

The rooftrace metadata of a model file (JSON: the training config, the output channels, the input
normalisation, the pixel size, the format version) is bounded before it is parsed
(:func:`parse_model_metadata`) and checked (:func:`check_model_meta`); the file is checked against the
SHA-256 recorded beside it (:func:`verify_sidecar`). :mod:`rooftrace.models.files` (safetensors, with torch)
and :mod:`rooftrace.models.onnx` (ONNX Runtime, without torch) both read their files through here, so an
exported model runs without importing torch. :func:`shipped_model` finds the model that ships inside the package.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rooftrace.config import CHANNELS
from rooftrace.core.errors import RooftraceError
from rooftrace.core.hashing import sha256_file

#: The newest model file format this rooftrace reads and writes.
FORMAT_VERSION = 1


#: Pixel sizes (metres) a model file may record: from drone imagery to coarse satellite imagery.
MODEL_GSD_RANGE = (0.005, 100.0)


def model_gsd(path: Path, meta: dict[str, Any]) -> float | None:
    """The pixel size in metres a model file (safetensors or ONNX) records, checked: ``None`` when it
    records none, else a number in :data:`MODEL_GSD_RANGE`.

    Raises:
        RooftraceError: Not a number, not finite, zero, negative or absurdly small or large.
    """
    v = meta.get("gsd")
    if v is None or v == 0:  # 0: written by rooftrace as "not recorded" before gsd was checked
        return None
    lo, hi = MODEL_GSD_RANGE
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and lo <= v <= hi
    if not ok:
        raise RooftraceError(f"{path}: its metadata records a pixel size (gsd) of {v!r}, which is not a number of metres "
                             f"between {lo:g} and {hi:g}; the file is damaged or its metadata was edited")
    return float(v)


def check_model_meta(path: Path, meta: dict[str, Any]) -> None:
    """What every model file's rooftrace metadata must hold, safetensors or ONNX: a format version this
    rooftrace reads, three finite ``mean`` and three positive ``std`` values, and a sane ``gsd``.

    Raises:
        RooftraceError: Naming the file and the value.
    """
    version = meta.get("format_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise RooftraceError(f"{path}: model file format version {version!r} is not one rooftrace knows")
    if version > FORMAT_VERSION:
        raise RooftraceError(f"{path}: model file format version {version} was written by a newer rooftrace; this one "
                             f"reads version {FORMAT_VERSION} and older: upgrade rooftrace (pip install -U rooftrace)")
    for key in ("mean", "std"):
        v = meta.get(key)
        ok = isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                          and math.isfinite(x) for x in v)
        if not ok or (key == "std" and not all(x > 0 for x in v)):
            raise RooftraceError(f"{path}: its input normalisation {key} {_short(v)} is not three finite numbers"
                                 + (" greater than 0 (inputs are divided by it)" if key == "std" else ""))
        lo, hi = NORM_RANGE[key]
        if not all(lo <= abs(x) <= hi for x in v):
            raise RooftraceError(f"{path}: its input normalisation {key} {_short(v)} is outside {lo:g}..{hi:g} in size; "
                                 "(pixel - mean) / std would not be a finite number the network can use: the file is "
                                 "damaged or its metadata was edited")
    channels = meta.get("channels")
    if "channels" in meta and not (isinstance(channels, list) and 1 <= len(channels) <= len(CHANNELS)
                                   and all(isinstance(c, str) for c in channels) and channels[0] == "footprint"
                                   and set(channels) <= set(CHANNELS) and len(set(channels)) == len(channels)):
        raise RooftraceError(f"{path}: its metadata's output channels {_short(channels)} are not a list of distinct names of "
                             f"{list(CHANNELS)} starting with 'footprint'; the file is damaged or its metadata was edited")
    model_gsd(path, meta)


#: Sizes (absolute values) the normalisation may have: pixels are 0-255, so a mean beyond 1e4 or a std
#: below 1e-6 or above 1e4 is no normalisation any model was trained with (1e308 / 1e-308 overflows).
NORM_RANGE = {"mean": (0.0, 1e4), "std": (1e-6, 1e4)}
#: The most rooftrace metadata a model file may carry (bytes) and how deeply its JSON may nest.
META_MAX_BYTES = 4 * 1024 * 1024
META_MAX_DEPTH = 64


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


def parse_model_metadata(path: Path, raw: str) -> dict[str, Any]:
    """A model file's rooftrace metadata (JSON text), bounded before it is parsed: at most
    :data:`META_MAX_BYTES` and :data:`META_MAX_DEPTH` levels of nesting (a file nested 100,000 deep
    would exhaust Python's recursion), and a mapping.

    Raises:
        RooftraceError: Too large, too deep, not JSON or not a mapping, naming the file.
    """
    if len(raw) > META_MAX_BYTES:
        raise RooftraceError(f"{path}: its rooftrace metadata is {len(raw):,} bytes, more than the {META_MAX_BYTES:,} a model "
                             "file's metadata can need; the file is damaged or was not written by rooftrace")
    depth = json_depth(raw)
    if depth > META_MAX_DEPTH:
        raise RooftraceError(f"{path}: its rooftrace metadata nests {depth} levels deep, more than {META_MAX_DEPTH}; the file "
                             "is damaged or was not written by rooftrace")
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise RooftraceError(f"{path}: its rooftrace metadata is not JSON ({str(exc)[:120]}); the file is damaged or was not "
                             "written by rooftrace") from None
    if not isinstance(meta, dict):
        raise RooftraceError(f"{path}: its rooftrace metadata is not a mapping; not a model file written by rooftrace")
    return meta


def json_depth(text: str) -> int:
    """The deepest nesting of ``[``/``{`` in JSON text (strings skipped), without parsing it."""
    import re

    stripped = re.sub(r'"(?:[^"\\]|\\.)*"', "", text)
    depth = best = 0
    for ch in stripped:
        if ch in "[{":
            depth += 1
            best = max(best, depth)
        elif ch in "]}":
            depth -= 1
    return best


def check_model_path(path: Path) -> None:
    """A model path that exists but is a folder or an empty file: one line saying which."""
    if path.is_dir():
        raise RooftraceError(f"{path}: a folder, not a model file; give the .safetensors or .onnx file in it")
    if path.stat().st_size == 0:
        raise RooftraceError(f"{path}: the file is empty (0 bytes); not a model file")


def verify_sidecar(path: Path) -> None:
    """Check a model file against the SHA-256 recorded beside it (``<file>.sha256``), when there is one."""
    side = Path(str(path) + ".sha256")
    if side.exists():
        recorded = side.read_text().split()[0] if side.read_text().strip() else ""
        if recorded != sha256_file(path):
            raise RooftraceError(f"{path}: its SHA-256 does not match {side.name}; the file is damaged or was changed")


#: The default model, shipped inside the package (``rooftrace/models/shipped/``, package data).
SHIPPED_MODEL = "rooftrace-unet-lite0.safetensors"


def shipped_model() -> Path:
    """The model that ships inside the rooftrace package, found with :mod:`importlib.resources` (so an
    installed wheel finds it wherever it is run from). Its SHA-256 sidecar is checked when it is loaded."""
    from importlib.resources import as_file, files

    res = files("rooftrace.models") / "shipped" / SHIPPED_MODEL
    if not res.is_file():
        raise RooftraceError(f"no model given and the shipped model {SHIPPED_MODEL} is not in this installation of rooftrace "
                             f"({res}); pass --model PATH (train one with rooftrace train)")
    with as_file(res) as path:  # a real file for wheels installed as folders (always, with pip)
        return Path(path)
