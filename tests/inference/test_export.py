"""`rooftrace.inference.export`: ONNX export, its verification and metadata, and `predict` with an .onnx model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from rooftrace.cli import main  # noqa: E402
from rooftrace.config import load_config
from rooftrace.core.errors import RooftraceError
from rooftrace.evaluation.metrics import evaluate_labels
from rooftrace.imagery.normalize import Normalization
from rooftrace.imagery.read import read_rgb
from rooftrace.inference.export import DEFAULT_TOLERANCE, export_onnx
from rooftrace.inference.runtime import pad_normalise
from rooftrace.labels.formats import read_labels
from rooftrace.models.architectures import build_model
from rooftrace.models.files import load_model, read_model_file, save_model
from rooftrace.models.onnx import METADATA_KEY, load_onnx, read_onnx_metadata

REPO = Path(__file__).resolve().parents[2]

#: ONNX Runtime vs PyTorch on real tiles, probabilities, absolute.
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def model_file(sample, tmp_path_factory) -> Path:
    """A three-channel baseline U-Net with random weights, as rooftrace writes model files.

    Its head is rescaled so that, on sample tiles, each channel's logits have mean 0 (boundary and
    contact: -1) and standard deviation 6: it then finds a few hundred "buildings" per tile, so
    that comparing submissions is not vacuous (an untouched random model finds none).
    """
    import torch

    torch.manual_seed(0)
    cfg = load_config(REPO / "configs" / "baseline-unet.yaml", ["model.base_channels=8", "data.channels=[footprint, boundary, contact]",
                                                                  "loss.channel_weights=[1, 0.5, 0.5]"])
    model = build_model(cfg.model, 3).eval()
    x = torch.from_numpy(_batch(Normalization(cfg.data.mean, cfg.data.std), sample / "val" / "image" / sorted(
        p.name for p in (sample / "val" / "image").iterdir())[0]))
    with torch.no_grad():
        y = model(x)[0].flatten(1)
        scale = 6.0 / y.std(1)
        model.head.weight.mul_(scale[:, None, None, None])
        model.head.bias.mul_(scale).sub_(y.mean(1) * scale).add_(torch.tensor([0.0, -1.0, -1.0]))
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    return save_model(path, model, cfg, extra={"epoch": 3})


@pytest.fixture(scope="module")
def onnx_file(model_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    result = export_onnx(model_file, out)
    assert result.max_abs_diff <= DEFAULT_TOLERANCE
    assert "max |diff| of probabilities" in result.summary()
    return out


def _batch(norm: Normalization, *paths: Path) -> np.ndarray:
    """A contiguous NCHW batch (``pad_normalise`` gives channels-last views; the head's scale above is fitted on
    this layout's fp32 outputs, which differ from channels-last ones in their last bits)."""
    return np.ascontiguousarray(np.concatenate([pad_normalise(read_rgb(p), norm) for p in paths]), dtype=np.float32)


def test_round_trip_on_real_tiles_with_two_shapes(sample, model_file, onnx_file):
    """Same probabilities as PyTorch on real tiles: batch 2 at 256 x 256 and batch 1 at 672 x 672
    (a 650 x 650 tile, padded), so both the batch and the spatial axes are dynamic."""
    import torch

    torch_model = load_model(model_file)
    onnx_model = load_onnx(onnx_file, device="cpu")
    assert onnx_model.providers == ["CPUExecutionProvider"]
    norm = Normalization(torch_model.mean, torch_model.std)
    tiles = sample / "test" / "image"
    for x in (_batch(norm, tiles / "0000.tif", tiles / "0001.tif"), _batch(norm, tiles / "0007.tif")):
        with torch.inference_mode():
            expected = torch.sigmoid(torch_model.model(torch.from_numpy(x))).numpy()
        got = onnx_model.predict(x)
        assert got.shape == expected.shape == (x.shape[0], 3, *x.shape[2:])
        assert float(np.abs(got - expected).max()) <= TOLERANCE


def test_metadata_travels(model_file, onnx_file):
    import onnx

    _, source = read_model_file(model_file)
    meta = read_onnx_metadata(onnx_file)
    for key in ("config", "channels", "mean", "std", "epoch", "format_version"):
        assert meta[key] == source[key]
    assert meta["onnx"]["opset"] >= 17 and meta["onnx"]["int8"] is False
    assert meta["onnx"]["verified_max_abs_diff"] <= meta["onnx"]["tolerance"]
    props = {p.key: p.value for p in onnx.load(str(onnx_file)).metadata_props}
    assert json.loads(props[f"{METADATA_KEY}.channels"]) == ["footprint", "boundary", "contact"]
    assert json.loads(props[f"{METADATA_KEY}.mean"]) == source["mean"]
    assert Path(str(onnx_file) + ".sha256").exists()
    loaded = load_onnx(onnx_file, device="cpu")
    assert loaded.channels == ("footprint", "boundary", "contact") and loaded.config.model.arch == "baseline-unet"


def test_overwrite_refused_without_force(model_file, onnx_file, tmp_path):
    before = onnx_file.read_bytes()
    with pytest.raises(RooftraceError, match="--force"):
        export_onnx(model_file, onnx_file)
    assert onnx_file.read_bytes() == before
    with pytest.raises(RooftraceError, match=r"\.onnx"):
        export_onnx(model_file, tmp_path / "model.bin")
    with pytest.raises(RooftraceError, match="opset"):
        export_onnx(model_file, tmp_path / "m.onnx", opset=13)
    assert not (tmp_path / "m.onnx").exists()


def test_damaged_or_foreign_onnx_files_are_refused(onnx_file, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf at all")
    with pytest.raises(RooftraceError, match="not a readable ONNX file|rooftrace metadata"):
        load_onnx(bad)
    changed = tmp_path / "changed.onnx"
    shutil.copy(onnx_file, changed)
    (tmp_path / "changed.onnx.sha256").write_text("0" * 64 + "  changed.onnx\n")
    with pytest.raises(RooftraceError, match="SHA-256"):
        load_onnx(changed)


def test_predict_with_onnx_gives_the_same_submission(sample, model_file, onnx_file, tmp_path):
    """`predict --model X.onnx` writes the submission `predict --model X.safetensors` writes:
    same buildings per tile, each polygon equal or with IoU > 0.99, and the same object F1."""
    out_pt, out_ox = tmp_path / "pt", tmp_path / "onnx"
    images = str(sample / "test" / "image")
    assert main(["predict", "--images", images, "--out", str(out_pt), "--model", str(model_file), "--workers", "0", "--no-overlays",
                 "--precision", "fp32"]) == 0
    assert main(["predict", "--images", images, "--out", str(out_ox), "--model", str(onnx_file), "--workers", "0", "--no-overlays"]) == 0
    pt, ox = read_labels(out_pt / "submission.csv"), read_labels(out_ox / "submission.csv")
    assert list(pt.images) == list(ox.images) and len(pt) == 10
    assert pt.n_footprints > 0  # the comparison is not vacuous
    ious = []
    for img in pt:
        a, b = img.footprints, ox[img.key].footprints
        assert len(a) == len(b), img.key
        ious += [1.0 if p.equals(q) else p.intersection(q).area / p.union(q).area for p, q in zip(a, b)]
    # This random model leaves many pixels near its thresholds, where a 1e-6 difference of
    # probability flips one pixel: a handful of its few thousand small "buildings" gain or lose one.
    ious = np.asarray(ious)
    assert (ious > 0.99).mean() >= 0.99 and ious.min() > 0.85
    gt = read_labels(sample / "test" / "test.json")
    assert evaluate_labels(gt, pt, pixel=False).f1 == pytest.approx(evaluate_labels(gt, ox, pixel=False).f1, abs=1e-3)
    assert sorted(p.name for p in (out_pt / "masks").iterdir()) == sorted(p.name for p in (out_ox / "masks").iterdir())


def test_tuned_settings_travel_in_the_onnx_file(sample, model_file, tmp_path):
    model = tmp_path / "m.safetensors"
    shutil.copy(model_file, model)
    shutil.copy(str(model_file) + ".sha256", str(model) + ".sha256")
    (tmp_path / "m.postprocess.json").write_text(json.dumps({"method": "watershed", "settings": {"min_area": 10**6}}))
    elsewhere = tmp_path / "shipped" / "m.onnx"
    export_onnx(model, elsewhere)
    assert read_onnx_metadata(elsewhere)["postprocess"]["settings"]["min_area"] == 10**6
    out = tmp_path / "p"
    assert main(["predict", "--images", str(sample / "test" / "image"), "--out", str(out), "--model", str(elsewhere),
                 "--workers", "0", "--no-overlays", "--no-masks"]) == 0
    assert read_labels(out / "submission.csv").n_footprints == 0  # the extreme min_area came along


def test_predict_onnx_with_tta_threads_and_workers_writes_what_one_thread_writes(sample, onnx_file, tmp_path):
    """The pipeline (reading threads, same-size batches, post-processing threads, two streams) changes nothing:
    the same files as everything in line in one stream, whatever the batch size."""
    from rooftrace.inference.predict import predict_folder

    images = sample / "test" / "image"
    a = predict_folder(images, tmp_path / "a", onnx_file, tta=True, batch_size=3, workers=1, threads=2, progress=False)
    b = predict_folder(images, tmp_path / "b", onnx_file, tta=True, batch_size=1, workers=0, threads=0, streams=1, progress=False)
    for name in ("submission.csv", "predictions.geojson", "predictions.coco.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    for sub in ("masks", "overlays"):
        names = sorted(p.name for p in (tmp_path / "a" / sub).iterdir())
        assert len(names) == 10 and names == sorted(p.name for p in (tmp_path / "b" / sub).iterdir())
        assert all((tmp_path / "a" / sub / n).read_bytes() == (tmp_path / "b" / sub / n).read_bytes() for n in names)
    assert a.timings["inference"] > 0 and a.timings["postprocess"] > 0 and b.labels.n_footprints == a.labels.n_footprints


def test_int8_export_runs_and_says_so(sample, model_file, tmp_path, monkeypatch):
    out = tmp_path / "q.onnx"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # ONNX Runtime's tools must leave nothing behind in the working folder
    result = export_onnx(model_file, out, int8=True, calibration=sample / "train" / "image", calibration_tiles_n=3)
    assert list(cwd.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "q.onnx", "q.onnx.sha256"]
    assert result.int8 and len(result.calibration) == 3 and result.int8_max_abs_diff is not None
    meta = read_onnx_metadata(out)
    assert meta["onnx"]["int8"] is True and meta["onnx"]["quantization"]["format"] == "QDQ"
    q = load_onnx(out, device="cpu")
    x = pad_normalise(read_rgb(sample / "test" / "image" / "0000.tif"), Normalization(q.mean, q.std))
    p = q.predict(x)
    assert p.shape == (1, 3, 256, 256) and float(p.min()) >= 0.0 and float(p.max()) <= 1.0


def test_predict_overlays_are_lossless_pngs(sample, model_file, tmp_path, monkeypatch):
    """predict writes overlays uncompressed, for speed: the same pixels as prepare.encode_png. The overlay drawn is
    replaced by random pixels, which `rooftrace predict` must write back exactly."""
    import shutil

    from PIL import Image

    from rooftrace.imagery import draw

    rgb = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    monkeypatch.setattr(draw, "render_overlay", lambda *args, **kwargs: rgb)
    (tmp_path / "images").mkdir()
    shutil.copy(sample / "test" / "image" / "0000.tif", tmp_path / "images")
    assert main(["predict", "--images", str(tmp_path / "images"), "--out", str(tmp_path / "out"), "--model", str(model_file),
                 "--workers", "0"]) == 0
    img = Image.open(tmp_path / "out" / "overlays" / "0000.png")
    assert img.mode == "RGB" and np.array_equal(np.asarray(img), rgb)


def test_an_onnx_model_on_the_cpu_runs_two_streams_on_sessions_of_one_thread(sample, onnx_file):
    import os

    from rooftrace.inference.runtime import load_runtime

    rt = load_runtime(onnx_file, device="cpu")
    first = rt.net.session
    x = np.random.default_rng(0).standard_normal((2, 3, 256, 256)).astype(np.float32)
    want = rt.run(x)
    cores = os.cpu_count() or 1
    with rt.streams(2) as n:
        assert n == min(2, cores)
        if n == 2:
            assert rt.net.session is not first and rt.net.session is rt.net.on_threads(cores // 2)
            assert rt.net.session.get_session_options().intra_op_num_threads == cores // 2
        assert np.array_equal(rt.run(x), want)  # the same outputs, bit for bit
    assert rt.net.session is first  # restored
    with rt.streams(1) as n:
        assert n == 1 and rt.net.session is first
    assert rt.default_streams() == min(2, cores)


def test_an_onnx_model_runs_without_importing_torch(sample, onnx_file, tmp_path):
    """Issue 26: `predict`, `predict-scene` and the API with an .onnx model import neither torch nor the onnx package
    (its metadata is read through ONNX Runtime), and write what the same run writes in this process."""
    import subprocess
    import sys

    images, scene = sample / "test" / "image", sample / "scenes" / "inria_austin.tif"
    code = ("import sys; from rooftrace.cli import main; "
            f"a = main(['predict', '--images', {str(images)!r}, '--out', {str(tmp_path / 'p')!r}, '--model', {str(onnx_file)!r}, "
            "'--workers', '0', '--no-overlays', '--no-masks']); "
            f"b = main(['predict-scene', {str(scene)!r}, '--out', {str(tmp_path / 's.gpkg')!r}, '--model', {str(onnx_file)!r}]); "
            f"import numpy, rooftrace; rooftrace.load_model({str(onnx_file)!r}).predict(numpy.zeros((64, 64, 3), numpy.uint8)); "
            "print(a, b, [m for m in ('torch', 'onnx', 'timm', 'segmentation_models_pytorch') if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "0 0 []"
    assert main(["predict", "--images", str(images), "--out", str(tmp_path / "here"), "--model", str(onnx_file),
                 "--workers", "0", "--no-overlays", "--no-masks"]) == 0
    assert (tmp_path / "p" / "submission.csv").read_text() == (tmp_path / "here" / "submission.csv").read_text()
    assert read_labels(tmp_path / "p" / "submission.csv").n_footprints > 0
