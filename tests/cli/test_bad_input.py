"""Bad input through the command line: every case names the file (and line, record or tile) and the
problem, prints no traceback, and exits with the status that says what happened:

0  done, nothing left out (repairs and notes are printed);
1  done, but some records, rows, tiles or scenes were skipped (each listed);
2  stopped: bad input or an output that cannot be written (``--strict``: also the first skipped item).

TESTING.md lists every case with what the user sees; ``CASES`` below is that list.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import from_origin
from shapely.geometry import box as shapely_box

from rooftrace.cli import main
from tests.conftest import REPO, write_tiny_model

SQUARE = [10, 10, 40, 10, 40, 40, 10, 40]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """A tiny three-channel baseline U-Net with random weights, as rooftrace writes model files."""
    return write_tiny_model(tmp_path_factory.mktemp("model") / "tiny.safetensors", base_channels=4)


# --- builders of bad input -------------------------------------------------------------------------


def _png(path: Path, shape=(64, 64, 3), dtype=np.uint8, mode: str | None = None) -> Path:
    rng = np.random.default_rng(0)
    arr = (rng.random(shape) * (255 if dtype == np.uint8 else 60000)).astype(dtype)
    Image.fromarray(arr, mode=mode).save(path) if mode else Image.fromarray(arr).save(path)
    return path


def _tif(path: Path, bands: int, dtype="uint8", crs="EPSG:32614", size=64) -> Path:
    rng = np.random.default_rng(0)
    data = (rng.random((bands, size, size)) * (250 if dtype == "uint8" else 4000)).astype(dtype)
    kw = dict(driver="GTiff", width=size, height=size, count=bands, dtype=dtype, transform=from_origin(500000, 3000000, 0.3, 0.3))
    if crs:
        kw["crs"] = crs
    with rasterio.open(path, "w", **kw) as dst:
        dst.write(data)
    return path


def _images(tmp: Path, *bad: tuple[str, Callable[[Path], object]]) -> Path:
    """A folder with one good tile and the given bad ones."""
    d = tmp / "images"
    d.mkdir()
    _png(d / "1.png")
    for name, make in bad:
        make(d / name)
    return d


def _coco(tmp: Path, annotations: list, images: list | None = None, with_files: bool = False, raw: str | None = None) -> Path:
    d = tmp / "split"
    (d / "image").mkdir(parents=True)
    images = images if images is not None else [{"id": 1, "file_name": "image/1.png", "width": 64, "height": 64}]
    if with_files:
        for rec in images:
            _png(d / rec["file_name"])
    path = d / "split.json"
    path.write_text(raw if raw is not None else json.dumps({"images": images, "annotations": annotations}))
    return path


def _ann(seg, id_=1, image_id=1) -> dict:
    return {"id": id_, "image_id": image_id, "segmentation": seg}


def _csv(tmp: Path, text: str) -> Path:
    path = tmp / "sub.csv"
    path.write_text(text)
    return path


# --- the cases ---------------------------------------------------------------------------------------


@dataclass
class Case:
    id: str
    what: str  #: the bad input, as TESTING.md says it
    setup: Callable[[Path, Path], list[str]]  #: (tmp, model) -> argv
    code: int
    says: tuple[str, ...]  #: substrings the output must hold (file name, problem)
    around: Callable[[], Any] | None = None  #: a context manager the command runs in (a file size limit)
    check: Callable[[Path], None] | None = None  #: what must hold afterwards (tmp -> asserts)


def _predict(images: Path, tmp: Path, model: Path, *extra: str) -> list[str]:
    return ["predict", "--images", str(images), "--out", str(tmp / "out"), "--model", str(model), "--workers", "0",
            "--no-overlays", *extra]


CASES = [
    # Images, through `rooftrace predict` (one good tile beside each bad one).
    Case("zero-byte-image", "a zero-byte .png among the tiles",
         lambda t, m: _predict(_images(t, ("2.png", lambda p: p.write_bytes(b""))), t, m),
         1, ("2.png", "empty", "skipped")),
    Case("truncated-png", "a .png cut off halfway",
         lambda t, m: _predict(_images(t, ("2.png", lambda p: p.write_bytes(_png(p).read_bytes()[:300]))), t, m),
         1, ("2.png", "truncated or corrupt", "skipped")),
    Case("truncated-jpeg", "a .jpg cut off halfway",
         lambda t, m: _predict(_images(t, ("2.jpg", lambda p: (Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(p, quality=90),
                                                                 p.write_bytes(p.read_bytes()[:200])))), t, m),
         1, ("2.jpg", "skipped")),
    Case("not-an-image", "a text file named .tif",
         lambda t, m: _predict(_images(t, ("2.tif", lambda p: p.write_text("hello"))), t, m),
         1, ("2.tif", "skipped")),
    Case("many-band-image", "a 5-band GeoTIFF among the tiles",
         lambda t, m: _predict(_images(t, ("2.tif", lambda p: _tif(p, 5))), t, m),
         1, ("2.tif", "5 bands", "skipped")),
    Case("grayscale-image", "a one-band (grayscale) .png: read as gray RGB",
         lambda t, m: _predict(_images(t, ("2.png", lambda p: _png(p, (64, 64)))), t, m), 0, ("2 of 2 tiles",)),
    Case("rgba-image", "an RGBA .png: the alpha band is dropped",
         lambda t, m: _predict(_images(t, ("2.png", lambda p: _png(p, (64, 64, 4), mode="RGBA"))), t, m), 0, ("2 of 2 tiles",)),
    Case("16-bit-image", "a 16-bit 3-band GeoTIFF: stretched to 8 bits (2-98 percentiles)",
         lambda t, m: _predict(_images(t, ("2.tif", lambda p: _tif(p, 3, "uint16"))), t, m), 0, ("2 of 2 tiles",)),
    Case("strict-stops", "a zero-byte tile with --strict",
         lambda t, m: _predict(_images(t, ("2.png", lambda p: p.write_bytes(b""))), t, m, "--strict"),
         2, ("2.png", "--strict")),
    Case("empty-folder", "an image folder with no images",
         lambda t, m: _predict((t / "none").mkdir() or t / "none", t, m), 2, ("none", "no image files")),
    Case("missing-folder", "an image folder that does not exist",
         lambda t, m: _predict(t / "nowhere", t, m), 2, ("nowhere",)),
    Case("output-not-writable", "--out inside a regular file (cannot be created)",
         lambda t, m: ["predict", "--images", str(_images(t)), "--out", str(_file(t / "afile") / "out"), "--model", str(m),
                       "--workers", "0"], 2, ("afile",)),
    Case("output-exists", "--out that already holds files, without --force",
         lambda t, m: ["predict", "--images", str(_images(t)), "--out", str(_file(t / "full" / "x.txt").parent), "--model", str(m)],
         2, ("full", "--force")),
    # Model files.
    Case("pickle-model", "a pickle checkpoint (.pth) as --model",
         lambda t, m: _predict(_images(t), t, _file(t / "m.pth", PICKLE)), 2, ("m.pth", "pickle", "import-weights")),
    Case("hash-mismatch", "a model whose bytes differ from the SHA-256 recorded beside it",
         lambda t, m: _predict(_images(t), t, _tamper(m, t)), 2, ("tampered.safetensors", "SHA-256")),
    Case("not-safetensors", "a model file that is not safetensors",
         lambda t, m: _predict(_images(t), t, _file(t / "junk.safetensors", b"\x00" * 64)), 2, ("junk.safetensors", "safetensors")),
    Case("pickle-refused", "import-weights of a .pth without --trust-pickle",
         lambda t, m: ["import-weights", str(_file(t / "c.pth")), "--config", str(REPO / "configs/unet-r18.yaml"),
                       "--out", str(t / "o.safetensors")], 2, ("c.pth", "--trust-pickle")),
    Case("malicious-pickle", "import-weights --trust-pickle of a pickle that would run a command",
         lambda t, m: ["import-weights", str(_evil(t)), "--config", str(REPO / "configs/unet-r18.yaml"),
                       "--out", str(t / "o.safetensors"), "--trust-pickle"], 2, ("evil.pth", "weights_only", "nothing in it was run")),
    # COCO ground truth, through `rooftrace convert` (labels only) and `rooftrace prepare` (with images).
    Case("coco-not-json", "a COCO file that is not JSON",
         lambda t, m: _convert(_coco(t, [], raw='{"images": [}'), t), 2, ("split.json", "line 1")),
    Case("coco-no-images-key", "a COCO file without 'images'",
         lambda t, m: _convert(_coco(t, [], raw='{"annotations": []}'), t), 2, ("split.json", "neither COCO")),
    Case("coco-annotation-missing-keys", "an annotation without image_id",
         lambda t, m: _convert(_coco(t, [{"id": 7, "segmentation": [SQUARE]}, _ann([SQUARE], 8)]), t), 1,
         ("annotations[0]", "no 'image_id'", "skipped")),
    Case("coco-rle", "an RLE segmentation: decoded and traced on pixel edges",
         lambda t, m: _convert(_coco(t, [_ann(_rle())]), t), 0, ("1 footprints",)),
    Case("coco-segmentation-string", "segmentation stored as a string that is not JSON",
         lambda t, m: _convert(_coco(t, [_ann("10,10,40,10,40,40"), _ann([SQUARE], 2)]), t), 1,
         ("annotations[0] (id 1)", "string", "dropped")),
    Case("coco-segmentation-json-string", "segmentation stored as a JSON string of rings: parsed",
         lambda t, m: _convert(_coco(t, [_ann(json.dumps([SQUARE]))]), t), 0, ("1 footprints",)),
    Case("coco-nan", "NaN coordinates",
         lambda t, m: _convert(_coco(t, [_ann([[10, 10, math.nan, 10, 40, 40, 10, 40]]), _ann([SQUARE], 2)]), t), 1,
         ("annotations[0] (id 1)", "NaN")),
    Case("coco-negative", "negative coordinates (reaching outside the image): clipped to the image",
         lambda t, m: _convert(_coco(t, [_ann([[-10, -10, 20, -10, 20, 20, -10, 20]])]), t), 0,
         ("annotations[0] (id 1)", "outside the 64 x 64 image", "clipped")),
    Case("coco-outside", "a polygon wholly outside its image",
         lambda t, m: _convert(_coco(t, [_ann([[100, 100, 120, 100, 120, 120]]), _ann([SQUARE], 2)]), t), 1,
         ("annotations[0] (id 1)", "wholly outside")),
    Case("coco-short-ring", "a ring of 2 points",
         lambda t, m: _convert(_coco(t, [_ann([[10, 10, 20, 20]]), _ann([SQUARE], 2)]), t), 1,
         ("annotations[0] (id 1)", "fewer than 3 points")),
    Case("coco-odd-coordinates", "a ring with an odd number of numbers",
         lambda t, m: _convert(_coco(t, [_ann([[10, 10, 20, 20, 30]]), _ann([SQUARE], 2)]), t), 1,
         ("annotations[0] (id 1)", "odd number")),
    Case("coco-self-intersection", "a self-intersecting (bow-tie) ring: repaired",
         lambda t, m: _convert(_coco(t, [_ann([[10, 10, 40, 40, 40, 10, 10, 40]])]), t), 0,
         ("annotations[0] (id 1)", "repaired")),
    Case("coco-duplicate-annotation-id", "two annotations with the same id: both kept, reported",
         lambda t, m: _convert(_coco(t, [_ann([SQUARE], 5), _ann([[50, 50, 60, 50, 60, 60, 50, 60]], 5)]), t), 0,
         ("annotations[1] (id 5)", "duplicate annotation id")),
    Case("coco-duplicate-image-id", "two image records with the same id",
         lambda t, m: _convert(_coco(t, [_ann([SQUARE])], images=[{"id": 1, "file_name": "image/1.png", "width": 64, "height": 64},
                                                                   {"id": 1, "file_name": "image/2.png", "width": 64, "height": 64}]), t), 1,
         ("images[1]", "duplicate image id")),
    Case("coco-unknown-image-id", "an annotation whose image_id is not in images",
         lambda t, m: _convert(_coco(t, [_ann([SQUARE], 1, 99), _ann([SQUARE], 2)]), t), 1,
         ("annotations[0] (id 1)", "unknown image_id 99")),
    Case("coco-size-mismatch", "an image record whose size disagrees with its file (prepare)",
         lambda t, m: _prepare(_coco(t, [_ann([SQUARE])], images=[{"id": 1, "file_name": "image/1.png", "width": 512, "height": 512}],
                                     with_files=True), t), 0, ("images[0]", "record says 512 x 512", "64 x 64")),
    Case("coco-missing-image-file", "an image record whose file is missing (prepare)",
         lambda t, m: _prepare(_coco_one_missing(t), t), 1, ("2.png", "missing", "skipped")),
    # Submission CSVs, through `rooftrace evaluate` against a small ground truth.
    Case("csv-malformed-coordinates", "a row whose Coordinates is not a list of rings",
         lambda t, m: _evaluate(t, 'ImageID,Coordinates\n1,"[[(10,10),(40,10),(40,40)"\n'), 1,
         ("sub.csv", "line 2 (ImageID 1)", "skipped")),
    Case("csv-code-in-coordinates", "Coordinates holding Python code (never evaluated)",
         lambda t, m: _evaluate(t, "ImageID,Coordinates\n1,\"__import__('os').system('touch PWNED')\"\n"), 1,
         ("sub.csv", "line 2", "skipped")),
    Case("csv-missing-image-id", "a row with an empty ImageID",
         lambda t, m: _evaluate(t, 'ImageID,Coordinates\n,"[[(10,10),(40,10),(40,40),(10,40)]]"\n'), 1,
         ("sub.csv", "line 2", "empty ImageID")),
    Case("csv-image-without-row", "a ground-truth image with no row in the submission: scored as all missed",
         lambda t, m: _evaluate(t, "ImageID,Coordinates\n2,[]\n", two_images=True), 0,
         ("1 ground-truth image(s) have no predictions (no row): 1",)),
    Case("csv-duplicate-image-id", "the same ImageID on two rows: merged, reported",
         lambda t, m: _evaluate(t, 'ImageID,Coordinates\n1,"[[(10,10),(40,10),(40,40),(10,40)]]"\n1,[]\n'), 0,
         ("sub.csv", "line 3", "appears again")),
    Case("csv-extra-columns", "extra columns: ignored, reported",
         lambda t, m: _evaluate(t, 'ImageID,Coordinates,Score\n1,"[[(10,10),(40,10),(40,40),(10,40)]]",0.9\n'), 0,
         ("sub.csv", "extra columns", "Score")),
    Case("csv-wrong-header", "a CSV whose header is neither BEGC2024 nor SpaceNet",
         lambda t, m: _evaluate(t, "Image,Coords\n1,[]\n"), 2, ("sub.csv", "header")),
    Case("csv-short-row", "a row with too few fields",
         lambda t, m: _evaluate(t, "ImageID,Coordinates\n1\n"), 1, ("sub.csv", "line 2", "fields")),
    Case("csv-empty", "an empty file",
         lambda t, m: _evaluate(t, ""), 2, ("sub.csv", "empty")),
    # Georeferenced input.
    Case("geojson-other-crs", "GeoJSON labels in EPSG:4326 for a UTM GeoTIFF: reprojected, reported",
         lambda t, m: _geo_eval(t), 0, ("EPSG:4326", "reprojected")),
    Case("geotiff-no-crs", "a GeoTIFF scene without a CRS (predict-scene)",
         lambda t, m: ["predict-scene", str(_tif(t / "nocrs.tif", 3, crs=None, size=96)), "--out", str(t / "o.gpkg"),
                       "--model", str(m), "--device", "cpu"], 0, ("nocrs.tif", "no CRS")),
    Case("scene-many-bands", "a 5-band scene without --bands (predict-scene)",
         lambda t, m: ["predict-scene", str(_tif(t / "five.tif", 5, size=96)), "--out", str(t / "o.gpkg"), "--model", str(m)],
         2, ("five.tif", "5 bands", "--bands")),
    Case("scenes-one-bad", "a folder of scenes, one of them 5-band (predict-scene, folder mode)",
         lambda t, m: ["predict-scene", str(_scenes(t)), "--out", str(t / "gpkgs"), "--model", str(m)], 1,
         ("five.tif", "5 bands", "failed")),
    Case("scenes-one-bad-strict", "the same with --strict",
         lambda t, m: ["predict-scene", str(_scenes(t)), "--out", str(t / "gpkgs"), "--model", str(m), "--strict"], 2,
         ("five.tif", "5 bands")),
    # Second round (issue 16): failures that were silent, tracebacks or misleading.
    Case("coco-scribble", "a ring scribbled through 20,000 random points (its repair would take minutes and gigabytes)",
         lambda t, m: _convert(_coco(t, [_ann([_scribble(20_000)]), _ann([SQUARE], 2)]), t), 1,
         ("annotations[0] (id 1)", "more than 500 self-intersections", "too tangled")),
    Case("geojson-point", "a GeoJSON Point among the footprints",
         lambda t, m: _convert(_geojson(t, {"type": "Point", "coordinates": [85.5, 27.6]}, _LL_SQUARE), t), 1,
         ("feature 0", "a Point, not a polygon")),
    Case("geojson-unclosed-ring", "a GeoJSON ring whose last point is not its first: closed, reported",
         lambda t, m: _convert(_geojson(t, {"type": "Polygon", "coordinates": [_LL_SQUARE["coordinates"][0][:-1]]}), t), 0,
         ("feature 0", "not closed", "closed")),
    Case("geojson-utm-no-crs", "GeoJSON in UTM metres without a `crs` member (convert)",
         lambda t, m: _convert(_geojson(t, _UTM_SQUARE), t), 2,
         ("labels.geojson", "not longitude/latitude degrees", "RFC 7946", "--labels-crs")),
    Case("geojson-utm-labels-crs", "the same with --labels-crs EPSG:32614: read in that CRS",
         lambda t, m: _convert(_geojson(t, _UTM_SQUARE), t) + ["--labels-crs", "EPSG:32614"], 0, ("1 footprints",)),
    Case("geojson-utm-no-crs-evaluate", "GeoJSON ground truth in UTM metres without a `crs` member (evaluate)",
         lambda t, m: ["evaluate", "--gt", str(_geojson(t, _UTM_SQUARE)), "--pred", str(t / "labels.geojson"), "--no-pixel"], 2,
         ("labels.geojson", "not longitude/latitude degrees", "--gt-crs")),
    Case("model-meta-not-json", "a model file whose rooftrace metadata is not JSON",
         lambda t, m: _predict(_images(t), t, _model(t, m, raw_meta="{not json")), 2, ("bad.safetensors", "metadata is not JSON")),
    Case("model-nan-weights", "a model file with NaN weights",
         lambda t, m: _predict(_images(t), t, _model(t, m, nan=True)), 2, ("bad.safetensors", "NaN or infinite")),
    Case("model-zero-std", "a model file whose normalisation std is 0",
         lambda t, m: _predict(_images(t), t, _model(t, m, meta={"std": [0.0, 0.224, 0.225]})), 2,
         ("bad.safetensors", "std", "greater than 0")),
    Case("model-newer-format", "a model file of format_version 99 (a newer rooftrace's)",
         lambda t, m: _predict(_images(t), t, _model(t, m, meta={"format_version": 99})), 2,
         ("bad.safetensors", "format version 99", "newer rooftrace")),
    Case("model-unknown-arch", "a model file naming an architecture rooftrace does not know",
         lambda t, m: _predict(_images(t), t, _model(t, m, arch="transformer9000")), 2, ("bad.safetensors", "transformer9000")),
    Case("safetensors-named-pth", "a model file (safetensors) named .pth: read by its content",
         lambda t, m: _predict(_images(t), t, _file(t / "model.pth", m.read_bytes())), 0, ("1 of 1 tiles",)),
    Case("pickle-named-safetensors", "a pickle named .safetensors: called a pickle, by its content",
         lambda t, m: _predict(_images(t), t, _file(t / "p.safetensors", PICKLE)), 2,
         ("p.safetensors", "a pickle checkpoint, though its name ends in .safetensors")),
    Case("import-safetensors-named-pth", "import-weights of a safetensors file named .pth: read as safetensors, no --trust-pickle needed",
         lambda t, m: ["import-weights", str(_file(t / "w.pth", m.read_bytes())), "--config", str(REPO / "configs/baseline-unet.yaml"),
                       "--set", "model.base_channels=4", "--set", "data.channels=[footprint, boundary, contact]",
                       "--set", "loss.channel_weights=[1, 0.5, 0.5]", "--out", str(t / "o.safetensors")], 0, ("imported", "w.pth")),
    Case("device-gpu", "--device gpu (predict)",
         lambda t, m: _predict(_images(t), t, m, "--device", "gpu"), 2, ("--device gpu", "not a device", "cuda")),
    Case("scene-device-gpu", "--device gpu (predict-scene)",
         lambda t, m: ["predict-scene", str(_tif(t / "s.tif", 3, size=96)), "--out", str(t / "o.gpkg"), "--model", str(m),
                       "--device", "gpu"], 2, ("--device gpu", "not a device")),
    Case("workers-negative", "--workers -1 (predict)",
         lambda t, m: _predict(_images(t), t, m)[:-3] + ["--workers", "-1", "--no-overlays"], 2, ("--workers -1", "0")),
    Case("duplicate-stem", "tiles 7.tif and 7.png (one ImageID)",
         lambda t, m: _predict(_images(t, ("7.png", _png), ("7.tif", lambda p: _tif(p, 3))), t, m), 2,
         ("7.png and 7.tif", "ImageID 7")),
    Case("scenes-empty-output", "a folder of scenes whose output is there but 0 bytes: predicted again, not counted as done",
         lambda t, m: ["predict-scene", str(_scenes(t, bad=False)), "--out", str(_file(t / "gpkgs" / "good.gpkg", b"").parent),
                       "--model", str(m)], 0, ("1 scene(s) predicted, 0 already done",)),
    Case("scene-output-not-writable", "predict-scene --out inside a regular file: refused before the model is loaded",
         lambda t, m: ["predict-scene", str(_scenes(t, bad=False) / "good.tif"), "--out", str(_file(t / "afile", b"x") / "out.gpkg"),
                       "--model", str(m)], 2, ("afile/out.gpkg", "cannot write it", "nothing was predicted")),
    Case("scenes-output-not-writable", "the same for a folder of scenes: refused once, before any scene",
         lambda t, m: ["predict-scene", str(_scenes(t, bad=False)), "--out", str(_file(t / "afile", b"x") / "gpkgs"),
                       "--model", str(m)], 2, ("afile/gpkgs", "cannot write it (Not a directory)", "nothing was predicted")),
    Case("train-device-gpu", "train.device=gpu",
         lambda t, m: _train("train.device=gpu"), 2, ("train.device gpu", "not a device")),
    Case("config-crop-zero", "data.crop_size=0",
         lambda t, m: _train("data.crop_size=0"), 2, ("baseline-unet.yaml", "data.crop_size 0", "multiple of 32")),
    Case("config-lr-negative", "optim.lr=-1",
         lambda t, m: _train("optim.lr=-1"), 2, ("optim.lr -1", "greater than 0")),
    Case("config-lr-nan", "optim.lr=NaN",
         lambda t, m: _train("optim.lr=.nan"), 2, ("optim.lr nan", "finite")),
    Case("config-workers-negative", "data.workers=-2",
         lambda t, m: _train("data.workers=-2"), 2, ("data.workers -2", "0 or more")),
    Case("config-steps-negative", "train.steps_per_epoch=-1",
         lambda t, m: _train("train.steps_per_epoch=-1"), 2, ("train.steps_per_epoch -1", "0 or more")),
    Case("train-corrupt-tile", "a training tile (.png) cut off halfway: left out, named, the run goes on",
         lambda t, m: _train(*_tiny_run(t)), 1, ("train/image/2.png", "truncated or corrupt", "left out", "skipped")),
    Case("train-corrupt-tile-no-cache", "the same with data.cache=false (tiles read in DataLoader workers)",
         lambda t, m: _train(*_tiny_run(t), "data.cache=false", "data.workers=1"), 1,
         ("train/image/2.png", "truncated or corrupt", "left out", "skipped")),
    Case("train-corrupt-tile-strict", "the same with --strict",
         lambda t, m: [*_train(*_tiny_run(t)), "--strict"], 2, ("train/image/2.png", "truncated or corrupt", "--strict")),
    # Third round (issue 16): the model runtime, output formats, pixel sizes, the scene report.
    Case("onnx-empty", "an empty (0-byte) .onnx model",
         lambda t, m: _predict(_images(t), t, _file(t / "e.onnx", b"")), 2, ("e.onnx", "empty (0 bytes)")),
    Case("onnx-truncated", "an exported .onnx cut off halfway",
         lambda t, m: _predict(_images(t), t, _onnx(t, m, truncate=True)), 2, ("m.onnx", "not a readable ONNX file")),
    Case("onnx-foreign", "an .onnx that rooftrace did not export (no rooftrace metadata)",
         lambda t, m: _predict(_images(t), t, _foreign_onnx(t)), 2, ("foreign.onnx", "no rooftrace metadata", "rooftrace export")),
    Case("onnx-two-output-channels", "an .onnx whose network gives 2 channels where its metadata names 3",
         lambda t, m: _predict(_images(t), t, _two_channel_onnx(t, m)), 2, ("two.onnx", "shape", "names 3 channels")),
    Case("onnx-zero-std", "an .onnx whose metadata's normalisation std is 0",
         lambda t, m: _predict(_images(t), t, _onnx(t, m, meta={"std": [0, 0, 0]})), 2, ("m.onnx", "std", "greater than 0")),
    Case("onnx-newer-format", "an .onnx of format_version 99",
         lambda t, m: _predict(_images(t), t, _onnx(t, m, meta={"format_version": 99})), 2, ("m.onnx", "format version 99")),
    Case("onnx-gsd-not-a-number", "an .onnx whose metadata gsd is the string 'abc'",
         lambda t, m: _predict(_images(t), t, _onnx(t, m, meta={"gsd": "abc"})), 2, ("m.onnx", "pixel size (gsd) of 'abc'")),
    Case("model-gsd-absurd", "a model file recording a pixel size of 1e-6 m",
         lambda t, m: _predict(_images(t), t, _model(t, m, meta={"gsd": 1e-6})), 2, ("bad.safetensors", "pixel size (gsd) of 1e-06")),
    Case("model-gsd-negative", "a model file recording a pixel size of -0.3 m",
         lambda t, m: _predict(_images(t), t, _model(t, m, meta={"gsd": -0.3})), 2, ("bad.safetensors", "pixel size (gsd) of -0.3")),
    Case("model-folder", "--model naming a folder",
         lambda t, m: _predict(_images(t), t, _folder(t / "models")), 2, ("models", "a folder, not a model file")),
    Case("model-empty-safetensors", "an empty (0-byte) .safetensors model",
         lambda t, m: _predict(_images(t), t, _file(t / "e.safetensors", b"")), 2, ("e.safetensors", "empty (0 bytes)")),
    Case("gsd-zero", "--gsd 0 (predict)",
         lambda t, m: _predict(_images(t), t, m, "--gsd", "0"), 2, ("--gsd 0", "greater than 0")),
    Case("scene-gsd-nan", "--gsd nan (predict-scene)",
         lambda t, m: _scene(t, m, t / "o.gpkg", "--gsd", "nan"), 2, ("--gsd nan", "greater than 0")),
    Case("gsd-far-from-model", "--gsd 1000 for a model trained at 0.3 m (would enlarge each tile 3,333x)",
         lambda t, m: _predict(_images(t), t, _model(t, m, meta={"gsd": 0.3}), "--gsd", "1000"), 2,
         ("--gsd 1000", "3.33e+03x the model's 0.3 m", "at most 32x")),
    Case("gsd-tiny-for-model", "--gsd 0.0001 for a model trained at 0.3 m (would shrink each tile to a pixel)",
         lambda t, m: _predict(_images(t), t, _model(t, m, meta={"gsd": 0.3}), "--gsd", "0.0001"), 2,
         ("--gsd 0.0001", "at most 32x")),
    Case("scene-degree-pixels", "a scene in EPSG:4326 whose transform says 1-degree pixels (a bogus georeference)",
         lambda t, m: ["predict-scene", str(_degree_tif(t / "deg.tif")), "--out", str(t / "o.gpkg"),
                       "--model", str(_model(t, m, meta={"gsd": 0.3}))], 2, ("deg.tif", "at most 32x", "georeference")),
    Case("tile-degree-pixels", "the same as a tile among good ones (predict)",
         lambda t, m: _predict(_images(t, ("2.tif", _degree_tif)), t, _model(t, m, meta={"gsd": 0.3})), 1,
         ("2.tif", "at most 32x", "skipped")),
    Case("scene-out-shp", "predict-scene --out x.shp",
         lambda t, m: _scene(t, m, t / "x.shp"), 2, ("x.shp", "unknown output format '.shp'", ".gpkg")),
    Case("scene-out-missing-folder", "predict-scene --out inside a folder that does not exist yet: created",
         lambda t, m: _scene(t, m, t / "new" / "o.gpkg"), 0, ("written to", "new/o.gpkg")),
    Case("scene-parquet-no-crs", "a scene without a CRS to .parquet: written, CRS left unknown, said",
         lambda t, m: _scene(t, m, t / "o.parquet", crs=None), 0, ("s.tif", "no CRS", "o.parquet")),
    Case("scene-geojson-local-crs", "a scene in a local (engineering) CRS to .geojson",
         lambda t, m: _scene(t, m, t / "o.geojson", crs=_LOCAL_CRS), 2,
         ("o.geojson", "cannot be brought to longitude/latitude", "local or engineering CRS", ".gpkg")),
    Case("scene-unicode-path", "a scene and an output with spaces and accents in their paths",
         lambda t, m: ["predict-scene", str(_tif(t / "scène é.tif", 3, size=96)), "--out", str(t / "sortie é" / "ö.gpkg"),
                       "--model", str(m)], 0, ("sortie é/ö.gpkg",)),
    Case("symlinked-tile", "a tile that is a symlink to an image elsewhere: read through it",
         lambda t, m: _predict(_images(t, ("2.png", lambda p: p.symlink_to(_png(t / "elsewhere.png")))), t, m), 0, ("2 of 2 tiles",)),
    Case("dangling-symlink-tile", "a tile that is a symlink to nothing",
         lambda t, m: _predict(_images(t, ("2.png", lambda p: p.symlink_to(t / "gone.png"))), t, m), 1,
         ("2.png", "no such file", "skipped")),
    Case("config-empty", "an empty config file",
         lambda t, m: ["train", "--config", str(_file(t / "e.yaml", b""))], 2, ("e.yaml", "empty")),
    Case("config-list", "a config file that is a YAML list",
         lambda t, m: ["train", "--config", str(_file(t / "l.yaml", b"- a\n- b\n"))], 2, ("l.yaml", "mapping of sections", "list")),
    Case("tune-no-labels", "tune on a split whose labels hold no buildings (would save settings that find nothing)",
         lambda t, m: ["tune", "--model", str(_file(t / "mm.safetensors", m.read_bytes())), "--split",
                       str(_coco(t, [], with_files=True).parent)], 2, ("split", "no buildings", "F1 1.0")),
    Case("report-labels-elsewhere", "scene report labels that all lie outside the raster",
         lambda t, m: _report(t, gt=_vector(t / "far.gpkg", (600000, 3100000))), 2, ("far.gpkg", "none of its 1 labels", "--labels-crs")),
    Case("report-raster-png", "scene report --raster pointing at a PNG (not georeferenced)",
         lambda t, m: _report(t, raster=_png(t / "x.png")), 2, ("pred.gpkg", "none of its 1 buildings", "x.png", "not georeferenced")),
    Case("report-other-scene", "scene report of one scene's buildings on another scene's raster",
         lambda t, m: _report(t, raster=_tif(t / "other.tif", 3, crs="EPSG:32633", size=96)), 2,
         ("pred.gpkg", "none of its 1 buildings", "other.tif")),
    Case("report-raster-no-crs", "scene report --raster without a CRS: coordinates taken as the raster's, said",
         lambda t, m: _report(t, raster=_tif(t / "nocrs.tif", 3, crs=None, size=96)), 0, ("pred.gpkg", "no CRS", "taken to be")),
    Case("report-empty-labels", "scene report labels file with zero features: scored, said",
         lambda t, m: _report(t, gt=_vector(t / "empty.gpkg", None)), 0, ("empty.gpkg", "holds no labels")),
    Case("report-empty-predictions", "scene report of a prediction file with zero features",
         lambda t, m: _report(t, pred=_vector(t / "none.gpkg", None)), 0, ("scene report of 0 buildings",)),
    Case("train-real-divergence", "a run that really diverges in epoch 2 (optim.lr=1e6, no clipping, 1 step an epoch)",
         lambda t, m: _train(*_tiny_run(t, corrupt=False), *_DIVERGE), 2,
         ("training diverged at epoch 2", "last.safetensors (epoch 1), is kept", "optim.lr")),
    # Fourth round (issue 23): runs that would destroy each other, outputs over inputs, paths, sizes, layers.
    Case("predict-out-in-use", "predict into an --out another live run is writing (its lock held)",
         lambda t, m: _predict(_images(t), t, _held(t / "out", folder=True) and m, "--force"), 2,
         ("out", "in use by another rooftrace run", "process")),
    Case("scene-out-in-use", "predict-scene to a file another live run is writing: its temporary probabilities are left alone",
         lambda t, m: _scene(t, m, _busy_scene_out(t), "--force"), 2, ("busy.gpkg", "in use by another rooftrace run"),
         check=lambda t: _assert(( t / ".busy.gpkg.probs.tif").read_bytes() == b"first run")),
    Case("scenes-one-in-use", "a folder of scenes, one held by another live run: skipped, the others done",
         lambda t, m: ["predict-scene", str(_two_scenes(t)), "--out", str(_held_scene_out(t)), "--model", str(m),
                       "--device", "cpu"], 0, ("1 scene(s) predicted", "being predicted by another run", "other.tif")),
    Case("scene-probabilities-is-out", "predict-scene --out same.gpkg --probabilities same.gpkg",
         lambda t, m: _scene(t, m, t / "same.gpkg", "--probabilities", str(t / "same.gpkg")), 2,
         ("same.gpkg", "given as both --out and --probabilities")),
    Case("scene-probabilities-is-input", "predict-scene --probabilities naming the input scene, with --force",
         lambda t, m: _scene(t, m, t / "o.gpkg", "--probabilities", str(t / "s.tif"), "--force"), 2,
         ("s.tif", "--probabilities is also the scene"),
         check=lambda t: _assert(rasterio.open(t / "s.tif").count == 3)),
    Case("convert-onto-itself", "convert SRC SRC --force (the input as the output)",
         lambda t, m: ["convert", str(_coco(t, [_ann([SQUARE])])), str(t / "split" / "split.json"), "--to", "coco", "--force"], 2,
         ("split.json", "DST is also the SRC")),
    Case("coco-path-escapes", "a COCO file_name of ../x/escape.png (outside the split) in prepare",
         lambda t, m: _prepare(_coco_outside(t, "../x/escape.png"), t), 1,
         ("images[1]", "../x/escape.png", "outside the split folder", "--allow-outside-paths")),
    Case("coco-path-absolute", "a COCO file_name that is an absolute path, in prepare",
         lambda t, m: _prepare(_coco_outside(t, str(t / "x" / "abs.png")), t), 1,
         ("images[1]", "abs.png", "outside the split folder")),
    Case("coco-path-allowed", "the same with --allow-outside-paths: read",
         lambda t, m: _prepare(_coco_outside(t, "../x/escape.png"), t) + ["--allow-outside-paths"], 0,
         ("2 images",)),
    Case("csv-id-not-a-name", "a CSV ImageID of ../../x converted to COCO (its file_name would climb out)",
         lambda t, m: ["convert", str(_csv(t, 'ImageID,Coordinates\n../../x,"[[(10,10),(40,10),(40,40),(10,40)]]"\n')),
                       str(t / "out.json"), "--to", "coco"], 0, ("line 2", "'../../x'", "not a plain name")),
    Case("sparse-huge-tile", "a 300 KB sparse GeoTIFF declaring 100,000 x 100,000 px among the tiles (predict)",
         lambda t, m: _predict(_images(t, ("2.tif", _sparse)), t, m), 1,
         ("2.tif", "would need", "GiB of memory", "skipped"), check=lambda t: _assert((t / "out" / "masks" / "1.png").exists())),
    Case("sparse-huge-prepare", "the same as a training tile (prepare)",
         lambda t, m: _prepare(_coco_sparse(t), t), 1, ("2.tif", "would need", "skipped")),
    Case("sparse-huge-gt-raster", "evaluate --gt-raster of a sparse 60,000 x 60,000 px scene, pixel metrics on",
         lambda t, m: _geo_eval(t, size=60_000)[:-1], 0, ("pixel IoU 1.0000",)),
    Case("chip-zoom-0", "a chip named OAM-0-0-0.png with --gsd 0.3 (the whole world in 256 px)",
         lambda t, m: _chips(t, 0, 0, 0, "--gsd", "0.3"), 2, ("OAM-0-0-0.png", "would need", "PiB of memory")),
    Case("chip-misnamed-64x", "a chip named at zoom 13 (19 m pixels) with --gsd 0.3: enlarged 64x",
         lambda t, m: _chips(t, 4096, 4096, 13, "--gsd", "0.3"), 2, ("OAM-4096-4096-13.png", "enlarged 63.7x", "at most 32x")),
    Case("chip-enlarged-8x", "a chip at zoom 16 (2.4 m pixels) with --gsd 0.3: enlarged 8x, noted",
         lambda t, m: _chips(t, 32768, 32768, 16, "--gsd", "0.3"), 0, ("enlarged more than 4x", "OAM-32768-32768-16.png")),
    Case("chips-aoi-elsewhere", "prepare-chips --aoi of an area that overlaps no chip",
         lambda t, m: _chips(t, 262144, 262144, 19, "--aoi", str(_aoi(t, _square_ll(50.0, 10.0)))), 2,
         ("aoi.geojson", "overlaps none of the 1 chips")),
    Case("gpkg-two-layers", "evaluate --gt of a GeoPackage with two layers",
         lambda t, m: _geo_eval(t, two_layers=True), 2, ("gt.gpkg", "holds 2 layers", "'buildings', 'roads'", "--layer")),
    Case("gpkg-two-layers-chosen", "the same with --layer buildings",
         lambda t, m: _geo_eval(t, two_layers=True) + ["--layer", "buildings"], 0, ("object F1", "1.0000")),
    Case("gpkg-two-layers-chips", "prepare-chips --labels of a GeoPackage with two layers",
         lambda t, m: _chips(t, 262144, 262144, 19, labels="gpkg"), 2, ("labels.gpkg", "holds 2 layers")),
    Case("gpkg-layer-missing", "--layer naming a layer the file does not have",
         lambda t, m: _geo_eval(t, two_layers=True) + ["--layer", "houses"], 2, ("gt.gpkg", "no layer 'houses'", "'roads'")),
    *[Case(f"scenes-half-written-{fmt}", f"a folder of scenes whose .{fmt} output was cut short: predicted again",
           lambda t, m, fmt=fmt: _scenes_cut(t, m, fmt), 0, ("1 scene(s) predicted", "0 already done"))
      for fmt in ("gpkg", "fgb", "parquet", "geojson")],
    Case("scenes-foreign-gpkg", "a folder of scenes whose .gpkg output is another program's file (no provenance)",
         lambda t, m: _scenes_cut(t, m, "gpkg", foreign=True), 0, ("1 scene(s) predicted", "0 already done")),
    Case("model-channels-garbage", "a model file whose metadata names channels ['a', 'b', 'c']",
         lambda t, m: _predict(_images(t), t, _model(t, m, meta={"channels": ["a", "b", "c"]})), 2,
         ("bad.safetensors", "output channels", "'footprint'")),
    Case("model-meta-deep", "a model file whose metadata nests 100,000 lists deep",
         lambda t, m: _predict(_images(t), t, _model(t, m, raw_meta="[" * 100_000 + "]" * 100_000)), 2,
         ("bad.safetensors", "nests 100000 levels deep")),
    Case("onnx-meta-deep", "an .onnx whose metadata nests 100,000 lists deep",
         lambda t, m: _predict(_images(t), t, _foreign_onnx(t, meta={"rooftrace": "[" * 100_000 + "]" * 100_000})), 2,
         ("foreign.onnx", "nests 100000 levels deep")),
    Case("model-norm-overflow", "a model file with normalisation mean 1e308, std 1e-308 (finite, but overflows)",
         lambda t, m: _predict(_images(t), t, _model(t, m, meta={"mean": [1e308] * 3, "std": [1e-308] * 3})), 2,
         ("bad.safetensors", "normalisation mean", "not be a finite number")),
    Case("device-mps", "--device mps on a PyTorch without Apple's Metal",
         lambda t, m: _predict(_images(t), t, m, "--device", "mps"), 2, ("--device mps", "not available")),
    *[Case(f"scene-disk-full-{fmt}", f"predict-scene to .{fmt} when the disk fills (file size limit of {limit:,} bytes)",
           lambda t, m, fmt=fmt: _scene(t, m, t / "o" / f"out.{fmt}"), 2, (f"out.{fmt}", "cannot write it"),
           around=lambda limit=limit: _file_size_limit(limit),
           check=lambda t: _assert(not list((t / "o").iterdir())))
      for fmt, limit in (("gpkg", 30_000), ("fgb", 30_000), ("parquet", 2_000), ("geojson", 1_000))],
    Case("export-not-writable", "export --onnx inside a regular file",
         lambda t, m: ["export", "--model", str(m), "--onnx", str(_file(t / "afile") / "m.onnx")], 2,
         ("afile/m.onnx", "cannot write it")),
    # Fifth round (issue 23): the stages added since the fourth (prepare-chips, scene reports, report, the API, Dask,
    # every output format, convert, export), each case tried by hand first; all but the last answered badly before.
    Case("scene-probabilities-not-tif", "predict-scene --probabilities p.gpkg (a GeoTIFF would be written under a GeoPackage's name)",
         lambda t, m: _scene(t, m, t / "o.gpkg", "--probabilities", str(t / "p.gpkg")), 2,
         ("p.gpkg", "must end in .tif", "nothing was predicted"), check=lambda t: _assert(not (t / "p.gpkg").exists())),
    Case("scene-out-is-folder", "predict-scene --out x.gpkg where x.gpkg is a folder, with --force (found after the inference before)",
         lambda t, m: _scene(t, m, _folder(t / "x.gpkg"), "--force"), 2, ("x.gpkg", "a folder, not a file", "nothing was predicted")),
    Case("predict-disk-full-gpkg", "predict's predictions.gpkg when the disk fills (file size limit of 20,000 bytes): says why, not SQL",
         lambda t, m: _predict(_images(t, ("2.tif", lambda p: _tif(p, 3))), t, m, "--no-masks"), 2,
         ("predictions.gpkg", "cannot write it", "file size limit"), around=lambda: _file_size_limit(20_000),
         check=lambda t: _assert(_temporaries(t / "out") == [".partial"])),
    Case("report-scene-parquet", "scene report of a .parquet that predict-scene wrote (GDAL here has no Parquet driver)",
         lambda t, m: _report(t, pred=_geoparquet(t / "pred.parquet", (500003, 2999990))), 0, ("scene report of 1 buildings",)),
    Case("report-out-is-pred", "report --out naming the --pred file, with --force",
         lambda t, m: _report(t)[:-2] + ["--out", str(t / "pred.gpkg"), "--force"], 2, ("pred.gpkg", "--out is also the --pred"),
         check=lambda t: _assert(t.joinpath("pred.gpkg").is_file())),
    Case("report-gt-in-out", "report --out holding the ground truth under a name the report writes (scores.json), with --force",
         lambda t, m: _tile_report(t, gt_name="rep/scores.json") + ["--force"], 2, ("scores.json", "--out scores.json is also the --gt"),
         check=lambda t: _assert("images" in json.loads((t / "rep" / "scores.json").read_text()))),
    Case("report-out-in-a-file", "report --out inside a regular file: refused before anything is read",
         lambda t, m: _report(t)[:-2] + ["--out", str(_file(t / "afile") / "report")], 2,
         ("afile/report", "cannot write it", "nothing was reported")),
    Case("report-out-in-use", "report into an --out another live report is writing (its lock held)",
         lambda t, m: _report(t)[:-2] + ["--out", str(_held(t / "report", folder=True)), "--force"], 2,
         ("report", "in use by another rooftrace run")),
    Case("report-iou-zero", "report --iou 0 with labels (a traceback before)",
         lambda t, m: _report(t, gt=_vector(t / "gt.gpkg", (500003, 2999990))) + ["--iou", "0"], 2, ("--iou 0", "(0, 1]"),
         check=lambda t: _assert(not (t / "report").exists())),
    Case("report-disk-full", "scene report when the disk fills (file size limit of 50,000 bytes) while copying the map's library",
         lambda t, m: _report(t), 2, ("report/leaflet/leaflet.js", "cannot write it"), around=lambda: _file_size_limit(50_000),
         check=lambda t: _assert(not _temporaries(t / "report"))),
    Case("tune-settings-in-use", "tune while another live tune of the same model writes its settings (its lock held)",
         lambda t, m: _tune(t, m, held=True), 2, ("mm.postprocess.json", "in use by another rooftrace run")),
    Case("tune-settings-folder", "tune --force where the settings file beside the model is a folder (found after the search before)",
         lambda t, m: _tune(t, m, folder=True) + ["--force"], 2, ("mm.postprocess.json", "a folder", "nothing was tuned")),
    Case("train-resume-in-use", "train --resume of a run folder another live run is writing (its lock held)",
         lambda t, m: ["train", "--resume", str(_held(_run_folder(t), folder=True))], 2,
         ("runs/r1", "in use by another rooftrace run", "run folder to resume")),
    Case("train-runs-dir-in-a-file", "train.runs_dir inside a regular file: refused before any data is read",
         lambda t, m: _train(*_tiny_run(t, corrupt=False), f"train.runs_dir={_file(t / 'afile')}/runs"), 2,
         ("afile", "cannot create the run folder", "nothing was trained")),
    Case("chips-out-inside-chips", "prepare-chips --out inside CHIPS_DIR (searched recursively: a rerun read its own chips again)",
         lambda t, m: _chips_out(t, t / "chips" / "splits"), 2, ("chips/splits", "inside CHIPS_DIR", "searched for chips recursively"),
         check=lambda t: _assert(not (t / "chips" / "splits").exists())),
    Case("chips-labels-parquet", "prepare-chips --labels of a GeoParquet file (GDAL here has no Parquet driver)",
         lambda t, m: _chips(t, 262144, 262144, 19, labels="parquet"), 0, ("1 chips",)),
    Case("convert-geojson-named-parquet", "convert --to geojson into out.parquet (GeoJSON text a GIS cannot open as Parquet)",
         lambda t, m: ["convert", str(_coco(t, [_ann([SQUARE])])), str(t / "out.parquet"), "--to", "geojson"], 2,
         ("out.parquet", "convert writes GeoJSON", "not .parquet"), check=lambda t: _assert(not (t / "out.parquet").exists())),
    Case("convert-to-gpkg", "convert into out.gpkg (it said: pass --to; no --to writes a GeoPackage)",
         lambda t, m: ["convert", str(_coco(t, [_ann([SQUARE])])), str(t / "out.gpkg")], 2, ("out.gpkg", "not .gpkg", "ogr2ogr")),
    Case("convert-geojson-named-csv", "convert --to geojson into out.csv",
         lambda t, m: ["convert", str(_coco(t, [_ann([SQUARE])])), str(t / "out.csv"), "--to", "geojson"], 2,
         ("out.csv", "--to geojson does not fit", "begc-csv")),
    Case("export-disk-full", "export when the disk fills (file size limit of 20,000 bytes) while the exporter stages its file",
         lambda t, m: ["export", "--model", str(m), "--onnx", str(t / "m.onnx")], 2, ("m.onnx", "cannot write it", "nothing was exported"),
         around=lambda: _file_size_limit(20_000), check=lambda t: _assert(not _temporaries(t) and not (t / "m.onnx").exists())),
    Case("scheduler-file-missing", "predict-scene --scheduler naming a scheduler file that is not there (Dask: 'missing port number')",
         lambda t, m: ["predict-scene", str(_scenes(t, bad=False)), "--out", str(t / "out"), "--model", str(m),
                       "--scheduler", str(t / "scheduler.json")], 2, ("scheduler.json", "no such scheduler file"),
         check=lambda t: _assert(not (t / "out").exists())),
    Case("export-opset-too-new", "export --opset 99 (found by the exporter, after the model was loaded and run, naming the model)",
         lambda t, m: ["export", "--model", str(m), "--onnx", str(t / "m.onnx"), "--opset", "99"], 2,
         ("--opset 99", "exports ONNX opsets 17 to", "nothing was exported")),
    Case("prepare-out-in-use", "prepare into an --out another live prepare is writing (its lock held)",
         lambda t, m: _prepare(_coco(t, [_ann([SQUARE])], with_files=True), t) + ["--force"] if _held(t / "prepared", folder=True) else [],
         2, ("prepared", "in use by another rooftrace run"), check=lambda t: _assert(not (t / "prepared" / "summary.json").exists())),
    Case("chips-out-in-use", "prepare-chips into an --out another live run is writing (its lock held)",
         lambda t, m: _chips_out(t, _held(t / "splits", folder=True)) + ["--force"], 2, ("splits", "in use by another rooftrace run"),
         check=lambda t: _assert(not (t / "splits" / "train").exists())),
    Case("prepare-scenes-out-in-use", "prepare-scenes into a split folder another live run is writing (its lock held)",
         lambda t, m: ["prepare-scenes", str(_tif(t / "s.tif", 3, size=96)), str(_vector(t / "l.gpkg", (500003, 2999990))),
                       "--out", str(_held(t / "sp", folder=True)), "--tile", "64", "--force"], 2, ("sp", "in use by another rooftrace run"),
         check=lambda t: _assert(not (t / "sp" / "image").exists())),
]

_HELD: list[Any] = []  #: locks the cases hold as "another live run" while the command runs


def _assert(ok: bool) -> None:
    assert ok


def _held(target: Path, folder: bool = False) -> Path:
    from rooftrace.core.locks import OutputLock

    _HELD.append(OutputLock(target, folder=folder))
    return target


def _busy_scene_out(tmp: Path) -> Path:
    """An output another run is writing: its lock held and its probabilities half stitched."""
    (tmp / ".busy.gpkg.probs.tif").write_bytes(b"first run")
    return _held(tmp / "busy.gpkg")


def _two_scenes(tmp: Path) -> Path:
    d = _scenes(tmp, bad=False)
    _tif(d / "other.tif", 3, size=96)
    return d


def _held_scene_out(tmp: Path) -> Path:
    _held(tmp / "out" / "other.gpkg")
    return tmp / "out"


def _file_size_limit(limit: int) -> Any:
    """A context in which no file may grow past ``limit`` bytes (a disk that fills up), writes failing with EFBIG."""
    import contextlib
    import resource
    import signal

    @contextlib.contextmanager
    def ctx():
        old_sig = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        old = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, old[1]))
        try:
            yield
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, old)
            signal.signal(signal.SIGXFSZ, old_sig)
    return ctx()


def _temporaries(folder: Path) -> list[str]:
    """Hidden files a run left in ``folder`` and below (temporary files, probes), by their path in it."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*")) if folder.exists() else []


