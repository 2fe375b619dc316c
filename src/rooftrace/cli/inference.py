"""Subcommands that find buildings: predict (tiles) and predict-scene (large rasters, optionally on Dask)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rooftrace.cli.options import (
    DEFAULT_BLOCK,
    DEFAULT_MARGIN,
    DEFAULT_OVERLAP,
    DEFAULT_TILE,
    MIN_AUTO_BLOCK,
    add_band_options,
    add_input_gsd_option,
    add_postprocess_options,
    add_streams_option,
    default_model,
    parse_settings,
    parse_stretch,
)
from rooftrace.config import check_device
from rooftrace.core.errors import RooftraceError
from rooftrace.gis import formats


def add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="footprints for a folder of tiles: submission.csv, GeoJSON, COCO results, masks, overlays",
                       description="Batched inference on every tile of --images (any size), optional flip TTA, "
                       "post-processing, and the BEGC2024 submission with one row for every tile.")
    p.add_argument("tiles", type=Path, nargs="?", default=None, metavar="TILES",
                   help="folder of tiles (.tif, .png, .jpg); one raster of any size goes to predict-scene instead")
    p.add_argument("--images", type=Path, default=None, metavar="TILES", help="the same as TILES, the older spelling (default: TILES)")
    p.add_argument("--out", type=Path, required=True, help="output folder: submission.csv, predictions.geojson/.gpkg, "
                   "predictions.coco.json, masks/, overlays/")
    p.add_argument("--model", type=Path, default=None,
                   help="model .safetensors, or an .onnx from rooftrace export (default: the shipped model)")
    p.add_argument("--tta", action="store_true", help="average over flips (4 passes)")
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="tiles per forward pass (default 8)")
    p.add_argument("--threads", type=int, default=None,
                   help="post-processing threads (default: 0 on a CPU of up to 4 cores, else half the cores, at most 8)")
    add_streams_option(p, "tiles")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (pays off on long runs; ignored for .onnx)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="default auto: bf16 on a GPU; on a CPU the fastest of bf16 (where native), fp32 and ONNX Runtime fp32, "
                        "measured once and cached; or an autocast dtype")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--workers", type=int, default=2, help="tile-reading threads, working ahead of the network (default 2; 0: read in the main thread)")
    add_input_gsd_option(p, "the tiles' pixel size in metres, for tiles that do not say (no GeoTIFF georeference, no tile name); "
                         "overrides what they say (default: each tile's own, else the model's). Tiles are resampled to the model's "
                         "pixel size when it records one")
    p.add_argument("--tms", action="store_true", help="tile names (OAM-<x>-<y>-<z>, <z>/<x>/<y>) count y from the bottom (TMS), not the top (XYZ)")
    add_postprocess_options(p, None)
    p.add_argument("--no-overlays", action="store_true", help="skip the overlay PNGs")
    p.add_argument("--no-masks", action="store_true", help="skip the instance-mask PNGs")
    p.add_argument("--force", action="store_true", help="write into an --out folder that already holds files")
    p.add_argument("--resume", action="store_true",
                   help="finish an unfinished (killed) run in --out: tiles it finished are not predicted again")
    p.set_defaults(func=_run_predict)


def _run_predict(args: argparse.Namespace) -> int:
    from rooftrace.inference.predict import PredictOptions, predict_folder

    if (args.tiles is None) == (args.images is None):
        raise RooftraceError("give the folder of tiles once: rooftrace predict TILES --out OUT (or --images TILES)")
    images = args.tiles if args.tiles is not None else args.images

    if args.batch_size < 1:
        raise RooftraceError(f"--batch-size {args.batch_size}: must be at least 1")
    if args.threads is not None and args.threads < 0:
        raise RooftraceError(f"--threads {args.threads}: must be 0 or more")
    if args.workers < 0:
        raise RooftraceError(f"--workers {args.workers}: must be 0 (read tiles in the main process) or more")
    check_device(args.device)
    options = PredictOptions(batch_size=args.batch_size, tta=args.tta, device=args.device, workers=args.workers,
                             method=args.postprocess, settings=parse_settings(args.pp, args.settings),
                             write_masks=not args.no_masks, write_overlays=not args.no_overlays, force=args.force,
                             threads=args.threads, streams=args.streams, compile=args.compile, precision=args.precision, resume=args.resume,
                             input_gsd=args.input_gsd, tms=args.tms)
    result = predict_folder(images, args.out, default_model(args.model), options)
    print(result.summary())
    return 1 if result.n_skipped else 0


def add_predict_scene(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict-scene",
        help=f"footprints for large georeferenced scenes: GeoTIFF in, {formats.titles()} out",
        description=f"Reads each scene window by window (memory bounded by --tile and --block, not by the scene), stitches "
        "the windows' probabilities, post-processes them in blocks so that every building comes out once, neither cut nor "
        f"duplicated, and writes one polygon per building with its area_m2 (ground square metres) and score: {formats.coordinates_text()}; each file records its provenance (model and SHA-256, post-processing, source raster, version). "
        f"One scene: --out {formats.out_names()}. Several scenes (files, folders, .txt lists of paths): --out is a "
        f"folder of <scene>{formats.FORMATS[formats.DEFAULT_FORMAT].suffix}, and --shard I/N takes worker I's share of N (one process per GPU or node).",
    )
    p.add_argument("scenes", nargs="+", type=Path, metavar="SCENE", help="GeoTIFF (or any GDAL raster), folder of them, or .txt list")
    p.add_argument("--out", type=Path, required=True, help=f"{formats.out_names()} for one scene; else an output folder")
    p.add_argument("--model", type=Path, default=None, help="model .safetensors or .onnx (default: the shipped model)")
    p.add_argument("--tile", type=int, default=DEFAULT_TILE, help=f"window size in pixels (default {DEFAULT_TILE})")
    p.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP, help=f"overlap of neighbouring windows in pixels (default {DEFAULT_OVERLAP})")
    p.add_argument("--batch-size", type=int, default=4, help="windows per forward pass (default 4)")
    add_streams_option(p, "windows")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--tta", action="store_true", help="average over flips (4 passes)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="default auto: bf16 on a GPU; on a CPU the fastest of bf16 (where native), fp32 and ONNX Runtime fp32, "
                        "measured once and cached; or an autocast dtype")
    add_input_gsd_option(p, "the scene's pixel size in metres, for a scene without a CRS; overrides its transform's. Scenes are "
                         "read resampled to the model's pixel size when it records one (default: from the scene's transform)")
    add_band_options(p)
    add_postprocess_options(p, None)
    p.add_argument("--block", type=int, default=None, help=f"post-processing block in pixels (default {DEFAULT_BLOCK}, halved down "
                   f"to {MIN_AUTO_BLOCK} on a scene of fewer blocks than post-processing threads; the buildings are the same "
                   "for any block)")
    p.add_argument("--margin", type=int, default=DEFAULT_MARGIN, help=f"pixels read around each block (default {DEFAULT_MARGIN})")
    p.add_argument("--probabilities", type=Path, default=None, help="also keep the stitched probabilities as a GeoTIFF (one scene; default: not kept)")
    p.add_argument("--format", choices=formats.names(), default=None,
                   help=f"output format when --out is a folder (default {formats.DEFAULT_FORMAT}); one scene's format is --out's suffix")
    p.add_argument("--shard", default=None, metavar="I/N", help="take scenes I, I+N, I+2N, ... of the sorted list (0 <= I < N; default: all scenes)")
    p.add_argument("--force", action="store_true", help="overwrite outputs; in folder mode, redo scenes whose output exists")
    d = p.add_argument_group("Dask (pip install 'rooftrace[dask]'): one task per scene, big scenes split across workers, "
                             f"OUT/scenes/<scene>{formats.FORMATS[formats.DEFAULT_FORMAT].suffix} and one merged layer "
                             f"OUT/footprints{formats.FORMATS[formats.DEFAULT_FORMAT].suffix}")
    d.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run on an existing Dask cluster: tcp://host:8786, or a scheduler file (default: no Dask)")
    d.add_argument("--dask-workers", type=int, default=None, metavar="N",
                   help="run on a local Dask cluster of N worker processes (one thread each; default: no Dask)")
    d.add_argument("--crs", default=None, help="CRS of the merged layer (default: the first scene's); other scenes are reprojected")
    d.add_argument("--split-above", type=int, default=None, metavar="PIXELS",
                   help="split scenes of more pixels (width x height) across workers (default 64,000,000)")
    p.set_defaults(func=_run_predict_scene)


def _run_predict_scene(args: argparse.Namespace) -> int:
    from rooftrace.scenes.batch import predict_scenes
    from rooftrace.scenes.predict import predict_scene

    if args.batch_size < 1:
        raise RooftraceError(f"--batch-size {args.batch_size}: must be at least 1")
    check_device(args.device)
    common = dict(tile=args.tile, overlap=args.overlap, batch_size=args.batch_size, bands=args.bands,
                  stretch=parse_stretch(args.stretch), method=args.postprocess, settings=parse_settings(args.pp, args.settings),
                  block=args.block, margin=args.margin, device=args.device, tta=args.tta, precision=args.precision, force=args.force,
                  input_gsd=args.input_gsd)
    fmt = formats.format_for(args.out)
    if args.out.suffix and fmt is None and not args.out.is_dir():
        raise RooftraceError(f"--out {args.out}: unknown output format {args.out.suffix!r}; use {formats.out_names()} "
                             "for one scene, or a folder")
    if fmt is not None:
        one = args.scenes[0]
        if (len(args.scenes) != 1 or one.is_dir() or one.suffix.lower() == ".txt" or args.shard is not None
                or args.scheduler is not None or args.dask_workers is not None):
            raise RooftraceError(f"--out {args.out}: a file holds one scene; for several scenes or --shard, give a folder as --out")
        if args.crs is not None:
            lonlat = formats.lonlat_format()
            raise RooftraceError(f"--crs {args.crs}: sets the CRS of the merged layer of several scenes on Dask; one scene's "
                                 f"{args.out.name} is written in the scene's own CRS. For longitude/latitude write "
                                 f"{args.out.with_suffix(lonlat.suffix if lonlat else '').name}, or reproject the output (ogr2ogr -t_srs {args.crs})")
        if args.split_above is not None:
            raise RooftraceError("--split-above splits scenes across Dask workers; it goes with --scheduler or --dask-workers")
        if args.format is not None and args.format != fmt.name:
            raise RooftraceError(f"--format {args.format}: the output format of one scene is --out's suffix ({args.out.name}); "
                                 "--format is for an output folder")
        result = predict_scene(one, args.out, default_model(args.model), probabilities=args.probabilities, streams=args.streams,
                               **common)
        print(result.summary())
        return 0
    if args.probabilities is not None:
        raise RooftraceError("--probabilities keeps one scene's probabilities: give one scene and --out "
                             f"OUT{formats.FORMATS[formats.DEFAULT_FORMAT].suffix}")
    if args.scheduler is not None or args.dask_workers is not None:
        if args.streams is not None:
            raise RooftraceError(f"--streams {args.streams}: runs forward passes at once in one process; on Dask each worker "
                                 "runs its own (give the workers threads instead)")
        return _run_predict_scene_dask(args, common)
    if args.crs is not None or args.split_above is not None:
        raise RooftraceError("--crs and --split-above go with --scheduler or --dask-workers")
    done = predict_scenes(args.scenes, args.out, default_model(args.model), shard=args.shard, fmt=args.format or formats.DEFAULT_FORMAT,
                          streams=args.streams, **common)
    return _report_scenes(done)


def _run_predict_scene_dask(args: argparse.Namespace, common: dict) -> int:
    from rooftrace.scenes.distributed import DEFAULT_SPLIT_ABOVE, predict_scenes_dask

    if args.scheduler is not None and args.dask_workers is not None:
        raise RooftraceError("--scheduler and --dask-workers: give one (an existing cluster, or a local one of N workers)")
    if args.shard is not None:
        raise RooftraceError("--shard splits the scenes without a coordinator; with --scheduler or --dask-workers, Dask does")
    from rooftrace.gis.merge import MERGED_FORMAT

    if args.format not in (None, MERGED_FORMAT):
        raise RooftraceError(f"--format {args.format}: with Dask, per-scene outputs and the merged layer are "
                             f"{formats.FORMATS[MERGED_FORMAT].title}s")
    if args.dask_workers is not None and args.dask_workers < 1:
        raise RooftraceError(f"--dask-workers {args.dask_workers}: must be at least 1")
    split = DEFAULT_SPLIT_ABOVE if args.split_above is None else args.split_above
    if split < 1:
        raise RooftraceError(f"--split-above {split}: must be at least 1 pixel")
    done = predict_scenes_dask(args.scenes, args.out, default_model(args.model), scheduler=args.scheduler,
                               n_workers=args.dask_workers, crs=args.crs, split_above=split, **common)
    return _report_scenes(done)


def _report_scenes(done) -> int:
    """Print each scene's summary and the run's; exit status 1 when a scene failed."""
    for r in done.results:
        print(r.summary())
    print(done.summary())
    if done.failed:
        print(f"rooftrace predict-scene: {len(done.failed)} scene(s) failed and were skipped (listed above); exit status 1",
              file=sys.stderr)
    return 1 if done.failed else 0
