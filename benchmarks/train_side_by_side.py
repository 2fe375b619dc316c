"""The default recipe's real training loop, two source trees side by side: crops a second over whole epochs.

``benchmarks/train_profile.py --loop`` times short epochs inside one process; this script runs
``rooftrace train`` itself, as a user does, from each tree's own code and its own
``configs/unet-lite0.yaml`` (the recipe as it was in that tree: its sampling, workers, augmentation and
validation schedule), for ``--epochs`` full epochs from the same starting weights, the trees in turn
(A B A B ...). Each run's ``train.log`` gives the seconds of each epoch, validation included; the figure
is crops a second over the whole run (epochs x steps x batch over the summed epoch seconds), and the
ratio B/A pair by pair (the median is the one to quote). Run folders go to a temporary folder, never into
either tree. Run from the repository root, on an otherwise idle machine::

    git worktree add /tmp/before d3b5e82
    .venv/bin/python benchmarks/train_side_by_side.py --a /tmp/before --b . --epochs 2 --pairs 2
    .venv/bin/python benchmarks/train_side_by_side.py --a /tmp/before --b . --b-set train.freeze_encoder=5

Both trees run with this checkout's ``.venv`` (``PYTHONPATH`` set to each tree's ``src``), and find the
data through ``ROOFTRACE_SAMPLE_DIR``, ``ROOFTRACE_EXTRA_DIR`` (the defaults: ``../shared/data/...``
beside this checkout) and ``out/osm`` (``make osm-splits``), linked into each run's folder.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EPOCH = re.compile(r"epoch (\d+)/(\d+): .*?([\d.]+) s$")


def run_tree(tree: Path, work: Path, epochs: int, init_from: Path, env: dict[str, str],
             sets: list[str] = ()) -> tuple[float, int, list[float]]:
    """``(crops/s, crops, epoch seconds)`` of one ``rooftrace train`` run of ``tree``'s default recipe, with
    ``sets`` (``KEY=VALUE``) on top."""
    cfg = (tree / "configs" / "unet-lite0.yaml").resolve()
    run_env = dict(env, PYTHONPATH=str((tree / "src").resolve()))
    cmd = [sys.executable, "-m", "rooftrace", "train", "--config", str(cfg), "--set", "name=side-by-side",
           "--set", f"train.epochs={epochs}", "--set", f"train.init_from={init_from}", "--set", "train.patience=0"]
    for item in sets:
        cmd += ["--set", item]
    proc = subprocess.run(cmd, cwd=work, env=run_env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{tree}: rooftrace train failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    logs = sorted(work.glob("runs/side-by-side-*/train.log"), key=lambda p: p.stat().st_mtime)
    seconds = [float(m.group(3)) for line in logs[-1].read_text().splitlines() if (m := EPOCH.search(line))]
    if len(seconds) != epochs:
        raise SystemExit(f"{logs[-1]}: expected {epochs} epoch lines, found {len(seconds)}")
    import yaml

    data = yaml.safe_load(cfg.read_text())
    steps = int(data.get("train", {}).get("steps_per_epoch", 150))
    crops = epochs * steps * int(data["data"]["batch_size"])
    return crops / sum(seconds), crops, seconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", type=Path, required=True, help="tree A (the reference: typically the commit before the change)")
    ap.add_argument("--b", type=Path, required=True, help="tree B")
    ap.add_argument("--epochs", type=int, default=2, help="epochs per run (default 2)")
    ap.add_argument("--pairs", type=int, default=2, help="A B pairs (default 2)")
    ap.add_argument("--init-from", type=Path, default=REPO / "src/rooftrace/models/shipped/rooftrace-unet-lite0.safetensors",
                    help="starting weights of every run (default: this checkout's shipped model)")
    for name in ("a", "b"):
        ap.add_argument(f"--{name}-set", action="append", default=[], metavar="KEY=VALUE",
                        help=f"an override of tree {name.upper()}'s recipe, as `rooftrace train --set` takes it (repeatable), "
                             "e.g. train.freeze_encoder=5")
    args = ap.parse_args(argv)
    shared = REPO.parent / "shared" / "data"
    env = dict(os.environ)
    env.setdefault("ROOFTRACE_SAMPLE_DIR", str(shared / "buildings-sample"))
    env.setdefault("ROOFTRACE_EXTRA_DIR", str(shared / "buildings-extra"))
    osm = REPO / "out" / "osm"
    if not osm.is_dir():
        raise SystemExit(f"{osm}: missing; run `make osm-splits` first")
    rates: dict[str, list[float]] = {"A": [], "B": []}
    with tempfile.TemporaryDirectory(prefix="rooftrace-train-sbs-") as tmp:
        for name, tree in (("A", args.a), ("B", args.b)):
            work = Path(tmp) / name
            (work / "out").mkdir(parents=True)
            (work / "out" / "osm").symlink_to(osm)
        for i in range(args.pairs):
            for name, tree, sets in (("A", args.a, args.a_set), ("B", args.b, args.b_set)):
                rate, crops, seconds = run_tree(tree, Path(tmp) / name, args.epochs, args.init_from.resolve(), env, sets)
                rates[name].append(rate)
                print(f"pair {i + 1} {name} ({tree}): {rate:.2f} crops/s ({crops} crops; epochs "
                      f"{', '.join(f'{s:.1f}' for s in seconds)} s)", flush=True)
    ratios = [b / a for a, b in zip(rates["A"], rates["B"])]
    print(f"\nA {args.a}: median {statistics.median(rates['A']):.2f} crops/s; B {args.b}: median {statistics.median(rates['B']):.2f} crops/s")
    print(f"B / A pair by pair: {', '.join(f'{r:.2f}x' for r in ratios)}; median {statistics.median(ratios):.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
