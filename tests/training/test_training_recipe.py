"""The default recipe's training pieces: panchromatic simulation, balanced sampling, building-focused
crops, fp32 depthwise convolutions, validation every N epochs, and the GPU sprint's pack and CPU run."""

from __future__ import annotations

import csv
import gzip
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from shapely.geometry import box

from rooftrace.config import load_config
from rooftrace.core.errors import RooftraceError
from rooftrace.training.augment import Panchromatic, green_red_index, simulate_panchromatic, train_transform
from rooftrace.training.sampling import TileStats, focus_window, tile_stats, tile_weights

REPO = Path(__file__).resolve().parents[2]


def _garden(seed: int = 0) -> np.ndarray:
    """A 128 x 128 tile: grey road, a dark green tree crown, a brown roof, a grey roof, with noise."""
    rng = np.random.default_rng(seed)
    img = np.zeros((128, 128, 3), np.float32)
    img[:] = (120, 118, 112)  # bare ground / road
    img[10:50, 10:50] = (45, 70, 40)  # tree crown: dark, green
    img[70:110, 10:50] = (150, 100, 80)  # brown roof
    img[70:110, 70:110] = (140, 140, 140)  # grey roof
    img += rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


# --- panchromatic simulation ------------------------------------------------------------------

def test_simulated_panchromatic_makes_trees_bright_where_grayscale_keeps_them_dark():
    rgb = _garden()
    gray = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    pan = simulate_panchromatic(rgb)
    assert pan.dtype == np.uint8 and pan.shape == rgb.shape
    assert (pan[..., 0] == pan[..., 1]).all() and (pan[..., 1] == pan[..., 2]).all()  # one band, three channels
    tree, brown, grey = (slice(20, 40), slice(20, 40)), (slice(80, 100), slice(20, 40)), (slice(80, 100), slice(80, 100))
    # In plain grayscale the tree is the darkest thing, far below the grey roof. In the simulated pan
    # band (as in a real one) it outshines the brown roof and is about as bright as the grey one.
    assert gray[tree].mean() < gray[brown].mean() and gray[tree].mean() < 0.6 * gray[grey].mean()
    assert pan[tree][..., 0].mean() > pan[brown][..., 0].mean() + 20
    assert pan[tree][..., 0].mean() > 0.85 * pan[grey][..., 0].mean()
    assert green_red_index(rgb)[tree].mean() > 0.1 > green_red_index(rgb)[grey].mean()


def test_panchromatic_transform_draws_its_mixing_per_sample_and_leaves_other_inputs_alone():
    rgb = _garden()
    t = Panchromatic(p=1.0)
    t.set_random_seed(0)
    a = t(image=rgb)["image"]
    b = t(image=rgb)["image"]
    assert not np.array_equal(a, b)  # a new near-infrared share and vegetation brightness each time
    gray = np.zeros((8, 8), np.uint8)
    assert t(image=gray)["image"] is gray or np.array_equal(t(image=gray)["image"], gray)


def test_pan_in_the_pipeline_only_when_asked(tmp_path):
    cfg = load_config(REPO / "configs" / "unet-lite0.yaml")
    assert cfg.augment.pan > 0
    names = [type(t).__name__ for t in train_transform(cfg.augment).transforms]
    assert "Panchromatic" in names
    old = load_config(REPO / "configs" / "unet-lite0.yaml", ["augment.pan=0"])
    assert "Panchromatic" not in [type(t).__name__ for t in train_transform(old.augment).transforms]


# --- sampling ---------------------------------------------------------------------------------

def _stats(n_buildings: int, size: int = 512, area: float = 900.0, veg: float = 0.0) -> TileStats:
    rng = np.random.default_rng(n_buildings)
    return TileStats(size=(size, size), centroids=rng.uniform(0, size, (n_buildings, 2)), areas=np.full(n_buildings, area),
                     vegetation=veg)


