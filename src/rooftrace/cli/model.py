"""Subcommands about models: train, oracle, tune, export, import-weights, finetune."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rooftrace.cli.options import (
    MATCHING_HELP,
    MATCHING_MODES,
    POSTPROCESS_METHODS,
    add_chip_options,
    add_layer_option,
    add_model_gsd_option,
    add_postprocess_options,
    check_io,
    default_model,
    parse_settings,
)
from rooftrace.config import check_device
from rooftrace.core.errors import RooftraceError


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model from a YAML config into runs/NAME-TIMESTAMP/ (resumable)",
        description="Train from --config (see configs/); --set section.key=value overrides any entry; "
        "--resume RUN_DIR continues a killed run from its last finished epoch. "
        "Under torchrun --nproc_per_node N it trains with DistributedDataParallel.",
    )
    p.add_argument("--config", type=Path, default=None, help="YAML config, e.g. configs/unet-r34.yaml (default: the resumed run's, with --resume)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config entry, e.g. --set train.epochs=2 (repeatable; default: none)")
    p.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR", help="continue this run from its last finished epoch (default: a new run)")
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
        print(f"best object F1 {summary['best_object_f1']:.4f} at epoch {summary['best_epoch']} (post-processing searched on "
              f"validation); run folder {summary['run_dir']}")
        best = Path(summary["run_dir"]) / "best.safetensors"
        if best.exists():
            print(f"predict uses {best} with the settings its validation found beside it (best.postprocess.json); "
                  f"rooftrace tune --model {best} --split VAL --force searches them further")
    return 0


def add_oracle(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("oracle", help="measure what post-processing alone loses: perfect targets -> polygons -> CSV -> object F1",
                       description="Make every GT image's targets as if a perfect model had output them, post-process them, "
                       "write OUT/submission.csv (one row per GT image) and score it against the GT.")
    p.add_argument("--gt", type=Path, required=True, help="ground truth: a split folder or its COCO JSON")
    p.add_argument("--out", type=Path, required=True, help="folder for submission.csv")
    add_postprocess_options(p, "watershed")
    p.add_argument("--channels", type=int, choices=(1, 3), default=None, help="default: 3 for watershed, 1 for seed")
    p.add_argument("--blur", type=float, default=0.0, metavar="SIGMA",
                   help="Gaussian sigma in pixels applied to the perfect output, as a soft model would give it (default 0: none)")
    p.add_argument("--matching", choices=MATCHING_MODES, default="one-to-one", help=MATCHING_HELP)
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write scores and settings as JSON (default: none)")
    p.add_argument("--force", action="store_true", help="overwrite earlier outputs")
    p.set_defaults(func=_run_oracle)


def _run_oracle(args: argparse.Namespace) -> int:
    check_io(args, ("gt",), ("json",))
    from rooftrace.core.files import atomic_write_text
    from rooftrace.evaluation.oracle import run_oracle
    from rooftrace.instances.postprocess import PostprocessSettings

    if args.json is not None and args.json.exists() and not args.force:
        raise RooftraceError(f"{args.json}: already exists; pass --force to overwrite it")
    if args.blur < 0:
        raise RooftraceError(f"--blur {args.blur}: must be >= 0")
    settings = parse_settings(args.pp, args.settings) or PostprocessSettings()
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


def add_tune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="search the post-processing thresholds that maximise object F1 on a validation split",
                       description="Runs the model once over SPLIT, searches the post-processing settings, and saves "
                       "the best beside the model (<model>.postprocess.json), where predict picks them up.")
    p.add_argument("--model", type=Path, required=True, help="model .safetensors or .onnx (the tuned settings are saved beside it)")
    p.add_argument("--split", type=Path, required=True, help="validation split folder (image/ and <split>.json)")
    p.add_argument("--postprocess", choices=POSTPROCESS_METHODS, default="watershed",
                   help="post-processing method whose settings are searched (default watershed)")
    p.add_argument("--tta", action="store_true", help="tune on flip-TTA probabilities")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: a GPU when there is one)")
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


def add_export(sub: argparse._SubParsersAction) -> None:
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
    check_io(args, ("model", "calibration"), ("onnx",))
    from rooftrace.inference.export import export_onnx

    if args.calibration_tiles < 1:
        raise RooftraceError(f"--calibration-tiles {args.calibration_tiles}: must be at least 1")
    if args.calibration is not None and not args.int8:
        raise RooftraceError("--calibration goes with --int8")
    result = export_onnx(default_model(args.model), args.onnx, opset=args.opset, int8=args.int8, calibration=args.calibration,
                         calibration_tiles_n=args.calibration_tiles, tolerance=args.tolerance, force=args.force)
    print(result.summary())
    return 0


def add_import_weights(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import-weights", help="turn another program's checkpoint (.pth state_dict or .safetensors) into a rooftrace model",
                       description="Reads CHECKPOINT (a .safetensors of bare tensors, or with --trust-pickle a pickle .pth/.pt read "
                       "with torch.load(weights_only=True)), checks that its weights fit the architecture of --config exactly, and "
                       "writes --out as a rooftrace model file (safetensors with config and normalisation, SHA-256 beside it).")
    p.add_argument("checkpoint", type=Path, help="the checkpoint to import")
    p.add_argument("--config", type=Path, required=True, help="config of its architecture, e.g. configs/unet-r34.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config entry, e.g. --set data.channels=[footprint] for a one-output model (repeatable; default: none)")
    p.add_argument("--out", type=Path, required=True, help="model file to write (.safetensors)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="read a pickle checkpoint (with torch.load(weights_only=True)); only for files you trust")
    p.add_argument("--half", action="store_true", help="store the weights as fp16")
    p.add_argument("--force", action="store_true", help="overwrite --out")
    p.set_defaults(func=_run_import_weights)


def _run_import_weights(args: argparse.Namespace) -> int:
    from rooftrace.config import load_config
    from rooftrace.models.checkpoints import import_checkpoint

    check_io(args, ("checkpoint", "config"), ("out",))
    if args.out.suffix.lower() != ".safetensors":
        raise RooftraceError(f"--out {args.out}: rooftrace model files end in .safetensors")
    path = import_checkpoint(args.checkpoint, args.out, load_config(args.config, args.overrides),
                             trust_pickle=args.trust_pickle, half=args.half, force=args.force)
    print(f"imported {args.checkpoint} -> {path} (SHA-256 in {path.name}.sha256)")
    return 0


def add_finetune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune",
        help="adapt a model to your area: chips + OpenStreetMap buildings -> a model scored before/after on held-out blocks",
        description="Prepares CHIPS_DIR and --labels as prepare-chips does (at the model's pixel size), holds out blocks by "
        "area for tuning and for the card, estimates and corrects a shift between labels and imagery, adapts --model (the "
        "shipped one by default) with the packaged recipe within --minutes, tunes the post-processing of both models on "
        "the tuning blocks and scores them on the card blocks. --out gets the adapted model and its tuned settings "
        "(<name>.postprocess.json) only if it is better there (else exit 3, unless --keep-worse); the run folder gets the "
        "splits, the adapted model, card.md, card.json and steps.csv.",
    )
    p.add_argument("chips_dir", type=Path, metavar="CHIPS_DIR", help="folder of chips (searched recursively), as prepare-chips takes it")
    p.add_argument("--labels", type=Path, required=True, help="building footprints: GeoJSON or GeoPackage, any CRS")
    p.add_argument("--out", type=Path, required=True, help="the adapted model file to write (.safetensors)")
    p.add_argument("--model", default="shipped", metavar="PATH|shipped",
                   help="the model to start from: a rooftrace .safetensors file, or 'shipped' (default) for the model that "
                   "ships with rooftrace")
    p.add_argument("--minutes", type=float, default=15.0,
                   help="time budget in minutes, everything included; the schedule is shortened to fit (default 15)")
    p.add_argument("--recipe", type=Path, default=None, metavar="FILE",
                   help="YAML of recipe keys that replace the packaged recipe's (default: the packaged recipe)")
    p.add_argument("--steps", type=int, default=None, help="the most adapting steps (default: the recipe's, 600)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the recipe's, 3e-4)")
    add_model_gsd_option(p, "pixel size in metres to adapt at, the adapted model's (default: the model's, else 0.3)")
    p.add_argument("--val", type=float, default=0.15, help="share of the chips (by area) for the tuning blocks (default 0.15)")
    p.add_argument("--test", type=float, default=0.15,
                   help="share of the chips (by area) for the card blocks; 0 scores the card on the tuning blocks (default 0.15)")
    add_chip_options(p, balance="buildings")
    p.add_argument("--no-align", dest="align", action="store_false",
                   help="estimate and report the labels' shift from the imagery, but do not correct it (default: corrected when clear)")
    p.add_argument("--max-shift", type=float, default=6.0, metavar="METRES", help="the largest label shift searched, each way (default 6)")
    p.add_argument("--keep-worse", action="store_true", help="write --out even when the adapted model is not better on the held-out blocks")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where the run folder is made (default runs)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: a GPU when there is one)")
    p.add_argument("--seed", type=int, default=0, help="seeds the split into blocks and the adapting (default 0)")
    p.add_argument("--force", action="store_true", help="overwrite --out and its settings file")
    add_layer_option(p)
    p.set_defaults(func=_run_finetune)


def _run_finetune(args: argparse.Namespace) -> int:
    import sys

    check_io(args, ("chips_dir", "labels", "aoi", "recipe"), ("out",))
    check_device(args.device)
    from rooftrace.training.finetune import NOT_BETTER, finetune, load_recipe

    recipe = load_recipe(args.recipe, steps=args.steps, lr=args.lr)
    model = args.model if args.model == "shipped" else Path(args.model)
    result = finetune(args.chips_dir, args.labels, args.out, model=model, minutes=args.minutes, recipe=recipe, model_gsd=args.model_gsd,
                      val=args.val, test=args.test, align=args.align, max_shift_m=args.max_shift, keep_worse=args.keep_worse,
                      force=args.force, runs_dir=args.runs_dir, device=args.device, seed=args.seed, block=args.block,
                      block_zoom=args.block_zoom, aoi=args.aoi, empty=args.empty, tms=args.tms, labels_crs=args.labels_crs,
                      balance=args.balance)
    print()
    print(result.card())
    print(f"card: {result.run_dir / 'card.md'}")
    if not result.better:
        if result.out is None:
            print(f"rooftrace finetune: the adapted model is not better than the starting one on the held-out blocks "
                  f"(F1 {result.start.f1:.4f} -> {result.adapted.f1:.4f}); {args.out} was not written (the adapted model is in "
                  f"{result.run_dir / 'adapted.safetensors'}; --keep-worse writes it)", file=sys.stderr)
            return NOT_BETTER
        print(f"warning: the adapted model is not better on the held-out blocks (F1 {result.start.f1:.4f} -> "
              f"{result.adapted.f1:.4f}); written to {args.out} as --keep-worse asks", file=sys.stderr)
    return 0
