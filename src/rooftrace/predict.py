"""Inference on a folder of tiles: batched, optionally with flip TTA, then post-processing and files.

``predict_folder`` reads every tile in a folder (any size; each tile is zero-padded on the bottom and
right to a multiple of 32), runs the model under ``torch.inference_mode`` (channels_last; autocast as
:mod:`rooftrace.precision` decides: bf16 on GPUs and on CPUs with native bf16; optionally
``torch.compile``), or an exported ``.onnx`` model with ONNX Runtime,
averages flipped predictions when asked, turns probabilities into one polygon per building
(:mod:`rooftrace.postprocess`, with the thresholds ``rooftrace tune`` saved beside the model when there
are any), and writes into the output folder:

- ``submission.csv``: BEGC2024 format, one row for every image of the folder, sorted by ImageID;
- ``predictions.geojson``: pixel coordinates, ``image_id`` per feature;
- ``predictions.coco.json``: COCO results (``image_id`` is the image key);
- ``masks/<stem>.png``: 16-bit instance ids; ``overlays/<stem>.png``: the tile with its polygons.

Unreadable tiles are reported and skipped, and still get their (empty) row in the submission.

The work is a pipeline whose stages overlap: DataLoader worker processes read, normalise and pad
tiles; the main thread groups tiles of the same padded size into batches (so a 256 x 256 tile is never
padded to a 672 x 672 neighbour's size, and a tile's probabilities depend on nothing but the tile: the
same as at batch size 1) and runs the model (on the CPU, one 512 x 512 tile's worth of pixels per
forward pass, which is faster per tile there than larger batches); a small pool of threads
post-processes each tile and encodes and writes its mask and overlay while the next batch runs.
Post-processing releases the GIL in its heavy parts (OpenCV, numpy, scikit-image, shapely, zlib), so
the threads run alongside inference. On a CPU of up to 4 cores, where inference already fills every
core, the default is to post-process in line instead (a thread beside PyTorch's slows it more than
it saves; see ``benchmarks/predict_speed.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .dataset import Normalization
from .export import OnnxModel, is_onnx, load_onnx, onnx_postprocess_settings
from .formats import atomic_write_bytes, atomic_write_text, write_begc_csv, write_coco_results, write_geojson
from .imagery import list_images, read_rgb
from .labels import ImageKey, LabelSet, LoadReport, RooftraceError, image_key
from .postprocess import PostprocessSettings, postprocess
from .precision import autocast, autocast_dtype, normalise_precision
from .weights import LoadedModel, load_model

POSTPROCESS_SUFFIX = ".postprocess.json"

#: Largest number of pixels in one PyTorch forward pass on the CPU (one 512 x 512 tile): measured
#: with ``benchmarks/model_speed.py``, every shipped architecture runs as fast or faster per tile at
#: batch 1 than at batch 4 on 512 x 512 tiles there, EfficientNet-B0 twice as fast as at batch 8.
CPU_PIXELS_PER_FORWARD = 512 * 512


def tuned_settings_path(model_path: str | Path) -> Path:
    """Where ``rooftrace tune`` saves post-processing settings for a model: beside it (for an exported
    ``m.onnx``, the same file as for ``m.safetensors``)."""
    p = Path(model_path)
    name = p.name.removesuffix(".onnx") if is_onnx(p) else p.name.removesuffix(".safetensors")
    return p.with_name(name + POSTPROCESS_SUFFIX)


def load_tuned(model_path: str | Path) -> tuple[str | None, PostprocessSettings | None]:
    """``(method, settings)`` saved beside a model by ``rooftrace tune``, or ``(None, None)``."""
    p = tuned_settings_path(model_path)
    if not p.exists():
        return None, None
    try:
        data = json.loads(p.read_text())
        return data.get("method"), PostprocessSettings.from_dict(data["settings"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise RooftraceError(f"{p}: not a readable post-processing settings file ({exc})") from None


class _Tiles(Dataset):
    """Tiles of a folder as normalised tensors zero-padded (bottom, right) to a multiple of 32; an
    unreadable tile yields its error instead. ``rgb`` (for overlays) only when asked."""

    def __init__(self, files: list[Path], norm: Normalization, keep_rgb: bool = True):
        self.files, self.norm, self.keep_rgb = files, norm, keep_rgb

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, Any]:
        try:
            rgb = read_rgb(self.files[i])
        except RooftraceError as exc:
            return {"index": i, "error": str(exc)}
        h, w = rgb.shape[:2]
        x = torch.zeros(3, -(-h // 32) * 32, -(-w // 32) * 32)
        x[:, :h, :w] = torch.from_numpy(self.norm.apply(rgb))
        return {"index": i, "image": x, "size": (h, w), "rgb": rgb if self.keep_rgb else None}


def _one(tile: dict[str, Any]) -> dict[str, Any]:
    """The loader's collate function for single tiles: as they are (no conversion of ``rgb``)."""
    return tile


