"""Adapting to areas the starting model never saw: the figures of issue 22, re-measured with one command.

The shipped model trained on Banepa and Kampala, so it cannot show what adapting does for a new area. The
start here is a model from the history that trained on the sample pack only (``git show REV:PATH``, default
the EfficientNet-B0 U-Net of commit cfe4d35, extracted to ``OUT/start.safetensors``): both osm-oam areas are
new to it (other continents, drone imagery at 0.13-0.29 m against the sample pack's 0.3-0.5 m satellite
tiles). For each area ``rooftrace finetune`` runs as a user runs it (the packaged recipe, 15 minutes, every
chip and the area's OSM labels; its own split by area: 60 % of the chips to adapt on, 20 % to tune on, 20 % for
the card), and the card's
figures are collected: the starting and the adapted model, each with post-processing tuned on the tuning
blocks, on the card blocks.

Modes (each writes ``OUT/<mode>.json`` and prints a markdown table):

- ``areas`` (default): Banepa and Kampala, ``--minutes`` each (default 15).
- ``shift``: labels moved 2, 3.5 and 5 m (in several directions) before the chips are cut; the shift that
  the starting model's probabilities and the moved labels give (every block together, as ``finetune``
  decides) against the one injected, in pixels at 0.3 m, and the labels after correction against clean ones.
- ``ablation``: the recipe against one change at a time, on Banepa, ``--minutes`` each (default 3).

    PYTHONPATH=src python benchmarks/finetune_areas.py areas --out out/finetune-areas
    PYTHONPATH=src python benchmarks/finetune_areas.py shift --out out/finetune-areas
    PYTHONPATH=src python benchmarks/finetune_areas.py ablation --minutes 3 --out out/finetune-areas
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, cpu_name  # noqa: E402

OSM = REPO.parent / "shared" / "data" / "osm-oam"
START_REV, START_PATH = "cfe4d35", "models/rooftrace-unet-effb0.safetensors"
EXTRA = REPO.parent / "shared" / "data" / "buildings-extra"
AREAS = {"banepa": ("banepa/chips", "banepa/labels.geojson"), "kampala": ("kampala/chips", "kampala/labels.geojson"),
         "rio": ("rio/chips", "rio/labels.geojson")}  # rio: made under OUT by rio_area()
#: One change to the recipe at a time (keys of rooftrace.training.finetune.Recipe).
ABLATION = {
    "recipe": {},
    "no freezing (encoder and BatchNorm train from step 1)": {"freeze_encoder": 0.0, "freeze_bn": False},
    "plain loss (unlabelled buildings weigh fully)": {"unlabelled_weight": 1.0},
    "lr 1e-3": {"lr": 1e-3},
}


def start_model(out: Path, rev: str, path: str) -> Path:
    """The starting model extracted from git history (with its SHA-256 sidecar)."""
    dst = out / "start.safetensors"
    if not dst.exists():
        out.mkdir(parents=True, exist_ok=True)
        for suffix in ("", ".sha256"):
            data = subprocess.run(["git", "show", f"{rev}:{path}{suffix}"], cwd=REPO, capture_output=True, check=True).stdout
            Path(str(dst) + suffix).write_bytes(data)
        sidecar = Path(str(dst) + ".sha256")
        digest = sidecar.read_text().split()[0]
        sidecar.write_text(f"{digest}  {dst.name}\n")
    return dst


def rio_area(out: Path) -> Path:
    """buildings-extra's 14 SpaceNet Rio chips (WorldView-2 GeoTIFFs, about 0.5 m, EPSG:4326) as a user brings
    an area: a folder of georeferenced chips and a GeoJSON of buildings (the COCO polygons mapped through each
    chip's transform, pixel corners as DESIGN.md's convention). The starting model never saw Rio."""
    import rasterio
    from shapely.affinity import affine_transform
    from shapely.geometry import mapping

    from rooftrace.labels.formats import read_labels

    root = out / "rio"
    chips = root / "chips"
    chips.mkdir(parents=True, exist_ok=True)
    gt = read_labels(EXTRA / "train" / "train.json", images=EXTRA / "train", check_images=False)
    features = []
    for img in gt.images.values():
        if "spacenet_rio" not in (img.file_name or ""):
            continue
        src = EXTRA / "train" / img.file_name
        link = chips / src.name
        if not link.exists():
            link.symlink_to(src)
        with rasterio.open(src) as ds:
            t = ds.transform
        for fp in img.footprints:
            geo = affine_transform(fp, [t.a, t.b, t.d, t.e, t.c, t.f])
            features.append({"type": "Feature", "properties": {"building": "yes", "chip": src.name}, "geometry": mapping(geo)})
    (root / "labels.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return root


def run_area(area: str, start: Path, out: Path, minutes: float, **recipe_changes) -> dict:
    from rooftrace.training.finetune import finetune, load_recipe

    chips, labels = AREAS[area]
    base = OSM
    if area == "rio":
        rio_area(out)
        base = out
    tag = area + ("-" + "-".join(f"{k}{v}" for k, v in recipe_changes.items()) if recipe_changes else "")
    out.mkdir(parents=True, exist_ok=True)
    model_out = out / f"{tag}.safetensors"
    t0 = time.monotonic()
    r = finetune(base / chips, base / labels, model_out, model=start, minutes=minutes, recipe=load_recipe(**recipe_changes),
                 model_gsd=0.3, val=0.2, test=0.2, runs_dir=out / "runs", keep_worse=True, force=True, device="cpu", progress=False,
                 log=lambda s: print(s, flush=True))
    wall = time.monotonic() - t0
    print(r.card(), flush=True)
    return {"area": area, "changes": recipe_changes, "wall_s": round(wall, 1), **r.to_json()}


def areas(args: argparse.Namespace, start: Path) -> list[dict]:
    rows = [run_area(a, start, args.out, args.minutes) for a in args.areas]
    print("\n| area | start F1 | adapted F1 | change | pooled F1 start → adapted | precision | recall | steps | minutes |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        s, a = r["start"], r["adapted"]
        print(f"| {r['area']} ({r['card_images']} card chips, {a['labelled']} buildings) | {s['f1']:.4f} | {a['f1']:.4f} | "
              f"{a['f1'] - s['f1']:+.4f} | {s['f1_pooled']:.4f} → {a['f1_pooled']:.4f} | {s['precision']:.3f} → "
              f"{a['precision']:.3f} | {s['recall']:.3f} → {a['recall']:.3f} | {r['steps']} | {r['wall_s'] / 60:.1f} |")
    return rows


def ablation(args: argparse.Namespace, start: Path) -> list[dict]:
    rows = []
    for name, changes in ABLATION.items():
        r = run_area(args.areas[0], start, args.out / "ablation", args.minutes, **changes)
        r["variant"] = name
        rows.append(r)
    print(f"\n| {args.areas[0]}, {args.minutes:g} min each | start F1 | adapted F1 | change | best tuning-block F1 | steps |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        s, a = r["start"], r["adapted"]
        print(f"| {r['variant']} | {s['f1']:.4f} | {a['f1']:.4f} | {a['f1'] - s['f1']:+.4f} | {a['tuning_f1']:.4f} | {r['steps']} |")
    return rows


def label_iou(clean, other) -> float:
    """Pixel IoU of two label sets of the same chips (the buildings' masks, pooled over the chips)."""
    from rooftrace.prepare.targets import building_mask

    inter = union = 0
    for img in clean.labels:
        a = building_mask(img.footprints, (img.height, img.width))
        b = building_mask(other[img.key].footprints, (img.height, img.width))
        inter, union = inter + int((a & b).sum()), union + int((a | b).sum())
    return round(inter / max(union, 1), 4)


def shift(args: argparse.Namespace, start: Path) -> list[dict]:
    from rooftrace.labels.splits import open_split
    from rooftrace.prepare.chips import prepare_chips
    from rooftrace.prepare.shift import area_shift
    from rooftrace.prepare.targets import building_mask
    from rooftrace.training.alignment import load_network, split_probabilities

    chips, labels = (OSM / p for p in AREAS[args.areas[0]])
    net = load_network(start, "cpu")
    work = args.out / "shift"
    kw = {"model_gsd": 0.3, "val": 0.0, "test": 0.0, "block": 2, "progress": False, "force": True}
    clean_dir = prepare_chips(chips, labels, work / "clean", **kw).splits["train"].parent
    clean = split_probabilities(net, clean_dir)
    rows = []
    for east, north in ((2.0, 0.0), (0.0, -3.5), (3.5, 3.5), (-5.0, 0.0)):
        moved = open_split(prepare_chips(chips, labels, work / "moved", label_shift=(east, north), **kw).splits["train"].parent)
        by_block: dict[str, list] = {}
        for img, p, b in zip(clean.labels, clean.probs, clean.blocks):
            by_block.setdefault(b, []).append((p[0], building_mask(moved[img.key].footprints, p.shape[1:])))
        found = area_shift(by_block, 0.3, max_px=24)
        whole = found.whole
        est_e, est_n = whole.dx * 0.3, -whole.dy * 0.3
        err_px = math.hypot(est_e - east, est_n - north) / 0.3
        row = {"injected_m": [east, north], "found_m": [round(est_e, 3), round(est_n, 3)], "error_px": round(err_px, 3),
               "corrected": found.correction is not None, "reason": found.reason}
        if found.correction is not None:
            fixed = open_split(prepare_chips(chips, labels, work / "fixed", label_shift=(east + found.correction[0],
                                                                                         north + found.correction[1]), **kw)
                               .splits["train"].parent)
            row["iou_after_correction"] = label_iou(clean, fixed)
        row["iou_shifted"] = label_iou(clean, moved)
        rows.append(row)
        print(row, flush=True)
    print("\n| injected (m east, north) | found | error (px at 0.3 m) | corrected | label IoU with the clean labels: shifted → corrected |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['injected_m'][0]:+.1f}, {r['injected_m'][1]:+.1f} | {r['found_m'][0]:+.2f}, {r['found_m'][1]:+.2f} | "
              f"{r['error_px']:.2f} | {'yes' if r['corrected'] else 'no'} | {r['iou_shifted']:.3f} → "
              f"{r.get('iou_after_correction', float('nan')):.3f} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", nargs="?", choices=("areas", "shift", "ablation"), default="areas")
    ap.add_argument("--out", type=Path, default=REPO / "out" / "finetune-areas")
    ap.add_argument("--minutes", type=float, default=None, help="budget per run (default 15; 3 for the ablation)")
    ap.add_argument("--areas", nargs="+", default=None, choices=sorted(AREAS), help="default: both (ablation and shift: banepa)")
    ap.add_argument("--start", default=f"{START_REV}:{START_PATH}", metavar="REV:PATH", help="the starting model in git history")
    args = ap.parse_args()
    args.minutes = args.minutes or (3.0 if args.mode == "ablation" else 15.0)
    args.areas = args.areas or (["banepa", "kampala"] if args.mode == "areas" else ["banepa"])
    rev, _, path = args.start.partition(":")
    start = start_model(args.out, rev, path)
    print(f"start: {args.start}; CPU: {cpu_name()}", flush=True)
    rows = {"areas": areas, "shift": shift, "ablation": ablation}[args.mode](args, start)
    (args.out / f"{args.mode}.json").write_text(json.dumps({"cpu": cpu_name(), "start": args.start, "rows": rows}, indent=1, default=str))


if __name__ == "__main__":
    main()
