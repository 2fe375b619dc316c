"""Adapting a model to one area: ``rooftrace finetune CHIPS_DIR --labels buildings.geojson --out my.safetensors``.

:func:`finetune` (a notebook calls it as the command does) runs these steps, in one run folder
(``runs/finetune-<name>-YYYYmmdd-HHMMSS/``, never shared):

1. **Chips** (:func:`rooftrace.prepare.chips.prepare_chips`, every option it takes): resampled to the
   model's pixel size and split *by area* into blocks for training, blocks for tuning (early stopping and
   the post-processing search) and blocks for the card (scored once, at the end, by both models).
2. **Labels against the imagery** (:func:`rooftrace.training.alignment.align_chips`): the starting model's footprint probabilities are
   cross-correlated with the rasterised labels, block by block (:mod:`rooftrace.prepare.shift`); a clear,
   consistent shift is corrected by preparing the chips again with the labels moved. Blocks with many
   confident buildings that no label touches are flagged as incompletely mapped.
3. **Adapting** with the packaged recipe (``rooftrace/training/recipes/finetune.yaml``, :class:`Recipe`):
   the encoder frozen for the first steps and its BatchNorm statistics throughout, a warm-up and a cosine
   schedule, a loss that forgives confident buildings outside the labels
   (:class:`rooftrace.training.losses.TolerantLoss`), scored on the tuning blocks every few steps, the best
   kept, stopped early, and all of it inside the time budget (``minutes``): after the first steps the
   schedule is shortened to what the remaining time allows.
4. **Tuning and the card**: both models get their post-processing searched on the tuning blocks
   (:func:`rooftrace.evaluation.tuning.search_settings`) and are scored on the card blocks: F1, precision,
   recall, counts. The adapted model is written to ``out`` (with ``<name>.postprocess.json`` beside it)
   only if it is better there, or when ``keep_worse``.

Run folder: ``chips/`` (the splits), ``adapted.safetensors`` (+ ``.postprocess.json``), ``card.md``,
``card.json`` (both models' figures, the shift, the incomplete blocks, the recipe and timings),
``steps.csv`` (the score at every evaluation).
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import json
import math
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from rooftrace.config import Config, config_from_dict, resolve_path
from rooftrace.core.errors import RooftraceError
from rooftrace.core.files import atomic_write_text, probe_writable
from rooftrace.core.locks import OutputLock
from rooftrace.core.paths import check_distinct
from rooftrace.evaluation.metrics import Score
from rooftrace.evaluation.tuning import score_settings, search_settings
from rooftrace.imagery.resample import gsd_alias
from rooftrace.instances.postprocess import PostprocessSettings
from rooftrace.labels.splits import open_split
from rooftrace.models.autocast import autocast, depthwise_in_fp32
from rooftrace.models.files import save_model
from rooftrace.models.tuned_file import search_starts, tuned_settings_path
from rooftrace.models.upsample_conv import use_transposed_upsampling
from rooftrace.training.alignment import (
    DEFAULT_GSD,
    Alignment,
    SplitProbs,
    align_chips,
    load_network,
    resolve_model,
)
from rooftrace.training.dataset import Draws, TileDataset, collate_pad, select_tiles
from rooftrace.training.freezing import NORM_TYPES, hold_norms
from rooftrace.training.losses import TolerantLoss
from rooftrace.training.recipe import Recipe, load_recipe

#: The exit status of ``rooftrace finetune`` when the adapted model is not better and is not kept.
NOT_BETTER = 3


# ------------------------------------------------------------------------------------------ the result


@dataclass
class Side:
    """One model's figures on the card blocks, with the post-processing tuned for it."""

    f1: float
    f1_pooled: float
    precision: float
    recall: float
    tp: int
    fp: int
    fn: int
    predicted: int
    labelled: int
    tuning_f1: float
    settings: dict

    @classmethod
    def of(cls, score: Score, tuning_f1: float, settings: PostprocessSettings) -> Side:
        return cls(score.f1, score.f1_pooled, score.precision, score.recall, score.tp, score.fp, score.fn,
                   score.tp + score.fp, score.tp + score.fn, tuning_f1, settings.to_dict())