def _collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Tiles of one padded size (or several: each is zero-padded to the largest) as one batch."""
    ok = [b for b in batch if "image" in b]
    out: dict[str, Any] = {"errors": [(b["index"], b["error"]) for b in batch if "error" in b], "index": [b["index"] for b in ok],
                           "rgb": [b["rgb"] for b in ok], "size": [tuple(b["size"]) for b in ok]}
    if ok:
        H = max(b["image"].shape[1] for b in ok)
        W = max(b["image"].shape[2] for b in ok)
        if all(tuple(b["image"].shape[1:]) == (H, W) for b in ok):
            out["image"] = torch.stack([b["image"] for b in ok])
        else:
            x = torch.zeros(len(ok), 3, H, W)
            for n, b in enumerate(ok):
                x[n, :, : b["image"].shape[1], : b["image"].shape[2]] = b["image"]
            out["image"] = x
    return out


def pick_device(device: str = "auto") -> torch.device:
    """``auto`` is the GPU when there is one; asking for cuda without one is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RooftraceError("--device cuda: no CUDA GPU is available here")
    return torch.device(device)


@torch.inference_mode()
def predict_probabilities(loaded: LoadedModel | OnnxModel, x: torch.Tensor, device: torch.device, tta: bool = False,
                          precision: str = "auto") -> np.ndarray:
    """Sigmoid probabilities ``(N, C, H, W)`` for a normalised batch; with ``tta`` the mean over
    identity, horizontal, vertical and both flips. ``loaded`` is a PyTorch model
    (:func:`rooftrace.weights.load_model`) or an exported one (:func:`rooftrace.export.load_onnx`,
    run by ONNX Runtime on its own providers; ``device`` and ``precision`` are not used then).
    ``precision``: see :mod:`rooftrace.precision` (``auto``: bf16 autocast on GPUs and on CPUs with
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


@dataclass
class PredictResult:
    """What ``predict_folder`` did."""

    out_dir: Path
    labels: LabelSet
    n_images: int
    n_skipped: int
    seconds: float
    report: LoadReport
    files: list[Path] = field(default_factory=list)
    #: Seconds per stage, summed over tiles: ``wait`` (main thread waiting for tiles), ``inference``,
    #: ``postprocess`` and ``write`` (masks and overlays; summed over the post-processing threads,
    #: which run alongside inference; ``*_cpu``: the same in those threads' CPU time, which does not
    #: count time the thread waited for a core), ``outputs`` (submission, GeoJSON, COCO), ``total``.
    timings: dict[str, float] = field(default_factory=dict)
    #: Tiles an earlier, unfinished run had done (``resume=True``), taken from ``.partial``.
    n_resumed: int = 0

    def summary(self) -> str:
        lines = [f"predicted {self.labels.n_footprints} buildings on {self.n_images - self.n_skipped} of {self.n_images} tiles "
                 f"in {self.seconds:.1f} s ({(self.n_images - self.n_skipped) / max(self.seconds, 1e-9):.1f} tiles/s); outputs in {self.out_dir}"]
        if self.n_resumed:
            lines.append(f"{self.n_resumed} tiles were done by the unfinished run and not predicted again")
        if self.n_skipped:
            lines.append(f"{self.n_skipped} unreadable tile(s) skipped (they have an empty row in submission.csv):")
            lines.extend(f"  {m}" for m in self.report.messages[:20])
        return "\n".join(lines)


PARTIAL = ".partial"  #: per-tile results of an unfinished run, inside the output folder


def _check_out_dir(out_dir: Path, force: bool, resume: bool = False) -> None:
    partial = out_dir / PARTIAL
    if resume:
        if not (partial / "run.json").exists():
            raise RooftraceError(f"{out_dir}: holds no unfinished predict run to resume (no {PARTIAL}/run.json)")
    elif out_dir.exists() and out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        if (partial / "run.json").exists():
            done = sum(1 for _ in partial.glob("*.json")) - 1
            raise RooftraceError(f"{out_dir}: holds an unfinished predict run ({done} tiles done); pass --resume to finish it, "
                                 "or --force to start again")
        raise RooftraceError(f"{out_dir}: already holds files; pass --force to overwrite them, or choose another --out")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RooftraceError(f"{out_dir}: cannot create the output folder ({exc.strerror})") from None


def _run_record(model: str | Path, method: str, settings: PostprocessSettings | None, tta: bool, precision: str,
                images: Path, masks: bool, overlays: bool) -> dict[str, Any]:
    """What a resumed run must share with the run it continues."""
    from .models import sha256_file

    return {"model_sha256": sha256_file(Path(model)), "method": method, "settings": (settings or PostprocessSettings()).to_dict(),
            "tta": tta, "precision": precision, "images": str(images.resolve()), "masks": masks, "overlays": overlays}


def _tile_record(w: int, h: int, footprints: list, scores: list) -> str:
    import shapely

    wkb = shapely.to_wkb(np.asarray(footprints, dtype=object), hex=True).tolist() if footprints else []
    return json.dumps({"width": w, "height": h, "wkb": wkb, "scores": [float(v) for v in scores]})


def _read_tile_record(path: Path) -> tuple[int, int, list, list] | None:
    """A finished tile's result, or None when there is none or it is unreadable (the tile is then redone)."""
    import shapely

    if not path.exists():
        return None
    try:
        rec = json.loads(path.read_text())
        fps = list(shapely.from_wkb(rec["wkb"])) if rec["wkb"] else []
        return int(rec["width"]), int(rec["height"]), fps, [float(v) for v in rec["scores"]]
    except (OSError, ValueError, KeyError, TypeError, shapely.errors.GEOSException):
        return None


