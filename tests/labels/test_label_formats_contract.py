"""The contract every registered label format keeps, run for each entry of the registry.

:class:`TestLabelFormatContract` is parametrised over :data:`rooftrace.labels.formats.LABEL_FORMATS`, so a new
format is covered by its module and its registration line alone: its buildings round-trip (write, then read
back through format detection), empty input reads as empty, a CRS is carried by a format that holds map
coordinates and refused by one that does not, and bad input is one line naming the file. It also runs on a
toy format (tests/labels/label_format_toy.py) registered here only, to show that one module and one registration are
all a format needs; the last tests show ``convert`` and its help knowing that toy format too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from shapely.geometry import Polygon, box

from rooftrace.cli import main
from rooftrace.core.errors import RooftraceError
from rooftrace.labels import formats
from rooftrace.labels.formats import read_labels, register, write_labels, writer_for
from rooftrace.labels.records import LabelSet
from rooftrace.labels.registry import LabelFormat, Probe
from tests.labels.label_format_toy import FORMAT as TOY

#: The formats registered by rooftrace itself (the toy is added per test, below).
REGISTERED = list(formats.LABEL_FORMATS)


def _write_masks(ls: LabelSet, folder: Path) -> Path:
    """A folder of masks holding ``ls`` (pixel-edge buildings of integer corners come back exactly)."""
    from rooftrace.prepare.targets import rasterize_footprints

    folder.mkdir()
    for img in ls:
        mask = rasterize_footprints(img.footprints, (img.height, img.width)).astype(bool)
        Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"{img.key:04d}.png")
    return folder


#: How the contract writes input for a format rooftrace reads but does not write: name -> (labels, path) -> path.
READ_ONLY_MAKERS = {"masks": _write_masks}


@pytest.fixture(params=[*REGISTERED, TOY.name])
def fmt(request, monkeypatch) -> LabelFormat:
    """Each registered format in turn, and the toy format, registered for this test only."""
    monkeypatch.setattr(formats, "LABEL_FORMATS", dict(formats.LABEL_FORMATS))
    if request.param == TOY.name:
        register(TOY)
    return formats.LABEL_FORMATS[request.param]


def _path(fmt: LabelFormat, folder: Path, stem: str = "labels") -> Path:
    """Where a file (or folder) of ``fmt`` goes: named by the suffix it is written under."""
    if fmt.folder:
        return folder / stem
    return folder / f"{stem}{(fmt.default_for or fmt.write_suffixes or fmt.suffixes)[0]}"


def _write(fmt: LabelFormat, ls: LabelSet, path: Path) -> Path:
    if fmt.write is not None:
        return write_labels(ls, path, fmt)
    if fmt.name not in READ_ONLY_MAKERS:
        pytest.fail(f"{fmt.name} has no writer: add a maker of its input to READ_ONLY_MAKERS")
    return READ_ONLY_MAKERS[fmt.name](ls, path)


def _pixel_set(images: dict) -> LabelSet:
    ls = LabelSet()
    for key, polys in images.items():
        img = ls.get_or_add(key)
        img.width = img.height = 64
        for p in polys:
            ls.add(key, p, "test")
    return ls


def _buildings(ls: LabelSet) -> dict:
    """Each image's buildings as sorted WKB-free tuples of their normalised outline, for comparison."""
    out = {}
    for img in ls:
        if img.footprints:
            out[img.key] = sorted(tuple(np.round(np.asarray(fp.normalize().exterior.coords), 6).ravel()) for fp in img.footprints)
    return out


#: Two images with buildings on integer pixel corners (so that every format, masks included, holds them exactly).
BUILDINGS = {1: [box(2, 3, 10, 9), box(20, 20, 31, 40)], 2: [Polygon([(4, 4), (20, 4), (20, 12), (12, 12), (12, 24), (4, 24)])]}


