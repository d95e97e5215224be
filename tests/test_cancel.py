"""Cancelling runs in flight: the token itself, the default check around a segment, the cpu_x86
plan stopping between ops and blocks, and the container stopping a task stuck in a native run."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import walle_core as wc


def matmul_chain(layers: int, n: int = 1024) -> onnx.ModelProto:
    """x @ W @ W ... : ``layers`` MatMul ops of n x n sharing one weight, about 30 ms each on one
    core at n = 1024."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array((rng.standard_normal((n, n)) / np.sqrt(n)).astype(np.float32), "w")
    names = ["x"] + [f"h{i}" for i in range(layers)]
    nodes = [helper.make_node("MatMul", [names[i], "w"], [names[i + 1]]) for i in range(layers)]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, n])],
                              [helper.make_tensor_value_info(names[-1], TensorProto.FLOAT, [n, n])], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_token_calls_subscribers_once_and_late_subscribers_at_once() -> None:
    token = wc.CancelToken()
    calls: list[str] = []
    token.subscribe(lambda: calls.append("a"))
    unsubscribe = token.subscribe(lambda: calls.append("b"))
    unsubscribe()
    assert not token.cancelled
    token.cancel()
    token.cancel()
    assert token.cancelled and calls == ["a"]
    token.subscribe(lambda: calls.append("late"))
    assert calls == ["a", "late"]
    with pytest.raises(wc.RunCancelled, match="step cancelled"):
        token.raise_if_cancelled("step")


def test_cancelled_token_stops_a_reference_run_before_it_starts() -> None:
    session = wc.load(matmul_chain(2, n=8), backend="reference")
    x = np.ones((8, 8), np.float32)
    token = wc.CancelToken()
    assert session.run({"x": x}, cancel=token)["h1"].shape == (8, 8)  # not cancelled: a normal run
    token.cancel()
    with pytest.raises(wc.RunCancelled):
        session.run({"x": x}, cancel=token)


def test_cpu_x86_run_stops_between_ops_when_cancelled_from_another_thread() -> None:
    layers = 40  # over 1 s of work: the cancel 0.1 s in lands well inside the run
    session = wc.load(matmul_chain(layers), backend="cpu_x86")
    x = np.random.default_rng(1).standard_normal((1024, 1024)).astype(np.float32)
    token = wc.CancelToken()
    timer = threading.Timer(0.1, token.cancel)
    timer.start()
    with pytest.raises(wc.RunCancelled) as info:
        session.run({"x": x}, cancel=token)
    timer.join()
    done = int(str(info.value).split("after ")[1].split(" of")[0])
    assert f"of {layers} ops" in str(info.value) and done < layers
    # the session is unharmed: the next run completes and is right
    small = wc.load(matmul_chain(2, n=64), backend="cpu_x86")
    y = np.ones((64, 64), np.float32)
    w = numpy_helper.to_array(matmul_chain(2, n=64).graph.initializer[0])
    np.testing.assert_allclose(small.run({"x": y}, cancel=wc.CancelToken())["h1"], y @ w @ w, rtol=1e-4, atol=1e-4)
    assert session.run({"x": x}, cancel=wc.CancelToken())[f"h{layers - 1}"].shape == (1024, 1024)


def test_container_timeout_stops_a_task_inside_a_native_run(tmp_path: Path) -> None:
    from walle_core.container import Container, TaskFailed
    from walle_core.container.container import GRACE_S

    root = tmp_path / "slow"
    root.mkdir()
    (root / "chain.onnx").write_bytes(matmul_chain(60).SerializeToString())
    (root / "main.py").write_text(
        "import numpy as np\n\ndef run(ctx, inputs):\n"
        "    x = np.ones((1024, 1024), np.float32)\n"
        "    return ctx.model('chain').run({'x': x})\n")
    (root / "task.toml").write_text('name = "slow"\nversion = "1"\nentry = "main.py"\nmodels = ["chain.onnx"]\n'
                                    "[limits]\ntimeout_s = 0.3\n")
    assert 2 * 0.3 < GRACE_S
    with Container(workers=1, state_dir=tmp_path / "state") as box:
        with pytest.raises(TaskFailed) as info:
            box.submit(root).result(30)
        assert info.value.status == "timeout"
        # The whole chain takes seconds, past timeout + grace; only a native run that ended at the
        # cancel lets the worker thread unwind within the grace period instead of being given up.
        assert box.stats()["abandoned_threads"] == 0