def _default_threads(device: torch.device) -> int:
    """Post-processing threads: none (in line, after each batch) for inference on a CPU of up to 4
    cores, where PyTorch's threads already fill the cores and a thread beside them slows inference
    more than it saves; else half the cores, at most 8."""
    cores = os.cpu_count() or 2
    if device.type == "cpu" and cores <= 4:
        return 0
    return max(1, min(8, cores // 2))


def _encode_overlay(rgb: np.ndarray) -> bytes:
    """PNG bytes of an ``(H, W, 3)`` uint8 overlay, at zlib level 1: the same pixels as
    :func:`rooftrace.prepare.encode_png` writes, five times faster (aerial imagery hardly compresses:
    the file is about 3 % larger)."""
    import cv2

    ok, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 RGB array
        from .prepare import encode_png

        return encode_png(rgb)
    return buf.tobytes()


def _finish_tile(probs: np.ndarray, rgb: np.ndarray | None, stem: str, out_dir: Path, method: str,
                 settings: PostprocessSettings | None, write_masks: bool, write_overlays: bool) -> tuple[list, list, tuple[float, ...]]:
    """Post-process one tile and write its mask and overlay (runs in a worker thread).

    Returns the footprints, their scores, and the seconds taken (wall and this thread's CPU time)
    by post-processing and by writing."""
    from .prepare import encode_instances, render_preview

    t0, c0 = time.perf_counter(), time.thread_time()
    found = postprocess(probs, method=method, settings=settings)
    t1, c1 = time.perf_counter(), time.thread_time()
    if write_masks and found.instances is not None:
        atomic_write_bytes(out_dir / "masks" / f"{stem}.png", encode_instances(found.instances, stem), force=True)
    if write_overlays and rgb is not None:
        atomic_write_bytes(out_dir / "overlays" / f"{stem}.png", _encode_overlay(render_preview(rgb, found.footprints)), force=True)
    return list(found.footprints), list(found.scores), (t1 - t0, c1 - c0, time.perf_counter() - t1, time.thread_time() - c1)


def predict_folder(
    images: str | Path,
    out_dir: str | Path,
    model: str | Path,
    *,
    batch_size: int = 8,
    tta: bool = False,
    device: str = "auto",
    workers: int = 2,
    method: str | None = None,
    settings: PostprocessSettings | None = None,
    write_masks: bool = True,
    write_overlays: bool = True,
    force: bool = False,
    progress: bool = True,
    threads: int | None = None,
    compile: bool = False,
    precision: str = "auto",
    resume: bool = False,
) -> PredictResult:
    """Predict footprints for every tile of ``images`` and write the outputs into ``out_dir``.

    Args:
        model: A ``.safetensors`` model file written by rooftrace, or an ``.onnx`` file written by
            ``rooftrace export`` (run with ONNX Runtime: CUDA when available and ``device`` allows,
            else the CPU).
        method, settings: Post-processing; default: what ``rooftrace tune`` saved beside the
            model, else (ONNX) what travelled in its metadata, else the default method with default
            settings.
        batch_size: Tiles per forward pass; tiles are batched with others of the same padded size.
        workers: Tile-reading processes (0: read in the main thread).
        threads: Post-processing and writing threads (0: in the main thread, after each batch;
            default: 0 for inference on a CPU of up to 4 cores, else half the cores, at most 8).
        compile: ``torch.compile`` the PyTorch model (pays off on long runs on a GPU; the first
            batches of each tile size wait for compilation). Ignored for ONNX models.
        precision: ``auto`` (bf16 autocast on GPUs and on CPUs with native bf16, else fp32),
            ``fp32``, ``bf16`` or ``fp16``; see :mod:`rooftrace.precision`. Ignored for ONNX models.
        resume: Finish the unfinished run in ``out_dir`` (killed or crashed): tiles it finished
            are taken from ``out_dir/.partial`` and not predicted again. The model, images,
            post-processing and outputs must be the first run's.

    Crash safety: each finished tile's result is written to ``out_dir/.partial/<stem>.json``
    (atomically) as it finishes; the submission, GeoJSON and COCO files are written once at the
    end, each to a temporary name and renamed, and then ``.partial`` is removed. A run killed at
    any moment leaves no half-written file, and ``resume=True`` finishes it.
    """
    images, out_dir = Path(images), Path(out_dir)
    files = list_images(images)
    if not files:
        raise RooftraceError(f"{images}: no image files (.tif, .png, .jpg) in this folder")
    _check_out_dir(out_dir, force, resume)
    precision = normalise_precision(precision)
    dev = pick_device(device)
    n_threads = _default_threads(dev) if threads is None else max(0, int(threads))
    loaded = load_any(model, device=device, onnx_spinning=n_threads == 0 and workers == 0)
    if compile and isinstance(loaded, LoadedModel):
        loaded.model = torch.compile(loaded.model)
    tuned_method, tuned = load_tuned(model)
    if tuned is None and isinstance(loaded, OnnxModel):
        tuned_method, tuned = onnx_postprocess_settings(loaded.meta)
    method = method or tuned_method or "watershed"
    settings = settings or tuned
    partial = out_dir / PARTIAL
    record = _run_record(model, method, settings, tta, precision, images, write_masks, write_overlays)
    done: dict[int, tuple[int, int, list, list]] = {}
    if resume:
        try:
            before = json.loads((partial / "run.json").read_text())
        except (OSError, ValueError):
            raise RooftraceError(f"{partial / 'run.json'}: unreadable; start again with --force") from None
        differ = [k for k in record if before.get(k) != record[k]]
        if differ:
            raise RooftraceError(f"{out_dir}: the unfinished run used other {', '.join(differ)}; resume it with the same "
                                 "model, images and options, or start again with --force")
        for n, f in enumerate(files):
            got = _read_tile_record(partial / f"{f.stem}.json")
            if got is not None:
                done[n] = got
    else:
        if partial.exists():
            shutil.rmtree(partial)
        atomic_write_text(partial / "run.json", json.dumps(record, indent=1), force=True)
    norm = Normalization(loaded.mean, loaded.std)
    report = LoadReport(path=str(images))
    labels = LabelSet(report=report, root=images, format="predictions")
    keys: list[ImageKey] = [image_key(f) for f in files]
    if len(set(keys)) != len(keys):
        raise RooftraceError(f"{images}: two images share a file stem; ImageIDs would collide")
    for f, k in zip(files, keys):  # file order, whatever order the batches finish in
        labels.get_or_add(k).file_name = f.name
    for n, (w, h, fps, scores) in done.items():
        img = labels[keys[n]]
        img.width, img.height, img.footprints, img.scores = w, h, fps, scores
    todo_index = [n for n in range(len(files)) if n not in done]  # loader index -> files index
    # One tile at a time out of the loader (batch_size=None); batches are formed below, by padded size.
    loader = DataLoader(_Tiles([files[n] for n in todo_index], norm, keep_rgb=write_overlays), batch_size=None, num_workers=workers, collate_fn=_one,
                        pin_memory=dev.type == "cuda", prefetch_factor=max(2, batch_size) if workers else None)
    timings = {"wait": 0.0, "inference": 0.0, "postprocess": 0.0, "postprocess_cpu": 0.0, "write": 0.0, "write_cpu": 0.0}
    t0 = time.perf_counter()
    skipped = 0
    bar = tqdm(total=len(files), initial=len(done), desc="predict", unit="tile", disable=not progress, dynamic_ncols=True)
    pool = ThreadPoolExecutor(n_threads, thread_name_prefix="rooftrace-post") if n_threads else None
    pending: deque[tuple[int, int, int, Future | tuple]] = deque()
    max_pending = max(2 * batch_size, 4 * max(n_threads, 1))

    def settle(limit: int) -> None:
        # Finished tiles are taken (and their .partial record written) at once, in order; wait
        # for unfinished ones only beyond ``limit``.
        while pending and (len(pending) > limit or not isinstance(pending[0][3], Future) or pending[0][3].done()):
            i, h, w, job = pending.popleft()
            fps, scores, seconds = job.result() if isinstance(job, Future) else job
            img = labels[keys[i]]
            img.width, img.height = w, h
            img.footprints, img.scores = fps, scores
            atomic_write_text(partial / f"{files[i].stem}.json", _tile_record(w, h, fps, scores), force=True)
            for name, value in zip(("postprocess", "postprocess_cpu", "write", "write_cpu"), seconds):
                timings[name] += value
            bar.update(1)

    def run_batch(tiles: list[dict[str, Any]]) -> None:
        batch = _collate(tiles)
        t = time.perf_counter()
        probs = predict_probabilities(loaded, batch["image"], dev, tta=tta, precision=precision)
        timings["inference"] += time.perf_counter() - t
        for n, j in enumerate(batch["index"]):
            i = todo_index[j]
            h, w = batch["size"][n]
            args = (probs[n, :, :h, :w], batch["rgb"][n], files[i].stem, out_dir, method, settings, write_masks, write_overlays)
            pending.append((i, h, w, pool.submit(_finish_tile, *args) if pool is not None else _finish_tile(*args)))
        settle(max_pending)

    buckets: dict[tuple[int, int], list[dict[str, Any]]] = {}
    try:
        it = iter(loader)
        while True:
            t = time.perf_counter()
            tile = next(it, None)
            timings["wait"] += time.perf_counter() - t
            if tile is None:
                break
            if "error" in tile:
                report.skip(tile["error"])
                skipped += 1
                bar.update(1)
                continue
            shape = tuple(tile["image"].shape[1:])
            bucket = buckets.setdefault(shape, [])
            bucket.append(tile)
            if len(bucket) >= batch_size:
                run_batch(buckets.pop(shape))
        for shape in list(buckets):
            run_batch(buckets.pop(shape))
        settle(0)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    seconds = time.perf_counter() - t0
    written = [
        write_begc_csv(labels, out_dir / "submission.csv", image_keys=keys, force=True),
        write_geojson(labels, out_dir / "predictions.geojson", force=True),
        write_coco_results(labels, out_dir / "predictions.coco.json", force=True),
    ]
    shutil.rmtree(partial, ignore_errors=True)  # the run is complete
    timings["outputs"] = time.perf_counter() - t0 - seconds
    timings["total"] = time.perf_counter() - t0
    return PredictResult(out_dir, labels, len(files), skipped, seconds, report, written, timings, n_resumed=len(done))
