"""float16 on the opencl backend (run on PoCL in CI, whose CPU device has no cl_khr_fp16).

float16 tensors live in half buffers and every kernel computes in float32, rounding once to the
nearest float16 (ties to even) when it stores. Two oracles:

- *exact*: the reference backend run on the same float16 values widened to float64, rounded once to
  float16. Stated tolerance: **1 float16 ulp** for every op (measured: most results are bit-exact;
  a few transcendental ones, cumsum's per-step rounding and long dot products are 1 ulp off).
- *reference*: the reference backend on float16 itself (NumPy float16, which rounds after every
  NumPy step: ``1 / (1 + exp(-x))`` is three roundings). Stated tolerance: opencl may be at most
  1 ulp further from it than the reference itself is from the exact result.

Non-float outputs (comparisons, indices, casts to int/bool) must be equal.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from test_atomic_ops import CASES

walle_opencl = pytest.importorskip("walle_opencl")

import walle_core as wc
from walle_core import ops
from walle_core.backend import Segment
from walle_core.ir import GraphBuilder, TensorType
from walle_core.ops import BinaryFn, Op, ReduceFn, UnaryFn
from walle_core.reference.backend import ReferenceBackend
from walle_opencl import OpenCLBackend
from walle_opencl.lowering import ARITHMETIC_FNS, UNARY_FNS

F16, F32, F64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)
AVAILABILITY = OpenCLBackend.availability()
pytestmark = pytest.mark.skipif(not AVAILABILITY.available, reason=f"no OpenCL device: {AVAILABILITY.reason}")

rng = np.random.default_rng(16)


@pytest.fixture(scope="module")
def cl():
    return OpenCLBackend()


REF = ReferenceBackend()


def ordinal(x: np.ndarray) -> np.ndarray:
    """float16 values as integers that count ulps: adjacent floats differ by 1, and -0 == +0."""
    bits = np.asarray(x, F16).view(np.uint16).astype(np.int64)
    return np.where(bits & 0x8000, -(bits & 0x7FFF), bits)


def ulps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance in float16 ulps (0 where both are NaN; a NaN against a number counts as huge)."""
    a, b = np.asarray(a, F16), np.asarray(b, F16)
    d = np.abs(ordinal(a) - ordinal(b))
    d = np.where(np.isnan(a) != np.isnan(b), 1 << 20, d)
    return np.where(np.isnan(a) & np.isnan(b), 0, d)


def segment(op, attrs, inputs):
    b = GraphBuilder()
    names = [b.add_input(f"in{i}", TensorType(a.dtype, a.shape)) for i, a in enumerate(inputs)]
    outs = b.emit(op, names, attrs)
    return Segment(b.graph.nodes, names, outs, dict(b.graph.types), {})


def run(backend, op, attrs, inputs):
    seg = segment(op, attrs, inputs)
    assert backend.supports(seg.nodes[0], seg.types), (backend.name, op, [a.dtype for a in inputs])
    return [np.asarray(backend.to_host(o)) for o in backend.compile(seg).run(list(inputs))]


def _retyped(op, attrs, inputs, dtype):
    """A float32 case with its float32 tensors (and a CAST to float32) turned into ``dtype``."""
    ins = [a.astype(dtype) if a.dtype == F32 else a for a in inputs]
    if op is Op.CAST and attrs.to == F32:
        attrs = dataclasses.replace(attrs, to=dtype)
    return attrs, ins


#: every shared atomic-op case that involves float32, in float16
FP16_CASES = [(case_id, op, *_retyped(op, attrs, inputs, F16))
              for case_id, op, attrs, inputs, _ in CASES
              if any(a.dtype == F32 for a in inputs) or (op is Op.CAST and attrs.to == F32)]


def check_fp16(got, want, exact, what):
    """The two tolerances of the module docstring."""
    assert len(got) == len(want) == len(exact), what
    for g, w, e in zip(got, want, exact):
        assert g.dtype == w.dtype and g.shape == w.shape, (what, g.dtype, w.dtype, g.shape, w.shape)
        if g.dtype != F16:
            np.testing.assert_array_equal(g, w, err_msg=what)
            continue
        with np.errstate(over="ignore"):
            e = e.astype(F16)  # values beyond 65504 round to infinity, as the kernels' do
        to_exact = ulps(g, e)
        assert to_exact.max() <= 1, f"{what}: {to_exact.max()} ulp from the exact result"
        allowed = ulps(w, e) + 1
        assert (ulps(g, w) <= allowed).all(), f"{what}: further from the reference than it is from exact"