def _geoparquet(path: Path, corner: tuple[float, float]) -> Path:
    """A GeoParquet file in EPSG:32614 with one 6 m square at ``corner``, as geopandas (and GIS) write it."""
    import geopandas as gpd
    from shapely.geometry import box

    gpd.GeoDataFrame({"score": [0.9]}, geometry=[box(corner[0], corner[1], corner[0] + 6, corner[1] + 6)],
                     crs="EPSG:32614").to_parquet(path)
    return path


def _tile_report(tmp: Path, gt_name: str = "split/split.json") -> list[str]:
    """``rooftrace report`` of tiles: a submission against one COCO image, the ground truth at ``gt_name``."""
    gt = _coco(tmp, [_ann([SQUARE])], with_files=True)
    if gt_name != "split/split.json":
        data = json.loads(gt.read_text())
        data["images"][0]["file_name"] = str(gt.parent / data["images"][0]["file_name"])
        (tmp / gt_name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / gt_name).write_text(json.dumps(data))
        gt = tmp / gt_name
    pred = _csv(tmp, 'ImageID,Coordinates\n1,"[[(10,10),(40,10),(40,40),(10,40)]]"\n')
    return ["report", "--pred", str(pred), "--gt", str(gt), "--out", str(tmp / "rep"), "--allow-outside-paths"]


