"""The model runtime: one loader for ``.safetensors`` and ``.onnx`` model files, and one place that pads,
normalises, runs (autocast, flip TTA) and crops.

Every inference path goes through here: tile prediction (:mod:`rooftrace.inference.predict`), scenes
(:mod:`rooftrace.scenes`), tuning (:mod:`rooftrace.inference.tune`) and the Python API
(:mod:`rooftrace.api`). So a model file of either kind works wherever a command takes ``--model``, and
its tuned post-processing settings are found the same way everywhere.

Three steps, each one function:

- :func:`pad_normalise`: ``(N, H, W, 3)`` uint8 -> ``(N, 3, H', W')`` float32 normalised with the
  model's mean and std, zero-padded on the bottom and right to a multiple of 32 (a network with five
  stride-2 stages needs that).
- :func:`predict_probabilities`: a normalised, padded batch -> sigmoid probabilities, under
  ``torch.inference_mode``, channels_last, with autocast (:mod:`rooftrace.models.autocast`) and
  optionally the mean over the four flips (TTA). ONNX models run in ONNX Runtime instead.
- cropping back to ``H x W``.

:class:`ModelRuntime` holds a loaded model with those settings; :meth:`ModelRuntime.probabilities`
does all three. :class:`ModelRunner` is the batch function a scene runs (a runtime's
``probabilities``, or any callable a user passes).
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from rooftrace.core.allocator import ready_allocator
from rooftrace.core.errors import RooftraceError
from rooftrace.core.machine import CPU_PIXELS_PER_FORWARD
from rooftrace.imagery.normalize import Normalization
from rooftrace.imagery.windows import Grid, run_windows
from rooftrace.inference.devices import pick_device
from rooftrace.inference.tuned import SettingsArg, TunedFile, tuned_postprocessing, used_postprocessing
from rooftrace.instances.postprocess import PostprocessSettings
from rooftrace.models.autocast import normalise_precision
from rooftrace.models.metadata import shipped_model
from rooftrace.models.onnx import (
    OnnxModel,
    is_onnx,
    load_onnx,
)

if TYPE_CHECKING:  # torch is imported where a PyTorch model is run: an .onnx model runs without it
    import torch

    from rooftrace.inference.choice import RuntimeChoice
    from rooftrace.models.files import LoadedModel

#: Inputs are zero-padded (bottom, right) to a multiple of this.
PAD_MULTIPLE = 32

#: Images of more pixels than this run window by window (:meth:`ModelRuntime.image_probabilities`), so
#: that memory stays flat in the image's size instead of growing with one huge forward pass.
WINDOWED_ABOVE = 2048 * 2048
#: Window size and overlap for such images (the overlap-and-crop rule of :mod:`rooftrace.imagery.windows`).
WINDOW, WINDOW_OVERLAP = 1024, 128

#: Forward passes a network runs at once on a CPU by default, PyTorch or ONNX Runtime (:meth:`ModelRuntime.streams`).
CPU_STREAMS = 2

#: A model as :func:`rooftrace.scenes.predict.predict_scene` takes it: a model file, a loaded model, or any
#: callable from an ``(N, 3, H, W)`` tensor (uint8, or normalised float32 when ``normalization`` is given)
#: to ``(N, C, H, W)`` probabilities (tensor or array), C = 1 or 3.
SceneModel = Callable[[Any], Any]


def padded_size(h: int, w: int, multiple: int = PAD_MULTIPLE) -> tuple[int, int]:
    """``(h, w)`` rounded up to a multiple of ``multiple``."""
    return -(-h // multiple) * multiple, -(-w // multiple) * multiple


def pad_normalise(batch: np.ndarray | Sequence[np.ndarray], norm: Normalization, multiple: int = PAD_MULTIPLE) -> np.ndarray:
    """``(N, H, W, 3)`` (or one ``(H, W, 3)``, or a list of ``(h, w, 3)`` of any sizes) uint8 -> ``(N, 3, H', W')``
    float32: each image normalised with ``norm`` and zero-padded on the bottom and right to ``H' x W'``, the
    largest image's size rounded up to a multiple of ``multiple``.

    The array lies channels-last in memory (a transposed view of an ``(N, H', W', 3)`` array), the layout
    the network runs in: PyTorch takes it without a copy, and ONNX Runtime's callers make it contiguous."""
    images = [batch] if isinstance(batch, np.ndarray) and batch.ndim == 3 else list(batch)
    hp, wp = padded_size(max(im.shape[0] for im in images), max(im.shape[1] for im in images), multiple)
    nchw = np.zeros((len(images), hp, wp, 3), dtype=np.float32).transpose(0, 3, 1, 2)
    for i, im in enumerate(images):
        norm.apply_into(np.ascontiguousarray(im), nchw[i, :, : im.shape[0], : im.shape[1]])
    return nchw


