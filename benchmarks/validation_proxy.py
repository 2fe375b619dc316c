"""Which validation figure picks a run's epoch: how well cheap figures rank model files by their tuned F1.

What decides whether a model ships is its object F1 on the validation split once ``rooftrace tune`` has searched
its post-processing settings (from the defaults and from the shipped model's settings). A training run cannot
afford that search at every validation, so it scores something cheaper. For each model file this script
measures, on the same probabilities:

- ``defaults``: the F1 at the default settings (what runs validated with before session 10);
- ``start``: the F1 at the shipped model's tuned settings, as they are;
- ``one round``: after one round of the coordinate search from those settings (``train.val_search: 1``, what a
  run validates with now);
- ``tuned``: the full search, as ``rooftrace tune`` runs it (three rounds, from the defaults and from the
  shipped settings);

then the rank agreement (Spearman) of each cheap figure with ``tuned`` over all the files given, and the
post-processing trials each took. The probabilities are the network's (bf16 where the CPU has it, as training
validates) on a split already at the model's pixel size, by default the 92 validation tiles the model card
tunes on (``out/model-card-r24/data/val-0.3m``, written by ``benchmarks/model_card.py``).

    .venv/bin/python benchmarks/validation_proxy.py shipped=src/rooftrace/models/shipped/rooftrace-unet-lite0.safetensors \\
        r25=runs/lite0-r25-.../best.safetensors ... --out out/validation-proxy
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, cpu_name  # noqa: E402

from rooftrace.evaluation.tuning import score_settings, search_settings  # noqa: E402
from rooftrace.models.tuned_file import search_starts  # noqa: E402
from rooftrace.training.alignment import load_network, split_probabilities  # noqa: E402

FIGURES = ("defaults", "start", "one round", "tuned")


def measure(model: Path, split: Path) -> dict[str, float]:
    """The four figures of one model file (and the trials each search took)."""
    probs = split_probabilities(load_network(model), split)
    (shipped,) = search_starts(None, "watershed")[:1]
    t0 = time.perf_counter()
    _, one, at_defaults, one_trials = search_settings(probs.probs, probs.labels, "watershed", rounds=1, starts=[shipped],
                                                     from_defaults=False)
    _, tuned, _, tuned_trials = search_settings(probs.probs, probs.labels, "watershed", rounds=3, starts=[shipped])
    return {"defaults": at_defaults.f1, "start": score_settings(probs.probs, probs.labels, "watershed", shipped).f1,
            "one round": one.f1, "tuned": tuned.f1, "one round trials": one_trials, "tuned trials": tuned_trials,
            "search s": time.perf_counter() - t0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="NAME=MODEL.safetensors")
    ap.add_argument("--split", type=Path, default=REPO / "out" / "model-card-r24" / "data" / "val-0.3m")
    ap.add_argument("--out", type=Path, default=REPO / "out" / "validation-proxy")
    args = ap.parse_args()
    if not args.split.is_dir():
        sys.exit(f"{args.split}: no such split; benchmarks/model_card.py writes it (or give --split)")
    args.out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict[str, float]] = {}
    print(f"# {cpu_name()}; split {args.split}\n")
    print("| file | " + " | ".join(FIGURES) + " |\n|---|" + "---|" * len(FIGURES), flush=True)
    for spec in args.models:
        name, _, path = spec.partition("=")
        rows[name] = measure(Path(path), args.split)
        print(f"| {name} | " + " | ".join(f"{rows[name][k]:.4f}" for k in FIGURES) + " |", flush=True)
    if len(rows) >= 3:
        tuned = [r["tuned"] for r in rows.values()]
        rho = {k: float(spearmanr([r[k] for r in rows.values()], tuned).statistic) for k in FIGURES[:3]}
        gap = [r["tuned"] - r["one round"] for r in rows.values()]
        print("\nSpearman with tuned: " + ", ".join(f"{k} {v:.2f}" for k, v in rho.items())
              + f"; tuned - one round: mean {np.mean(gap):.4f}, max {max(gap):.4f}; trials: one round "
              f"{np.mean([r['one round trials'] for r in rows.values()]):.0f}, tuned "
              f"{np.mean([r['tuned trials'] for r in rows.values()]):.0f} (mean)")
        rows["_spearman"] = rho
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
