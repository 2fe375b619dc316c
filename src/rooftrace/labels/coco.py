"""COCO JSON: BEGC2024 ground truth (``images`` + ``annotations``) and COCO *results* (a list).

Ground truth: ``images[]`` with ``id``, ``file_name`` relative to the split folder, ``width``,
``height`` and optionally ``source``; ``annotations[]`` with ``image_id``, any ``category_id`` and a
``segmentation`` that is a list of flat ``[x0, y0, x1, y1, ...]`` rings in pixel coordinates (one
object, possibly in several parts) or an RLE, which is decoded with pycocotools and traced on pixel
edges. Results: ``[{"image_id", "segmentation", "score", ...}]`` as written by
:func:`write_coco_results`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from rooftrace.core.errors import RooftraceError
from rooftrace.core.files import atomic_write_text, read_json
from rooftrace.core.paths import inside
from rooftrace.geometry.shapes import Footprint, exterior_rings, polygon_from_rings
from rooftrace.labels.records import (
    ImageLabels,
    LabelSet,
    LoadReport,
    check_image_file,
    image_key,
)
from rooftrace.labels.registry import LabelFormat


def _rings_from_flat(seg: Any, where: str, report: LoadReport) -> list[list[tuple[float, float]]] | None:
    """Turn a COCO polygon segmentation into rings, or report why it cannot be one."""
    if isinstance(seg, str):
        try:
            seg = json.loads(seg)
        except json.JSONDecodeError:
            report.skip(f"{where}: segmentation is a string that is not a JSON list of rings", counter="dropped: malformed segmentation")
            return None
    if not isinstance(seg, list) or not seg:
        report.skip(f"{where}: segmentation is {type(seg).__name__}, not a list of rings", counter="dropped: malformed segmentation")
        return None
    if all(isinstance(v, (int, float)) for v in seg):  # a single flat ring without the outer list
        seg = [seg]
    rings = []
    for ring in seg:
        if not isinstance(ring, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in ring):
            report.skip(f"{where}: a ring is not a flat list of numbers", counter="dropped: malformed segmentation")
            return None
        if len(ring) % 2:
            report.skip(f"{where}: a ring has an odd number of coordinates ({len(ring)})", counter="dropped: malformed segmentation")
            return None
        try:
            values = [float(v) for v in ring]
        except OverflowError:
            report.skip(f"{where}: a ring has a number too large for a coordinate", counter="dropped: malformed segmentation")
            return None
        if not all(math.isfinite(v) for v in values):
            report.skip(f"{where}: NaN or infinite coordinates", counter="dropped: NaN or infinite coordinates")
            return None
        rings.append([(values[i], values[i + 1]) for i in range(0, len(values), 2)])
    return rings


def _rle_string_counts(data: bytes) -> list[int]:
    """The run lengths of a compressed COCO RLE string (6 bits a character, 5 of value, as
    pycocotools' ``rleFrString``), so that they can be checked before pycocotools decodes them."""
    counts: list[int] = []
    p = 0
    while p < len(data):
        x = k = 0
        more = True
        while more:
            if p >= len(data):
                raise ValueError("ends in the middle of a number")
            c = data[p] - 48
            if not 0 <= c < 64:
                raise ValueError(f"has a character {chr(data[p])!r} outside the RLE alphabet")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def _check_rle(seg: dict, height: int | None, width: int | None) -> str | None:
    """What is wrong with an RLE record, or None: its size and runs must cover the mask exactly."""
    size = seg.get("size", [height, width])
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
        return f"has no valid size [height, width] ({size!r})"
    counts = seg.get("counts")
    if isinstance(counts, list):
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts):
            return "counts are not all non-negative integers"
    elif isinstance(counts, (str, bytes)):
        try:
            counts = _rle_string_counts(counts.encode("ascii") if isinstance(counts, str) else counts)
        except (ValueError, UnicodeEncodeError) as exc:
            return f"counts string {exc}"
        if any(v < 0 for v in counts):
            return "counts string holds a negative run"
    else:
        return f"counts is {type(counts).__name__}, not a list or an RLE string"
    if sum(counts) != size[0] * size[1]:
        return f"runs cover {sum(counts)} pixels, not the {size[0]} x {size[1]} = {size[0] * size[1]} of its size"
    return None


