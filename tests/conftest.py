"""Shared fixtures: where the sample pack is, tiny label sets built in memory, a tiny model file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# precision "auto" runs bf16 where the CPU has it, without timing bf16 against fp32 first
# (rooftrace.inference.choice): a measured choice could differ from run to run on a loaded machine, and
# the tests compare outputs across runs. tests/inference/test_predict.py tests the measurement and its cache.
os.environ.setdefault("ROOFTRACE_RUNTIME_PROBE", "0")


def sample_dir() -> Path:
    """The sample pack: $ROOFTRACE_SAMPLE_DIR, else ../shared/data/buildings-sample beside the repo."""
    return Path(os.environ.get("ROOFTRACE_SAMPLE_DIR", REPO.parent / "shared" / "data" / "buildings-sample"))


@pytest.fixture(scope="session")
def sample() -> Path:
    d = sample_dir()
    if not (d / "test" / "test.json").exists():
        pytest.skip(f"sample pack not found at {d}; set ROOFTRACE_SAMPLE_DIR")
    return d


def write_tiny_model(path: Path, base_channels: int = 8) -> Path:
    """An untrained three-channel (footprint, boundary, contact) baseline U-Net with ``base_channels``
    channels, seeded, written as rooftrace writes model files (safetensors + SHA-256)."""
    import torch

    from rooftrace.config import load_config
    from rooftrace.models.architectures import build_model
    from rooftrace.models.files import save_model

    torch.manual_seed(0)
    cfg = load_config(REPO / "configs" / "baseline-unet.yaml", [f"model.base_channels={base_channels}",
                                                                  "data.channels=[footprint, boundary, contact]",
                                                                  "loss.channel_weights=[1, 0.5, 0.5]"])
    return save_model(path, build_model(cfg.model, 3).eval(), cfg)