def _tune(tmp: Path, model: Path, held: bool = False, folder: bool = False) -> list[str]:
    from rooftrace.inference.tuned import tuned_settings_path

    mm = _file(tmp / "mm.safetensors", model.read_bytes())
    if held:
        _held(tuned_settings_path(mm))
    if folder:
        _folder(tuned_settings_path(mm))
    return ["tune", "--model", str(mm), "--split", str(_coco(tmp, [_ann([SQUARE])], with_files=True).parent), "--device", "cpu"]


def _run_folder(tmp: Path) -> Path:
    """A run folder as train leaves it after its start (its config), for --resume."""
    run = tmp / "runs" / "r1"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text((REPO / "configs" / "baseline-unet.yaml").read_text())
    return run


def _chips_out(tmp: Path, out: Path) -> list[str]:
    argv = _chips(tmp, 262144, 262144, 19)
    argv[argv.index("--out") + 1] = str(out)
    return argv


def _sparse(path: Path, size: int = 100_000) -> Path:
    """A GeoTIFF that declares ``size`` x ``size`` RGB pixels in a few hundred KB (sparse, tiled)."""
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs="EPSG:32614",
                       transform=from_origin(500000, 3000000, 0.3, 0.3), tiled=True, sparse_ok=True, compress="deflate") as dst:
        dst.write(np.full((3, 64, 64), 100, np.uint8), window=((0, 64), (0, 64)))
    return path


