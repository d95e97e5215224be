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
from walle_opencl import tuning as cl_tuning

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
    d = b.add_input("d", TensorType(np.dtype(np.float64), (3, 4)))
    b.emit(Op.TOPK, [i], ops.TopKAttrs(1, 2), n_outputs=2)  # int64 selection
    b.emit(Op.CUMULATIVE, [i], ops.CumulativeAttrs(0))
    b.emit(Op.UNARY, [i], ops.UnaryAttrs(UnaryFn.ABS))  # int64 unary math
    b.emit(Op.BINARY, [d, d], ops.BinaryAttrs(BinaryFn.ADD))  # float64 arithmetic
    b.emit(Op.REDUCE, [i], ops.ReduceAttrs(ReduceFn.SUM, (0,), False))
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


# integer BINARY semantics, spelled out on Python ints and wrapped to the dtype's width
_INT_ORACLE = {
    BinaryFn.ADD: lambda a, b, bits: a + b,
    BinaryFn.SUB: lambda a, b, bits: a - b,
    BinaryFn.MUL: lambda a, b, bits: a * b,
    BinaryFn.DIV: lambda a, b, bits: 0 if b == 0 else (abs(a) // abs(b)) * (1 if (a < 0) == (b < 0) else -1),
    BinaryFn.MOD: lambda a, b, bits: 0 if b == 0 else a % b,
    BinaryFn.FMOD: lambda a, b, bits: 0 if b == 0 else (abs(a) % abs(b)) * (-1 if a < 0 else 1),
    BinaryFn.POW: lambda a, b, bits: a**b if b >= 0 else int(1 / a**-b),
    BinaryFn.MAX: lambda a, b, bits: max(a, b),
    BinaryFn.MIN: lambda a, b, bits: min(a, b),
    BinaryFn.BIT_AND: lambda a, b, bits: a & b,
    BinaryFn.BIT_OR: lambda a, b, bits: a | b,
    BinaryFn.BIT_XOR: lambda a, b, bits: a ^ b,
    BinaryFn.SHL: lambda a, b, bits: a << b if b < bits else 0,
    BinaryFn.SHR: lambda a, b, bits: a >> min(b, bits),
    BinaryFn.EQ: lambda a, b, bits: a == b,
    BinaryFn.NE: lambda a, b, bits: a != b,
    BinaryFn.LT: lambda a, b, bits: a < b,
    BinaryFn.LE: lambda a, b, bits: a <= b,
    BinaryFn.GT: lambda a, b, bits: a > b,
    BinaryFn.GE: lambda a, b, bits: a >= b,
}


def _int_operands(fn, dtype):
    info = np.iinfo(dtype)
    a = np.array([7, -7, 7, -7, 0, 13, -13, info.min, info.max, 5, -3, 100, -100, 1, -1, 2, 3, info.min], dtype)
    if fn in (BinaryFn.SHL, BinaryFn.SHR):
        b = np.array([0, 1, 2, 3, 5, 7, info.bits - 1, 1, 1, info.bits, info.bits + 3, 4, 4, 9, 9, 30, 2, 0], dtype)
    elif fn is BinaryFn.POW:
        a = np.clip(a, -9, 9)
        a[a == 0] = 2  # 0 ** negative has no integer answer
        b = np.array([2, 3, -1, -2, 0, 5, 3, 7, 1, 0, 4, 2, 3, -3, -5, 40, 9, 1], dtype)
    else:
        b = np.array([2, 2, -2, -2, 3, 0, 0, -1, -1, 5, 9, -7, 7, 1, 1, -3, 3, 1], dtype)
    return a, b


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
@pytest.mark.parametrize("fn", list(_INT_ORACLE))
def test_integer_binary(backend, fn, dtype):
    a, b = _int_operands(fn, dtype)
    bits = np.iinfo(dtype).bits
    wrap = 1 << bits
    want = [_INT_ORACLE[fn](int(x), int(y), bits) for x, y in zip(a, b)]
    if fn in ops.COMPARISON_FNS:
        want = np.array(want, bool)
    else:
        want = np.array([(v + wrap // 2) % wrap - wrap // 2 for v in want], dtype)
    (got,) = run_one(backend, Op.BINARY, ops.BinaryAttrs(fn), [a, b])
    np.testing.assert_array_equal(got, want)


def test_integer_binary_broadcasts(backend):
    a = rng.integers(-50, 50, (2, 3, 4)).astype(np.int32)
    b = rng.integers(1, 9, (3, 1)).astype(np.int32)
    (got,) = run_one(backend, Op.BINARY, ops.BinaryAttrs(BinaryFn.MOD), [a, b])
    np.testing.assert_array_equal(got, np.mod(a, b))


@pytest.mark.parametrize("fn,f", [(BinaryFn.AND, np.logical_and), (BinaryFn.OR, np.logical_or),
                                  (BinaryFn.XOR, np.logical_xor), (BinaryFn.EQ, np.equal),
                                  (BinaryFn.NE, np.not_equal), (BinaryFn.LT, np.less), (BinaryFn.GE, np.greater_equal)])
def test_bool_binary(backend, fn, f):
    a, b = rng.random((3, 4)) < 0.5, rng.random((4,)) < 0.5
    (got,) = run_one(backend, Op.BINARY, ops.BinaryAttrs(fn), [a, b])
    np.testing.assert_array_equal(got, f(a, b))


def test_bool_not(backend):
    a = rng.random((5, 3)) < 0.5
    (got,) = run_one(backend, Op.UNARY, ops.UnaryAttrs(UnaryFn.NOT), [a])
    np.testing.assert_array_equal(got, ~a)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.float16, np.uint32, np.float64, np.uint64])
def test_movement_of_any_element_size(backend, dtype):
    x = (f32(3, 4) * 20).astype(dtype)
    region = ops.Region(0, (4, 3), 0, (1, 4), 6, (3, 1))
    (got,) = run_one(backend, Op.RASTER, ops.RasterAttrs((5, 4), (region,), fill=7.0), [x])
    want = np.full(20, 7, dtype)
    want[6:18] = x.T.reshape(-1)
    np.testing.assert_array_equal(got, want.reshape(5, 4))
    idx = np.array([[2, -1], [0, 1]], np.int32)
    (got,) = run_one(backend, Op.GATHER, ops.GatherAttrs(1), [x, idx])
    np.testing.assert_array_equal(got, np.take(x, idx, axis=1))
    cond = rng.random((3, 1)) < 0.5
    (got,) = run_one(backend, Op.SELECT, ops.SelectAttrs(), [cond, x, x[0]])
    np.testing.assert_array_equal(got, np.where(cond, x, x[0]))


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("largest", [True, False])
@pytest.mark.parametrize("last", [True, False])
def test_arg_reduce(backend, axis, largest, last):
    x = np.round(f32(3, 5, 4))  # rounding makes ties likely
    (got,) = run_one(backend, Op.ARG_REDUCE, ops.ArgReduceAttrs(axis, False, largest, last), [x])
    y = x if largest else -x
    if last:
        want = y.shape[axis] - 1 - np.argmax(np.flip(y, axis), axis)
    else:
        want = np.argmax(y, axis)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, want)
    (kept,) = run_one(backend, Op.ARG_REDUCE, ops.ArgReduceAttrs(axis, True, largest, last), [x])
    np.testing.assert_array_equal(kept, np.expand_dims(want, axis))


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("exclusive", [True, False])
@pytest.mark.parametrize("reverse", [True, False])
def test_cumulative(backend, axis, exclusive, reverse):
    x = f32(3, 6, 5)
    y = np.flip(x, axis) if reverse else x
    want = np.cumsum(y.astype(np.float64), axis)
    if exclusive:
        want = want - y
    want = np.flip(want, axis) if reverse else want
    (got,) = run_one(backend, Op.CUMULATIVE, ops.CumulativeAttrs(axis, exclusive, reverse), [x])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("axis,k", [(0, 3), (1, 1), (1, 7), (2, 4)])
@pytest.mark.parametrize("largest", [True, False])
def test_topk_with_ties(backend, axis, k, largest):
    x = np.round(f32(4, 7, 5) * 2)  # many ties: the lower index must come first
    order = np.argsort(-x if largest else x, axis=axis, kind="stable")
    want_i = np.take(order, np.arange(k), axis=axis)
    values, indices = run_one(backend, Op.TOPK, ops.TopKAttrs(axis, k, largest), [x])
    np.testing.assert_array_equal(indices, want_i)
    np.testing.assert_array_equal(values, np.take_along_axis(x, want_i, axis))


@pytest.mark.parametrize("dtype", [np.float32, np.int32, np.int64])
@pytest.mark.parametrize("reduction", [None, BinaryFn.ADD, BinaryFn.MUL, BinaryFn.MAX, BinaryFn.MIN])
def test_scatter_reductions_in_order(backend, dtype, reduction):
    data = (f32(5, 2, 3) * 4).astype(dtype)
    idx = np.array([3, -1, 0, 3, 4, 3], np.int64)
    upd = (f32(6, 2, 3) * 4).astype(dtype)
    want = data.copy()
    for i, row in enumerate(idx):
        if reduction is None:
            want[row] = upd[i]
        else:
            f = {BinaryFn.ADD: np.add, BinaryFn.MUL: np.multiply, BinaryFn.MAX: np.maximum,
                 BinaryFn.MIN: np.minimum}[reduction]
            want[row] = f(want[row], upd[i])
    (got,) = run_one(backend, Op.SCATTER, ops.ScatterAttrs(reduction), [data, idx, upd])
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_scatter_out_of_range_is_an_error(backend):
    data, upd = f32(4, 3), f32(2, 3)
    with pytest.raises(BackendError, match="scatter.*out of range"):
        run_one(backend, Op.SCATTER, ops.ScatterAttrs(), [data, np.array([1, -5], np.int64), upd])
    (got,) = run_one(backend, Op.SCATTER, ops.ScatterAttrs(), [data, np.array([1, -4], np.int64), upd])
    np.testing.assert_array_equal(got, np.stack([upd[1], upd[0], data[2], data[3]]))


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


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int64])
def test_scalars_keep_rank_zero_on_device(backend, dtype):
    """A 0-d tensor (or a NumPy scalar, as ONNX's tests feed) uploads as shape (), so a segment
    typed with a scalar input accepts it."""
    x = f32(3, 4).astype(dtype)
    scale = dtype(2)
    t = backend.to_device(scale)
    assert t.shape == () and t.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(backend.to_host(t), np.asarray(scale))
    b = GraphBuilder()
    names = [b.add_input("x", TensorType(x.dtype, x.shape)), b.add_input("s", TensorType(x.dtype, ()))]
    y = b.emit1(Op.BINARY, names, ops.BinaryAttrs(BinaryFn.MUL))
    exe = backend.compile(Segment(b.graph.nodes, names, [y], dict(b.graph.types), {}))
    (got,) = exe.run([backend.to_device(x), t])
    np.testing.assert_array_equal(backend.to_host(got), x * scale)


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


