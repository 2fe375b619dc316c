"""Training: the loop, validation by object-wise F1, run folders that survive being killed.

``train(cfg)`` trains one run into ``runs/NAME-YYYYmmdd-HHMMSS/``:

- ``config.yaml`` (the resolved config), ``train.log`` (the progress lines), ``metrics.csv`` (one row
  per epoch), ``curves.png``, ``visual/epoch-NNN.png`` (image | ground truth | prediction for a few
  validation tiles), ``best.safetensors`` (best object F1) with ``best.postprocess.json`` (the post-processing
  settings its validation found, :mod:`rooftrace.training.validation`), ``last.safetensors`` and
  ``resume.safetensors`` (optimizer, scheduler, grad scaler, epoch, RNG states).

Every file is written atomically, and an epoch's files are one commit: they wait in ``.epoch-pending/``
until the resume state is written, then move into place (``resume`` finishes or drops a pending set).
So a run killed at any moment, or stopped by a full disk, continues with ``resume(run_dir)`` from its
last finished epoch and, on the CPU, ends with the weights and
metrics an uninterrupted run would have: batches depend only on ``(seed, epoch)``.

Under ``torchrun --nproc_per_node N`` the same code trains with DistributedDataParallel (gloo on the
CPU, NCCL on GPUs): a distributed sampler splits each epoch, rank 0 validates and writes.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import (
    DataLoader,
    DistributedSampler,
    RandomSampler,
    WeightedRandomSampler,
)
from tqdm import tqdm

from rooftrace.config import Config, depthwise_mode, dump_yaml, load_config, resolve_path
from rooftrace.core.errors import RooftraceError
from rooftrace.core.files import atomic_write_bytes, atomic_write_text
from rooftrace.core.locks import OutputLock
from rooftrace.core.machine import CPU_PIXELS_PER_FORWARD
from rooftrace.instances.postprocess import PostprocessSettings
from rooftrace.labels.records import LabelSet, LoadReport
from rooftrace.labels.splits import open_split
from rooftrace.models.architectures import build_model, count_parameters
from rooftrace.models.autocast import (
    autocast,
    autocast_dtype,
    depthwise_in_fp32,
    dtype_name,
)
from rooftrace.models.files import save_model
from rooftrace.models.inference_form import inference_copy
from rooftrace.models.tuned_file import POSTPROCESS_SUFFIX
from rooftrace.models.upsample_conv import use_transposed_upsampling
from rooftrace.training.dataset import Draws, TileDataset, collate_pad, same_size_batches, select_tiles
from rooftrace.training.distill import Teachers, distilled_loss
from rooftrace.training.freezing import encoder_layers_up_to, freeze, hold_norms
from rooftrace.training.losses import SegmentationLoss
from rooftrace.training.resume import (
    PENDING,
    load_resume_state,
    move_pending,
    pending_epoch,
    recover_epoch_files,
    save_resume_state,
)
from rooftrace.training.sampling import tile_weights
from rooftrace.training.validation import search_validation, validation_record, validation_settings

#: What :meth:`Trainer.validate` measures (NaN in the rows of epochs that ``train.val_every`` skips).
#: ``object_f1`` and the pooled F1, precision and recall are at the settings the validation's search found
#: (``train.val_settings``, ``train.val_search``); ``object_f1_defaults`` is the mean F1 at the default settings.
VAL_FIELDS = ("val_loss", "pixel_iou", "pixel_f1", "pixel_precision", "pixel_recall", "object_f1", "object_f1_pooled",
              "object_precision", "object_recall", "object_f1_defaults")
METRIC_FIELDS = ["epoch", "lr", "train_loss", *VAL_FIELDS, "train_images_per_s", "epoch_s"]


@dataclass
class Env:
    """Where this process trains: device, precision, and its place in a distributed run."""

    device: torch.device
    amp_dtype: torch.dtype | None
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_env(cfg: Config) -> Env:
    """Pick the device and precision; join the process group when started by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    want = cfg.train.device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want.startswith("cuda") and not torch.cuda.is_available():
        raise RooftraceError("train.device is cuda but no CUDA GPU is available")
    if want == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        raise RooftraceError("train.device is mps but Apple's Metal (MPS) is not available in this build of PyTorch or on "
                             "this machine; use cpu or auto")
    if world > 1:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if want.startswith("cuda"):
            torch.cuda.set_device(local)
            want = f"cuda:{local}"
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if want.startswith("cuda") else "gloo")
    device = torch.device(want)
    amp_dtype = autocast_dtype(cfg.train.amp, device)
    return Env(device=device, amp_dtype=amp_dtype, rank=rank, world=world)


