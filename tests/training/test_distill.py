"""Distillation (train.teachers, loss.distill): the teachers' mean, the checks on teacher files, the loss, a run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rooftrace.config import load_config
from rooftrace.core.errors import RooftraceError
from rooftrace.models.architectures import build_model
from rooftrace.models.files import load_model, save_model
from rooftrace.training.distill import Teachers, distilled_loss
from rooftrace.training.losses import SegmentationLoss

REPO = Path(__file__).resolve().parents[2]
BASE = REPO / "configs" / "baseline-unet.yaml"
SMALL = ["model.base_channels=4", "data.channels=[footprint, boundary, contact]", "loss.channel_weights=[1.0, 0.5, 0.5]"]


def _model_file(path: Path, seed: int, *overrides: str, bias: float | None = None) -> Path:
    cfg = load_config(BASE, [*SMALL, *overrides])
    torch.manual_seed(seed)
    model = build_model(cfg.model, len(cfg.data.channels))
    if bias is not None:  # a teacher sure that every pixel is a building
        last = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        with torch.no_grad():
            last.weight.mul_(0.01)
            last.bias.fill_(bias)
    # Random BatchNorm statistics, so that folding them has something to fold.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return save_model(path, model, cfg)


def test_teachers_give_the_mean_of_their_sigmoid_probabilities(tmp_path):
    a, b = _model_file(tmp_path / "a.safetensors", 1), _model_file(tmp_path / "b.safetensors", 2)
    cfg = load_config(BASE, SMALL)
    teachers = Teachers([a, b], cfg.data.channels, cfg.data.mean, cfg.data.std, torch.device("cpu"))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pa = torch.sigmoid(load_model(a).model(x))
        pb = torch.sigmoid(load_model(b).model(x))
    got = teachers(x)
    assert len(teachers) == 2 and got.shape == (2, 3, 64, 64) and got.dtype == torch.float32
    assert not torch.allclose(pa, pb, atol=1e-3)  # two different teachers, so the mean is not either one
    torch.testing.assert_close(got, (pa + pb) / 2, atol=1e-5, rtol=1e-4)
    assert all(not p.requires_grad for net in teachers.models for p in net.parameters())


def test_a_teacher_with_other_channels_or_normalisation_is_refused_by_name(tmp_path):
    cfg = load_config(BASE, SMALL)
    one = _model_file(tmp_path / "one-channel.safetensors", 1, "data.channels=[footprint]", "loss.channel_weights=[1.0]")
    assert cfg.data.channels == ("footprint", "boundary", "contact")
    with pytest.raises(RooftraceError, match=r"one-channel\.safetensors.*channels \['footprint'\]"):
        Teachers([one], cfg.data.channels, cfg.data.mean, cfg.data.std, torch.device("cpu"))
    other = _model_file(tmp_path / "imagenet-norm.safetensors", 1)  # the baseline config's ImageNet mean and std
    with pytest.raises(RooftraceError, match=r"imagenet-norm\.safetensors.*normalised"):
        Teachers([other], cfg.data.channels, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), torch.device("cpu"))


def test_the_distilled_loss_blends_the_labels_and_the_teachers():
    cfg = load_config(BASE, SMALL)
    loss_fn = SegmentationLoss(cfg.loss, 3)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 16, 16, generator=g)
    target = (torch.rand(2, 3, 16, 16, generator=g) > 0.5).float()
    soft = torch.rand(2, 3, 16, 16, generator=g)
    hard, teach = loss_fn(logits, target), loss_fn(logits, soft)
    assert not torch.isclose(hard, teach)
    assert torch.equal(distilled_loss(loss_fn, logits, target, None, 0.5), hard)
    assert torch.equal(distilled_loss(loss_fn, logits, target, soft, 0.0), hard)
    torch.testing.assert_close(distilled_loss(loss_fn, logits, target, soft, 0.25), 0.75 * hard + 0.25 * teach)
    with pytest.raises(ValueError, match="differ"):
        distilled_loss(loss_fn, logits, target, soft[:, :1], 0.5)


def test_teachers_and_a_distillation_weight_go_together():
    with pytest.raises(RooftraceError, match="go together"):
        load_config(BASE, ["train.teachers=[a.safetensors]"])
    with pytest.raises(RooftraceError, match="go together"):
        load_config(BASE, ["loss.distill=0.5"])
    with pytest.raises(RooftraceError, match="loss.distill 1.0"):
        load_config(BASE, ["train.teachers=[a.safetensors]", "loss.distill=1.0"])
    cfg = load_config(BASE, ["train.teachers=[a.safetensors, b.safetensors]", "loss.distill=0.5"])
    assert cfg.train.teachers == ("a.safetensors", "b.safetensors") and cfg.loss.distill == 0.5


def test_a_distilled_run_learns_towards_its_teacher(mini_split, tmp_path):
    """Two runs from the same weights and seed, one with a teacher sure that every pixel is a building
    (probability 0.98) at weight 0.9: the distilled student ends much closer to the teacher's
    probabilities on a validation tile than the plain one, and its config keeps the teachers."""
    from rooftrace.imagery.read import read_rgb
    from rooftrace.labels.splits import open_split
    from rooftrace.training import loop

    start = _model_file(tmp_path / "start.safetensors", 3)
    teacher = _model_file(tmp_path / "teacher.safetensors", 4, bias=4.0)
    common = [*SMALL, f"data.train={mini_split / 'train'}", f"data.val={mini_split / 'val'}", "data.crop_size=64",
              "data.batch_size=2", "train.steps_per_epoch=10", "train.epochs=2", "data.workers=0", "train.vis_tiles=1",
              "data.max_val_tiles=1", "train.patience=0", f"train.init_from={start}", "optim.lr=2e-2"]
    plain = Path(loop.train(load_config(BASE, [*common, f"train.runs_dir={tmp_path / 'plain'}"]))["run_dir"])
    distilled = Path(loop.train(load_config(BASE, [*common, f"train.runs_dir={tmp_path / 'distilled'}",
                                                   f"train.teachers=[{teacher}]", "loss.distill=0.9"]))["run_dir"])
    assert load_config(distilled / "config.yaml").train.teachers == (str(teacher),)

    labels = open_split(mini_split / "val")
    rgb = read_rgb(labels.image_path(next(iter(labels))))[:128, :128]
    cfg = load_config(BASE, SMALL)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (cfg.data.mean, cfg.data.std))
    x = (torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255 - mean) / std

    def probs(path: Path) -> torch.Tensor:
        with torch.no_grad():
            return torch.sigmoid(load_model(path).model(x))

    target = probs(teacher)
    assert float(target.min()) > 0.95
    gap_plain = (probs(plain / "last.safetensors") - target).abs().mean()
    gap_distilled = (probs(distilled / "last.safetensors") - target).abs().mean()
    assert gap_distilled < 0.5 * gap_plain, (float(gap_distilled), float(gap_plain))


def test_finetune_does_not_carry_a_distilled_models_teachers(tmp_path):
    """A model trained with teachers records them in its config; ``rooftrace finetune`` trains without
    them (its own loop), so the config it writes names none."""
    from rooftrace.training.finetune import _train_config
    from rooftrace.training.recipe import load_recipe

    start = load_config(BASE, [*SMALL, "train.teachers=[/elsewhere/teacher.safetensors]", "loss.distill=0.5"])
    cfg = _train_config(start, load_recipe(), tmp_path / "train", tmp_path / "val", 0.3, tmp_path / "start.safetensors", 0)
    assert cfg.train.teachers == () and cfg.loss.distill == 0.0
    assert cfg.data.channels == start.data.channels