class TestLabelFormatContract:
    def test_round_trip_gives_the_same_buildings(self, fmt, tmp_path):
        ls = _pixel_set(BUILDINGS)
        back = read_labels(_write(fmt, ls, _path(fmt, tmp_path)), check_images=False)
        assert back.format == fmt.name, "detection chose another format for the format's own output"
        assert _buildings(back) == _buildings(ls)
        assert back.report.skipped == 0 and back.crs is None

    def test_its_own_output_is_claimed_by_it_alone(self, fmt, tmp_path):
        probe = Probe(_write(fmt, _pixel_set(BUILDINGS), _path(fmt, tmp_path)))
        claimants = [f.name for f in formats.LABEL_FORMATS.values() if f.reads(probe) and f.sniff(probe)]
        assert claimants == [fmt.name]

    def test_empty_input_reads_as_no_buildings(self, fmt, tmp_path):
        back = read_labels(_write(fmt, _pixel_set({1: []}), _path(fmt, tmp_path)), check_images=False)
        assert back.format == fmt.name
        assert back.n_footprints == 0 and back.report.skipped == 0
        assert set(back.images) <= {1}

    def test_crs_is_carried_or_refused(self, fmt, tmp_path):
        ls = LabelSet(crs="EPSG:32614")
        ls.add("scene", box(600010, 3300020, 600030, 3300035), "test")
        path = _path(fmt, tmp_path, "scene")
        if fmt.write is None:
            assert not fmt.map_coordinates, "a format read only cannot be shown to carry a CRS here"
            pytest.skip(f"{fmt.name} is read only and holds pixels")
        if fmt.map_coordinates:
            back = read_labels(write_labels(ls, path, fmt))
            assert back.crs == "EPSG:32614"
            assert _buildings(back) == _buildings(ls)
        else:
            with pytest.raises(RooftraceError, match="labels are in map coordinates"):
                write_labels(ls, path, fmt)
            assert not path.exists()

    def test_bad_input_is_one_line_naming_the_file(self, fmt, tmp_path, capsys):
        path = _path(fmt, tmp_path, "bad")
        if fmt.folder:
            path.mkdir()  # a folder with nothing in it
        else:
            path.write_bytes(b"")  # a zero-byte file
        assert main(["convert", str(path), str(tmp_path / "out.geojson")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and path.name in err[0], err
        assert not (tmp_path / "out.geojson").exists()

    def test_truncated_input_is_an_error_or_a_skip_naming_the_file(self, fmt, tmp_path):
        path = _write(fmt, _pixel_set(BUILDINGS), _path(fmt, tmp_path))
        if path.is_dir():
            victim = sorted(path.iterdir())[0]
            victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
        else:
            victim = path
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        try:
            back = read_labels(path, check_images=False)
        except RooftraceError as exc:
            assert "\n" not in str(exc) and str(exc).startswith(str(path)), exc
        else:
            assert back.report.skipped > 0, f"half of {victim.name} read without a word"
            assert back.report.summary().startswith(str(path))


# --- a new format: one module, one registration -------------------------------------------------------------------


@pytest.fixture
def toy(monkeypatch) -> LabelFormat:
    monkeypatch.setattr(formats, "LABEL_FORMATS", dict(formats.LABEL_FORMATS))
    return register(TOY)


def test_a_registered_format_is_read_written_and_offered_by_convert(toy, tmp_path, capsys):
    src = write_labels(_pixel_set(BUILDINGS), tmp_path / "gt.json", "coco")
    assert writer_for(tmp_path / "x.tsv") is toy
    assert main(["convert", str(src), str(tmp_path / "out.tsv")]) == 0
    assert "(toy-tsv)" in capsys.readouterr().out
    assert read_labels(tmp_path / "out.tsv").format == "toy-tsv"
    assert main(["convert", str(src), str(tmp_path / "again.csv"), "--to", "toy-tsv"]) == 2
    assert "it takes begc-csv, spacenet-csv" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["convert", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # as wrapped for any terminal width
    assert "toy TSV" in out and ".tsv toy-tsv" in out


def test_a_format_is_registered_once(toy):
    with pytest.raises(ValueError, match="registered already"):
        register(TOY)


def test_without_registration_the_toy_format_is_unknown(tmp_path):
    path = tmp_path / "l.tsv"
    path.write_text("image\twkt\n1\tPOLYGON ((0 0, 1 0, 1 1, 0 0))\n")
    with pytest.raises(RooftraceError, match=r"l\.tsv: unknown label format \(suffix '\.tsv'\)"):
        read_labels(path)
    assert "toy-tsv" not in formats.writer_names()


def test_the_cli_names_no_label_format():
    """``convert``'s formats come from the registry: the label commands (cli/data.py) neither compare with nor list a
    format's name. (``predict-scene --format`` names GIS output formats, which are not label formats.)"""
    import ast

    data = Path(formats.__file__).resolve().parents[1] / "cli" / "data.py"
    names = set(formats.LABEL_FORMATS)
    found = [f"data.py:{node.lineno} {node.value!r}" for node in ast.walk(ast.parse(data.read_text()))
             if isinstance(node, ast.Constant) and node.value in names]
    assert not found, f"format names in the CLI (read them from rooftrace.labels.formats instead): {found}"


def test_building_the_parser_imports_no_label_reader():
    """The registry imports every reader (rasterio, pyproj, ...): the CLI reads it only when --to is checked or help is
    shown, so that every command starts as fast as before it."""
    import subprocess
    import sys

    code = ("import sys; from rooftrace.cli import build_parser; p = build_parser(); "
            "print('rooftrace.labels.formats' in sys.modules, 'rasterio' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