def init_weights(model: torch.nn.Module, path: Path) -> None:
    """Load a rooftrace model file's weights into ``model`` to fine-tune it (``train.init_from``).

    The file is read as every model file is (safetensors only, its SHA-256 sidecar checked), and its
    tensors must fit the config's network exactly, names and shapes.
    """
    from rooftrace.models.files import read_model_file

    tensors, _ = read_model_file(path)
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}, strict=True)
    except RuntimeError as exc:
        raise RooftraceError(f"train.init_from {path}: its weights do not fit this config's network "
                             f"({str(exc).splitlines()[0]})") from None


def _seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _logger(run_dir: Path | None, main: bool) -> logging.Logger:
    log = logging.getLogger(f"rooftrace.training.loop.{id(run_dir)}")
    log.setLevel(logging.INFO)
    log.propagate = False
    log.handlers.clear()
    if main and run_dir is not None:
        fh = logging.FileHandler(run_dir / "train.log")
        fh.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(fh)
        sh = logging.StreamHandler()
        sh.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(sh)
    return log


def new_run_dir(cfg: Config) -> Path:
    """``RUNS/NAME-YYYYmmdd-HHMMSS`` (a suffix is added if that exists: runs never share a folder)."""
    base = resolve_path(cfg.train.runs_dir) / f"{cfg.name}-{datetime.now():%Y%m%d-%H%M%S}"
    run, n = base, 1
    while True:  # mkdir, not exists(): two runs started in the same second never share a folder
        try:
            run.mkdir(parents=True)
            return run
        except FileExistsError:
            if not base.parent.is_dir():
                raise RooftraceError(f"{run}: cannot create the run folder ({base.parent} is a file, not a folder "
                                     "(train.runs_dir)); nothing was trained") from None
            run, n = Path(f"{base}-{n}"), n + 1
        except OSError as exc:
            raise RooftraceError(f"{run}: cannot create the run folder ({exc.strerror}; train.runs_dir); nothing was "
                                 "trained") from None


