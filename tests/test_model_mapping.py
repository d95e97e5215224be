"""Weights viewed in place: the wire walk that takes raw_data out of a serialized model, the
read-only file mapping the loader views weights in, and the cpu_x86 backend letting go of
mapped pages once it has packed them."""

from __future__ import annotations

import os
import sys
import threading

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from onnx_models import make_model

import walle_core as wc
from walle_core.errors import ModelError
from walle_core.mapped import FileMapping, is_reclaimable, map_file
from walle_core.onnx import load_model
from walle_core.onnx.model import OnnxModel
from walle_core.onnx.wire import WireFormatError, split_raw_initializers


def _weights(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        # names of different lengths put the payloads at offsets that are not multiples of 4
        "w": rng.standard_normal((16, 8, 3, 3)).astype(np.float32),
        "bias_b": rng.standard_normal(16).astype(np.float32),
        "scale_xyz": rng.standard_normal((1, 16, 1, 1)).astype(np.float32),
    }


def _conv_model(seed: int = 0) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    weights = _weights(seed)
    nodes = [helper.make_node("Conv", ["x", "w", "bias_b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["c", "scale_xyz"], ["m"]),
             helper.make_node("Relu", ["m"], ["y"])]
    x = np.random.default_rng(seed + 1).standard_normal((1, 8, 12, 12)).astype(np.float32)
    return make_model(nodes, {"x": x}, ["y"], weights), weights


def _reference(x: np.ndarray, weights: dict[str, np.ndarray]) -> np.ndarray:
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    w = weights["w"]
    out = np.zeros((1, w.shape[0], x.shape[2], x.shape[3]), np.float64)
    for i in range(3):
        for j in range(3):
            patch = padded[:, :, i:i + x.shape[2], j:j + x.shape[3]]
            out += np.einsum("nchw,kc->nkhw", patch, w[:, :, i, j])
    out += weights["bias_b"].reshape(1, -1, 1, 1)
    return np.maximum(out * weights["scale_xyz"], 0).astype(np.float32)


def test_split_takes_out_exactly_the_raw_payloads() -> None:
    model, weights = _conv_model()
    data = model.SerializeToString()
    stripped, spans = split_raw_initializers(data)
    parsed = onnx.ModelProto()
    parsed.ParseFromString(stripped)
    assert len(stripped) < len(data) - sum(w.nbytes for w in weights.values()) + 64
    assert [t.name for t in parsed.graph.initializer] == list(weights)
    for tensor, span in zip(parsed.graph.initializer, spans):
        assert not tensor.HasField("raw_data")
        offset, length = span
        payload = np.frombuffer(data[offset:offset + length], np.float32).reshape(tuple(tensor.dims))
        np.testing.assert_array_equal(payload, weights[tensor.name])
    # everything but the payloads is unchanged
    for tensor in model.graph.initializer:
        tensor.ClearField("raw_data")
    assert parsed == model
    assert any(offset % 4 for offset, _ in spans), "the test should cover misaligned payloads"


def test_split_leaves_typed_fields_and_reports_tensors_without_raw_data() -> None:
    model, _ = _conv_model()
    model.graph.initializer.append(helper.make_tensor("k", onnx.TensorProto.INT64, [3], [4, -5, 6]))
    stripped, spans = split_raw_initializers(model.SerializeToString())
    assert spans[-1] is None
    parsed = onnx.ModelProto()
    parsed.ParseFromString(stripped)
    assert list(parsed.graph.initializer[-1].int64_data) == [4, -5, 6]


@pytest.mark.parametrize("data", [b"\x0a\xff", b"\x0b\x01", b"\x3a\x05\x2a\x10abc", b"\x08" + b"\xff" * 11])
def test_split_rejects_what_it_cannot_walk(data: bytes) -> None:
    with pytest.raises(WireFormatError):
        split_raw_initializers(data)


def test_file_weights_are_read_only_views_of_the_mapping(tmp_path) -> None:
    model, weights = _conv_model()
    path = tmp_path / "conv.onnx"
    onnx.save_model(model, str(path))
    om = load_model(path)
    for name, expected in weights.items():
        value = om.initializers[name]
        np.testing.assert_array_equal(value, expected)
        assert is_reclaimable(value)
        assert not value.flags.writeable
    assert isinstance(map_file(path), FileMapping)
    assert not is_reclaimable(np.ones(3))
    # bytes sources view the caller's bytes, which are immutable: not a file, not reclaimable
    from_bytes = load_model(path.read_bytes())
    np.testing.assert_array_equal(from_bytes.initializers["w"], weights["w"])
    assert not is_reclaimable(from_bytes.initializers["w"])


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_model_that_cannot_be_mapped_is_read(tmp_path) -> None:
    model, weights = _conv_model()
    fifo = tmp_path / "model.pipe"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(model.SerializeToString()))
    writer.start()
    om = load_model(fifo)
    writer.join()
    np.testing.assert_array_equal(om.initializers["w"], weights["w"])
    assert not is_reclaimable(om.initializers["w"])


def test_bad_sizes_and_corrupt_files_are_still_named(tmp_path) -> None:
    model, _ = _conv_model()
    model.graph.initializer[0].raw_data = model.graph.initializer[0].raw_data[:-4]
    path = tmp_path / "short.onnx"
    onnx.save_model(model, str(path))
    with pytest.raises(ModelError, match="initializer 'w': raw_data has 4604 bytes"):
        load_model(path)
    data = _conv_model()[0].SerializeToString()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="not a valid ONNX protobuf"):
        load_model(tmp_path / "cut.onnx")
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(ModelError, match="no graph"):
        load_model(tmp_path / "empty.onnx")


