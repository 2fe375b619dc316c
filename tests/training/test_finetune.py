"""`rooftrace finetune` (issue 22): adapting a model to one area with its OpenStreetMap buildings.

Real chips of the osm-oam pack (a few Banepa chips, linked into a temp folder), a tiny network (conftest's
``write_tiny_model``) and a few steps, so that every test runs in seconds: the split holds out whole blocks,
an injected label shift is found within a pixel and corrected, the command refuses a model that is not better
(exit 3, nothing written), the time budget holds, outputs are never overwritten without --force.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import shapely
from scipy import ndimage

from rooftrace.cli import main
from rooftrace.labels.splits import open_split
from rooftrace.prepare.chips import prepare_chips
from rooftrace.prepare.shift import area_shift, estimate_shift, unlabelled_buildings
from rooftrace.prepare.targets import building_mask
from tests.conftest import write_tiny_model
from tests.prepare.test_chips import _link_chips, osm  # noqa: F401  (the osm fixture)

#: Banepa chips next to each other (two rows of four), enough for train, tuning and card blocks of one chip each.
CHIPS = [f"OAM-{x}-{y}-19.tif" for y in (220241, 220242) for x in (386690, 386691, 386692, 386693)]


@pytest.fixture(scope="module")
def banepa(osm, tmp_path_factory) -> tuple[Path, Path]:  # noqa: F811
    src = osm / "banepa" / "chips"
    names = [n for n in CHIPS if (src / n).exists()]
    if len(names) < 6:
        names = sorted(p.name for p in src.glob("*.tif"))[:8]
    chips = _link_chips([src / n for n in names], tmp_path_factory.mktemp("banepa") / "chips")
    return chips, osm / "banepa" / "labels.geojson"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("model") / "tiny.safetensors", base_channels=4)


def _blobs(shape=(200, 220), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros(shape)
    for _ in range(25):
        y, x = rng.integers(10, shape[0] - 20), rng.integers(10, shape[1] - 20)
        img[y:y + 12, x:x + 15] = 1
    return img


def test_estimate_shift_finds_a_shift_to_a_fraction_of_a_pixel_and_noise_is_not_clear():
    img = _blobs()
    labels = np.roll(np.roll(img, 7, axis=1), -4, axis=0)  # the labels lie 7 px right of and 4 px above the buildings
    e = estimate_shift([(ndimage.gaussian_filter(img, 1.5), labels)], max_px=12)
    assert e.clear and abs(e.dx - 7) < 0.1 and abs(e.dy + 4) < 0.1
    unrelated = estimate_shift([(ndimage.gaussian_filter(_blobs(seed=1), 1.5), labels)], max_px=12)
    assert not unrelated.clear
    aligned = estimate_shift([(img, img)], max_px=5)
    assert aligned.size < 0.05 and not aligned.clear  # no gain over no shift: nothing to correct


def test_a_label_shift_injected_into_a_clean_split_is_found_within_a_pixel_and_corrected(banepa, tmp_path):
    """Labels moved 3 m east and 2 m south of the imagery (as OSM traced over other imagery is): the shift
    estimated against what the buildings look like (here the clean labels, a perfect model's output,
    blurred) is the injected one within a pixel (0.3 m), and preparing again with the correction puts the
    labels back where the clean ones are."""
    chips, labels = banepa
    kw = dict(gsd=0.3, val=0.0, test=0.0, block=1, progress=False)
    clean = open_split(prepare_chips(chips, labels, tmp_path / "clean", **kw).splits["train"].parent)
    shifted = open_split(prepare_chips(chips, labels, tmp_path / "shifted", label_shift=(3.0, -2.0), **kw).splits["train"].parent)
    by_block: dict[str, list] = {}
    for img in clean:
        shape = (img.height, img.width)
        prob = ndimage.gaussian_filter(building_mask(img.footprints, shape).astype(float), 1.0)
        by_block.setdefault(img.group, []).append((prob, building_mask(shifted[img.key].footprints, shape)))
    found = area_shift(by_block, gsd=0.3, max_px=20)
    assert found.correction is not None, found.reason
    east, north = found.correction
    assert abs(east + 3.0) <= 0.3 and abs(north - 2.0) <= 0.3, found.summary()
    assert "east" in found.summary() and len(found.blocks) == len(CHIPS)
    fixed = open_split(prepare_chips(chips, labels, tmp_path / "fixed", label_shift=(3.0 + east, -2.0 + north), **kw)
                       .splits["train"].parent)
    for img in clean:
        a = building_mask(img.footprints, (img.height, img.width))
        b = building_mask(fixed[img.key].footprints, (img.height, img.width))
        c = building_mask(shifted[img.key].footprints, (img.height, img.width))
        iou = lambda m: (a & m).sum() / max((a | m).sum(), 1)  # noqa: E731
        assert iou(b) > 0.9 > iou(c) + 0.1


def test_blocks_with_many_confident_buildings_and_no_labels_are_flagged():
    img = _blobs()
    half = img.copy()
    half[:, 110:] = 0  # the labels miss every building of the right half
    out = unlabelled_buildings({"complete": [(img, img)], "half": [(img, half)]}, min_area_px=50)
    assert out.flagged == ["half"]
    assert out.blocks["complete"][1] == 0 and out.blocks["half"][1] >= 3
    assert "half" in out.summary()


def _run(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_finetune_holds_out_blocks_by_area_and_writes_the_model_its_settings_and_a_card(banepa, tiny_model, tmp_path, capsys):
    chips, labels = banepa
    out = tmp_path / "mine.safetensors"
    args = ["finetune", str(chips), "--labels", str(labels), "--out", str(out), "--model", str(tiny_model), "--block", "1",
            "--val", "0.25", "--test", "0.25", "--steps", "4", "--minutes", "2", "--runs-dir", str(tmp_path / "runs"),
            "--keep-worse", "--device", "cpu"]
    code, stdout, err = _run(args, capsys)
    assert code == 0, err
    (run,) = (tmp_path / "runs").iterdir()
    # Whole blocks on each side: no block in two splits, and the card is scored on blocks used for nothing else.
    groups = {s: {img.group for img in open_split(run / "chips" / s)} for s in ("train", "val", "test")}
    assert all(groups.values())
    assert not (groups["train"] & groups["val"]) and not (groups["train"] & groups["test"]) and not (groups["val"] & groups["test"])
    card = json.loads((run / "card.json").read_text())
    assert card["card_split"] == "test" and card["card_images"] == len(open_split(run / "chips" / "test"))
    for side in ("start", "adapted"):
        assert {"f1", "precision", "recall", "tp", "fp", "fn", "predicted", "labelled"} <= set(card[side])
        assert card[side]["labelled"] == sum(len(img.footprints) for img in open_split(run / "chips" / "test"))
    assert card["steps"] == 4 and "shift" in card and "completeness" in card
    assert "| object F1 (mean over chips) |" in (run / "card.md").read_text() and "object F1" in stdout
    # The model, its SHA-256 and its tuned settings, as the shipped model has them.
    assert out.exists() and Path(str(out) + ".sha256").exists()
    settings = json.loads((tmp_path / "mine.postprocess.json").read_text())
    assert settings["method"] == "watershed" and "footprint_threshold" in settings["settings"]
    from rooftrace import load_model

    assert load_model(out).postprocessing[1] is not None
    # Nothing is overwritten without --force; a second run gets a folder of its own.
    before = out.read_bytes()
    code, _, err = _run(args, capsys)
    assert code == 2 and err.strip().count("\n") == 0 and str(out) in err and "--force" in err
    assert out.read_bytes() == before
    code, _, err = _run([*args, "--force"], capsys)
    assert code == 0, err
    assert len(list((tmp_path / "runs").iterdir())) == 2


def test_an_adapted_model_that_is_not_better_is_refused_with_exit_3(banepa, tiny_model, tmp_path, capsys, monkeypatch):
    """A loss turned upside down makes the adapted model no better than the start on the held-out blocks:
    the command says so, exits 3 and writes nothing to --out (the run folder keeps the adapted model)."""
    import rooftrace.training.finetune as ft

    class Upside(ft.TolerantLoss):
        def forward(self, logits, target):
            return -super().forward(logits, target)

    monkeypatch.setattr(ft, "TolerantLoss", Upside)
    chips, labels = banepa
    out = tmp_path / "worse.safetensors"
    code, _, err = _run(["finetune", str(chips), "--labels", str(labels), "--out", str(out), "--model", str(tiny_model),
                         "--block", "1", "--val", "0.25", "--test", "0.25", "--steps", "6", "--lr", "0.01", "--minutes", "2",
                         "--runs-dir", str(tmp_path / "runs"), "--device", "cpu"], capsys)
    assert code == 3, err
    assert "not better" in err and str(out) in err and "--keep-worse" in err
    assert not out.exists() and not (tmp_path / "worse.postprocess.json").exists()
    (run,) = (tmp_path / "runs").iterdir()
    assert (run / "adapted.safetensors").exists() and "NOT better" in (run / "card.md").read_text()


class TickingClock:
    """A clock that moves on by ``tick`` seconds each time it is read, never with the machine's speed: every
    measurement the budget logic makes (the chips, a chunk of steps, a score) takes a fixed number of ticks, so
    the run it plans is the same on an idle machine and on a loaded one."""

    def __init__(self, tick: float):
        self.now, self.tick = 1000.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def test_the_time_budget_is_honoured(banepa, tiny_model, tmp_path, monkeypatch):
    """A budget of one minute with far more steps planned than fit: the schedule is shortened, and the whole
    command (chips, scores, adapting, tuning, the card) ends within the budget, by its own clock (a ticking
    fake clock, so that what is checked is the budget's arithmetic, not the machine's load)."""
    import types

    import rooftrace.training.alignment as alignment_mod
    import rooftrace.training.finetune as finetune_mod
    from rooftrace.training.finetune import finetune, load_recipe

    clock = TickingClock(0.5)
    for mod in (finetune_mod, alignment_mod):
        monkeypatch.setattr(mod, "time", types.SimpleNamespace(monotonic=clock, perf_counter=clock))
    chips, labels = banepa
    t0 = clock()
    r = finetune(chips, labels, tmp_path / "m.safetensors", model=tiny_model, minutes=1.0, block=1, val=0.25, test=0.25,
                 recipe=load_recipe(steps=100_000, eval_every=2, batch_size=2, crop_size=128, patience=0),
                 runs_dir=tmp_path / "runs", keep_worse=True, device="cpu", progress=False, log=lambda s: None)
    took = clock() - t0
    assert r.seconds <= took <= 60, (r.seconds, took)
    assert 0 < r.steps < 100_000 and ("shortened" in r.stopped or "time budget" in r.stopped), r.stopped


def test_bad_input_is_one_line_naming_the_file(banepa, tiny_model, tmp_path, capsys):
    chips, labels = banepa
    base = ["finetune", str(chips), "--out", str(tmp_path / "m.safetensors"), "--model", str(tiny_model),
            "--runs-dir", str(tmp_path / "runs")]
    for extra, name in ((["--labels", str(tmp_path / "missing.geojson")], "missing.geojson"),
                        (["--labels", str(labels), "--model", str(tmp_path / "none.safetensors")], "none.safetensors"),
                        (["--labels", str(labels), "--minutes", "0"], "--minutes"),
                        (["--labels", str(labels), "--out", str(tmp_path / "m.pth")], "m.pth")):
        code, _, err = _run([*base, *extra], capsys)
        assert code == 2 and err.strip().count("\n") == 0 and name in err, err
        assert not (tmp_path / "m.safetensors").exists()
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: 1e-3\nwarp: 9\n")
    code, _, err = _run([*base, "--labels", str(labels), "--recipe", str(bad)], capsys)
    assert code == 2 and "bad.yaml" in err and "warp" in err


def test_a_second_run_on_the_same_out_and_an_out_that_is_an_input_stop_before_any_work(banepa, tiny_model, tmp_path, capsys,
                                                                                       monkeypatch):
    import rooftrace.training.finetune as finetune_mod
    from rooftrace.core.locks import OutputLock

    chips, labels = banepa
    out = tmp_path / "m.safetensors"
    base = ["finetune", str(chips), "--labels", str(labels), "--model", str(tiny_model), "--runs-dir", str(tmp_path / "runs")]
    # The first work a run does is loading the starting model: both runs below stop before it, at once.
    monkeypatch.setattr(finetune_mod, "load_network", lambda *a, **k: pytest.fail("the starting model was loaded"))
    with OutputLock(out, what="--out"):  # another live run writing this model
        code, _, err = _run([*base, "--out", str(out)], capsys)
    assert code == 2 and str(out) in err, err
    assert not out.exists() and not (tmp_path / "runs").exists()  # nothing prepared, nothing written
    code, _, err = _run([*base, "--out", str(tiny_model), "--force"], capsys)  # the starting model is an input
    assert code == 2 and str(tiny_model.name) in err and "--model" in err, err
    assert not (tmp_path / "runs").exists()


def test_the_packaged_recipe_loads_and_rejects_unknown_keys():
    from rooftrace.core.errors import RooftraceError
    from rooftrace.training.finetune import Recipe, load_recipe, resolve_model

    r = load_recipe()
    assert isinstance(r, Recipe) and r.steps > 0 and 0 < r.lr < 1e-2 and r.augment.get("pan") == 0.0
    assert load_recipe(steps=7).steps == 7
    with pytest.raises(RooftraceError, match="unknown"):
        load_recipe(nonsense=1)
    assert resolve_model("shipped").name == "rooftrace-unet-lite0.safetensors"
    assert resolve_model(None) == resolve_model("shipped")


def test_prepare_chips_moves_labels_by_a_given_shift(banepa, tmp_path, capsys):
    chips, labels = banepa
    a = tmp_path / "a"
    b = tmp_path / "b"
    assert _run(["prepare-chips", str(chips), "--labels", str(labels), "--out", str(a), "--gsd", "0.3", "--val", "0",
                 "--test", "0"], capsys)[0] == 0
    code, out, err = _run(["prepare-chips", str(chips), "--labels", str(labels), "--out", str(b), "--gsd", "0.3", "--val", "0",
                           "--test", "0", "--shift-labels", "1.5,-0.6"], capsys)
    assert code == 0, err
    assert "moved +1.50 m east, -0.60 m north" in out
    la, lb = open_split(a / "train"), open_split(b / "train")
    moves = []
    for img in la:
        for fa, fb in zip(img.footprints, lb[img.key].footprints):
            if fa.area > 200 and abs(fa.area - fb.area) < 1:  # whole buildings (not clipped differently at an edge)
                (ax, ay), (bx, by) = shapely.get_coordinates(fa.centroid)[0], shapely.get_coordinates(fb.centroid)[0]
                moves.append((bx - ax, by - ay))
    dx, dy = np.median(np.asarray(moves), axis=0)
    assert abs(dx - 5.0) < 0.2 and abs(dy - 2.0) < 0.2  # 1.5 m east = 5 px right, 0.6 m south = 2 px down at 0.3 m
    code, _, err = _run(["prepare-chips", str(chips), "--labels", str(labels), "--out", str(tmp_path / "c"),
                         "--shift-labels", "east"], capsys)
    assert code == 2 and "--shift-labels" in err


def test_prepare_chips_align_labels_reports_the_shift_and_the_incomplete_blocks(banepa, tiny_model, tmp_path, capsys):
    chips, labels = banepa
    code, out, err = _run(["prepare-chips", str(chips), "--labels", str(labels), "--out", str(tmp_path / "a"), "--gsd", "0.3",
                           "--block", "1", "--align-labels", "--model", str(tiny_model)], capsys)
    assert code == 0, err
    assert "label shift:" in out and "block 19/" in out and ("labels look" in out)
    assert (tmp_path / "a" / "train" / "train.json").exists()
