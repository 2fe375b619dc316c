"""The model card's comparison table: trained models scored the same way on the sample val and test splits.

For each ``NAME=MODEL[:METHOD]`` (a rooftrace ``.safetensors`` model, e.g. a run's ``best.safetensors``,
and optionally the post-processing method, default ``watershed``), through the command line exactly as
a user would run it:

1. ``rooftrace tune --model MODEL --split VAL [--postprocess METHOD]`` on a copy of the model in
   ``OUT/NAME/``, unless tuned settings for that method lie beside the model already
   (``MODEL.postprocess.json``, copied with it: the shipped model's are used as they are);
2. ``rooftrace predict --images SPLIT/image --out OUT/NAME/SPLIT --model MODEL --postprocess METHOD``
   for val and test (``--precision`` as given, default auto);
3. ``rooftrace evaluate --gt SPLIT/SPLIT.json --pred OUT/NAME/SPLIT/submission.csv --json ...``.

Prints one markdown row per model: val object F1 (mean over images; optimistic, since val chose the
epoch and the thresholds), test object F1 (mean and pooled), test pixel IoU, test F1 per part (the
sample's ``source`` values), and, when the model lies in a run folder, the run's best epoch, epochs
run and seconds of training from its ``metrics.csv``.

    .venv/bin/python benchmarks/model_card.py shipped=models/rooftrace-baseline-unet.safetensors \\
        baseline=runs/cmp-baseline-*/best.safetensors single-seed=runs/cmp-effb0-single-*/best.safetensors:seed
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from pathlib import Path

from _common import DEFAULT_SAMPLE  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from rooftrace.cli import main as rooftrace
from rooftrace.predict import tuned_settings_path


def run(argv: list[str]) -> None:
    print("$ rooftrace " + " ".join(argv), file=sys.stderr, flush=True)
    code = rooftrace(argv)
    if code != 0:
        raise SystemExit(f"rooftrace {argv[0]} exited with {code}")


def training_facts(model: Path) -> str:
    metrics = model.parent / "metrics.csv"
    if not metrics.exists():
        return ""
    rows = list(csv.DictReader(metrics.open()))
    best = max(rows, key=lambda r: float(r["object_f1"]))
    seconds = sum(float(r["epoch_s"]) for r in rows)
    return f"epoch {best['epoch']} of {len(rows)}, {seconds:,.0f} s"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", metavar="NAME=MODEL[:METHOD]")
    ap.add_argument("--sample", type=Path, default=DEFAULT_SAMPLE)
    ap.add_argument("--out", type=Path, default=Path("out/model-card"))
    ap.add_argument("--precision", default="auto")
    args = ap.parse_args(argv)
    rows = []
    for spec in args.models:
        name, _, rest = spec.partition("=")
        model_s, _, method = rest.partition(":")
        source, method = Path(model_s), method or "watershed"
        # Work on a copy, so that tuning for another method never replaces the settings beside the original.
        model = args.out / name / source.name
        model.parent.mkdir(parents=True, exist_ok=True)
        for src in (source, Path(str(source) + ".sha256"), tuned_settings_path(source)):
            if src.exists():
                shutil.copy(src, model.parent / src.name.replace(source.stem, model.stem, 1))
        tuned = tuned_settings_path(model)
        if not (tuned.exists() and json.loads(tuned.read_text()).get("method") == method):
            run(["tune", "--model", str(model), "--split", str(args.sample / "val"), "--postprocess", method,
                 "--precision", args.precision, "--force"])
        scores = {}
        for split in ("val", "test"):
            out = args.out / name / split
            run(["predict", "--images", str(args.sample / split / "image"), "--out", str(out), "--model", str(model),
                 "--postprocess", method, "--precision", args.precision, "--no-overlays", "--force"])
            run(["evaluate", "--gt", str(args.sample / split / f"{split}.json"), "--pred", str(out / "submission.csv"),
                 "--json", str(out / "scores.json"), "--force"])
            scores[split] = json.loads((out / "scores.json").read_text())
        t = scores["test"]
        parts = " / ".join(f"{k.split()[0]} {v['f1']:.4f}" for k, v in sorted(t["per_source"].items()))
        rows.append(f"| {name} | `{method}` | {scores['val']['f1']:.4f} | {t['f1']:.4f} | {t['f1_pooled']:.4f} | "
                    f"{t['pixel']['iou']:.4f} | {parts} | {training_facts(source)} |")
    print(f"\ncommand: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print("\n| model | post-processing (tuned on val) | val object F1 | test object F1 | test F1 pooled | test pixel IoU | "
          "test F1 per part | best epoch, epochs run, training s |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
