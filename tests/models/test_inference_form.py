"""The network as every inference path runs it (rooftrace.models.inference_form): a training run's validation
scores what the runtime computes from the file the run saves."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rooftrace.config import load_config
from rooftrace.models.architectures import build_model
from rooftrace.models.autocast import autocast, depthwise_in_fp32
from rooftrace.models.files import save_model
from rooftrace.models.inference_form import inference_copy
from rooftrace.models.upsample_conv import use_transposed_upsampling

REPO = Path(__file__).resolve().parents[2]


def _training_network() -> tuple[torch.nn.Module, object]:
    """The default recipe's network as a run trains it (smp's U-Net, depthwise convolutions in fp32, transposed
    upsampling, channels-last), random weights and batch-norm statistics, in eval mode."""
    cfg = load_config(REPO / "configs" / "unet-lite0.yaml", ["model.encoder_weights=null"])
    torch.manual_seed(0)
    model = build_model(cfg.model, len(cfg.data.channels))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
    depthwise_in_fp32(model)
    use_transposed_upsampling(model)
    return model.to(memory_format=torch.channels_last).eval(), cfg


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_validation_s_network_is_the_runtime_s_network_of_the_saved_file(tmp_path, dtype) -> None:
    """inference_copy of a training network gives, bit for bit, what the runtime's load_any gives for the file
    save_model writes from it (fp32 and bf16 autocast), and not what the training network gives in bf16."""
    from rooftrace.inference.runtime import load_any

    model, cfg = _training_network()
    copy = inference_copy(model, cfg.model, len(cfg.data.channels))
    loaded = load_any(save_model(tmp_path / "m.safetensors", model, cfg), device="cpu")
    x = torch.randn(2, 3, 96, 64, generator=torch.Generator().manual_seed(1)).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast("cpu", dtype):
        got, want, trained = copy(x).float(), loaded.model(x).float(), model(x).float()
    assert torch.equal(got, want)
    if dtype is not None:
        assert not torch.equal(got, trained)  # folded, depthwise in bf16: not the network as it trains
    else:
        torch.testing.assert_close(got, trained, atol=1e-4, rtol=1e-4)  # the same function
    assert all(not p.requires_grad for p in copy.parameters())


def test_the_copy_is_the_weights_of_the_moment(tmp_path) -> None:
    """Training on after the copy leaves it as it was; a copy made inside inference mode runs like one made outside."""
    model, cfg = _training_network()
    copy = inference_copy(model, cfg.model, len(cfg.data.channels))
    with torch.inference_mode():
        inside = inference_copy(model, cfg.model, len(cfg.data.channels))
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2)).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        before = copy(x)
        assert torch.equal(inside(x), before)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05)
    with torch.inference_mode():
        assert torch.equal(copy(x), before)
        assert not torch.equal(inference_copy(model, cfg.model, len(cfg.data.channels))(x), before)


def test_weights_that_do_not_fit_the_named_architecture_are_refused_by_file(tmp_path) -> None:
    """A model file whose config names another architecture than its weights' (network_from_state, which load_model
    and inference_copy share): a RooftraceError naming the file, not torch's error."""
    from rooftrace.core.errors import RooftraceError
    from rooftrace.models.files import load_model

    small = load_config(REPO / "configs" / "baseline-unet.yaml", ["model.base_channels=4"])
    wide = load_config(REPO / "configs" / "baseline-unet.yaml", ["model.base_channels=8"])
    path = save_model(tmp_path / "mislabelled.safetensors", build_model(small.model, len(small.data.channels)), wide)
    with pytest.raises(RooftraceError, match=r"mislabelled\.safetensors: weights do not fit the architecture it names"):
        load_model(path)
