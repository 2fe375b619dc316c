"""train.freeze_encoder: which layers are frozen, and that a run keeps them (weights and BatchNorm statistics)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rooftrace.config import load_config
from rooftrace.core.errors import RooftraceError
from rooftrace.models.architectures import build_model
from rooftrace.models.files import read_model_file, save_model
from rooftrace.training.freezing import encoder_layers_up_to, freeze, hold_norms
from tests.training.test_train import REPO, _overrides

R18 = REPO / "configs" / "unet-r18.yaml"


def _r18():
    torch.manual_seed(0)
    return build_model(load_config(R18).model, 3)


def _names(model, modules) -> list[str]:
    names = {id(m): n for n, m in model.named_modules()}
    return [names[id(m)] for m in modules]


def test_depth_n_is_the_layers_at_half_to_one_over_two_to_the_n_of_the_input():
    model = _r18()
    assert encoder_layers_up_to(model, 0) == []
    # ResNet-18: conv1 and bn1 at 1/2, layer1's two blocks at 1/4 (after the max pool), layer2 at 1/8 from its
    # first, strided convolution on, layer4 at 1/32.
    assert _names(model, encoder_layers_up_to(model, 1)) == ["encoder.conv1", "encoder.bn1"]
    two = _names(model, encoder_layers_up_to(model, 2))
    assert two[:2] == ["encoder.conv1", "encoder.bn1"] and all(n.startswith("encoder.layer1.") for n in two[2:]) and len(two) == 10
    assert not any(n.startswith("encoder.layer2.") for n in two)
    encoder_params = {id(p) for p in model.encoder.parameters()}
    for depth in (5, 9):  # the whole encoder
        frozen = {id(p) for m in encoder_layers_up_to(model, depth) for p in m.parameters()}
        assert frozen == encoder_params
    # Nested, and the probe forward leaves every module's mode as it was.
    model.train()
    assert set(map(id, encoder_layers_up_to(model, 3))) < set(map(id, encoder_layers_up_to(model, 4)))
    assert all(m.training for m in model.modules())


def test_a_frozen_prefix_keeps_its_weights_and_statistics_through_steps():
    model = _r18().train()
    norms = freeze(encoder_layers_up_to(model, 2))
    assert norms and all(isinstance(m, torch.nn.BatchNorm2d) for m in norms)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(2):
        model.train()
        hold_norms(norms)
        loss = model(torch.randn(2, 3, 64, 64)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = model.state_dict()
    frozen_keys = [k for k in before if k.startswith(("encoder.conv1.", "encoder.bn1.", "encoder.layer1."))]
    assert frozen_keys and all(torch.equal(before[k], after[k]) for k in frozen_keys)  # running statistics too
    for k in ("encoder.layer2.0.conv1.weight", "encoder.layer2.0.bn1.running_mean", "decoder.blocks.0.conv1.0.weight"):
        assert not torch.equal(before[k], after[k]), k


def test_a_run_with_the_encoder_frozen_saves_the_weights_it_started_from(mini_split, tmp_path):
    from rooftrace.training.loop import train

    start = tmp_path / "start.safetensors"
    save_model(start, _r18(), load_config(R18))
    cfg = load_config(R18, _overrides(mini_split, tmp_path / "runs", "train.epochs=1", f"train.init_from={start}",
                                      "train.freeze_encoder=3"))
    run = Path(train(cfg)["run_dir"])
    w0, _ = read_model_file(start)
    w1, _ = read_model_file(run / "last.safetensors")
    held = [k for k in w0 if k.startswith(("encoder.conv1.", "encoder.bn1.", "encoder.layer1.", "encoder.layer2."))]
    trained = [k for k in w0 if k.startswith(("encoder.layer3.", "decoder.")) and w0[k].is_floating_point()]
    assert held and all(torch.equal(w0[k], w1[k]) for k in held)
    assert any(not torch.equal(w0[k], w1[k]) for k in trained)
    assert "M trained, train.freeze_encoder 3)" in (run / "train.log").read_text()


def test_freeze_encoder_is_refused_below_zero_and_without_an_encoder(mini_split, tmp_path):
    from rooftrace.training.loop import train

    with pytest.raises(RooftraceError, match="train.freeze_encoder -1"):
        load_config(R18, ["train.freeze_encoder=-1"])
    cfg = load_config(REPO / "configs" / "baseline-unet.yaml",
                      _overrides(mini_split, tmp_path / "runs", "train.epochs=1", "train.freeze_encoder=2", "model.base_channels=8"))
    with pytest.raises(RooftraceError, match="train.freeze_encoder 2: .*no encoder"):
        train(cfg)
