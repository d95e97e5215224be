"""The `walle` command line, run in-process through click's CliRunner on models built here.
Every number a command reports is checked against onnx.reference or NumPy."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx.reference
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from walle_core.cli import build_cli
from walle_core.cli.demo import BATCH
from walle_core.testing.models import example_cnn

BACKEND_KEYS = {"name", "available", "reason", "device", "ops", "priority"}


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(build_cli(), list(args), prog_name="walle", catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def invoke_json(*args: str) -> object:
    code, out, err = invoke(*args, "--json")
    assert code == 0, err
    return json.loads(out)  # stdout must be pure JSON


def mlp_model() -> onnx.ModelProto:
    """x [N, 8] -> Gemm -> Relu -> MatMul -> Softmax, with a symbolic batch dimension."""
    rng = np.random.default_rng(1)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 16)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.standard_normal((16, 4)).astype(np.float32), "w2"),
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


@pytest.fixture
def mlp_path(tmp_path):
    path = tmp_path / "mlp.onnx"
    onnx.save(mlp_model(), path)
    return str(path)


def test_help_lists_every_command():
    code, out, _ = invoke("--help")
    assert code == 0
    for command in ("backends", "info", "run", "bench", "demo"):
        assert command in out


def test_backends_json_lists_reference_and_cpu_x86_as_available():
    report = invoke_json("backends")
    by_name = {entry["name"]: entry for entry in report}
    for name in ("reference", "cpu_x86"):
        assert name in by_name, f"backend {name} is not registered: {sorted(by_name)}"
        entry = by_name[name]
        assert BACKEND_KEYS <= set(entry)
        assert entry["available"] is True, entry["reason"]
        assert "matmul" in entry["ops"] and "conv2d" in entry["ops"]
    # auto-selection order: highest priority first
    priorities = [e["priority"] for e in report if e["priority"] is not None]
    assert priorities == sorted(priorities, reverse=True)


def test_info_json_counts_onnx_ops_and_their_decompositions(mlp_path):
    report = invoke_json("info", mlp_path)
    assert report["onnx_ops"] == {"Gemm": 1, "Relu": 1, "MatMul": 1, "Softmax": 1}
    assert set(report["decompositions"]) <= set(report["onnx_ops"])
    # every atomic node is accounted to exactly one ONNX op type
    per_op: dict[str, int] = {}
    for atomic in report["decompositions"].values():
        for op, count in atomic.items():
            per_op[op] = per_op.get(op, 0) + count
    assert per_op == report["atomic_ops"]
    assert report["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["N", 8]}]
    assert report["outputs"] == ["y"]


def test_info_prints_tables(mlp_path):
    code, out, _ = invoke("info", mlp_path)
    assert code == 0
    assert "Decompositions" in out and "Softmax" in out


def test_run_json_summarises_outputs_of_given_inputs(mlp_path, tmp_path):
    x = np.random.default_rng(7).standard_normal((3, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    report = invoke_json("run", mlp_path, "--input", f"x={tmp_path / 'x.npy'}")
    (expected,) = onnx.reference.ReferenceEvaluator(mlp_model()).run(None, {"x": x})
    (out,) = report["outputs"]
    assert out["name"] == "y" and out["shape"] == [3, 4] and out["dtype"] == "float32"
    assert out["min"] == pytest.approx(float(expected.min()), abs=1e-5)
    assert out["max"] == pytest.approx(float(expected.max()), abs=1e-5)
    assert out["mean"] == pytest.approx(float(expected.mean()), abs=1e-5)
    assert report["inputs"][0]["random"] is False
    assert report["run_ms"] > 0 and report["load_ms"] > 0


def test_run_random_inputs_are_seeded_with_symbolic_dims_as_one(mlp_path):
    first = invoke_json("run", mlp_path, "--seed", "3")
    second = invoke_json("run", mlp_path, "--seed", "3", "--backend", "reference")
    assert first["inputs"] == [{"name": "x", "shape": [1, 8], "dtype": "float32", "random": True}]
    assert first["outputs"][0]["shape"] == [1, 4]
    # softmax rows sum to one, so the mean of a [1, 4] output is exactly 1/4
    assert first["outputs"][0]["mean"] == pytest.approx(0.25, abs=1e-6)
    assert first["outputs"][0]["max"] == pytest.approx(second["outputs"][0]["max"], abs=1e-5)
    assert second["backends"] == ["reference"]


def test_run_rejects_unknown_input_name(mlp_path, tmp_path):
    np.save(tmp_path / "z.npy", np.zeros((1, 8), np.float32))
    code, _, err = invoke("run", mlp_path, "--input", f"nope={tmp_path / 'z.npy'}")
    assert code == 2 and "nope" in err


def test_bench_json_reports_ordered_latencies(mlp_path):
    report = invoke_json("bench", mlp_path, "--warmup", "1", "--repeat", "7", "--threads", "2")
    assert report["repeat"] == 7 and report["threads"] == 2
    assert 0 < report["min_ms"] <= report["median_ms"] <= report["p90_ms"]
    assert report["session_create_ms"] > 0


def test_demo_json_matches_onnx_reference():
    """The core's own demo (the deploy plugin, when installed, replaces `walle demo` with the
    whole device-cloud loop; that one is tested in plugins/deploy)."""
    from walle_core.cli.demo import demo
    from walle_core.cli.terminal import Terminal

    result = CliRunner().invoke(demo, ["--json"], obj=Terminal(), catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    image = np.random.default_rng(0).standard_normal((BATCH, 3, 32, 32)).astype(np.float32)
    (expected,) = onnx.reference.ReferenceEvaluator(example_cnn(seed=0)).run(None, {"image": image})
    assert report["predictions"] == expected.argmax(axis=1).tolist()
    assert report["outputs"][0]["mean"] == pytest.approx(float(expected.mean()), abs=1e-4)
    runs = {run["backend"]: run for run in report["runs"]}
    assert set(runs) == {"auto", "reference"}
    assert runs["reference"]["max_abs_diff"] == 0.0
    assert runs["auto"]["max_abs_diff"] < 1e-3
    # auto picks the native backend on this machine
    assert any(seg["backend"] == "cpu_x86" for seg in runs["auto"]["segments"])


def test_missing_model_file_is_a_one_line_error(tmp_path):
    missing = str(tmp_path / "missing.onnx")
    code, out, err = invoke("info", missing)
    assert code == 1
    assert "not found" in err and missing in err
    assert "Traceback" not in out + err


def test_malformed_model_is_a_one_line_error(tmp_path):
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"\x08\x07 this is not a protobuf \xff\xfe")
    code, out, err = invoke("run", str(path), "--json")
    assert code == 1
    assert out == ""  # nothing half-written on stdout
    assert err.startswith("error:") and "Traceback" not in err


def test_unsupported_op_error_names_the_op(tmp_path):
    node = helper.make_node("FrobnicateTensor", ["x"], ["y"], name="frob", domain="com.example")
    graph = helper.make_graph(
        [node], "unsupported", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    path = tmp_path / "unsupported.onnx"
    onnx.save(model, path)
    code, out, err = invoke("run", str(path))
    assert code == 1
    assert "FrobnicateTensor" in err and "Traceback" not in out + err


def test_plugin_commands_are_registered_through_the_hook():
    import click

    from walle_core import hookimpl, plugins

    class CommandPlugin:
        @hookimpl
        def walle_register_commands(self, cli):
            @cli.command(name="hello-plugin")
            def hello():
                click.echo("hello from a plugin")

    pm = plugins.get_plugin_manager()
    pm.register(CommandPlugin(), name="test_commands")
    try:
        code, out, _ = invoke("hello-plugin")
    finally:
        pm.unregister(name="test_commands")
    assert code == 0 and out.strip() == "hello from a plugin"
    assert "hello-plugin" not in build_cli().commands


def test_bench_profile_reports_where_time_goes(tmp_path, monkeypatch):
    monkeypatch.delenv("WALLE_PROFILE", raising=False)  # the command sets it; restored after the test
    path = tmp_path / "cnn.onnx"
    onnx.save(example_cnn(seed=0), path)
    report = invoke_json("bench", str(path), "--backend", "cpu_x86", "--repeat", "3", "--warmup", "1",
                         "--profile")
    profile = report["profile"]
    kinds = [p["kind"] for p in profile]
    assert any(k.startswith("cpu_x86:conv2d 3x3") for k in kinds), kinds
    assert sum(p["share"] for p in profile) == pytest.approx(1.0)
    assert [p["ms"] for p in profile] == sorted((p["ms"] for p in profile), reverse=True)
    assert all(p["ms"] > 0 for p in profile if p["kind"].startswith("cpu_x86:conv2d"))