@dataclass
class FinetuneResult:
    """What :func:`finetune` did; :meth:`card` is the before/after card."""

    run_dir: Path
    out: Path | None
    start_model: str
    start: Side
    adapted: Side
    card_split: str
    card_images: int
    steps: int
    best_step: int
    stopped: str
    seconds: float
    minutes: float
    alignment: Alignment
    recipe: Recipe
    history: list[dict] = field(default_factory=list)
    kept_worse: bool = False

    @property
    def better(self) -> bool:
        return self.adapted.f1 > self.start.f1

    def card(self) -> str:
        s, a = self.start, self.adapted
        rows = [("object F1 (mean over chips)", s.f1, a.f1), ("object F1 (pooled)", s.f1_pooled, a.f1_pooled),
                ("precision", s.precision, a.precision), ("recall", s.recall, a.recall)]
        lines = [f"# rooftrace finetune: {self.run_dir.name}", "",
                 f"Starting model `{self.start_model}` against the adapted one on the {self.card_images} chips of the "
                 f"{self.card_split} blocks (held out by area; neither model trained or was tuned on them). Each model "
                 f"uses the post-processing tuned for it on the tuning blocks.", "",
                 "| | start | adapted | change |", "|---|---|---|---|"]
        lines += [f"| {name} | {x:.4f} | {y:.4f} | {y - x:+.4f} |" for name, x, y in rows]
        lines += [f"| {name} | {x} | {y} | {y - x:+d} |" for name, x, y in
                  (("buildings found (true positives)", s.tp, a.tp), ("false positives", s.fp, a.fp),
                   ("missed buildings", s.fn, a.fn), ("buildings predicted", s.predicted, a.predicted))]
        lines += [f"| labelled buildings | {s.labelled} | {a.labelled} | |",
                  f"| tuned F1 on the tuning blocks | {s.tuning_f1:.4f} | {a.tuning_f1:.4f} | {a.tuning_f1 - s.tuning_f1:+.4f} |", "",
                  f"Adapting: {self.steps} steps in {self.seconds / 60:.1f} of {self.minutes:g} minutes, best at step "
                  f"{self.best_step}; {self.stopped}.", "", self.alignment.shift.summary(), "",
                  self.alignment.completeness.summary(), ""]
        if self.better:
            lines.append(f"The adapted model is better on the held-out blocks (F1 {s.f1:.4f} -> {a.f1:.4f})"
                         + (f"; written to {self.out}" if self.out else "") + ".")
        else:
            lines.append(f"The adapted model is NOT better on the held-out blocks (F1 {s.f1:.4f} -> {a.f1:.4f}); "
                         + (f"kept as asked ({self.out})." if self.out else "it was not written (--keep-worse keeps it)."))
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict:
        return {"run_dir": str(self.run_dir), "out": str(self.out) if self.out else None, "start_model": self.start_model,
                "card_split": self.card_split, "card_images": self.card_images, "better": self.better,
                "start": dataclasses.asdict(self.start), "adapted": dataclasses.asdict(self.adapted),
                "steps": self.steps, "best_step": self.best_step, "stopped": self.stopped, "seconds": round(self.seconds, 1),
                "minutes": self.minutes, "recipe": dataclasses.asdict(self.recipe), "shift": self.alignment.shift.to_json(),
                "completeness": self.alignment.completeness.to_json(), "history": self.history}


# ---------------------------------------------------------------------------------------------- adapting


def _new_run_dir(runs_dir: Path, name: str) -> Path:
    base = runs_dir / f"finetune-{name}-{datetime.now():%Y%m%d-%H%M%S}"
    run, n = base, 1
    while True:
        try:
            run.mkdir(parents=True)
            return run
        except FileExistsError:
            run, n = Path(f"{base}-{n}"), n + 1
        except OSError as exc:
            raise RooftraceError(f"{run}: cannot create the run folder ({exc.strerror})") from None


