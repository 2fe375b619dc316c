"""``precision="auto"`` may choose ONNX Runtime for a ``.safetensors`` model when it measures fastest
(rooftrace.inference.choice): the same probabilities as PyTorch fp32, the graph cached and checked."""

from __future__ import annotations

import numpy as np
import pytest

from rooftrace.inference import choice
from rooftrace.inference.runtime import load_runtime
from tests.conftest import write_tiny_model

pytest.importorskip("onnxruntime")


@pytest.fixture()
def onnx_fastest(tmp_path, monkeypatch):
    """A CPU without native bf16 where ONNX Runtime times faster than PyTorch fp32; a fresh cache folder."""
    monkeypatch.setenv("ROOFTRACE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("ROOFTRACE_RUNTIME_PROBE", "1")
    monkeypatch.setattr(choice, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(choice, "_time_calls", lambda calls, rounds=3: {c: {"fp32": 0.2, "onnx": 0.1}[c] for c in calls})
    exports = []
    real = choice._export
    monkeypatch.setattr(choice, "_export", lambda loaded, spinning: exports.append(loaded.path) or real(loaded, spinning))
    return tmp_path / "cache", exports


def _batch() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (2, 96, 128, 3), dtype=np.uint8)


def test_onnx_runtime_chosen_gives_pytorch_fp32s_probabilities_and_says_so(tmp_path, onnx_fastest):
    cache, exports = onnx_fastest
    model = write_tiny_model(tmp_path / "m.safetensors")
    rt = load_runtime(model, device="cpu")
    assert rt.is_onnx and rt.choice.engine == "onnxruntime" and rt.precision == "fp32" and len(exports) == 1
    assert rt.runtime_line == "runtime: ONNX Runtime fp32 (measured on this machine: onnx 0.100 s, fp32 0.200 s a 512 x 512 tile)"
    assert rt.path == model and rt.gsd == load_runtime(model, device="cpu", precision="fp32").gsd  # the file's own facts
    reference = load_runtime(model, device="cpu", precision="fp32")
    assert not reference.is_onnx
    np.testing.assert_allclose(rt.probabilities(_batch()), reference.probabilities(_batch()), atol=1e-4)
    assert len(list((cache / "onnx").glob("*.onnx"))) == 1

    again = load_runtime(model, device="cpu")  # cached: nothing measured, nothing exported
    assert again.is_onnx and again.choice.how == "cached" and len(exports) == 1
    np.testing.assert_allclose(again.probabilities(_batch()), reference.probabilities(_batch()), atol=1e-4)


def test_a_cached_graph_that_disagrees_is_exported_again(tmp_path, onnx_fastest):
    """A cache file edited or left by other weights cannot change a result: it is checked against PyTorch."""
    cache, exports = onnx_fastest
    a = write_tiny_model(tmp_path / "a.safetensors")
    b = write_tiny_model(tmp_path / "b.safetensors", base_channels=4)
    load_runtime(a, device="cpu")
    (graph_a,) = (cache / "onnx").glob("*.onnx")
    rt_b = load_runtime(b, device="cpu")  # other weights: their own graph
    graphs = sorted((cache / "onnx").glob("*.onnx"))
    assert len(graphs) == 2 and len(exports) == 2
    (graph_b,) = [g for g in graphs if g != graph_a]
    expected = load_runtime(b, device="cpu", precision="fp32").probabilities(_batch())
    np.testing.assert_allclose(rt_b.probabilities(_batch()), expected, atol=1e-4)
    for bad in (graph_a.read_bytes(), b"not an onnx graph"):  # a's graph, then garbage, under b's name
        graph_b.write_bytes(bad)
        rt = load_runtime(b, device="cpu")
        np.testing.assert_allclose(rt.probabilities(_batch()), expected, atol=1e-4)
    assert len(exports) == 4


def test_explicit_precision_and_compile_keep_pytorch(tmp_path, onnx_fastest):
    _, exports = onnx_fastest
    model = write_tiny_model(tmp_path / "m.safetensors")
    assert not load_runtime(model, device="cpu", precision="fp32").is_onnx
    assert not load_runtime(model, device="cpu", onnx_candidate=False).is_onnx  # what predict --compile asks
    assert exports == []


def test_the_choice_of_predict_is_in_its_summary(sample, tmp_path, onnx_fastest):
    from rooftrace.inference.predict import predict_folder

    model = write_tiny_model(tmp_path / "m.safetensors")
    images = tmp_path / "images"
    images.mkdir()
    for p in sorted((sample / "test" / "image").glob("*"))[:2]:
        (images / p.name).write_bytes(p.read_bytes())
    auto = predict_folder(images, tmp_path / "auto", model, workers=0, progress=False)
    assert "runtime: ONNX Runtime fp32 (measured on this machine" in auto.summary()
    fp32 = predict_folder(images, tmp_path / "fp32", model, workers=0, progress=False, precision="fp32")
    a = (tmp_path / "auto" / "submission.csv").read_text()
    assert a == (tmp_path / "fp32" / "submission.csv").read_text() and fp32.labels.n_footprints == auto.labels.n_footprints


def test_the_graph_cache_keeps_the_newest_graphs_only(tmp_path, onnx_fastest):
    import os

    cache, _ = onnx_fastest
    (cache / "onnx").mkdir(parents=True)
    for i in range(choice.MAX_CACHED_GRAPHS + 2):  # older graphs of other models
        old = cache / "onnx" / f"{i:032x}.onnx"
        old.write_bytes(b"x")
        os.utime(old, ns=(10**18 + i, 10**18 + i))
    model = write_tiny_model(tmp_path / "m.safetensors")
    assert load_runtime(model, device="cpu").is_onnx
    from rooftrace.inference.runtime import load_any

    new = f"{choice.weights_key(load_any(model, device='cpu').model)}-r{choice.RUNTIME_REVISION}.onnx"
    n = choice.MAX_CACHED_GRAPHS
    newest_old = [f"{i:032x}.onnx" for i in range(n + 2)][-(n - 1):]
    assert sorted(p.name for p in (cache / "onnx").glob("*.onnx")) == sorted([new, *newest_old])


def test_a_network_the_exporter_cannot_take_stays_in_pytorch(tmp_path, onnx_fastest, monkeypatch):
    """Measuring: the ONNX candidate drops out. Cached as ONNX: the fastest PyTorch candidate runs instead."""
    from rooftrace.models import onnx_graph

    model = write_tiny_model(tmp_path / "m.safetensors")
    assert load_runtime(model, device="cpu").is_onnx  # cached: ONNX Runtime was fastest
    for graph in (tmp_path / "cache" / "onnx").glob("*.onnx"):
        graph.unlink()

    def broken(*args, **kwargs):
        raise RuntimeError("the exporter cannot take this network")

    monkeypatch.setattr(onnx_graph, "export_graph", broken)
    cached = load_runtime(model, device="cpu")
    assert not cached.is_onnx and cached.precision == "fp32"
    monkeypatch.setenv("ROOFTRACE_CACHE_DIR", str(tmp_path / "fresh-cache"))
    measured = load_runtime(model, device="cpu")
    assert not measured.is_onnx and measured.choice.how == "measured" and set(measured.choice.seconds) == {"fp32"}


def test_the_probe_times_each_candidate_after_a_warm_up_and_keeps_its_fastest_pass(monkeypatch):
    """Each candidate in turn: one warm-up call, then its timed passes, the fastest kept (not interleaved with the
    others: threads that spin after one runtime's pass would slow the next runtime's)."""
    order: list[str] = []
    clock = iter([0.0, 5.0, 5.0, 5.1, 5.1, 5.3, 6.0, 6.5, 6.5, 6.6, 6.6, 6.9])  # a: 5.0, 0.1, 0.2; b: 0.5, 0.1, 0.3
    monkeypatch.setattr(choice.time, "perf_counter", lambda: next(clock))
    best = choice._time_calls({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, rounds=3)
    assert order == ["a"] * 4 + ["b"] * 4
    assert best == pytest.approx({"a": 0.1, "b": 0.1})


def test_a_choice_measured_under_load_is_measured_again_once_the_machine_is_quieter(tmp_path, onnx_fastest, monkeypatch):
    """A choice measured while other work held the CPU (a load average of a runnable thread a core or more) is kept
    while the machine stays that busy, and measured again by the first run that finds it quieter."""
    measured: list[int] = []
    monkeypatch.setattr(choice, "_time_calls", lambda calls, rounds=3: measured.append(1) or {
        c: {"fp32": 0.2, "onnx": 0.1}[c] for c in calls})
    cores = choice.os.cpu_count() or 1
    model = write_tiny_model(tmp_path / "m.safetensors")
    monkeypatch.setattr(choice, "_load", lambda: cores + 1.0)
    assert load_runtime(model, device="cpu").choice.how == "measured" and len(measured) == 1
    assert load_runtime(model, device="cpu").choice.how == "cached" and len(measured) == 1  # still busy: kept
    monkeypatch.setattr(choice, "_load", lambda: cores / 4)
    assert load_runtime(model, device="cpu").choice.how == "measured" and len(measured) == 2  # quieter: again
    assert load_runtime(model, device="cpu").choice.how == "cached" and len(measured) == 2  # measured quiet: kept