def _coco_sparse(tmp: Path) -> Path:
    images = [{"id": 1, "file_name": "image/1.png", "width": 64, "height": 64},
              {"id": 2, "file_name": "image/2.tif", "width": 100_000, "height": 100_000}]
    path = _coco(tmp, [_ann([SQUARE]), _ann([SQUARE], 2, 2)], images=images)
    _png(path.parent / "image" / "1.png")
    _sparse(path.parent / "image" / "2.tif")
    return path


def _coco_outside(tmp: Path, name: str) -> Path:
    """A split whose second image record points outside it (the file exists there)."""
    (tmp / "x").mkdir(exist_ok=True)
    _png(tmp / "x" / "escape.png")
    _png(tmp / "x" / "abs.png")
    images = [{"id": 1, "file_name": "image/1.png", "width": 64, "height": 64}, {"id": 2, "file_name": name, "width": 64, "height": 64}]
    path = _coco(tmp, [_ann([SQUARE]), _ann([SQUARE], 2, 2)], images=images)
    _png(path.parent / "image" / "1.png")
    return path


def _aoi(tmp: Path, geometry: dict) -> Path:
    path = tmp / "aoi.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {}, "geometry": geometry}]}))
    return path


def _tile_lonlat(x: float, y: float, z: int) -> tuple[float, float]:
    n = 2.0 ** z
    return x / n * 360.0 - 180.0, math.degrees(math.atan(math.sinh(math.pi * (1 - 2 * y / n))))