def _train_config(start: Config, recipe: Recipe, train_dir: Path, val_dir: Path, model_gsd: float, init_from: Path, seed: int) -> Config:
    data = start.to_dict()
    data["name"] = "finetune"
    data["data"].update(train=[{"path": str(train_dir)}], val=[{"path": str(val_dir)}], gsd=model_gsd, batch_size=recipe.batch_size,
                        crop_size=recipe.crop_size, workers=0, cache=True, sampling="uniform", max_train_tiles=0,
                        max_val_tiles=0)
    data["augment"].update(recipe.augment)
    data["optim"].update(lr=recipe.lr)
    data["train"].update(init_from=str(init_from), seed=seed, steps_per_epoch=recipe.eval_every, compile=False,
                         epochs=max(1, math.ceil(recipe.steps / recipe.eval_every)))
    data["model"].update(encoder_weights=None, encoder_weights_sha256=None)
    data["train"].update(teachers=[])  # finetune does not distil: a distilled start model's teachers are not its own
    data["loss"].update(distill=0.0)
    return config_from_dict(data)


class _Plan:
    """The step count the schedule runs to; shortened once the speed is known."""

    def __init__(self, total: int, warmup: float):
        self.total, self.warmup = total, warmup

    def factor(self, step: int) -> float:
        warm = max(1, int(round(self.warmup * self.total)))
        if step < warm:
            return (step + 1) / warm
        t = min(1.0, (step - warm) / max(1, self.total - warm))
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t))


def _tune(probs: SplitProbs, method: str, starts: list[PostprocessSettings]) -> tuple[PostprocessSettings, float]:
    settings, score, _, _ = search_settings(probs.probs, probs.labels, method, rounds=2, starts=starts)
    return settings, score.f1


