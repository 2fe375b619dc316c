"""Shared fixtures: where the sample pack is, tiny label sets built in memory, a tiny model file."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import textwrap
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


#: Defines ``held()`` in a child process started by :func:`start_held`.
_HELD = """
import os as _os, threading as _threading
def held():
    \"\"\"Tell the test that this point is reached, then wait here, alive, until the test kills the process.\"\"\"
    _os.write({fd}, b"here\\n")
    _os.close({fd})
    _threading.Event().wait()
"""


def start_held(code: str, *args: str, timeout: float = 600, **popen) -> subprocess.Popen:
    """Run ``code`` in a fresh Python process (``args`` are its ``sys.argv[1:]``) and return once it has called
    ``held()``: the child says so through a pipe and then waits there, alive, for the test to kill it at exactly
    that point. Fails if the child exits first or stays silent for ``timeout`` seconds (a generous bound
    against a hang: the handshake itself needs no timing)."""
    r, w = os.pipe()
    proc = subprocess.Popen([sys.executable, "-c", _HELD.format(fd=w) + textwrap.dedent(code), *args], pass_fds=(w,), **popen)
    os.close(w)  # the child's copy is the only writer left: its exit closes the pipe
    try:
        ready, _, _ = select.select([r], [], [], timeout)
        said = os.read(r, 64) if ready else b""
    finally:
        os.close(r)
    if said != b"here\n":
        proc.kill()
        proc.wait()
        pytest.fail(f"the child process {'exited with ' + str(proc.returncode) if ready else 'said nothing in ' + str(timeout) + ' s'} "
                    "before reaching the point under test")
    return proc


def crash_after(fn, n: int):
    """``fn`` that runs ``n`` times, then raises ``RuntimeError("simulated crash")`` on every later call: a run
    that dies part way (tests of ``--resume``)."""
    calls = {"n": 0}

    def wrapped(*args, **kwargs):
        if calls["n"] == n:
            raise RuntimeError("simulated crash")
        calls["n"] += 1
        return fn(*args, **kwargs)

    return wrapped
