"""The BEGC2024 submission CSV: ``ImageID,Coordinates``.

``ImageID`` is the integer of the image file's stem (``0007.tif`` -> ``7``); ``Coordinates`` is a
string like ``[[(x, y), (x, y), ...], [...]]`` in pixel coordinates, one open ring (the last point
is not repeated) per building, exterior only, and ``[]`` for an image without buildings. Every
image of the test folder has exactly one row, sorted by ImageID.
"""

from __future__ import annotations

import ast
import csv
import io
import math
import sys
from pathlib import Path
from typing import Iterable

import numpy as np
from shapely.geometry import Polygon

from rooftrace.core.errors import RooftraceError
from rooftrace.core.files import atomic_write_text, read_text
from rooftrace.geometry.shapes import exterior_rings
from rooftrace.labels.records import (
    ImageKey,
    LabelSet,
    LoadReport,
    image_key,
    note_unplain_key,
)
from rooftrace.labels.registry import LabelFormat, Probe

HEADER = ("ImageID", "Coordinates")

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


def _parse_key(value: str) -> ImageKey:
    value = value.strip()
    return int(value) if value.isascii() and value.isdigit() else value


def parse_coordinates(text: str) -> list[list[tuple[float, float]]]:
    """Parse one ``Coordinates`` cell into rings; raise ``ValueError`` saying what is wrong.

    Only Python literals are evaluated (:func:`ast.literal_eval`), never code.
    """
    text = text.strip()
    if text in ("", "[]"):
        return []
    try:
        value = ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):  # TypeError: a list as a dict key or in a set
        raise ValueError("Coordinates is not a list of rings like [[(x, y), (x, y), ...], ...]") from None
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"Coordinates is a {type(value).__name__}, not a list of rings")
    rings = []
    for i, ring in enumerate(value):
        if not isinstance(ring, (list, tuple)):
            raise ValueError(f"ring {i} is a {type(ring).__name__}, not a list of (x, y) points")
        pts = []
        for pt in ring:
            if (
                not isinstance(pt, (list, tuple))
                or len(pt) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pt)
            ):
                raise ValueError(f"ring {i} has a point {pt!r} that is not an (x, y) pair of numbers")
            try:
                x, y = float(pt[0]), float(pt[1])
            except OverflowError:
                raise ValueError(f"ring {i} has a point {pt!r} with a number too large for a coordinate") from None
            if not (math.isfinite(x) and math.isfinite(y)):
                raise ValueError(f"ring {i} has a point {pt!r} with NaN or infinite coordinates")
            pts.append((x, y))
        rings.append(pts)
    return rings


def read_begc_csv(path: str | Path, text: str | None = None) -> LabelSet:
    """Read a BEGC2024 submission CSV; each ring becomes one building.

    Malformed rows are reported with their line number and skipped (the image is still listed,
    with the buildings of its other rows); duplicate ImageIDs are reported and merged.
    """
    path = Path(path)
    if text is None:
        text = read_text(path)
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None:
        raise RooftraceError(f"{path}: the file is empty; expected a header ImageID,Coordinates")
    names = [h.strip() for h in header]
    lower = [h.lower() for h in names]
    if "imageid" not in lower or "coordinates" not in lower:
        raise RooftraceError(f"{path}: header is {','.join(names)!r}; expected ImageID,Coordinates")
    i_id, i_coords = lower.index("imageid"), lower.index("coordinates")
    report = LoadReport(path=str(path))
    if len(names) > 2:
        extra = [n for j, n in enumerate(names) if j not in (i_id, i_coords)]
        report.note(f"line 1: extra columns {extra} are ignored")
    ls = LabelSet(report=report, format="begc-csv")
    for row in reader:
        line = reader.line_num
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) <= max(i_id, i_coords):
            report.skip(f"line {line}: {len(row)} fields, expected {len(names)}; skipped", counter="dropped: malformed row")
            continue
        raw_key = row[i_id].strip()
        if not raw_key:
            report.skip(f"line {line}: empty ImageID; skipped", counter="dropped: malformed row")
            continue
        key = _parse_key(raw_key)
        if key in ls:
            report.note(f"line {line}: ImageID {key!r} appears again; its rings are added to the earlier row's")
            report.counts["duplicate image ids"] += 1
        else:
            note_unplain_key(key, f"line {line}: ImageID", report)
            report.counts["images"] += 1
        ls.get_or_add(key)
        try:
            rings = parse_coordinates(row[i_coords])
        except ValueError as exc:
            report.skip(f"line {line} (ImageID {key!r}): {exc}; row skipped", counter="dropped: malformed row")
            continue
        for n, ring in enumerate(rings):
            where = f"line {line} (ImageID {key!r}) ring {n}"
            if len(set(ring)) < 3:
                report.add_outcome("dropped: ring with fewer than 3 points", where)
                continue
            ls.add(key, Polygon(ring), where)
    return ls


