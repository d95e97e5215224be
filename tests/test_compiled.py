"""The compiled model format: a ``.walle`` file runs like the ONNX model it came from, maps
its weights instead of copying them, and a damaged file is a ModelError, never a crash."""

from __future__ import annotations

import json
import mmap
import struct

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import walle_core as wc
from walle_core import compiled
from walle_core.cli import build_cli
from walle_core.errors import ModelError, WalleError
from walle_core.testing.models import example_cnn


def mlp_model(hidden: int = 16) -> onnx.ModelProto:
    """x [N, 8] -> Gemm -> Relu -> MatMul -> Softmax, with a symbolic batch dimension."""
    rng = np.random.default_rng(1)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, hidden)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.standard_normal((hidden, 4)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["a"], name="act"),
        helper.make_node("MatMul", ["a", "w2"], ["z"], name="fc2"),
        helper.make_node("Softmax", ["z"], ["y"], name="softmax", axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _convert(tmp_path, model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> tuple[str, str]:
    src, dst = tmp_path / "model.onnx", tmp_path / "model.walle"
    onnx.save(model, src)
    compiled.convert(str(src), dst, shapes)
    return str(src), str(dst)


def _is_mapped(array: np.ndarray) -> bool:
    base = array
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    return isinstance(base, memoryview) and isinstance(base.obj, mmap.mmap)


@pytest.mark.parametrize("model, shapes", [
    (example_cnn(), {"image": (2, 3, 32, 32)}),
    (mlp_model(), {"x": (5, 8)}),
], ids=["cnn", "mlp"])
def test_round_trip_matches_the_onnx_session(tmp_path, model, shapes):
    src, dst = _convert(tmp_path, model, shapes)
    rng = np.random.default_rng(7)
    feeds = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
    expected = wc.load(src).run(feeds)
    session = wc.load(dst)
    assert [(s.name, s.shape) for s in session.inputs] == list(shapes.items())
    got = session.run(feeds)
    assert list(got) == list(expected)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


def test_constants_are_memory_mapped_read_only(tmp_path):
    big = mlp_model(hidden=1 << 16)  # w1 is 2 MiB
    _, dst = _convert(tmp_path, big, {"x": (1, 8)})
    model = compiled.CompiledModel(dst)
    constants = model.graph.constants
    assert constants, "the MLP keeps its weights as constants"
    largest = max(constants.values(), key=lambda c: c.nbytes)
    assert largest.nbytes >= 2 << 20
    assert all(_is_mapped(c) for c in constants.values() if c.size)
    assert not largest.flags.writeable
    with open(dst, "rb") as f:
        data = f.read()
    offset = data.find(largest.tobytes())
    assert offset > 0 and offset % compiled.ALIGNMENT == 0


def test_other_shapes_are_refused(tmp_path):
    _, dst = _convert(tmp_path, mlp_model(), {"x": (5, 8)})
    session = wc.load(dst)
    with pytest.raises(WalleError, match="shape"):
        session.run({"x": np.zeros((3, 8), np.float32)})


def test_symbolic_input_without_shape_is_a_clear_error(tmp_path):
    with pytest.raises(WalleError, match="--shape x="):
        _convert(tmp_path, mlp_model(), {})


def _rewrite_header(path: str, edit) -> None:
    """Apply ``edit`` to the parsed header and write the file back with the same data section."""
    with open(path, "rb") as f:
        data = f.read()
    _, version, length = struct.unpack_from("<8sIQ", data)
    start = compiled._align(20 + length)
    header = json.loads(data[20:20 + length])
    edit(header)
    blob = json.dumps(header).encode()
    new_start = compiled._align(20 + len(blob))
    with open(path, "wb") as f:
        f.write(struct.pack("<8sIQ", compiled.MAGIC, version, len(blob)) + blob)
        f.write(b"\0" * (new_start - 20 - len(blob)) + data[start:])


def _drop_node_input(header):
    header["nodes"][-1]["inputs"] = header["nodes"][-1]["inputs"][:-1]


def _bad_enum(header):
    node = next(n for n in header["nodes"] if n["op"] == "unary")
    node["attrs"]["fn"] = "no_such_fn"


def _constant_past_end(header):
    header["constants"][0]["offset"] = 1 << 40


def _misaligned(header):
    header["constants"][0]["offset"] += 4


def _wrong_nbytes(header):
    header["constants"][0]["nbytes"] += 4


def _dangling_output(header):
    header["outputs"] = ["nowhere"]


def _bool_for_int(header):
    node = next(n for n in header["nodes"] if n["op"] == "matmul")
    node["attrs"]["trans_a"] = 1


@pytest.mark.parametrize("edit, message", [
    (_drop_node_input, r"nodes\[\d+\]"),
    (_bad_enum, "no_such_fn"),
    (_constant_past_end, "past the end"),
    (_misaligned, "misaligned"),
    (_wrong_nbytes, "bytes stored"),
    (_dangling_output, "nowhere"),
    (_bool_for_int, "trans_a"),
])
def test_inconsistent_header_is_a_model_error(tmp_path, edit, message):
    _, dst = _convert(tmp_path, mlp_model(), {"x": (2, 8)})
    _rewrite_header(dst, edit)
    with pytest.raises(ModelError, match=message):
        wc.load(dst)


def test_bad_magic_version_and_truncation_are_model_errors(tmp_path):
    _, dst = _convert(tmp_path, mlp_model(), {"x": (2, 8)})
    with open(dst, "rb") as f:
        data = f.read()
    cases = {
        "version": data[:8] + struct.pack("<I", 99) + data[12:],
        "header length": data[:12] + struct.pack("<Q", 1 << 50) + data[20:],
        "JSON": data[:40] + b"\xff\xfe" + data[42:],
    }
    for what, content in cases.items():
        path = tmp_path / f"{what}.walle"
        path.write_bytes(content)
        with pytest.raises(ModelError, match=what.split()[0]):
            compiled.CompiledModel(path)
    # every truncation point: the header, the padding, the weights
    for cut in sorted({12, 25, len(data) // 3, len(data) // 2, len(data) - 1}):
        path = tmp_path / "cut.walle"
        path.write_bytes(data[:cut])
        with pytest.raises(ModelError):
            wc.load(str(path))
    (tmp_path / "magic.walle").write_bytes(b"NOTWALLE" + data[8:])
    with pytest.raises(ModelError):  # not compiled, so the ONNX parser rejects it
        wc.load(str(tmp_path / "magic.walle"))


def test_cli_convert_then_run(tmp_path):
    src = tmp_path / "mlp.onnx"
    dst = tmp_path / "mlp.walle"
    onnx.save(mlp_model(), src)
    runner = CliRunner()
    result = runner.invoke(build_cli(), ["convert", str(src), "-o", str(dst), "--shape", "x=3,8", "--json"],
                           prog_name="walle", catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["inputs"] == [{"name": "x", "dtype": "float32", "shape": [3, 8]}]
    assert report["file_bytes"] == dst.stat().st_size
    result = runner.invoke(build_cli(), ["run", str(dst), "--json"], prog_name="walle", catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    outputs = json.loads(result.stdout)["outputs"]
    assert outputs[0]["shape"] == [3, 4]
    result = runner.invoke(build_cli(), ["convert", str(src), "-o", str(dst), "--shape", "x=a,8"],
                           prog_name="walle")
    assert result.exit_code != 0 and "--shape" in result.stderr