def as_tensor(x: np.ndarray) -> torch.Tensor:
    """A float32 array as a tensor, without a copy where it can: a channels-last view
    (:func:`pad_normalise`) stays channels-last."""
    import torch

    if x.dtype == np.float32 and all(s >= 0 for s in x.strides) and x.flags.aligned:
        return torch.from_numpy(x)
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def predict_probabilities(loaded: LoadedModel | OnnxModel, x: torch.Tensor | np.ndarray, device: torch.device | str,
                          tta: bool = False, precision: str = "auto") -> np.ndarray:
    """Sigmoid probabilities ``(N, C, H, W)`` for a normalised, padded batch; with ``tta`` the mean over
    identity, horizontal, vertical and both flips. ``loaded`` is a PyTorch model
    (:func:`rooftrace.models.files.load_model`) or an exported one (:func:`rooftrace.models.onnx.load_onnx`,
    run by ONNX Runtime on its own providers, without torch; ``device`` and ``precision`` are not used then).
    ``precision``: see :mod:`rooftrace.models.autocast` (``auto``: bf16 autocast on GPUs and on CPUs with
    native bf16, else fp32)."""
    if isinstance(loaded, OnnxModel):
        return _onnx_probabilities(loaded, x, tta)
    return _torch_probabilities(loaded, x, device, tta, precision)


def check_streams(n: int | None) -> None:
    """``--streams``: ``None`` (the default) or a whole number of at least 1."""
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise RooftraceError(f"--streams {n}: must be 1 or more (forward passes at once)")


