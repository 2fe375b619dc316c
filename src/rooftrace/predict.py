"""Inference on a folder of tiles: batched, optionally with flip TTA, then post-processing and files.

``predict_folder`` reads every tile in a folder (any size; each batch is zero-padded on the bottom and
right to a multiple of 32), runs the model under ``torch.inference_mode`` (channels_last; bf16/fp16
autocast on CUDA), averages flipped predictions when asked, turns probabilities into one polygon per
building (:mod:`rooftrace.postprocess`, with the thresholds ``rooftrace tune`` saved beside the model
when there are any), and writes into the output folder:

- ``submission.csv``: BEGC2024 format, one row for every image of the folder, sorted by ImageID;
- ``predictions.geojson``: pixel coordinates, ``image_id`` per feature;
- ``predictions.coco.json``: COCO results (``image_id`` is the image key);
- ``masks/<stem>.png``: 16-bit instance ids; ``overlays/<stem>.png``: the tile with its polygons.

Unreadable tiles are reported and skipped, and still get their (empty) row in the submission.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .dataset import Normalization
from .formats import atomic_write_bytes, write_begc_csv, write_coco_results, write_geojson
from .imagery import list_images, read_rgb
from .labels import ImageKey, LabelSet, LoadReport, RooftraceError, image_key
from .postprocess import PostprocessSettings, postprocess
from .weights import LoadedModel, load_model

POSTPROCESS_SUFFIX = ".postprocess.json"


def tuned_settings_path(model_path: str | Path) -> Path:
    """Where ``rooftrace tune`` saves post-processing settings for a model: beside it."""
    p = Path(model_path)
    return p.with_name(p.name.removesuffix(".safetensors") + POSTPROCESS_SUFFIX)


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
    """Tiles of a folder as normalised tensors; an unreadable tile yields its error instead."""

    def __init__(self, files: list[Path], norm: Normalization):
        self.files, self.norm = files, norm

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, Any]:
        try:
            rgb = read_rgb(self.files[i])
        except RooftraceError as exc:
            return {"index": i, "error": str(exc)}
        return {"index": i, "image": torch.from_numpy(self.norm.apply(rgb)), "rgb": rgb}


def _collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [b for b in batch if "image" in b]
    out: dict[str, Any] = {"errors": [(b["index"], b["error"]) for b in batch if "error" in b], "index": [b["index"] for b in ok],
                           "rgb": [b["rgb"] for b in ok], "size": [tuple(b["image"].shape[1:]) for b in ok]}
    if ok:
        h = max(s[0] for s in out["size"])
        w = max(s[1] for s in out["size"])
        H, W = -(-h // 32) * 32, -(-w // 32) * 32
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
def predict_probabilities(loaded: LoadedModel, x: torch.Tensor, device: torch.device, tta: bool = False) -> np.ndarray:
    """Sigmoid probabilities ``(N, C, H, W)`` for a normalised batch; with ``tta`` the mean over
    identity, horizontal, vertical and both flips."""
    x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    amp = None
    if device.type == "cuda":
        amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def run(inp: torch.Tensor) -> torch.Tensor:
        if amp is None:
            return torch.sigmoid(loaded.model(inp).float())
        with torch.autocast("cuda", dtype=amp):
            return torch.sigmoid(loaded.model(inp).float())

    if not tta:
        return run(x).cpu().numpy()
    total = run(x)
    for dims in ((3,), (2,), (2, 3)):
        total += run(torch.flip(x, dims)).flip(dims)
    return (total / 4).cpu().numpy()


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

    def summary(self) -> str:
        lines = [f"predicted {self.labels.n_footprints} buildings on {self.n_images - self.n_skipped} of {self.n_images} tiles "
                 f"in {self.seconds:.1f} s ({(self.n_images - self.n_skipped) / max(self.seconds, 1e-9):.1f} tiles/s); outputs in {self.out_dir}"]
        if self.n_skipped:
            lines.append(f"{self.n_skipped} unreadable tile(s) skipped (they have an empty row in submission.csv):")
            lines.extend(f"  {m}" for m in self.report.messages[:20])
        return "\n".join(lines)


def _check_out_dir(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise RooftraceError(f"{out_dir}: already holds files; pass --force to overwrite them, or choose another --out")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RooftraceError(f"{out_dir}: cannot create the output folder ({exc.strerror})") from None


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
) -> PredictResult:
    """Predict footprints for every tile of ``images`` and write the outputs into ``out_dir``.

    Args:
        model: A ``.safetensors`` model file written by rooftrace.
        method, settings: Post-processing; default: what ``rooftrace tune`` saved beside the
            model, else the default method with default settings.
    """
    from .prepare import encode_instances, encode_png, render_preview

    images, out_dir = Path(images), Path(out_dir)
    files = list_images(images)
    if not files:
        raise RooftraceError(f"{images}: no image files (.tif, .png, .jpg) in this folder")
    _check_out_dir(out_dir, force)
    dev = pick_device(device)
    loaded = load_model(model, device=dev)
    loaded.model.to(memory_format=torch.channels_last)
    tuned_method, tuned = load_tuned(model)
    method = method or tuned_method or "watershed"
    settings = settings or tuned
    norm = Normalization(loaded.mean, loaded.std)
    report = LoadReport(path=str(images))
    labels = LabelSet(report=report, root=images, format="predictions")
    keys: list[ImageKey] = [image_key(f) for f in files]
    if len(set(keys)) != len(keys):
        raise RooftraceError(f"{images}: two images share a file stem; ImageIDs would collide")
    loader = DataLoader(_Tiles(files, norm), batch_size=batch_size, num_workers=workers, collate_fn=_collate,
                        pin_memory=dev.type == "cuda")
    t0 = time.perf_counter()
    skipped = 0
    bar = tqdm(total=len(files), desc="predict", unit="tile", disable=not progress, dynamic_ncols=True)
    for batch in loader:
        for i, err in batch["errors"]:
            report.note(err)
            skipped += 1
            labels.get_or_add(keys[i]).file_name = files[i].name
        if batch["index"]:
            probs = predict_probabilities(loaded, batch["image"], dev, tta=tta)
            for n, i in enumerate(batch["index"]):
                h, w = batch["size"][n]
                found = postprocess(probs[n, :, :h, :w], method=method, settings=settings)
                img = labels.get_or_add(keys[i])
                img.file_name, img.width, img.height = files[i].name, w, h
                img.footprints, img.scores = list(found.footprints), list(found.scores)
                stem = files[i].stem
                if write_masks and found.instances is not None:
                    atomic_write_bytes(out_dir / "masks" / f"{stem}.png", encode_instances(found.instances, stem), force=True)
                if write_overlays:
                    atomic_write_bytes(out_dir / "overlays" / f"{stem}.png", encode_png(render_preview(batch["rgb"][n], found.footprints)), force=True)
        bar.update(len(batch["index"]) + len(batch["errors"]))
    bar.close()
    seconds = time.perf_counter() - t0
    written = [
        write_begc_csv(labels, out_dir / "submission.csv", image_keys=keys, force=True),
        write_geojson(labels, out_dir / "predictions.geojson", force=True),
        write_coco_results(labels, out_dir / "predictions.coco.json", force=True),
    ]
    return PredictResult(out_dir, labels, len(files), skipped, seconds, report, written)

