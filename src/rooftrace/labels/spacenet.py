"""SpaceNet CSVs: ``ImageId,BuildingId,PolygonWKT_Pix[,Confidence | ,PolygonWKT_Geo]``.

One row per building; ``PolygonWKT_Pix`` is WKT in pixel coordinates (it may carry a z value,
which is dropped); an image without buildings has one row with ``POLYGON EMPTY`` (and, by
SpaceNet's habit, BuildingId -1). ``ImageId`` is kept as written (integers when all digits).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import shapely
from shapely.errors import GEOSException

from rooftrace.core.errors import RooftraceError
from rooftrace.core.files import atomic_write_text, read_text
from rooftrace.labels.begc import sort_keys
from rooftrace.labels.records import ImageKey, LabelSet, LoadReport, note_unplain_key
from rooftrace.labels.registry import LabelFormat

HEADER = ("ImageId", "BuildingId", "PolygonWKT_Pix", "Confidence")


def _key(value: str) -> ImageKey:
    value = value.strip()
    return int(value) if value.isdigit() else value


def read_spacenet_csv(path: str | Path, text: str | None = None) -> LabelSet:
    """Read a SpaceNet ground-truth or proposal CSV (pixel WKT; ``Confidence`` becomes the score)."""
    path = Path(path)
    if text is None:
        text = read_text(path)
    reader = csv.DictReader(io.StringIO(text))
    fields = [f.strip() for f in (reader.fieldnames or [])]
    reader.fieldnames = fields
    if "ImageId" not in fields or "PolygonWKT_Pix" not in fields:
        raise RooftraceError(f"{path}: header is {','.join(fields)!r}; expected ImageId,BuildingId,PolygonWKT_Pix,...")
    report = LoadReport(path=str(path))
    ls = LabelSet(report=report, format="spacenet-csv")
    has_conf = "Confidence" in fields
    for row in reader:
        line = reader.line_num
        raw_key = (row.get("ImageId") or "").strip()
        if not raw_key:
            report.skip(f"line {line}: empty ImageId; skipped", counter="dropped: malformed row")
            continue
        key = _key(raw_key)
        if key not in ls:
            note_unplain_key(key, f"line {line}: ImageId", report)
        if key not in ls:
            report.counts["images"] += 1
        ls.get_or_add(key)
        wkt = (row.get("PolygonWKT_Pix") or "").strip()
        where = f"line {line} (ImageId {key!r}, BuildingId {row.get('BuildingId')})"
        try:
            geom = shapely.from_wkt(wkt)
        except (GEOSException, shapely.errors.ShapelyError, ValueError) as exc:
            report.skip(f"{where}: PolygonWKT_Pix is not valid WKT ({exc}); skipped", counter="dropped: malformed row")
            continue
        if geom is None or geom.is_empty:
            continue  # POLYGON EMPTY: the image has no building
        score = None
        if has_conf and (row.get("Confidence") or "").strip():
            try:
                score = float(row["Confidence"])
            except ValueError:
                report.note(f"{where}: Confidence {row['Confidence']!r} is not a number; 1.0 used")
                score = 1.0
        ls.add(key, geom, where, score=score)
    return ls


def write_spacenet_csv(ls: LabelSet, path: str | Path, decimals: int = 2, force: bool = False) -> Path:
    """Write ``ImageId,BuildingId,PolygonWKT_Pix,Confidence``; images without buildings get a
    ``POLYGON EMPTY`` row with BuildingId -1. Atomic."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(HEADER)
    for key in sort_keys(ls.images):
        img = ls.images[key]
        if not img.footprints:
            w.writerow([key, -1, "POLYGON EMPTY", 1])
            continue
        scores = img.scores or [1.0] * len(img.footprints)
        for n, (fp, s) in enumerate(zip(img.footprints, scores)):
            w.writerow([key, n, shapely.to_wkt(fp, rounding_precision=decimals, trim=True), round(float(s), 4)])
    return atomic_write_text(path, out.getvalue(), force=force)


FORMAT = LabelFormat(
    name="spacenet-csv", title="SpaceNet CSV", content="SpaceNet (ImageId,BuildingId,PolygonWKT_Pix)",
    sniff=lambda probe: "polygonwkt_pix" in probe.header,
    read=lambda probe, options: read_spacenet_csv(probe.path, text=probe.text), suffixes=(".csv",),
    write=lambda ls, path, images=None, force=False: write_spacenet_csv(ls, path, force=force), write_suffixes=(".csv",),
)
"""The registry entry of SpaceNet CSVs (see :mod:`rooftrace.labels.registry`)."""