def test_tile_weights_favour_dense_small_and_vegetated_tiles_and_balance_sources():
    stats = [_stats(2), _stats(40), _stats(2, area=100.0), _stats(2, veg=0.8), _stats(0)]
    w = tile_weights(stats, [0, 0, 0, 0, 0], crop=256)
    assert math.isclose(w.sum(), 1.0)
    assert w[1] > w[0]  # denser
    assert w[2] > w[0]  # same count, small buildings
    assert w[3] > w[0]  # hard negatives (vegetation) around
    assert w[4] > 0  # an empty tile still gets drawn
    # Two sources: 40 tiles against 4 alike. Uniform sampling would give the big one 91 % of the
    # batches; balanced gives it a share by the square root of its weight (about 76 %).
    many = [_stats(5)] * 40 + [_stats(5)] * 4
    src = [0] * 40 + [1] * 4
    w = tile_weights(many, src, crop=256)
    share = w[:40].sum()
    assert math.isclose(share, math.sqrt(40) / (math.sqrt(40) + math.sqrt(4)), rel_tol=1e-6)
    doubled = tile_weights(many, src, crop=256, source_weights=[1.0, 2.0])
    assert doubled[40:].sum() > w[40:].sum()


def test_focus_window_always_holds_the_point_and_stays_inside_the_tile():
    rng = np.random.default_rng(0)
    for _ in range(500):
        h, w = int(rng.integers(100, 900)), int(rng.integers(100, 900))
        win = int(rng.integers(32, 400))
        x, y = float(rng.uniform(0, w)), float(rng.uniform(0, h))
        y0, x0 = focus_window((x, y), win, (h, w), rng)
        assert 0 <= y0 <= max(h - win, 0) and 0 <= x0 <= max(w - win, 0)
        if win <= min(h, w):
            assert y0 <= y <= y0 + win and x0 <= x <= x0 + win


def test_pick_building_prefers_small_buildings():
    s = TileStats(size=(512, 512), centroids=np.array([[10.0, 10.0], [400.0, 400.0]]), areas=np.array([100.0, 10000.0]), vegetation=0)
    rng = np.random.default_rng(0)
    picks = [s.pick_building(rng) for _ in range(2000)]
    small = sum(p == (10.0, 10.0) for p in picks) / len(picks)
    assert 0.85 < small < 0.95  # 1/sqrt(100) : 1/sqrt(10000) = 10 : 1
    assert TileStats(size=(8, 8), centroids=np.zeros((0, 2)), areas=np.zeros(0), vegetation=0).pick_building(rng) is None


def test_tile_stats_counts_buildings_and_vegetation_off_them():
    rgb = _garden()
    fp = np.zeros((128, 128), np.uint8)
    fp[70:110, 10:50] = 1
    fp[70:110, 70:110] = 1
    s = tile_stats(rgb, fp, [box(10, 70, 50, 110), box(70, 70, 110, 110)])
    assert s.buildings == 2 and np.allclose(sorted(s.areas), [1600, 1600])
    assert np.allclose(s.centroids[0], [30, 90])
    # The tree covers 1,600 of the 16,384 - 3,200 pixels off the buildings.
    assert 0.08 < s.vegetation < 0.16


def test_focused_crops_find_buildings_far_more_often(sample):
    """On real sample tiles, crops placed by augment.focus hold building pixels more often than random ones."""
    from rooftrace.labels.records import LoadReport
    from rooftrace.labels.splits import open_split
    from rooftrace.training.dataset import TileDataset, select_tiles

    def share(focus: float) -> float:
        cfg = load_config(REPO / "configs" / "unet-lite0.yaml", [f"data.train={sample / 'train'}", "data.crop_size=64",
                                                                 f"augment.focus={focus}", "augment.pixel_scale=0"])
        ds = TileDataset(select_tiles(cfg.data.train, [open_split(s) for s in cfg.data.train]), cfg.data, cfg.augment,
                         seed=0, max_tiles=12)
        ds.drop_unreadable(LoadReport("x"))
        hits = [float(ds[i % len(ds)]["target"][0].sum() > 0) for i in range(120)]
        return sum(hits) / len(hits)

    assert share(1.0) > share(0.0) + 0.1
    assert share(1.0) > 0.9


