"""Shared fixtures: where the sample pack is, and tiny label sets built in memory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def sample_dir() -> Path:
    """The sample pack: $ROOFTRACE_SAMPLE_DIR, else ../shared/data/buildings-sample beside the repo."""
    return Path(os.environ.get("ROOFTRACE_SAMPLE_DIR", REPO.parent / "shared" / "data" / "buildings-sample"))


@pytest.fixture(scope="session")
def sample() -> Path:
    d = sample_dir()
    if not (d / "test" / "test.json").exists():
        pytest.skip(f"sample pack not found at {d}; set ROOFTRACE_SAMPLE_DIR")
    return d
