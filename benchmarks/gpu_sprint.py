"""A GPU training sprint of the default recipe: pack here, train on a lent GPU, bring the weights back.

When a session's device ``status`` says a GPU is lent, three steps turn its minutes into a model:

1. ``pack`` (here, on the CPU, with rooftrace): every training and validation tile of the recipe
   (``configs/unet-lite0.yaml``), already resampled to the model's pixel size, as JPEG, its target
   channels as PNG and its buildings as gzipped COCO JSON per split, the sampling weight of each tile
   (``rooftrace.training.sampling``) and the starting weights, in at most ``--max-mib`` MiB. Starting
   weights that git tracks (the shipped model, by default) travel with the working tree, so the pack names
   them by path and SHA-256 instead of copying them; others are copied in (fp16). The wheels the GPU
   machine lacks (segmentation-models-pytorch, shapely) go to ``.whl/``. The recipe's data packs into
   43 MiB (the pack, 2.3 MiB of wheels and the 13 MiB working tree: 58 MiB of a device call's 64).
2. ``train`` (there): the whole pack on the GPU as uint8, batches cut there too (one affine
   ``grid_sample`` a batch does crop, pixel scale, rotation and flips, each window placed within its tile,
   not on the padding of its 512 px piece; colour, grayscale, simulated
   panchromatic and noise are tensor operations; no crops centred on buildings, the recipe's
   ``augment.focus``, and no haze), bf16 autocast, channels_last, fused AdamW, a
   one-cycle schedule stretched over the time budget (``--minutes``), then one validation pass (loss and
   pixel IoU). It writes ``sprint.safetensors`` (fp16, under 16 MiB) and ``sprint.json`` (images/s,
   steps, losses). No CPU data pipeline, so 16 cores never bound it.
3. ``import`` (here): the weights as a rooftrace model file with the recipe's config, to be scored by
   ``benchmarks/model_card.py`` and shipped only if validation prefers it.

``device-command`` prints the one ``run`` call for step 2, after checking that what it carries fits.
``train --device cpu --max-steps 2`` runs the same code on the CPU (the tests do, on a tiny pack).

    .venv/bin/python benchmarks/gpu_sprint.py pack --out out/sprint      # writes out/sprint and .whl/
    .venv/bin/python benchmarks/gpu_sprint.py device-command               # the command and carry list
    .venv/bin/python benchmarks/gpu_sprint.py import --sprint DIR --out runs/sprint.safetensors
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WHEELS = ("segmentation-models-pytorch==0.6.0", "shapely")
CHANNELS = 3
PIECE = 512  #: tiles are cut into pieces of this size on the GPU, so that a batch is one tensor


# --- pack (CPU, rooftrace) ---------------------------------------------------------------------


def pack(config: str, out: Path, init: str | None, max_mib: float, max_tiles: int = 0, quality: int = 92,
         force: bool = False) -> dict:
    """Write the sprint pack to ``out``; returns its summary. Raises if it would exceed ``max_mib``."""
    import io

    import numpy as np
    from PIL import Image
    from safetensors.torch import save_file
    import shapely

    from rooftrace.config import load_config
    from rooftrace.core.errors import RooftraceError
    from rooftrace.labels.records import LoadReport
    from rooftrace.labels.splits import open_split
    from rooftrace.models.files import read_model_file
    from rooftrace.training.dataset import TileDataset, select_tiles
    from rooftrace.training.sampling import tile_weights

    cfg = load_config(config)
    if out.exists() and any(out.iterdir()) and not force:
        raise RooftraceError(f"{out}: exists and is not empty (use --force to replace it)")
    out.mkdir(parents=True, exist_ok=True)
    total = 0
    summary: dict = {"config": cfg.to_dict(), "splits": {}}
    for split in ("train", "val"):
        specs = cfg.data.train if split == "train" else cfg.data.val
        labels = [open_split(s) for s in specs]
        ds = TileDataset(select_tiles(specs, labels), cfg.data, None, max_tiles=max_tiles)
        ds.drop_unreadable(LoadReport(f"data.{split}"))
        stats = [ds.stats(i) for i in range(len(ds))]
        weights = (tile_weights(stats, [r.source for r in ds.items], cfg.data.crop_size, [s.weight for s in specs])
                   if split == "train" and cfg.data.sampling == "balanced" else np.full(len(ds), 1.0 / len(ds)))
        folder = out / split
        folder.mkdir(exist_ok=True)
        images, annotations = [], []
        for i in range(len(ds)):
            rgb, target = ds.load(i)
            h, w = rgb.shape[:2]
            name = f"{i:05d}"
            buf = io.BytesIO()
            Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
            (folder / f"{name}.jpg").write_bytes(buf.getvalue())
            tbuf = io.BytesIO()
            Image.fromarray((target[:, :, :3] * 255).astype(np.uint8)).save(tbuf, format="PNG", optimize=True)
            (folder / f"{name}.png").write_bytes(tbuf.getvalue())
            total += len(buf.getvalue()) + len(tbuf.getvalue())
            ref = ds.items[i]
            images.append({"id": i + 1, "file_name": f"{name}.jpg", "target": f"{name}.png", "width": w, "height": h,
                           "source": int(ref.source), "origin": str(ref.path), "weight": float(weights[i])})
            for poly in ds.footprints(i, (h, w)):
                if poly is None or poly.is_empty:
                    continue
                for part in getattr(poly, "geoms", [poly]):
                    ring = np.asarray(part.exterior.coords)[:-1]
                    x0, y0, x1, y1 = part.bounds
                    annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                                        "segmentation": [ring.round(2).ravel().tolist()], "area": float(shapely.area(part)),
                                        "bbox": [x0, y0, x1 - x0, y1 - y0]})
        coco = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "building"}]}
        # gzip: the labels traced on pixel edges (Dubai, Rio) are 11 MB as text and 1.8 MB compressed
        data = gzip.compress(json.dumps(coco).encode(), mtime=0)
        (folder / f"{split}.json.gz").write_bytes(data)
        total += len(data)
        summary["splits"][split] = {"tiles": len(images), "buildings": len(annotations)}
    if init:
        tensors, _ = read_model_file(Path(init))  # a rooftrace model file, its hash checked, before anything relies on it
        in_repo = _travels(Path(init))
        if in_repo is not None:  # it goes to the GPU machine with the working tree: named, not copied
            summary["init"] = {"repo_path": in_repo, "sha256": _sha256(Path(init))}
        else:
            save_file({k: v.half().contiguous() if v.is_floating_point() else v.contiguous() for k, v in tensors.items()},
                      str(out / "init.safetensors"))
            total += (out / "init.safetensors").stat().st_size
            summary["init"] = {"file": "init.safetensors", "from": str(init)}
    summary["bytes"] = total
    (out / "pack.json").write_text(json.dumps(summary, indent=2))
    if total > max_mib * 2**20:
        raise RooftraceError(f"{out}: the pack is {total / 2**20:.1f} MiB, over the {max_mib:g} MiB it may take "
                             f"(lower --quality or --max-tiles)")
    return summary


def _travels(path: Path) -> str | None:
    """``path`` relative to the repository when git tracks it (it then travels to the GPU machine with the
    working tree), else ``None``."""
    try:
        rel = path.resolve().relative_to(REPO)
    except ValueError:
        return None
    try:
        r = subprocess.run(["git", "-C", str(REPO), "ls-files", "--error-unmatch", str(rel)], capture_output=True)
    except OSError:  # no git here: copy it, as for any file the working tree may not carry
        return None
    return rel.as_posix() if r.returncode == 0 else None


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _init_tensors(pack_dir: Path, meta: dict) -> dict | None:
    """The pack's starting weights as float tensors (``None``: the config's encoder from ImageNet)."""
    from safetensors.torch import load_file

    init = meta.get("init")
    if isinstance(init, dict) and "repo_path" in init:
        from rooftrace.models.files import read_model_file

        path = REPO / init["repo_path"]
        if not path.exists() or _sha256(path) != init["sha256"]:
            raise SystemExit(f"{path}: the starting weights the pack names are missing or changed since it was packed")
        tensors, _ = read_model_file(path)
        return {k: v.float() for k, v in tensors.items()}
    if (pack_dir / "init.safetensors").exists():
        return {k: v.float() for k, v in load_file(str(pack_dir / "init.safetensors")).items()}
    return None


def carried_bytes(pack_dir: Path, wheels: Path) -> dict[str, int]:
    """What one device call carries: the working tree (tracked files and untracked ones git does not ignore, as the
    device README counts it), the pack and the wheels (bytes each)."""
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           capture_output=True, check=True).stdout.split(b"\0")
    tree = sum((REPO / f.decode()).stat().st_size for f in files if f and (REPO / f.decode()).is_file())
    size = lambda d: sum(f.stat().st_size for f in d.rglob("*") if f.is_file()) if d.exists() else 0  # noqa: E731
    return {"tree": tree, "pack": size(pack_dir), "wheels": size(wheels)}


#: What a device call may carry in all (the device README: the working tree, carried paths included).
CARRY_LIMIT = 64 * 2**20


def fetch_wheels(dest: Path, wheels: tuple[str, ...] = WHEELS) -> None:
    """The wheels the GPU machine lacks, for its Python 3.12 (from PyPI, as the device README says); a name without
    ``==`` is pinned to the version installed here."""
    import importlib.metadata

    names = [w if "==" in w else f"{w}=={importlib.metadata.version(w)}" for w in wheels]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
                    "--implementation", "cp", "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
                    "--platform", "manylinux2014_x86_64", "-d", str(dest), *names], check=True)


# --- train (GPU or CPU: torch, numpy, PIL, smp; rooftrace's config, model and loss) ---------------


def _load_pack(root: Path, split: str):
    import numpy as np
    import torch
    from PIL import Image

    coco = json.loads(gzip.decompress((root / split / f"{split}.json.gz").read_bytes()))
    pieces, weights, sizes = [], [], []
    for img in coco["images"]:
        rgb = np.asarray(Image.open(root / split / img["file_name"]).convert("RGB"))
        tgt = np.asarray(Image.open(root / split / img["target"]).convert("RGB"))
        both = np.concatenate([rgb, tgt], axis=2)
        h, w = both.shape[:2]
        cells = [(y, x) for y in range(0, h, PIECE) for x in range(0, w, PIECE)]
        for y, x in cells:
            part = both[y:y + PIECE, x:x + PIECE]
            piece = np.zeros((PIECE, PIECE, 6), np.uint8)
            piece[:part.shape[0], :part.shape[1]] = part
            pieces.append(piece)
            weights.append(img["weight"] * part.shape[0] * part.shape[1] / (h * w))
            sizes.append(part.shape[:2])
    data = torch.from_numpy(np.stack(pieces)).permute(0, 3, 1, 2).contiguous()
    return data, torch.tensor(weights, dtype=torch.float64), torch.tensor(sizes, dtype=torch.float32)


def _normalise(img, mean, std):
    """Images in [0, 1] as the model expects them: ``(img - mean) / std`` per channel (the config's, as training does)."""
    import torch

    m = torch.as_tensor(mean, dtype=img.dtype, device=img.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=img.dtype, device=img.device).view(1, -1, 1, 1)
    return ((img - m) / s).contiguous(memory_format=torch.channels_last)


def _batch(data, weights, n: int, crop: int, aug: dict, device, norm_mean=(0.5, 0.5, 0.5), norm_std=(0.5, 0.5, 0.5),
           sizes=None):
    """``n`` augmented crops from the uint8 pieces on ``device``: (images normalised by ``norm_mean`` and ``norm_std``,
    targets 0/1). ``sizes``: each piece's tile content ``(h, w)`` from its top-left corner (the rest is padding); each
    window is placed within it, as the CPU recipe places its crops within the tile (``None``: the whole piece)."""
    import torch
    import torch.nn.functional as F

    idx = torch.multinomial(weights, n, replacement=True).to(device)
    x = data.index_select(0, idx).float()
    r = lambda *s: torch.rand(*s, device=device)  # noqa: E731
    # Affine crop: scale (pixel size, log-uniform within the limit, for pixel_scale of the samples),
    # any rotation a quarter of the time else a small one, flips, a random place.
    scale = torch.ones(n, device=device)
    m = r(n) < aug["pixel_scale"]
    scale[m] = aug["pixel_scale_limit"] ** (r(int(m.sum())) * 2 - 1)
    angle = torch.where(r(n) < 0.5, (r(n) * 2 - 1) * math.radians(aug["rotate_limit"]), torch.zeros(n, device=device))
    angle = angle + (torch.randint(0, 4, (n,), device=device) * (math.pi / 2))
    half = crop / PIECE / scale  # half-size of the window in normalised coordinates (the piece spans -1..1)
    content = (torch.full((n, 2), float(PIECE), device=device) if sizes is None else sizes.to(device).index_select(0, idx))
    # The centre's range that keeps the window inside the content (the piece spans -1..1; the content from -1 to
    # -1 + 2 h / PIECE); where the content is smaller than the window, the range that keeps the content inside it.
    lo, hi = -1 + half[:, None], -1 + 2 * content / PIECE - half[:, None]
    lo, hi = torch.minimum(lo, hi), torch.maximum(lo, hi)
    cy, cx = (lo + (hi - lo) * r(n, 2)).unbind(1)
    fx = torch.where(r(n) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) * half, torch.sin(angle) * half
    theta = torch.stack([torch.stack([cos * fx, -sin, cx], 1), torch.stack([sin * fx, cos, cy], 1)], 1)
    grid = F.affine_grid(theta, (n, 6, crop, crop), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    img, tgt = out[:, :3] / 255.0, (out[:, 3:] > 127.5).float()
    # Colour: brightness / contrast, gamma, channel shifts.
    b = 1 + (r(n, 1, 1, 1) * 2 - 1) * 0.25 * (r(n, 1, 1, 1) < aug["brightness_contrast"])
    c = 1 + (r(n, 1, 1, 1) * 2 - 1) * 0.25 * (r(n, 1, 1, 1) < aug["brightness_contrast"])
    mean = img.mean((1, 2, 3), keepdim=True)
    img = ((img - mean) * c + mean) * b
    shift = (r(n, 3, 1, 1) * 2 - 1) * (20 / 255) * (r(n, 1, 1, 1) < aug["gamma"])
    img = (img + shift).clamp(0, 1)
    gamma = torch.where(r(n, 1, 1, 1) < aug["gamma"], 0.7 + r(n, 1, 1, 1) * 0.8, torch.ones(n, 1, 1, 1, device=device))
    img = img.clamp_min(1e-6) ** gamma
    # Simulated panchromatic (vegetation bright, as near-infrared makes it), then plain grayscale.
    pan = r(n) < aug["pan"]
    if pan.any():
        p = img[pan]
        gr = (p[:, 1] - p[:, 0]) / (p[:, 1] + p[:, 0] + 1 / 255)
        gr = F.avg_pool2d(gr[:, None], 5, 1, 2)[:, 0]
        veg = ((gr - 0.045) / 0.08).clamp(0, 1)
        vis = 0.25 * p[:, 0] + 0.45 * p[:, 1] + 0.30 * p[:, 2]
        k = p.shape[0]
        w = 0.45 + torch.rand(k, 1, 1, device=device) * 0.3
        vb = 0.35 + torch.rand(k, 1, 1, device=device) * 0.4
        band = (1 - w) * vis + w * (vis + veg * vb)
        flat = band.flatten(1)
        lo = flat.quantile(0.01, dim=1)[:, None, None]
        hi = flat.quantile(0.99, dim=1)[:, None, None]
        band = ((band - lo) / (hi - lo).clamp_min(1e-3)).clamp(0, 1)
        img[pan] = band[:, None].expand(-1, 3, -1, -1)
    gray = (r(n) < aug["gray"]) & ~pan
    if gray.any():
        g = (0.299 * img[gray, 0] + 0.587 * img[gray, 1] + 0.114 * img[gray, 2])
        img[gray] = g[:, None].expand(-1, 3, -1, -1)
    noise = (r(n, 1, 1, 1) < aug["blur_noise"] / 2) * (0.02 + r(n, 1, 1, 1) * 0.06)
    img = (img + torch.randn_like(img) * noise).clamp(0, 1)
    return _normalise(img, norm_mean, norm_std), tgt


def train(pack_dir: Path, out: Path, minutes: float, device: str, batch: int, lr: float, crop: int, max_steps: int = 0,
          compile_model: bool = False, seed: int = 0) -> dict:
    """Train the pack's recipe for ``minutes`` (or ``max_steps``); writes ``sprint.safetensors`` and ``sprint.json``."""
    import dataclasses

    import torch
    from safetensors.torch import save_file

    from rooftrace.config import config_from_dict
    from rooftrace.models.architectures import build_model
    from rooftrace.training.losses import SegmentationLoss

    t_start = time.perf_counter()
    torch.manual_seed(seed)
    meta = json.loads((pack_dir / "pack.json").read_text())
    cfg = config_from_dict(meta["config"])
    dev = torch.device(device)
    model = build_model(dataclasses.replace(cfg.model, encoder_weights=None), CHANNELS)
    init = _init_tensors(pack_dir, meta)
    if init is not None:
        model.load_state_dict(init, strict=True)
    model = model.to(dev).to(memory_format=torch.channels_last).train()
    net = torch.compile(model) if compile_model else model
    loss_fn = SegmentationLoss(cfg.loss, CHANNELS).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=lr / 10, weight_decay=cfg.optim.weight_decay,
                            fused=dev.type in ("cuda", "cpu"))
    data, weights, sizes = _load_pack(pack_dir, "train")
    data, sizes = data.to(dev), sizes.to(dev)
    val, _, _ = _load_pack(pack_dir, "val")
    aug = dataclasses.asdict(cfg.augment)
    amp = dict(device_type=dev.type, dtype=torch.bfloat16)
    budget = minutes * 60 - (time.perf_counter() - t_start) - 45  # leave time for validation and saving
    steps, seen, losses = 0, 0, []
    t0 = time.perf_counter()
    t_warm, seen_warm = None, 0
    while True:
        elapsed = time.perf_counter() - t0
        frac = steps / max_steps if max_steps else elapsed / max(budget, 1e-6)
        if frac >= 1.0:
            break
        # One cycle over the budget: warm-up to lr over the first 10 %, cosine down to lr / 1000.
        w = 0.1
        cur = lr / 10 + (lr - lr / 10) * frac / w if frac < w else lr / 1000 + (lr - lr / 1000) * 0.5 * (1 + math.cos(math.pi * (frac - w) / (1 - w)))
        for g in opt.param_groups:
            g["lr"] = cur
        x, y = _batch(data, weights, batch, crop, aug, dev, cfg.data.mean, cfg.data.std, sizes)
        with torch.autocast(**amp):
            logits = net(x)
        loss = loss_fn(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip or 1e9)
        opt.step()
        steps += 1
        seen += batch
        if steps % 20 == 0 or max_steps:
            losses.append((steps, float(loss.detach())))
        if steps == 10:
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t_warm, seen_warm = time.perf_counter(), seen
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t_end = time.perf_counter()
    rate = (seen - seen_warm) / (t_end - t_warm) if t_warm and t_end > t_warm and seen > seen_warm else seen / max(t_end - t0, 1e-9)
    # Validation: loss and pixel IoU of the footprint channel on the validation pieces.
    model.eval()
    inter = union = 0.0
    vloss, vn = 0.0, 0
    with torch.inference_mode():
        for s in range(0, val.shape[0], 16):
            v = val[s:s + 16].to(dev).float()
            xi = _normalise(v[:, :3] / 255.0, cfg.data.mean, cfg.data.std)
            yi = (v[:, 3:] > 127.5).float()
            with torch.autocast(**amp):
                lo = model(xi)
            vloss += float(loss_fn(lo.float(), yi)) * v.shape[0]
            vn += v.shape[0]
            p, t = lo[:, 0] > 0, yi[:, 0] > 0.5
            inter += float((p & t).sum())
            union += float((p | t).sum())
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().half().cpu().contiguous() if v.is_floating_point() else v.cpu().contiguous()
               for k, v in model.state_dict().items()}, str(out / "sprint.safetensors"))
    result = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "torch": torch.__version__,
              "steps": steps, "batch": batch, "crop": crop, "lr": lr, "images_seen": seen, "train_images_per_s": rate,
              "train_s": t_end - t0, "val_loss": vloss / max(vn, 1), "val_pixel_iou": inter / max(union, 1.0),
              "losses": losses, "wall_s": time.perf_counter() - t_start}
    (out / "sprint.json").write_text(json.dumps(result, indent=2))
    return result