def cpu_chunk(h: int, w: int) -> int:
    """Images of ``h x w`` (padded) per forward pass on a CPU: a batch runs in chunks of this many. Forward
    passes of more than about one 512 x 512 tile are slower per tile there (the activations leave the
    caches)."""
    return max(1, CPU_PIXELS_PER_FORWARD // max(1, h * w))


def _onnx_probabilities(onnx: OnnxModel, x: Any, tta: bool) -> np.ndarray:
    x = np.ascontiguousarray(x if isinstance(x, np.ndarray) else x.numpy(), dtype=np.float32)
    total = onnx.predict(x)
    if not tta:
        return total
    for axes in ((3,), (2,), (2, 3)):
        total += np.flip(onnx.predict(np.ascontiguousarray(np.flip(x, axes))), axes)
    return total / 4


def _torch_probabilities(loaded: LoadedModel, x: torch.Tensor | np.ndarray, device: torch.device, tta: bool,
                         precision: str) -> np.ndarray:
    import torch

    from rooftrace.models.autocast import autocast, autocast_dtype

    x = x if isinstance(x, torch.Tensor) else as_tensor(x)
    x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    amp = autocast_dtype(precision, device)
    chunk = x.shape[0] if device.type != "cpu" else cpu_chunk(x.shape[2], x.shape[3])

    def forward(inp: torch.Tensor) -> torch.Tensor:
        with autocast(device, amp):
            logits = loaded.model(inp)
        # Back to planes (NCHW) in the same pass as the float32 conversion: post-processing reads each channel as
        # a plane, 1-2 ms a 512 x 512 tile faster than through channels-last strides.
        return torch.sigmoid_(logits.to(torch.float32, memory_format=torch.contiguous_format, copy=True))

    def run(inp: torch.Tensor) -> torch.Tensor:
        if inp.shape[0] <= chunk:
            return forward(inp)
        return torch.cat([forward(inp[i : i + chunk]) for i in range(0, inp.shape[0], chunk)])

    with torch.inference_mode():
        if not tta:
            return run(x).cpu().numpy()
        total = run(x)
        for dims in ((3,), (2,), (2, 3)):
            total += run(torch.flip(x, dims)).flip(dims)
        return (total / 4).cpu().numpy()


def _is_loaded_model(obj: Any) -> bool:
    """Whether ``obj`` is a :class:`rooftrace.models.files.LoadedModel` (asked without importing torch: when
    that module was never imported, no such object exists)."""
    files = sys.modules.get("rooftrace.models.files")
    return files is not None and isinstance(obj, files.LoadedModel)


def load_any(model: str | Path, device: str = "auto", onnx_spinning: bool = True) -> LoadedModel | OnnxModel:
    """A ``.safetensors`` model on ``device`` in :func:`rooftrace.models.inference_form.inference_form` (channels_last,
    batch norms folded into their convolutions, the decoder's upsampling as transposed convolutions), or an ``.onnx``
    model in ONNX Runtime."""
    if is_onnx(model):
        return load_onnx(model, device=device, spinning=onnx_spinning)
    from rooftrace.models.files import load_model
    from rooftrace.models.inference_form import inference_form

    loaded = load_model(model, device=pick_device(device))
    inference_form(loaded.model)  # folded, transposed upsampling, channels-last: as teachers and validation run it
    return loaded


@dataclass
class ModelRuntime:
    """A loaded model (PyTorch or ONNX) with how to run it: device, flip TTA and precision, and the
    post-processing it was tuned with. Made by :func:`load_runtime`."""

    net: LoadedModel | OnnxModel
    #: Where a PyTorch network runs; for an ``.onnx`` file, the ``device`` asked for (its providers follow it).
    device: torch.device | str
    tta: bool = False
    precision: str = "auto"
    #: Post-processing ``rooftrace tune`` chose for this model, as read when it was loaded (``None``: the defaults).
    tuned: TunedFile | None = None
    #: How the runtime was decided (:func:`rooftrace.inference.choice.choose_runtime`; ``None``: an ``.onnx`` file,
    #: or a runtime made directly).
    choice: RuntimeChoice | None = None
    norm: Normalization = field(init=False)

    def __post_init__(self) -> None:
        self.norm = Normalization(tuple(self.net.mean), tuple(self.net.std))

    @property
    def path(self) -> Path:
        return self.net.path

    @property
    def method(self) -> str | None:
        """The post-processing method ``rooftrace tune`` chose for this model (``None``: the default)."""
        return self.tuned.method if self.tuned is not None else None

    @property
    def settings(self) -> PostprocessSettings | None:
        """The post-processing settings ``rooftrace tune`` chose for this model (``None``: the defaults)."""
        return self.tuned.settings if self.tuned is not None else None

    @property
    def gsd(self) -> float | None:
        """The pixel size in metres the model was trained at (``None``: not recorded)."""
        return self.net.gsd

    @property
    def channels(self) -> int:
        return len(self.net.channels)

    @property
    def is_onnx(self) -> bool:
        return isinstance(self.net, OnnxModel)

    @property
    def description(self) -> str:
        return f"{self.path.name} ({'ONNX Runtime' if self.is_onnx else self.device})"

    @property
    def runtime_line(self) -> str:
        """One line on what runs the network, and how it was chosen: the precision, or ONNX Runtime."""
        if self.choice is not None:
            return self.choice.describe()
        return "runtime: ONNX Runtime (an .onnx model)" if self.is_onnx else f"runtime: {self.precision}"

    def run(self, x: torch.Tensor | np.ndarray) -> np.ndarray:
        """Probabilities for a batch already normalised and padded (:func:`pad_normalise`).

        Raises:
            RooftraceError: The network gives another number of channels than its file names.
        """
        if not self.is_onnx:
            if isinstance(x, np.ndarray):  # zero-copy: the network's input is a tensor whichever way it came
                x = as_tensor(x)
            if self.device.type == "cuda" and not x.is_pinned():  # type: ignore[union-attr]
                x = x.pin_memory()  # then the copy to the GPU does not block
        out = predict_probabilities(self.net, x, self.device, tta=self.tta, precision=self.precision)
        if out.ndim != 4 or out.shape[1] != self.channels:
            raise RooftraceError(f"{self.path}: the network returned shape {tuple(out.shape)}, but the file names "
                                 f"{self.channels} output channels ({', '.join(self.net.channels)}); the model file is not "
                                 "one rooftrace wrote, or was edited")
        return out

    def _stream_threads(self) -> int | None:
        """The threads streams share: torch's for a PyTorch network on a CPU, the CPU's for an ONNX model on the
        CPU alone; ``None`` where one stream runs (GPUs, ONNX Runtime with a GPU provider)."""
        if self.is_onnx:
            net: OnnxModel = self.net  # type: ignore[assignment]
            return (os.cpu_count() or 1) if net.cpu_only and net.source is not None else None
        if getattr(self.device, "type", "cpu") != "cpu":
            return None
        import torch

        return torch.get_num_threads()

    def default_streams(self) -> int:
        """Forward passes to run at once: :data:`CPU_STREAMS` on a CPU (PyTorch, or ONNX Runtime on the CPU alone;
        never more than the threads), else 1 (GPUs)."""
        threads = self._stream_threads()
        return 1 if threads is None else max(1, min(CPU_STREAMS, threads))

    def stream_batch(self, batch_size: int, h: int, w: int) -> int:
        """Images of ``h x w`` (padded) a stream runs at once: the forward pass's own chunk of a batch
        (:func:`cpu_chunk`), so that the passes are the ones one stream would run, spread over the streams."""
        return max(1, min(batch_size, cpu_chunk(h, w)))

    @contextmanager
    def streams(self, n: int | None = None) -> Iterator[int]:
        """Run ``n`` forward passes at once (``None``: :meth:`default_streams`), each on its share of the CPU's
        threads; yields how many it granted.

        On a CPU, one forward pass spread over every core loses time to its threads waiting for each other,
        and all of a core's share as soon as post-processing takes that core; one pass per thread loses
        neither (``benchmarks/pipeline_speed.py``: 1.17x the tiles a second on 2 cores with PyTorch, 1.15-1.21x
        with ONNX Runtime). For a PyTorch network, torch's intra-op threads are set to its threads // ``n`` for
        the duration (a setting of the process: other PyTorch work in it runs on fewer threads meanwhile) and
        restored after; an ONNX model runs on a session of the same graph with that many threads
        (:meth:`rooftrace.models.onnx.OnnxModel.on_threads`). The outputs are the same bit for bit in ONNX Runtime.
        PyTorch sums in another order on fewer threads: in fp32 everywhere (probabilities within 1e-5), in bf16 in
        the decoder's transposed convolutions at some sizes (:mod:`rooftrace.models.upsample_conv`; 0.005 on a
        650 x 650 px tile, one pixel of one building in 54). GPUs run one pass at a time (granted: 1).

        Raises:
            RooftraceError: ``n`` is below 1.
        """
        check_streams(n)
        want = self.default_streams() if n is None else n
        threads = self._stream_threads()
        if threads is not None:
            want = min(want, threads)
        if want == 1 or threads is None:
            yield 1
            return
        if self.is_onnx:
            net: OnnxModel = self.net  # type: ignore[assignment]
            before = net.session
            net.session = net.on_threads(max(1, threads // want))
            try:
                yield want
            finally:
                net.session = before
            return
        import torch

        torch.set_num_threads(threads // want)
        try:
            yield want
        finally:
            torch.set_num_threads(threads)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """``(N, H, W, 3)`` (or one ``(H, W, 3)``) uint8 -> ``(N, C, H, W)`` float32 probabilities:
        normalise, pad, run, crop."""
        if batch.ndim == 3:
            batch = batch[None]
        h, w = batch.shape[1:3]
        return self.run(pad_normalise(batch, self.norm))[:, :, :h, :w]

    def windowed_probabilities(self, rgb: np.ndarray, window: int = WINDOW, overlap: int = WINDOW_OVERLAP,
                               streams: int = 1) -> np.ndarray:
        """``(H, W, 3)`` uint8 -> ``(C, H, W)`` float32, window by window: each pixel's probability comes
        from the one window it is most central in (overlap-and-crop, the loop scenes are stitched with:
        :func:`rooftrace.imagery.windows.run_windows`), so memory is ``streams`` windows' activations plus
        the output, whatever the image's size. ``streams``: windows run at once (inside :meth:`streams`,
        which grants them)."""
        h, w = rgb.shape[:2]
        grid = Grid.make(w, h, window, overlap)
        out: np.ndarray | None = None

        def read(win: Any) -> tuple[np.ndarray, None]:
            return rgb[win.row_off:win.row_off + win.height, win.col_off:win.col_off + win.width], None

        for kept in run_windows(grid, read, self.probabilities, batch_size=1, streams=streams):
            if out is None:
                out = np.empty((kept.part.shape[0], h, w), dtype=np.float32)  # type: ignore[union-attr]
            out[:, kept.rows, kept.cols] = kept.part
        assert out is not None
        return out

    def image_probabilities(self, rgb: np.ndarray) -> np.ndarray:
        """``(H, W, 3)`` uint8 -> ``(C, H, W)`` float32 for one image of any size: in one pass up to
        :data:`WINDOWED_ABOVE` pixels, window by window above."""
        if rgb.shape[0] * rgb.shape[1] > WINDOWED_ABOVE:
            with self.streams() as streams:
                return self.windowed_probabilities(rgb, streams=streams)
        return self.probabilities(rgb)[0]

    def postprocessing(self, method: str | None = None, settings: SettingsArg = None
                       ) -> tuple[str, PostprocessSettings | None]:
        """``(method, settings)``: the ones given, else the tuned ones, else the defaults; settings given as a
        mapping change only the settings they name, on top of the tuned ones (:func:`used_postprocessing`)."""
        used = used_postprocessing(self, method, settings)
        return used.method, used.settings


def load_runtime(model: str | Path | LoadedModel | OnnxModel | None = None, *, device: str = "auto", tta: bool = False,
                 precision: str = "auto", onnx_spinning: bool = True, onnx_candidate: bool = True) -> ModelRuntime:
    """Load a ``.safetensors`` or ``.onnx`` model file (default: the shipped model) ready to run.

    Args:
        model: A model file, an already loaded model, or ``None`` for the model that ships with rooftrace.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (ONNX models choose their providers from it).
        tta: Average the predictions of the four flips.
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16`` autocast (PyTorch models only); ``auto`` is, on a
            CPU, the fastest of bf16 (where the CPU has it natively), fp32 and ONNX Runtime fp32 (where
            onnxruntime is installed), measured once on this machine and cached (:mod:`rooftrace.inference.choice`).
        onnx_spinning: Let ONNX Runtime's threads spin between runs (faster when nothing else runs).
        onnx_candidate: Whether ``auto`` may choose ONNX Runtime for a ``.safetensors`` model (``False``: PyTorch,
            as ``--compile`` needs).
    """
    precision = normalise_precision(precision)
    ready_allocator()  # large arrays reuse freed memory (rooftrace.core.allocator)
    if model is None:
        model = shipped_model()
    if isinstance(model, (str, Path)):
        net = load_any(model, device=device, onnx_spinning=onnx_spinning)
    elif isinstance(model, OnnxModel) or _is_loaded_model(model):
        net = model
    else:
        raise RooftraceError(f"model {model!r}: expected a .safetensors or .onnx model file")
    if isinstance(net, OnnxModel):  # ONNX Runtime: its providers follow `device`; torch is not imported
        return ModelRuntime(net, device, tta=tta, precision=precision, tuned=tuned_postprocessing(net))
    import torch

    from rooftrace.inference.choice import choose_runtime

    dev = pick_device(device)
    dev = next(net.model.parameters()).device if device == "auto" else dev  # "auto" keeps a loaded model where it is
    net.model.to(dev).to(memory_format=torch.channels_last)
    tuned = tuned_postprocessing(net)
    # "auto": the fastest of bf16, fp32 and ONNX Runtime here, measured once
    choice, in_onnx = choose_runtime(net, precision, dev, onnx=onnx_candidate, spinning=onnx_spinning)
    return ModelRuntime(in_onnx or net, dev, tta=tta, precision=choice.precision, tuned=tuned,
                        choice=choice)


@dataclass
class ModelRunner:
    """A model as a function from ``(N, H, W, 3)`` uint8 windows to ``(N, C, H, W)`` float32.

    Made once by :func:`make_runner` and passed to :func:`rooftrace.scenes.predict.predict_scene` as its
    ``model`` so that many scenes share one loaded network (:func:`rooftrace.scenes.batch.predict_scenes` does).
    """

    fn: Callable[[np.ndarray], np.ndarray]
    channels: int | None
    model_path: Path | None = None
    description: str = "callable"
    #: The pixel size in metres the model was trained at (``None``: not recorded; scenes are read as they are).
    gsd: float | None = None
    #: The model's runtime, when it is a model file (``None`` for a plain callable).
    runtime: ModelRuntime | None = None

    @contextmanager
    def streams(self, n: int | None = None) -> Iterator[int]:
        """Windows run at once: the runtime's :meth:`ModelRuntime.streams`; 1 for a plain callable (it may not
        be safe to call from two threads)."""
        check_streams(n)
        if self.runtime is None:
            yield 1
            return
        with self.runtime.streams(n) as granted:
            yield granted

    def postprocessing(self, method: str | None = None, settings: SettingsArg = None
                       ) -> tuple[str, PostprocessSettings | None]:
        """``(method, settings)``: the ones given, else the model's tuned ones, else the defaults (as
        :meth:`ModelRuntime.postprocessing`)."""
        used = used_postprocessing(self.runtime, method, settings)
        return used.method, used.settings


def make_runner(model: str | Path | LoadedModel | OnnxModel | ModelRuntime | ModelRunner | SceneModel | None,
                device: str = "auto", tta: bool = False, normalization: Normalization | None = None,
                precision: str = "auto") -> ModelRunner:
    """Wrap a model file (``.safetensors`` or ``.onnx``), a loaded model, a runtime or a callable as a
    batch function.

    Model files and loaded models run through :class:`ModelRuntime` (normalised, padded to a multiple
    of 32, cropped back); callables get the uint8 windows as an ``(N, 3, H, W)`` tensor, or the
    normalised float32 tensor when ``normalization`` is given, and no padding.
    """
    if isinstance(model, ModelRunner):
        return model
    if model is None or isinstance(model, (str, Path, OnnxModel)) or _is_loaded_model(model):
        model = load_runtime(model, device=device, tta=tta, precision=precision)
    if isinstance(model, ModelRuntime):
        rt = model
        return ModelRunner(rt.probabilities, rt.channels, rt.path, rt.description, gsd=rt.gsd, runtime=rt)
    if not callable(model):
        raise RooftraceError(f"model {model!r}: expected a model file, a loaded model or a callable")
    fn = model

    def run_callable(batch: np.ndarray) -> np.ndarray:
        import torch

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