def _fmt(v: float, decimals: int) -> str:
    s = f"{v:.{decimals}f}".rstrip("0").rstrip(".") if decimals > 0 else str(int(round(v)))
    return "0" if s in ("-0", "") else s


def format_coordinates(rings: Iterable[np.ndarray], decimals: int = 2) -> str:
    """``[[(x, y), ...], ...]`` for open rings; numbers rounded to ``decimals``, trailing zeros cut."""
    parts = []
    for ring in rings:
        r = np.round(np.asarray(ring, dtype=float), max(decimals, 0))
        if np.isfinite(r).all() and (r == np.round(r)).all():  # whole numbers (pixel edges): the fast path
            pts = ", ".join(f"({x}, {y})" for x, y in r.astype(np.int64).tolist())
        else:
            pts = ", ".join(f"({_fmt(x, decimals)}, {_fmt(y, decimals)})" for x, y in ring)
        parts.append(f"[{pts}]")
    return "[" + ", ".join(parts) + "]"


def sort_keys(keys: Iterable[ImageKey]) -> list[ImageKey]:
    """Integers in numeric order first, then strings in text order."""
    keys = list(keys)
    return sorted((k for k in keys if isinstance(k, int))) + sorted((k for k in keys if not isinstance(k, int)))


def write_begc_csv(
    ls: LabelSet,
    path: str | Path,
    image_keys: Iterable[ImageKey] | None = None,
    decimals: int = 2,
    force: bool = False,
) -> Path:
    """Write a BEGC2024 submission: one row per image, sorted by ImageID, atomically.

    Args:
        ls: Predictions in pixel coordinates.
        path: Output CSV.
        image_keys: Every image that must get a row (the whole test folder); images of ``ls``
            are always included. Images without buildings get ``[]``.
        decimals: Rounding of coordinates (pixel-edge polygons are integers and stay so).
        force: Overwrite an existing file.

    A building in several parts is written as one ring per part: the format has no other way.
    """
    keys = set(ls.images)
    if image_keys is not None:
        keys.update(image_keys)
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(HEADER)
    for key in sort_keys(keys):
        img = ls.images.get(key)
        rings = [r for fp in (img.footprints if img else []) for r in exterior_rings(fp)]
        w.writerow([key, format_coordinates(rings, decimals)])
    return atomic_write_text(path, out.getvalue(), force=force)


def keys_of_folder(folder: str | Path) -> list[ImageKey]:
    """Image keys of every image in a folder (for :func:`write_begc_csv`'s ``image_keys``)."""
    from rooftrace.imagery.read import list_images

    return [image_key(p) for p in list_images(folder)]


def _sniff(probe: Probe) -> bool:
    # A blank file is an empty submission; a header naming PolygonWKT_Pix is SpaceNet's, whatever else it holds.
    return not probe.header or ("coordinates" in probe.header and "polygonwkt_pix" not in probe.header)


def _write(ls: LabelSet, path: str | Path, images: str | Path | None = None, force: bool = False) -> Path:
    return write_begc_csv(ls, path, image_keys=keys_of_folder(images) if images is not None else None, force=force)


FORMAT = LabelFormat(
    name="begc-csv", title="BEGC2024 CSV", content="BEGC2024 (ImageID,Coordinates)",
    sniff=_sniff, read=lambda probe, options: read_begc_csv(probe.path, text=probe.text), suffixes=(".csv",),
    write=_write, write_suffixes=(".csv",), default_for=(".csv",),
)
"""The registry entry of the BEGC2024 CSV (see :mod:`rooftrace.labels.registry`); with ``images`` its writer
gives every image of that folder a row."""