def finetune(
    chips_dir: str | Path,
    labels: str | Path,
    out: str | Path,
    *,
    model: str | Path | None = None,
    minutes: float = 15.0,
    recipe: Recipe | None = None,
    model_gsd: float | None = None,
    val: float = 0.15,
    test: float = 0.15,
    align: bool = True,
    max_shift_m: float = 6.0,
    keep_worse: bool = False,
    force: bool = False,
    runs_dir: str | Path = "runs",
    device: str = "auto",
    seed: int = 0,
    method: str = "watershed",
    progress: bool = True,
    log: Callable[[str], None] = print,
    gsd: float | None = None,
    **prepare: Any,
) -> FinetuneResult:
    """Adapt ``model`` to the area of ``chips_dir`` and ``labels``; write it to ``out`` if it is better on
    held-out blocks (see the module docstring).

    Args:
        chips_dir, labels: As :func:`rooftrace.prepare.chips.prepare_chips` takes them (``prepare``: its other
            options: ``block``, ``block_zoom``, ``aoi``, ``empty``, ``tms``, ``labels_crs``, ``source``, and
            ``balance``, which here defaults to ``"buildings"``: the held-out blocks get their share of the
            buildings as well as of the chips, so the card does not rest on a handful of buildings).
        out: The adapted model file (``.safetensors``); its tuned settings go beside it.
        model: The starting model file, or ``None`` / ``"shipped"`` for the model that ships with rooftrace.
        minutes: The time budget, everything included (the chips, the shift, adapting, tuning, the card).
        recipe: :func:`load_recipe` (default: the packaged recipe).
        model_gsd: Pixel size in metres to adapt at, the adapted model's (default: the starting model's, else 0.3).
        val, test: Shares of the chips (by area) for the tuning blocks and the card blocks; with ``test`` 0 the
            card is scored on the tuning blocks (and says so).
        align: Correct a clear label shift; ``max_shift_m``: the largest shift searched.
        keep_worse: Write ``out`` even when the adapted model is not better on the card blocks.
        force: Overwrite ``out`` (and its settings file).
        runs_dir: Where the run folder is made.
        method: The post-processing method tuned (``watershed`` or ``seed``).
        gsd: The older name of ``model_gsd``, still taken.

    Raises:
        RooftraceError: Bad input (one line naming the file), ``out`` exists without ``force``, too few blocks,
            or a budget too small to adapt at all.
    """
    from tqdm import tqdm

    t_start = time.monotonic()
    prepare.setdefault("balance", "buildings")
    if not (isinstance(minutes, (int, float)) and math.isfinite(minutes) and minutes > 0):
        raise RooftraceError(f"--minutes {minutes}: must be a number of minutes greater than 0")
    deadline = t_start + 60.0 * minutes
    out = Path(out)
    if out.suffix.lower() != ".safetensors":
        raise RooftraceError(f"--out {out}: a rooftrace model file ends in .safetensors")
    for p in (out, tuned_settings_path(out)):
        if p.exists() and not force:
            raise RooftraceError(f"{p}: already exists; pass --force to overwrite it, or choose another --out")
    if not out.parent.is_dir():
        raise RooftraceError(f"--out {out}: its folder {out.parent} does not exist")
    check_distinct({"CHIPS_DIR": chips_dir, "--labels": labels, "--model": None if model in (None, "shipped") else model},
                   {"--out": out, "its tuned settings": tuned_settings_path(out)})
    probe_writable(out.parent, out, "; nothing was adapted")
    # One run at a time writes a model file: a second finetune to the same --out stops here, before any work.
    with OutputLock(out, what="--out"):
        recipe = recipe or load_recipe()
        start_path = resolve_model(model)
        net = load_network(start_path, device)
        model_gsd = gsd_alias(model_gsd, gsd, "model_gsd") or net.config.data.gsd or DEFAULT_GSD
        run = _new_run_dir(Path(resolve_path(str(runs_dir))), out.name.removesuffix(".safetensors"))
        log(f"run folder {run}; starting from {start_path} at {model_gsd:g} m a pixel")

        # 1-2. Chips split by area, the labels' shift, the starting model's probabilities.
        al = align_chips(chips_dir, labels, run / "chips", net, align=align, max_shift_m=max_shift_m, progress=progress,
                         model_gsd=model_gsd, val=val, test=test, seed=seed, **prepare)
        log(al.chips.summary())
        log(al.summary())
        if "train" not in al.probs or "val" not in al.probs or not al.chips.per_split.get("train", {}).get("chips") \
                or not al.chips.per_split.get("val", {}).get("chips"):
            raise RooftraceError(f"{chips_dir}: too few blocks of chips to hold some out ({al.chips.block_scheme}); give more chips, "
                                 "or smaller blocks (--block 1)")
        card_split = "test" if al.chips.per_split.get("test", {}).get("chips") else "val"
        tuning, card = al.probs["val"], al.probs[card_split]
        if not any(img.footprints for img in tuning.labels):
            raise RooftraceError(f"{labels}: the tuning blocks hold no labelled building; give more chips or another --seed")
        t_tune = time.perf_counter()
        starts = search_starts(start_path, method)  # read once: both models' searches start from the same settings
        start_settings, start_tuning_f1 = _tune(tuning, method, starts)
        tune_s = time.perf_counter() - t_tune
        start_side = Side.of(score_settings(card.probs, card.labels, method, start_settings), start_tuning_f1, start_settings)
        log(f"start: tuned F1 {start_tuning_f1:.4f} on the tuning blocks, {start_side.f1:.4f} on the {card_split} blocks")

        # 3. Adapting.
        cfg = _train_config(net.config, recipe, run / "chips" / "train", run / "chips" / "val", model_gsd, start_path, seed)
        torch.manual_seed(seed)
        np.random.seed(seed)
        train_ds = TileDataset(select_tiles(cfg.data.train, [open_split(cfg.data.train[0].path)]), cfg.data, cfg.augment, seed=seed)
        model = net.model
        if net.amp == torch.bfloat16 and net.device.type == "cpu":
            depthwise_in_fp32(model, "slow")  # faster on CPUs, as the shipped model's recipe trains (train.depthwise_fp32)
        use_transposed_upsampling(model)  # the same function and gradients, faster (train.transposed_upsampling)
        encoder = getattr(model, "encoder", None)
        enc_params = list(encoder.parameters()) if encoder is not None else []
        enc_ids = {id(p) for p in enc_params}
        other = [p for p in model.parameters() if id(p) not in enc_ids]
        groups = [{"params": other, "lr": recipe.lr}]
        if enc_params:
            groups.append({"params": enc_params, "lr": recipe.lr * recipe.encoder_lr})
        optimizer = torch.optim.AdamW(groups, weight_decay=cfg.optim.weight_decay)
        plan = _Plan(recipe.steps, recipe.warmup)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: plan.factor(s))
        loss_fn = TolerantLoss(cfg.loss, len(net.channels), recipe.unlabelled_weight, recipe.confident).to(net.device)
        frozen_bn = [m for m in (encoder.modules() if encoder is not None else []) if isinstance(m, NORM_TYPES)] if recipe.freeze_bn else []
        frozen = bool(enc_params) and recipe.freeze_encoder > 0  # for the first freeze_encoder of the (planned) steps

        def set_encoder(trainable: bool) -> None:
            for p in enc_params:
                p.requires_grad_(trainable)

        # Each evaluation re-runs the network over the tuning blocks; the end needs one pass over the tuning and
        # card blocks and a search: both estimated from the starting model's passes.
        n_eval = len(tuning.probs)
        n_end = n_eval + (len(card.probs) if card_split != "val" else 0)
        # The adapted model finds more buildings than the start, and post-processing them costs more: a wide margin.
        end_s = al.seconds_per_image * n_end * 1.5 + tune_s * 3.0 + 10.0
        eval_s = al.seconds_per_image * n_eval * 1.2 + 1.0
        best_f1, best_step, best_state, bad = -1.0, 0, None, 0
        history: list[dict] = []
        step, epoch, stopped = 0, 0, "the planned steps are done"
        calibrated = False
        g = torch.Generator().manual_seed(seed)
        set_encoder(not frozen)
        bar = tqdm(total=plan.total, desc="finetune", unit="step", disable=not progress, dynamic_ncols=True)
        t_train = time.monotonic()
        if time.monotonic() + end_s + eval_s >= deadline:
            raise RooftraceError(f"--minutes {minutes:g}: the budget is used up before adapting starts (the chips and the starting "
                                 f"model's scores took {time.monotonic() - t_start:.0f} s); give more minutes")
        while step < plan.total:
            train_ds.epoch = epoch
            sampler = Draws(torch.utils.data.RandomSampler(train_ds, replacement=True, num_samples=recipe.eval_every * recipe.batch_size,
                                                           generator=g))
            loader = torch.utils.data.DataLoader(train_ds, batch_size=recipe.batch_size, sampler=sampler, num_workers=0,
                                                 collate_fn=collate_pad)
            model.train()
            hold_norms(frozen_bn)
            t_chunk = time.monotonic()
            n_chunk, loss_sum = 0, 0.0
            for batch in loader:
                if frozen and step >= int(round(recipe.freeze_encoder * plan.total)):
                    set_encoder(True)
                    frozen = False
                x, y = batch["image"].to(net.device), batch["target"].to(net.device)
                with autocast(net.device, net.amp):
                    logits = model(x)
                loss = loss_fn(logits.float(), y)
                if not bool(torch.isfinite(loss.detach())):
                    raise RooftraceError(f"adapting diverged at step {step + 1} (the loss is {float(loss)}); lower the recipe's lr "
                                         f"(now {recipe.lr:g})")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.optim.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
                optimizer.step()
                scheduler.step()
                step += 1
                n_chunk += 1
                loss_sum += float(loss.detach())
                bar.update(1)
                # Stop while one more step, a score and the end still fit (a busy CPU slows all three).
                if step >= plan.total or time.monotonic() + 1.5 * (end_s + eval_s) + (time.monotonic() - t_chunk) / n_chunk >= deadline:
                    break
            chunk_s = time.monotonic() - t_chunk
            epoch += 1
            t_eval = time.monotonic()
            probs = tuning.again(net)
            f1 = score_settings(probs.probs, probs.labels, method, start_settings).f1
            eval_s = max(eval_s * 0.75, time.monotonic() - t_eval)
            history.append({"step": step, "lr": scheduler.get_last_lr()[0], "train_loss": loss_sum / max(n_chunk, 1),
                            "tuning_f1": f1, "seconds": round(time.monotonic() - t_start, 1)})
            if f1 > best_f1:
                best_f1, best_step, bad = f1, step, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                bad += 1
            bar.set_postfix(loss=f"{loss_sum / max(n_chunk, 1):.3f}", f1=f"{f1:.3f}", best=f"{best_f1:.3f}")
            left = deadline - time.monotonic() - end_s
            if not calibrated and n_chunk:
                # The speed is known now: fit the schedule into the time left.
                per_step = chunk_s / n_chunk + eval_s / recipe.eval_every
                fits = step + int(max(0.0, left) / per_step)
                if fits < plan.total:
                    plan.total = max(step, fits)
                    bar.total = plan.total
                    bar.refresh()
                    stopped = f"the schedule was shortened to {plan.total} steps to fit the {minutes:g} minutes"
                calibrated = True
            if recipe.patience and bad >= recipe.patience:
                stopped = f"stopped early: no better F1 on the tuning blocks for {recipe.patience} evaluations"
                break
            if step < plan.total and left < chunk_s / max(n_chunk, 1) * min(recipe.eval_every, plan.total - step) + eval_s:
                stopped = f"stopped at the time budget ({minutes:g} minutes)"
                break
        bar.close()
        train_s = time.monotonic() - t_train
        if best_state is not None:
            model.load_state_dict(best_state)
        model.eval()

        # 4. Tuning and the card.
        adapted_path = run / "adapted.safetensors"
        extra = {"finetune": {"start_model": str(start_path), "steps": step, "best_step": best_step, "chips": str(chips_dir),
                              "labels": str(labels)}}
        save_model(adapted_path, model, cfg, extra=extra)
        tuning_a = tuning.again(net)
        card_a = tuning_a if card_split == "val" else card.again(net)
        a_settings, a_tuning_f1 = _tune(tuning_a, method, [start_settings, *starts])
        adapted_side = Side.of(score_settings(card_a.probs, card_a.labels, method, a_settings), a_tuning_f1, a_settings)
        _write_settings(tuned_settings_path(adapted_path), method, a_settings, a_tuning_f1, run / "chips" / "val", force=True)
        result = FinetuneResult(run, None, str(start_path), start_side, adapted_side, card_split, len(card.probs), step, best_step,
                                stopped, time.monotonic() - t_start, float(minutes), al, recipe, history)
        if result.better or keep_worse:
            save_model(out, model, cfg, extra=extra, force=force)  # one that appeared meanwhile is not overwritten either
            _write_settings(tuned_settings_path(out), method, a_settings, a_tuning_f1, run / "chips" / "val", force=force)
            result.out, result.kept_worse = out, not result.better
        result.seconds = time.monotonic() - t_start
        _write_run_files(result, train_s)
        return result


def _write_settings(path: Path, method: str, settings: PostprocessSettings, f1: float, split: Path, force: bool) -> None:
    payload = {"method": method, "settings": settings.to_dict(), "object_f1": f1, "split": str(split), "tta": False,
               "by": "rooftrace finetune"}
    atomic_write_text(path, json.dumps(payload, indent=2), force=force)


def _write_run_files(result: FinetuneResult, train_s: float) -> None:
    run = result.run_dir
    atomic_write_text(run / "card.md", result.card(), force=True)
    data = result.to_json()
    data["train_seconds"] = round(train_s, 1)
    atomic_write_text(run / "card.json", json.dumps(data, indent=2), force=True)
    if result.history:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(result.history[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(result.history)
        atomic_write_text(run / "steps.csv", buf.getvalue(), force=True)


__all__ = ["NOT_BETTER", "Alignment", "FinetuneResult", "Recipe", "Side", "align_chips", "finetune", "load_network",
           "load_recipe", "resolve_model"]