def test_a_tile_drawn_twice_in_an_epoch_is_two_samples_and_the_epoch_is_reproducible(sample):
    """Sampling with replacement draws a tile several times an epoch: each draw is a crop and augmentation of its own
    (seeded by the draw, :class:`Draws`), while the same draw of the same epoch is the same sample again."""
    from rooftrace.labels.records import LoadReport
    from rooftrace.labels.splits import open_split
    from rooftrace.training.dataset import Draws, TileDataset, collate_pad, select_tiles

    cfg = load_config(REPO / "configs" / "unet-lite0.yaml", [f"data.train={sample / 'train'}", "data.crop_size=64"])
    ds = TileDataset(select_tiles(cfg.data.train, [open_split(s) for s in cfg.data.train]), cfg.data, cfg.augment,
                     seed=0, max_tiles=3)
    ds.drop_unreadable(LoadReport("x"))
    ds.epoch = 4

    def epoch_batches() -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(11)
        sampler = Draws(torch.utils.data.RandomSampler(ds, replacement=True, num_samples=24, generator=g))
        loader = torch.utils.data.DataLoader(ds, batch_size=4, sampler=sampler, collate_fn=collate_pad)
        return [b["image"] for b in loader]

    keys = list(Draws(torch.utils.data.RandomSampler(ds, replacement=True, num_samples=24,
                                                     generator=torch.Generator().manual_seed(11))))
    assert [d for d, _ in keys] == list(range(24)) and len({i for _, i in keys}) < 24  # tiles repeat
    images = [ds[k]["image"] for k in keys]
    distinct = {tuple(im.flatten()[::97].tolist()) for im in images}
    assert len(distinct) == len(keys)  # every draw its own sample, repeated tiles included
    first = next(k for k in keys if sum(1 for _, i in keys if i == k[1]) > 1)
    assert torch.equal(ds[first]["image"], images[keys.index(first)])  # the same draw: the same sample
    # Plain indices (validation, scripts) keep one sample per tile and epoch, as before.
    assert torch.equal(ds[first[1]]["image"], ds[first[1]]["image"])
    a, b = epoch_batches(), epoch_batches()
    assert len(a) == 6 and all(torch.equal(x, y) for x, y in zip(a, b))  # reproducible, batch for batch


# --- fp32 depthwise, fused AdamW, validation every N epochs -----------------------------------

