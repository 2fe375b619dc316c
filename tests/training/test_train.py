"""Training: configs, models, loss, weights files, a real short run, kill-and-resume, DDP."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rooftrace.config import load_config
from rooftrace.core.errors import RooftraceError
from rooftrace.models.architectures import BaselineUNet, build_model
from rooftrace.models.files import load_model, read_model_file, save_model
from rooftrace.training.losses import SegmentationLoss
from tests.conftest import start_held

REPO = Path(__file__).resolve().parents[2]
NO_AUG = [f"augment.{k}=0" for k in ("hflip", "vflip", "rot90", "rotate", "scale_limit", "brightness_contrast", "hue_saturation", "blur_noise")]


def _overrides(mini: Path, runs: Path, *extra: str) -> list[str]:
    return [f"data.train={mini / 'train'}", f"data.val={mini / 'val'}", f"train.runs_dir={runs}", "data.crop_size=256",
            "data.batch_size=4", "train.steps_per_epoch=4", "data.workers=0", "train.vis_tiles=2", *NO_AUG, *extra]


# --- config -----------------------------------------------------------------------------------

def test_config_rejects_unknown_keys_and_wrong_types(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  epochz: 3\n")
    with pytest.raises(RooftraceError, match=r"c\.yaml: unknown config key\(s\) train\.epochz"):
        load_config(p)
    with pytest.raises(RooftraceError, match="train.epochs: expected an integer"):
        load_config(REPO / "configs" / "unet-r34.yaml", ["train.epochs=many"])
    with pytest.raises(RooftraceError, match="data.channels"):
        load_config(REPO / "configs" / "unet-r34.yaml", ["data.channels=[contact]"])


def test_config_overrides_and_every_shipped_config_loads():
    cfg = load_config(REPO / "configs" / "unet-r34.yaml", ["train.epochs=2", "optim.lr=3e-4", "data.channels=[footprint]"])
    assert cfg.train.epochs == 2 and cfg.optim.lr == 3e-4 and cfg.data.channels == ("footprint",)
    assert cfg.model.encoder == "resnet34" and cfg.model.encoder_weights is None
    assert cfg.loss.bce == 0.3 and cfg.loss.dice == 0.7
    for path in sorted((REPO / "configs").glob("*.yaml")):
        load_config(path)


# --- models and loss --------------------------------------------------------------------------

@pytest.mark.parametrize("arch,encoder", [("baseline-unet", "none"), ("unet", "resnet18"), ("unet", "tu-efficientnet_b0")])
def test_model_forward_backward(arch, encoder):
    from rooftrace.config import ModelConfig

    model = build_model(ModelConfig(arch=arch, encoder=encoder), classes=3)
    x = torch.randn(1, 3, 64, 64, requires_grad=True)
    y = model(x)
    assert y.shape == (1, 3, 64, 64)
    y.mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_baseline_unet_has_three_down_and_two_up_blocks():
    m = BaselineUNet(classes=1, base=8)
    assert [n for n, _ in m.named_children() if n.startswith("down")] == ["down1", "down2", "down3"]
    assert [n for n, _ in m.named_children() if n.startswith("up")] == ["up1", "up2"]


def test_loss_prefers_the_right_answer():
    from rooftrace.config import LossConfig

    loss = SegmentationLoss(LossConfig(), channels=3)
    target = torch.zeros(2, 3, 16, 16)
    target[:, 0, 4:12, 4:12] = 1
    target[:, 1, 4:12, 4] = 1
    good = (target * 2 - 1) * 8
    assert float(loss(good, target)) < 0.05 < float(loss(-good, target))
    focal = SegmentationLoss(LossConfig(focal=1.0, bce=0, dice=0), channels=3)
    assert float(focal(good, target)) < float(focal(torch.zeros_like(good), target))


# --- weights ----------------------------------------------------------------------------------

def test_weights_round_trip_hash_and_pickle_refusal(tmp_path):
    cfg = load_config(REPO / "configs" / "baseline-unet.yaml", ["model.base_channels=8"])
    model = build_model(cfg.model, 1).eval()
    path = save_model(tmp_path / "m.safetensors", model, cfg, half=True)
    assert (tmp_path / "m.safetensors.sha256").read_text().split()[0]
    loaded = load_model(path)
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        assert torch.allclose(model(x), loaded.model(x), atol=5e-2)  # fp16 storage
    assert loaded.channels == ("footprint",) and loaded.mean == tuple(cfg.data.mean)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(RooftraceError, match="SHA-256 does not match"):
        read_model_file(path)
    (tmp_path / "m.pth").write_bytes(b"\x80\x04not really")
    with pytest.raises(RooftraceError, match="pickle checkpoint"):
        load_model(tmp_path / "m.pth")


# --- real runs --------------------------------------------------------------------------------

RUN_FILES = {"config.yaml", "train.log", "metrics.csv", "curves.png", "best.safetensors", "best.safetensors.sha256",
             "last.safetensors", "last.safetensors.sha256", "resume.safetensors", "visual"}


def _rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_two_epochs_lower_the_loss_and_fill_the_run_folder(mini_split, tmp_path):
    from rooftrace.training.loop import train

    cfg = load_config(REPO / "configs" / "unet-r18.yaml", _overrides(mini_split, tmp_path / "runs", "train.epochs=2"))
    summary = train(cfg)
    run = Path(summary["run_dir"])
    assert run.parent == tmp_path / "runs" and run.name.startswith("unet-r18-")
    assert RUN_FILES <= {p.name for p in run.iterdir()}
    assert sorted(p.name for p in (run / "visual").iterdir()) == ["epoch-001.png", "epoch-002.png"]
    rows = _rows(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert float(rows[1]["train_loss"]) < float(rows[0]["train_loss"])
    for r in rows:
        assert 0.0 <= float(r["object_f1"]) <= 1.0 and 0.0 <= float(r["pixel_iou"]) <= 1.0
    saved = load_config(run / "config.yaml")
    assert saved == cfg
    best = load_model(run / "best.safetensors")
    assert best.channels == ("footprint", "boundary", "contact")
    assert "epoch" in (run / "train.log").read_text()


def test_killed_run_resumes_to_the_same_weights_and_metrics(mini_split, tmp_path):
    from rooftrace.training.loop import resume, train

    sets = _overrides(mini_split, tmp_path / "a", "train.epochs=3", "model.base_channels=16")
    straight = Path(train(load_config(REPO / "configs" / "baseline-unet.yaml", sets))["run_dir"])

    runs_b = tmp_path / "b"
    cmd = [sys.executable, "-m", "rooftrace", "train", "--config", str(REPO / "configs" / "baseline-unet.yaml")]
    for s in _overrides(mini_split, runs_b, "train.epochs=3", "model.base_channels=16"):
        cmd += ["--set", s]
    # Held right after its first epoch is committed and moved into place, and killed there.
    hold_after_one_epoch = """
        import sys
        import rooftrace.training.loop as loop
        from rooftrace.cli import main
        move = loop.move_pending
        def move_then_hold(run_dir):
            move(run_dir)
            held()
        loop.move_pending = move_then_hold
        sys.exit(main(sys.argv[1:]))
    """
    proc = start_held(hold_after_one_epoch, *cmd[3:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (state,) = runs_b.glob("*/resume.safetensors")
    run_b = state.parent
    # Killed with epoch 1's files in place and epoch 2 not committed (a kill between a commit and its moves:
    # test_a_run_stopped_while_moving_a_committed_epoch_finishes_the_moves_on_resume).
    assert [r["epoch"] for r in _rows(run_b)] == ["1"], "the run was not killed after its first epoch"
    resume(run_b)

    rows_a, rows_b = _rows(straight), _rows(run_b)
    assert [r["epoch"] for r in rows_b] == ["1", "2", "3"]
    for ra, rb in zip(rows_a, rows_b):
        for k in ("train_loss", "val_loss", "pixel_iou", "object_f1"):
            assert float(ra[k]) == pytest.approx(float(rb[k]), abs=1e-4), k
    wa, _ = read_model_file(straight / "last.safetensors")
    wb, _ = read_model_file(run_b / "last.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k].float(), wb[k].float(), atol=1e-5), k


def test_a_moving_average_of_the_weights_is_validated_saved_and_resumed_exactly(mini_split, tmp_path, monkeypatch):
    """train.ema: the saved weights are the moving average (not the raw weights), the resume state
    carries it, and a run stopped after its first epoch and resumed ends with the same average."""
    from safetensors.torch import load as st_load

    from rooftrace.training import loop

    def sets(runs: Path) -> list[str]:
        return _tiny(mini_split, runs, "train.ema=0.5")[4::2]  # the --set values

    straight = Path(loop.train(load_config(REPO / "configs" / "baseline-unet.yaml", sets(tmp_path / "a")))["run_dir"])
    state = st_load((straight / "resume.safetensors").read_bytes())
    raw = {k[6:]: v for k, v in state.items() if k.startswith("model/")}
    avg = {k[len("ema/module."):]: v for k, v in state.items() if k.startswith("ema/module.")}
    saved, _ = read_model_file(straight / "last.safetensors")
    assert raw.keys() == avg.keys() and saved.keys() <= raw.keys()
    assert all(torch.equal(saved[k].float(), avg[k].float()) for k in saved)
    assert any(not torch.allclose(saved[k].float(), raw[k].float()) for k in saved if saved[k].is_floating_point())

    real_epoch = loop.Trainer.train_epoch

    def stop_at_second_epoch(self, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return real_epoch(self, epoch)

    monkeypatch.setattr(loop.Trainer, "train_epoch", stop_at_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        loop.train(load_config(REPO / "configs" / "baseline-unet.yaml", sets(tmp_path / "b")))
    monkeypatch.setattr(loop.Trainer, "train_epoch", real_epoch)
    (run_b,) = list((tmp_path / "b").iterdir())
    assert len(_rows(run_b)) == 1
    loop.resume(run_b)
    resumed, _ = read_model_file(run_b / "last.safetensors")
    for k in saved:
        assert torch.allclose(saved[k].float(), resumed[k].float(), atol=1e-5), k
    assert load_config(run_b / "config.yaml").train.ema == 0.5
    with pytest.raises(RooftraceError, match="train.ema"):
        load_config(REPO / "configs" / "baseline-unet.yaml", ["train.ema=1.5"])


@pytest.mark.slow
def test_ddp_on_cpu_with_gloo_and_two_processes(mini_split, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533", "-m", "rooftrace",
           "train", "--config", str(REPO / "configs" / "baseline-unet.yaml")]
    for s in _overrides(mini_split, tmp_path / "runs", "train.epochs=2", "model.base_channels=16", "data.batch_size=2",
                        "train.steps_per_epoch=0"):
        cmd += ["--set", s]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = list((tmp_path / "runs").iterdir())
    assert RUN_FILES <= {p.name for p in run.iterdir()}
    assert len(_rows(run)) == 2
    assert "world 2" in (run / "train.log").read_text()


# --- runs that fail: one clear line, exit 2 (issue 16) -----------------------------------------------

def _tiny(mini: Path, runs: Path, *extra: str) -> list[str]:
    """A seconds-long CPU run: a 4-channel baseline U-Net on 64 px crops."""
    argv = ["train", "--config", str(REPO / "configs" / "baseline-unet.yaml")]
    for o in (f"data.train={mini / 'train'}", f"data.val={mini / 'val'}", f"train.runs_dir={runs}", "data.crop_size=64",
              "data.batch_size=2", "train.steps_per_epoch=2", "train.epochs=2", "data.workers=0", "model.base_channels=4",
              "train.vis_tiles=1", "data.max_val_tiles=1", "train.patience=0", *extra):
        argv += ["--set", o]
    return argv


def test_a_diverging_run_stops_with_one_line_and_keeps_the_last_good_checkpoint(mini_split, tmp_path, monkeypatch, capsys):
    """The loss turning NaN in epoch 2 (what optim.lr=100 does to a real network) stops the run with
    exit 2, naming the epoch and the checkpoint, which is epoch 1's and loads."""
    from rooftrace.cli import main
    from rooftrace.training.loop import Trainer

    poisoned = {"on": False}
    real_forward, real_write = SegmentationLoss.forward, Trainer._write_epoch_files

    def forward(self, logits, target):
        loss = real_forward(self, logits, target)
        return loss * float("nan") if poisoned["on"] else loss

    def write(self, *a, **k):
        real_write(self, *a, **k)
        poisoned["on"] = True

    monkeypatch.setattr(SegmentationLoss, "forward", forward)
    monkeypatch.setattr(Trainer, "_write_epoch_files", write)
    assert main(_tiny(mini_split, tmp_path / "runs")) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "training diverged at epoch 2, step 1: the training loss is nan" in err and "optim.lr" in err
    (run,) = (tmp_path / "runs").iterdir()
    assert f"{run / 'last.safetensors'} (epoch 1), is kept" in err
    assert load_model(run / "last.safetensors").meta["epoch"] == 1