def test_fp16_cases_cover_every_op():
    assert {op for _, op, _, _ in FP16_CASES} == set(Op)


def test_opencl_declines_no_fp16_case(cl):
    declined = [case_id for case_id, op, attrs, inputs in FP16_CASES
                if not cl.supports((seg := segment(op, attrs, inputs)).nodes[0], seg.types)]
    assert declined == []


@pytest.mark.parametrize("case_id,op,attrs,inputs", FP16_CASES, ids=[c[0] for c in FP16_CASES])
def test_fp16_atomic_op(cl, case_id, op, attrs, inputs):
    got = run(cl, op, attrs, inputs)
    want = run(REF, op, attrs, inputs)
    # the exact oracle: the same float16 values, widened to float64
    wide_attrs = dataclasses.replace(attrs, to=F64) if op is Op.CAST and attrs.to == F16 else attrs
    exact = run(REF, op, wide_attrs, [a.astype(F64) if a.dtype == F16 else a for a in inputs])
    check_fp16(got, want, exact, case_id)


# --- elementwise over every float16 value --------------------------------------------------

ALL_HALVES = np.arange(1 << 16, dtype=np.uint16).view(F16)  # infinities and NaNs included
#: share of results that must equal the exact result rounded to nearest even, bit for bit (measured:
#: >= 98.9 % for every function; ELU, whose exp(x) - 1 cancels in float32 near zero, is the lowest).
#: Rounding the float32 result toward zero instead would make about half of them differ.
BIT_EXACT_SHARE = 0.98


def _bit_exact_share(got: np.ndarray, exact: np.ndarray) -> float:
    with np.errstate(over="ignore"):
        return float((ulps(got, exact.astype(F16)) == 0).mean())

_PARAMS = {UnaryFn.LEAKY_RELU: (0.1, 0.0), UnaryFn.CLIP: (-0.5, 0.7), UnaryFn.HARD_SIGMOID: (0.2, 0.5),
           UnaryFn.ELU: (1.5, 0.0)}


@pytest.mark.parametrize("fn", UNARY_FNS, ids=[fn.value for fn in UNARY_FNS])
def test_unary_every_input_within_one_ulp(cl, fn):
    attrs = ops.UnaryAttrs(fn, *_PARAMS.get(fn, (0.0, 0.0)))
    (got,) = run(cl, Op.UNARY, attrs, [ALL_HALVES])
    (want,) = run(REF, Op.UNARY, attrs, [ALL_HALVES])
    (exact,) = run(REF, Op.UNARY, attrs, [ALL_HALVES.astype(F64)])
    check_fp16([got], [want], [exact], fn.value)
    assert _bit_exact_share(got, exact) >= BIT_EXACT_SHARE


@pytest.mark.parametrize("fn", ARITHMETIC_FNS, ids=[fn.value for fn in ARITHMETIC_FNS])
def test_binary_random_bit_patterns_within_one_ulp(cl, fn):
    a, b = np.random.default_rng(5).integers(0, 1 << 16, (2, 50_000)).astype(np.uint16).view(F16)
    attrs = ops.BinaryAttrs(fn)
    (got,) = run(cl, Op.BINARY, attrs, [a, b])
    (want,) = run(REF, Op.BINARY, attrs, [a, b])
    (exact,) = run(REF, Op.BINARY, attrs, [a.astype(F64), b.astype(F64)])
    check_fp16([got], [want], [exact], fn.value)
    assert _bit_exact_share(got, exact) >= BIT_EXACT_SHARE