def _geometry_from_rle(seg: dict, height: int | None, width: int | None, where: str, report: LoadReport):
    """Decode an RLE segmentation with pycocotools and trace it on pixel edges."""
    from pycocotools import mask as mask_utils

    from rooftrace.geometry.polygons import (
        mask_to_footprints,  # local import: polygons is heavier
    )

    problem = _check_rle(seg, height, width)
    if problem:
        report.skip(f"{where}: RLE segmentation {problem}; skipped", counter="dropped: malformed segmentation")
        return None
    try:
        if isinstance(seg.get("counts"), list):
            h, w = seg.get("size", [height, width])
            rle = mask_utils.frPyObjects(seg, h, w)
        else:
            rle = dict(seg)
            if isinstance(rle.get("counts"), str):
                rle["counts"] = rle["counts"].encode("ascii")
        mask = mask_utils.decode(rle).astype(bool)
    except Exception as exc:  # pycocotools raises plain exceptions on malformed RLE
        report.skip(f"{where}: RLE segmentation could not be decoded ({exc})", counter="dropped: malformed segmentation")
        return None
    parts = mask_to_footprints(mask)
    if not parts:
        return None
    import shapely

    return parts[0] if len(parts) == 1 else shapely.union_all(parts)


def read_coco(path: str | Path, check_images: bool = True) -> LabelSet:
    """Read a COCO ground-truth file (BEGC2024 layout) into a :class:`LabelSet`.

    Args:
        path: The JSON file; ``file_name`` entries are relative to its folder.
        check_images: Report image files that are missing, unreadable, or whose size disagrees
            with the record (reads headers only).

    Raises:
        RooftraceError: The file is not JSON or not COCO (no ``images`` or ``annotations``).
    """
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict) or "images" not in data:
        raise RooftraceError(f"{path}: not a COCO file: no 'images' list at the top level")
    return coco_to_labelset(data, path, check_images=check_images)


def coco_to_labelset(data: dict, path: Path, check_images: bool = True) -> LabelSet:
    """Build a LabelSet from parsed COCO ground truth (see :func:`read_coco`)."""
    report = LoadReport(path=str(path))
    ls = LabelSet(root=path.parent, report=report, format="coco")
    images = data.get("images")
    annotations = data.get("annotations", [])
    if not isinstance(images, list):
        raise RooftraceError(f"{path}: 'images' is not a list")
    if not isinstance(annotations, list):
        raise RooftraceError(f"{path}: 'annotations' is not a list")
    by_id: dict[Any, ImageLabels] = {}
    for n, rec in enumerate(images):
        where = f"images[{n}]"
        if not isinstance(rec, dict) or "id" not in rec or "file_name" not in rec:
            report.skip(f"{where}: record has no 'id' or 'file_name'; skipped", counter="dropped: malformed image record")
            continue
        if not _is_id(rec["id"]) or not isinstance(rec["file_name"], str):
            report.skip(f"{where}: 'id' must be a number or string and 'file_name' a string; skipped",
                        counter="dropped: malformed image record")
            continue
        if inside(path.parent, rec["file_name"]) is None:
            report.skip(f"{where}: file_name {rec['file_name']!r} points outside the split folder {path.parent} (an absolute "
                        "path or '..'); skipped (--allow-outside-paths reads it)", counter="dropped: image path outside the split")
            continue
        key = image_key(rec["file_name"])
        if rec["id"] in by_id:
            report.skip(f"{where}: duplicate image id {rec['id']!r}; the later record is ignored")
            report.counts["duplicate image ids"] += 1
            continue
        if key in ls:
            report.skip(f"{where}: two images share the key {key!r} (file stem); the later is ignored")
            report.counts["duplicate image ids"] += 1
            continue
        w, h = _size(rec.get("width"), f"{where}: width", report), _size(rec.get("height"), f"{where}: height", report)
        img = ImageLabels(
            key=key,
            file_name=str(rec["file_name"]),
            width=w,
            height=h,
            source=rec.get("source"),
            record_id=rec["id"],
            gsd=_gsd(rec.get("gsd"), f"{where}: gsd", report),
            group=str(rec["area_group"]) if rec.get("area_group") is not None else None,
        )
        ls.images[key] = img
        by_id[rec["id"]] = img
        report.counts["images"] += 1
        if check_images:
            check_image_file(ls.image_path(img), img, where, report)
    seen_ann_ids: set = set()
    for n, ann in enumerate(annotations):
        where = f"annotations[{n}]"
        if not isinstance(ann, dict) or "image_id" not in ann or "segmentation" not in ann:
            report.skip(f"{where}: record has no 'image_id' or 'segmentation'; skipped", counter="dropped: malformed annotation")
            continue
        if not _is_id(ann["image_id"]) or ("id" in ann and not _is_id(ann["id"])):
            report.skip(f"{where}: 'id' and 'image_id' must be numbers or strings; skipped", counter="dropped: malformed annotation")
            continue
        if "id" in ann:
            where = f"annotations[{n}] (id {ann['id']})"
            if ann["id"] in seen_ann_ids:
                report.note(f"{where}: duplicate annotation id")
                report.counts["duplicate annotation ids"] += 1
            seen_ann_ids.add(ann["id"])
        img = by_id.get(ann["image_id"])
        if img is None:
            report.skip(f"{where}: unknown image_id {ann['image_id']!r}; skipped")
            report.counts["unknown image ids"] += 1
            continue
        add_segmentation(ls, img, ann["segmentation"], where, score=ann.get("score"))
    return ls


