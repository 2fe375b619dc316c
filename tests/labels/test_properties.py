"""Property-based tests of the label readers and writers and of the mask -> polygon -> mask trip.

* BEGC2024 CSV: random label sets survive write -> read exactly; arbitrary or mutated
  ``Coordinates`` text never raises anything but :class:`RooftraceError`, and every row that gives
  no building is reported by its line and ImageID.
* COCO ground truth: random label sets survive ``write_coco`` -> read exactly; random corruptions
  of a valid file never raise anything but :class:`RooftraceError`, and each corrupted record is
  named in the :class:`LoadReport`.
* Tracing on pixel edges: polygons rasterise back (by pixel centre, with rasterio itself) to exactly
  the pixels they were traced from, for 4- and 8-connectivity, holes, diagonal touches and
  one-pixel-wide lines (``tests/instances/test_postprocess.py`` already compares the 4-connected tracer with
  GDAL on small random maps; this file checks the pixels themselves).

Narrow regression tests pin edge cases once mishandled in ``src/`` (integers beyond float range,
Unicode digits in keys, unhashable ids, infinite sizes, NaN in a first point, unreadable JSON,
truncated RLE, image sizes of the wrong type): each carries its minimal input as an ``@example`` so
that it is checked on every run, and the broad robustness properties draw the same inputs too.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import math
import re
import tempfile
from pathlib import Path

import numpy as np
import rasterio.features
import shapely
from affine import Affine
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage
from shapely.geometry import MultiPoint, MultiPolygon, Polygon, box

from rooftrace.core.errors import RooftraceError, strict_mode, tally_skips
from rooftrace.geometry.polygons import (
    instances_to_footprints,
    instances_to_polygons,
    mask_to_footprints,
)
from rooftrace.labels.begc import read_begc_csv, write_begc_csv
from rooftrace.labels.coco import read_coco, write_coco
from rooftrace.labels.formats import read_labels
from rooftrace.labels.records import LabelSet

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
# One failure reported as it is (not an ExceptionGroup), with its own exception type.
TINY = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow], report_multiple_bugs=False)


# --- helpers ----------------------------------------------------------------------------------


_ROOT = tempfile.TemporaryDirectory(prefix="rooftrace-props-")  # removed when the session ends


def _tmp() -> Path:
    """A fresh folder per hypothesis example (function-scoped fixtures do not reset between them)."""
    return Path(tempfile.mkdtemp(dir=_ROOT.name))


def _same_geometry(a, b) -> bool:
    """Exactly the same point set (vertex order, start and orientation do not matter)."""
    return a.equals(b) and a.symmetric_difference(b).area == 0.0


def _check_footprints(ls: LabelSet) -> None:
    """What every reader promises about what it keeps: valid, non-empty, finite areal geometry."""
    for img in ls:
        for fp in img.footprints:
            assert fp.geom_type in ("Polygon", "MultiPolygon"), fp.geom_type
            assert fp.is_valid and not fp.is_empty and fp.area > 0
            assert np.isfinite(shapely.get_coordinates(fp)).all()


def _check_report_bookkeeping(ls: LabelSet) -> None:
    rep = ls.report
    assert len(rep.messages) == min(rep.problems, rep.max_messages)
    assert rep.dropped >= 0 and rep.problems >= 0


def _begc_file(rows: list[tuple[object, str]], header=("ImageID", "Coordinates")) -> Path:
    """A CSV written with the csv module (so any text survives quoting) in a fresh folder."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL)  # a bare "\r" would end the row
    w.writerow(header)
    for row in rows:
        w.writerow(row)
    p = _tmp() / "sub.csv"
    p.write_bytes(out.getvalue().encode("utf-8"))
    return p


def _read_begc_both_ways(p: Path) -> LabelSet:
    """Read through format detection and through the BEGC reader; both must agree."""
    a = read_labels(p)
    b = read_begc_csv(p)
    assert a.format == b.format == "begc-csv"
    assert list(a.images) == list(b.images)
    assert a.report.messages == b.report.messages
    return a


def _literal_empty(text: str) -> bool:
    """Whether a Coordinates cell is legitimately 'no buildings' (blank, or an empty list/tuple)."""
    t = text.replace("\r\n", "\n").replace("\r", "\n").strip()
    if t == "":
        return True
    try:
        v = ast.literal_eval(t)
    except Exception:
        return False
    return isinstance(v, (list, tuple)) and len(v) == 0


def _check_begc_rows(ls: LabelSet, rows: list[tuple[int, str]]) -> None:
    """Each row either gave buildings, was legitimately empty, or is reported by line and ImageID."""
    _check_footprints(ls)
    _check_report_bookkeeping(ls)
    for m in ls.report.messages:
        assert re.match(r"line \d+", m), m
    text = "\n".join(ls.report.messages)
    for key, coords in rows:
        assert key in ls, key  # a bad row still lists its image
        if not ls[key].footprints and not _literal_empty(coords):
            assert f"(ImageID {key!r})" in text, (key, coords, ls.report.messages)


# --- strategies: label geometry in a 512 x 512 tile, integer or half-integer vertices ------------

half = st.integers(0, 1024).map(lambda k: k / 2)


