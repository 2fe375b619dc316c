"""The ``rooftrace`` command line: one program, one thin subcommand per library function.

Every subcommand reads its arguments, calls one function a notebook user could call directly,
and prints what it did. Errors about the user's input (:class:`RooftraceError`) are printed as one
message without a traceback, with exit status 2; a command that finished but skipped bad records,
tiles or scenes lists them and exits with 1 (``--strict`` stops at the first instead).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from rooftrace import __version__
from rooftrace.config import check_device
from rooftrace.core.errors import RooftraceError


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="validate a split and write training targets (footprint/boundary/contact PNGs) and previews",
        description="Read SPLIT_DIR/<split>.json (COCO, BEGC2024 layout), report what was repaired or dropped, "
        "and write OUT/targets, OUT/instances, OUT/masks, OUT/previews and OUT/summary.json.",
    )
    p.add_argument("split_dir", type=Path, help="split folder holding image/ and <split>.json")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--boundary-width", type=int, default=None, help="boundary band width in pixels")
    p.add_argument("--contact-width", type=int, default=None, help="contact reach in pixels")
    p.add_argument("--previews", type=int, default=8, help="number of preview overlays to draw (default 8)")
    p.add_argument("--force", action="store_true", help="overwrite earlier outputs in --out")
    p.set_defaults(func=_run_prepare)


def _run_prepare(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from rooftrace.prepare.targets import TargetSettings
    from rooftrace.prepare.tiles import prepare_split

    settings = TargetSettings()
    if args.boundary_width is not None:
        settings = replace(settings, boundary_width=args.boundary_width)
    if args.contact_width is not None:
        settings = replace(settings, contact_width=args.contact_width)
    result = prepare_split(args.split_dir, args.out, settings=settings, n_previews=args.previews, force=args.force)
    print(result.summary())
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    from rooftrace.evaluation.metrics import MATCHING_MODES

    p = sub.add_parser(
        "evaluate",
        help="score predictions against ground truth (object-wise F1 as BEGC2024, and pixel metrics)",
        description="GT and PRED may each be COCO JSON, COCO results, a BEGC2024 CSV, a SpaceNet CSV, "
        "GeoJSON/GeoPackage or a folder of masks; the format is detected from the content.",
    )
    p.add_argument("--gt", type=Path, required=True, help="ground-truth labels")
    p.add_argument("--pred", type=Path, required=True, help="predicted labels")
    p.add_argument("--iou", type=float, default=0.5, help="IoU at which a prediction matches (default 0.5)")
    p.add_argument("--matching", choices=MATCHING_MODES, default="one-to-one", help="matching mode (default one-to-one)")
    p.add_argument("--json", type=Path, default=None, help="write the scores as JSON here")
    p.add_argument("--gt-raster", type=Path, default=None, help="GeoTIFF that map-coordinate GT belongs to")
    p.add_argument("--pred-raster", type=Path, default=None, help="GeoTIFF that map-coordinate predictions belong to")
    p.add_argument("--gt-crs", default=None, metavar="CRS",
                   help="CRS of GeoJSON/GeoPackage GT when the file declares none or a wrong one, e.g. EPSG:32645")
    p.add_argument("--pred-crs", default=None, metavar="CRS",
                   help="CRS of GeoJSON/GeoPackage predictions when the file declares none or a wrong one")
    p.add_argument("--images", type=Path, default=None, help="image folder, when PRED is a folder of masks")
    p.add_argument("--no-pixel", action="store_true", help="skip pixel metrics")
    p.add_argument("--force", action="store_true", help="overwrite an existing --json file")
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from rooftrace.core.files import atomic_write_text
    from rooftrace.evaluation.metrics import evaluate_labels
    from rooftrace.labels.formats import align_keys, read_labels

    if not 0.0 < args.iou <= 1.0:
        raise RooftraceError(f"--iou {args.iou}: must be in (0, 1]")
    if args.json is not None and args.json.exists() and not args.force:
        raise RooftraceError(f"{args.json}: already exists; pass --force to overwrite it")
    gt = read_labels(args.gt, raster=args.gt_raster, crs=args.gt_crs, crs_option="--gt-crs")
    # Predictions in map coordinates belong to the same scene as the ground truth unless told otherwise.
    pred = read_labels(args.pred, raster=args.pred_raster or args.gt_raster, images=args.images, check_images=False,
                       crs=args.pred_crs, crs_option="--pred-crs")
    print(gt.report.summary())
    print(pred.report.summary())
    pred = align_keys(gt, pred)
    score = evaluate_labels(gt, pred, iou=args.iou, matching=args.matching, pixel=not args.no_pixel)
    print()
    print(score.summary())
    if args.json is not None:
        atomic_write_text(args.json, json.dumps(score.to_json(), indent=2), force=args.force)
        print(f"\nscores written to {args.json}")
    return 0


WRITERS = ("begc-csv", "spacenet-csv", "coco", "coco-results", "geojson")
_SUFFIX_FORMAT = {".csv": "begc-csv", ".geojson": "geojson", ".json": "coco"}


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert labels between formats (COCO, COCO results, BEGC2024 CSV, SpaceNet CSV, GeoJSON, masks)",
        description="Read SRC in any supported format and write DST in the format given by --to "
        "(default from DST's suffix: .csv BEGC2024, .geojson GeoJSON, .json COCO).",
    )
    p.add_argument("src", type=Path, help="labels to read (format detected from the content)")
    p.add_argument("dst", type=Path, help="file to write")
    p.add_argument("--to", choices=WRITERS, default=None, help="output format")
    p.add_argument("--raster", type=Path, default=None, help="GeoTIFF that map-coordinate SRC belongs to")
    p.add_argument("--labels-crs", default=None, metavar="CRS",
                   help="CRS of a GeoJSON/GeoPackage SRC when the file declares none or a wrong one, e.g. EPSG:32645")
    p.add_argument("--images", type=Path, default=None,
                   help="image folder: every image in it gets a row in a BEGC2024 CSV; pairs a mask folder with its images")
    p.add_argument("--force", action="store_true", help="overwrite DST")
    p.set_defaults(func=_run_convert)


def _run_convert(args: argparse.Namespace) -> int:
    from rooftrace.labels import formats

    fmt = args.to or _SUFFIX_FORMAT.get(args.dst.suffix.lower())
    if fmt is None:
        raise RooftraceError(f"{args.dst}: cannot tell the output format from the suffix; pass --to")
    ls = formats.read_labels(args.src, raster=args.raster, images=args.images, crs=args.labels_crs)
    print(ls.report.summary())
    if ls.crs is not None and fmt != "geojson":
        raise RooftraceError(f"{args.src}: labels are in map coordinates; pass --raster to convert them to pixels for {fmt}")
    if fmt == "begc-csv":
        keys = formats.keys_of_folder(args.images) if args.images is not None else None
        formats.write_begc_csv(ls, args.dst, image_keys=keys, force=args.force)
    elif fmt == "spacenet-csv":
        formats.write_spacenet_csv(ls, args.dst, force=args.force)
    elif fmt == "coco":
        formats.write_coco(ls, args.dst, force=args.force)
    elif fmt == "coco-results":
        formats.write_coco_results(ls, args.dst, force=args.force)
    else:
        formats.write_geojson(ls, args.dst, force=args.force)
    print(f"{ls.n_footprints} footprints of {len(ls)} images written to {args.dst} ({fmt})")
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model from a YAML config into runs/NAME-TIMESTAMP/ (resumable)",
        description="Train from --config (see configs/); --set section.key=value overrides any entry; "
        "--resume RUN_DIR continues a killed run from its last finished epoch. "
        "Under torchrun --nproc_per_node N it trains with DistributedDataParallel.",
    )
    p.add_argument("--config", type=Path, default=None, help="YAML config, e.g. configs/unet-r34.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config entry, e.g. --set train.epochs=2 (repeatable)")
    p.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR", help="continue this run")
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from rooftrace.config import load_config
    from rooftrace.training.loop import resume, train

    if args.resume is not None:
        if args.config is not None:
            raise RooftraceError("--resume uses the run's own config.yaml; leave out --config (use --set to change entries)")
        summary = resume(args.resume, args.overrides)
    else:
        if args.config is None:
            raise RooftraceError("pass --config configs/NAME.yaml (or --resume RUN_DIR)")
        summary = train(load_config(args.config, args.overrides))
    if summary.get("run_dir") not in (None, "None"):
        print(f"best object F1 {summary['best_object_f1']:.4f} at epoch {summary['best_epoch']}; run folder {summary['run_dir']}")
    return 0


def _parse_settings(items: list[str], path: Path | None):
    """Post-processing settings from a JSON file (a tune file or a plain object) and KEY=VALUE items."""
    from rooftrace.instances.postprocess import PostprocessSettings

    data: dict = {}
    if path is not None:
        from rooftrace.core.files import read_json

        loaded = read_json(path)
        if not isinstance(loaded, dict):
            raise RooftraceError(f"{path}: expected a JSON object of post-processing settings")
        data.update(loaded.get("settings", loaded))
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise RooftraceError(f"--pp {item!r}: expected key=value, e.g. --pp simplify=1")
        try:
            data[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            data[key.strip()] = value  # e.g. surface=flat
    return PostprocessSettings.from_dict(data) if data else None


def _add_postprocess_options(p: argparse.ArgumentParser, default_method: str | None) -> None:
    from rooftrace.instances.postprocess import POSTPROCESSORS

    p.add_argument("--postprocess", choices=sorted(POSTPROCESSORS), default=default_method,
                   help="post-processing method" + (f" (default {default_method})" if default_method else
                                                    " (default: the tuned one saved beside the model, else watershed)"))
    p.add_argument("--settings", type=Path, default=None, help="JSON file of post-processing settings (e.g. a tune file)")
    p.add_argument("--pp", dest="pp", action="append", default=[], metavar="KEY=VALUE",
                   help="override one post-processing setting, e.g. --pp simplify=1 (repeatable)")


def _add_oracle(sub: argparse._SubParsersAction) -> None:
    from rooftrace.evaluation.metrics import MATCHING_MODES

    p = sub.add_parser("oracle", help="measure what post-processing alone loses: perfect targets -> polygons -> CSV -> object F1",
                       description="Make every GT image's targets as if a perfect model had output them, post-process them, "
                       "write OUT/submission.csv (one row per GT image) and score it against the GT.")
    p.add_argument("--gt", type=Path, required=True, help="ground truth: a split folder or its COCO JSON")
    p.add_argument("--out", type=Path, required=True, help="folder for submission.csv")
    _add_postprocess_options(p, "watershed")
    p.add_argument("--channels", type=int, choices=(1, 3), default=None, help="default: 3 for watershed, 1 for seed")
    p.add_argument("--blur", type=float, default=0.0, help="Gaussian sigma (px) applied to the perfect output")
    p.add_argument("--matching", choices=MATCHING_MODES, default="one-to-one")
    p.add_argument("--json", type=Path, default=None, help="also write scores and settings as JSON")
    p.add_argument("--force", action="store_true", help="overwrite earlier outputs")
    p.set_defaults(func=_run_oracle)


def _run_oracle(args: argparse.Namespace) -> int:
    from rooftrace.core.files import atomic_write_text
    from rooftrace.evaluation.oracle import run_oracle
    from rooftrace.instances.postprocess import PostprocessSettings

    if args.json is not None and args.json.exists() and not args.force:
        raise RooftraceError(f"{args.json}: already exists; pass --force to overwrite it")
    if args.blur < 0:
        raise RooftraceError(f"--blur {args.blur}: must be >= 0")
    settings = _parse_settings(args.pp, args.settings) or PostprocessSettings()
    score, path = run_oracle(args.gt, args.out, postprocess=args.postprocess, settings=settings, force=args.force,
                             channels=args.channels, matching=args.matching, blur=args.blur)
    print(f"oracle: {args.postprocess} on perfect targets of {args.gt} (blur {args.blur:g} px)")
    print(score.summary())
    print(f"\nsubmission written to {path}")
    if args.json is not None:
        out = {"postprocess": args.postprocess, "settings": settings.to_dict(), "blur": args.blur,
               "channels": args.channels, "score": score.to_json()}
        atomic_write_text(args.json, json.dumps(out, indent=2), force=args.force)
        print(f"scores written to {args.json}")
    return 0


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="footprints for a folder of tiles: submission.csv, GeoJSON, COCO results, masks, overlays",
                       description="Batched inference on every tile of --images (any size), optional flip TTA, "
                       "post-processing, and the BEGC2024 submission with one row for every tile.")
    p.add_argument("--images", type=Path, required=True, help="folder of tiles (.tif, .png, .jpg)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--model", type=Path, default=None,
                   help="model .safetensors, or an .onnx from rooftrace export (default: the shipped model)")
    p.add_argument("--tta", action="store_true", help="average over flips (4 passes)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=None,
                   help="post-processing threads (default: 0 on a CPU of up to 4 cores, else half the cores, at most 8)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (pays off on long runs; ignored for .onnx)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="autocast dtype (default auto: bf16 on GPUs and on CPUs with native bf16, e.g. AVX512-BF16; else fp32)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--workers", type=int, default=2, help="tile-reading processes (default 2)")
    p.add_argument("--gsd", type=float, default=None, metavar="METRES",
                   help="the tiles' pixel size in metres, for tiles that do not say (no GeoTIFF georeference, no tile name); "
                   "overrides what they say. Tiles are resampled to the model's pixel size when it records one")
    p.add_argument("--tms", action="store_true", help="tile names (OAM-<x>-<y>-<z>, <z>/<x>/<y>) count y from the bottom (TMS), not the top (XYZ)")
    _add_postprocess_options(p, None)
    p.add_argument("--no-overlays", action="store_true", help="skip the overlay PNGs")
    p.add_argument("--no-masks", action="store_true", help="skip the instance-mask PNGs")
    p.add_argument("--force", action="store_true", help="write into an --out folder that already holds files")
    p.add_argument("--resume", action="store_true",
                   help="finish an unfinished (killed) run in --out: tiles it finished are not predicted again")
    p.set_defaults(func=_run_predict)


def _default_model(model: Path | None) -> Path:
    if model is not None:
        return model
    from rooftrace.models.files import shipped_model

    return shipped_model()


def _run_predict(args: argparse.Namespace) -> int:
    from rooftrace.inference.predict import predict_folder

    if args.batch_size < 1:
        raise RooftraceError(f"--batch-size {args.batch_size}: must be at least 1")
    if args.threads is not None and args.threads < 0:
        raise RooftraceError(f"--threads {args.threads}: must be 0 or more")
    if args.workers < 0:
        raise RooftraceError(f"--workers {args.workers}: must be 0 (read tiles in the main process) or more")
    check_device(args.device)
    result = predict_folder(args.images, args.out, _default_model(args.model), batch_size=args.batch_size, tta=args.tta,
                            device=args.device, workers=args.workers, method=args.postprocess,
                            settings=_parse_settings(args.pp, args.settings), write_masks=not args.no_masks,
                            write_overlays=not args.no_overlays, force=args.force, threads=args.threads,
                            compile=args.compile, precision=args.precision, resume=args.resume, gsd=args.gsd, tms=args.tms)
    print(result.summary())
    return 1 if result.n_skipped else 0


def _add_tune(sub: argparse._SubParsersAction) -> None:
    from rooftrace.instances.postprocess import POSTPROCESSORS

    p = sub.add_parser("tune", help="search the post-processing thresholds that maximise object F1 on a validation split",
                       description="Runs the model once over SPLIT, searches the post-processing settings, and saves "
                       "the best beside the model (<model>.postprocess.json), where predict picks them up.")
    p.add_argument("--model", type=Path, required=True, help="model .safetensors")
    p.add_argument("--split", type=Path, required=True, help="validation split folder (image/ and <split>.json)")
    p.add_argument("--postprocess", choices=sorted(POSTPROCESSORS), default="watershed")
    p.add_argument("--tta", action="store_true", help="tune on flip-TTA probabilities")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="autocast dtype (default auto: bf16 on GPUs and on CPUs with native bf16, e.g. AVX512-BF16; else fp32)")
    p.add_argument("--force", action="store_true", help="replace settings already saved beside the model")
    p.set_defaults(func=_run_tune)


def _run_tune(args: argparse.Namespace) -> int:
    from rooftrace.inference.tune import tune

    check_device(args.device)
    print(tune(args.model, args.split, method=args.postprocess, tta=args.tta, device=args.device,
               precision=args.precision, force=args.force).summary())
    return 0


def _add_report(sub: argparse._SubParsersAction) -> None:
    from rooftrace.evaluation.metrics import MATCHING_MODES

    p = sub.add_parser("report", help="an HTML report: scores, per-image F1, tiles with TP/FP/missed buildings drawn",
                       description="Score PRED against GT and write REPORT/index.html with a picture of every tile.")
    p.add_argument("--pred", type=Path, required=True, help="a rooftrace predict output folder, or predictions in any format")
    p.add_argument("--gt", type=Path, required=True, help="ground truth (COCO gives the tile files too)")
    p.add_argument("--out", type=Path, default=None, help="report folder (default: PRED/report)")
    p.add_argument("--images", type=Path, default=None, help="tile folder, when the ground truth does not name the files")
    p.add_argument("--iou", type=float, default=0.5)
    p.add_argument("--matching", choices=MATCHING_MODES, default="one-to-one")
    p.add_argument("--title", default="rooftrace report")
    p.add_argument("--force", action="store_true", help="replace an existing report")
    p.set_defaults(func=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    from rooftrace.evaluation.report import build_report

    print(build_report(args.pred, args.gt, args.out, images=args.images, iou=args.iou, matching=args.matching,
                       title=args.title, force=args.force).summary())
    return 0


def _parse_stretch(text: str) -> tuple[float, float]:
    """Stretch percentiles from ``LOW,HIGH`` (e.g. ``2,98``)."""
    low, sep, high = text.partition(",")
    try:
        lo, hi = float(low), float(high)
    except ValueError:
        raise RooftraceError(f"--stretch {text!r}: expected LOW,HIGH percentiles such as 2,98") from None
    if not sep or not 0.0 <= lo < hi <= 100.0:
        raise RooftraceError(f"--stretch {text!r}: expected LOW,HIGH percentiles with 0 <= LOW < HIGH <= 100")
    return lo, hi


def _add_band_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bands", default=None, metavar="R,G,B",
                   help="bands read as red, green, blue, e.g. 1,1,1 for a panchromatic band or 1,2,3 for the first three "
                   "of a multispectral image (needed unless the raster has 3 bands, or 3 and alpha)")
    p.add_argument("--stretch", default="2,98", metavar="LOW,HIGH",
                   help="percentiles of the per-scene, per-band stretch of rasters that are not 8-bit (default 2,98)")


def _add_predict_scene(sub: argparse._SubParsersAction) -> None:
    from rooftrace.imagery.windows import DEFAULT_OVERLAP, DEFAULT_TILE
    from rooftrace.scenes.blocks import DEFAULT_BLOCK, DEFAULT_MARGIN

    p = sub.add_parser(
        "predict-scene",
        help="footprints for large georeferenced scenes: GeoTIFF in, GeoPackage or GeoJSON in the scene's CRS out",
        description="Reads each scene window by window (memory bounded by --tile and --block, not by the scene), stitches "
        "the windows' probabilities, post-processes them in blocks so that every building comes out once, neither cut nor "
        "duplicated, and writes one polygon per building with its area (map units) and score, in the raster's CRS. "
        "One scene: --out OUT.gpkg or OUT.geojson. Several scenes (files, folders, .txt lists of paths): --out is a "
        "folder of <scene>.gpkg, and --shard I/N takes worker I's share of N (one process per GPU or node).",
    )
    p.add_argument("scenes", nargs="+", type=Path, metavar="SCENE", help="GeoTIFF (or any GDAL raster), folder of them, or .txt list")
    p.add_argument("--out", type=Path, required=True, help="OUT.gpkg or OUT.geojson for one scene; else an output folder")
    p.add_argument("--model", type=Path, default=None, help="model .safetensors (default: the shipped model)")
    p.add_argument("--tile", type=int, default=DEFAULT_TILE, help=f"window size in pixels (default {DEFAULT_TILE})")
    p.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP, help=f"overlap of neighbouring windows in pixels (default {DEFAULT_OVERLAP})")
    p.add_argument("--batch-size", type=int, default=4, help="windows per forward pass (default 4)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--tta", action="store_true", help="average over flips (4 passes)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="autocast dtype (default auto: bf16 on GPUs and on CPUs with native bf16, e.g. AVX512-BF16; else fp32)")
    p.add_argument("--gsd", type=float, default=None, metavar="METRES",
                   help="the scene's pixel size in metres, for a scene without a CRS; overrides its transform's. Scenes are read "
                   "resampled to the model's pixel size when it records one")
    _add_band_options(p)
    _add_postprocess_options(p, None)
    p.add_argument("--block", type=int, default=DEFAULT_BLOCK, help=f"post-processing block in pixels (default {DEFAULT_BLOCK})")
    p.add_argument("--margin", type=int, default=DEFAULT_MARGIN, help=f"pixels read around each block (default {DEFAULT_MARGIN})")
    p.add_argument("--probabilities", type=Path, default=None, help="also keep the stitched probabilities as a GeoTIFF (one scene)")
    p.add_argument("--format", choices=("gpkg", "geojson"), default="gpkg", help="output format when --out is a folder (default gpkg)")
    p.add_argument("--shard", default=None, metavar="I/N", help="take scenes I, I+N, I+2N, ... of the sorted list (0 <= I < N)")
    p.add_argument("--force", action="store_true", help="overwrite outputs; in folder mode, redo scenes whose output exists")
    d = p.add_argument_group("Dask (pip install 'rooftrace[dask]'): one task per scene, big scenes split across workers, "
                             "OUT/scenes/<scene>.gpkg and one merged layer OUT/footprints.gpkg")
    d.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run on an existing Dask cluster: tcp://host:8786, or a scheduler file")
    d.add_argument("--dask-workers", type=int, default=None, metavar="N",
                   help="run on a local Dask cluster of N worker processes (one thread each)")
    d.add_argument("--crs", default=None, help="CRS of the merged layer (default: the first scene's); other scenes are reprojected")
    d.add_argument("--split-above", type=int, default=None, metavar="PIXELS",
                   help="split scenes of more pixels (width x height) across workers (default 64,000,000)")
    p.set_defaults(func=_run_predict_scene)


def _run_predict_scene(args: argparse.Namespace) -> int:
    from rooftrace.scenes.batch import predict_scenes
    from rooftrace.scenes.predict import predict_scene
    from rooftrace.scenes.writers import OUTPUT_DRIVERS

    if args.batch_size < 1:
        raise RooftraceError(f"--batch-size {args.batch_size}: must be at least 1")
    check_device(args.device)
    common = dict(tile=args.tile, overlap=args.overlap, batch_size=args.batch_size, bands=args.bands,
                  stretch=_parse_stretch(args.stretch), method=args.postprocess, settings=_parse_settings(args.pp, args.settings),
                  block=args.block, margin=args.margin, device=args.device, tta=args.tta, precision=args.precision, force=args.force,
                  gsd=args.gsd)
    if args.out.suffix and args.out.suffix.lower() not in OUTPUT_DRIVERS and not args.out.is_dir():
        raise RooftraceError(f"--out {args.out}: unknown output format {args.out.suffix!r}; use OUT.gpkg or OUT.geojson "
                             "for one scene, or a folder")
    if args.out.suffix.lower() in OUTPUT_DRIVERS:
        one = args.scenes[0]
        if (len(args.scenes) != 1 or one.is_dir() or one.suffix.lower() == ".txt" or args.shard is not None
                or args.scheduler is not None or args.dask_workers is not None):
            raise RooftraceError(f"--out {args.out}: a file holds one scene; for several scenes or --shard, give a folder as --out")
        result = predict_scene(one, args.out, _default_model(args.model), probabilities=args.probabilities, **common)
        print(result.summary())
        return 0
    if args.probabilities is not None:
        raise RooftraceError("--probabilities keeps one scene's probabilities: give one scene and --out OUT.gpkg")
    if args.scheduler is not None or args.dask_workers is not None:
        return _run_predict_scene_dask(args, common)
    if args.crs is not None or args.split_above is not None:
        raise RooftraceError("--crs and --split-above go with --scheduler or --dask-workers")
    done = predict_scenes(args.scenes, args.out, _default_model(args.model), shard=args.shard, fmt=args.format, **common)
    for r in done.results:
        print(r.summary())
    print(done.summary())
    if done.failed:
        print(f"rooftrace predict-scene: {len(done.failed)} scene(s) failed and were skipped (listed above); exit status 1",
              file=sys.stderr)
    return 1 if done.failed else 0


def _run_predict_scene_dask(args: argparse.Namespace, common: dict) -> int:
    from rooftrace.scenes.distributed import DEFAULT_SPLIT_ABOVE, predict_scenes_dask

    if args.scheduler is not None and args.dask_workers is not None:
        raise RooftraceError("--scheduler and --dask-workers: give one (an existing cluster, or a local one of N workers)")
    if args.shard is not None:
        raise RooftraceError("--shard splits the scenes without a coordinator; with --scheduler or --dask-workers, Dask does")
    if args.format != "gpkg":
        raise RooftraceError("--format geojson: with Dask, per-scene outputs and the merged layer are GeoPackages")
    if args.dask_workers is not None and args.dask_workers < 1:
        raise RooftraceError(f"--dask-workers {args.dask_workers}: must be at least 1")
    split = DEFAULT_SPLIT_ABOVE if args.split_above is None else args.split_above
    if split < 1:
        raise RooftraceError(f"--split-above {split}: must be at least 1 pixel")
    done = predict_scenes_dask(args.scenes, args.out, _default_model(args.model), scheduler=args.scheduler,
                               n_workers=args.dask_workers, crs=args.crs, split_above=split, **common)
    for r in done.results:
        print(r.summary())
    print(done.summary())
    if done.failed:
        print(f"rooftrace predict-scene: {len(done.failed)} scene(s) failed and were skipped (listed above); exit status 1",
              file=sys.stderr)
    return 1 if done.failed else 0


def _add_prepare_scenes(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare-scenes",
        help="cut georeferenced scenes and their GeoJSON labels into a BEGC-style training split",
        description="Cuts each SCENE into --tile x --tile GeoTIFF tiles (each with its own georeference) in "
        "SPLIT_DIR/image/<scene>_<row>_<col>.tif, and writes SPLIT_DIR/<name>.json (COCO, BEGC2024 layout, a source per "
        "image) with the labels reprojected to the raster's CRS and clipped to each tile. rooftrace prepare and "
        "rooftrace train take the folder as it is.",
    )
    p.add_argument("inputs", nargs="+", type=Path, metavar="SCENE_AND_LABELS",
                   help="SCENE LABELS pairs: a raster and its footprints (GeoJSON or GeoPackage, any CRS)")
    p.add_argument("--out", type=Path, required=True, help="split folder to write (its name names the COCO file)")
    p.add_argument("--tile", type=int, default=512, help="tile size in pixels (default 512)")
    _add_band_options(p)
    p.add_argument("--labels-crs", default=None, metavar="CRS",
                   help="CRS of the labels when a file declares none or a wrong one, e.g. EPSG:32645")
    p.add_argument("--source", default=None, help="COCO source of every tile (default: each scene's file stem)")
    p.add_argument("--force", action="store_true", help="write into a folder that already holds a split")
    p.set_defaults(func=_run_prepare_scenes)


def _run_prepare_scenes(args: argparse.Namespace) -> int:
    from rooftrace.prepare.scenes import prepare_scenes

    if len(args.inputs) % 2:
        raise RooftraceError(f"prepare-scenes takes SCENE LABELS pairs; got {len(args.inputs)} paths")
    pairs = list(zip(args.inputs[::2], args.inputs[1::2]))
    result = prepare_scenes(pairs, args.out, tile=args.tile, bands=args.bands, stretch=_parse_stretch(args.stretch),
                            source=args.source, force=args.force, labels_crs=args.labels_crs)
    print(result.summary())
    return 0


def _add_prepare_chips(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare-chips",
        help="chips (fAIr/OAM web-map tiles or georeferenced rasters) + one OSM GeoJSON -> train/val/test splits",
        description="Reads every chip under CHIPS_DIR (georeferenced rasters in any CRS, or PNG/JPEG/WebP named "
        "OAM-<x>-<y>-<z> or laid out <z>/<x>/<y>), reprojects the --labels footprints (GeoJSON or GeoPackage, any CRS) "
        "into each chip's pixels, optionally resamples chips and labels to --gsd metres a pixel, splits the chips by area "
        "(whole blocks of neighbouring chips) and writes OUT/train, OUT/val and OUT/test in the BEGC2024 layout "
        "(image/<chip>.png and <split>.json), which rooftrace prepare, train and evaluate take as they are.",
    )
    p.add_argument("chips_dir", type=Path, metavar="CHIPS_DIR", help="folder of chips (searched recursively)")
    p.add_argument("--labels", type=Path, required=True, help="building footprints: GeoJSON or GeoPackage, any CRS")
    p.add_argument("--out", type=Path, required=True, help="output folder (gets train/, val/, test/)")
    p.add_argument("--gsd", type=float, default=None, metavar="METRES",
                   help="resample every chip and its labels to this pixel size (needed for chips of several zoom levels)")
    p.add_argument("--val", type=float, default=0.15, help="validation share of the chips, split by area (default 0.15)")
    p.add_argument("--test", type=float, default=0.15, help="test share of the chips, split by area (default 0.15)")
    p.add_argument("--block", type=int, default=None, metavar="N",
                   help="split in blocks of N x N neighbouring chips (a power of two; default: 4, 2 or 1, the largest "
                   "that gives enough blocks for the shares)")
    p.add_argument("--block-zoom", type=int, default=None, metavar="Z",
                   help="tile-named chips: blocks are the web-map tiles of zoom Z holding them")
    p.add_argument("--aoi", type=Path, default=None,
                   help="polygon file of the mapped area: chips without buildings inside it are kept as true negatives, "
                   "those outside left out (default: the labels' convex hull grown by half a chip)")
    p.add_argument("--empty", choices=("auto", "keep", "skip"), default="auto",
                   help="chips without buildings: auto (by the mapped area, default), keep all, skip all")
    p.add_argument("--tms", action="store_true", help="chip names count y from the bottom (TMS) instead of the top (XYZ)")
    p.add_argument("--labels-crs", default=None, metavar="CRS",
                   help="CRS of the labels when the file declares none or a wrong one, e.g. EPSG:32645")
    p.add_argument("--source", default=None, help="COCO source of every image (default: the name of CHIPS_DIR's parent)")
    p.add_argument("--seed", type=int, default=0, help="seed of the assignment of blocks to splits (default 0)")
    p.add_argument("--force", action="store_true", help="overwrite splits already in --out")
    p.set_defaults(func=_run_prepare_chips)


def _run_prepare_chips(args: argparse.Namespace) -> int:
    from rooftrace.prepare.chips import prepare_chips

    result = prepare_chips(args.chips_dir, args.labels, args.out, gsd=args.gsd, val=args.val, test=args.test,
                           block=args.block, block_zoom=args.block_zoom, aoi=args.aoi, empty=args.empty, tms=args.tms,
                           labels_crs=args.labels_crs, source=args.source, seed=args.seed, force=args.force)
    print(result.summary())
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a model to ONNX (verified against PyTorch); optionally int8 for the CPU",
                       description="Write --onnx OUT.onnx from --model M.safetensors: dynamic batch, height and width, opset >= 17, "
                       "and the normalisation, channels, config and tuned post-processing settings in its metadata, so that "
                       "`rooftrace predict --model OUT.onnx` needs nothing else. ONNX Runtime and PyTorch are compared on "
                       "random inputs before anything is written.")
    p.add_argument("--model", type=Path, default=None, help="model .safetensors (default: the shipped model)")
    p.add_argument("--onnx", type=Path, required=True, help="ONNX file to write (.onnx)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, at least 17 (default 17)")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest allowed |ONNX Runtime - PyTorch| difference of probabilities (default 1e-4)")
    p.add_argument("--int8", action="store_true", help="experimental: a statically quantised int8 model for the CPU (see README)")
    p.add_argument("--calibration", type=Path, default=None,
                   help="with --int8: folder of tiles to calibrate on (default: the training split in the model's config)")
    p.add_argument("--calibration-tiles", type=int, default=8, help="with --int8: how many of its tiles (default 8)")
    p.add_argument("--force", action="store_true", help="overwrite --onnx")
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from rooftrace.inference.export import export_onnx

    if args.calibration_tiles < 1:
        raise RooftraceError(f"--calibration-tiles {args.calibration_tiles}: must be at least 1")
    if args.calibration is not None and not args.int8:
        raise RooftraceError("--calibration goes with --int8")
    result = export_onnx(_default_model(args.model), args.onnx, opset=args.opset, int8=args.int8, calibration=args.calibration,
                         calibration_tiles_n=args.calibration_tiles, tolerance=args.tolerance, force=args.force)
    print(result.summary())
    return 0


def _add_import_weights(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import-weights", help="turn another program's checkpoint (.pth state_dict or .safetensors) into a rooftrace model",
                       description="Reads CHECKPOINT (a .safetensors of bare tensors, or with --trust-pickle a pickle .pth/.pt read "
                       "with torch.load(weights_only=True)), checks that its weights fit the architecture of --config exactly, and "
                       "writes --out as a rooftrace model file (safetensors with config and normalisation, SHA-256 beside it).")
    p.add_argument("checkpoint", type=Path, help="the checkpoint to import")
    p.add_argument("--config", type=Path, required=True, help="config of its architecture, e.g. configs/unet-r34.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config entry, e.g. --set data.channels=[footprint] for a one-output model")
    p.add_argument("--out", type=Path, required=True, help="model file to write (.safetensors)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="read a pickle checkpoint (with torch.load(weights_only=True)); only for files you trust")
    p.add_argument("--half", action="store_true", help="store the weights as fp16")
    p.add_argument("--force", action="store_true", help="overwrite --out")
    p.set_defaults(func=_run_import_weights)


def _run_import_weights(args: argparse.Namespace) -> int:
    from rooftrace.config import load_config
    from rooftrace.models.checkpoints import import_checkpoint

    if args.out.suffix.lower() != ".safetensors":
        raise RooftraceError(f"--out {args.out}: rooftrace model files end in .safetensors")
    path = import_checkpoint(args.checkpoint, args.out, load_config(args.config, args.overrides),
                             trust_pickle=args.trust_pickle, half=args.half, force=args.force)
    print(f"imported {args.checkpoint} -> {path} (SHA-256 in {path.name}.sha256)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand (used by :func:`main` and the docs)."""
    parser = argparse.ArgumentParser(
        prog="rooftrace",
        description="Building footprints from aerial and satellite imagery: prepare, evaluate, and more.",
    )
    parser.add_argument("--version", action="version", version=f"rooftrace {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_prepare(sub)
    _add_evaluate(sub)
    _add_convert(sub)
    _add_train(sub)
    _add_oracle(sub)
    _add_predict(sub)
    _add_tune(sub)
    _add_report(sub)
    _add_predict_scene(sub)
    _add_prepare_scenes(sub)
    _add_prepare_chips(sub)
    _add_export(sub)
    _add_import_weights(sub)
    for name, p in sub.choices.items():
        if name not in ("export", "import-weights"):
            p.add_argument("--strict", action="store_true",
                           help="stop at the first bad record, tile or scene instead of skipping it and reporting it at the end")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    0: done, nothing skipped; 1: done, but some records, tiles or scenes were skipped (each is
    listed in the output); 2: stopped by bad input or an output that cannot be written (one
    message naming the file, no traceback; with ``--strict``, also the first skipped item);
    130: interrupted.
    """
    from rooftrace.core.errors import strict_mode, tally_skips

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with strict_mode(getattr(args, "strict", False)), tally_skips() as tally:
            code = int(args.func(args) or 0)
        if tally.n and code in (0, 1):
            print(f"rooftrace {args.command}: {tally.n} item(s) skipped (listed above); exit status 1", file=sys.stderr)
            code = 1
        return code
    except RooftraceError as exc:
        print(f"rooftrace {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `rooftrace evaluate ... | head`
        return 0
    except OSError as exc:  # an output that cannot be written, a disk that is full
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"rooftrace {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rooftrace {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