def _is_id(value: Any) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool) or (isinstance(value, float) and math.isfinite(value))


def _gsd(value: Any, where: str, report: LoadReport) -> float | None:
    """A pixel size in metres (a positive finite number), else ``None`` with a note."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
        return float(value)
    report.note(f"{where}: {value!r} is not a pixel size in metres (a positive number); ignored")
    return None


def _size(value: Any, where: str, report: LoadReport) -> int | None:
    """A positive image width or height, else None with a note (the size is then read from the file)."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 1:
        return int(value)
    report.note(f"{where} {value!r} is not a positive number; taken from the image file")
    return None


def add_segmentation(ls: LabelSet, img: ImageLabels, seg: Any, where: str, score: float | None = None) -> None:
    """Parse one COCO segmentation (polygon rings or RLE) and add it to ``img`` in ``ls``."""
    report = ls.report
    if isinstance(seg, dict):
        geom = _geometry_from_rle(seg, img.height, img.width, where, report)
        if geom is None:
            return
    else:
        rings = _rings_from_flat(seg, where, report)
        if rings is None:
            return
        geom, skipped = polygon_from_rings(rings)
        if skipped and geom is not None:
            report.skip(f"{where}: {skipped} ring(s) with fewer than 3 points dropped")
        if geom is None:
            report.add_outcome("dropped: ring with fewer than 3 points", where)
            return
    if score is not None and not (isinstance(score, (int, float)) and math.isfinite(score)):
        report.note(f"{where}: score {score!r} is not a number; 1.0 used")
        score = 1.0
    geom = _clip_to_image(geom, img, where, report)
    if geom is None:
        return
    ls.add(img.key, geom, where, score=score)


def _clip_to_image(geom: Any, img: ImageLabels, where: str, report: LoadReport) -> Any:
    """Clip a footprint that reaches outside its image (negative or too large coordinates) to the
    image, with a note; one wholly outside is skipped. Images of unknown size are left alone."""
    import shapely

    if not img.width or not img.height or not shapely.is_valid(geom):
        return geom
    x0, y0, x1, y1 = geom.bounds
    tol = 1e-6  # float noise of a converter (-1e-14) is not "outside"
    if x0 >= -tol and y0 >= -tol and x1 <= img.width + tol and y1 <= img.height + tol:
        return geom
    inside = shapely.clip_by_rect(geom, 0, 0, img.width, img.height)
    if inside.is_empty or inside.area <= 0:
        report.skip(f"{where}: lies wholly outside the {img.width} x {img.height} image "
                    f"(x {x0:g}..{x1:g}, y {y0:g}..{y1:g}); skipped", counter="dropped: outside the image")
        return None
    report.note(f"{where}: reaches outside the {img.width} x {img.height} image (x {x0:g}..{x1:g}, y {y0:g}..{y1:g}); clipped to it")
    report.counts["clipped to the image"] += 1
    return inside