@st.composite
def rectangles(draw):
    x0, y0 = draw(st.integers(0, 1022)), draw(st.integers(0, 1022))
    x1, y1 = draw(st.integers(x0 + 1, 1024)), draw(st.integers(y0 + 1, 1024))
    return box(x0 / 2, y0 / 2, x1 / 2, y1 / 2)


convex = (
    st.lists(st.tuples(half, half), min_size=3, max_size=10)
    .map(lambda pts: MultiPoint(pts).convex_hull)
    .filter(lambda g: g.geom_type == "Polygon" and g.area > 0)
)


@st.composite
def orthogonal(draw):
    """The outline of a union of overlapping rectangles (L, T, U shapes...), holes left out."""
    union = shapely.union_all(draw(st.lists(rectangles(), min_size=2, max_size=4)))
    biggest = max(shapely.get_parts(union), key=lambda p: p.area)
    return Polygon(biggest.exterior)


simple_polygons = st.one_of(rectangles(), convex, orthogonal())


@st.composite
def footprints(draw):
    """A polygon, or a building in two disjoint parts (a MultiPolygon)."""
    p = draw(simple_polygons)
    if draw(st.booleans()):
        q = draw(simple_polygons)
        if p.distance(q) > 0:
            return MultiPolygon([p, q])
    return p


@st.composite
def label_sets(draw, max_images: int = 5):
    keys = draw(st.lists(st.integers(0, 10**6), unique=True, max_size=max_images))
    ls = LabelSet()
    for key in keys:
        img = ls.get_or_add(key)
        for fp in draw(st.lists(footprints(), max_size=4)):
            assert ls.add(key, fp, "generated")
        img.width = img.height = 512
    return ls


# --- 1. BEGC2024 CSV --------------------------------------------------------------------------


@FAST
@given(ls=label_sets(), empty_keys=st.lists(st.integers(0, 10**6), max_size=3))
def test_begc_round_trip_gives_the_same_polygons(ls: LabelSet, empty_keys: list[int]) -> None:
    path = write_begc_csv(ls, _tmp() / "sub.csv", image_keys=empty_keys)
    back = _read_begc_both_ways(path)
    direct = read_begc_csv(path, text=path.read_text())
    assert list(direct.images) == list(back.images)
    expected_keys = set(ls.images) | set(empty_keys)
    assert set(back.images) == expected_keys and len(back) == len(expected_keys)
    assert list(back.images) == sorted(expected_keys)  # rows are sorted by ImageID
    n_parts = 0
    for key in expected_keys:
        want = [p for fp in (ls[key].footprints if key in ls else []) for p in shapely.get_parts(fp)]
        got = back[key].footprints
        assert len(got) == len(want), key  # one ring per part: a MultiPolygon comes back in parts
        for p, q in zip(want, got):
            assert _same_geometry(p, q), (key, p.wkt, q.wkt)
        assert [q.wkt for q in direct[key].footprints] == [q.wkt for q in got]
        n_parts += len(want)
    assert back.report.problems == 0 and back.report.dropped == 0 and back.report.messages == []
    assert back.report.counts["kept"] == n_parts
    assert back.report.counts["images"] == len(expected_keys)


# Any text at all in the Coordinates field (surrogates cannot be written as UTF-8).
any_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60)


@FAST
@given(cells=st.lists(any_text, min_size=1, max_size=6))
@example(cells=["[[(0, 0), (1"])
@example(cells=["(", "[[]]", "[()]", "{1: 2}", "'abc'", "[[(1, 2, 3)]]", "[[(True, 1), (0, 0), (1, 1)]]", "__import__('os')"])
@example(cells=["[" * 500 + "]" * 500, "(" * 5000 + ")" * 5000, "[1e999]", "1j", "[[(1+2j, 0)]]"])
def test_begc_arbitrary_coordinates_text_is_reported_never_crashes(cells: list[str]) -> None:
    rows = list(enumerate(cells))
    try:
        ls = _read_begc_both_ways(_begc_file(rows))
    except RooftraceError as exc:
        assert "sub.csv" in str(exc)
        return
    _check_begc_rows(ls, rows)


@st.composite
def valid_coordinates(draw) -> str:
    rings = draw(st.lists(simple_polygons, min_size=1, max_size=3))
    parts = []
    for p in rings:
        pts = ", ".join(f"({x:g}, {y:g})" for x, y in list(p.exterior.coords)[:-1])
        parts.append(f"[{pts}]")
    return "[" + ", ".join(parts) + "]"


number_replacements = st.sampled_from([
    "nan", "inf", "-inf", "1e999", "-1e999", "1e308", "-1e308", "1e-320", "abc", "True", "None", "'7'",
    "[1, 2]", "(1, (2, 3))", "[[[[0]]]]", "{}", "1j", "...", "0x10", "1_000", "-0", "+5", "3.", ".5",
    str(2**53 + 1), "9" * 300, str(10**309), "-" + str(2**1024), "9" * 400,
])


