"""Resumable training state: the optimizer, scheduler, scaler and RNG states beside the weights, and the
epoch commit that keeps a run folder's files from one complete epoch (``.epoch-pending``)."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from rooftrace.core.errors import RooftraceError
from rooftrace.core.files import atomic_write_bytes
from rooftrace.models.files import unwrap


def save_resume_state(path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any,
                      info: dict[str, Any], ema: nn.Module | None = None) -> Path:
    """Write everything a run needs to continue exactly, the model's weights included (and the moving
    average of them, ``ema``, when the run keeps one): one safetensors file, atomically, so weights and
    optimizer state always belong to the same epoch."""
    tensors: dict[str, torch.Tensor] = {
        f"model/{k}": v.detach().to("cpu").contiguous() for k, v in unwrap(model).state_dict().items()
    }
    if ema is not None:
        tensors.update({f"ema/{k}": v.detach().to("cpu").contiguous() for k, v in ema.state_dict().items()})
    opt = optimizer.state_dict()
    opt_scalars: dict[str, dict[str, Any]] = {}
    for pid, st in opt["state"].items():
        for name, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim/{pid}/{name}"] = v.detach().to("cpu").contiguous()
            else:
                opt_scalars.setdefault(str(pid), {})[name] = v
    tensors["rng/torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for n, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{n}"] = s
    np_state = np.random.get_state()
    tensors["rng/numpy"] = torch.from_numpy(np.asarray(np_state[1], dtype=np.int64))
    py_state = random.getstate()
    meta = {
        "optim_param_groups": opt["param_groups"],
        "optim_scalars": opt_scalars,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "numpy_rng": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python_rng": [py_state[0], list(py_state[1]), py_state[2]],
        "info": info,
    }
    return atomic_write_bytes(path, st_save(tensors, metadata={"resume": json.dumps(meta)}), force=True)


def load_resume_state(path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any,
                      ema: nn.Module | None = None) -> dict[str, Any]:
    """Restore model, optimizer, scheduler, scaler, RNG states and the weights' moving average
    (``ema``, when the run keeps one); return the saved ``info``."""
    if not path.exists():
        raise RooftraceError(f"{path}: no resume state in this run folder (was it killed before its first epoch ended?)")
    from safetensors import safe_open

    try:
        tensors = st_load(path.read_bytes())
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["resume"])
    except (SafetensorError, ValueError, KeyError, OSError) as exc:
        raise RooftraceError(f"{path}: not a readable resume state ({exc})") from None
    device = next(unwrap(model).parameters()).device
    unwrap(model).load_state_dict({k[6:]: v.to(device) for k, v in tensors.items() if k.startswith("model/")})
    if ema is not None:
        saved = {k[4:]: v.to(device) for k, v in tensors.items() if k.startswith("ema/")}
        if not saved:
            raise RooftraceError(f"{path}: this run now keeps a moving average of its weights (train.ema) but its resume "
                                 "state has none; resume it with --set train.ema=0")
        ema.load_state_dict(saved)
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith("optim/"):
            _, pid, name = key.split("/", 2)
            state.setdefault(int(pid), {})[name] = v
    for pid, d in meta["optim_scalars"].items():
        state.setdefault(int(pid), {}).update(d)
    optimizer.load_state_dict({"state": state, "param_groups": meta["optim_param_groups"]})
    if scheduler is not None and meta["scheduler"] is not None:
        scheduler.load_state_dict(meta["scheduler"])
    if scaler is not None and meta["scaler"] is not None:
        scaler.load_state_dict(meta["scaler"])
    torch.set_rng_state(tensors["rng/torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng/cuda/"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    name, pos, has_gauss, cached = meta["numpy_rng"]
    np.random.set_state((name, tensors["rng/numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    v, st, g = meta["python_rng"]
    random.setstate((v, tuple(st), g))
    return meta["info"]


#: Where an epoch's files wait until its resume state is written (see ``Trainer._write_epoch_files``).
PENDING = ".epoch-pending"


def pending_epoch(run_dir: Path) -> int | None:
    """The epoch of the pending set in ``run_dir`` (0 if it cannot be told), or ``None`` when there is none."""
    pending = run_dir / PENDING
    if not pending.is_dir():
        return None
    try:
        return int((pending / "EPOCH").read_text().strip())
    except (OSError, ValueError):
        return 0


def move_pending(run_dir: Path) -> None:
    """Move a committed epoch's files from ``RUN/.epoch-pending/`` into the run folder."""
    pending = run_dir / PENDING
    # Each model file before its SHA-256 sidecar, the epoch marker last.
    names = sorted((p.name for p in pending.iterdir() if p.name != "EPOCH"), key=lambda n: (n.endswith(".sha256"), n))
    try:
        for name in names:
            os.replace(pending / name, run_dir / name)
    except OSError as exc:
        raise RooftraceError(f"{run_dir / name}: cannot move it into place ({exc.strerror})") from None
    shutil.rmtree(pending, ignore_errors=True)


def recover_epoch_files(run_dir: Path, committed: int | None) -> str | None:
    """Finish or drop the epoch files a stopped run left pending; returns a note for the log, if any.

    ``committed`` is the epoch of ``resume.safetensors`` (``None``: there is none). A pending set of
    that epoch was committed and only its moves were cut short: they are done now. One of a later
    epoch (the run stopped while writing it: a full disk, SIGKILL) is removed, so the run folder
    holds the last complete epoch's files only.
    """
    pending = pending_epoch(run_dir)
    if pending is None:
        return None
    if committed is not None and pending == committed:
        move_pending(run_dir)
        return f"finished moving epoch {pending}'s files into place (the run had stopped while moving them)"
    shutil.rmtree(run_dir / PENDING, ignore_errors=True)
    back = (f"the run continues after epoch {committed}, the last complete one" if committed
            else "no epoch was complete, so the run starts again from epoch 1")
    return (f"epoch {pending or '?'}'s files were not all written (the run stopped while writing them: a full disk? "
            f"killed?); they were removed and {back}")