def test_results_round_to_nearest_even(cl):
    """Exact sums and quotients that fall between two float16 values: below, above and on the
    midpoint (ties go to the even neighbour). Truncation or ties-away would differ."""
    ulp = 2.0**-10
    a = np.array([1, 1, 1 + ulp, 1, 1, -1, 2048, 2050], F16)  # float16 steps by 2 from 2048 up
    b = np.array([ulp / 4, ulp * 3 / 4, ulp / 2, ulp / 2, ulp * 3 / 2, -ulp * 3 / 4, 1, 1], F16)
    want = np.array([1, 1 + ulp, 1 + 2 * ulp, 1, 1 + 2 * ulp, -1 - ulp, 2048, 2052], F16)
    (got,) = run(cl, Op.BINARY, ops.BinaryAttrs(BinaryFn.ADD), [a, b])
    np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16))
    # 1/3 and 2/3 lie off the grid: nearest is below for 1/3 and above for 2/3 (see NumPy's rounding)
    num, den = np.array([1, 2, 1, 5], F16), np.array([3, 3, 7, 9], F16)
    (got,) = run(cl, Op.BINARY, ops.BinaryAttrs(BinaryFn.DIV), [num, den])
    want = (num.astype(F64) / den).astype(F16)
    np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16))
    # a float32 accumulator rounded once: 2048 + 1 + 1 + 1 is 2051 -> 2052 (tie, to even)
    (got,) = run(cl, Op.REDUCE, ops.ReduceAttrs(ReduceFn.SUM, (0,), False), [np.array([2048, 1, 1, 1], F16)])
    assert got.view(np.uint16) == np.array(2052, F16).view(np.uint16)


# --- CAST ---------------------------------------------------------------------------------

#: round-to-nearest-even ties (1 + 2^-11 -> 1, 1 + 3 * 2^-11 -> 1 + 2^-9), the largest finite value
#: and the overflow threshold (65519 -> 65504, 65520 -> inf), subnormals and underflow, signed zero,
#: infinities and NaN
SPECIAL = np.array([1 + 2**-11, 1 + 3 * 2**-11, -(1 + 2**-11), 65504, 65519, 65520, 7e4, -7e4, 2**-24, 2**-25,
                    3 * 2**-26, 1e-8, 6.1e-5, -0.0, 0.0, np.inf, -np.inf, np.nan, 0.5, -2.5, 1234.5678], F32)


_CASTABLE = [np.float32, np.int32, np.int64, bool, np.float16]


@pytest.mark.parametrize("src,dst", [(s, d) for s in _CASTABLE for d in _CASTABLE if np.float16 in (s, d)])
def test_cast_matrix_with_float16(cl, src, dst):
    x = np.concatenate([SPECIAL, (rng.standard_normal(40) * 300).astype(F32)])
    if np.dtype(src).kind != "f" or np.dtype(dst).kind in "iu":
        x = x[np.isfinite(x) & (np.abs(x) < 6e4)]  # float to int is undefined outside the int's range
    with np.errstate(all="ignore"):
        x = x.astype(src)
    (got,) = run(cl, Op.CAST, ops.CastAttrs(np.dtype(dst)), [x])
    with np.errstate(all="ignore"):
        want = x.astype(dst)
    np.testing.assert_array_equal(got, want)
    if np.dtype(dst) == F16:  # the same bits, signed zero included (NaN payloads may differ)
        keep = ~np.isnan(want)
        np.testing.assert_array_equal(got[keep].view(np.uint16), want[keep].view(np.uint16))


# --- whole models ---------------------------------------------------------------------------


def _ort(model, feeds):
    import onnxruntime

    sess = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _f16(r, name, shape, scale):
    return numpy_helper.from_array((r.standard_normal(shape) * scale).astype(np.float16), name)


def _finish(nodes, name, inputs, outputs, inits):
    graph = helper.make_graph(nodes, name, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _cnn16():
    """A float16 classifier: conv-relu-maxpool, strided conv-relu-avgpool, global pool, Gemm."""
    r = np.random.default_rng(21)
    inits = [_f16(r, "w1", (8, 3, 3, 3), 0.3), _f16(r, "b1", (8,), 0.1), _f16(r, "w2", (16, 8, 3, 3), 0.15),
             _f16(r, "b2", (16,), 0.1), _f16(r, "fc", (10, 16), 0.3), _f16(r, "fcb", (10,), 0.1)]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("AveragePool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("GlobalAveragePool", ["p2"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "fc", "fcb"], ["logits"], transB=1)]
    return _finish(nodes, "cnn16", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2, 3, 32, 32])],
                   [helper.make_tensor_value_info("logits", TensorProto.FLOAT16, [2, 10])], inits)


def test_fp16_cnn_on_opencl_alone_matches_onnxruntime():
    """Stated tolerance: 4 float16 ulps of the largest logit's magnitude. ORT runs these float16 ops
    in float32 between inserted casts, so it rounds at other places inside the network (measured
    over 40 random inputs: at most 2 such ulps; the reference backend: 1)."""
    model = _cnn16()
    sess = wc.load(model, backend=["opencl"])
    for _ in range(3):
        x = rng.standard_normal((2, 3, 32, 32)).astype(np.float16)
        assert {name for name, _ in sess.plan_for({"x": x}).segments} == {"opencl"}
        got = sess.run({"x": x})["logits"]
        (want,) = _ort(model, {"x": x})
        assert got.dtype == want.dtype == F16
        scale = np.spacing(np.abs(want).max())
        assert np.abs(got.astype(F64) - want).max() <= 4 * scale, (got, want)


