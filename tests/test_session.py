"""End-to-end sessions: ONNX in, results matching ONNX Runtime out, on every backend."""

from __future__ import annotations

import sys
import threading

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import walle_core as wc
from walle_core import plugins
from walle_core.errors import WalleError

ort = pytest.importorskip("onnxruntime")  # oracle only; installed by `make test`


def _init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def small_cnn(batch: int | str = 1, blocks: int = 1, seed: int = 0) -> onnx.ModelProto:
    """conv/bn/relu/pool/gemm with a residual block; ``blocks`` extra conv+relu pairs."""
    rng = np.random.default_rng(seed)
    w = lambda *s: (rng.standard_normal(s) * 0.3).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("BatchNormalization", ["c1", "g", "beta", "mean", "var"], ["bn"], epsilon=1e-5),
        helper.make_node("Relu", ["bn"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    ]
    inits = [_init("w1", w(8, 3, 3, 3)), _init("b1", w(8)), _init("g", 1 + w(8)), _init("beta", w(8)),
             _init("mean", w(8)), _init("var", np.abs(w(8)) + 0.5)]
    cur = "p1"
    for i in range(blocks):
        nodes += [helper.make_node("Conv", [cur, f"wb{i}"], [f"cb{i}"], pads=[1, 1, 1, 1]),
                  helper.make_node("Add", [f"cb{i}", cur], [f"ab{i}"]),
                  helper.make_node("Relu", [f"ab{i}"], [f"rb{i}"])]
        inits.append(_init(f"wb{i}", w(8, 8, 3, 3)))
        cur = f"rb{i}"
    nodes += [
        helper.make_node("GlobalAveragePool", [cur], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["prob"], axis=1),
    ]
    inits += [_init("fc_w", w(5, 8)), _init("fc_b", w(5))]
    graph = helper.make_graph(
        nodes, "small_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 16, 16])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [batch, 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def ort_run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


BACKENDS = [name for name in plugins.available_backends()]


def test_cpu_x86_is_installed_and_available():
    assert "cpu_x86" in BACKENDS, "the cpu_x86 backend must be built and installed for the test suite"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("threads", [1, 2])
def test_cnn_matches_onnxruntime(backend, threads):
    model = small_cnn(blocks=2)
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    sess = wc.load(model, backend=backend, threads=threads)
    got = sess.run({"x": x})
    (want,) = ort_run(model, {"x": x})
    assert list(got) == ["prob"]
    np.testing.assert_allclose(got["prob"], want, rtol=1e-4, atol=1e-5)


def test_cpu_x86_plan_is_one_native_segment():
    sess = wc.load(small_cnn(blocks=3), backend="cpu_x86")
    x = np.zeros((1, 3, 16, 16), np.float32)
    plan = sess.plan_for({"x": x})
    assert [name for name, _ in plan.segments] == ["cpu_x86"]
    assert plan.copies == 0


def _python_calls_during_run(sess, feeds) -> int:
    calls = 0

    def profiler(frame, event, arg):
        nonlocal calls
        if event == "call":
            calls += 1

    sess.run(feeds)  # warm up: planning happens outside the measured run
    sys.setprofile(profiler)
    try:
        sess.run(feeds)
    finally:
        sys.setprofile(None)
    return calls


def test_no_per_op_python_dispatch_on_cpu_x86():
    """Python work per run must not grow with the number of ops in the graph."""
    x = np.zeros((1, 3, 16, 16), np.float32)
    small = wc.load(small_cnn(blocks=1), backend="cpu_x86")
    large = wc.load(small_cnn(blocks=12), backend="cpu_x86")
    assert len(large.plan_for({"x": x}).graph.nodes) >= len(small.plan_for({"x": x}).graph.nodes) + 11
    assert _python_calls_during_run(large, {"x": x}) == _python_calls_during_run(small, {"x": x})


def test_load_from_path_bytes_and_proto(tmp_path):
    model = small_cnn()
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    x = np.random.default_rng(2).standard_normal((1, 3, 16, 16)).astype(np.float32)
    results = [wc.load(src, backend="reference").run({"x": x})["prob"]
               for src in (str(path), path, model.SerializeToString(), model)]
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


def test_dynamic_batch_replans_per_shape():
    model = small_cnn(batch="N")
    sess = wc.load(model, backend="auto")
    rng = np.random.default_rng(3)
    for batch in (1, 3, 1):
        x = rng.standard_normal((batch, 3, 16, 16)).astype(np.float32)
        np.testing.assert_allclose(sess.run({"x": x})["prob"], ort_run(model, {"x": x})[0], rtol=1e-4, atol=1e-5)
    assert len(sess._plans) == 2


def test_run_is_thread_safe_on_a_shared_session():
    model = small_cnn(blocks=2)
    sess = wc.load(model, backend="auto", threads=2)
    rng = np.random.default_rng(4)
    xs = [rng.standard_normal((1, 3, 16, 16)).astype(np.float32) for _ in range(8)]
    want = [ort_run(model, {"x": x})[0] for x in xs]
    got: list = [None] * len(xs)
    errors: list = []

    def work(i):
        try:
            for _ in range(5):
                got[i] = sess.run({"x": xs[i]})["prob"]
        except Exception as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("feeds,message", [
    ({}, "missing \\['x'\\]"),
    ({"x": np.zeros((1, 3, 16, 16), np.float64)}, "dtype float64 does not match float32"),
    ({"x": np.zeros((1, 3, 8, 16), np.float32)}, "shape \\(1, 3, 8, 16\\) does not match"),
    ({"x": np.zeros((1, 3, 16, 16), np.float32), "y": np.zeros(1)}, "unexpected \\['y'\\]"),
])
def test_bad_feeds_are_clear_errors(feeds, message):
    sess = wc.load(small_cnn(), backend="reference")
    with pytest.raises(WalleError, match=message):
        sess.run(feeds)


def test_info_reports_decompositions():
    info = wc.load(small_cnn(), backend="reference").info()
    assert info["onnx_ops"]["Conv"] == 2
    assert "conv2d" in info["atomic_ops"]
    assert set(info["decompositions"]) <= set(info["onnx_ops"])
    assert info["outputs"] == ["prob"]


def _sequence_model() -> onnx.ModelProto:
    """y = concat(seq, axis 0) + t; also returns the sequence with t appended, and o passed through."""
    opt = helper.make_optional_type_proto(helper.make_tensor_type_proto(TensorProto.INT64, [2]))
    graph = helper.make_graph(
        [helper.make_node("ConcatFromSequence", ["seq"], ["cat"], axis=0),
         helper.make_node("Add", ["cat", "t"], ["y"]),
         helper.make_node("SequenceInsert", ["seq", "t"], ["more"]),
         helper.make_node("Identity", ["o"], ["o_out"])],
        "seq",
        [helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 3]),
         helper.make_value_info("o", opt)],
        [helper.make_empty_tensor_value_info(n) for n in ("y", "more", "o_out")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_sequence_and_optional_inputs_and_outputs():
    sess = wc.load(_sequence_model())
    assert [(s.name, s.kind) for s in sess.inputs] == [("seq", "sequence"), ("t", "tensor"), ("o", "optional")]
    t = np.arange(3, dtype=np.float32).reshape(1, 3)
    seq = [np.ones((2, 3), np.float32), np.full((1, 3), 2, np.float32)]
    out = sess.run({"seq": seq, "t": t, "o": np.array([4, 5], np.int64)})
    np.testing.assert_array_equal(out["y"], np.concatenate(seq) + t)
    assert [a.tolist() for a in out["more"]] == [a.tolist() for a in [*seq, t]]
    assert out["o_out"].tolist() == [4, 5]
    assert sess.run({"seq": seq, "t": t, "o": None})["o_out"] is None


def test_sequence_plans_are_keyed_by_length_and_element_shapes():
    sess = wc.load(_sequence_model(), backend="reference")
    t = np.zeros((1, 3), np.float32)
    first = sess.plan_for({"seq": [np.zeros((2, 3), np.float32)], "t": t, "o": None})
    assert first.graph.inputs == ["seq[0]", "t"]  # the IR holds tensors only
    assert sess.plan_for({"seq": [np.ones((2, 3), np.float32)], "t": t, "o": None}) is first
    longer = sess.plan_for({"seq": [np.zeros((2, 3), np.float32)] * 2, "t": t, "o": None})
    wider = sess.plan_for({"seq": [np.zeros((4, 3), np.float32)], "t": t, "o": None})
    present = sess.plan_for({"seq": [np.zeros((2, 3), np.float32)], "t": t, "o": np.zeros(2, np.int64)})
    assert len({id(first), id(longer), id(wider), id(present)}) == 4
    assert longer.graph.inputs == ["seq[0]", "seq[1]", "t"] and "o" in present.graph.inputs


@pytest.mark.parametrize("feeds,message", [
    ({"seq": np.zeros((1, 3), np.float32)}, "'seq': a sequence input takes a list of arrays"),
    ({"seq": [np.zeros((1, 3), np.float64)]}, "'seq\\[0\\]': dtype float64 does not match float32"),
    ({"seq": [], "t": None}, "'t': None given for a tensor input"),
    ({"o": np.zeros(2, np.float32)}, "'o': dtype float32 does not match int64"),
])
def test_bad_sequence_and_optional_feeds_are_clear_errors(feeds, message):
    good = {"seq": [np.zeros((1, 3), np.float32)], "t": np.zeros((1, 3), np.float32), "o": None}
    with pytest.raises(WalleError, match=message):
        wc.load(_sequence_model(), backend="reference").run({**good, **feeds})
