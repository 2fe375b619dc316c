"""The ``rooftrace`` command line: one program, one thin subcommand per library function.

Every subcommand reads its arguments, calls one function a notebook user could call directly,
and prints what it did. Errors about the user's input (:class:`RooftraceError`) are printed as one
message without a traceback, with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from . import __version__
from .labels import RooftraceError


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

    from .prepare import prepare_split
    from .targets import TargetSettings

    settings = TargetSettings()
    if args.boundary_width is not None:
        settings = replace(settings, boundary_width=args.boundary_width)
    if args.contact_width is not None:
        settings = replace(settings, contact_width=args.contact_width)
    result = prepare_split(args.split_dir, args.out, settings=settings, n_previews=args.previews, force=args.force)
    print(result.summary())
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    from .metrics import MATCHING_MODES

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
    p.add_argument("--images", type=Path, default=None, help="image folder, when PRED is a folder of masks")
    p.add_argument("--no-pixel", action="store_true", help="skip pixel metrics")
    p.add_argument("--force", action="store_true", help="overwrite an existing --json file")
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from .formats import align_keys, atomic_write_text, read_labels
    from .metrics import evaluate_labels

    if not 0.0 < args.iou <= 1.0:
        raise RooftraceError(f"--iou {args.iou}: must be in (0, 1]")
    if args.json is not None and args.json.exists() and not args.force:
        raise RooftraceError(f"{args.json}: already exists; pass --force to overwrite it")
    gt = read_labels(args.gt, raster=args.gt_raster)
    # Predictions in map coordinates belong to the same scene as the ground truth unless told otherwise.
    pred = read_labels(args.pred, raster=args.pred_raster or args.gt_raster, images=args.images, check_images=False)
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
    p.add_argument("--images", type=Path, default=None,
                   help="image folder: every image in it gets a row in a BEGC2024 CSV; pairs a mask folder with its images")
    p.add_argument("--force", action="store_true", help="overwrite DST")
    p.set_defaults(func=_run_convert)


def _run_convert(args: argparse.Namespace) -> int:
    from . import formats

    fmt = args.to or _SUFFIX_FORMAT.get(args.dst.suffix.lower())
    if fmt is None:
        raise RooftraceError(f"{args.dst}: cannot tell the output format from the suffix; pass --to")
    ls = formats.read_labels(args.src, raster=args.raster, images=args.images)
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 bad input, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except RooftraceError as exc:
        print(f"rooftrace {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rooftrace {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `rooftrace evaluate ... | head`
        return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