def read_coco_results(path: str | Path, data: list | None = None) -> LabelSet:
    """Read COCO results (a JSON list of ``{"image_id", "segmentation", "score"}``).

    Keys are the ``image_id`` values as they are; :func:`rooftrace.labels.formats.align_keys` maps them
    to the ground truth's keys when the ground truth is COCO with its own image ids.
    """
    path = Path(path)
    if data is None:
        data = read_json(path)
    if not isinstance(data, list):
        raise RooftraceError(f"{path}: not COCO results: expected a JSON list of detections")
    report = LoadReport(path=str(path))
    ls = LabelSet(report=report, format="coco-results")
    for n, det in enumerate(data):
        where = f"[{n}]"
        if not isinstance(det, dict) or "image_id" not in det or "segmentation" not in det:
            report.skip(f"{where}: record has no 'image_id' or 'segmentation'; skipped", counter="dropped: malformed annotation")
            continue
        key = det["image_id"]
        if key not in ls:
            report.counts["images"] += 1
        img = ls.get_or_add(key)
        img.record_id = key
        add_segmentation(ls, img, det["segmentation"], where, score=det.get("score", 1.0))
    return ls


def _flat_rings(fp: Footprint, decimals: int) -> list[list[float]]:
    return [np.round(r, decimals).ravel().tolist() for r in exterior_rings(fp)]


def write_coco(ls: LabelSet, path: str | Path, decimals: int = 2, force: bool = False) -> Path:
    """Write ground truth in the BEGC2024 COCO layout (category 0 ``building``); atomic."""
    images, anns = [], []
    for n, img in enumerate(ls):
        image_id = img.record_id if isinstance(img.record_id, int) else (img.key if isinstance(img.key, int) else n)
        rec: dict[str, Any] = {"id": image_id, "file_name": img.file_name or f"image/{img.key}.tif"}
        if img.width is not None:
            rec["width"], rec["height"] = img.width, img.height
        if img.source is not None:
            rec["source"] = img.source
        if img.gsd is not None:
            rec["gsd"] = img.gsd
        if img.group is not None:
            rec["area_group"] = img.group
        images.append(rec)
        for fp in img.footprints:
            minx, miny, maxx, maxy = fp.bounds
            anns.append({
                "id": len(anns), "image_id": image_id, "category_id": 0, "iscrowd": 0,
                "segmentation": _flat_rings(fp, decimals), "area": round(fp.area, decimals),
                "bbox": [round(minx, decimals), round(miny, decimals), round(maxx - minx, decimals), round(maxy - miny, decimals)],
            })
    data = {"categories": [{"id": 0, "name": "building", "supercategory": "building"}], "images": images, "annotations": anns}
    return atomic_write_text(path, json.dumps(data), force=force)


def write_coco_results(ls: LabelSet, path: str | Path, decimals: int = 2, force: bool = False) -> Path:
    """Write predictions as COCO results: one detection per footprint with its score; atomic."""
    dets = []
    for img in ls:
        image_id = img.record_id if img.record_id is not None else img.key
        scores = img.scores or [1.0] * len(img.footprints)
        for fp, s in zip(img.footprints, scores):
            minx, miny, maxx, maxy = fp.bounds
            dets.append({
                "image_id": image_id, "category_id": 0, "score": round(float(s), 4),
                "segmentation": _flat_rings(fp, decimals),
                "bbox": [round(minx, decimals), round(miny, decimals), round(maxx - minx, decimals), round(maxy - miny, decimals)],
                "area": round(fp.area, decimals),
            })
    return atomic_write_text(path, json.dumps(dets), force=force)


FORMAT = LabelFormat(
    name="coco", title="COCO", content="COCO (images/annotations)",
    sniff=lambda probe: isinstance(probe.data, dict) and "images" in probe.data,
    read=lambda probe, options: coco_to_labelset(probe.data, probe.path, check_images=options.check_images),
    suffixes=(".json",),
    write=lambda ls, path, images=None, force=False: write_coco(ls, path, force=force),
    write_suffixes=(".json",), default_for=(".json",),
)
"""The registry entry of COCO ground truth (see :mod:`rooftrace.labels.registry`)."""

RESULTS_FORMAT = LabelFormat(
    name="coco-results", title="COCO results", content="COCO results (a list)",
    sniff=lambda probe: isinstance(probe.data, list),
    read=lambda probe, options: read_coco_results(probe.path, data=probe.data),
    suffixes=(".json",),
    write=lambda ls, path, images=None, force=False: write_coco_results(ls, path, force=force),
    write_suffixes=(".json",),
)
"""The registry entry of COCO results."""