@st.composite
def mutated_coordinates(draw) -> str:
    text = draw(valid_coordinates())
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["truncate", "insert", "replace number", "wrap", "delete"]))
        i = draw(st.integers(0, len(text)))
        if kind == "truncate":
            text = text[:i]
        elif kind == "insert":
            text = text[:i] + draw(st.sampled_from(["[", "]", "(", ")", ",", "[[", "]]", "(,", "-", "e", "\n"])) + text[i:]
        elif kind == "delete":
            j = draw(st.integers(i, min(len(text), i + 5)))
            text = text[:i] + text[j:]
        elif kind == "wrap":
            text = draw(st.sampled_from(["[{}]", "({})", "[{}, []]", "[[{}]]", "{{1: {}}}"])).format(text)
        else:
            numbers = list(re.finditer(r"-?\d+(?:\.\d+)?", text))
            if numbers:
                m = draw(st.sampled_from(numbers))
                text = text[: m.start()] + draw(number_replacements) + text[m.end():]
    return text


@FAST
@given(cells=st.lists(st.one_of(mutated_coordinates(), valid_coordinates()), min_size=1, max_size=5))
@example(cells=["[[(0, 0), (10, 0), (10, nan)]]", "[[(0, 0), (1e999, 0), (10, 10)]]", "[[(0, 0), (1e308, 0), (1e308, 1e308), (0, 1e308)]]"])
@example(cells=["[[(0, 0), (10, 0), (10, 10)]", "[[(0, 0), (10, 0), (10, 10)]]]", "[[[(0, 0), (10, 0), (10, 10)]]]"])
@example(cells=["[[(0, 0), (10, 10), (10, 0), (0, 10)]]", "[[(0, 0), (5, 0), (10, 0)]]", "[[(0, 0), (0, 0), (1, 1)]]"])
def test_begc_mutated_coordinates_are_reported_never_crash(cells: list[str]) -> None:
    rows = list(enumerate(cells))
    ls = _read_begc_both_ways(_begc_file(rows))
    _check_begc_rows(ls, rows)
    for key, text in rows:
        if ls[key].footprints:  # anything kept came from a cell that is a list of rings
            assert isinstance(ast.literal_eval(text.strip()), (list, tuple))


@FAST
@given(body=any_text, header=st.sampled_from(["ImageID,Coordinates", "Coordinates,ImageID", "imageid , COORDINATES ,extra", "coordinates"]))
@example(body="1,[],x\n2\n,[]\n\n3,\"[[(0,0),(1,0)", header="ImageID,Coordinates")
def test_begc_arbitrary_csv_body_never_crashes(body: str, header: str) -> None:
    p = _tmp() / "sub.csv"
    p.write_bytes((header + "\n" + body).encode("utf-8"))
    try:
        ls = _read_begc_both_ways(p)
    except RooftraceError as exc:
        assert "sub.csv" in str(exc)
        return
    _check_footprints(ls)
    _check_report_bookkeeping(ls)
    for m in ls.report.messages:
        assert re.match(r"line \d+", m), m


@FAST
@given(cells=st.lists(st.one_of(mutated_coordinates(), valid_coordinates(), any_text), min_size=1, max_size=5))
@example(cells=["[[(0, 0), (10, 0), (10, 10)]]", "[[(0, 0), (1, 1)]]"])
def test_begc_strict_mode_stops_exactly_when_something_is_skipped(cells: list[str]) -> None:
    """--strict raises (naming the file) iff the lenient read skipped something; the skip tally
    that sets the CLI's exit status agrees with the report."""
    path = _begc_file(list(enumerate(cells)))
    with tally_skips() as tally:
        ls = read_labels(path)
    assert tally.n == ls.report.skipped
    try:
        with strict_mode():
            strict = read_labels(path)
    except RooftraceError as exc:
        assert ls.report.skipped > 0 and "sub.csv" in str(exc) and "line " in str(exc)
    else:
        assert ls.report.skipped == 0
        assert [img.footprints for img in strict] == [img.footprints for img in ls]


@TINY
@given(big=st.integers(min_value=2**1024, max_value=10**1000), where=st.integers(0, 5))
@example(big=10**309, where=0)
def test_begc_integer_too_large_for_a_float_is_reported(big: int, where: int) -> None:
    """An integer literal beyond float range in Coordinates is reported with its line and ImageID, not an OverflowError."""
    vals = ["0", "0", "10", "0", "10", "10"]
    vals[where] = str(big)
    coords = f"[[({vals[0]}, {vals[1]}), ({vals[2]}, {vals[3]}), ({vals[4]}, {vals[5]})]]"
    ls = read_labels(_begc_file([(3, coords)]))
    assert ls[3].footprints == []
    assert any("ImageID 3" in m for m in ls.report.messages)


@TINY
@given(key=st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=4).filter(lambda s: s.strip() != ""))
@example(key="\u00b2")
def test_begc_any_image_id_text_is_read_or_reported(key: str) -> None:
    """Any ImageID text is read: Unicode digits that int() rejects (such as superscript two) stay a string key."""
    ls = read_labels(_begc_file([(key, "[[(0, 0), (4, 0), (4, 4)]]")]))
    assert len(ls) == 1
    (img,) = list(ls)
    assert len(img.footprints) == 1
    k = key.replace("\r\n", "\n").replace("\r", "\n").strip()  # the file is read with universal newlines
    assert img.key == k or (isinstance(img.key, int) and str(img.key) == str(int(k)))


# --- 2. COCO ground truth ---------------------------------------------------------------------