@pytest.mark.parametrize("cache", ["true", "false"])
def test_a_corrupt_tile_is_left_out_and_named_and_strict_stops_at_it(mini_split, tmp_path, capsys, cache):
    """A truncated training tile is decoded once at the start (with or without data.cache), left out with a
    line naming it, and the run finishes with exit status 1; --strict stops at it (exit 2, one line)."""
    import shutil

    from rooftrace.cli import main

    split = tmp_path / "train"
    shutil.copytree(mini_split / "train", split, symlinks=False)
    victim = sorted((split / "image").iterdir())[0]
    data = victim.read_bytes()
    victim.unlink()
    victim.write_bytes(data[: len(data) // 3])
    argv = _tiny(mini_split, tmp_path / "runs", f"data.train={split}", f"data.cache={cache}", "data.workers=1")
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "DataLoader worker" not in err
    assert f"skipped {victim}: not a readable raster or image" in err and "left out of data.train" in err
    assert "3 train / 1 val tiles" in err
    assert err.strip().splitlines()[-1] == "rooftrace train: 1 item(s) skipped (listed above); exit status 1"
    (run,) = (tmp_path / "runs").iterdir()
    assert (run / "resume.safetensors").exists()

    assert main([*argv, "--set", f"train.runs_dir={tmp_path / 'strict-runs'}", "--strict"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("rooftrace train: error: data.train: ") and f"{victim}: not a readable raster or image" in last
    assert "--strict" in last


@pytest.mark.parametrize("full_at", [1, 2])
def test_a_full_disk_while_writing_an_epoch_leaves_the_last_complete_one_and_resume_goes_on(mini_split, tmp_path, capsys,
                                                                                           monkeypatch, full_at):
    """The disk fills while epoch ``full_at``'s resume state is written. The run stops (exit 2, naming the file);
    the run folder keeps only complete epochs (no last/best/metrics of the cut epoch), and --resume goes on from
    the last complete epoch, or from epoch 1 when there is none, with a note, to the same end as a clean run."""
    import rooftrace.training.resume as weights
    from rooftrace.cli import main

    real = weights.atomic_write_bytes
    calls = {"n": 0}

    def full_disk(path, data, force=False):
        if Path(path).name == "resume.safetensors":
            calls["n"] += 1
            if calls["n"] == full_at:
                raise RooftraceError(f"{path}: cannot write it (No space left on device)")
        return real(path, data, force=force)

    monkeypatch.setattr(weights, "atomic_write_bytes", full_disk)
    assert main(_tiny(mini_split, tmp_path / "runs")) == 2
    err = capsys.readouterr().err
    assert "resume.safetensors: cannot write it (No space left on device)" in err and "Traceback" not in err
    (run,) = (tmp_path / "runs").iterdir()
    if full_at == 1:
        assert not any((run / n).exists() for n in ("last.safetensors", "best.safetensors", "metrics.csv", "resume.safetensors"))
    else:
        assert load_model(run / "last.safetensors").meta["epoch"] == 1
        assert len(list(csv.DictReader((run / "metrics.csv").open()))) == 1
    monkeypatch.setattr(weights, "atomic_write_bytes", real)
    assert main(["train", "--resume", str(run)]) == 0
    err = capsys.readouterr().err
    assert f"epoch {full_at}'s files were not all written" in err
    assert ("starts again from epoch 1" if full_at == 1 else "continues after epoch 1, the last complete one") in err
    assert not (run / ".epoch-pending").exists()
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert load_model(run / "last.safetensors").meta["epoch"] == 2

    clean = tmp_path / "clean"
    assert main(_tiny(mini_split, clean)) == 0
    (ref,) = clean.iterdir()
    assert (ref / "metrics.csv").read_text().splitlines()[1].split(",")[:4] == (run / "metrics.csv").read_text().splitlines()[1].split(",")[:4]
    a, b = read_model_file(run / "last.safetensors")[0], read_model_file(ref / "last.safetensors")[0]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_stopped_while_moving_a_committed_epoch_finishes_the_moves_on_resume(mini_split, tmp_path, capsys, monkeypatch):
    """Killed after epoch 1's resume state was written but before its files were moved into place: --resume
    moves them (they belong to the committed epoch) and goes on."""
    import rooftrace.training.loop as train_mod
    from rooftrace.cli import main

    def stop(run_dir):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "move_pending", stop)
    assert main(_tiny(mini_split, tmp_path / "runs")) == 130
    (run,) = (tmp_path / "runs").iterdir()
    assert (run / ".epoch-pending" / "last.safetensors").exists() and not (run / "last.safetensors").exists()
    monkeypatch.undo()
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 0
    assert "finished moving epoch 1's files into place" in capsys.readouterr().err
    assert not (run / ".epoch-pending").exists()
    assert [r["epoch"] for r in csv.DictReader((run / "metrics.csv").open())] == ["1", "2"]


def test_a_tile_that_fails_in_a_worker_is_one_line(mini_split, tmp_path):
    """A tile that becomes unreadable after the start (read in a DataLoader worker) stops with its own
    one-line message, not the worker's traceback."""
    import shutil

    from torch.utils.data import DataLoader

    from rooftrace.training.dataset import TileDataset, collate_pad, select_tiles
    from rooftrace.training.loop import _worker_errors

    split = tmp_path / "train"
    shutil.copytree(mini_split / "train", split, symlinks=False)
    cfg = load_config(REPO / "configs" / "baseline-unet.yaml", [f"data.train={split}", "data.cache=false", "data.crop_size=64"])
    from rooftrace.labels.splits import open_split

    ds = TileDataset(select_tiles(cfg.data.train, [open_split(s) for s in cfg.data.train]), cfg.data, None)
    victim = ds.items[0].path
    data = victim.read_bytes()
    victim.unlink()
    victim.write_bytes(data[: len(data) // 3])
    loader = DataLoader(ds, batch_size=1, num_workers=1, collate_fn=collate_pad)
    with pytest.raises(RooftraceError) as info:
        list(_worker_errors(loader))
    text = str(info.value)
    assert "Traceback" not in text and "\n" not in text and f"{victim}: not a readable raster or image" in text


def test_a_png_cut_off_halfway_is_refused_not_read_as_partly_black(tmp_path):
    """PNG tiles are decoded fully by Pillow (LOAD_TRUNCATED_IMAGES off): one cut off at half its bytes raises,
    naming the file, instead of reading as an image whose lower half is black."""
    import numpy as np
    from PIL import Image

    from rooftrace.imagery.read import read_rgb

    arr = (np.random.default_rng(0).random((256, 256, 3)) * 255).astype(np.uint8)
    path = tmp_path / "t.png"
    Image.fromarray(arr).save(path)
    assert (read_rgb(path) == arr).all()
    for cut in (0.5, 0.9, 0.99):
        data = path.read_bytes()
        half = tmp_path / f"cut-{cut}.png"
        half.write_bytes(data[: int(len(data) * cut)])
        with pytest.raises(RooftraceError, match=rf"cut-{cut}\.png: truncated or corrupt image"):
            read_rgb(half)