def test_rare_element_types_take_the_general_path(tmp_path) -> None:
    values = np.array([1.5, -2.25, 3.0, 0.5], np.float32)
    bf16 = numpy_helper.from_array(values, "b")
    bf16.data_type = onnx.TensorProto.BFLOAT16
    bf16.raw_data = (values.view(np.uint32) >> 16).astype(np.uint16).tobytes()
    model = make_model([helper.make_node("Cast", ["b"], ["y"], to=onnx.TensorProto.FLOAT)], {}, ["y"], {})
    model.graph.initializer.append(bf16)
    path = tmp_path / "bf16.onnx"
    onnx.save_model(model, str(path))
    session = wc.load(path, backend="reference")
    np.testing.assert_array_equal(session.run({})["y"], values)


def _mapped_kib(path) -> int:
    """Resident KiB of the process's mappings of ``path``."""
    total, current = 0, None
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if "-" in fields[0] and not fields[0].endswith(":"):
                current = fields[-1] if len(fields) >= 6 else None
            elif fields[0] == "Rss:" and current == str(path):
                total += int(fields[1])
    return total


_LINUX_ONLY = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")


@_LINUX_ONLY
def test_cpu_x86_drops_mapped_weights_as_it_packs_them(tmp_path, monkeypatch) -> None:
    """Each weight's pages go as soon as the ops reading it are built, which keeps the load's
    peak at about one copy of the weights; the session-wide drop is switched off here."""
    pytest.importorskip("walle_cpu_x86")
    monkeypatch.setattr(OnnxModel, "drop_weight_pages", lambda self: None)
    rng = np.random.default_rng(3)
    weights = {"w": rng.standard_normal((64, 64, 3, 3)).astype(np.float32) * 0.05,
               "bias_b": rng.standard_normal(64).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w", "bias_b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"])]
    x = rng.standard_normal((1, 64, 20, 20)).astype(np.float32)
    path = tmp_path / "big.onnx"
    onnx.save_model(make_model(nodes, {"x": x}, ["y"], weights), str(path))
    session = wc.load(path, backend="cpu_x86")
    assert _mapped_kib(path) * 1024 < weights["w"].nbytes // 4
    expected = _reference(x, {**weights, "scale_xyz": np.ones((1, 64, 1, 1), np.float32)})
    np.testing.assert_allclose(session.run({"x": x})["y"], expected, rtol=1e-4, atol=1e-4)


@_LINUX_ONLY
def test_session_lets_mapped_pages_go_after_planning(tmp_path) -> None:
    """Weights folded on the Python side (here the Mul into the conv) touch the mapping too."""
    rng = np.random.default_rng(4)
    weights = {"w": rng.standard_normal((64, 64, 3, 3)).astype(np.float32),
               "bias_b": rng.standard_normal(64).astype(np.float32),
               "scale_xyz": rng.standard_normal((1, 64, 1, 1)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w", "bias_b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["c", "scale_xyz"], ["m"]),
             helper.make_node("Relu", ["m"], ["y"])]
    model = make_model(nodes, {"x": np.zeros((1, 64, 10, 10), np.float32)}, ["y"], weights)
    path = tmp_path / "folded.onnx"
    onnx.save_model(model, str(path))
    wc.load(path, backend="reference")
    assert _mapped_kib(path) * 1024 < path.stat().st_size // 4


@pytest.mark.parametrize("winograd", ["0", "2", "4", "6"], ids=["gemm", "F(2,3)", "F(4,3)", "F(6,3)"])
def test_misaligned_mapped_weights_give_exact_results(tmp_path, monkeypatch, winograd) -> None:
    """Weights at odd offsets of a mapped file: the GEMM packers get an aligned copy, the
    Winograd transform reads them in place byte by byte; both match the reference."""
    pytest.importorskip("walle_cpu_x86")
    monkeypatch.setenv("WALLE_CPU_X86_WINOGRAD", winograd)
    model, weights = _conv_model(seed=5)
    path = tmp_path / "conv.onnx"
    for size in range(1, 5):  # an unused int8 initializer in front shifts the weight's offset
        kept = [t for t in model.graph.initializer if t.name != "shift"]
        del model.graph.initializer[:]
        model.graph.initializer.extend([numpy_helper.from_array(np.zeros(size, np.int8), "shift"), *kept])
        onnx.save_model(model, str(path))
        if not load_model(path).initializers["w"].flags.aligned:
            break
    assert not load_model(path).initializers["w"].flags.aligned, "the weight should sit at an odd offset"
    x = np.random.default_rng(6).standard_normal((1, 8, 12, 12)).astype(np.float32)
    for backend in ("cpu_x86", "reference"):
        got = wc.load(path, backend=backend).run({"x": x})["y"]
        np.testing.assert_allclose(got, _reference(x, weights), rtol=1e-4, atol=1e-4)