@FAST
@given(ls=label_sets(), record_ids=st.booleans(), data=st.data())
def test_coco_round_trip_gives_the_same_polygons(ls: LabelSet, record_ids: bool, data) -> None:
    ids = data.draw(st.lists(st.integers(-10**9, 10**9), unique=True, min_size=len(ls), max_size=len(ls)))
    for img, rid in zip(ls, ids):
        img.record_id = rid if record_ids else None
        img.width, img.height = data.draw(st.sampled_from([(512, 512), (None, None), (640, 512), (1024, 768)]))
        img.source = data.draw(st.one_of(st.none(), st.text(max_size=8)))
    path = write_coco(ls, _tmp() / "gt.json")
    for back in (read_labels(path, check_images=False), read_coco(path, check_images=False)):
        assert back.format == "coco"
        assert list(back.images) == list(ls.images)
        for img in ls:
            got = back[img.key]
            assert got.record_id == (img.record_id if record_ids else img.key)
            assert (got.width, got.height, got.source) == (img.width, img.height, img.source)
            assert len(got.footprints) == len(img.footprints)
            for p, q in zip(img.footprints, got.footprints):
                assert q.geom_type == p.geom_type and _same_geometry(p, q), (p.wkt, q.wkt)
        assert back.report.problems == 0 and back.report.messages == []
        assert back.report.counts["kept"] == ls.n_footprints


def _base_coco(n_images: int, n_anns: int) -> dict:
    images = [{"id": 100 + i, "file_name": f"image/{i:04d}.tif", "width": 512, "height": 512} for i in range(n_images)]
    anns = []
    for j in range(n_anns):
        x, y = 10 * j, 5 + j
        anns.append({
            "id": j, "image_id": 100 + j % n_images, "category_id": 0, "iscrowd": 0,
            "segmentation": [[x, y, x + 8, y, x + 8, y + 6, x, y + 6]], "area": 48.0, "bbox": [x, y, 8, 6],
        })
    return {"categories": [{"id": 0, "name": "building"}], "images": images, "annotations": anns}


json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6)
)
json_values = st.recursive(
    json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=4), inner, max_size=3)), max_leaves=8
)
not_a_number = st.one_of(st.none(), st.booleans(), st.text(max_size=4), st.lists(json_scalars, max_size=2), st.dictionaries(st.text(max_size=2), json_scalars, max_size=2))


def _json_list(text: str) -> bool:
    try:
        return isinstance(json.loads(text), list)
    except ValueError:
        return False


def _rle_runs(counts) -> list[int] | None:
    """The run lengths of RLE ``counts`` (a list, or a compressed string decoded as pycocotools'
    ``rleFrString`` does), or None if they are not non-negative whole runs."""
    if isinstance(counts, list):
        ok = all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts)
        return counts if ok else None
    if not isinstance(counts, str):
        return None
    runs: list[int] = []
    p = 0
    while p < len(counts):
        x = k = 0
        more = True
        while more:
            if p >= len(counts) or not 0 <= ord(counts[p]) - 48 < 64:
                return None
            c = ord(counts[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        if x < 0:
            return None
        runs.append(x)
    return runs


def _valid_rle(counts, size) -> bool:
    """Whether an RLE record is well formed: a positive [height, width] and runs covering it exactly."""
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
        return False
    runs = _rle_runs(counts)
    return runs is not None and sum(runs) == size[0] * size[1]


@st.composite
def bad_segmentations(draw):
    """A segmentation that cannot give a building as it is (each must be reported)."""
    ring = [0, 0, 8, 0, 8, 6, 0, 6]
    kind = draw(st.sampled_from([
        "scalar", "text", "empty", "rle without counts", "rle bad counts", "ring not a list",
        "ring with a non-number", "odd ring", "short rings", "short extra ring", "non-finite",
    ]))
    if kind == "scalar":
        return draw(st.one_of(st.none(), st.booleans(), st.integers(), st.floats()))
    if kind == "text":  # a JSON list in a string is accepted on purpose, so leave those out
        return draw(st.text(max_size=20).filter(lambda s: not _json_list(s)))
    if kind == "empty":
        return []
    if kind == "rle without counts":
        return draw(st.dictionaries(st.text(max_size=6).filter(lambda k: k != "counts"), json_values, max_size=3))
    if kind == "rle bad counts":
        # Counts that are not runs at all, or runs (a list, or an RLE string) that do not cover
        # size[0] * size[1] pixels; a well-formed RLE drawn by chance is left out.
        size = draw(st.one_of(st.just([4, 4]), st.lists(st.integers(0, 6), max_size=3), json_scalars))
        counts = draw(st.one_of(
            st.none(), st.integers(-5, 5), st.floats(), st.dictionaries(st.text(max_size=2), json_scalars, max_size=2),
            st.lists(st.one_of(st.text("abxyz", min_size=1, max_size=3), st.none(), st.lists(st.integers(0, 3), min_size=1, max_size=2)), min_size=1, max_size=3),
            st.text(max_size=6), st.text("".join(map(chr, range(48, 112))), max_size=4),  # the RLE string alphabet
            st.lists(st.integers(0, 20), max_size=4),
        ).filter(lambda c: not _valid_rle(c, size)))
        return {"counts": counts, "size": size}
    if kind == "ring not a list":
        return [ring, draw(st.one_of(json_scalars, st.dictionaries(st.text(max_size=2), json_scalars, max_size=2)))]
    if kind == "ring with a non-number":
        bad = list(ring)
        bad[draw(st.integers(0, len(bad) - 1))] = draw(not_a_number)
        return [bad] if draw(st.booleans()) else [ring, bad]
    if kind == "odd ring":
        return [ring[: draw(st.sampled_from([1, 3, 5, 7]))]]
    if kind == "short rings":  # every ring has fewer than 3 distinct points
        pts = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), max_size=2).map(lambda ps: ps * 2)
        return [[v for pt in ps for v in pt] for ps in draw(st.lists(pts, min_size=1, max_size=3))]
    if kind == "short extra ring":  # one good ring, one degenerate: the degenerate one is reported
        return [ring, draw(st.sampled_from([[], [1, 1], [1, 1, 2, 2], [3, 3, 3, 3, 3, 3]]))]
    # non-finite: NaN or an infinity anywhere, the first point included.
    bad = [float(v) for v in ring]
    for i in draw(st.lists(st.integers(0, len(bad) - 1), min_size=1, max_size=3)):
        bad[i] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    return [bad]