def _square_ll(lon: float, lat: float, d: float = 2e-5) -> dict:
    return {"type": "Polygon", "coordinates": [[[lon - d, lat - d], [lon + d, lat - d], [lon + d, lat + d], [lon - d, lat + d],
                                                [lon - d, lat - d]]]}


def _chips(tmp: Path, x: int, y: int, z: int, *extra: str, labels: str = "geojson") -> list[str]:
    """prepare-chips on one 256 px chip named OAM-x-y-z.png with one building at its centre."""
    d = tmp / "chips"
    d.mkdir()
    _png(d / f"OAM-{x}-{y}-{z}.png", (256, 256, 3))
    lon, lat = _tile_lonlat(x + 0.5, y + 0.5, z)
    if labels == "parquet":
        import geopandas as gpd
        from shapely.geometry import shape

        path = tmp / "labels.parquet"
        gpd.GeoDataFrame(geometry=[shape(_square_ll(lon, lat))], crs="EPSG:4326").to_parquet(path)
    elif labels == "gpkg":
        import geopandas as gpd
        from shapely.geometry import shape

        path = tmp / "labels.gpkg"
        for layer in ("buildings", "roads"):
            gpd.GeoDataFrame(geometry=[shape(_square_ll(lon, lat))], crs="EPSG:4326").to_file(path, layer=layer)
    else:
        path = _geojson(tmp, _square_ll(lon, lat))
    return ["prepare-chips", str(d), "--labels", str(path), "--out", str(tmp / "splits"), *extra]


