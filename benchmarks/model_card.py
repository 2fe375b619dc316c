"""The model card's tables: models scored the same way, through the command line, on every held-out set.

For each ``NAME=MODEL[:METHOD][@tta]`` (a rooftrace ``.safetensors`` model, e.g. a run's
``best.safetensors``; the post-processing method, default ``watershed``; ``@tta`` for flip TTA):

1. ``rooftrace tune --model MODEL --split VAL`` on a copy of the model in ``OUT/NAME/``, unless tuned
   settings for that method lie beside the model already (the shipped model's are used as they are; those a
   training run saved beside its ``best.safetensors`` are searched further, from where they are).
   VAL is every validation part of ``configs/unet-lite0.yaml`` resampled to the model's pixel size
   (``benchmarks/_splits.merged_split``), or the sample pack's val split for a model that records none.
2. For every evaluation set: ``rooftrace predict`` (tiles) or ``rooftrace predict-scene`` (scenes),
   then ``rooftrace evaluate`` against the set's labels. Tiles are given at their own pixel size;
   the model resamples them to its own (``--input-gsd`` where the files do not say).

Evaluation sets (none of them trained on, none used to choose an epoch or a threshold):

- ``sample-test``: the sample pack's test split (10 tiles, 353 buildings; Inria 0.3 m, SpaceNet);
- ``austin``: the sample pack's Inria Austin scene (1000 x 1000, 0.3 m) against its GeoJSON;
- ``atlanta``: the SpaceNet Atlanta panchromatic scene (0.5 m) through ``--bands 1,1,1``;
- ``banepa``: osm-oam Banepa test blocks at their own 0.13 m (``prepare-chips`` without ``--model-gsd``);
- ``kampala``: osm-oam Kampala test blocks (all three zoom levels, ingested at 0.3 m);
- ``dubai``: buildings-extra's Dubai tile 6 (pixel size unknown: used as it is);
- ``rio``: buildings-extra's Rio chips img62-64 (0.5 m GeoTIFFs).

Prints one markdown row per model (object F1 at IoU 0.5: the mean over images as BEGC2024 scores it /
pooled over all buildings of the set; one figure for a scene), and writes every figure, precision and
recall included, to ``OUT/results.json``.

    .venv/bin/python benchmarks/model_card.py new=src/rooftrace/models/shipped/rooftrace-unet-lite0.safetensors \\
        old=/tmp/old/rooftrace-baseline-unet.safetensors
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from _common import DEFAULT_SAMPLE, REPO  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from _splits import merged_split, subset_split

from rooftrace.cli import main as rooftrace
from rooftrace.config import SplitSpec, load_config, resolve_path
from rooftrace.inference.tuned import tuned_settings_path
from rooftrace.models.tuned_file import WRITTEN_BY_TRAINING, read_tuned
from rooftrace.models.files import read_model_file

SETS = ("sample-test", "austin", "atlanta", "banepa", "kampala", "dubai", "rio")


def run(argv: list[str]) -> None:
    print("$ rooftrace " + " ".join(argv), file=sys.stderr, flush=True)
    code = rooftrace(argv)
    if code != 0:
        raise SystemExit(f"rooftrace {argv[0]} exited with {code}")


def prepare_sets(sample: Path, out: Path) -> dict[str, dict]:
    """Each evaluation set: tiles (an image folder, its COCO labels, an ``--input-gsd`` if the files lack one)
    or a scene (raster, labels, predict-scene options)."""
    extra = resolve_path("${ROOFTRACE_EXTRA_DIR}") / "train"
    osm = resolve_path("${ROOFTRACE_OSM_DIR}")
    native = out / "data" / "banepa-native"
    if not (native / "test" / "test.json").exists():
        run(["prepare-chips", str(osm / "banepa" / "chips"), "--labels", str(osm / "banepa" / "labels.geojson"),
             "--out", str(native), "--val", "0.2", "--test", "0.2", "--force"])
    kampala = REPO / "out" / "osm" / "kampala" / "test"
    if not kampala.exists():
        raise SystemExit(f"{kampala}: run `make osm-splits` first")
    dubai = subset_split(SplitSpec(str(extra), groups=("dubai tile 6",)), out / "data" / "dubai")
    rio = subset_split(SplitSpec(str(extra), match=r"spacenet_rio_img6[2-4]"), out / "data" / "rio")
    gsd_banepa = json.loads((native / "test" / "test.json").read_text())["images"][0]["gsd"]
    return {
        "sample-test": {"images": sample / "test" / "image", "gt": sample / "test" / "test.json"},
        "austin": {"scene": sample / "scenes" / "inria_austin.tif", "gt": sample / "scenes" / "inria_austin.geojson", "opts": []},
        "atlanta": {"scene": sample / "scenes" / "atlanta_pan.tif", "gt": sample / "scenes" / "atlanta_pan.geojson",
                    "opts": ["--bands", "1,1,1"]},
        "banepa": {"images": native / "test" / "image", "gt": native / "test" / "test.json", "gsd": gsd_banepa},
        "kampala": {"images": kampala / "image", "gt": kampala / "test.json", "gsd": 0.3},
        "dubai": {"images": dubai / "image", "gt": dubai / "dubai.json"},
        "rio": {"images": rio / "image", "gt": rio / "rio.json"},
    }


def validation_split(model: Path, sample: Path, out: Path) -> Path:
    """The split to tune on: the default config's validation parts at the model's pixel size."""
    _, meta = read_model_file(model)
    gsd = meta.get("gsd")
    if not gsd:
        return sample / "val"
    target = out / "data" / f"val-{gsd:g}m"
    if not (target / f"{target.name}.json").exists():
        merged_split(list(load_config(REPO / "configs" / "unet-lite0.yaml").data.val), gsd, target)
    return target


def score_set(name: str, s: dict, model: Path, method: str, tta: bool, out: Path, precision: str) -> dict:
    common = ["--model", str(model), "--postprocess", method, "--precision", precision] + (["--tta"] if tta else [])
    if "scene" in s:
        pred = out / f"{name}.gpkg"
        run(["predict-scene", str(s["scene"]), "--out", str(pred), *common, *s["opts"], "--force"])
    else:
        run(["predict", "--images", str(s["images"]), "--out", str(out / name), *common, "--no-overlays", "--force",
             *(["--input-gsd", str(s["gsd"])] if s.get("gsd") else [])])
        pred = out / name / "submission.csv"
    scores = out / f"{name}.scores.json"
    run(["evaluate", "--gt", str(s["gt"]), "--pred", str(pred), "--json", str(scores), "--force"])
    return json.loads(scores.read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", metavar="NAME=MODEL[:METHOD][@tta]")
    ap.add_argument("--sample", type=Path, default=DEFAULT_SAMPLE)
    ap.add_argument("--out", type=Path, default=Path("out/model-card"))
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--sets", default=",".join(SETS), help=f"comma-separated subset of {','.join(SETS)}")
    ap.add_argument("--no-tune", action="store_true", help="default post-processing settings for every model (ablations)")
    ap.add_argument("--table-only", action="store_true", help="print the table of OUT/results.json and stop")
    args = ap.parse_args(argv)
    wanted = [s for s in args.sets.split(",") if s]
    results: dict[str, dict] = {}
    results_path = args.out / "results.json"
    if results_path.exists():
        results = json.loads(results_path.read_text())
    sets = {} if args.table_only else prepare_sets(args.sample, args.out)
    for spec in [] if args.table_only else args.models:
        name, _, rest = spec.partition("=")
        rest, _, flag = rest.partition("@")
        model_s, _, method = rest.partition(":")
        source, method, tta = Path(model_s), method or "watershed", flag == "tta"
        # Work on a copy, so that tuning never replaces the settings beside the original.
        model = args.out / name / source.name
        model.parent.mkdir(parents=True, exist_ok=True)
        for src in (source, Path(str(source) + ".sha256"), tuned_settings_path(source)):
            dst = model.parent / src.name.replace(source.stem, model.stem, 1)
            if src.exists() and not (dst.exists() and dst.samefile(src)):  # a model already in OUT/NAME/
                shutil.copy(src, dst)
        tuned = tuned_settings_path(model)
        if args.no_tune:
            tuned.unlink(missing_ok=True)
        elif not ((kept := read_tuned(model)) is not None and kept.method == method
                  and kept.by != WRITTEN_BY_TRAINING):  # a run's one-round search is searched further
            run(["tune", "--model", str(model), "--split", str(validation_split(model, args.sample, args.out)),
                 "--postprocess", method, "--precision", args.precision, "--force"])
        row = results.setdefault(name, {})
        row.update({"model": str(source), "method": method, "tta": tta, "tuned": not args.no_tune})
        for set_name in wanted:
            sc = score_set(set_name, sets[set_name], model, method, tta, args.out / name, args.precision)
            row[set_name] = {"f1": sc["f1"], "f1_pooled": sc["f1_pooled"], "precision": sc["precision"], "recall": sc["recall"]}
        results_path.write_text(json.dumps(results, indent=1))
    print(f"\ncommand: {' '.join([Path(sys.executable).name, *sys.argv])}")
    head = " | ".join(wanted)
    print(f"\n| model | post-processing | {head} |")
    print("|---|---|" + "---|" * len(wanted))
    for name, row in results.items():
        cells = []
        for s in wanted:
            if s not in row:
                cells.append("")
            elif s in ("austin", "atlanta"):  # one scene: the mean over images is the pooled figure
                cells.append(f"{row[s]['f1']:.4f}")
            else:
                cells.append(f"{row[s]['f1']:.4f} / {row[s]['f1_pooled']:.4f}")
        pp = f"`{row['method']}` {'tuned' if row.get('tuned', True) else 'defaults'}{', flip TTA' if row['tta'] else ''}"
        print(f"| {name} | {pp} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