ERROR_KINDS = (
    "ann drop key", "ann bad segmentation", "ann unknown image", "ann bad score", "ann duplicate id",
    "ann not a dict", "img drop key", "img duplicate id", "img duplicate file", "img not a dict",
)
BENIGN_KINDS = ("bbox garbage", "negative coordinates", "size garbage", "category garbage", "extra keys")


@st.composite
def corrupted_coco(draw):
    """A valid COCO dict with random corruptions, one per record; returns (data, records to be named)."""
    n_img, n_ann = draw(st.integers(1, 4)), draw(st.integers(1, 7))
    data = _base_coco(n_img, n_ann)
    images, anns = data["images"], data["annotations"]
    img_ids = {im["id"] for im in images}
    named: set[str] = set()
    # Record 0 of each list stays intact: duplicates copy its id / file name.
    ann_targets = draw(st.lists(st.integers(1, n_ann - 1), unique=True, max_size=n_ann - 1)) if n_ann > 1 else []
    img_targets = draw(st.lists(st.integers(1, n_img - 1), unique=True, max_size=n_img - 1)) if n_img > 1 else []
    kinds = ERROR_KINDS + BENIGN_KINDS
    for n in ann_targets:
        kind = draw(st.sampled_from([k for k in kinds if not k.startswith("img")]))
        ann = anns[n]
        if kind == "ann drop key":
            del ann[draw(st.sampled_from(["image_id", "segmentation"]))]
        elif kind == "ann bad segmentation":
            ann["segmentation"] = draw(bad_segmentations())
        elif kind == "ann unknown image":
            ann["image_id"] = draw(st.one_of(
                st.none(), st.text(max_size=4), st.integers(-10**6, 10**6),
                st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
            ).filter(lambda v: isinstance(v, (list, dict)) or v not in img_ids))
        elif kind == "ann bad score":
            ann["score"] = draw(st.one_of(st.text(max_size=4), st.sampled_from([math.nan, math.inf, -math.inf]), st.lists(st.integers(), max_size=2)))
        elif kind == "ann duplicate id":
            ann["id"] = anns[0]["id"]
        elif kind == "ann not a dict":
            anns[n] = draw(st.one_of(json_scalars, st.lists(json_scalars, max_size=3)))
        elif kind == "bbox garbage":
            ann["bbox"] = draw(json_values)
        elif kind == "negative coordinates":
            dx, dy = draw(st.integers(-1000, -9)), draw(st.integers(-1000, 0))
            ann["segmentation"] = [[v + (dx if i % 2 == 0 else dy) for i, v in enumerate(ann["segmentation"][0])]]
        elif kind == "category garbage":
            ann["category_id"] = draw(json_values)
        else:
            ann[draw(st.text(max_size=5).filter(lambda k: k not in ann))] = draw(json_values)
        if kind in ERROR_KINDS:
            named.add(f"annotations[{n}]")
    for k in img_targets:
        kind = draw(st.sampled_from([k for k in kinds if not k.startswith("ann") and k not in ("bbox garbage", "negative coordinates")]))
        rec = images[k]
        if kind == "img drop key":
            del rec[draw(st.sampled_from(["id", "file_name"]))]
        elif kind == "img duplicate id":
            rec["id"] = images[0]["id"]
        elif kind == "img duplicate file":
            rec["file_name"] = images[0]["file_name"]
        elif kind == "img not a dict":
            images[k] = draw(st.one_of(json_scalars, st.lists(json_scalars, max_size=3)))
        elif kind == "size garbage":
            value = draw(st.one_of(json_values, st.sampled_from([math.inf, -math.inf, math.nan, 0, 0.5, -3, "512", [512]])))
            rec[draw(st.sampled_from(["width", "height"]))] = value
            if value is not None and not _positive_size(value):  # a size that is not a positive number is noted
                named.add(f"images[{k}]")
        elif kind == "category garbage":
            rec["source"] = draw(json_values)
        else:
            rec[draw(st.text(max_size=5).filter(lambda key: key not in rec))] = draw(json_values)
        if kind in ERROR_KINDS:
            named.add(f"images[{k}]")
    return data, named


