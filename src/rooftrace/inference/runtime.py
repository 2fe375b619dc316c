"""The model runtime: one loader for ``.safetensors`` and ``.onnx`` model files, and one place that pads,
normalises, runs (autocast, flip TTA) and crops, used by tile prediction, scenes, tuning and the API."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from rooftrace.core.errors import RooftraceError

if TYPE_CHECKING:  # pragma: no cover
    from rooftrace.imagery.normalize import Normalization
    from rooftrace.models.files import LoadedModel
from typing import TYPE_CHECKING, Any

import torch

from rooftrace.imagery.normalize import Normalization
from rooftrace.inference.devices import CPU_PIXELS_PER_FORWARD, pick_device
from rooftrace.models.autocast import autocast, autocast_dtype
from rooftrace.models.files import LoadedModel, load_model
from rooftrace.models.onnx import OnnxModel, is_onnx, load_onnx

if TYPE_CHECKING:  # pragma: no cover
    from rooftrace.imagery.normalize import Normalization
    from rooftrace.models.files import LoadedModel


@dataclass
class ModelRunner:
    """A model as a function from ``(N, H, W, 3)`` uint8 windows to ``(N, C, H, W)`` float32.

    Made once by :func:`make_runner` and passed to :func:`predict_scene` as its ``model`` so that
    many scenes share one loaded network (:func:`predict_scenes` does).
    """

    fn: Callable[[np.ndarray], np.ndarray]
    channels: int | None
    model_path: Path | None = None
    description: str = "callable"
    #: The pixel size in metres the model was trained at (``None``: not recorded; scenes are read as they are).
    gsd: float | None = None


def make_runner(model: str | Path | LoadedModel | ModelRunner | SceneModel | None, device: str = "auto", tta: bool = False,
                normalization: Normalization | None = None, precision: str = "auto") -> ModelRunner:
    """Wrap a model file, a loaded model or a callable as a batch function (torch imported here).

    Loaded models get normalised input padded on the bottom and right to a multiple of 32, as in
    ``rooftrace predict``; callables get the uint8 windows as an ``(N, 3, H, W)`` tensor, or the
    normalised float32 tensor when ``normalization`` is given, and no padding.
    """
    import torch

    from rooftrace.inference.devices import pick_device
    from rooftrace.models.files import LoadedModel, load_model, shipped_model

    if isinstance(model, ModelRunner):
        return model
    if model is None:
        model = shipped_model()
    if isinstance(model, (str, Path)):
        dev = pick_device(device)
        model = load_model(model, device=dev)
    if isinstance(model, LoadedModel):
        loaded = model
        dev = next(loaded.model.parameters()).device if device == "auto" else pick_device(device)
        loaded.model.to(dev).to(memory_format=torch.channels_last)
        mean, std = np.asarray(loaded.mean, np.float32), np.asarray(loaded.std, np.float32)

        def run_loaded(batch: np.ndarray) -> np.ndarray:
            n, h, w, _ = batch.shape
            x = (batch.astype(np.float32) / 255.0 - mean) / std  # as dataset.Normalization.apply
            hp, wp = -(-h // 32) * 32, -(-w // 32) * 32
            padded = np.zeros((n, 3, hp, wp), dtype=np.float32)
            padded[:, :, :h, :w] = x.transpose(0, 3, 1, 2)
            return predict_probabilities(loaded, torch.from_numpy(padded), dev, tta=tta, precision=precision)[:, :, :h, :w]

        return ModelRunner(run_loaded, len(loaded.channels), loaded.path, f"{loaded.path.name} on {dev}", gsd=loaded.gsd)
    if not callable(model):
        raise RooftraceError(f"model {model!r}: expected a model file, a loaded model or a callable")
    fn = model

    def run_callable(batch: np.ndarray) -> np.ndarray:
        if normalization is not None:
            x = torch.from_numpy(np.stack([normalization.apply(b) for b in batch]))
        else:
            x = torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)))
        with torch.inference_mode():
            out = fn(x)
        if torch.is_tensor(out):
            out = out.detach().float().cpu().numpy()
        return np.asarray(out, dtype=np.float32)

    return ModelRunner(run_callable, None, None, getattr(fn, "__name__", "callable"))


@torch.inference_mode()
def predict_probabilities(loaded: LoadedModel | OnnxModel, x: torch.Tensor, device: torch.device, tta: bool = False,
                          precision: str = "auto") -> np.ndarray:
    """Sigmoid probabilities ``(N, C, H, W)`` for a normalised batch; with ``tta`` the mean over
    identity, horizontal, vertical and both flips. ``loaded`` is a PyTorch model
    (:func:`rooftrace.models.files.load_model`) or an exported one (:func:`rooftrace.inference.export.load_onnx`,
    run by ONNX Runtime on its own providers; ``device`` and ``precision`` are not used then).
    ``precision``: see :mod:`rooftrace.models.autocast` (``auto``: bf16 autocast on GPUs and on CPUs with
    native bf16, else fp32)."""
    if isinstance(loaded, OnnxModel):
        onnx = loaded
        x = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x, dtype=np.float32))

        def run(inp: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(onnx.predict(inp.numpy()))
    else:
        x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        amp = autocast_dtype(precision, device)
        # On the CPU, forward passes of more than about one 512 x 512 tile are slower per tile (the
        # activations leave the caches), so a batch runs in chunks of at most that many pixels.
        chunk = x.shape[0] if device.type != "cpu" else max(1, CPU_PIXELS_PER_FORWARD // max(1, x.shape[2] * x.shape[3]))

        def forward(inp: torch.Tensor) -> torch.Tensor:
            with autocast(device, amp):
                logits = loaded.model(inp)
            return torch.sigmoid(logits.float())

        def run(inp: torch.Tensor) -> torch.Tensor:
            if inp.shape[0] <= chunk:
                return forward(inp)
            return torch.cat([forward(inp[i : i + chunk]) for i in range(0, inp.shape[0], chunk)])

    if not tta:
        return run(x).cpu().numpy()
    total = run(x)
    for dims in ((3,), (2,), (2, 3)):
        total += run(torch.flip(x, dims)).flip(dims)
    return (total / 4).cpu().numpy()


def load_any(model: str | Path, device: str = "auto", onnx_spinning: bool = True) -> LoadedModel | OnnxModel:
    """A ``.safetensors`` model on ``device`` (channels_last), or an ``.onnx`` model in ONNX Runtime."""
    if is_onnx(model):
        return load_onnx(model, device=device, spinning=onnx_spinning)
    loaded = load_model(model, device=pick_device(device))
    loaded.model.to(memory_format=torch.channels_last)
    return loaded


#: A model as :func:`predict_scene` takes it: a model file, a loaded model, or any callable from an
#: ``(N, 3, H, W)`` tensor (uint8, or normalised float32 when ``normalization`` is given) to
#: ``(N, C, H, W)`` probabilities (tensor or array), C = 1 or 3.
SceneModel = Callable[[Any], Any]