# --- import (CPU, rooftrace) ---------------------------------------------------------------------


def import_weights(sprint: Path, out: Path, pack_dir: Path | None = None, force: bool = False) -> Path:
    """The sprint's weights as a rooftrace model file (config and pixel size in its metadata)."""
    import dataclasses

    from safetensors.torch import load_file

    from rooftrace.config import config_from_dict
    from rooftrace.models.architectures import build_model
    from rooftrace.models.files import save_model

    meta = json.loads(((pack_dir or REPO / "out" / "sprint") / "pack.json").read_text())
    cfg = config_from_dict(meta["config"])
    model = build_model(dataclasses.replace(cfg.model, encoder_weights=None), CHANNELS)
    model.load_state_dict({k: v.float() for k, v in load_file(str(sprint / "sprint.safetensors")).items()}, strict=True)
    result = json.loads((sprint / "sprint.json").read_text())
    if out.exists() and not force:
        raise SystemExit(f"{out}: exists (use --force to replace it)")
    save_model(out, model, cfg, extra={"gpu_sprint": {k: result[k] for k in ("device", "steps", "batch", "train_images_per_s")}},
               half=True)
    return out


def install_wheels_command(wheel_dir: str) -> str:
    """The start of a device call: the carried wheels installed (as the device README says), rooftrace's ``src`` on
    the path, the GPU named."""
    return (f"python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site {wheel_dir}/*.whl "
            "&& export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 && nvidia-smi -L && ")