def _positive_size(value) -> bool:
    """An image width or height the reader takes as it is: a finite number of at least 1."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 1


def _write_json(data, name: str = "gt.json") -> Path:
    p = _tmp() / name
    p.write_text(json.dumps(data))  # NaN and Infinity as Python's json writes and reads them
    return p


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(case=corrupted_coco(), check_images=st.booleans())
@example(case=({"images": [{"id": 1, "file_name": "a.tif"}], "annotations": [
    {"id": 0, "image_id": 1, "segmentation": [[0, 0, 4, 0, 4, 4]]},
    {"id": 0, "image_id": 1, "segmentation": [[0, 0, 4, 0, 4, 4]], "score": "high"},
    {"id": 2, "image_id": 1, "segmentation": "[[0, 0"},
    {"id": 3, "image_id": 1, "segmentation": {"size": [4, 4]}},
    {"id": 4, "image_id": 1, "segmentation": [[0, 0, 4, 4, 4, 0, 0, 4]]},
    {"id": 5, "image_id": 1, "segmentation": [[0, 0, 1, 1]]},
    {"id": 6, "image_id": 7, "segmentation": [[0, 0, 4, 0, 4, 4]]},
    {"id": 7, "image_id": 1, "segmentation": [[0, 0, 4, 0, 4, math.nan]]},
]}, {f"annotations[{n}]" for n in range(1, 8)}), check_images=False)
def test_coco_corruptions_are_reported_never_crash(case, check_images: bool) -> None:
    data, named = case
    path = _write_json(data)
    ls = read_labels(path, check_images=check_images)
    assert ls.format == "coco"
    _check_footprints(ls)
    _check_report_bookkeeping(ls)
    for m in ls.report.messages:
        assert re.match(r"(images|annotations)\[\d+\]", m), m  # every problem names its record
    for where in named:
        assert any(m.startswith(where) for m in ls.report.messages), (where, ls.report.messages)
    # The records left intact are all read: annotation 0 always lands on image 0.
    first = data["images"][0]
    assert any(img.record_id == first["id"] for img in ls)
    assert ls.report.counts["images"] == len(ls)


@FAST
@given(case=corrupted_coco())
def test_coco_strict_mode_stops_exactly_when_something_is_skipped(case) -> None:
    data, _ = case
    path = _write_json(data)
    with tally_skips() as tally:
        ls = read_labels(path, check_images=False)
    assert tally.n == ls.report.skipped
    try:
        with strict_mode():
            read_labels(path, check_images=False)
    except RooftraceError as exc:
        assert ls.report.skipped > 0 and "gt.json" in str(exc)
        assert re.search(r"(images|annotations)\[\d+\]", str(exc)), str(exc)
    else:
        assert ls.report.skipped == 0


@TINY
@given(top=st.dictionaries(st.sampled_from(["images", "annotations", "categories", "info"]), json_values, max_size=4),
       keep_images=st.booleans())
@example(top={"images": {}, "annotations": []}, keep_images=False)
@example(top={"images": [], "annotations": None}, keep_images=False)
def test_coco_top_level_garbage_raises_only_rooftrace_errors(top: dict, keep_images: bool) -> None:
    if keep_images:
        top["images"] = []
    path = _write_json(top)
    try:
        ls = read_labels(path, check_images=False)
    except RooftraceError as exc:
        assert "gt.json" in str(exc)
        return
    assert isinstance(top.get("images"), list) and isinstance(top.get("annotations", []), list)
    _check_footprints(ls)


# --- COCO: edge cases once mishandled, each pinned by a minimal input ----------------------------

one_image = {"id": 1, "file_name": "image/0001.tif", "width": 16, "height": 16}
good_seg = [[0, 0, 4, 0, 4, 4]]


@TINY
@given(field=st.sampled_from(["image id", "annotation id", "annotation image_id"]),
       value=st.one_of(st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(), max_size=2)))
@example(field="annotation image_id", value={})
@example(field="image id", value=[1])
def test_coco_unhashable_ids_are_reported(field: str, value) -> None:
    """An image 'id', annotation 'id' or annotation 'image_id' that is a list or an object is reported, not a TypeError."""
    img, ann = dict(one_image), {"id": 0, "image_id": 1, "segmentation": good_seg}
    if field == "image id":
        img["id"] = value
    elif field == "annotation id":
        ann["id"] = value
    else:
        ann["image_id"] = value
    ls = read_labels(_write_json({"images": [img], "annotations": [ann]}), check_images=False)
    assert ls.report.problems >= 1


@TINY
@given(field=st.sampled_from(["width", "height"]))
@example(field="width")
def test_coco_infinite_image_size_is_reported(field: str) -> None:
    """An image width or height of Infinity (valid for Python's json) is reported, not an OverflowError."""
    img = dict(one_image, **{field: math.inf})
    ls = read_labels(_write_json({"images": [img], "annotations": []}), check_images=False)
    assert ls.report.problems >= 1


@TINY
@given(big=st.integers(min_value=2**1024, max_value=10**1000), where=st.integers(0, 5))
@example(big=10**309, where=0)
def test_coco_integer_too_large_for_a_float_is_reported(big: int, where: int) -> None:
    """A JSON integer beyond float range in a ring is reported for its annotation, not an OverflowError."""
    ring = [0, 0, 10, 0, 10, 10]
    ring[where] = big
    ls = read_labels(_write_json({"images": [one_image], "annotations": [{"image_id": 1, "segmentation": [ring]}]}), check_images=False)
    assert ls[1].footprints == [] and any(m.startswith("annotations[0]") for m in ls.report.messages)


@TINY
@given(which=st.sampled_from([0, 1]), ring=st.sampled_from([0, 1]))
@example(which=0, ring=0)
def test_coco_nan_in_the_first_point_is_reported(which: int, ring: int) -> None:
    """NaN in a ring's first point is reported for its annotation, not a GEOSException from shapely."""
    bad = [0.0, 0.0, 10.0, 0.0, 10.0, 10.0]
    bad[which] = math.nan
    seg = [bad] if ring == 0 else [[20, 20, 30, 20, 30, 30], bad]
    ls = read_labels(_write_json({"images": [one_image], "annotations": [{"image_id": 1, "segmentation": seg}]}), check_images=False)
    assert any(m.startswith("annotations[0]") for m in ls.report.messages)


@TINY
@given(stem=st.text(st.characters(whitelist_categories=("Nd", "No")), min_size=1, max_size=3))
@example(stem="\u00b2")
def test_coco_any_file_name_is_read_or_reported(stem: str) -> None:
    """A file name whose stem is Unicode digits that int() rejects (such as superscript two) is read with a string key."""
    img = dict(one_image, file_name=f"image/{stem}.tif")
    ls = read_labels(_write_json({"images": [img], "annotations": [{"image_id": 1, "segmentation": good_seg}]}), check_images=False)
    assert len(ls) == 1 and ls.n_footprints == 1


@TINY
@given(kind=st.sampled_from(["long integer", "deep nesting"]), n=st.integers(5000, 20000))
@example(kind="long integer", n=5000)
@example(kind="deep nesting", n=100000)
def test_any_json_file_raises_only_rooftrace_errors(kind: str, n: int) -> None:
    """JSON that Python cannot read (an integer of more than 4300 digits, nesting too deep) raises
    RooftraceError naming the file, not ValueError or RecursionError."""
    text = '{"images": [], "annotations": [], "info": ' + "1" * n + "}" if kind == "long integer" else "[" * n + "]" * n
    p = _tmp() / "gt.json"
    p.write_text(text)
    try:
        read_labels(p, check_images=False)
    except RooftraceError as exc:
        assert "gt.json" in str(exc)


@TINY
@given(counts=st.one_of(st.just(""), st.lists(st.integers(0, 4), min_size=1, max_size=3)))
@example(counts="")
@example(counts=[1, 2, 3])
def test_coco_truncated_rle_is_reported(counts) -> None:
    """RLE counts that do not cover size[0] * size[1] pixels are reported, never decoded from
    uninitialised memory into a building."""
    seg = {"size": [4, 4], "counts": counts}
    ls = read_labels(_write_json({"images": [one_image], "annotations": [{"image_id": 1, "segmentation": seg}]}), check_images=False)
    assert any(m.startswith("annotations[0]") for m in ls.report.messages), [f.wkt for f in ls[1].footprints]


@TINY
@given(field=st.sampled_from(["width", "height"]), value=st.one_of(st.text(max_size=4), st.integers(-5, 0), st.lists(st.integers(), max_size=2)))
@example(field="width", value="512")
def test_coco_image_size_of_the_wrong_type_is_reported(field: str, value) -> None:
    """An image width or height that is not a positive number ("512", -3, 0, [512]) is noted in the
    LoadReport, not silently replaced by None."""
    img = dict(one_image, **{field: value})
    ls = read_labels(_write_json({"images": [img], "annotations": []}), check_images=False)
    assert any(m.startswith("images[0]") for m in ls.report.messages)


# --- 3. mask -> polygon -> mask -----------------------------------------------------------------


def _burn(geoms, values, shape) -> np.ndarray:
    """Rasterise by pixel centre with rasterio itself (not the project's wrapper)."""
    out = np.zeros(shape, np.int32)
    if len(geoms):
        rasterio.features.rasterize(zip(geoms, values), out_shape=shape, transform=Affine.identity(), all_touched=False, out=out)
    return out


def _structure(connectivity: int) -> np.ndarray:
    return ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)