def _hybrid16():
    """float16 conv -> CumSum -> int64 Abs (not on opencl) -> float16 relu -> conv -> TopK."""
    r = np.random.default_rng(12)
    inits = [_f16(r, "w1", (4, 3, 3, 3), 0.3), _f16(r, "w2", (4, 4, 3, 3), 0.3),
             numpy_helper.from_array(np.array(3, np.int64), "axis"),
             numpy_helper.from_array(np.array([3], np.int64), "k")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("CumSum", ["c1", "axis"], ["cs"]),
             helper.make_node("Cast", ["cs"], ["ci"], to=TensorProto.INT64),
             helper.make_node("Abs", ["ci"], ["ai"]),
             helper.make_node("Cast", ["ai"], ["af"], to=TensorProto.FLOAT16),
             helper.make_node("Relu", ["af"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("TopK", ["c2", "k"], ["values", "indices"], axis=3)]
    return _finish(nodes, "hybrid16", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 3, 8, 8])],
                   [helper.make_tensor_value_info("values", TensorProto.FLOAT16, [1, 4, 8, 3]),
                    helper.make_tensor_value_info("indices", TensorProto.INT64, [1, 4, 8, 3])], inits)


def test_fp16_hybrid_fallback_is_right():
    """The int64 Abs falls back to the reference backend (int64 tensors cross to it and back), the
    float16 work around it stays on opencl, and the result matches the reference backend's run of
    the whole model: values within 1 ulp (measured over 40 inputs: equal), TopK indices equal.
    (Not ONNX Runtime: it sums the CumSum in float32, and the truncating Cast that follows turns
    that rounding difference into whole units.)"""
    model = _hybrid16()
    sess = wc.load(model, backend=["opencl"])
    whole = wc.load(model, backend=["reference"])
    for _ in range(3):
        x = rng.standard_normal((1, 3, 8, 8)).astype(np.float16)
        plan = sess.plan_for({"x": x})
        backends = [name for name, _ in plan.segments]
        assert backends == ["opencl", "reference", "opencl"] and plan.copies > 0, backends
        got, want = sess.run({"x": x}), whole.run({"x": x})
        assert got["values"].dtype == F16
        assert ulps(got["values"], want["values"]).max() <= 1
        np.testing.assert_array_equal(got["indices"], want["indices"])


def test_fp16_tensors_cross_between_backends():
    """cpu_x86 first: it takes the float16 Flatten (a RASTER), opencl everything around it, so
    float16 tensors go opencl -> cpu_x86 -> opencl. Moving bytes loses nothing: the logits equal
    opencl alone bit for bit."""
    pytest.importorskip("walle_cpu_x86")
    model = _cnn16()
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float16)
    sess = wc.load(model, backend=["cpu_x86", "opencl"])
    plan = sess.plan_for({"x": x})
    assert [name for name, _ in plan.segments] == ["opencl", "cpu_x86", "opencl"], plan.segments
    ((_, host_nodes),) = [seg for seg in plan.segments if seg[0] == "cpu_x86"]
    crossing = host_nodes[0].inputs + host_nodes[-1].outputs
    assert all(plan.graph.types[name].dtype == F16 for name in crossing)
    got = sess.run({"x": x})["logits"]
    alone = wc.load(model, backend=["opencl"]).run({"x": x})["logits"]
    np.testing.assert_array_equal(got.view(np.uint16), alone.view(np.uint16))


# --- capability report ----------------------------------------------------------------------


def test_backends_report_says_how_float16_runs(cl):
    from walle_core.cli import build_cli

    out = CliRunner().invoke(build_cli(), ["backends", "--json"], prog_name="walle", catch_exceptions=False)
    assert out.exit_code == 0, out.output
    (entry,) = [e for e in json.loads(out.output) if e["name"] == "opencl"]
    has_fp16 = cl.describe()["float16"]["cl_khr_fp16"]
    assert "float16: storage (half buffers, float32 arithmetic" in entry["device"]
    assert ("the device reports cl_khr_fp16" in entry["device"]) == has_fp16
    assert cl.describe()["float16"]["mode"] == "storage"