def device_command(minutes: float) -> str:
    return install_wheels_command(".whl") + (
        f"python3 benchmarks/gpu_sprint.py train --pack out/sprint --out $OUT --minutes {minutes:g} 2>&1 | tail -40")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="write the data pack (and fetch the wheels into .whl/)")
    p.add_argument("--config", default=str(REPO / "configs" / "unet-lite0.yaml"))
    p.add_argument("--init", default=str(REPO / "src" / "rooftrace" / "models" / "shipped" / "rooftrace-unet-lite0.safetensors"),
                   help="starting weights (a rooftrace model file; '' = the config's encoder from ImageNet)")
    p.add_argument("--out", default=str(REPO / "out" / "sprint"))
    p.add_argument("--max-mib", type=float, default=45.0, help="size bound of the pack (default 45 MiB: the repository, "
                   "the wheels and the pack travel in 64 MiB)")
    p.add_argument("--max-tiles", type=int, default=0, help="only the first N tiles of each split (tests)")
    p.add_argument("--quality", type=int, default=92, help="JPEG quality of the tiles (default 92)")
    p.add_argument("--no-wheels", action="store_true")
    p.add_argument("--force", action="store_true")
    t = sub.add_parser("train", help="train on the pack (on the GPU machine)")
    t.add_argument("--pack", default=str(REPO / "out" / "sprint"))
    t.add_argument("--out", required=True)
    t.add_argument("--minutes", type=float, default=8.0)
    t.add_argument("--max-steps", type=int, default=0, help="stop after N steps instead of the time budget")
    t.add_argument("--device", default="cuda")
    t.add_argument("--batch", type=int, default=128)
    t.add_argument("--crop", type=int, default=256)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--compile", action="store_true")
    i = sub.add_parser("import", help="the sprint's weights as a rooftrace model file")
    i.add_argument("--sprint", required=True, help="the folder train wrote (sprint.safetensors, sprint.json)")
    i.add_argument("--pack", default=str(REPO / "out" / "sprint"))
    i.add_argument("--out", required=True)
    i.add_argument("--force", action="store_true")
    d = sub.add_parser("device-command", help="print the device run call")
    d.add_argument("--minutes", type=float, default=8.0)
    args = ap.parse_args(argv)
    if args.cmd == "pack":
        os.environ.setdefault("ROOFTRACE_EXTRA_DIR", str(REPO.parent / "shared" / "data" / "buildings-extra"))
        s = pack(args.config, Path(args.out), args.init or None, args.max_mib, args.max_tiles, args.quality, args.force)
        print(f"pack {args.out}: {s['bytes'] / 2**20:.1f} MiB; " + ", ".join(f"{k} {v['tiles']} tiles, {v['buildings']} buildings"
                                                                         for k, v in s["splits"].items()))
        if not args.no_wheels:
            fetch_wheels(REPO / ".whl")
    elif args.cmd == "train":
        r = train(Path(args.pack), Path(args.out), args.minutes, args.device, args.batch, args.lr, args.crop, args.max_steps, args.compile)
        print(json.dumps({k: v for k, v in r.items() if k != "losses"}, indent=2))
    elif args.cmd == "import":
        print(import_weights(Path(args.sprint), Path(args.out), Path(args.pack), args.force))
    else:
        sizes = carried_bytes(REPO / "out" / "sprint", REPO / ".whl")
        if not sizes["pack"] or not sizes["wheels"]:
            raise SystemExit("out/sprint or .whl/ is missing or empty: run `gpu_sprint.py pack` first")
        total = sum(sizes.values())
        print("carried: " + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in sizes.items()) + f"; {total / 2**20:.1f} MiB in all")
        if total > CARRY_LIMIT:
            raise SystemExit(f"{total / 2**20:.1f} MiB would travel, over the device call's {CARRY_LIMIT / 2**20:g} MiB: "
                             "pack again with a lower --max-mib or --quality")
        print(f"run(command={device_command(args.minutes)!r}, carry=['out/sprint', '.whl'], timeout_s={int(args.minutes * 60 + 240)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
