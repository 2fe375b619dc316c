"""A toy label format for the tests, written as a new format would be: one module that declares ``FORMAT``.

``image<TAB>wkt`` on the first line, then one building a line: the image key and the footprint as WKT in
pixel coordinates. Registering it (``rooftrace.labels.formats.register(FORMAT)``) is all it takes for
``read_labels``, ``convert`` and tests/labels/test_label_formats_contract.py to know it.
"""

from __future__ import annotations

from pathlib import Path

import shapely

from rooftrace.core.errors import RooftraceError
from rooftrace.core.files import atomic_write_text
from rooftrace.labels.records import LabelSet, LoadReport, image_key
from rooftrace.labels.registry import LabelFormat, Probe, ReadOptions

HEADER = "image\twkt"


def read_toy(probe: Probe, options: ReadOptions) -> LabelSet:
    report = LoadReport(path=str(probe.path))
    ls = LabelSet(report=report, format="toy-tsv")
    for n, line in enumerate(probe.text.splitlines()[1:], start=2):
        key_text, _, wkt = line.partition("\t")
        key = image_key(key_text)
        if key not in ls:
            report.counts["images"] += 1
        ls.get_or_add(key)
        if not wkt:
            continue  # an image without buildings
        try:
            geom = shapely.from_wkt(wkt)
        except shapely.errors.ShapelyError as exc:
            report.skip(f"line {n}: not WKT ({exc}); skipped", counter="dropped: malformed row")
            continue
        ls.add(key, geom, f"line {n}")
    return ls


def write_toy(ls: LabelSet, path: str | Path, images=None, force: bool = False) -> Path:
    if ls.crs is not None:
        raise RooftraceError(f"{path}: the toy format holds pixels only")
    lines = [HEADER]
    for img in ls:
        lines += [f"{img.key}\t{shapely.to_wkt(fp, trim=True)}" for fp in img.footprints] or [f"{img.key}\t"]
    return atomic_write_text(path, "\n".join(lines) + "\n", force=force)


FORMAT = LabelFormat(
    name="toy-tsv", title="toy TSV", content="toy TSV (image<TAB>wkt)", sniff=lambda probe: probe.header == HEADER,
    read=read_toy, suffixes=(".tsv",), write=write_toy, write_suffixes=(".tsv",), default_for=(".tsv",),
)
