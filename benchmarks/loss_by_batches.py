"""Training loss of several weights on the same batches: is a rising epoch loss the model or the batches?

Builds the default recipe's training data as ``rooftrace train`` does, cuts the batches of two epochs
(the recipe's seeded sampler and augmentation: the same for every model) and prints each model's mean
loss on them, with BatchNorm in training and in evaluation mode. No weights are changed.

    ROOFTRACE_EXTRA_DIR=../shared/data/buildings-extra .venv/bin/python benchmarks/loss_by_batches.py \
        e10=runs/lite0-r6-20261205-233220/best.safetensors e22=runs/lite0-r6-20261205-233220/last.safetensors
"""

import sys

import torch

from rooftrace.config import load_config
from rooftrace.training.loop import Trainer, setup_env

EPOCHS = (3, 17)


def main(argv: list[str]) -> None:
    models = [a.split("=", 1) for a in argv] or [["shipped", "src/rooftrace/models/shipped/rooftrace-unet-lite0.safetensors"]]
    for name, weights in models:
        cfg = load_config("configs/unet-lite0.yaml", [f"train.init_from={weights}", "train.steps_per_epoch=25"])
        t = Trainer(cfg, None, setup_env(cfg))
        for mode in ("train", "eval"):
            t.net.train(mode == "train")
            means = []
            with torch.no_grad():
                for epoch in EPOCHS:
                    total = n = 0
                    for b in t._train_loader(epoch):
                        x, y = t._to(b["image"]), t._to(b["target"])
                        with t._autocast():
                            logits = t.net(x)
                        total += float(t.loss_fn(logits.float(), y)) * x.shape[0]
                        n += x.shape[0]
                    means.append(total / n)
            print(f"{name}: BatchNorm {mode}: " + ", ".join(f"epoch {e}'s batches {m:.4f}" for e, m in zip(EPOCHS, means)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
