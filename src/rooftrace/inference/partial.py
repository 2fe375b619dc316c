"""Crash-safe tile prediction: each finished tile's result is recorded atomically in ``OUT/.partial``, with
what identifies the run (model SHA-256 and options) and each tile's content, so ``--resume`` finishes a
killed run and recomputes a tile that changed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from rooftrace.imagery.resample import TilePlace
from rooftrace.instances.postprocess import PostprocessSettings

PARTIAL = ".partial"  #: per-tile results of an unfinished run, inside the output folder


def run_record(model: str | Path, method: str, settings: PostprocessSettings | None, tta: bool, precision: str,
                images: Path, masks: bool, overlays: bool, input_gsd: float | None = None, tms: bool = False) -> dict[str, Any]:
    """What a resumed run must share with the run it continues (its keys are the record's: ``gsd`` is ``input_gsd``)."""
    from rooftrace.core.hashing import sha256_file

    return {"model_sha256": sha256_file(Path(model)), "method": method, "settings": (settings or PostprocessSettings()).to_dict(),
            "tta": tta, "precision": precision, "images": str(images.resolve()), "masks": masks, "overlays": overlays,
            "gsd": input_gsd, "tms": tms}


def file_stamp(path: Path) -> dict[str, int] | None:
    """What a resumed run compares to tell that a tile changed since its result was recorded."""
    try:
        st = path.stat()
    except OSError:
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def tile_record(w: int, h: int, footprints: list, scores: list, place: TilePlace | None = None,
                 stamp: dict[str, int] | None = None, below_score: int = 0) -> str:
    """A finished tile's result (footprints in the tile's own pixels, and how many regions the score filter
    dropped), the pixel size it was predicted at, and the size and modification time its file had when it was
    read (``stamp``)."""
    import shapely

    wkb = shapely.to_wkb(np.asarray(footprints, dtype=object), hex=True).tolist() if footprints else []
    rec: dict[str, Any] = {"width": w, "height": h, "wkb": wkb, "scores": [float(v) for v in scores], "file": stamp,
                           "below_score": int(below_score)}
    if place is not None:
        rec.update(gsd=place.input_gsd, gsd_source=place.gsd_source, own_gsd=place.own_gsd, factor=place.factor)
    return json.dumps(rec)


def read_tile_record(path: Path) -> tuple[int, int, list, list, dict[str, Any]] | None:
    """A finished tile's result, or None when there is none or it is unreadable (the tile is then redone)."""
    import shapely

    if not path.exists():
        return None
    try:
        rec = json.loads(path.read_text())
        fps = list(shapely.from_wkb(rec["wkb"])) if rec["wkb"] else []
        return int(rec["width"]), int(rec["height"]), fps, [float(v) for v in rec["scores"]], rec
    except (OSError, ValueError, KeyError, TypeError, shapely.errors.GEOSException):
        return None