@st.composite
def instance_maps(draw):
    """Id maps of overlapping rectangles (later wins), many one pixel wide, plus random noise ids."""
    h, w = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    inst = np.zeros((h, w), np.int32)
    for k in range(1, draw(st.integers(0, 8)) + 1):
        r0, c0 = draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))
        rh = draw(st.sampled_from([1, 1, 2, draw(st.integers(1, h))]))
        cw = draw(st.sampled_from([1, 1, 2, draw(st.integers(1, w))]))
        inst[r0 : r0 + rh, c0 : c0 + cw] = k
    if draw(st.booleans()):  # salt: single pixels of random ids, many diagonal touches
        noise = draw(arrays(np.int32, (h, w), elements=st.sampled_from([0, 0, 0, 1, 2, 9])))
        inst = np.where(noise > 0, noise, inst)
    return inst


# Shapes where corner touches, holes and one-pixel lines meet.
CHECKER = (np.indices((6, 7)).sum(axis=0) % 2).astype(np.int32)
RING_WITH_DIAGONAL_GAP = np.array([
    [0, 0, 0, 0, 0, 0], [0, 1, 1, 1, 0, 0], [0, 1, 0, 1, 0, 0], [0, 1, 1, 0, 1, 0], [0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 0, 0]
], np.int32)
STAIRCASE = np.eye(7, dtype=np.int32) + np.eye(7, k=1, dtype=np.int32) * 2
NESTED = np.pad(np.pad(np.pad(np.full((1, 1), 3, np.int32), 1), 1, constant_values=2), 1)  # id 3 in a hole of id 2


