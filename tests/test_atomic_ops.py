"""Every atomic op on every installed backend, against NumPy written independently of the
reference kernels. A new backend is tested by these cases on the day it registers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from numpy_oracles import np_conv

from walle_core import ops, plugins
from walle_core.backend import Segment
from walle_core.ir import GraphBuilder, TensorType
from walle_core.ops import BinaryFn, Op, PoolKind, ReduceFn, UnaryFn

rng = np.random.default_rng(1234)


def f32(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def region(inp, size, src_off, src_st, dst_off, dst_st):
    return ops.Region(inp, tuple(size), src_off, tuple(src_st), dst_off, tuple(dst_st))


def np_pool(x, kind, k, s, pads, out_hw, include_pad=False):
    n, c, h, w = x.shape
    y = np.zeros((n, c, *out_hw), np.float32)
    for oy in range(out_hw[0]):
        for ox in range(out_hw[1]):
            y0, x0 = oy * s[0] - pads[0], ox * s[1] - pads[1]
            ys, xs = max(y0, 0), max(x0, 0)
            ye, xe = min(y0 + k[0], h), min(x0 + k[1], w)
            win = x[:, :, ys:ye, xs:xe]
            if kind == "max":
                y[:, :, oy, ox] = win.max(axis=(2, 3))
            else:
                if include_pad:
                    cnt = (min(y0 + k[0], h + pads[2]) - y0) * (min(x0 + k[1], w + pads[3]) - x0)
                else:
                    cnt = (ye - ys) * (xe - xs)
                y[:, :, oy, ox] = win.sum(axis=(2, 3)) / cnt
    return y


def np_erf(x):
    return np.vectorize(math.erf)(x.astype(np.float64)).astype(x.dtype)


X = f32(2, 3, 4)
POS = np.abs(f32(2, 3, 4)) + 0.1
UNIT = np.clip(f32(2, 3, 4), -0.9, 0.9)
A_INT = rng.integers(-20, 20, (3, 4)).astype(np.int64)
B_INT = rng.integers(1, 7, (3, 4)).astype(np.int64) * np.where(rng.random((3, 4)) < 0.5, -1, 1)
CONV_X = f32(1, 4, 7, 6)
POOL_X = f32(1, 2, 6, 5)

# (id, op, attrs, inputs, expected outputs)
CASES = [
    # --- raster
    ("raster_transpose", Op.RASTER, ops.RasterAttrs((4, 3), (region(0, (4, 3), 0, (1, 4), 0, (3, 1)),)),
     [f32(3, 4)], lambda a: [a.T]),
    ("raster_slice_step", Op.RASTER, ops.RasterAttrs((2, 2), (region(0, (2, 2), 5, (4, 2), 0, (2, 1)),)),
     [f32(3, 4)], lambda a: [a[1:3, 1::2]]),
    ("raster_reverse", Op.RASTER, ops.RasterAttrs((4,), (region(0, (4,), 3, (-1,), 0, (1,)),)),
     [f32(4)], lambda a: [a[::-1]]),
    ("raster_concat", Op.RASTER, ops.RasterAttrs((2, 5), (region(0, (2, 2), 0, (2, 1), 0, (5, 1)),
                                                         region(1, (2, 3), 0, (3, 1), 2, (5, 1)))),
     [f32(2, 2), f32(2, 3)], lambda a, b: [np.concatenate([a, b], 1)]),
    ("raster_pad", Op.RASTER, ops.RasterAttrs((4, 5), (region(0, (2, 3), 0, (3, 1), 6, (5, 1)),), fill=-2.0),
     [f32(2, 3)], lambda a: [np.pad(a, ((1, 1), (1, 1)), constant_values=-2.0)]),
    ("raster_broadcast", Op.RASTER, ops.RasterAttrs((3, 4), (region(0, (3, 4), 0, (0, 1), 0, (4, 1)),)),
     [f32(4)], lambda a: [np.broadcast_to(a, (3, 4))]),
    ("raster_int64", Op.RASTER, ops.RasterAttrs((4, 3), (region(0, (4, 3), 0, (1, 4), 0, (3, 1)),)),
     [A_INT], lambda a: [a.T]),
    # --- unary
    *[(f"unary_{fn.value}", Op.UNARY, ops.UnaryAttrs(fn), [x], lambda a, f=f: [f(a).astype(np.float32)])
      for fn, x, f in [
          (UnaryFn.NEG, X, np.negative), (UnaryFn.ABS, X, np.abs), (UnaryFn.EXP, X, np.exp),
          (UnaryFn.LOG, POS, np.log), (UnaryFn.SQRT, POS, np.sqrt), (UnaryFn.RSQRT, POS, lambda a: 1 / np.sqrt(a)),
          (UnaryFn.RECIPROCAL, POS, lambda a: 1 / a), (UnaryFn.FLOOR, X * 3, np.floor),
          (UnaryFn.CEIL, X * 3, np.ceil), (UnaryFn.ROUND, np.array([0.5, 1.5, 2.5, -0.5, -1.7], np.float32), np.rint),
          (UnaryFn.SIGN, X, np.sign), (UnaryFn.SIN, X, np.sin), (UnaryFn.COS, X, np.cos), (UnaryFn.TAN, UNIT, np.tan),
          (UnaryFn.ASIN, UNIT, np.arcsin), (UnaryFn.ACOS, UNIT, np.arccos), (UnaryFn.ATAN, X, np.arctan),
          (UnaryFn.SINH, X, np.sinh), (UnaryFn.COSH, X, np.cosh), (UnaryFn.ASINH, X, np.arcsinh),
          (UnaryFn.ACOSH, POS + 1, np.arccosh), (UnaryFn.ATANH, UNIT, np.arctanh), (UnaryFn.TANH, X, np.tanh),
          (UnaryFn.ERF, X, np_erf), (UnaryFn.RELU, X, lambda a: np.maximum(a, 0)),
          (UnaryFn.SIGMOID, X, lambda a: 1 / (1 + np.exp(-a))),
          (UnaryFn.HARD_SWISH, X * 4, lambda a: a * np.clip(a / 6 + 0.5, 0, 1)),
          (UnaryFn.SOFTPLUS, X, lambda a: np.log1p(np.exp(a))), (UnaryFn.IDENTITY, X, lambda a: a),
      ]],
    ("unary_leaky_relu", Op.UNARY, ops.UnaryAttrs(UnaryFn.LEAKY_RELU, 0.1), [X],
     lambda a: [np.where(a >= 0, a, 0.1 * a)]),
    ("unary_clip", Op.UNARY, ops.UnaryAttrs(UnaryFn.CLIP, -0.5, 0.7), [X], lambda a: [np.clip(a, -0.5, 0.7)]),
    ("unary_hard_sigmoid", Op.UNARY, ops.UnaryAttrs(UnaryFn.HARD_SIGMOID, 0.2, 0.5), [X],
     lambda a: [np.clip(0.2 * a + 0.5, 0, 1)]),
    ("unary_elu", Op.UNARY, ops.UnaryAttrs(UnaryFn.ELU, 1.5), [X], lambda a: [np.where(a > 0, a, 1.5 * (np.exp(a) - 1))]),
    ("unary_not", Op.UNARY, ops.UnaryAttrs(UnaryFn.NOT), [X > 0], lambda a: [~a]),
    # --- binary
    *[(f"binary_{fn.value}", Op.BINARY, ops.BinaryAttrs(fn), [a, b], lambda x, y, f=f: [f(x, y)])
      for fn, a, b, f in [
          (BinaryFn.ADD, f32(2, 3, 4), f32(3, 1), np.add), (BinaryFn.SUB, f32(3, 4), f32(4), np.subtract),
          (BinaryFn.MUL, f32(1, 4), f32(3, 1), np.multiply), (BinaryFn.DIV, f32(3, 4), POS[0], np.divide),
          (BinaryFn.POW, POS[0], f32(3, 4), np.power), (BinaryFn.MAX, f32(3, 4), f32(3, 4), np.maximum),
          (BinaryFn.MIN, f32(3, 4), f32(4), np.minimum), (BinaryFn.FMOD, X * 5, POS, np.fmod),
          (BinaryFn.EQ, np.round(X), np.round(X[0]), np.equal), (BinaryFn.LT, X, X[:, :1], np.less),
          (BinaryFn.GE, X, X[:, :1], np.greater_equal), (BinaryFn.NE, np.round(X), np.zeros(4, np.float32), np.not_equal),
          (BinaryFn.AND, X > 0, X[0] > 0, np.logical_and), (BinaryFn.XOR, X > 0, X < 0.5, np.logical_xor),
          (BinaryFn.ADD, A_INT, B_INT, np.add), (BinaryFn.MUL, A_INT, B_INT, np.multiply),
          (BinaryFn.MOD, A_INT, B_INT, np.mod), (BinaryFn.FMOD, A_INT, B_INT, np.fmod),
          (BinaryFn.DIV, A_INT, B_INT, lambda x, y: (np.trunc(x / y)).astype(np.int64)),
          (BinaryFn.BIT_AND, A_INT, B_INT, np.bitwise_and), (BinaryFn.SHL, np.abs(A_INT), np.abs(B_INT), np.left_shift),
      ]],
    ("select", Op.SELECT, ops.SelectAttrs(), [X > 0, f32(3, 4), f32(1, 4)], lambda c, a, b: [np.where(c, a, b)]),
    ("cast_f32_i64", Op.CAST, ops.CastAttrs(np.dtype(np.int64)), [X * 10], lambda a: [a.astype(np.int64)]),
    ("cast_i64_f32", Op.CAST, ops.CastAttrs(np.dtype(np.float32)), [A_INT], lambda a: [a.astype(np.float32)]),
    ("cast_f32_bool", Op.CAST, ops.CastAttrs(np.dtype(bool)), [np.round(X)], lambda a: [a != 0]),
    # --- reductions
    *[(f"reduce_{fn.value}_{axes}_{kd}", Op.REDUCE, ops.ReduceAttrs(fn, axes, kd), [X],
       lambda a, f=f, axes=axes, kd=kd: [f(a, axis=axes, keepdims=kd).astype(np.float32)])
      for fn, f in [(ReduceFn.SUM, np.sum), (ReduceFn.MEAN, np.mean), (ReduceFn.MAX, np.max),
                    (ReduceFn.MIN, np.min), (ReduceFn.PROD, np.prod)]
      for axes, kd in [((1,), True), ((0, 2), False), ((0, 1, 2), False)]],
    ("argmax", Op.ARG_REDUCE, ops.ArgReduceAttrs(1, True, True), [X], lambda a: [np.argmax(a, 1)[:, None]]),
    ("argmin_last", Op.ARG_REDUCE, ops.ArgReduceAttrs(0, False, False, True),
     [np.array([[1, 2], [0, 2], [0, 5]], np.float32)], lambda a: [np.array([2, 1])]),
    ("cumsum", Op.CUMULATIVE, ops.CumulativeAttrs(1), [X], lambda a: [np.cumsum(a, 1)]),
    ("cumsum_excl_rev", Op.CUMULATIVE, ops.CumulativeAttrs(2, True, True), [X],
     lambda a: [np.flip(np.cumsum(np.flip(a, 2), 2), 2) - a]),
    ("topk_largest", Op.TOPK, ops.TopKAttrs(1, 2), [np.array([[1, 3, 3, 2], [4, 4, 4, 0]], np.float32)],
     lambda a: [np.array([[3, 3], [4, 4]], np.float32), np.array([[1, 2], [0, 1]])]),
    ("topk_smallest", Op.TOPK, ops.TopKAttrs(0, 1, largest=False), [X],
     lambda a: [np.min(a, 0, keepdims=True), np.argmin(a, 0)[None]]),
    # --- dense
    ("matmul", Op.MATMUL, ops.MatMulAttrs(), [f32(5, 7), f32(7, 3)], lambda a, b: [a @ b]),
    ("matmul_batch_bcast", Op.MATMUL, ops.MatMulAttrs(), [f32(2, 1, 5, 7), f32(3, 7, 4)], lambda a, b: [a @ b]),
    ("matmul_trans_bias_relu", Op.MATMUL,
     ops.MatMulAttrs(True, True, ops.Activation(UnaryFn.RELU)), [f32(7, 5), f32(3, 7), f32(3)],
     lambda a, b, c: [np.maximum(a.T @ b.T + c, 0)]),
    ("matmul_large", Op.MATMUL, ops.MatMulAttrs(), [f32(67, 130), f32(130, 45)], lambda a, b: [a @ b]),
    ("conv_basic", Op.CONV2D, ops.Conv2DAttrs(), [CONV_X, f32(5, 4, 3, 3)], lambda x, w: [np_conv(x, w)]),
    ("conv_stride_pad_dil_bias", Op.CONV2D,
     ops.Conv2DAttrs((2, 1), (1, 2, 0, 1), (1, 2), 1, has_bias=True), [CONV_X, f32(3, 4, 3, 2), f32(3)],
     lambda x, w, b: [np_conv(x, w, b, (2, 1), (1, 2, 0, 1), (1, 2))]),
    ("conv_groups", Op.CONV2D, ops.Conv2DAttrs(pads=(1, 1, 1, 1), groups=2), [CONV_X, f32(6, 2, 3, 3)],
     lambda x, w: [np_conv(x, w, pads=(1, 1, 1, 1), groups=2)]),
    ("conv_depthwise_relu6", Op.CONV2D,
     ops.Conv2DAttrs((2, 2), (1, 1, 1, 1), groups=4, activation=ops.Activation(UnaryFn.CLIP, 0.0, 6.0)),
     [CONV_X * 4, f32(4, 1, 3, 3)],
     lambda x, w: [np.clip(np_conv(x, w, stride=(2, 2), pads=(1, 1, 1, 1), groups=4), 0, 6)]),
    ("conv_1x1_residual", Op.CONV2D, ops.Conv2DAttrs(has_bias=True, has_residual=True,
                                                      activation=ops.Activation(UnaryFn.RELU)),
     [CONV_X, f32(4, 4, 1, 1), f32(4), f32(1, 4, 7, 6)],
     lambda x, w, b, r: [np.maximum(np_conv(x, w, b) + r, 0)]),
    ("pool_max", Op.POOL2D, ops.Pool2DAttrs(PoolKind.MAX, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), (3, 3)),
     [POOL_X], lambda x: [np_pool(x, "max", (3, 3), (2, 2), (1, 1, 1, 1), (3, 3))]),
    ("pool_max_ceil", Op.POOL2D, ops.Pool2DAttrs(PoolKind.MAX, (2, 2), (2, 2), (0, 0, 0, 0), (1, 1), (3, 3)),
     [POOL_X], lambda x: [np_pool(x, "max", (2, 2), (2, 2), (0, 0, 0, 0), (3, 3))]),
    ("pool_avg", Op.POOL2D, ops.Pool2DAttrs(PoolKind.AVG, (3, 2), (1, 2), (1, 0, 1, 1), (1, 1), (6, 3)),
     [POOL_X], lambda x: [np_pool(x, "avg", (3, 2), (1, 2), (1, 0, 1, 1), (6, 3))]),
    ("pool_avg_include_pad", Op.POOL2D,
     ops.Pool2DAttrs(PoolKind.AVG, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), (3, 3), count_include_pad=True),
     [POOL_X], lambda x: [np_pool(x, "avg", (3, 3), (2, 2), (1, 1, 1, 1), (3, 3), include_pad=True)]),
    # --- indexing
    ("gather_axis1_neg", Op.GATHER, ops.GatherAttrs(1), [X, np.array([[0, -1], [2, 1]], np.int64)],
     lambda a, i: [np.take(a, i, axis=1)]),
    ("gather_int32_idx", Op.GATHER, ops.GatherAttrs(0), [X, np.array([1, 0, 1], np.int32)],
     lambda a, i: [np.take(a, i, axis=0)]),
    ("scatter_assign", Op.SCATTER, ops.ScatterAttrs(), [f32(4, 3), np.array([2, 0], np.int64), f32(2, 3)],
     lambda d, i, u: [np.concatenate([u[1:2], d[1:2], u[0:1], d[3:4]])]),
    ("scatter_add_dup", Op.SCATTER, ops.ScatterAttrs(BinaryFn.ADD),
     [np.zeros((3, 2), np.float32), np.array([1, 1, -1], np.int64), np.ones((3, 2), np.float32)],
     lambda d, i, u: [np.array([[0, 0], [2, 2], [1, 1]], np.float32)]),
]


def _backends():
    found = []
    for cls in plugins.backend_classes():
        if cls.availability().available:
            found.append(cls(threads=2))
    return found


BACKENDS = _backends()


def _segment(op, attrs, inputs):
    b = GraphBuilder()
    names = [b.add_input(f"in{i}", TensorType(a.dtype, a.shape)) for i, a in enumerate(inputs)]
    outs = b.emit(op, names, attrs)
    g = b.graph
    return Segment(g.nodes, names, outs, dict(g.types), {})


def _params():
    for backend in BACKENDS:
        for case_id, op, attrs, inputs, expected in CASES:
            seg = _segment(op, attrs, inputs)
            if backend.supports(seg.nodes[0], seg.types):
                yield pytest.param(backend, op, attrs, inputs, expected, id=f"{backend.name}-{case_id}")


def test_reference_supports_every_case():
    ref = next(b for b in BACKENDS if b.name == "reference")
    for _, op, attrs, inputs, _ in CASES:
        seg = _segment(op, attrs, inputs)
        assert ref.supports(seg.nodes[0], seg.types)


def test_opencl_declines_no_case():
    """The opencl backend takes every case the reference takes: nothing silently falls back."""
    cl = next((b for b in BACKENDS if b.name == "opencl"), None)
    if cl is None:
        pytest.skip("opencl backend not installed or no OpenCL device")
    declined = [case_id for case_id, op, attrs, inputs, _ in CASES
                if not cl.supports((seg := _segment(op, attrs, inputs)).nodes[0], seg.types)]
    assert declined == []


def test_every_op_is_covered():
    assert {case[1] for case in CASES} == set(Op)


@pytest.mark.parametrize("backend,op,attrs,inputs,expected", list(_params()))
def test_atomic_op(backend, op, attrs, inputs, expected):
    seg = _segment(op, attrs, inputs)
    got = backend.compile(seg).run([np.ascontiguousarray(a) for a in inputs])
    want = expected(*inputs)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        g = backend.to_host(g)
        w = np.asarray(w)
        assert g.shape == w.shape, (g.shape, w.shape)
        if w.dtype.kind == "f":
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
        else:
            np.testing.assert_array_equal(g, w)