class Trainer:
    """One run: data, model, optimisation state and the run folder."""

    def __init__(self, cfg: Config, run_dir: Path | None, env: Env):
        self.cfg, self.env, self.run_dir = cfg, env, run_dir
        self.log = _logger(run_dir, env.main)
        _seed_everything(cfg.train.seed)
        self.train_labels = [open_split(spec) for spec in cfg.data.train]
        self.val_labels = [open_split(spec) for spec in cfg.data.val]
        for ls in (*self.train_labels, *self.val_labels):
            if env.main and (ls.report.problems or ls.report.dropped):
                self.log.info(ls.report.summary())
        self.train_ds = TileDataset(select_tiles(cfg.data.train, self.train_labels), cfg.data, cfg.augment,
                                    seed=cfg.train.seed, max_tiles=cfg.data.max_train_tiles)
        self.val_ds = TileDataset(select_tiles(cfg.data.val, self.val_labels), cfg.data, None, max_tiles=cfg.data.max_val_tiles)
        self._val_batches: list[list[int]] | None = None  # made at the first validation (same_size_batches)
        # Decode every tile once, before workers fork (with data.cache every worker shares what was
        # decoded). An unreadable tile is left out and named (exit status 1); --strict stops at it.
        for ds, name in ((self.train_ds, "data.train"), (self.val_ds, "data.val")):
            report = LoadReport(name)
            dropped = ds.drop_unreadable(report)
            if env.main and dropped:
                for message in report.messages:
                    self.log.info(f"skipped {message}; the tile is left out of {name}")
                self.log.info(f"{name}: {len(dropped)} unreadable tile(s) left out; {len(ds)} kept")
        # Tile statistics for balanced sampling and building-focused crops, computed once before
        # workers fork (they share them).
        self.weights = None
        if cfg.data.sampling == "balanced" or cfg.augment.focus:
            stats = [self.train_ds.stats(i) for i in range(len(self.train_ds))]
            if cfg.data.sampling == "balanced":
                self.weights = tile_weights(stats, [ref.source for ref in self.train_ds.items], cfg.data.crop_size,
                                            [spec.weight for spec in cfg.data.train])
                if env.main:
                    shares = np.bincount([ref.source for ref in self.train_ds.items], weights=self.weights)
                    self.log.info("balanced sampling, share of batches by source: " + ", ".join(
                        f"{spec.path} {v:.0%}" for spec, v in zip(cfg.data.train, shares)))
        self.channels = len(cfg.data.channels)
        model = build_model(cfg.model, self.channels)
        if cfg.train.init_from:
            init_weights(model, resolve_path(cfg.train.init_from))
        model = model.to(env.device)
        # train.freeze_encoder: the first encoder layers keep their weights and BatchNorm statistics.
        try:
            self.frozen_norms = freeze(encoder_layers_up_to(model, cfg.train.freeze_encoder))
        except ValueError as e:
            raise RooftraceError(f"train.freeze_encoder {cfg.train.freeze_encoder}: {e}") from None
        depthwise = depthwise_mode(cfg.train.depthwise_fp32) if env.amp_dtype is not None else "none"
        depthwise_in_fp32(model, depthwise)
        if cfg.train.transposed_upsampling:
            use_transposed_upsampling(model)
        if cfg.train.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.net = model
        # train.val_settings / val_search: the post-processing settings each validation climbs from.
        self.val_start, self.val_start_from = validation_settings(cfg)
        self.val_rounds = cfg.train.val_search
        self.val_found = self.val_start  # the settings the last validation found
        # train.teachers: models whose mean probabilities are a second, soft target (loss.distill).
        self.teachers = (Teachers([resolve_path(p) for p in cfg.train.teachers], cfg.data.channels, cfg.data.mean, cfg.data.std,
                                  env.device, depthwise_fp32=depthwise,
                                  channels_last=cfg.train.channels_last)
                         if cfg.train.teachers else None)
        # The moving average of the weights (train.ema): updated after every step, validated and saved in
        # place of the raw weights; BatchNorm statistics are averaged too.
        self.ema = (torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.train.ema), use_buffers=True)
            if cfg.train.ema else None)
        if env.world > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[env.device.index] if env.device.type == "cuda" else None)
        if cfg.train.compile:
            self.net = torch.compile(self.net)
        self.loss_fn = SegmentationLoss(cfg.loss, self.channels).to(env.device)
        self.steps_per_epoch = cfg.train.steps_per_epoch or math.ceil(len(self.train_ds) / (cfg.data.batch_size * env.world))
        self.optimizer = _adamw(model, cfg)
        total_steps = cfg.train.epochs * self.steps_per_epoch
        # OneCycleLR needs a warm-up of at least two steps; very short runs get that much.
        pct_start = min(max(cfg.optim.pct_start, 2.0 / total_steps), 0.9)
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=cfg.optim.lr, total_steps=total_steps,
            pct_start=pct_start, anneal_strategy="cos", div_factor=cfg.optim.div_factor,
            final_div_factor=cfg.optim.final_div_factor,
        )
        # A gradient scaler only for fp16; bf16 has fp32's exponent range and needs none.
        self.scaler = torch.amp.GradScaler(self.env.device.type, enabled=self.env.amp_dtype == torch.float16)
        self.start_epoch = 0
        self.best_f1 = -1.0
        self.best_epoch = -1
        self.best_settings: PostprocessSettings | None = None
        self.bad_epochs = 0
        self.history: list[dict[str, Any]] = []

    # --- data ---------------------------------------------------------------------------------

    def _train_loader(self, epoch: int) -> DataLoader:
        self.train_ds.epoch = epoch
        if self.env.world > 1:
            sampler = DistributedSampler(self.train_ds, num_replicas=self.env.world, rank=self.env.rank, shuffle=True, seed=self.cfg.train.seed)
            sampler.set_epoch(epoch)
        else:
            g = torch.Generator().manual_seed(self.cfg.train.seed * 7919 + epoch)
            n = self.steps_per_epoch * self.cfg.data.batch_size
            if self.weights is not None:
                sampler = WeightedRandomSampler(self.weights.tolist(), num_samples=n, replacement=True, generator=g)
            else:
                sampler = RandomSampler(self.train_ds, replacement=n > len(self.train_ds), num_samples=n, generator=g)
            sampler = Draws(sampler)  # a tile drawn twice in an epoch: two crops and augmentations
        return DataLoader(self.train_ds, batch_size=self.cfg.data.batch_size, sampler=sampler, num_workers=self.cfg.data.workers,
                          pin_memory=self.env.device.type == "cuda", drop_last=False, collate_fn=collate_pad)

    def _autocast(self):
        return autocast(self.env.device, self.env.amp_dtype)

    def _to(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.env.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.train.channels_last and x.ndim == 4 else x

    # --- one epoch ----------------------------------------------------------------------------

    def train_epoch(self, epoch: int) -> tuple[float, float]:
        """Train one epoch; returns (mean loss, images per second)."""
        self.net.train()
        hold_norms(self.frozen_norms)
        total, n_img, steps = 0.0, 0, 0
        t0 = time.perf_counter()
        bar = tqdm(self._train_loader(epoch), total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{self.cfg.train.epochs}",
                   disable=not self.env.main, leave=False, dynamic_ncols=True)
        for batch in _worker_errors(bar):
            if steps >= self.steps_per_epoch:
                break
            x, y = self._to(batch["image"]), self._to(batch["target"])
            with self._autocast():
                logits = self.net(x)
                soft = self.teachers(x) if self.teachers is not None else None
            loss = distilled_loss(self.loss_fn, logits.float(), y, soft, self.cfg.loss.distill)
            bad = not bool(torch.isfinite(loss.detach()))
            if self.env.world > 1:  # every process stops together, or the others would wait for it forever
                flag = torch.tensor([float(bad)], device=self.env.device if self.env.device.type == "cuda" else "cpu")
                dist.all_reduce(flag)
                bad = bool(flag.item() > 0)
            if bad:
                self._diverged(epoch, f"step {steps + 1}: the training loss is {float(loss.detach())}")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.cfg.optim.grad_clip:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            steps += 1
            total += float(loss.detach()) * x.shape[0]
            n_img += x.shape[0]
            rate = n_img * self.env.world / max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(loss=f"{total / n_img:.4f}", img_s=f"{rate:.1f}")
        mean = total / max(n_img, 1)
        if self.env.world > 1:
            t = torch.tensor([total, float(n_img)], device=self.env.device if self.env.device.type == "cuda" else "cpu")
            dist.all_reduce(t)
            mean = float(t[0] / t[1].clamp(min=1))
        return mean, n_img * self.env.world / max(time.perf_counter() - t0, 1e-9)

    @torch.inference_mode()
    def validate(self, epoch: int) -> dict[str, float]:
        """Loss, pixel metrics and object-wise F1 (one-to-one, IoU 0.5) on the validation tiles."""
        # The network as predict and tune run the file this epoch would save (folded, channels-last, depthwise
        # convolutions in the autocast dtype), not as it trains: the F1 that picks the best epoch is computed from the
        # probabilities those commands compute (models.inference_form).
        net = inference_copy(self.evaluated, self.cfg.model, self.channels)
        if self._val_batches is None:  # tiles of one padded size a batch, as predict runs them (the tiles are cached)
            sizes = [self.val_ds.load(i)[0].shape[:2] for i in range(len(self.val_ds))]
            cpu = self.env.device.type == "cpu"
            self._val_batches = same_size_batches(sizes, max(1, self.cfg.data.batch_size // 2),
                                                  CPU_PIXELS_PER_FORWARD if cpu else None)
        loader = DataLoader(self.val_ds, batch_sampler=self._val_batches, num_workers=0, collate_fn=collate_pad)
        gt = LabelSet(format="memory")
        probs_kept: list[np.ndarray] = []  # each tile's probabilities, in gt's order, for the settings search
        loss_sum, n, tp, fp, fn = 0.0, 0, 0, 0, 0
        vis: list[tuple[int, tuple[np.ndarray, np.ndarray, np.ndarray]]] = []
        for batch in loader:
            x, y = self._to(batch["image"]), self._to(batch["target"])
            with self._autocast():
                logits = net(x.contiguous(memory_format=torch.channels_last))
            logits = logits.float()
            if not bool(torch.isfinite(logits).all()):
                self._diverged(epoch, "validation: the network's outputs are not finite")
            loss_sum += float(self.loss_fn(logits, y)) * x.shape[0]
            n += x.shape[0]
            probs = torch.sigmoid(logits).cpu().numpy()
            target = batch["target"].numpy()
            for k in range(x.shape[0]):
                h, w = (int(v) for v in batch["size"][k])
                p, t = probs[k, :, :h, :w], target[k, :, :h, :w]
                fg, tg = p[0] > 0.5, t[0] > 0.5
                tp += int((fg & tg).sum()); fp += int((fg & ~tg).sum()); fn += int((~fg & tg).sum())
                idx = int(batch["index"][k])
                ref = self.val_ds.items[idx]
                gimg = gt.get_or_add(ref.key)
                gimg.footprints, gimg.width, gimg.height, gimg.source = self.val_ds.footprints(idx, (h, w)), w, h, ref.image.source
                probs_kept.append(p.astype(np.float16))  # half the memory; the search reads them back as float32
                if idx < self.cfg.train.vis_tiles:  # the visual check shows the first tiles, whatever the batches
                    vis.append((idx, (self.val_ds.load(idx)[0], t, p)))
        self.val_found, score, at_defaults = search_validation(probs_kept, gt, self.val_start, self.val_rounds)
        iou = tp / max(tp + fp + fn, 1)
        prec, rec = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
        if self.run_dir is not None:
            from rooftrace.training.figures import visual_check

            atomic_write_bytes(self.run_dir / "visual" / f"epoch-{epoch + 1:03d}.png",
                               visual_check([v for _, v in sorted(vis, key=lambda iv: iv[0])]), force=True)
        return {
            "val_loss": loss_sum / max(n, 1), "pixel_iou": iou, "pixel_f1": 2 * tp / max(2 * tp + fp + fn, 1),
            "pixel_precision": prec, "pixel_recall": rec, "object_f1": score.f1, "object_f1_pooled": score.f1_pooled,
            "object_precision": score.precision, "object_recall": score.recall, "object_f1_defaults": at_defaults.f1,
        }

    @property
    def evaluated(self) -> torch.nn.Module:
        """The weights a run validates and saves: their moving average (``train.ema``) or the weights."""
        return self.ema.module if self.ema is not None else self.model

    def _diverged(self, epoch: int, what: str) -> None:
        """Stop a run whose loss or weights are no longer finite, keeping the last good checkpoint."""
        last = self.run_dir / "last.safetensors" if self.run_dir is not None else None
        kept = (f"the last good checkpoint, {last} (epoch {len(self.history)}), is kept" if last is not None and last.exists()
                else "no epoch had finished, so there is no checkpoint")
        raise RooftraceError(f"training diverged at epoch {epoch + 1}, {what}; stopped ({kept}). Lower optim.lr "
                             f"(now {self.cfg.optim.lr:g}) or set optim.grad_clip, and train again")

    # --- the run ------------------------------------------------------------------------------

    def _write_epoch_files(self, epoch: int, row: dict[str, Any], improved: bool) -> None:
        """One commit per epoch: last/best/metrics/curves go to ``RUN/.epoch-pending/`` first, then
        ``resume.safetensors`` (the commit: it names the epoch), then they are moved into place. A run
        stopped at any point (a full disk, SIGKILL) leaves the previous epoch's files whole, and
        :func:`recover_epoch_files` finishes or drops the pending set on ``--resume``."""
        run = self.run_dir
        assert run is not None
        final = run
        run = final / PENDING
        shutil.rmtree(run, ignore_errors=True)
        try:
            run.mkdir()
        except OSError as exc:
            raise RooftraceError(f"{run}: cannot create it ({exc.strerror})") from None
        atomic_write_text(run / "EPOCH", f"{epoch + 1}\n", force=True)
        extra = {"epoch": epoch + 1, "metrics": {k: row[k] for k in row if k != "epoch"}}
        save_model(run / "last.safetensors", self.evaluated, self.cfg, extra=extra)
        if improved:
            save_model(run / "best.safetensors", self.evaluated, self.cfg, extra=extra)
            # The settings this validation found go beside the best weights, so that predict uses them at once
            # (rooftrace tune --force searches further from them).
            atomic_write_text(run / ("best" + POSTPROCESS_SUFFIX),
                              json.dumps(validation_record(self.val_found, row, epoch + 1, self.val_start_from, self.val_rounds,
                                                           [spec.path for spec in self.cfg.data.val]), indent=2), force=True)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=METRIC_FIELDS, lineterminator="\n")
        w.writeheader()
        for r in self.history:
            w.writerow({k: (f"{r[k]:.6g}" if isinstance(r.get(k), float) else r.get(k, "")) for k in METRIC_FIELDS})
        atomic_write_text(run / "metrics.csv", buf.getvalue(), force=True)
        from rooftrace.training.figures import plot_curves

        atomic_write_bytes(run / "curves.png", plot_curves(self.history), force=True)
        save_resume_state(final / "resume.safetensors", model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                          scaler=self.scaler, info={"epoch": epoch + 1, "best_f1": self.best_f1, "best_epoch": self.best_epoch,
                                                    "bad_epochs": self.bad_epochs, "history": self.history},
                          ema=self.ema)
        move_pending(final)

    def fit(self) -> dict[str, Any]:
        """Train from ``start_epoch`` to the end or to early stopping; returns the final summary."""
        cfg = self.cfg
        if self.env.main:
            total, trainable = count_parameters(self.model, trainable=False), count_parameters(self.model)
            params = f"{total / 1e6:.2f} M parameters" + (f" ({trainable / 1e6:.2f} M trained, train.freeze_encoder {cfg.train.freeze_encoder})"
                                                         if trainable < total else "")
            self.log.info(f"run {self.run_dir}: {cfg.model.arch}/{cfg.model.encoder}, {params}, "
                          f"{len(self.train_ds)} train / {len(self.val_ds)} val tiles, channels {list(cfg.data.channels)}, "
                          f"device {self.env.device}, precision {dtype_name(self.env.amp_dtype)}, world {self.env.world}")
            search = (f"{self.val_rounds} round(s) of the settings search from them" if self.val_rounds
                      else "scored at them as they are")
            self.log.info(f"validation: object F1 after post-processing with {self.val_start_from}, {search} "
                          "(train.val_settings, train.val_search); the F1 at the default settings is logged beside it")
        stop = False
        for epoch in range(self.start_epoch, cfg.train.epochs):
            t0 = time.perf_counter()
            train_loss, rate = self.train_epoch(epoch)
            if self.env.main:
                row: dict[str, Any] = {"epoch": epoch + 1, "lr": self.scheduler.get_last_lr()[0], "train_loss": train_loss}
                validated = (epoch + 1) % cfg.train.val_every == 0 or epoch + 1 == cfg.train.epochs
                row.update(self.validate(epoch) if validated else dict.fromkeys(VAL_FIELDS, math.nan))
                weights = (self.model,) if self.ema is None else (self.model, self.ema.module)  # raw and averaged
                bad_weight = next((k for m in weights for k, v in m.state_dict().items()
                                   if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
                if not math.isfinite(train_loss) or (validated and not math.isfinite(row["val_loss"])) or bad_weight is not None:
                    self._diverged(epoch, f"its end: training loss {train_loss:.4g}, validation loss {row['val_loss']:.4g}"
                                   + (f", weight {bad_weight} not finite" if bad_weight else ""))
                row["train_images_per_s"], row["epoch_s"] = rate, time.perf_counter() - t0
                self.history.append(row)
                improved = validated and row["object_f1"] > self.best_f1
                if improved:
                    self.best_f1, self.best_epoch, self.bad_epochs = row["object_f1"], epoch + 1, 0
                    self.best_settings = self.val_found
                elif validated:
                    self.bad_epochs += 1
                self._write_epoch_files(epoch, row, improved)
                scores = (f"val loss {row['val_loss']:.4f}, pixel IoU {row['pixel_iou']:.4f}, "
                          f"object F1 {row['object_f1']:.4f}{' (best)' if improved else ''} "
                          f"({row['object_f1_defaults']:.4f} at the default settings)" if validated
                          else f"not validated (train.val_every {cfg.train.val_every})")
                self.log.info(f"epoch {epoch + 1}/{cfg.train.epochs}: train loss {train_loss:.4f}, {scores}, "
                              f"{rate:.1f} img/s, {row['epoch_s']:.1f} s")
                stop = bool(cfg.train.patience) and self.bad_epochs >= cfg.train.patience
                if stop:
                    self.log.info(f"early stop: no better object F1 for {cfg.train.patience} epochs")
            if self.env.world > 1:
                flag = [stop]
                dist.broadcast_object_list(flag, src=0)
                stop = flag[0]
            if stop:
                break
        summary = {"run_dir": str(self.run_dir), "best_object_f1": self.best_f1, "best_epoch": self.best_epoch,
                   "epochs_run": len(self.history)}
        if self.env.main:
            self.log.info(f"done: best object F1 {self.best_f1:.4f} at epoch {self.best_epoch}; {self.run_dir}")
            if self.best_settings is not None:
                changed = {k: v for k, v in self.best_settings.to_dict().items() if v != PostprocessSettings().to_dict()[k]}
                self.log.info(f"the best epoch's validation settings, saved beside it as best{POSTPROCESS_SUFFIX} for predict "
                              f"(rooftrace tune --force searches further from them): {changed or 'the defaults'}")
        return summary


def validate_as_begun(trainer: Trainer) -> None:
    """A resumed run begun before validation searched its settings (its history has no ``object_f1_defaults``)
    goes on as it began, at the default settings with no search, so that its best epoch is chosen on one measure."""
    if any("object_f1_defaults" not in r for r in trainer.history):
        trainer.val_start, trainer.val_rounds = PostprocessSettings(), 0
        trainer.val_start_from = "the default settings (the run began before validation searched them)"


def _adamw(model: torch.nn.Module, cfg: Config) -> torch.optim.AdamW:
    """AdamW over ``model``'s parameters, fused (one kernel a tensor) when ``optim.fused`` and the build has it."""
    kwargs = {"lr": cfg.optim.lr / cfg.optim.div_factor, "weight_decay": cfg.optim.weight_decay}
    if cfg.optim.fused:
        try:
            return torch.optim.AdamW(model.parameters(), fused=True, **kwargs)
        except (RuntimeError, TypeError):  # a device or torch build without the fused kernel
            pass
    return torch.optim.AdamW(model.parameters(), **kwargs)


def _worker_errors(loader):
    """Batches of ``loader``; a :class:`RooftraceError` raised in a DataLoader worker (a corrupt tile read
    with ``data.cache: false``) comes back as its own one-line message, not wrapped in the worker's traceback."""
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except RooftraceError as exc:
            text = str(exc).strip()
            if "Traceback" not in text:
                raise
            last = text.splitlines()[-1]
            raise RooftraceError(last.split("RooftraceError: ", 1)[1] if "RooftraceError: " in last else last) from None
        yield batch


def _shared_run_dir(cfg: Config, env: Env, run_dir: Path | None) -> Path | None:
    if run_dir is None and env.main:
        run_dir = new_run_dir(cfg)
        atomic_write_text(run_dir / "config.yaml", dump_yaml(cfg), force=True)
    if env.world > 1:
        box = [str(run_dir) if run_dir else None]
        dist.broadcast_object_list(box, src=0)
        run_dir = Path(box[0]) if box[0] else None
    return run_dir if env.main else None


def train(cfg: Config) -> dict[str, Any]:
    """Start a new run of ``cfg``; returns its summary (run folder, best object F1, epochs run)."""
    env = setup_env(cfg)
    try:
        run_dir = _shared_run_dir(cfg, env, None)
        # The run holds its folder while it runs: a --resume of it meanwhile stops at once instead of writing into it.
        with OutputLock(run_dir, folder=True, what="run folder") if run_dir is not None else contextlib.nullcontext():
            return Trainer(cfg, run_dir, env).fit()
    finally:
        if env.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def resume(run_dir: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Continue a run from its last finished epoch, with its saved config (``--set`` may change it)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise RooftraceError(f"{run_dir}: not a run folder (no config.yaml)")
    cfg = load_config(run_dir / "config.yaml", overrides)
    env = setup_env(cfg)
    # A run folder another live run is writing (the first run, or another --resume of it) is not touched.
    lock = OutputLock(run_dir, folder=True, what="run folder to resume") if env.main else None
    try:
        trainer = Trainer(cfg, run_dir if env.main else None, env)
        state_path = run_dir / "resume.safetensors"
        # A run stopped while writing its first epoch's files has no resume state but a pending set:
        # it starts again from epoch 1 (every rank decides before rank 0 removes the set).
        restart = not state_path.exists() and pending_epoch(run_dir) is not None
        if env.world > 1:
            dist.barrier()
        if restart:
            info = None
        else:
            info = load_resume_state(state_path, model=trainer.model, optimizer=trainer.optimizer, scheduler=trainer.scheduler,
                                     scaler=trainer.scaler, ema=trainer.ema)
            trainer.start_epoch = int(info["epoch"])
            trainer.best_f1, trainer.best_epoch, trainer.bad_epochs = info["best_f1"], info["best_epoch"], info["bad_epochs"]
            trainer.history = list(info["history"])
            validate_as_begun(trainer)
        if env.main:
            note = recover_epoch_files(run_dir, None if info is None else trainer.start_epoch)
            if note:
                trainer.log.info(f"note: {run_dir}: {note}")
            trainer.log.info(f"resumed {run_dir} after epoch {trainer.start_epoch}" if info is not None
                             else f"restarted {run_dir} from epoch 1")
        return trainer.fit()
    finally:
        if lock is not None:
            lock.release()
        if env.world > 1 and dist.is_initialized():
            dist.destroy_process_group()