def test_depthwise_in_fp32_keeps_weights_and_results_and_computes_in_fp32():
    from rooftrace.models.architectures import build_model
    from rooftrace.models.autocast import depthwise_in_fp32

    cfg = load_config(REPO / "configs" / "unet-lite0.yaml", ["model.encoder_weights=null"])
    torch.manual_seed(0)
    a = build_model(cfg.model, 3).eval()
    b = build_model(cfg.model, 3).eval()
    b.load_state_dict(a.state_dict())
    n = depthwise_in_fp32(b)
    assert n >= 10 and depthwise_in_fp32(b) == 0  # once only
    assert list(a.state_dict()) == list(b.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(a(x), b(x), atol=1e-5)  # fp32: the same network
    dw = next(m for m in b.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1)
    seen = {}
    dw.register_forward_hook(lambda m, i, o: seen.__setitem__("dtype", o.dtype))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        b(x)
    assert seen["dtype"] == torch.float32


def test_only_the_depthwise_convolutions_slow_in_bf16_go_to_fp32_under_slow():
    """``slow`` swaps exactly the depthwise convolutions larger than 3 x 3 or strided; the 3 x 3 ones of stride 1
    stay in autocast's bf16, and the network computes the same function in fp32."""
    from rooftrace.models.architectures import build_model
    from rooftrace.models.autocast import _FP32Depthwise, bf16_depthwise_is_slow, depthwise_in_fp32

    cfg = load_config(REPO / "configs" / "unet-lite0.yaml", ["model.encoder_weights=null"])
    torch.manual_seed(0)
    a = build_model(cfg.model, 3).eval()
    b = build_model(cfg.model, 3).eval()
    b.load_state_dict(a.state_dict())
    dws = [m for m in b.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels]
    slow = [m for m in dws if max(m.kernel_size) > 3 or max(m.stride) > 1]
    assert 0 < len(slow) < len(dws)  # Lite0 has both kinds
    assert depthwise_in_fp32(b, "none") == 0 and not any(isinstance(m, _FP32Depthwise) for m in dws)
    assert depthwise_in_fp32(b, "slow") == len(slow) and depthwise_in_fp32(b, "slow") == 0
    assert [isinstance(m, _FP32Depthwise) for m in dws] == [bf16_depthwise_is_slow(m) for m in dws]
    assert [bf16_depthwise_is_slow(m) for m in dws] == [m in slow for m in dws]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(a(x), b(x), atol=1e-5)
    seen = {}
    for m in dws:
        m.register_forward_hook(lambda m, i, o: seen.__setitem__(m, o.dtype))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        b(x)
    assert [seen[m] for m in dws] == [torch.float32 if m in slow else torch.bfloat16 for m in dws]
    # "all" then swaps the rest, as true did before "slow" existed
    assert depthwise_in_fp32(b, "all") == len(dws) - len(slow)
    with pytest.raises(ValueError, match="which"):
        depthwise_in_fp32(b, "some")


def test_depthwise_fp32_setting_keeps_true_as_all_and_refuses_other_words():
    from rooftrace.config import depthwise_mode

    assert (depthwise_mode(True), depthwise_mode(False), depthwise_mode("slow"), depthwise_mode("ALL")) == ("all", "none", "slow", "all")
    cfg = REPO / "configs" / "unet-lite0.yaml"
    assert load_config(cfg).train.depthwise_fp32 == "slow"  # the recipe
    assert load_config(cfg, ["train.depthwise_fp32=true"]).train.depthwise_fp32 is True
    with pytest.raises(RooftraceError, match="train.depthwise_fp32 'fast'"):
        load_config(cfg, ["train.depthwise_fp32=fast"])


def test_config_checks_the_new_keys():
    cfg = REPO / "configs" / "unet-lite0.yaml"
    for bad, match in (("data.sampling=weird", "data.sampling"), ("train.val_every=0", "train.val_every"),
                       ("augment.pan=1.5", "augment.pan"), ("augment.focus=-0.1", "augment.focus")):
        with pytest.raises(RooftraceError, match=match):
            load_config(cfg, [bad])


def test_validation_every_second_epoch_with_balanced_sampling_and_fp32_depthwise(tmp_path, sample):
    """A real three-epoch run of the recipe's options: epochs 1 and 3 are validated (3 is the last), 2 is not."""
    from rooftrace.training.loop import train

    runs = tmp_path / "runs"
    cfg = load_config(REPO / "configs" / "unet-lite0.yaml", [
        f"data.train={sample / 'train'}", f"data.val={sample / 'val'}", f"train.runs_dir={runs}", "model.encoder_weights=null",
        "data.crop_size=64", "data.batch_size=2", "train.steps_per_epoch=2", "data.workers=0", "train.epochs=3",
        "train.val_every=2", "data.max_train_tiles=4", "data.max_val_tiles=2", "train.vis_tiles=1"])
    summary = train(cfg)
    rows = list(csv.DictReader(open(Path(summary["run_dir"]) / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert rows[0]["object_f1"] == "nan" and rows[2]["object_f1"] != "nan"
    assert rows[1]["object_f1"] != "nan"  # epoch 2 of val_every 2
    assert summary["best_epoch"] in (2, 3)
    assert (Path(summary["run_dir"]) / "resume.safetensors").exists()


# --- the GPU sprint -------------------------------------------------------------------------

#: rooftrace's dependencies that neither the GPU machine's image (the device README's KINDS.md) nor the sprint's wheels bring.
NOT_ON_THE_GPU = ("rasterio", "pyproj", "affine", "pyogrio", "geopandas", "fiona", "albumentations", "pycocotools", "dask",
                  "distributed")


def _sprint(*args: str) -> subprocess.CompletedProcess:
    """``gpu_sprint.py ARGS``; ``train`` runs without the packages the GPU machine would not have, as it runs there."""
    script = str(REPO / "benchmarks" / "gpu_sprint.py")
    cmd = [sys.executable, script, *args]
    if args[0] == "train":
        cmd = [sys.executable, "-c", f"import runpy, sys\nfor m in {NOT_ON_THE_GPU!r}:\n    sys.modules[m] = None\n"
               f"sys.argv = {[script, *args]!r}\nrunpy.run_path({script!r}, run_name='__main__')\n"]
    return subprocess.run(cmd, capture_output=True, text=True, env={**__import__("os").environ, "PYTHONPATH": str(REPO / "src")})


def test_gpu_sprint_packs_every_tile_and_label_within_its_bound_and_trains_on_the_cpu(tmp_path, sample):
    cfg = tmp_path / "c.yaml"
    cfg.write_text((REPO / "configs" / "unet-lite0.yaml").read_text().split("data:")[0] + f"""
data:
  train: [{{path: "{sample / 'train'}", weight: 2.0}}]
  val: ["{sample / 'val'}"]
  gsd: 0.3
  sampling: balanced
  mean: [0.5, 0.5, 0.5]
  std: [0.5, 0.5, 0.5]
model: {{arch: unet, encoder: tu-efficientnet_lite0}}
augment: {{pan: 0.5, gray: 0.1}}
""")
    pack = tmp_path / "pack"
    r = _sprint("pack", "--config", str(cfg), "--out", str(pack), "--max-tiles", "3", "--no-wheels", "--init",
                str(REPO / "src/rooftrace/models/shipped/rooftrace-unet-lite0.safetensors"))
    assert r.returncode == 0, r.stderr
    meta = json.loads((pack / "pack.json").read_text())
    total = sum(f.stat().st_size for f in pack.rglob("*") if f.is_file() and f.name != "pack.json")
    assert meta["bytes"] == total <= 45 * 2**20
    # Every tile and every building of the split is carried, at the model's pixel size.
    from rooftrace.labels.splits import open_split

    for split in ("train", "val"):
        coco = json.loads(gzip.decompress((pack / split / f"{split}.json.gz").read_bytes()))
        src = list(open_split(str(sample / split)))[:3]
        assert len(coco["images"]) == 3
        assert len(coco["annotations"]) == sum(len([p for p in img.footprints if not p.is_empty]) for img in src)
        for img in coco["images"]:
            assert (pack / split / img["file_name"]).exists() and (pack / split / img["target"]).exists()
    # The shipped file travels with the working tree: named with its hash, not copied into the pack.
    assert meta["init"]["repo_path"] == "src/rooftrace/models/shipped/rooftrace-unet-lite0.safetensors"
    assert not (pack / "init.safetensors").exists()
    # Over the bound: refused, named.
    r = _sprint("pack", "--config", str(cfg), "--out", str(tmp_path / "p2"), "--max-tiles", "3", "--no-wheels", "--max-mib", "0.05")
    assert r.returncode != 0 and "over the 0.05 MiB" in r.stderr
    # A CPU run of the GPU code with a tiny budget, then its weights as a rooftrace model that loads.
    out = tmp_path / "sprint"
    r = _sprint("train", "--pack", str(pack), "--out", str(out), "--device", "cpu", "--max-steps", "1", "--batch", "2", "--crop", "64")
    assert r.returncode == 0, r.stderr
    result = json.loads((out / "sprint.json").read_text())
    assert result["steps"] == 1 and result["train_images_per_s"] > 0 and math.isfinite(result["val_loss"])
    assert (out / "sprint.safetensors").stat().st_size < 16 * 2**20
    model_file = tmp_path / "sprint-model.safetensors"
    r = _sprint("import", "--sprint", str(out), "--pack", str(pack), "--out", str(model_file))
    assert r.returncode == 0, r.stderr
    from rooftrace.models.files import load_model

    loaded = load_model(model_file)
    assert loaded.gsd == 0.3 and loaded.meta["gpu_sprint"]["steps"] == 1


def test_gpu_sprint_starting_weights_outside_the_repository_are_packed_and_a_changed_named_file_is_refused(tmp_path, sample):
    """Weights the working tree does not carry go into the pack (fp16, as the file holds them); weights it carries
    are named by path and SHA-256, and ``train`` refuses them when the file there is not the one packed."""
    import shutil

    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu_sprint

    shipped = REPO / "src/rooftrace/models/shipped/rooftrace-unet-lite0.safetensors"
    outside = tmp_path / "start.safetensors"
    shutil.copy(shipped, outside)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""name: t
data: {{train: ["{sample / 'train'}"], val: ["{sample / 'val'}"], gsd: 0.3, mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5]}}
model: {{arch: unet, encoder: tu-efficientnet_lite0}}
""")
    pack = tmp_path / "pack"
    r = _sprint("pack", "--config", str(cfg), "--out", str(pack), "--max-tiles", "1", "--no-wheels", "--init", str(outside))
    assert r.returncode == 0, r.stderr
    meta = json.loads((pack / "pack.json").read_text())
    assert meta["init"]["file"] == "init.safetensors"
    packed = gpu_sprint._init_tensors(pack, meta)
    from rooftrace.models.files import read_model_file

    tensors, _ = read_model_file(shipped)
    assert packed.keys() == tensors.keys()
    assert all(torch.equal(packed[k], tensors[k].half().float()) for k in tensors)
    # Named in the repository: the same tensors; a file changed since packing is refused by name.
    named = {"init": {"repo_path": "src/rooftrace/models/shipped/rooftrace-unet-lite0.safetensors",
                      "sha256": gpu_sprint._sha256(shipped)}}
    assert all(torch.equal(gpu_sprint._init_tensors(tmp_path, named)[k], v.float()) for k, v in tensors.items())
    named["init"]["sha256"] = "0" * 64
    with pytest.raises(SystemExit, match="changed since it was packed"):
        gpu_sprint._init_tensors(tmp_path, named)


def test_gpu_sprint_pack_of_the_recipes_data_fits_what_a_device_call_carries(tmp_path):
    """The whole recipe's sample and buildings-extra data (the largest part of the pack: Dubai's tiles) packs within
    the default bound, so that the pack, the wheels and the working tree travel in one device call's 64 MiB."""
    import os

    import yaml

    extra = Path(os.environ.get("ROOFTRACE_EXTRA_DIR", REPO.parent / "shared" / "data" / "buildings-extra"))
    if not (extra / "train").is_dir():
        pytest.skip(f"{extra}: buildings-extra is not here")
    recipe = yaml.safe_load((REPO / "configs" / "unet-lite0.yaml").read_text())
    for split in ("train", "val"):  # the osm-oam splits are made by `make osm-splits`, which tests do not run
        recipe["data"][split] = [e for e in recipe["data"][split] if "out/osm" not in str(e)]
    cfg = tmp_path / "recipe.yaml"
    cfg.write_text(yaml.safe_dump(recipe))
    pack = tmp_path / "pack"
    r = _sprint("pack", "--config", str(cfg), "--out", str(pack), "--no-wheels")
    assert r.returncode == 0, r.stderr
    meta = json.loads((pack / "pack.json").read_text())
    assert meta["splits"]["train"]["tiles"] >= 100 and meta["splits"]["train"]["buildings"] >= 3000
    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu_sprint

    sizes = gpu_sprint.carried_bytes(pack, tmp_path / "no-wheels")
    assert sizes["pack"] == meta["bytes"] + (pack / "pack.json").stat().st_size <= 45 * 2**20
    # the working tree and about 3 MiB of wheels (smp, shapely) beside it stay within the device call's limit
    assert sizes["tree"] + sizes["pack"] + 3 * 2**20 <= gpu_sprint.CARRY_LIMIT


def test_gpu_sprint_batches_keep_targets_on_their_pixels(tmp_path):
    """The batch maker's affine crop moves image and targets together: a white square's target stays on it."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu_sprint

    data = torch.zeros(1, 6, gpu_sprint.PIECE, gpu_sprint.PIECE, dtype=torch.uint8)
    data[0, :, 200:312, 200:312] = 255  # image white and all targets on in the same square
    aug = {"pixel_scale": 1.0, "pixel_scale_limit": 2.0, "rotate_limit": 12.0, "brightness_contrast": 0, "gamma": 0, "pan": 0,
           "gray": 0, "blur_noise": 0}
    x, y = gpu_sprint._batch(data, torch.ones(1, dtype=torch.float64), 16, 128, aug, torch.device("cpu"))
    img = (x * 0.5 + 0.5)[:, 0]
    inside = y[:, 0] > 0.5
    assert inside.any()
    assert (img[inside] > 0.5).float().mean() > 0.97
    assert (img[~inside] < 0.5).float().mean() > 0.97
    # The config's normalisation, not a fixed one: ImageNet's mean and std give ImageNet-normalised inputs.
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    grey = torch.full((1, 6, gpu_sprint.PIECE, gpu_sprint.PIECE), 102, dtype=torch.uint8)  # 0.4 everywhere
    x, _ = gpu_sprint._batch(grey, torch.ones(1, dtype=torch.float64), 4, 128, aug, torch.device("cpu"), mean, std)
    for c in range(3):
        assert torch.allclose(x[:, c], torch.full_like(x[:, c], (0.4 - mean[c]) / std[c]), atol=1e-3), c


def test_gpu_sprint_windows_fall_on_the_tile_not_on_the_padding_of_its_piece():
    """A tile smaller than a piece (the sample pack's 300 x 300 px) fills only its top-left corner; the crops are cut
    from it, as the CPU recipe cuts them from the tile, not from the padding (where they had fallen mostly before)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu_sprint

    data = torch.zeros(2, 6, gpu_sprint.PIECE, gpu_sprint.PIECE, dtype=torch.uint8)
    data[:, :3, :300, :300] = 255  # piece 0: a 300 x 300 tile
    sizes = torch.tensor([[300.0, 300.0], [100.0, 120.0]])  # piece 1: content 100 x 120, smaller than a crop
    data[1] = 0
    data[1, :3, :100, :120] = 255
    aug = {"pixel_scale": 0.0, "pixel_scale_limit": 2.0, "rotate_limit": 0.0, "brightness_contrast": 0, "gamma": 0, "pan": 0,
           "gray": 0, "blur_noise": 0}
    torch.manual_seed(0)
    x, _ = gpu_sprint._batch(data[:1], torch.ones(1, dtype=torch.float64), 32, 256, aug, torch.device("cpu"), sizes=sizes[:1])
    white = (x * 0.5 + 0.5)[:, 0] > 0.5
    assert bool(white.all())  # every crop inside the tile
    x, _ = gpu_sprint._batch(data[1:], torch.ones(1, dtype=torch.float64), 32, 256, aug, torch.device("cpu"), sizes=sizes[1:])
    white = ((x * 0.5 + 0.5)[:, 0] > 0.5).sum((1, 2))
    assert bool(((white - 100 * 120).abs() <= 240).all())  # the whole small tile in every crop (up to its edge pixels)