def _scenes_cut(tmp: Path, model: Path, fmt: str, foreign: bool = False) -> list[str]:
    """A folder of one scene whose output is there but cut off halfway (or another program's file)."""
    d = _scenes(tmp, bad=False)
    out = tmp / "out"
    out.mkdir()
    done = out / f"good.{fmt}"
    if foreign:
        _vector(done, (500003, 2999990))
        return ["predict-scene", str(d), "--out", str(out), "--model", str(model), "--device", "cpu", "--format", fmt]
    assert main(["predict-scene", str(d / "good.tif"), "--out", str(done), "--model", str(model), "--device", "cpu"]) == 0
    data = done.read_bytes()
    done.write_bytes(data[: len(data) // 2])
    return ["predict-scene", str(d), "--out", str(out), "--model", str(model), "--device", "cpu", "--format", fmt]

#: One step an epoch, OneCycle starting at lr 1e6 / 1e6 = 1 and at 1e6 from step 2: epoch 1 is finite, epoch 2
#: is not (optim.lr=100 alone stays finite: the loss reaches 1e5 but never NaN).
_DIVERGE = ("train.epochs=3", "train.steps_per_epoch=1", "optim.lr=1e6", "optim.div_factor=1e6", "optim.grad_clip=0")
_LOCAL_CRS = 'LOCAL_CS["site grid",UNIT["metre",1]]'

PICKLE = b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00}\x94."  # pickle.dumps({}) as a pickle checkpoint starts
_LL_SQUARE = {"type": "Polygon", "coordinates": [[[85.5, 27.6], [85.5001, 27.6], [85.5001, 27.6001], [85.5, 27.6001], [85.5, 27.6]]]}
_UTM_SQUARE = {"type": "Polygon", "coordinates": [[[500000, 3000000], [500010, 3000000], [500010, 3000010], [500000, 3000010],
                                                    [500000, 3000000]]]}


def _scribble(n: int, seed: int = 0) -> list[float]:
    """One COCO ring through ``n`` random points of a 64 x 64 image: it crosses itself about n^2/15 times."""
    return (np.random.default_rng(seed).random((n, 2)) * 64).round(2).ravel().tolist()


def _geojson(tmp: Path, *geometries: dict) -> Path:
    path = tmp / "labels.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": g} for g in geometries]}))
    return path


def _model(tmp: Path, model: Path, *, raw_meta: str | None = None, meta: dict | None = None, nan: bool = False,
           arch: str | None = None) -> Path:
    """A copy of ``model`` with its metadata or weights changed, its SHA-256 rewritten to match."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from rooftrace.core.hashing import sha256_file

    tensors = load_file(str(model))
    with safe_open(str(model), framework="pt") as f:
        data = json.loads(f.metadata()["rooftrace"])
    data.update(meta or {})
    if arch is not None:
        data["config"]["model"]["arch"] = arch
    if nan:
        key = next(k for k, v in tensors.items() if v.is_floating_point())
        tensors[key] = tensors[key].clone()
        tensors[key].view(-1)[0] = float("nan")
    out = tmp / "bad.safetensors"
    save_file(tensors, str(out), metadata={"rooftrace": raw_meta if raw_meta is not None else json.dumps(data)})
    (tmp / "bad.safetensors.sha256").write_text(f"{sha256_file(out)}  bad.safetensors\n")
    return out


def _train(*overrides: str) -> list[str]:
    argv = ["train", "--config", str(REPO / "configs" / "baseline-unet.yaml")]
    for o in overrides:
        argv += ["--set", o]
    return argv


def _tiny_run(tmp: Path, corrupt: bool = True) -> list[str]:
    """Overrides for a seconds-long training run on a train split of three 64 x 64 PNG tiles (2.png cut off
    halfway, unless not ``corrupt``) and a val split of one."""
    for split, n in (("train", 3), ("val", 1)):
        d = tmp / split
        (d / "image").mkdir(parents=True)
        images = [{"id": i, "file_name": f"image/{i}.png", "width": 64, "height": 64} for i in range(1, n + 1)]
        for rec in images:
            _png(d / rec["file_name"])
        (d / f"{split}.json").write_text(json.dumps({"images": images, "annotations": [
            _ann([SQUARE], id_=i, image_id=i) for i in range(1, n + 1)]}))
    if corrupt:
        victim = tmp / "train" / "image" / "2.png"
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    return [f"data.train={tmp / 'train'}", f"data.val={tmp / 'val'}", f"train.runs_dir={tmp / 'runs'}", "data.crop_size=64",
            "data.batch_size=2", "train.steps_per_epoch=1", "train.epochs=1", "data.workers=0", "model.base_channels=4",
            "train.vis_tiles=1", "train.patience=0"]


def _scene(tmp: Path, model: Path, out: Path, *extra: str, crs: str | None = "EPSG:32614") -> list[str]:
    return ["predict-scene", str(_tif(tmp / "s.tif", 3, size=96, crs=crs)), "--out", str(out), "--model", str(model),
            "--device", "cpu", *extra]


def _folder(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def _degree_tif(path: Path) -> Path:
    """A GeoTIFF in EPSG:4326 whose transform says each pixel is 1 degree (about 107 km) across."""
    with rasterio.open(path, "w", driver="GTiff", width=96, height=96, count=3, dtype="uint8", crs="EPSG:4326",
                       transform=from_origin(85, 27, 1, 1)) as dst:
        dst.write(np.random.default_rng(0).integers(0, 255, (3, 96, 96), dtype=np.uint8))
    return path


def _onnx(tmp: Path, model: Path, truncate: bool = False, meta: dict | None = None) -> Path:
    """``model`` exported to ONNX: cut off halfway, or with its metadata changed (no SHA-256 sidecar then)."""
    import onnx

    from rooftrace.inference.export import export_onnx

    out = tmp / "m.onnx"
    export_onnx(model, out)
    if truncate or meta:
        Path(str(out) + ".sha256").unlink(missing_ok=True)
    if truncate:
        out.write_bytes(out.read_bytes()[: out.stat().st_size // 2])
    if meta:
        proto = onnx.load(str(out))
        for prop in proto.metadata_props:
            if prop.key == "rooftrace":
                prop.value = json.dumps({**json.loads(prop.value), **meta})
        onnx.save(proto, str(out))
    return out


def _foreign_onnx(tmp: Path, channels: int = 3, meta: dict | None = None, name: str = "foreign.onnx") -> Path:
    """An ONNX file of one Slice node (the first ``channels`` input channels), with ``meta`` as its metadata."""
    import onnx
    from onnx import TensorProto, helper

    ints = {k: helper.make_tensor(k, TensorProto.INT64, [1], [v]) for k, v in (("start", 0), ("end", channels), ("axis", 1))}
    graph = helper.make_graph([helper.make_node("Slice", ["image", "start", "end", "axis"], ["probabilities"])], "g",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", channels, "H", "W"])],
                              list(ints.values()))
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    for k, v in (meta or {}).items():
        proto.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    onnx.save(proto, str(tmp / name))
    return tmp / name


def _two_channel_onnx(tmp: Path, model: Path) -> Path:
    """A 2-channel network carrying the rooftrace metadata of a 3-channel model."""
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(_onnx(tmp, model))).metadata_props}
    return _foreign_onnx(tmp, channels=2, meta=meta, name="two.onnx")


def _vector(path: Path, corner: tuple[float, float] | None) -> Path:
    """A GeoPackage in EPSG:32614 with one 6 m square at ``corner`` (its lower left), or none."""
    import geopandas as gpd
    from shapely.geometry import box

    geoms = [box(corner[0], corner[1], corner[0] + 6, corner[1] + 6)] if corner else []
    gpd.GeoDataFrame({"score": [0.9] * len(geoms)}, geometry=geoms, crs="EPSG:32614").to_file(path)
    return path


def _report(tmp: Path, pred: Path | None = None, raster: Path | None = None, gt: Path | None = None) -> list[str]:
    """``rooftrace report --raster``: by default one building on the 96 x 96 UTM scene ``_tif`` makes."""
    pred = pred or _vector(tmp / "pred.gpkg", (500003, 2999990))
    raster = raster or _tif(tmp / "s.tif", 3, size=96)
    return ["report", "--pred", str(pred), "--raster", str(raster), "--out", str(tmp / "report"),
            *(["--gt", str(gt)] if gt else [])]


def _scenes(tmp: Path, bad: bool = True) -> Path:
    d = tmp / "scenes"
    d.mkdir()
    _tif(d / "good.tif", 3, size=96)
    if bad:
        _tif(d / "five.tif", 5, size=96)
    return d


def _file(path: Path, data: bytes = b"not a model") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _tamper(model: Path, tmp: Path) -> Path:
    out = tmp / "tampered.safetensors"
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF
    out.write_bytes(bytes(data))
    (tmp / "tampered.safetensors.sha256").write_text(Path(str(model) + ".sha256").read_text())
    return out


def _evil(tmp: Path) -> Path:
    import os

    import torch

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp / 'PWNED'}",))

    path = tmp / "evil.pth"
    torch.save({"state_dict": Evil()}, path)
    return path


def _rle() -> dict:
    from pycocotools import mask as mask_utils

    m = np.zeros((64, 64), np.uint8, order="F")
    m[10:30, 10:30] = 1
    rle = mask_utils.encode(m)
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def _convert(path: Path, tmp: Path) -> list[str]:
    return ["convert", str(path), str(tmp / "out.geojson"), "--to", "geojson"]


def _prepare(path: Path, tmp: Path) -> list[str]:
    return ["prepare", str(path.parent), "--out", str(tmp / "prepared"), "--previews", "0"]


def _coco_one_missing(tmp: Path) -> Path:
    path = _coco(tmp, [_ann([SQUARE]), _ann([SQUARE], 2, 2)], images=[{"id": 1, "file_name": "image/1.png", "width": 64, "height": 64},
                                                                      {"id": 2, "file_name": "image/2.png", "width": 64, "height": 64}])
    _png(path.parent / "image" / "1.png")  # 2.png is missing
    return path


def _evaluate(tmp: Path, csv_text: str, two_images: bool = False) -> list[str]:
    two = [{"id": 1, "file_name": "image/1.png", "width": 64, "height": 64}, {"id": 2, "file_name": "image/2.png", "width": 64, "height": 64}]
    gt = _coco(tmp, [_ann([SQUARE])], images=two if two_images else None)
    return ["evaluate", "--gt", str(gt), "--pred", str(_csv(tmp, csv_text)), "--no-pixel"]


def _geo_eval(tmp: Path, size: int = 64, two_layers: bool = False) -> list[str]:
    from pyproj import Transformer

    raster = _tif(tmp / "scene.tif", 3, size=64) if size == 64 else _sparse(tmp / "scene.tif", size)
    to_ll = Transformer.from_crs("EPSG:32614", "EPSG:4326", always_xy=True)
    x0, y0 = 500000 + 3, 3000000 - 3  # a 6 m square 10 px from the corner
    ring = [list(to_ll.transform(x, y)) for x, y in ((x0, y0), (x0 + 6, y0), (x0 + 6, y0 - 6), (x0, y0 - 6), (x0, y0))]
    fc = {"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {},
                                                     "geometry": {"type": "Polygon", "coordinates": [ring]}}]}
    gj = tmp / "labels.geojson"
    gj.write_text(json.dumps(fc))
    gt = gj
    if two_layers:  # the buildings, and a layer of something else that a GIS keeps in the same file
        import geopandas as gpd

        gt = tmp / "gt.gpkg"
        gpd.read_file(gj).to_file(gt, layer="buildings")
        gpd.GeoDataFrame(geometry=[shapely_box(500000, 2999980, 500019, 2999981)], crs="EPSG:32614").to_file(gt, layer="roads")
    return ["evaluate", "--gt", str(gt), "--pred", str(gj), "--gt-raster", str(raster), "--no-pixel"]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_named_and_exits_with_the_right_status(case: Case, model_file, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything a bad input might try to write lands here, and is checked below
    argv = case.setup(tmp_path, model_file)
    capsys.readouterr()  # what a setup printed (a first run) is not the case's output
    import contextlib

    with case.around() if case.around else contextlib.nullcontext():
        code = main(argv)
    out = capsys.readouterr()
    text = out.out + out.err
    assert "Traceback" not in text
    for s in case.says:
        assert s in text, f"{case.id}: {s!r} not in output:\n{text}"
    assert code == case.code, f"{case.id}: exit {code}, expected {case.code}:\n{text}"
    assert not (tmp_path / "PWNED").exists()
    if case.check is not None:
        case.check(tmp_path)
    if code == 1:  # the end of the output says that something was skipped
        assert "skipped" in text.splitlines()[-1] or "skipped" in out.err


def test_skipped_tiles_keep_their_row_and_the_rest_is_done(model_file, tmp_path):
    """predict finishes the good tiles when one is bad, and the bad one still has a (empty) row."""
    images = _images(tmp_path, ("2.png", lambda p: p.write_bytes(b"")), ("3.png", lambda p: _png(p)))
    assert main(_predict(images, tmp_path, model_file)) == 1
    rows = (tmp_path / "out" / "submission.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == ["ImageID", "1", "2", "3"]
    assert sorted(p.name for p in (tmp_path / "out" / "masks").iterdir()) == ["1.png", "3.png"]


def test_strict_writes_nothing(model_file, tmp_path):
    """--strict stops before any output is written."""
    images = _images(tmp_path, ("0.png", lambda p: p.write_bytes(b"")))
    assert main(_predict(images, tmp_path, model_file, "--strict")) == 2
    assert not (tmp_path / "out" / "submission.csv").exists()


def test_the_console_script_prints_no_traceback(tmp_path):
    """The installed entry point, not only main(): one message on stderr, exit 2."""
    exe = Path(sys.executable).parent / "rooftrace"
    run = subprocess.run([str(exe), "evaluate", "--gt", str(tmp_path / "nope.json"), "--pred", str(tmp_path / "nope.csv")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert "Traceback" not in run.stderr and "nope.json" in run.stderr


def test_import_weights_takes_the_original_pipelines_checkpoint(tmp_path):
    """The original pipeline saved torch.save(model.state_dict()) of smp.Unet("resnet34", classes=1):
    import-weights --trust-pickle turns it into a model file that gives the same outputs."""
    import segmentation_models_pytorch as smp
    import torch

    from rooftrace.models.files import load_model

    torch.manual_seed(0)
    net = smp.Unet("resnet34", encoder_weights=None, classes=1).eval()
    ckpt = tmp_path / "best_model.pth"
    torch.save({"epoch": 3, "model_state_dict": net.state_dict()}, ckpt)
    out = tmp_path / "r34.safetensors"
    argv = ["import-weights", str(ckpt), "--config", str(REPO / "configs/unet-r34.yaml"), "--out", str(out), "--trust-pickle"]
    assert main(argv + ["--set", "data.channels=[footprint]"]) == 0
    assert main(argv + ["--set", "data.channels=[footprint]"]) == 2  # exists: not overwritten without --force
    loaded = load_model(out)
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(loaded.model(x), net(x), atol=1e-5)
    assert loaded.channels == ("footprint",)
    # The three-output config does not fit a one-output checkpoint: refused, saying why.
    assert main(argv[:-1] + ["--force", "--trust-pickle"]) == 2


def test_testing_md_lists_every_bad_input():
    text = (REPO / "TESTING.md").read_text()
    missing = [c.id for c in CASES if f"`{c.id}`" not in text]
    assert not missing, f"add these cases to TESTING.md (tests/cli/testing_table.py prints the rows): {missing}"


# --- second round (issue 16): bounded repair, umask, full disk -----------------------------------------


def test_a_scribbled_ring_is_dropped_in_seconds_within_bounded_memory(tmp_path, monkeypatch):
    """A 20,000-point scribble once took `rooftrace convert` past 20 GB (make_valid of ~27 million
    crossings). Under a 1.5 GB address-space limit it is now dropped, named, in seconds: the scribble never reaches
    make_valid (which took the minutes and the gigabytes), checked by watching make_valid rather than a clock."""
    import os
    import resource

    import shapely

    coco = _coco(tmp_path, [_ann([_scribble(20_000)]), _ann([SQUARE], 2)])
    limit = 1536 * 1024 * 1024

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    exe = Path(sys.executable).parent / "rooftrace"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    run = subprocess.run([str(exe), "convert", str(coco), str(tmp_path / "out.geojson")], capture_output=True, text=True,
                         timeout=300, preexec_fn=cap, env=env)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "Traceback" not in run.stderr and "MemoryError" not in run.stderr
    assert "annotations[0] (id 1): dropped: a scribble of more than 500 self-intersections" in run.stdout
    assert json.loads((tmp_path / "out.geojson").read_text())["features"]  # the good square is kept
    repaired = []  # the vertex count of every geometry given to make_valid, in a second run in this process
    make_valid = shapely.make_valid
    monkeypatch.setattr(shapely, "make_valid", lambda g, *a, **k: repaired.append(int(shapely.get_num_coordinates(g)))
                        or make_valid(g, *a, **k))
    assert main(["convert", str(coco), str(tmp_path / "again.geojson")]) == 1
    assert max(repaired, default=0) < 20_000, repaired


def test_outputs_get_the_mode_the_umask_gives(tmp_path):
    """The atomic writer's temporary file is 0600; what it becomes must be what open() would give."""
    import os

    from rooftrace.core.files import atomic_write_text

    coco = _coco(tmp_path, [_ann([SQUARE])])
    old = os.umask(0o022)
    try:
        assert main(["convert", str(coco), str(tmp_path / "a.geojson")]) == 0
        assert (tmp_path / "a.geojson").stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        assert atomic_write_text(tmp_path / "b.txt", "x").stat().st_mode & 0o777 == 0o600
        os.umask(0o002)
        assert atomic_write_text(tmp_path / "c.txt", "x").stat().st_mode & 0o777 == 0o664
    finally:
        os.umask(old)


