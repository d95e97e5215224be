"""The opencl backend (run on PoCL in CI): kernels beyond the shared conformance cases, device
tensors, hybrid plans with copies, whole models against ONNX Runtime, and the binary cache.

The shared per-op suite (tests/test_atomic_ops.py) already runs every supported atomic op on this
backend; these tests cover what is specific to a device backend.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

walle_opencl = pytest.importorskip("walle_opencl")

import walle_core as wc
from walle_core import ops
from walle_core.backend import Segment
from walle_core.errors import BackendError
from walle_core.ir import GraphBuilder, Node, TensorType
from walle_core.ops import Activation, BinaryFn, Op, ReduceFn, UnaryFn
from walle_core.testing.models import example_cnn
from walle_opencl import DeviceTensor, OpenCLBackend
from walle_opencl import device as cl_device

AVAILABILITY = OpenCLBackend.availability()
requires_device = pytest.mark.skipif(not AVAILABILITY.available,
                                     reason=f"no OpenCL device: {AVAILABILITY.reason}")

rng = np.random.default_rng(7)


def f32(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def test_availability_is_explained():
    """Whatever the machine, availability() either names a device or says why not."""
    if AVAILABILITY.available:
        assert AVAILABILITY.device and not AVAILABILITY.reason
    else:
        assert AVAILABILITY.reason


def test_without_a_platform_the_rest_of_walle_still_works(tmp_path):
    """An ICD loader pointed at an empty vendor folder sees no platform, as on a machine without
    OpenCL: the backend explains itself, ``auto`` leaves it out, and models still run."""
    code = (
        "import json, numpy as np, walle_core as wc\n"
        "from walle_core.testing.models import example_cnn\n"
        "from walle_opencl import OpenCLBackend\n"
        "a = OpenCLBackend.availability()\n"
        "s = wc.load(example_cnn(), backend='auto')\n"
        "y = s.run({'image': np.zeros((1, 3, 32, 32), np.float32)})['logits']\n"
        "names = sorted({b for b, _ in s.plan_for({'image': (1, 3, 32, 32)}).segments})\n"
        "print(json.dumps({'available': a.available, 'reason': a.reason, 'shape': list(y.shape), 'used': names}))\n"
    )
    env = dict(os.environ, OCL_ICD_VENDORS=str(tmp_path), PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["available"] is False
    assert report["reason"] == "no OpenCL platform found"
    assert report["shape"] == [1, 10] and "opencl" not in report["used"]


@pytest.fixture(scope="module")
def backend():
    if not AVAILABILITY.available:
        pytest.skip(f"no OpenCL device: {AVAILABILITY.reason}")
    return OpenCLBackend()


def run_one(backend, op, attrs, inputs):
    b = GraphBuilder()
    names = [b.add_input(f"in{i}", TensorType(a.dtype, a.shape)) for i, a in enumerate(inputs)]
    outs = b.emit(op, names, attrs)
    seg = Segment(b.graph.nodes, names, outs, dict(b.graph.types), {})
    assert backend.supports(seg.nodes[0], seg.types)
    return [backend.to_host(o) for o in backend.compile(seg).run(list(inputs))]


# --- the scheduler contract -----------------------------------------------------------


def test_declines_what_it_lacks(backend):
    b = GraphBuilder()
    x = b.add_input("x", TensorType(np.dtype(np.float32), (3, 4)))
    i = b.add_input("i", TensorType(np.dtype(np.int64), (3, 4)))
    b.emit(Op.TOPK, [x], ops.TopKAttrs(1, 2), n_outputs=2)
    b.emit(Op.CUMULATIVE, [x], ops.CumulativeAttrs(0))
    b.emit(Op.ARG_REDUCE, [x], ops.ArgReduceAttrs(0, False, True))
    b.emit(Op.BINARY, [i, i], ops.BinaryAttrs(BinaryFn.ADD))  # int64 arithmetic
    b.emit(Op.CAST, [x], ops.CastAttrs(np.dtype(np.int32), bitcast=True))
    for node in b.graph.nodes:
        assert not backend.supports(node, b.graph.types), node.op
    assert OpenCLBackend.memory_domain == "opencl"
    assert OpenCLBackend.priority < 100


# --- kernels beyond the shared cases ----------------------------------------------------


@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False), (False, True), (True, True)])
def test_matmul_batched_broadcast_bias_activation(backend, trans_a, trans_b):
    # sizes straddle the 16x16 tile; the batch dims broadcast and the bias broadcasts per row
    m, k, n = 19, 37, 23
    a = f32(2, 1, *((k, m) if trans_a else (m, k)))
    b = f32(3, *((n, k) if trans_b else (k, n)))
    bias = f32(1, m, 1)
    attrs = ops.MatMulAttrs(trans_a, trans_b, Activation(UnaryFn.LEAKY_RELU, 0.1))
    (got,) = run_one(backend, Op.MATMUL, attrs, [a, b, bias])
    am = np.swapaxes(a, -1, -2) if trans_a else a
    bm = np.swapaxes(b, -1, -2) if trans_b else b
    y = am.astype(np.float64) @ bm + bias
    np.testing.assert_allclose(got, np.where(y >= 0, y, 0.1 * y), rtol=1e-4, atol=1e-4)


def test_raster_rank8_negative_strides(backend):
    x = f32(2, 2, 1, 2, 3, 2, 1, 2)
    perm = (7, 0, 6, 1, 5, 2, 4, 3)
    want = np.transpose(x, perm)[::-1]
    src_strides = [s // 4 for s in np.transpose(x, perm).strides]
    size = want.shape
    src_strides[0] = -src_strides[0]
    region = ops.Region(0, size, (size[0] - 1) * -src_strides[0], tuple(src_strides), 0,
                        tuple(s // 4 for s in np.empty(size, np.float32).strides))
    (got,) = run_one(backend, Op.RASTER, ops.RasterAttrs(size, (region,)), [x])
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("src", [np.float32, np.int32, np.int64, bool])
@pytest.mark.parametrize("dst", [np.float32, np.int32, np.int64, bool])
def test_cast_matrix(backend, src, dst):
    x = (f32(5, 3) * 50).astype(src)
    (got,) = run_one(backend, Op.CAST, ops.CastAttrs(np.dtype(dst)), [x])
    np.testing.assert_array_equal(got, x.astype(dst))


def test_select_broadcast_int64(backend):
    cond = rng.random((3, 1)) < 0.5
    a = rng.integers(-9, 9, (4,)).astype(np.int64)
    b = rng.integers(-9, 9, (3, 4)).astype(np.int64)
    (got,) = run_one(backend, Op.SELECT, ops.SelectAttrs(), [cond, a, b])
    np.testing.assert_array_equal(got, np.where(cond, a, b))


def test_comparison_gives_bool(backend):
    a, b = np.round(f32(3, 4)), np.round(f32(4))
    (got,) = run_one(backend, Op.BINARY, ops.BinaryAttrs(BinaryFn.LE), [a, b])
    assert got.dtype == np.bool_
    np.testing.assert_array_equal(got, a <= b)


def test_reduce_large_mean(backend):
    x = f32(2, 64, 33, 17)
    (got,) = run_one(backend, Op.REDUCE, ops.ReduceAttrs(ReduceFn.MEAN, (2, 3), True), [x])
    np.testing.assert_allclose(got, x.mean(axis=(2, 3), keepdims=True), rtol=1e-4, atol=1e-5)


def test_gather_out_of_range_is_an_error(backend):
    x = f32(4, 3)
    with pytest.raises(BackendError, match="gather.*out of range"):
        run_one(backend, Op.GATHER, ops.GatherAttrs(0), [x, np.array([0, 4], np.int64)])
    # the same plan then runs a good index without a stale flag
    (got,) = run_one(backend, Op.GATHER, ops.GatherAttrs(0), [x, np.array([-4, 3], np.int32)])
    np.testing.assert_array_equal(got, x[[0, 3]])


def test_bad_region_is_rejected_at_compile(backend):
    # built by hand: GraphBuilder would already refuse this region
    f = TensorType(np.dtype(np.float32), (4,))
    region = ops.Region(0, (4,), 1, (1,), 0, (1,))  # reads element 4 of 4
    node = Node(Op.RASTER, ["x"], ["y"], ops.RasterAttrs((4,), (region,)))
    seg = Segment([node], ["x"], ["y"], {"x": f, "y": f}, {})
    with pytest.raises(BackendError, match="region 0 source"):
        backend.compile(seg)


# --- segments: device residency, constants, concurrency --------------------------------


def _chain_segment():
    """conv -> relu -> matmul, with a constant weight, an intermediate and a repeated output."""
    b = GraphBuilder()
    x = b.add_input("x", TensorType(np.dtype(np.float32), (1, 2, 5, 5)))
    w = b.constant(f32(3, 2, 3, 3), "w")
    c = b.emit1(Op.CONV2D, [x, w], ops.Conv2DAttrs(pads=(1, 1, 1, 1)))
    r = b.emit1(Op.UNARY, [c], ops.UnaryAttrs(UnaryFn.RELU))
    m = b.constant(f32(5, 4), "m")
    y = b.emit1(Op.MATMUL, [r, m], ops.MatMulAttrs())
    g = b.graph
    return Segment(g.nodes, [x], [y, y, w], dict(g.types), dict(g.constants)), (g.constants[w], g.constants[m])


def _chain_expected(x, consts):
    w, m = consts
    conv = np.zeros((1, 3, 5, 5), np.float64)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    for i in range(3):
        for j in range(3):
            conv += np.einsum("nchw,oc->nohw", xp[:, :, i:i + 5, j:j + 5], w[:, :, i, j])
    return np.maximum(conv, 0) @ m


def test_segment_outputs_stay_on_device_and_chain(backend):
    seg, consts = _chain_segment()
    exe = backend.compile(seg)
    x = f32(1, 2, 5, 5)
    dev_x = backend.to_device(x)
    assert isinstance(dev_x, DeviceTensor)
    y1, y2, w = exe.run([dev_x])
    assert all(isinstance(t, DeviceTensor) for t in (y1, y2, w))
    assert y1.buffer is not y2.buffer
    want = _chain_expected(x, consts)
    np.testing.assert_allclose(backend.to_host(y1), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(backend.to_host(y2), backend.to_host(y1))
    np.testing.assert_array_equal(backend.to_host(w), consts[0])


def test_run_checks_inputs(backend):
    seg, _ = _chain_segment()
    exe = backend.compile(seg)
    with pytest.raises(ValueError, match="input 'x'"):
        exe.run([f32(1, 2, 5, 4)])
    with pytest.raises(ValueError, match="expected 1 inputs"):
        exe.run([])


def test_one_executable_many_threads(backend):
    seg, consts = _chain_segment()
    exe = backend.compile(seg)
    xs = [f32(1, 2, 5, 5) for _ in range(8)]

    def work(x):
        return backend.to_host(exe.run([x])[0])

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(work, xs))
    for x, got in zip(xs, results):
        np.testing.assert_allclose(got, _chain_expected(x, consts), rtol=1e-4, atol=1e-4)


# --- whole models ------------------------------------------------------------------------


def _ort(model, feeds):
    import onnxruntime

    sess = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


@requires_device
def test_cnn_on_opencl_alone_matches_onnxruntime():
    model = example_cnn(seed=3)
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    sess = wc.load(model, backend=["opencl"])
    got = sess.run({"image": x})
    plan = sess.plan_for({"image": x})
    assert {name for name, _ in plan.segments} == {"opencl"}
    (want,) = _ort(model, {"image": x})
    np.testing.assert_allclose(got["logits"], want, rtol=1e-3, atol=1e-3)


def _hybrid_model():
    """conv -> CumSum (not on opencl) -> relu -> conv -> TopK (not on opencl) -> outputs."""
    r = np.random.default_rng(11)
    inits = [numpy_helper.from_array((r.standard_normal(s) * 0.3).astype(np.float32), n)
             for n, s in (("w1", (4, 3, 3, 3)), ("w2", (4, 4, 3, 3)))]
    inits += [numpy_helper.from_array(np.array(3, np.int64), "axis"),
              numpy_helper.from_array(np.array([3], np.int64), "k")]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("CumSum", ["c1", "axis"], ["cs"]),
        helper.make_node("Relu", ["cs"], ["r"]),
        helper.make_node("Conv", ["r", "w2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("TopK", ["c2", "k"], ["values", "indices"], axis=3),
    ]
    graph = helper.make_graph(nodes, "hybrid", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("values", TensorProto.FLOAT, [1, 4, 8, 3]),
                               helper.make_tensor_value_info("indices", TensorProto.INT64, [1, 4, 8, 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@requires_device
def test_hybrid_plan_copies_and_is_right():
    model = _hybrid_model()
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    sess = wc.load(model, backend=["opencl"])  # the reference backend is appended as the fallback
    plan = sess.plan_for({"x": x})
    backends = [name for name, _ in plan.segments]
    assert "opencl" in backends and len(set(backends)) > 1, backends
    assert plan.copies > 0
    got = sess.run({"x": x})
    want_values, want_indices = _ort(model, {"x": x})
    np.testing.assert_allclose(got["values"], want_values, rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(got["indices"], want_indices)


# --- program binary cache ----------------------------------------------------------------


@requires_device
def test_binary_cache_hit_on_second_build(tmp_path, monkeypatch):
    monkeypatch.setenv(cl_device.CACHE_ENV, str(tmp_path))
    context = cl_device.shared_device().context
    source = cl_device.kernel_source()
    first = cl_device.load_program(context, source)
    assert not first.from_binary
    entries = list((tmp_path / "opencl").glob("*.bin"))
    assert len(entries) == 1 and entries[0].stat().st_size > 0
    second = cl_device.load_program(context, source)
    assert second.from_binary
    # a changed source is a different key, never a stale hit
    third = cl_device.load_program(context, source + "\n// changed\n")
    assert not third.from_binary
    assert len(list((tmp_path / "opencl").glob("*.bin"))) == 2


@requires_device
def test_corrupt_cache_entry_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv(cl_device.CACHE_ENV, str(tmp_path))
    context = cl_device.shared_device().context
    source = cl_device.kernel_source() + "\n// corrupt test\n"
    cl_device.load_program(context, source)
    (entry,) = (tmp_path / "opencl").glob("*.bin")
    entry.write_bytes(b"not a binary")
    program = cl_device.load_program(context, source)
    assert not program.from_binary
    assert cl_device.load_program(context, source).from_binary
