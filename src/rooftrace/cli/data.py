"""Subcommands about labels and imagery: prepare, evaluate, convert, report, prepare-scenes, prepare-chips."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rooftrace.cli.options import (
    IOU_HELP,
    MATCHING_HELP,
    MATCHING_MODES,
    LabelWriterChoices,
    RegistryHelpFormatter,
    add_band_options,
    add_chip_options,
    add_layer_option,
    add_model_gsd_option,
    check_io,
    parse_stretch,
)
from rooftrace.core.errors import RooftraceError


def add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="validate a split and write training targets (footprint/boundary/contact PNGs) and previews",
        description="Read SPLIT_DIR/<split>.json (COCO, BEGC2024 layout), report what was repaired or dropped, "
        "and write OUT/targets, OUT/instances, OUT/masks, OUT/previews and OUT/summary.json.",
    )
    p.add_argument("split_dir", type=Path, help="split folder holding image/ and <split>.json")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--boundary-width", type=int, default=None, metavar="PX",
                   help="boundary band width in pixels (default 2: the inner two pixels of each building)")
    p.add_argument("--contact-width", type=int, default=None, metavar="PX",
                   help="contact reach in pixels: gaps up to 2 x PX - 1 between buildings are flagged (default 3)")
    p.add_argument("--previews", type=int, default=8, help="number of preview overlays to draw (default 8)")
    p.add_argument("--force", action="store_true", help="overwrite earlier outputs in --out")
    p.set_defaults(func=_run_prepare)


def _run_prepare(args: argparse.Namespace) -> int:
    check_io(args, ("split_dir",), (), ("out",))
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


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score predictions against ground truth (object-wise F1 as BEGC2024, and pixel metrics)",
        description="GT and PRED may each be COCO JSON, COCO results, a BEGC2024 CSV, a SpaceNet CSV, "
        "GeoJSON/GeoPackage or a folder of masks; the format is detected from the content.",
    )
    p.add_argument("--gt", type=Path, required=True, help="ground-truth labels")
    p.add_argument("--pred", type=Path, required=True, help="predicted labels")
    p.add_argument("--iou", type=float, default=0.5, help=IOU_HELP)
    p.add_argument("--matching", choices=MATCHING_MODES, default="one-to-one", help=MATCHING_HELP)
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the scores, per image too, as JSON here (default: none)")
    p.add_argument("--gt-raster", type=Path, default=None, metavar="RASTER",
                   help="GeoTIFF that map-coordinate GT belongs to: scores in its pixels, pixel metrics too (default: GT and "
                   "predictions in map coordinates are scored as one scene)")
    p.add_argument("--pred-raster", type=Path, default=None, metavar="RASTER",
                   help="GeoTIFF that map-coordinate predictions belong to (default --gt-raster)")
    p.add_argument("--gt-crs", default=None, metavar="CRS",
                   help="CRS of GeoJSON/GeoPackage GT when the file declares none or a wrong one, e.g. EPSG:32645 (default: the file\'s own)")
    p.add_argument("--pred-crs", default=None, metavar="CRS",
                   help="CRS of GeoJSON/GeoPackage predictions when the file declares none or a wrong one (default: the file\'s own)")
    p.add_argument("--images", type=Path, default=None, metavar="DIR", help="image folder, when PRED is a folder of masks (default: none)")
    p.add_argument("--no-pixel", action="store_true", help="skip pixel metrics")
    p.add_argument("--force", action="store_true", help="overwrite an existing --json file")
    add_layer_option(p)
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    check_io(args, ("gt", "pred", "gt_raster", "pred_raster"), ("json",))
    from rooftrace.core.files import atomic_write_text
    from rooftrace.evaluation.metrics import evaluate_labels
    from rooftrace.evaluation.overlap import check_overlap
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
    check_overlap(gt, pred, args.gt, args.pred)
    score = evaluate_labels(gt, pred, iou=args.iou, matching=args.matching, pixel=not args.no_pixel)
    print()
    print(score.summary())
    if args.json is not None:
        atomic_write_text(args.json, json.dumps(score.to_json(), indent=2), force=args.force)
        print(f"\nscores written to {args.json}")
    return 0


def add_convert(sub: argparse._SubParsersAction) -> None:
    # The formats are the label-format registry's: the choices and the {placeholders} are read from it when needed.
    p = sub.add_parser(
        "convert",
        # The list of commands names no format: `rooftrace --help` must not import every label reader.
        help="convert labels between formats (COCO, BEGC2024 CSV, GeoJSON, ...: `rooftrace convert --help` lists them)",
        description="Read SRC in any supported format and write DST in the format given by --to "
        "(default from DST's suffix: {label suffix defaults}).",
        formatter_class=RegistryHelpFormatter,
    )
    p.add_argument("src", type=Path, help="labels to read (format detected from the content)")
    p.add_argument("dst", type=Path, help="file to write")
    p.add_argument("--to", choices=LabelWriterChoices(), default=None, metavar="FORMAT",
                   help="output format (default from DST's suffix); it must fit the suffix: {label suffix rules}")
    p.add_argument("--raster", type=Path, default=None, help="GeoTIFF that map-coordinate SRC belongs to (default: none; needed for pixel formats)")
    p.add_argument("--labels-crs", default=None, metavar="CRS",
                   help="CRS of a GeoJSON/GeoPackage SRC when the file declares none or a wrong one, e.g. EPSG:32645 (default: the file\'s own)")
    p.add_argument("--images", type=Path, default=None,
                   help="image folder: every image in it gets a row in a BEGC2024 CSV; pairs a mask folder with its images (default: none)")
    p.add_argument("--force", action="store_true", help="overwrite DST")
    add_layer_option(p)
    p.set_defaults(func=_run_convert)


def _run_convert(args: argparse.Namespace) -> int:
    check_io(args, ("src", "raster"), ("dst",))
    from rooftrace.labels.formats import read_labels, write_labels, writer_for

    fmt = writer_for(args.dst, args.to)
    ls = read_labels(args.src, raster=args.raster, images=args.images, crs=args.labels_crs)
    print(ls.report.summary())
    write_labels(ls, args.dst, fmt, images=args.images, force=args.force, source=args.src)
    print(f"{ls.n_footprints} footprints of {len(ls)} images written to {args.dst} ({fmt.name})")
    return 0


def add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="an HTML report: tiles with TP/FP/missed buildings and scores, or a scene with an offline map",
        description="Tiles: score PRED against GT and write REPORT/index.html with a picture of every tile (true "
        "positives, false positives, missed buildings, scores). Scene (--raster): PRED is a predict-scene GeoPackage "
        "or GeoJSON; REPORT/index.html shows the figures (with --gt, labels in map coordinates, any CRS), a quicklook "
        "and an interactive map that works offline (click a building for its id, score and area).")
    p.add_argument("--pred", type=Path, required=True,
                   help="a rooftrace predict output folder, predictions in any format, or a predict-scene output")
    p.add_argument("--gt", type=Path, default=None, help="ground truth (COCO gives the tile files too); optional with --raster "
                   "(default: none, the report shows the buildings unscored)")
    p.add_argument("--raster", type=Path, default=None, metavar="SCENE",
                   help="the scene's raster: write a scene report with a map (default: none, a tile report)")
    p.add_argument("--out", type=Path, default=None, help="report folder (default: PRED/report, or report beside PRED)")
    p.add_argument("--images", type=Path, default=None, metavar="DIR",
                   help="tile folder, when the ground truth does not name the files (default: the folder the labels name)")
    p.add_argument("--bands", default=None, metavar="R,G,B", help="scene band mapping (default 1,1,1 for one band)")
    p.add_argument("--labels-crs", default=None, metavar="CRS", help="CRS of --gt when its file declares none or a wrong one (default: the file's)")
    p.add_argument("--iou", type=float, default=0.5, help=IOU_HELP)
    p.add_argument("--matching", choices=MATCHING_MODES, default="one-to-one", help=MATCHING_HELP)
    p.add_argument("--title", default=None, help="the report's title (default: from the inputs' names)")
    p.add_argument("--force", action="store_true", help="replace an existing report")
    add_layer_option(p)
    p.set_defaults(func=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    from rooftrace.evaluation.report import build_report

    print(build_report(args.pred, args.gt, args.out, images=args.images, raster=args.raster, bands=args.bands,
                       labels_crs=args.labels_crs, iou=args.iou, matching=args.matching, title=args.title,
                       force=args.force).summary())
    return 0


def add_prepare_scenes(sub: argparse._SubParsersAction) -> None:
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
    add_band_options(p)
    p.add_argument("--labels-crs", default=None, metavar="CRS",
                   help="CRS of the labels when a file declares none or a wrong one, e.g. EPSG:32645 (default: the file\'s own)")
    p.add_argument("--source", default=None, help="COCO source of every tile (default: each scene's file stem)")
    p.add_argument("--force", action="store_true", help="write into a folder that already holds a split")
    add_layer_option(p)
    p.set_defaults(func=_run_prepare_scenes)


def _run_prepare_scenes(args: argparse.Namespace) -> int:
    from rooftrace.prepare.scenes import prepare_scenes

    if len(args.inputs) % 2:
        raise RooftraceError(f"prepare-scenes takes SCENE LABELS pairs; got {len(args.inputs)} paths")
    pairs = list(zip(args.inputs[::2], args.inputs[1::2]))
    result = prepare_scenes(pairs, args.out, tile=args.tile, bands=args.bands, stretch=parse_stretch(args.stretch),
                            source=args.source, force=args.force, labels_crs=args.labels_crs)
    print(result.summary())
    return 0


def add_prepare_chips(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare-chips",
        help="chips (fAIr/OAM web-map tiles or georeferenced rasters) + one OSM GeoJSON -> train/val/test splits",
        description="Reads every chip under CHIPS_DIR (georeferenced rasters in any CRS, or PNG/JPEG/WebP named "
        "OAM-<x>-<y>-<z> or laid out <z>/<x>/<y>), reprojects the --labels footprints (GeoJSON or GeoPackage, any CRS) "
        "into each chip's pixels, optionally resamples chips and labels to --model-gsd metres a pixel, splits the chips by area "
        "(whole blocks of neighbouring chips) and writes OUT/train, OUT/val and OUT/test in the BEGC2024 layout "
        "(image/<chip>.png and <split>.json), which rooftrace prepare, train and evaluate take as they are.",
    )
    p.add_argument("chips_dir", type=Path, metavar="CHIPS_DIR", help="folder of chips (searched recursively)")
    p.add_argument("--labels", type=Path, required=True, help="building footprints: GeoJSON or GeoPackage, any CRS")
    p.add_argument("--out", type=Path, required=True, help="output folder (gets train/, val/, test/)")
    add_model_gsd_option(p, "resample every chip and its labels to this pixel size in metres, the one the model will train at "
                         "(needed for chips of several zoom levels; default: as they are)")
    p.add_argument("--val", type=float, default=0.15, help="validation share of the chips, split by area (default 0.15)")
    p.add_argument("--test", type=float, default=0.15, help="test share of the chips, split by area (default 0.15)")
    add_chip_options(p)
    p.add_argument("--source", default=None, help="COCO source of every image (default: the name of CHIPS_DIR's parent)")
    p.add_argument("--seed", type=int, default=0, help="seed of the assignment of blocks to splits (default 0)")
    p.add_argument("--shift-labels", default=None, metavar="EAST,NORTH",
                   help="move every label this many metres east and north before cutting it into chips (labels traced over "
                   "other imagery; default: none)")
    p.add_argument("--align-labels", action="store_true",
                   help="estimate the labels' shift from the imagery per block with --model's footprint probabilities, report "
                   "it, and prepare the chips again with the labels moved back when the shift is clear; also flags blocks "
                   "whose labels look incomplete (needs the training extra; default: off)")
    p.add_argument("--model", default="shipped", metavar="PATH|shipped",
                   help="with --align-labels: the model whose probabilities are compared with the labels (default shipped)")
    p.add_argument("--force", action="store_true", help="overwrite splits already in --out")
    add_layer_option(p)
    p.set_defaults(func=_run_prepare_chips)


def parse_shift(text: str | None) -> tuple[float, float] | None:
    """``EAST,NORTH`` metres -> ``(east, north)``."""
    if text is None:
        return None
    east, sep, north = text.partition(",")
    try:
        return float(east), float(north)
    except ValueError:
        raise RooftraceError(f"--shift-labels {text!r}: expected EAST,NORTH in metres, such as 2.5,-1") from None


def _run_prepare_chips(args: argparse.Namespace) -> int:
    check_io(args, ("chips_dir", "labels", "aoi"), (), ("out",))
    from rooftrace.prepare.chips import prepare_chips

    options = dict(model_gsd=args.model_gsd, val=args.val, test=args.test, block=args.block, block_zoom=args.block_zoom, aoi=args.aoi,
                   empty=args.empty, tms=args.tms, labels_crs=args.labels_crs, source=args.source, seed=args.seed,
                   label_shift=parse_shift(args.shift_labels), balance=args.balance, force=args.force)
    if args.align_labels:
        from rooftrace.training.alignment import align_chips

        aligned = align_chips(args.chips_dir, args.labels, args.out, args.model, **options)
        print(aligned.chips.summary())
        print(aligned.summary())
        return 0
    print(prepare_chips(args.chips_dir, args.labels, args.out, **options).summary())
    return 0
