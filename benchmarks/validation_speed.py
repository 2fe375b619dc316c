"""One validation of the default recipe, as a training run makes it: seconds, and what it scores (a script, not a test).

A run of ``rooftrace train`` validates every ``train.val_every`` epochs: the network's forward pass over the
validation tiles (loss, pixel figures, each tile's probabilities kept) and a settings search on those
probabilities (``train.val_search``, :mod:`rooftrace.training.validation`). This script builds the recipe's
:class:`rooftrace.training.loop.Trainer` from ``--init-from`` (default: the shipped model) and times
:meth:`~rooftrace.training.loop.Trainer.validate` ``--rounds`` times, with the search's share, and prints the F1 it
found, the F1 at the default settings and the validation loss, so that two source trees can be compared side by
side (each on its own ``PYTHONPATH``; the figures of one tree are the same every round)::

    git worktree add /tmp/before REV
    for T in /tmp/before .; do PYTHONPATH=$T/src .venv/bin/python benchmarks/validation_speed.py; done

The data come from ``ROOFTRACE_SAMPLE_DIR`` and ``ROOFTRACE_EXTRA_DIR`` (default: ``../shared/data/...`` beside
this checkout) and ``out/osm`` (``make osm-splits``), as the recipe reads them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "unet-lite0.yaml")
    ap.add_argument("--init-from", type=Path, default=REPO / "src/rooftrace/models/shipped/rooftrace-unet-lite0.safetensors")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    shared = REPO.parent / "shared" / "data"
    os.environ.setdefault("ROOFTRACE_SAMPLE_DIR", str(shared / "buildings-sample"))
    os.environ.setdefault("ROOFTRACE_EXTRA_DIR", str(shared / "buildings-extra"))
    os.chdir(REPO)  # the recipe names out/osm relative to the checkout
    import torch

    import rooftrace.training.loop as loop
    from rooftrace.config import load_config

    cfg = load_config(args.config, [f"train.init_from={args.init_from}"])
    env = loop.Env(device=torch.device("cpu"), amp_dtype=torch.bfloat16)
    trainer = loop.Trainer(cfg, None, env)
    search = loop.search_validation
    spent: list[float] = []

    def timed_search(*a, **k):  # noqa: ANN002, ANN003 (search_validation's arguments, passed on)
        t = time.perf_counter()
        try:
            return search(*a, **k)
        finally:
            spent.append(time.perf_counter() - t)

    loop.search_validation = timed_search
    times, row = [], {}
    for r in range(args.rounds):
        t = time.perf_counter()
        row = trainer.validate(r)
        times.append(time.perf_counter() - t)
    total, searched = statistics.median(times), statistics.median(spent)
    print(f"command: {' '.join([os.path.relpath(sys.executable), *sys.argv])}")
    print(f"rooftrace from {Path(loop.__file__).resolve().parents[2]}; {len(trainer.val_ds)} validation tiles; "
          f"{args.rounds} rounds, median")
    print(f"validation {total:.1f} s (rounds: {', '.join(f'{t:.1f}' for t in times)}): the settings search {searched:.1f} s, "
          f"the rest (forward pass, loss, pixel figures) {total - searched:.1f} s")
    print(f"object F1 {row['object_f1']:.4f} after the search, {row['object_f1_defaults']:.4f} at the default settings; "
          f"validation loss {row['val_loss']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
