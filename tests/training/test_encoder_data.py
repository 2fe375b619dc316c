"""The packaged ImageNet encoder (checksum, strict mapping), multi-split configs, and pixel size in training data."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from rooftrace.config import ModelConfig, SplitSpec, load_config
from rooftrace.core.errors import RooftraceError
from rooftrace.labels.splits import open_split
from rooftrace.models.architectures import build_model
from rooftrace.models.encoders import (
    PACKAGED_WEIGHTS,
    load_packaged_weights,
    map_packaged_state,
    packaged_weights_path,
)
from rooftrace.models.files import load_model, save_model
from rooftrace.training.dataset import TileDataset, random_scaled_crop, select_tiles

REPO = Path(__file__).resolve().parents[2]
LITE0 = PACKAGED_WEIGHTS["efficientnet-lite0-imagenet"]


# --- the packaged encoder ---------------------------------------------------------------------

def test_packaged_lite0_loads_every_encoder_weight_from_the_pinned_file():
    path = packaged_weights_path(LITE0)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = build_model(ModelConfig(arch="unet", encoder="tu-efficientnet_lite0", encoder_weights="efficientnet-lite0-imagenet"), 3)
    enc = model.encoder.state_dict()
    # The stem convolution is the file's first tensor; the last encoder block is its last non-head one.
    first = next(iter(state.values()))
    assert torch.equal(enc["model.conv_stem.weight"], first)
    assert torch.equal(enc["model.blocks.6.0.bn3.running_var"], state["_blocks.15._bn2.running_var"])
    # A randomly initialised model differs (so the load did something).
    fresh = build_model(ModelConfig(arch="unet", encoder="tu-efficientnet_lite0", encoder_weights=None), 3)
    assert not torch.equal(fresh.encoder.state_dict()["model.conv_stem.weight"], first)


def test_packaged_weights_refused_when_the_checksum_is_wrong(tmp_path):
    bad = tmp_path / "lite0.pth"
    shutil.copy(packaged_weights_path(LITE0), bad)
    with open(bad, "r+b") as f:  # flip one byte inside the data
        f.seek(5000)
        b = f.read(1)
        f.seek(5000)
        f.write(bytes([b[0] ^ 0xFF]))
    model = build_model(ModelConfig(arch="unet", encoder="tu-efficientnet_lite0", encoder_weights=None), 3)
    before = model.encoder.state_dict()["model.conv_stem.weight"].clone()
    with pytest.raises(RooftraceError, match="SHA-256 is not the pinned"):
        load_packaged_weights(model, LITE0, path=bad)
    assert torch.equal(model.encoder.state_dict()["model.conv_stem.weight"], before)


def test_packaged_mapping_is_strict_about_counts_and_shapes():
    state = torch.load(packaged_weights_path(LITE0), map_location="cpu", weights_only=True)
    model = build_model(ModelConfig(arch="unet", encoder="tu-efficientnet_lite0", encoder_weights=None), 3)
    keys = {k: v.shape for k, v in model.encoder.state_dict().items()}
    mapped = map_packaged_state(LITE0, state, keys, "f")
    assert set(mapped) == set(keys) and len(mapped) == 288
    short = dict(list(state.items())[:-1])
    with pytest.raises(RooftraceError, match="295 tensors, but timm's efficientnet_lite0 has 296"):
        map_packaged_state(LITE0, short, keys, "f")
    swapped = dict(state)
    names = list(swapped)
    swapped[names[0]] = torch.zeros(16, 3, 3, 3)
    with pytest.raises(RooftraceError, match=r"_conv_stem.weight \(16, 3, 3, 3\) does not fit conv_stem.weight"):
        map_packaged_state(LITE0, swapped, keys, "f")
    with pytest.raises(RooftraceError, match="no tensor for encoder weight model.extra"):
        map_packaged_state(LITE0, state, {**keys, "model.extra.weight": torch.Size([1])}, "f")


def test_packaged_weights_name_their_encoder():
    with pytest.raises(RooftraceError, match="are for encoder 'tu-efficientnet_lite0', not 'resnet18'"):
        build_model(ModelConfig(arch="unet", encoder="resnet18", encoder_weights="efficientnet-lite0-imagenet"), 3)


# --- split specs in configs -------------------------------------------------------------------

def test_config_takes_one_path_or_several_split_specs(tmp_path):
    cfg = load_config(REPO / "configs" / "unet-r34.yaml")
    assert isinstance(cfg.data.train, tuple) and isinstance(cfg.data.train[0], SplitSpec)
    cfg = load_config(REPO / "configs" / "unet-lite0.yaml")
    assert len(cfg.data.train) == 4 and cfg.data.gsd == 0.3
    extra = cfg.data.train[1]
    assert extra.exclude_groups == ("dubai tile 5", "dubai tile 6") and "rio" in extra.exclude
    with pytest.raises(RooftraceError, match="data.gsd -1.0"):
        load_config(REPO / "configs" / "unet-lite0.yaml", ["data.gsd=-1"])
    with pytest.raises(RooftraceError, match="unknown config key.*data.train\\[0\\].pth"):
        load_config(None, ["data.train=[{pth: x}]"])
    # A list that is not valid YAML is an error, not a one-element list holding the text as a path.
    with pytest.raises(RooftraceError, match="not a valid YAML list or mapping"):
        load_config(None, ["data.train=[${ROOFTRACE_SAMPLE_DIR}/train, x]"])


@pytest.fixture
def split_with_groups(sample, tmp_path) -> Path:
    """Four sample tiles as one split whose records carry area groups and (for two) a pixel size."""
    data = json.loads((sample / "train" / "train.json").read_text())
    imgs = [i for i in data["images"] if i["width"] == 256][:4]
    (tmp_path / "s" / "image").mkdir(parents=True)
    for n, i in enumerate(imgs):
        os.symlink(sample / "train" / i["file_name"], tmp_path / "s" / i["file_name"])
        i["area_group"] = "a" if n < 2 else "b"
        if n % 2:
            i["gsd"] = 0.6
    ids = {i["id"] for i in imgs}
    anns = [a for a in data["annotations"] if a["image_id"] in ids]
    (tmp_path / "s" / "s.json").write_text(json.dumps({"images": imgs, "annotations": anns}))
    return tmp_path / "s"


def test_split_specs_keep_groups_and_names(split_with_groups):
    ls = open_split(split_with_groups)
    tiles = select_tiles([SplitSpec(str(split_with_groups), groups=("a",))], [ls])
    assert [t.image.group for t in tiles] == ["a", "a"]
    tiles = select_tiles([SplitSpec(str(split_with_groups), exclude_groups=("a",), gsd=0.3)], [ls])
    assert [t.image.group for t in tiles] == ["b", "b"]
    assert [t.gsd for t in tiles] == [0.3, 0.6]  # the record's own pixel size wins over the split's
    name = ls.images[next(iter(ls.images))].file_name
    assert len(select_tiles([SplitSpec(str(split_with_groups), exclude=name)], [ls])) == 3
    both = select_tiles([SplitSpec(str(split_with_groups)), SplitSpec(str(split_with_groups))], [ls, ls])
    assert len({t.key for t in both}) == 8  # keys stay unique across splits
    with pytest.raises(RooftraceError, match="no readable tile is left"):
        select_tiles([SplitSpec(str(split_with_groups), groups=("zzz",))], [ls])


def test_tiles_are_resampled_to_the_model_pixel_size_with_their_footprints(split_with_groups):
    ls = open_split(split_with_groups)
    cfg = load_config(REPO / "configs" / "unet-lite0.yaml")
    data = dataclasses.replace(cfg.data, gsd=0.3, cache=False)
    ds = TileDataset(select_tiles([SplitSpec(str(split_with_groups), gsd=0.3)], [ls]), data, None)
    for i, ref in enumerate(ds.items):
        rgb, target = ds.load(i)
        f = (ref.gsd or 0.3) / 0.3
        assert rgb.shape[:2] == (round(256 * f), round(256 * f))
        fps = ds.footprints(i)
        # Footprint area scales with the square of the factor, and the rasterised target follows it.
        assert sum(fp.area for fp in fps) == pytest.approx(sum(fp.area for fp in ref.image.footprints) * f * f, rel=1e-6)
        assert abs(int(target[..., 0].sum()) - sum(fp.area for fp in fps)) <= 0.05 * sum(fp.area for fp in fps) + 50
    assert ds.items[1].gsd == 0.6 and ds.load(1)[0].shape[:2] == (512, 512)


def test_random_scaled_crop_shows_the_ground_at_the_asked_scale():
    rgb = np.zeros((400, 400, 3), np.uint8)
    target = np.zeros((400, 400, 1), np.uint8)
    target[100:140, 100:140] = 1  # one 40 x 40 building
    rgb[target[..., 0] == 1] = 255
    for scale in (0.5, 1.0, 2.0):
        whole = 0
        for seed in range(100):
            img, tgt = random_scaled_crop(rgb, target, 256, scale, np.random.default_rng(seed))
            assert img.shape == (256, 256, 3) and tgt.shape == (256, 256, 1)
            # Image and target move together (up to the interpolated rim of the building).
            assert int(((img[..., 0] >= 128) != (tgt[..., 0] == 1)).sum()) <= 4 * 40 * scale + 8
            ys, xs = np.nonzero(tgt[..., 0])
            if len(ys) and ys.min() > 0 and xs.min() > 0 and ys.max() < 255 and xs.max() < 255:
                whole += 1  # the building, caught whole, has (40 * scale)^2 pixels
                assert tgt.sum() == pytest.approx((40 * scale) ** 2, rel=0.1)
        assert whole >= 2


def test_model_file_records_its_pixel_size(tmp_path):
    cfg = load_config(REPO / "configs" / "baseline-unet.yaml", ["model.base_channels=4", "data.gsd=0.3"])
    path = save_model(tmp_path / "m.safetensors", build_model(cfg.model, 1), cfg)
    assert load_model(path).gsd == 0.3
    cfg = load_config(REPO / "configs" / "baseline-unet.yaml", ["model.base_channels=4"])
    path = save_model(tmp_path / "n.safetensors", build_model(cfg.model, 1), cfg)
    assert load_model(path).gsd is None


def test_tune_works_at_the_model_pixel_size(split_with_groups, tmp_path, monkeypatch):
    import rooftrace.evaluation.tuning as tuning_mod
    import rooftrace.inference.runtime as runtime_mod
    import rooftrace.inference.tune as tune_mod

    cfg = load_config(REPO / "configs" / "baseline-unet.yaml", ["model.base_channels=4", "data.gsd=0.3",
                                                                 "data.channels=[footprint, boundary, contact]",
                                                                 "loss.channel_weights=[1, 0.5, 0.5]"])
    model = save_model(tmp_path / "m.safetensors", build_model(cfg.model, 3), cfg)
    seen_inputs, seen_gt = [], []
    real_predict, real_score = runtime_mod.predict_probabilities, tuning_mod.score_settings

    def predict(loaded, x, *a, **k):
        seen_inputs.append(tuple(x.shape[2:]))
        return real_predict(loaded, x, *a, **k)

    def score(probs, gt, method, s, threads=None, candidates=None):
        if not seen_gt:
            seen_gt.extend((img.width, img.height, sum(fp.area for fp in img.footprints)) for img in gt)
        return real_score(probs, gt, method, s, threads, candidates)

    monkeypatch.setattr(runtime_mod, "predict_probabilities", predict)
    monkeypatch.setattr(tuning_mod, "score_settings", score)
    monkeypatch.setattr(tuning_mod, "SEARCH_SPACE", {"min_area": (8,)})
    tune_mod.tune(model, split_with_groups, rounds=1, save=False, progress=False)
    # Records without a gsd are taken at the model's 0.3 m (256 px); the 0.6 m ones are doubled (512 px).
    assert seen_inputs == [(256, 256), (512, 512), (256, 256), (512, 512)]
    ls = open_split(split_with_groups)
    areas = [sum(fp.area for fp in img.footprints) for img in ls]
    assert [g[:2] for g in seen_gt] == [(256, 256), (512, 512), (256, 256), (512, 512)]
    for (w, _, area), own in zip(seen_gt, areas):
        assert area == pytest.approx(own * (w / 256) ** 2, rel=1e-6)


def test_init_from_loads_a_model_file_strictly(tmp_path):
    from rooftrace.training.loop import init_weights

    cfg = load_config(REPO / "configs" / "baseline-unet.yaml", ["model.base_channels=4"])
    torch.manual_seed(1)
    trained = build_model(cfg.model, 1)
    path = save_model(tmp_path / "m.safetensors", trained, cfg)
    torch.manual_seed(2)
    fresh = build_model(cfg.model, 1)
    assert not torch.equal(fresh.inc[0].weight, trained.inc[0].weight)
    init_weights(fresh, path)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), trained.state_dict().values()))
    other = build_model(load_config(REPO / "configs" / "baseline-unet.yaml", ["model.base_channels=8"]).model, 1)
    with pytest.raises(RooftraceError, match="init_from .*do not fit this config's network"):
        init_weights(other, path)
    with pytest.raises(RooftraceError, match="no such model file"):
        init_weights(other, tmp_path / "missing.safetensors")
