"""Tests of the ``prepare`` stage: on a tiny synthetic split with known answers, and on the real
sample pack's val split (read from ``ROOFTRACE_SAMPLE_DIR``, never copied into the repo)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rooftrace.core.errors import RooftraceError
from rooftrace.imagery.png import encode_instances, read_instances, read_targets
from rooftrace.labels.coco import read_coco
from rooftrace.labels.splits import find_annotations
from rooftrace.prepare.targets import (
    TargetSettings,
    instance_map,
    make_targets,
    rasterize_footprints,
)
from rooftrace.prepare.tiles import PrepareResult, prepare_split

SAMPLE_DIR = Path(
    os.environ.get("ROOFTRACE_SAMPLE_DIR", Path(__file__).resolve().parents[2].parent / "shared/data/buildings-sample")
)
needs_sample = pytest.mark.skipif(
    not (SAMPLE_DIR / "val" / "val.json").is_file(),
    reason=f"sample pack not found at {SAMPLE_DIR} (set ROOFTRACE_SAMPLE_DIR to the buildings-sample folder)",
)


def square_ring(c0: float, r0: float, c1: float, r1: float) -> list[float]:
    """A COCO flat ring for the axis-aligned rectangle traced on pixel edges."""
    return [c0, r0, c1, r0, c1, r1, c0, r1]


@pytest.fixture
def tiny_split(tmp_path: Path) -> Path:
    """``tiny/`` with a 16 x 16 PNG holding two touching squares and a third apart, plus one
    annotated image whose file is missing."""
    split = tmp_path / "tiny"
    (split / "image").mkdir(parents=True)
    rgb = np.full((16, 16, 3), 90, np.uint8)
    Image.fromarray(rgb).save(split / "image" / "0001.png")
    coco = {
        "images": [
            {"id": 10, "file_name": "image/0001.png", "width": 16, "height": 16, "source": "synthetic"},
            {"id": 11, "file_name": "image/0002.png", "width": 16, "height": 16, "source": "synthetic"},
        ],
        "annotations": [
            {"id": 0, "image_id": 10, "category_id": 0, "segmentation": [square_ring(2, 2, 6, 6)]},
            {"id": 1, "image_id": 10, "category_id": 0, "segmentation": [square_ring(6, 2, 10, 6)]},
            {"id": 2, "image_id": 10, "category_id": 0, "segmentation": [square_ring(11, 11, 14, 14)]},
            {"id": 3, "image_id": 11, "category_id": 0, "segmentation": [square_ring(1, 1, 4, 4)]},
        ],
        "categories": [{"id": 0, "name": "building"}],
    }
    (split / "tiny.json").write_text(json.dumps(coco))
    return split


# --- find_annotations ----------------------------------------------------------------------------


def test_find_annotations_prefers_the_split_name(tmp_path: Path) -> None:
    split = tmp_path / "train"
    split.mkdir()
    (split / "other.json").write_text("{}")
    (split / "train.json").write_text("{}")
    assert find_annotations(split) == split / "train.json"


def test_find_annotations_takes_the_only_json(tmp_path: Path) -> None:
    (tmp_path / "labels.json").write_text("{}")
    assert find_annotations(tmp_path) == tmp_path / "labels.json"


def test_find_annotations_none_or_ambiguous(tmp_path: Path) -> None:
    split = tmp_path / "val"
    split.mkdir()
    with pytest.raises(RooftraceError, match="no annotations.*val.json"):
        find_annotations(split)
    (split / "a.json").write_text("{}")
    (split / "b.json").write_text("{}")
    with pytest.raises(RooftraceError, match="several JSON files"):
        find_annotations(split)
    with pytest.raises(RooftraceError, match="no such folder"):
        find_annotations(tmp_path / "nope")


# --- synthetic split -----------------------------------------------------------------------------


def test_tiny_split_exact_targets(tiny_split: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    settings = TargetSettings(boundary_width=1, contact_width=1)
    result = prepare_split(tiny_split, out, settings=settings, progress=False)
    assert isinstance(result, PrepareResult)
    assert (result.n_images, result.n_footprints, result.n_skipped, result.n_previews) == (1, 3, 1, 1)
    assert result.skipped[0][0] == "image/0002.png"
    assert result.report.counts["missing image files"] == 1

    targets = read_targets(out / "targets" / "0001.png")
    assert targets.shape == (3, 16, 16)
    mask = np.zeros((16, 16), np.uint8)
    mask[2:6, 2:10] = 1
    mask[11:14, 11:14] = 1
    boundary = mask.copy()
    boundary[3:5, 3:5] = boundary[3:5, 7:9] = 0  # each 4 x 4 square keeps a 2 x 2 core
    boundary[12, 12] = 0  # the 3 x 3 square keeps its centre
    contact = np.zeros((16, 16), np.uint8)
    contact[1:7, 5:7] = 1  # both sides of the shared edge at x = 6, one row beyond
    np.testing.assert_array_equal(targets[0], mask)
    np.testing.assert_array_equal(targets[1], boundary)
    np.testing.assert_array_equal(targets[2], contact)

    inst = read_instances(out / "instances" / "0001.png")
    assert inst.dtype == np.int32
    assert (inst[2:6, 2:6] == 1).all() and (inst[2:6, 6:10] == 2).all() and (inst[11:14, 11:14] == 3).all()
    assert int((inst > 0).sum()) == int(mask.sum())
    with Image.open(out / "instances" / "0001.png") as im:
        assert im.mode.startswith("I;16")
    with Image.open(out / "masks" / "0001.png") as im:
        np.testing.assert_array_equal(np.asarray(im), mask * 255)
    with Image.open(out / "previews" / "0001.png") as im:
        preview = np.asarray(im.convert("RGB"))
    assert preview.shape == (32, 32, 3)  # small tiles are shown at twice their size
    assert (preview == (255, 255, 0)).all(axis=-1).any(), "outlines are drawn"
    assert not (out / "targets" / "0002.png").exists()

    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"] == {"boundary_width": 1, "contact_width": 1}
    assert summary["n_images"] == 1 and summary["n_footprints"] == 3 and summary["n_skipped"] == 1
    assert summary["per_source"] == {"synthetic": {"images": 1, "footprints": 3}}
    assert summary["report"]["counts"]["missing image files"] == 1
    assert summary["images"][0]["stem"] == "0001" and summary["images"][0]["key"] == 1
    assert summary["channels"] == ["footprint", "boundary", "contact"]
    text = result.summary()
    assert "prepared 1 images (3 footprints)" in text and "skipped image/0002.png" in text
    assert result.report.summary() in text


def test_refuses_existing_outputs_unless_forced(tiny_split: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    prepare_split(tiny_split, out, progress=False)
    with pytest.raises(RooftraceError, match=f"{out}.*already holds prepare outputs.*--force"):
        prepare_split(tiny_split, out, progress=False)
    again = prepare_split(tiny_split, out, force=True, progress=False)
    assert again.n_images == 1 and again.stale_files == 0


def test_stale_files_are_counted_not_deleted(tiny_split: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "targets").mkdir(parents=True)
    (out / "targets" / "9999.png").write_bytes(b"old")
    result = prepare_split(tiny_split, out, force=True, progress=False, n_previews=0)
    assert result.stale_files == 1 and (out / "targets" / "9999.png").exists()
    assert "not written by this run" in result.summary()
    assert not (out / "previews").exists()


def test_empty_out_folder_is_fine(tiny_split: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "targets").mkdir(parents=True)  # an empty sub-folder is not an earlier run
    assert prepare_split(tiny_split, out, progress=False).n_images == 1


def test_unreadable_image_is_skipped(tiny_split: Path, tmp_path: Path) -> None:
    (tiny_split / "image" / "0001.png").write_bytes(b"not a png at all")
    result = prepare_split(tiny_split, tmp_path / "out", progress=False)
    assert result.n_images == 0 and result.n_skipped == 2
    assert "0001.png" in result.summary()


def test_more_than_65535_instances_is_an_error() -> None:
    inst = np.zeros((2, 2), np.int32)
    inst[0, 0] = 65536
    with pytest.raises(RooftraceError, match="65535"):
        encode_instances(inst, "x.json: image/big.tif")
    inst[0, 0] = 65535
    assert encode_instances(inst)


# --- real sample pack ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prepared_val(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PrepareResult]:
    out = tmp_path_factory.mktemp("prepared") / "val"
    return out, prepare_split(SAMPLE_DIR / "val", out, n_previews=3, progress=False)


@needs_sample
def test_real_val_split_file_counts(prepared_val: tuple[Path, PrepareResult]) -> None:
    out, result = prepared_val
    labels = read_coco(SAMPLE_DIR / "val" / "val.json")
    assert result.n_images == len(labels) == 29 and result.n_skipped == 0
    assert result.n_footprints == labels.n_footprints
    for folder in ("targets", "instances", "masks"):
        assert len(list((out / folder).glob("*.png"))) == 29
    assert len(list((out / "previews").glob("*.png"))) == 3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_images"] == 29 and len(summary["images"]) == 29
    assert sum(v["images"] for v in summary["per_source"].values()) == 29
    assert sum(v["footprints"] for v in summary["per_source"].values()) == labels.n_footprints


@needs_sample
def test_real_targets_match_the_coco_polygons(prepared_val: tuple[Path, PrepareResult]) -> None:
    out, _ = prepared_val
    labels = read_coco(SAMPLE_DIR / "val" / "val.json")
    checked = 0
    for img in labels:
        if len(img.footprints) < 3:
            continue
        stem = Path(img.file_name or "").stem
        targets = read_targets(out / "targets" / f"{stem}.png")
        shape = (img.height, img.width)
        assert targets.shape == (3, *shape)
        np.testing.assert_array_equal(targets[0], rasterize_footprints(img.footprints, shape))
        expected = make_targets(img.footprints, shape)
        np.testing.assert_array_equal(targets, expected.stack())
        np.testing.assert_array_equal(read_instances(out / "instances" / f"{stem}.png"), instance_map(img.footprints, shape))
        checked += 1
        if checked == 4:
            break
    assert checked == 4


@needs_sample
def test_real_split_second_run_needs_force(prepared_val: tuple[Path, PrepareResult]) -> None:
    out, _ = prepared_val
    with pytest.raises(RooftraceError, match="already holds prepare outputs"):
        prepare_split(SAMPLE_DIR / "val", out, progress=False)
    assert prepare_split(SAMPLE_DIR / "val", out, n_previews=0, force=True, progress=False).n_images == 29
