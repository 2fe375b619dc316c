"""The post-processing settings search on one thread and on several, side by side: seconds, and the same result.

``rooftrace tune``, ``rooftrace finetune`` and each validation of ``rooftrace train`` (``train.val_search``) score
post-processing settings on probabilities already computed; each trial post-processes every image of the
split (``rooftrace.evaluation.tuning.score_settings``). This script computes the model's probabilities on a
split once, as ``tune`` does, then runs the search that a training run's validation runs (one round from the
model's tuned settings, ``from_defaults=False``) and ``tune``'s (3 rounds from the defaults and the tuned
settings) with each thread count in turn, round by round, and checks that every thread count finds the same
settings and F1. Run from the repository root::

    .venv/bin/python benchmarks/search_speed.py [--model MODEL] [--split SPLIT] [--threads 1 2] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_SAMPLE, cpu_name  # noqa: E402

from rooftrace.evaluation.tuning import search_settings  # noqa: E402
from rooftrace.inference.runtime import load_runtime  # noqa: E402
from rooftrace.inference.tune import split_probabilities  # noqa: E402
from rooftrace.inference.tuned import search_starts  # noqa: E402
from rooftrace.labels.splits import open_split  # noqa: E402
from rooftrace.models.files import shipped_model  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="model file (default: the shipped model)")
    ap.add_argument("--split", type=Path, default=DEFAULT_SAMPLE / "val", help="a labelled split (default: the sample's val)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds of each search and thread count")
    args = ap.parse_args(argv)
    model = args.model or shipped_model()
    runtime = load_runtime(model, device="cpu")
    gt, probs = split_probabilities(runtime, open_split(args.split))
    starts = [s for s in search_starts(model, "watershed") if s is not None]
    if not starts:
        raise SystemExit(f"{model}: no tuned settings beside it or the shipped model's to start from")
    searches = {"validation (1 round from the tuned settings)": dict(rounds=1, starts=starts[:1], from_defaults=False),
                "tune (3 rounds from the defaults and the tuned settings)": dict(rounds=3, starts=starts)}
    print(f"{cpu_name()}; {model.name} on {args.split} ({len(probs)} images); {args.rounds} interleaved rounds\n")
    print("| search | threads | seconds (median) | trials | F1 | same result as 1 thread |")
    print("|---|---|---|---|---|---|")
    for name, kw in searches.items():
        times: dict[int, list[float]] = {t: [] for t in args.threads}
        found: dict[int, tuple] = {}
        for _ in range(args.rounds):
            for t in args.threads:
                start = time.perf_counter()
                best, score, _default, trials = search_settings(probs, gt, "watershed", threads=t, **kw)
                times[t].append(time.perf_counter() - start)
                found[t] = (best, round(score.f1, 10), trials)
        for t in args.threads:
            same = found[t] == found[args.threads[0]]
            print(f"| {name} | {t} | {statistics.median(times[t]):.1f} | {found[t][2]} | {found[t][1]:.4f} | {'yes' if same else 'NO'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