@FAST
@given(inst=instance_maps(), connectivity=st.sampled_from([4, 8]), relabel=st.booleans())
@example(inst=CHECKER, connectivity=8, relabel=True)
@example(inst=CHECKER, connectivity=4, relabel=False)
@example(inst=RING_WITH_DIAGONAL_GAP, connectivity=4, relabel=False)
@example(inst=RING_WITH_DIAGONAL_GAP, connectivity=8, relabel=False)
@example(inst=STAIRCASE, connectivity=8, relabel=False)
@example(inst=NESTED, connectivity=4, relabel=False)
def test_traced_polygons_with_holes_rasterise_back_to_their_pixels(inst: np.ndarray, connectivity: int, relabel: bool) -> None:
    """holes=True: every id's geometry covers exactly its pixels, whatever the connectivity."""
    if relabel:  # ids = connected components under the same connectivity (one region per id)
        inst = ndimage.label(inst > 0, _structure(connectivity))[0].astype(np.int32)
    ids, polys = instances_to_polygons(inst, holes=True, connectivity=connectivity)
    assert ids.tolist() == sorted(set(inst[inst > 0].tolist()))
    for k, p in zip(ids, polys):
        assert p.is_valid and not p.is_empty and p.geom_type in ("Polygon", "MultiPolygon")
        assert p.area == (inst == k).sum()
        if relabel and connectivity == 4:
            assert p.geom_type == "Polygon"  # a 4-connected region is one polygon
    assert np.array_equal(_burn(list(polys), ids.tolist(), inst.shape), inst)
    # Interiors are disjoint: the polygons tile the building pixels exactly once.
    assert sum(p.area for p in polys) == (inst > 0).sum()
    # The numpy tracer and GDAL's polygonize agree under 8-connectivity as well.
    ref = instances_to_footprints(inst, connectivity=connectivity)
    assert len(ref) == len(polys)
    for p, r in zip(polys, ref):
        assert _same_geometry(p, r), (p.wkt, r.wkt)


@FAST
@given(inst=instance_maps(), connectivity=st.sampled_from([4, 8]))
@example(inst=RING_WITH_DIAGONAL_GAP, connectivity=4)
@example(inst=RING_WITH_DIAGONAL_GAP, connectivity=8)
@example(inst=NESTED, connectivity=8)
@example(inst=CHECKER, connectivity=8)
def test_traced_polygons_without_holes_rasterise_to_their_filled_pixels(inst: np.ndarray, connectivity: int) -> None:
    """holes=False (what a BEGC2024 CSV can hold): each id covers its pixels plus the background
    enclosed by them, and nothing else. 'Enclosed' is per piece of the id (its components under
    ``connectivity``): background that is not 4-connected to the outside of that piece. (Pieces
    of one id that touch only at corners do not fill what they enclose together: they are separate
    polygons; see RING_WITH_DIAGONAL_GAP with connectivity 4.)"""
    ids, polys = instances_to_polygons(inst, holes=False, connectivity=connectivity)
    cross = ndimage.generate_binary_structure(2, 1)
    for k, p in zip(ids, polys):
        assert p.is_valid and all(len(q.interiors) == 0 for q in shapely.get_parts(p))
        pieces, n = ndimage.label(inst == k, _structure(connectivity))
        filled = np.zeros(inst.shape, bool)
        for c in range(1, n + 1):
            filled |= ndimage.binary_fill_holes(pieces == c, structure=cross)
        assert p.area == filled.sum()
        assert np.array_equal(_burn([p], [1], inst.shape).astype(bool), filled)


@FAST
@given(mask=arrays(np.bool_, st.tuples(st.integers(1, 20), st.integers(1, 20))), connectivity=st.sampled_from([4, 8]))
@example(mask=CHECKER.astype(bool), connectivity=4)
@example(mask=CHECKER.astype(bool), connectivity=8)
@example(mask=np.ones((1, 30), bool), connectivity=4)
@example(mask=(RING_WITH_DIAGONAL_GAP > 0), connectivity=4)
def test_mask_to_footprints_gives_one_exact_footprint_per_component(mask: np.ndarray, connectivity: int) -> None:
    fps = mask_to_footprints(mask, connectivity=connectivity)
    comps, n = ndimage.label(mask, _structure(connectivity))
    assert len(fps) == n
    for fp in fps:
        assert fp.is_valid and fp.area > 0
        burnt = _burn([fp], [1], mask.shape).astype(bool)
        labels = set(np.unique(comps[burnt]).tolist())
        assert len(labels) == 1 and labels != {0}  # exactly one component, nothing outside it
        assert np.array_equal(burnt, comps == labels.pop())
        assert fp.area == burnt.sum()
    assert np.array_equal(_burn(fps, [1] * len(fps), mask.shape).astype(bool), mask)
