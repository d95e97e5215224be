"""`walle plan`: the per-op report of the backend search, on models built here. Profiles are
fixed so predicted times are exact; measured times are only checked for presence and sign."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import walle_core as wc
from walle_core import search
from walle_core.cli import build_cli
from walle_core.search import BackendProfile, node_bytes, node_flops

PROFILE = BackendProfile(flops_per_s=1e9, bytes_per_s=1e9, launch_s=1e-5)
OP_KEYS = {"op", "origin", "backend", "algorithm", "predicted_ms", "measured_ms"}


@pytest.fixture(autouse=True)
def fixed_profiles(tmp_path, monkeypatch):
    monkeypatch.setenv("WALLE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(search.ProfileCache, "get", lambda self, backend: PROFILE)


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(build_cli(), ["plan", *args], prog_name="walle", catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def invoke_json(*args: str) -> dict:
    code, out, err = invoke(*args, "--json")
    assert code == 0, err
    return json.loads(out)


def topk_model() -> onnx.ModelProto:
    """x [N, 16] -> MatMul -> Relu -> TopK(3), with a symbolic batch dimension."""
    rng = np.random.default_rng(5)
    w = numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Relu", ["m"], ["y"]),
         helper.make_node("TopK", ["y", "k"], ["v", "i"], axis=1)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("v", TensorProto.FLOAT, ["N", 3]),
         helper.make_tensor_value_info("i", TensorProto.INT64, ["N", 3])],
        [w, numpy_helper.from_array(np.array([3], np.int64), "k")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def model_path(tmp_path):
    path = tmp_path / "topk.onnx"
    onnx.save(topk_model(), path)
    return str(path)


def test_predicted_times_follow_the_profile(model_path):
    report = invoke_json(model_path, "--backends", "reference")
    graph = wc.load(model_path, backend="reference").plan_for({"x": (1, 16)}).graph
    assert [op["op"] for op in report["ops"]] == [node.op.value for node in graph.nodes]
    for op, node in zip(report["ops"], graph.nodes):
        assert set(op) == OP_KEYS and op["backend"] == "reference" and op["algorithm"] == "-"
        seconds = (node_flops(node, graph.types) / PROFILE.flops_per_s
                   + node_bytes(node, graph.types) / PROFILE.bytes_per_s + PROFILE.launch_s)
        assert op["predicted_ms"] == pytest.approx(seconds * 1e3, abs=1e-4)
        assert op["measured_ms"] is None
    assert report["copies"] == 0
    assert report["predicted_total_ms"] == pytest.approx(sum(op["predicted_ms"] for op in report["ops"]), abs=1e-3)
    assert report["measured_total_ms"] is None and report["rank_correlation"] is None


def test_measure_times_every_op_and_the_plan(model_path, tmp_path):
    report = invoke_json(model_path, "--backends", "reference", "--measure")
    assert all(op["measured_ms"] > 0 for op in report["ops"])
    assert report["measured_total_ms"] > 0
    assert -1.0 <= report["rank_correlation"] <= 1.0
    assert report["chosen"] in report["candidates_ms"]
    assert (tmp_path / "cache" / "plans.json").exists()


def test_table_output_names_totals_and_correlation(model_path):
    code, out, err = invoke(model_path, "--backends", "reference", "--measure")
    assert code == 0, err
    assert "predicted total" in out and "cross-backend copies: 0" in out
    assert "rank correlation (Spearman)" in out and "chosen:" in out


def test_missing_model_is_one_line_error(tmp_path):
    code, out, err = invoke(str(tmp_path / "nope.onnx"))
    assert code == 1 and "model file not found" in err and out == ""


def hybrid_model() -> onnx.ModelProto:
    """x -> MatMul -> Cast(int64) -> Abs -> Cast(float) -> Relu: OpenCL declines int64 Abs, so
    that op falls back to the reference backend in the middle of the graph."""
    rng = np.random.default_rng(5)
    w = numpy_helper.from_array((rng.standard_normal((16, 16)) * 10).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["m"]),
         helper.make_node("Cast", ["m"], ["mi"], to=TensorProto.INT64),
         helper.make_node("Abs", ["mi"], ["ai"]),
         helper.make_node("Cast", ["ai"], ["af"], to=TensorProto.FLOAT),
         helper.make_node("Relu", ["af"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_hybrid_plan_counts_copies(tmp_path, monkeypatch):
    """An op the OpenCL backend declines falls back to the reference backend, and each
    crossing of the device boundary is a copy. The device's profile is made so fast that the
    search puts every op it can on it."""
    model_path = str(tmp_path / "hybrid.onnx")
    onnx.save(hybrid_model(), model_path)
    pytest.importorskip("walle_opencl")
    from walle_opencl import OpenCLBackend

    if not OpenCLBackend.availability().available:
        pytest.skip(OpenCLBackend.availability().reason)
    device = BackendProfile(flops_per_s=1e15, bytes_per_s=1e15, launch_s=1e-12)
    monkeypatch.setattr(search.ProfileCache, "get",
                        lambda self, backend: device if backend.name == "opencl" else PROFILE)
    report = invoke_json(model_path, "--backends", "opencl")
    session = wc.load(model_path, backend="opencl", search="cost")
    plan = session.plan_for({"x": (1, 16)})
    assert [op["backend"] for op in report["ops"]] == plan.schedule.assignment
    assert {"opencl", "reference"} <= set(plan.schedule.assignment)
    assert report["copies"] == plan.copies >= 1
    # the hybrid plan computes what the reference backend does
    x = np.random.default_rng(6).standard_normal((1, 16)).astype(np.float32)
    want = wc.load(model_path, backend="reference").run({"x": x})
    got = session.run({"x": x})
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5)