def _conv(name, x, out, cin, cout, k, r, inits, group=1, stride=1):
    w = (r.standard_normal((cout, cin // group, k, k)) * (1.0 / np.sqrt(cin // group * k * k))).astype(np.float32)
    b = (r.standard_normal(cout) * 0.1).astype(np.float32)
    inits += [numpy_helper.from_array(w, f"{name}_w"), numpy_helper.from_array(b, f"{name}_b")]
    return helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [out], group=group, strides=[stride, stride],
                            pads=[k // 2] * 4)


def _cnn_model(kind):
    """A 32x32 classifier in the shared models' family: ``mobilenet`` (inverted residual: pointwise
    expand, depthwise 3x3, pointwise project, skip add) or ``resnet`` (two 3x3 convs + skip add)."""
    r = np.random.default_rng(5)
    inits: list = []
    nodes = [_conv("stem", "x", "s", 3, 8, 3, r, inits, stride=2), helper.make_node("Relu", ["s"], ["s_r"])]
    if kind == "mobilenet":
        nodes += [_conv("exp", "s_r", "e", 8, 16, 1, r, inits), helper.make_node("Clip", ["e", "lo", "hi"], ["e_r"]),
                  _conv("dw", "e_r", "d", 16, 16, 3, r, inits, group=16),
                  helper.make_node("Clip", ["d", "lo", "hi"], ["d_r"]),
                  _conv("proj", "d_r", "p", 16, 8, 1, r, inits), helper.make_node("Add", ["p", "s_r"], ["body"])]
        inits += [numpy_helper.from_array(np.array(0, np.float32), "lo"),
                  numpy_helper.from_array(np.array(6, np.float32), "hi")]
    else:
        nodes += [_conv("c1", "s_r", "a", 8, 8, 3, r, inits), helper.make_node("Relu", ["a"], ["a_r"]),
                  _conv("c2", "a_r", "b", 8, 8, 3, r, inits), helper.make_node("Add", ["b", "s_r"], ["sum"]),
                  helper.make_node("Relu", ["sum"], ["body"])]
    fc = (r.standard_normal((8, 10)) * 0.3).astype(np.float32)
    inits.append(numpy_helper.from_array(fc, "fc"))
    nodes += [helper.make_node("GlobalAveragePool", ["body"], ["g"]),
              helper.make_node("Flatten", ["g"], ["f"]), helper.make_node("MatMul", ["f", "fc"], ["logits"])]
    graph = helper.make_graph(nodes, kind, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 32, 32])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [2, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@requires_device
@pytest.mark.parametrize("kind", ["mobilenet", "resnet"])
def test_shared_cnn_family_on_opencl_alone_matches_onnxruntime(kind):
    model = _cnn_model(kind)
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    sess = wc.load(model, backend=["opencl"])
    plan = sess.plan_for({"x": x})
    assert {name for name, _ in plan.segments} == {"opencl"}, plan.segments
    got = sess.run({"x": x})["logits"]
    (want,) = _ort(model, {"x": x})
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)


def _hybrid_model():
    """conv -> CumSum -> int64 Abs (not on opencl) -> relu -> conv -> TopK -> outputs."""
    r = np.random.default_rng(11)
    inits = [numpy_helper.from_array((r.standard_normal(s) * 0.3).astype(np.float32), n)
             for n, s in (("w1", (4, 3, 3, 3)), ("w2", (4, 4, 3, 3)))]
    inits += [numpy_helper.from_array(np.array(3, np.int64), "axis"),
              numpy_helper.from_array(np.array([3], np.int64), "k")]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("CumSum", ["c1", "axis"], ["cs"]),
        helper.make_node("Cast", ["cs"], ["ci"], to=TensorProto.INT64),
        helper.make_node("Abs", ["ci"], ["ai"]),
        helper.make_node("Cast", ["ai"], ["af"], to=TensorProto.FLOAT),
        helper.make_node("Relu", ["af"], ["r"]),
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


# --- local work-size tuning ------------------------------------------------------------------


def test_tuning_level_is_validated(monkeypatch):
    monkeypatch.setenv(cl_tuning.TUNING_ENV, "fastest")
    with pytest.raises(ValueError, match="WALLE_OPENCL_TUNING.*none, fast, full"):
        cl_tuning.tuning_level()
    monkeypatch.delenv(cl_tuning.TUNING_ENV)
    assert cl_tuning.tuning_level() == "none"


def test_tuning_candidates_divide_the_global_size():
    assert cl_tuning.candidates([64 * 3], "fast") == [[16], [32], [64]]
    assert cl_tuning.candidates([128], "none") == []
    for local in cl_tuning.candidates([12, 8, 2], "full"):
        assert [g % s for g, s in zip([12, 8, 2], local)] == [0, 0, 0]
        assert int(np.prod(local)) <= 1024


@requires_device
def test_tuning_is_cached_and_changes_no_result(tmp_path, monkeypatch):
    monkeypatch.setenv(cl_device.CACHE_ENV, str(tmp_path))
    model = _cnn_model("resnet")
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    monkeypatch.setenv(cl_tuning.TUNING_ENV, "none")
    want = wc.load(model, backend=["opencl"]).run({"x": x})["logits"]
    assert not cl_tuning.tuning_path(tmp_path / "opencl").exists()

    monkeypatch.setenv(cl_tuning.TUNING_ENV, "fast")
    before = cl_tuning.tuning_runs
    got = wc.load(model, backend=["opencl"]).run({"x": x})["logits"]
    tuned = cl_tuning.tuning_runs - before
    assert tuned > 0
    entries = json.loads(cl_tuning.tuning_path(tmp_path / "opencl").read_text())
    assert len(entries) == tuned and all(key.endswith("|fast") for key in entries)
    np.testing.assert_array_equal(got, want)

    # a second compile of the same shapes finds every choice on disk
    again = wc.load(model, backend=["opencl"]).run({"x": x})["logits"]
    assert cl_tuning.tuning_runs - before == tuned
    np.testing.assert_array_equal(again, want)


@requires_device
def test_bad_tuning_level_fails_compile(monkeypatch):
    monkeypatch.setenv(cl_tuning.TUNING_ENV, "slow")
    with pytest.raises(BackendError, match="WALLE_OPENCL_TUNING"):
        wc.load(_cnn_model("resnet"), backend=["opencl"]).run(
            {"x": np.zeros((2, 3, 32, 32), np.float32)})