def test_a_full_disk_names_the_file_meant_not_a_temporary_one(tmp_path, monkeypatch, capsys):
    import errno

    import rooftrace.core.files as io_mod

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io_mod.os, "fsync", full)
    coco = _coco(tmp_path, [_ann([SQUARE])])
    assert main(["convert", str(coco), str(tmp_path / "out.geojson")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'out.geojson'}: cannot write it (No space left on device)" in err
    assert ".tmp" not in err and "Traceback" not in err
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left behind


# --- third round (issue 16): the Python API, --set, a real divergence -------------------------------------


def test_api_odd_inputs_are_one_line_errors_or_handled(model_file, tmp_path):
    """What a notebook user hands ``Model.predict``/``predict_batch``/``load_model``: each either works or
    raises a RooftraceError saying what is wrong, never a rasterio, OS or numpy error."""
    import rooftrace
    from rooftrace.core.errors import RooftraceError

    model = rooftrace.load_model(model_file, device="cpu")
    rgb = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    with rasterio.open(_tif(tmp_path / "a.tif", 3)) as ds:
        pass  # closed on leaving the block, as a user's notebook cell leaves it
    with pytest.raises(RooftraceError, match=r"a\.tif: the rasterio dataset is closed"):
        model.predict(ds)
    with pytest.raises(RooftraceError, match=r"predict_batch\(.*a\.tif\): expected a list of images"):
        model.predict_batch(str(tmp_path / "a.tif"))  # not its characters, one by one
    with pytest.raises(RooftraceError, match=r"predict_batch\(an array of shape \(64, 64, 3\)\)"):
        model.predict_batch(rgb)
    assert len(model.predict_batch(np.stack([rgb, rgb]))) == 2
    (tmp_path / "models").mkdir()
    with pytest.raises(RooftraceError, match="models: a folder, not a model file"):
        rooftrace.load_model(tmp_path / "models")
    with pytest.raises(RooftraceError, match="empty image"):
        model.predict(np.zeros((0, 0, 3), np.uint8))
    one = model.footprints(np.zeros((1, 1, 3), np.uint8))
    assert (one.width, one.height) == (1, 1)
    with pytest.raises(RooftraceError, match="dtype uint16; expected uint8"):
        model.predict(np.zeros((64, 64, 3), np.uint16))
    with pytest.raises(RooftraceError, match="dtype float64; expected uint8"):
        model.predict(np.full((64, 64, 3), np.nan))
    with pytest.raises(RooftraceError, match=r"shape \(3, 64, 64\)"):
        model.predict(rgb.transpose(2, 0, 1))
    four = model.footprints(np.concatenate([rgb, np.full((64, 64, 1), 255, np.uint8)], axis=2))
    assert [p.wkt for p in four.polygons] == [p.wkt for p in model.footprints(rgb).polygons]  # alpha dropped
    with pytest.raises(RooftraceError, match="folder: not a readable raster"):
        model.predict(_folder(tmp_path / "folder"))
    for bad in (0, -1, float("nan")):
        with pytest.raises(RooftraceError, match="greater than 0"):
            model.predict(rgb, gsd=bad)


def test_api_a_pixel_size_far_from_the_models_is_refused(model_file, tmp_path):
    """gsd=1000 for a 0.3 m model once asked OpenCV for 136 GB; now it is refused, saying why."""
    import rooftrace
    from rooftrace.core.errors import RooftraceError

    model = rooftrace.load_model(_model(tmp_path, model_file, meta={"gsd": 0.3}), device="cpu")
    with pytest.raises(RooftraceError, match="at most 32x"):
        model.predict(np.zeros((64, 64, 3), np.uint8), gsd=1000)
    assert model.predict(np.zeros((64, 64, 3), np.uint8), gsd=0.6).attrs["width"] == 64  # 2x: resampled and mapped back


def test_duplicate_set_keys_the_last_wins():
    """``--set k=a --set k=b`` is b, as for any repeated command-line option (the suite relies on it)."""
    from rooftrace.config import load_config

    cfg = load_config(REPO / "configs" / "baseline-unet.yaml", ["optim.lr=0.1", "optim.lr=0.2"])
    assert cfg.optim.lr == 0.2


def test_a_real_divergence_keeps_a_checkpoint_that_loads(tmp_path, capsys):
    """No monkeypatching: optim.lr=1e6 without clipping turns the network's outputs non-finite in epoch 2.
    The run stops with one line and exit 2, and epoch 1's last.safetensors is whole and loads."""
    from rooftrace.models.files import load_model

    assert main(_train(*_tiny_run(tmp_path, corrupt=False), *_DIVERGE)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "training diverged at epoch 2" in err
    (run,) = (tmp_path / "runs").iterdir()
    assert load_model(run / "last.safetensors").meta["epoch"] == 1


def test_a_network_that_returns_other_channels_than_its_file_names_is_an_error(model_file, tmp_path, monkeypatch):
    """An .onnx whose output shape is not declared is only found out when it runs: the runtime checks every
    batch's channels against the file's, instead of post-processing failing on a (2, H, W) array."""
    import rooftrace
    from rooftrace.core.errors import RooftraceError
    from rooftrace.models.onnx import OnnxModel

    model = rooftrace.load_model(_onnx(tmp_path, model_file), device="cpu")
    real = OnnxModel.predict
    monkeypatch.setattr(OnnxModel, "predict", lambda self, x: real(self, x)[:, :2])
    with pytest.raises(RooftraceError, match=r"m\.onnx: the network returned shape \(1, 2, 64, 64\), but the file names 3"):
        model.predict(np.zeros((64, 64, 3), np.uint8))


# --- fourth round (issue 23): bounds asserted, locks ------------------------------------------------------


def test_api_a_20000_px_array_runs_window_by_window_without_copying_it(model_file, monkeypatch):
    """``Model.predict`` of a 20,000 x 20,000 array once grew about 22 bytes a pixel (6.5 GB after 300 s). It now runs
    window by window, as ``predict-scene`` runs a raster (issue 26): nothing of the image's size is allocated before
    the first windows run. A zero-stride view stands for the user's array, the network stops the run at its first
    batch, and tracemalloc sees no large allocation up to there (``tests/api/test_api.py`` measures a whole run's memory);
    the windows read up to there are a small part of the image (counted, rather than timed)."""
    import tracemalloc

    import rooftrace
    from rooftrace.imagery.raster import ArrayScene

    class Stop(Exception):
        pass

    batches = []

    def first_batch(batch):
        batches.append(batch.shape)
        raise Stop

    monkeypatch.setenv("ROOFTRACE_MEMORY_LIMIT", "4G")
    model = rooftrace.load_model(model_file, device="cpu")
    model.runtime.probabilities = first_batch
    big = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (20_000, 20_000, 3))
    read_px, read = [], ArrayScene.read
    monkeypatch.setattr(ArrayScene, "read", lambda self, w: read_px.append(int(w.width) * int(w.height)) or read(self, w))
    tracemalloc.start()
    try:
        with pytest.raises(Stop):
            model.predict(big)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # the first batch of windows (4, or one window per forward pass where the passes run in two streams)
    assert batches and all(b[1:] == (512, 512, 3) and b[0] in (1, 4) for b in batches) and len(batches) <= 3, batches
    assert peak < 50 * 1024 * 1024, peak
    assert 0 < sum(read_px) < big.shape[0] * big.shape[1] / 10, (len(read_px), sum(read_px))


def test_pixel_metrics_on_a_sparse_60000_px_raster_stay_small(tmp_path):
    """evaluate --gt-raster of a sparse 60,000 x 60,000 scene once asked for 3.35 GiB (one mask of the scene): the
    pixel metrics now rasterise only the footprints' window, and the command runs under a 1.5 GB address space."""
    import os
    import resource

    argv = _geo_eval(tmp_path, size=60_000)[:-1]  # pixel metrics on
    limit = 1536 * 1024 * 1024

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    exe = Path(sys.executable).parent / "rooftrace"
    run = subprocess.run([str(exe), *argv], capture_output=True, text=True, timeout=120, preexec_fn=cap,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stdout + run.stderr
    assert "pixel IoU 1.0000" in run.stdout and "MemoryError" not in run.stderr


def test_a_lock_is_exclusive_in_one_process_and_a_dead_runs_lock_is_taken_over(tmp_path):
    """Two runs in one process exclude each other (flock, per open file); a lock file whose process died is not a
    lock: the next run takes it over, and releasing removes it."""
    from rooftrace.core.locks import OutputBusy, OutputLock, holder, lock_path

    target = tmp_path / "a.gpkg"
    first = OutputLock(target)
    assert holder(target) == __import__("os").getpid()
    with pytest.raises(OutputBusy, match=r"a\.gpkg: in use by another rooftrace run \(process \d+\)"):
        OutputLock(target)
    first.release()
    assert holder(target) is None and not lock_path(target).exists()
    lock_path(target).write_text("999999\n")  # what a killed run leaves: the file, but no lock on it
    with OutputLock(target):
        assert holder(target) == __import__("os").getpid()
    assert not lock_path(target).exists()


def test_a_second_process_on_a_held_out_stops_at_once_and_touches_nothing(model_file, tmp_path):
    """Another process: while this one holds --out (as a live `rooftrace predict` does), `rooftrace predict --force`
    into it exits 2 at once, naming this process, and leaves the folder as it was; once released, a run writes it."""
    import os

    from rooftrace.core.locks import OutputLock

    images = _images(tmp_path)
    out = tmp_path / "out"
    (out / "masks").mkdir(parents=True)
    (out / "submission.csv").write_text("the first run's\n")
    exe = Path(sys.executable).parent / "rooftrace"
    argv = [str(exe), *_predict(images, tmp_path, model_file), "--force"]
    with OutputLock(out, folder=True):
        second = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert second.returncode == 2, second.stdout + second.stderr
    assert f"in use by another rooftrace run (process {os.getpid()})" in second.stderr and "Traceback" not in second.stderr
    assert (out / "submission.csv").read_text() == "the first run's\n" and not list((out / "masks").iterdir())
    assert main(argv[1:]) == 0  # released: the next run (here in this process, which starts faster) writes it
    assert (out / "submission.csv").read_text().startswith("ImageID") and not (out / ".rooftrace.lock").exists()


# --- fifth round (issue 23): every writer on a full disk, the API, the Dask merge ---------------------------------

#: Each writer, run until the disk fills (a file size limit: writes fail with EFBIG, as on a full disk, without root):
#: (id, argv maker, limit in bytes, the file the message must name).
_FULL_DISK = [
    *[(f"convert-{fmt}", lambda t, m, fmt=fmt, sfx=sfx: ["convert", str(_coco(t, [_ann([SQUARE], i + 1) for i in range(300)])),
                                                          str(t / f"out{sfx}"), "--to", fmt], 1_000, f"out{sfx}")
      for fmt, sfx in (("begc-csv", ".csv"), ("spacenet-csv", ".csv"), ("coco", ".json"), ("coco-results", ".json"),
                       ("geojson", ".geojson"))],
    ("evaluate-json", lambda t, m: _evaluate(t, 'ImageID,Coordinates\n1,"[[(10,10),(40,10),(40,40),(10,40)]]"\n')
     + ["--json", str(t / "scores.json")], 200, "scores.json"),
    ("predict-submission", lambda t, m: _predict(_images(t), t, m), 300, "out/"),
    ("prepare", lambda t, m: _prepare(_coco(t, [_ann([SQUARE])], with_files=True), t), 300, "prepared/"),
    ("prepare-chips", lambda t, m: _chips(t, 262144, 262144, 19), 3_000, "splits/"),
    ("prepare-scenes", lambda t, m: ["prepare-scenes", str(_tif(t / "s.tif", 3, size=96)), str(_vector(t / "l.gpkg", (500003, 2999990))),
                                     "--out", str(t / "sp"), "--tile", "64"], 3_000, "sp/image/"),
    ("report-tiles", lambda t, m: _tile_report(t), 3_000, "rep/"),
    ("oracle", lambda t, m: ["oracle", "--gt", str(_coco(t, [_ann([SQUARE])], with_files=True)), "--out", str(t / "or")], 10,
     "or/submission.csv"),
    ("tune", lambda t, m: _tune(t, m), 100, "mm.postprocess.json"),
    ("import-weights", lambda t, m: ["import-weights", str(_file(t / "w.pth", m.read_bytes())), "--config",
                                     str(REPO / "configs/baseline-unet.yaml"), "--set", "model.base_channels=4", "--set",
                                     "data.channels=[footprint, boundary, contact]", "--set", "loss.channel_weights=[1, 0.5, 0.5]",
                                     "--out", str(t / "o.safetensors")], 5_000, "o.safetensors"),
]


@pytest.mark.parametrize("name,argv,limit,named", _FULL_DISK, ids=[c[0] for c in _FULL_DISK])
def test_every_writer_names_its_file_when_the_disk_fills_and_leaves_no_temporary_file(name, argv, limit, named, model_file,
                                                                                         tmp_path, capsys, monkeypatch):
    """One line naming the file meant (never a temporary one, nor a file of the package), exit 2, and no hidden file
    left behind (predict keeps its ``.partial`` records, which ``--resume`` continues from)."""
    monkeypatch.chdir(tmp_path)
    args = argv(tmp_path, model_file)
    capsys.readouterr()
    with _file_size_limit(limit):
        code = main(args)
    err = capsys.readouterr().err
    line = [ln for ln in err.splitlines() if ": error: " in ln]
    assert code == 2 and len(line) == 1, err
    assert f"{tmp_path}/{named}" in line[0] and "cannot write it" in line[0] and "Traceback" not in err, line[0]
    meant = line[0].split(": error: ", 1)[1].split(": cannot write it")[0]
    assert not Path(meant).name.startswith("."), meant  # the file meant, not a temporary one
    assert [p for p in _temporaries(tmp_path) if not p.startswith("out/.partial") and ".rooftrace.lock" not in p] == []


def test_api_predict_scene_refuses_probabilities_that_are_not_a_geotiff(model_file, tmp_path):
    """``Model.predict_scene(..., probabilities="p.gpkg")`` wrote a GeoTIFF under a GeoPackage's name; with
    ``force`` it replaced the GeoPackage a previous run wrote. Now it is refused before anything runs."""
    import rooftrace
    from rooftrace.core.errors import RooftraceError

    model = rooftrace.load_model(model_file, device="cpu")
    scene = _tif(tmp_path / "s.tif", 3, size=96)
    earlier = _vector(tmp_path / "earlier.gpkg", (500003, 2999990))
    before = earlier.read_bytes()
    with pytest.raises(RooftraceError, match=r"earlier\.gpkg: --probabilities is written as a GeoTIFF"):
        model.predict_scene(scene, tmp_path / "o.gpkg", probabilities=earlier, force=True)
    assert earlier.read_bytes() == before and not (tmp_path / "o.gpkg").exists()


def test_the_dask_merged_layer_on_a_full_disk_names_it_and_leaves_no_temporary_file(tmp_path):
    """The merged layer of a Dask run (``footprints.gpkg``) raised GDAL's own error (a traceback at the command line)
    when the disk filled; it is now one line naming the file, and its temporary GeoPackage is gone."""
    from rooftrace.core.errors import RooftraceError
    from rooftrace.gis.merge import merge_scenes

    (tmp_path / "scenes").mkdir()
    items = [(stem, _vector(tmp_path / "scenes" / f"{stem}.gpkg", (500003 + 10 * i, 2999990))) for i, stem in enumerate("ab")]
    out = tmp_path / "footprints.gpkg"
    with _file_size_limit(20_000), pytest.raises(RooftraceError, match=r"footprints\.gpkg: cannot write it \(.*file size limit"):
        merge_scenes(items, out)
    assert not out.exists() and _temporaries(tmp_path) == []


def test_testing_md_holds_no_output_that_changes_on_every_run():
    """TESTING.md's table is regenerated by tests/cli/testing_table.py, which writes placeholders for what changes from run
    to run: no process ids, timings, rates, run-folder timestamps, temporary folders or this machine's memory."""
    import re

    text = (REPO / "TESTING.md").read_text()
    volatile = [r"\(process \d+\)", r"\d+\.\d+ (tiles/s|s/km²)", r"\bin \d+\.\d+ s\b", r"\d{8}-\d{6}", r"/tmp/", r"pytest-of-",
                r"the bound of [0-9.]+ GiB"]
    found = {p: m.group(0) for p in volatile if (m := re.search(p, text))}
    assert not found, f"regenerate the table with tests/cli/testing_table.py: {found}"
