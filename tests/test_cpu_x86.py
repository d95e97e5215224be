"""The cpu_x86 backend against NumPy: every atomic op and attribute variant, every ISA level,
threads, concurrency, GIL release, bad input and multi-op segments."""

from __future__ import annotations

import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from numpy_oracles import np_conv

from walle_core import ops, plugins
from walle_core.backend import Segment
from walle_core.errors import BackendError
from walle_core.ir import GraphBuilder, TensorType
from walle_core.ops import Activation, BinaryFn, Op, PoolKind, ReduceFn, UnaryFn
from walle_cpu_x86 import CpuX86Backend, _ext

ISAS = [isa for isa in ("portable", "avx2", "avx512")
        if ["portable", "avx2", "avx512"].index(isa) <= ["portable", "avx2", "avx512"].index(_ext.best_isa())]

rng = np.random.default_rng(20240611)


def f32(*shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


@pytest.fixture(params=[1, 2], ids=["t1", "t2"])
def backend(request) -> CpuX86Backend:
    return CpuX86Backend(threads=request.param)


def build(op: Op, attrs, inputs: list[np.ndarray], const: tuple[int, ...] = ()) -> tuple[Segment, list]:
    """A one-node segment; inputs whose position is in ``const`` become constants."""
    b = GraphBuilder()
    names, feeds = [], []
    for i, a in enumerate(inputs):
        if i in const:
            names.append(b.constant(a))
        else:
            names.append(b.add_input(f"in{i}", TensorType(a.dtype, a.shape)))
            feeds.append(a)
    outs = b.emit(op, names, attrs)
    g = b.graph
    return Segment(g.nodes, list(g.inputs), outs, dict(g.types), dict(g.constants)), feeds


def run1(backend, op, attrs, inputs, const=()) -> list[np.ndarray]:
    seg, feeds = build(op, attrs, inputs, const)
    return backend.compile(seg).run(feeds)


def close(got, want, rtol=1e-4, atol=1e-5) -> None:
    want = np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    if want.dtype.kind == "f":
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
    else:
        np.testing.assert_array_equal(got, want)


# --------------------------------------------------------------------------- oracles

def np_pool(x, kind, k, s, pads, dil, out_hw, include_pad=False):
    n, c, h, w = x.shape
    y = np.zeros((n, c, *out_hw), np.float64)
    for oy in range(out_hw[0]):
        for ox in range(out_hw[1]):
            taps, padded = [], 0
            for i in range(k[0]):
                for j in range(k[1]):
                    iy, ix = oy * s[0] - pads[0] + i * dil[0], ox * s[1] - pads[1] + j * dil[1]
                    if -pads[0] <= iy < h + pads[2] and -pads[1] <= ix < w + pads[3]:
                        padded += 1
                    if 0 <= iy < h and 0 <= ix < w:
                        taps.append(x[:, :, iy, ix])
            if kind == "max":
                y[:, :, oy, ox] = np.max(taps, axis=0)
            else:
                y[:, :, oy, ox] = np.sum(taps, axis=0) / (padded if include_pad else len(taps))
    return y.astype(np.float32)


ACTIVATIONS = {
    UnaryFn.IDENTITY: (0.0, 0.0, lambda v: v),
    UnaryFn.RELU: (0.0, 0.0, lambda v: np.maximum(v, 0)),
    UnaryFn.LEAKY_RELU: (0.2, 0.0, lambda v: np.where(v >= 0, v, 0.2 * v)),
    UnaryFn.CLIP: (-0.5, 0.6, lambda v: np.clip(v, -0.5, 0.6)),
    UnaryFn.SIGMOID: (0.0, 0.0, lambda v: 1 / (1 + np.exp(-v))),
    UnaryFn.HARD_SIGMOID: (0.2, 0.5, lambda v: np.clip(0.2 * v + 0.5, 0, 1)),
    UnaryFn.HARD_SWISH: (0.0, 0.0, lambda v: v * np.clip(v / 6 + 0.5, 0, 1)),
    UnaryFn.ELU: (1.3, 0.0, lambda v: np.where(v > 0, v, 1.3 * np.expm1(v))),
    UnaryFn.SOFTPLUS: (0.0, 0.0, lambda v: np.logaddexp(0, v)),
    UnaryFn.TANH: (0.0, 0.0, np.tanh),
}


def act_of(fn: UnaryFn) -> Activation:
    alpha, beta, _ = ACTIVATIONS[fn]
    return Activation(fn, alpha, beta)


# ------------------------------------------------------------------------------ plugin

def test_registered_and_available():
    assert CpuX86Backend in plugins.backend_classes()
    avail = CpuX86Backend.availability()
    assert avail.available, avail.reason
    assert avail.device.startswith("x86-64 ") and "cores" in avail.device
    assert CpuX86Backend.supported_ops() == frozenset(Op)


def test_declines_what_it_does_not_implement(backend):
    b = GraphBuilder()
    x = b.add_input("x", TensorType(np.dtype(np.float64), (3,)))
    y = b.emit1(Op.UNARY, [x], ops.UnaryAttrs(UnaryFn.EXP))
    i = b.add_input("i", TensorType(np.dtype(np.int32), (3,)))
    p = b.emit1(Op.BINARY, [i, i], ops.BinaryAttrs(BinaryFn.POW))
    m = b.add_input("m", TensorType(np.dtype(np.int64), (2, 2)))
    mm = b.emit1(Op.MATMUL, [m, m], ops.MatMulAttrs())
    types = b.graph.types
    for node in b.graph.nodes:
        assert not backend.supports(node, types), node.op
    assert {y, p, mm} == {out for node in b.graph.nodes for out in node.outputs}


# ------------------------------------------------------------------------------ raster

def region(inp, size, src_off, src_st, dst_off, dst_st):
    return ops.Region(inp, tuple(size), src_off, tuple(src_st), dst_off, tuple(dst_st))


A34 = f32(3, 4)
X4 = f32(2, 3, 4, 5)

RASTER_CASES = [
    ("transpose", ops.RasterAttrs((4, 3), (region(0, (4, 3), 0, (1, 4), 0, (3, 1)),)), [A34], lambda a: a.T),
    ("permute4d", ops.RasterAttrs((5, 2, 4, 3), (region(0, (5, 2, 4, 3), 0, (1, 60, 5, 20), 0, (24, 12, 3, 1)),)),
     [X4], lambda a: a.transpose(3, 0, 2, 1)),
    ("slice_step", ops.RasterAttrs((2, 2), (region(0, (2, 2), 5, (4, 2), 0, (2, 1)),)), [A34],
     lambda a: a[1:3, 1::2]),
    ("reverse", ops.RasterAttrs((3, 4), (region(0, (3, 4), 11, (-4, -1), 0, (4, 1)),)), [A34], lambda a: a[::-1, ::-1]),
    ("concat", ops.RasterAttrs((3, 6), (region(0, (3, 4), 0, (4, 1), 0, (6, 1)),
                                       region(1, (3, 2), 0, (2, 1), 4, (6, 1)))),
     [A34, f32(3, 2)], lambda a, b: np.concatenate([a, b], 1)),
    ("pad_fill", ops.RasterAttrs((5, 6), (region(0, (3, 4), 0, (4, 1), 7, (6, 1)),), fill=-3.5), [A34],
     lambda a: np.pad(a, 1, constant_values=-3.5)),
    ("broadcast", ops.RasterAttrs((3, 2, 4), (region(0, (3, 2, 4), 0, (4, 0, 1), 0, (8, 4, 1)),)), [A34],
     lambda a: np.broadcast_to(a[:, None, :], (3, 2, 4))),
    ("scalar_region", ops.RasterAttrs((2,), (region(0, (), 5, (), 1, ()),), fill=7.0), [A34],
     lambda a: np.array([7.0, a.flat[5]], np.float32)),
    ("int64", ops.RasterAttrs((4, 3), (region(0, (4, 3), 0, (1, 4), 0, (3, 1)),)),
     [rng.integers(-9, 9, (3, 4))], lambda a: a.T),
    ("float16", ops.RasterAttrs((4, 3), (region(0, (4, 3), 0, (1, 4), 0, (3, 1)),), fill=1.0),
     [A34.astype(np.float16)], lambda a: a.T),
    ("bool_pad", ops.RasterAttrs((3, 5), (region(0, (3, 4), 0, (4, 1), 1, (5, 1)),), fill=1.0), [A34 > 0],
     lambda a: np.pad(a, ((0, 0), (1, 0)), constant_values=True)),
    ("int8_overlap_later_wins", ops.RasterAttrs((4,), (region(0, (4,), 0, (1,), 0, (1,)),
                                                       region(0, (2,), 0, (1,), 2, (1,)))),
     [np.array([1, 2, 3, 4], np.int8)], lambda a: np.array([1, 2, 1, 2], np.int8)),
    # as many writes as outputs, but overlapping and with gaps: the fill must stay in the gaps
    ("overlap_and_gaps_keep_fill", ops.RasterAttrs((8,), (region(0, (2, 2, 2), 0, (4, 2, 1), 0, (5, 1, 1)),),
                                                   fill=7.0),
     [np.arange(8, dtype=np.float32)], lambda a: np.array([0, 2, 3, 7, 7, 4, 6, 7], np.float32)),
    # blocks that tile the output, listed out of order: no fill needed, copied a block per worker
    ("concat_large_unordered", ops.RasterAttrs((3, 64, 40, 32), (
        region(1, (64, 40, 32), 0, (1280, 32, 1), 81920, (1280, 32, 1)),
        region(0, (64, 40, 32), 0, (1280, 32, 1), 0, (1280, 32, 1)),
        region(2, (64, 40, 32), 0, (1280, 32, 1), 163840, (1280, 32, 1))), fill=5.0),
     [f32(64, 40, 32), f32(64, 40, 32), f32(64, 40, 32)], lambda a, b, c: np.stack([a, b, c])),
]


@pytest.mark.parametrize("case", RASTER_CASES, ids=[c[0] for c in RASTER_CASES])
def test_raster(backend, case):
    _, attrs, inputs, expected = case
    (got,) = run1(backend, Op.RASTER, attrs, inputs)
    close(got, expected(*inputs))


# ------------------------------------------------------------------------------- unary

POS = np.abs(f32(4, 33)) + 0.1
UNIT = np.clip(f32(4, 33), -0.9, 0.9)
WIDE = f32(4, 33) * 3
UNARY_CASES = [
    (UnaryFn.IDENTITY, WIDE, lambda a: a), (UnaryFn.NEG, WIDE, np.negative), (UnaryFn.ABS, WIDE, np.abs),
    (UnaryFn.SIGN, np.array([-2, 0, 3], np.float32), np.sign), (UnaryFn.EXP, WIDE, np.exp),
    (UnaryFn.LOG, POS, np.log), (UnaryFn.SQRT, POS, np.sqrt), (UnaryFn.RSQRT, POS, lambda a: 1 / np.sqrt(a)),
    (UnaryFn.RECIPROCAL, POS, np.reciprocal), (UnaryFn.FLOOR, WIDE, np.floor), (UnaryFn.CEIL, WIDE, np.ceil),
    (UnaryFn.ROUND, np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 1.7, -1.2], np.float32), np.rint),
    (UnaryFn.SIN, WIDE, np.sin), (UnaryFn.COS, WIDE, np.cos), (UnaryFn.TAN, UNIT, np.tan),
    (UnaryFn.ASIN, UNIT, np.arcsin), (UnaryFn.ACOS, UNIT, np.arccos), (UnaryFn.ATAN, WIDE, np.arctan),
    (UnaryFn.SINH, WIDE, np.sinh), (UnaryFn.COSH, WIDE, np.cosh), (UnaryFn.ASINH, WIDE, np.arcsinh),
    (UnaryFn.ACOSH, POS + 1, np.arccosh), (UnaryFn.ATANH, UNIT, np.arctanh), (UnaryFn.TANH, WIDE, np.tanh),
    (UnaryFn.ERF, WIDE, np.vectorize(math.erf)),
    *[(fn, WIDE, ref) for fn, (_, _, ref) in ACTIVATIONS.items() if fn is not UnaryFn.IDENTITY],
]


@pytest.mark.parametrize("fn,x,ref", UNARY_CASES, ids=[f"{c[0].value}{i}" for i, c in enumerate(UNARY_CASES)])
def test_unary(backend, fn, x, ref):
    alpha, beta, _ = ACTIVATIONS.get(fn, (0.0, 0.0, None))
    (got,) = run1(backend, Op.UNARY, ops.UnaryAttrs(fn, alpha, beta), [x])
    close(got, ref(x.astype(np.float64)).astype(np.float32))


def _ulps(got: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """|got - exact| in units of the float32 spacing at the exact value."""
    spacing = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    return np.abs(got.astype(np.float64) - exact) / spacing


TRANSCENDENTAL = {
    UnaryFn.EXP: (np.exp, 1.0),
    UnaryFn.SIGMOID: (lambda v: 1 / (1 + np.exp(-v)), 3.0),
    UnaryFn.TANH: (np.tanh, 3.0),
    UnaryFn.ERF: (np.vectorize(math.erf, otypes=[np.float64]), 3.0),
}


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fn", list(TRANSCENDENTAL), ids=lambda f: f.value)
def test_transcendental_accuracy(monkeypatch, isa, fn):
    """exp, sigmoid, tanh and erf within the ulps transcendental.hpp documents (AVX2 computes them
    with its own approximations, portable with the C library), over wide and narrow sweeps and
    the subnormal range, and exact at the special values."""
    monkeypatch.setenv("WALLE_CPU_X86_ISA", isa)
    exact_of, max_ulps = TRANSCENDENTAL[fn]
    g = np.random.default_rng(7)
    x = np.concatenate([g.uniform(-110, 100, 100_000), g.uniform(-5, 5, 100_000), g.uniform(-1e-3, 1e-3, 10_000),
                        np.linspace(-30, 30, 60_001), [1e-30, -1e-30, 1e-38]]).astype(np.float32)
    (got,) = run1(CpuX86Backend(), Op.UNARY, ops.UnaryAttrs(fn), [x])
    with np.errstate(over="ignore"):
        exact = exact_of(x.astype(np.float64))
    normal = (np.abs(exact) > np.finfo(np.float32).tiny) & (np.abs(exact) < np.finfo(np.float32).max)
    assert _ulps(got[normal], exact[normal]).max() <= max_ulps
    # results below the normal range: within one subnormal step (2^-149)
    assert np.abs(got[~normal & (exact < 1)] - exact[~normal & (exact < 1)]).max(initial=0) <= 2.0 ** -149
    special = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 89.0, -104.0], np.float32)
    (got,) = run1(CpuX86Backend(), Op.UNARY, ops.UnaryAttrs(fn), [special])
    with np.errstate(over="ignore"):
        want = exact_of(special.astype(np.float64)).astype(np.float32)
    np.testing.assert_array_equal(got, want)
    assert (np.signbit(got) == np.signbit(want))[~np.isnan(want)].all()  # tanh(-0) = -0, erf(-0) = -0


def test_unary_not_and_large_parallel(backend):
    b = f32(7, 5) > 0
    (got,) = run1(backend, Op.UNARY, ops.UnaryAttrs(UnaryFn.NOT), [b])
    close(got, ~b)
    big = f32(300_001)  # several parallel chunks with a ragged tail
    (got,) = run1(backend, Op.UNARY, ops.UnaryAttrs(UnaryFn.SIGMOID), [big])
    close(got, 1 / (1 + np.exp(-big)))


# ------------------------------------------------------------------------------ binary

I_A = rng.integers(-50, 50, (3, 4)).astype(np.int64)
I_B = (rng.integers(1, 9, (3, 4)) * np.where(rng.random((3, 4)) < 0.5, -1, 1)).astype(np.int64)

BINARY_F32 = [
    (BinaryFn.ADD, f32(2, 3, 4), f32(3, 1), np.add), (BinaryFn.SUB, f32(3, 4), f32(4), np.subtract),
    (BinaryFn.MUL, f32(1, 4), f32(3, 1), np.multiply), (BinaryFn.DIV, f32(3, 4), POS[0, :4], np.divide),
    (BinaryFn.POW, POS[:3, :4], f32(3, 4), np.power), (BinaryFn.MAX, f32(3, 4), f32(3, 4), np.maximum),
    (BinaryFn.MIN, f32(2, 1, 4), f32(3, 1), np.minimum), (BinaryFn.MOD, f32(3, 4) * 5, f32(4) + 0.3, np.mod),
    (BinaryFn.FMOD, f32(3, 4) * 5, f32(4) + 0.3, np.fmod), (BinaryFn.ADD, f32(), f32(5, 1), np.add),
    (BinaryFn.EQ, np.round(f32(3, 4)), np.round(f32(4)), np.equal),
    (BinaryFn.NE, np.round(f32(3, 4)), np.zeros((), np.float32), np.not_equal),
    (BinaryFn.LT, f32(3, 4), f32(3, 1), np.less), (BinaryFn.LE, f32(3, 4), f32(4), np.less_equal),
    (BinaryFn.GT, f32(3, 4), f32(3, 4), np.greater), (BinaryFn.GE, f32(1, 4), f32(3, 1), np.greater_equal),
]


@pytest.mark.parametrize("fn,a,b,ref", BINARY_F32, ids=[f"{c[0].value}{i}" for i, c in enumerate(BINARY_F32)])
def test_binary_float(backend, fn, a, b, ref):
    (got,) = run1(backend, Op.BINARY, ops.BinaryAttrs(fn), [a, b])
    close(got, ref(a, b))


def np_trunc_div(a, b):
    q = np.abs(a) // np.abs(b)
    return np.where((a < 0) != (b < 0), -q, q).astype(a.dtype)


BINARY_INT = [
    (BinaryFn.ADD, np.add), (BinaryFn.SUB, np.subtract), (BinaryFn.MUL, np.multiply), (BinaryFn.DIV, np_trunc_div),
    (BinaryFn.MOD, np.mod), (BinaryFn.FMOD, np.fmod), (BinaryFn.MAX, np.maximum), (BinaryFn.MIN, np.minimum),
    (BinaryFn.BIT_AND, np.bitwise_and), (BinaryFn.BIT_OR, np.bitwise_or), (BinaryFn.BIT_XOR, np.bitwise_xor),
    (BinaryFn.EQ, np.equal), (BinaryFn.LT, np.less), (BinaryFn.GE, np.greater_equal),
]


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
@pytest.mark.parametrize("fn,ref", BINARY_INT, ids=[c[0].value for c in BINARY_INT])
def test_binary_int(backend, fn, ref, dtype):
    a, b = I_A.astype(dtype), I_B[0].astype(dtype)  # b broadcasts along rows
    (got,) = run1(backend, Op.BINARY, ops.BinaryAttrs(fn), [a, b])
    close(got, ref(a, b))


def test_binary_int_edges(backend):
    a = np.array([7, -7, 7, -7, 5, -9, np.iinfo(np.int64).min], np.int64)
    b = np.array([2, 2, -2, -2, 0, -1, -1], np.int64)
    (div,) = run1(backend, Op.BINARY, ops.BinaryAttrs(BinaryFn.DIV), [a, b])
    close(div, np.array([3, -3, -3, 3, 0, 9, np.iinfo(np.int64).min], np.int64))
    (mod,) = run1(backend, Op.BINARY, ops.BinaryAttrs(BinaryFn.MOD), [a, b])
    close(mod, np.array([1, 1, -1, -1, 0, 0, 0], np.int64))
    (fmod,) = run1(backend, Op.BINARY, ops.BinaryAttrs(BinaryFn.FMOD), [a, b])
    close(fmod, np.array([1, -1, 1, -1, 0, 0, 0], np.int64))
    x = np.array([1, -16, 5, 3], np.int32)
    s = np.array([3, 2, 40, -1], np.int32)
    (shl,) = run1(backend, Op.BINARY, ops.BinaryAttrs(BinaryFn.SHL), [x, s])
    close(shl, np.array([8, -64, 0, 0], np.int32))
    (shr,) = run1(backend, Op.BINARY, ops.BinaryAttrs(BinaryFn.SHR), [x, s])
    close(shr, np.array([0, -4, 0, 0], np.int32))


@pytest.mark.parametrize("fn,ref", [(BinaryFn.AND, np.logical_and), (BinaryFn.OR, np.logical_or),
                                    (BinaryFn.XOR, np.logical_xor), (BinaryFn.NE, np.not_equal)])
def test_binary_bool(backend, fn, ref):
    a, b = f32(3, 4) > 0, f32(4) > 0
    (got,) = run1(backend, Op.BINARY, ops.BinaryAttrs(fn), [a, b])
    close(got, ref(a, b))


def test_binary_large_broadcast_parallel(backend):
    a, b = f32(64, 1, 2000), f32(3, 1)
    (got,) = run1(backend, Op.BINARY, ops.BinaryAttrs(BinaryFn.SUB), [a, b])
    close(got, a - b)


# ------------------------------------------------------------------------ select / cast

@pytest.mark.parametrize("dtype", [np.float32, np.int8, np.float16, np.int64])
def test_select(backend, dtype):
    c = f32(2, 3, 1) > 0
    a = (f32(3, 4) * 10).astype(dtype)
    b = (f32(1, 4) * 10).astype(dtype)
    (got,) = run1(backend, Op.SELECT, ops.SelectAttrs(), [c, a, b])
    close(got, np.where(c, a, b))


CASTABLE = [np.float32, np.int32, np.int64, np.bool_, np.uint8, np.int8]


@pytest.mark.parametrize("src", CASTABLE, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("dst", CASTABLE, ids=lambda d: np.dtype(d).name)
def test_cast(backend, src, dst):
    base = np.array([0, 1, -1, 2.7, -2.7, 100.5, -100.5, 0.2], np.float32)
    x = base.astype(src) if src in (np.float32, np.bool_) else np.trunc(base).astype(src)
    if np.dtype(dst) in (np.dtype(np.uint8),) and np.dtype(src).kind == "f":
        x = np.abs(x)  # float -> uint8 of negatives is platform-defined in NumPy
    (got,) = run1(backend, Op.CAST, ops.CastAttrs(np.dtype(dst)), [x])
    close(got, x.astype(dst))


# -------------------------------------------------------------------------- reductions

@pytest.mark.parametrize("fn,ref", [(ReduceFn.SUM, np.sum), (ReduceFn.MEAN, np.mean), (ReduceFn.MAX, np.max),
                                    (ReduceFn.MIN, np.min), (ReduceFn.PROD, np.prod)], ids=lambda v: getattr(v, "value", ""))
@pytest.mark.parametrize("axes", [(), (0,), (3,), (1, 2), (0, 2), (1, 3), (0, 1, 2, 3)], ids=str)
@pytest.mark.parametrize("keepdims", [True, False])
def test_reduce(backend, fn, ref, axes, keepdims):
    x = f32(2, 3, 4, 5) * 0.9
    (got,) = run1(backend, Op.REDUCE, ops.ReduceAttrs(fn, axes, keepdims), [x])
    want = x.copy() if not axes else ref(x.astype(np.float64), axis=axes, keepdims=keepdims)
    close(got, np.asarray(want, np.float32))


def test_reduce_large_parallel(backend):
    x = f32(300, 257)
    (got,) = run1(backend, Op.REDUCE, ops.ReduceAttrs(ReduceFn.SUM, (1,), False), [x])
    close(got, x.astype(np.float64).sum(1).astype(np.float32), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("largest", [True, False])
@pytest.mark.parametrize("last", [True, False])
def test_arg_reduce(backend, axis, largest, last):
    x = rng.integers(0, 3, (3, 4, 5)).astype(np.float32)  # many ties
    (got,) = run1(backend, Op.ARG_REDUCE, ops.ArgReduceAttrs(axis, True, largest, last), [x])
    f = np.argmax if largest else np.argmin
    want = (x.shape[axis] - 1 - f(np.flip(x, axis), axis)) if last else f(x, axis)
    close(got, np.expand_dims(want, axis).astype(np.int64))
    (flat,) = run1(backend, Op.ARG_REDUCE, ops.ArgReduceAttrs(axis, False, largest, last), [x])
    close(flat, want.astype(np.int64))


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("exclusive", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_cumulative(backend, axis, exclusive, reverse):
    x = f32(3, 4, 5)
    (got,) = run1(backend, Op.CUMULATIVE, ops.CumulativeAttrs(axis, exclusive, reverse), [x])
    xr = np.flip(x, axis) if reverse else x
    want = np.cumsum(xr.astype(np.float64), axis)
    if exclusive:
        want = want - xr
    if reverse:
        want = np.flip(want, axis)
    close(got, want.astype(np.float32))


def test_topk_ties_keep_lower_index(backend):
    x = np.array([[1, 3, 3, 2, 3], [4, 4, 0, 4, -1]], np.float32)
    values, idx = run1(backend, Op.TOPK, ops.TopKAttrs(1, 3), [x])
    close(values, np.array([[3, 3, 3], [4, 4, 4]], np.float32))
    close(idx, np.array([[1, 2, 4], [0, 1, 3]], np.int64))
    values, idx = run1(backend, Op.TOPK, ops.TopKAttrs(1, 2, largest=False), [x])
    close(values, np.array([[1, 2], [-1, 0]], np.float32))
    close(idx, np.array([[0, 3], [4, 2]], np.int64))


@pytest.mark.parametrize("axis,k,largest", [(0, 2, True), (1, 4, False), (2, 5, True), (2, 0, True)])
def test_topk_against_stable_sort(backend, axis, k, largest):
    x = rng.integers(0, 4, (4, 6, 5)).astype(np.float32)
    values, idx = run1(backend, Op.TOPK, ops.TopKAttrs(axis, k, largest), [x])
    order = np.argsort(-x if largest else x, axis=axis, kind="stable")
    want_idx = np.take(order, np.arange(k), axis=axis)
    close(idx, want_idx.astype(np.int64))
    close(values, np.take_along_axis(x, want_idx, axis))


# ------------------------------------------------------------------------------ matmul

def np_matmul(a, b, ta, tb):
    a = np.swapaxes(a, -1, -2) if ta else a
    b = np.swapaxes(b, -1, -2) if tb else b
    return np.matmul(a.astype(np.float64), b.astype(np.float64))


# m = 1 is a GEMV, which runs up to four column panels at a time: 40 columns are two panels and
# a partial one, 1000 are 15 groups of four, two panels and a partial one, 80 are five panels
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (5, 7, 3), (13, 33, 47), (130, 300, 270), (1, 600, 40), (1, 300, 1000),
                                   (1, 257, 80)], ids=str)
@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("const_b", [False, True], ids=["dyn", "packed"])
def test_matmul_shapes(backend, m, k, n, ta, tb, const_b):
    a = f32(k, m) if ta else f32(m, k)
    b = f32(n, k) if tb else f32(k, n)
    (got,) = run1(backend, Op.MATMUL, ops.MatMulAttrs(ta, tb), [a, b], const=(1,) if const_b else ())
    close(got, np_matmul(a, b, ta, tb).astype(np.float32), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("sa,sb,const", [((2, 1, 5, 7), (3, 7, 4), ()), ((4, 6, 9), (9, 10), (1,)),
                                         ((3, 1, 70), (70, 90), (1,)), ((3, 1, 70), (3, 70, 90), ()),
                                         ((6, 9), (2, 3, 9, 10), (0,)), ((2, 3, 4, 5), (2, 3, 5, 6), (0, 1))],
                         ids=str)
def test_matmul_batch_broadcast(backend, sa, sb, const):
    a, b = f32(*sa), f32(*sb)
    (got,) = run1(backend, Op.MATMUL, ops.MatMulAttrs(), [a, b], const=const)
    close(got, np_matmul(a, b, False, False).astype(np.float32), atol=1e-4)


@pytest.mark.parametrize("bias_shape", [(11,), (9, 1), (9, 11), (2, 1, 11), ()], ids=str)
@pytest.mark.parametrize("fn", list(ACTIVATIONS), ids=lambda f: f.value)
def test_matmul_bias_activation(backend, bias_shape, fn):
    a, b, bias = f32(2, 9, 13), f32(13, 11), f32(*bias_shape)
    (got,) = run1(backend, Op.MATMUL, ops.MatMulAttrs(activation=act_of(fn)), [a, b, bias], const=(1, 2))
    want = ACTIVATIONS[fn][2](np_matmul(a, b, False, False) + bias)
    close(got, want.astype(np.float32), atol=1e-4)


# -------------------------------------------------------------------------------- conv

CONV_CASES = [
    # (x shape, w shape, strides, pads, dilations, groups)
    ((1, 4, 7, 6), (5, 4, 3, 3), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    ((2, 3, 9, 8), (6, 3, 3, 2), (2, 1), (1, 2, 0, 1), (1, 2), 1),
    ((1, 4, 7, 6), (6, 2, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 2),
    ((2, 8, 10, 9), (8, 1, 3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 8),  # depthwise
    ((1, 4, 9, 9), (8, 1, 3, 3), (1, 2), (2, 0, 1, 2), (2, 1), 4),  # depthwise, multiplier 2
    ((1, 3, 5, 4), (3, 1, 3, 3), (3, 2), (4, 3, 2, 5), (1, 2), 3),  # depthwise, pads wider than the kernel
    ((2, 5, 11, 13), (5, 1, 5, 3), (2, 3), (2, 1, 2, 1), (1, 1), 5),  # depthwise 5x3, stride 3 phases
    ((1, 9, 11, 13), (9, 1, 5, 3), (2, 1), (2, 1, 2, 1), (1, 1), 9),  # depthwise 5x3, eight channels at a time
    ((2, 16, 5, 7), (40, 16, 1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),  # 1x1 as a plain GEMM
    ((1, 6, 5, 7), (9, 2, 1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 3),  # grouped 1x1
    ((1, 3, 6, 6), (4, 3, 1, 1), (2, 2), (1, 1, 0, 0), (1, 1), 1),  # strided, padded 1x1
    ((1, 40, 12, 12), (33, 40, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),  # K > 256: several k-blocks
    ((1, 3, 23, 29), (8, 3, 7, 7), (2, 2), (3, 3, 3, 3), (1, 1), 1),  # stride-2 im2col runs (vector + tail)
    ((1, 4, 20, 21), (6, 4, 3, 3), (2, 2), (0, 1, 1, 0), (1, 1), 1),  # stride 2, uneven pads, even width
]


@pytest.mark.parametrize("case", CONV_CASES, ids=[f"conv{i}" for i in range(len(CONV_CASES))])
@pytest.mark.parametrize("const_w", [True, False], ids=["packed", "dyn"])
def test_conv2d(backend, case, const_w):
    xs, ws, strides, pads, dil, groups = case
    x, w = f32(*xs), f32(*ws)
    attrs = ops.Conv2DAttrs(strides, pads, dil, groups)
    (got,) = run1(backend, Op.CONV2D, attrs, [x, w], const=(1,) if const_w else ())
    want = np_conv(x, w, None, strides, pads, dil, groups).astype(np.float32)
    # With packed weights the cost rule may pick Winograd (F(4,3) on AVX2's narrower panels), whose
    # rounding error scales with the largest output, not with each element.
    close(got, want, atol=max(1e-4, 1e-5 * float(np.abs(want).max())))


@pytest.mark.parametrize("groups", [1, 4], ids=["dense", "depthwise"])
@pytest.mark.parametrize("fn", list(ACTIVATIONS), ids=lambda f: f.value)
def test_conv2d_bias_residual_activation(backend, groups, fn):
    x, w, bias = f32(2, 4, 6, 5), f32(4, 4 // groups, 3, 3), f32(4)
    res = f32(2, 4, 6, 5)
    attrs = ops.Conv2DAttrs(pads=(1, 1, 1, 1), groups=groups, activation=act_of(fn), has_bias=True,
                            has_residual=True)
    (got,) = run1(backend, Op.CONV2D, attrs, [x, w, bias, res], const=(1, 2))
    want = ACTIVATIONS[fn][2](np_conv(x, w, bias, pads=(1, 1, 1, 1), groups=groups) + res)
    close(got, want.astype(np.float32), atol=1e-4)


@pytest.mark.parametrize("fn", [UnaryFn.IDENTITY, UnaryFn.RELU, UnaryFn.CLIP, UnaryFn.HARD_SWISH], ids=lambda f: f.value)
@pytest.mark.parametrize("geometry", [((2, 9, 7, 7), (1, 1), (1, 1, 1, 1), (1, 1)),
                                      ((1, 17, 14, 14), (2, 2), (0, 1, 1, 0), (1, 1)),
                                      ((1, 9, 20, 20), (1, 1), (2, 2, 2, 2), (2, 2)),
                                      ((1, 25, 5, 9), (2, 1), (1, 0, 0, 1), (1, 1)),
                                      ((1, 9, 57, 61), (1, 1), (1, 1, 1, 1), (1, 1)),
                                      ((1, 9, 56, 56), (2, 2), (0, 1, 1, 0), (1, 1))],
                         ids=["7x7", "14x14s2", "20x20dil", "5x9", "57x61", "56x56s2"])
def test_depthwise_planes_eight_channels_at_a_time(fn, geometry):
    """Depthwise planes go eight channels at a time on AVX2; the channels past the last whole
    block take the per-plane path. Channel 8 repeats channel 0, so the two paths must
    agree to the bit, and both must match NumPy."""
    xs, strides, pads, dil = geometry
    c = xs[1]
    x, w, bias = f32(*xs), f32(c, 1, 3, 3), f32(c)
    x[:, 8], w[8], bias[8] = x[:, 0], w[0], bias[0]
    want = np_conv(x, w, bias, strides, pads, dil, groups=c)
    res = f32(*want.shape)
    res[:, 8] = res[:, 0]
    attrs = ops.Conv2DAttrs(strides, pads, dil, c, act_of(fn), has_bias=True, has_residual=True)
    (got,) = run1(CpuX86Backend(threads=2), Op.CONV2D, attrs, [x, w, bias, res], const=(1, 2))
    np.testing.assert_array_equal(got[:, 8], got[:, 0])
    close(got, ACTIVATIONS[fn][2](want + res).astype(np.float32), atol=1e-4)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fn", [UnaryFn.RELU, UnaryFn.SIGMOID], ids=lambda f: f.value)
@pytest.mark.parametrize("geometry", [((2, 5, 13, 11), 7, 3, (1, 0, 2, 1)), ((1, 3, 30, 29), 20, 7, (3, 3, 3, 3)),
                                      ((2, 4, 8, 9), 6, 2, (0, 1, 1, 0)), ((1, 2, 6, 7), 9, 4, (2, 1, 0, 2)),
                                      ((2, 3, 40, 70), 20, 3, (1, 1, 1, 1))],
                         ids=["3x3", "7x7", "2x2", "4x4", "stem"])
def test_stride2_conv_through_the_phase_split_image(monkeypatch, isa, fn, geometry):
    """Stride-2 windows of 2x2 taps or more read a padded, phase-split copy of each image: odd
    and even sizes, uneven pads, two images, and the bias, residual and activation (fused or
    not). With constant weights and at most 4 input channels (network stems) the AVX2 kernel
    reads the taps straight from that copy, in whole 16-pixel tiles and partial ones, in bands of
    8 output rows (the stem's 20 rows end in a partial band); the same
    products in the same order as the packed path that runtime weights take, so bit-identical."""
    monkeypatch.setenv("WALLE_CPU_X86_ISA", isa)
    xs, o, k, pads = geometry
    x, w, bias = f32(*xs), f32(o, xs[1], k, k), f32(o)
    oh = (xs[2] + pads[0] + pads[2] - k) // 2 + 1
    ow = (xs[3] + pads[1] + pads[3] - k) // 2 + 1
    res = f32(xs[0], o, oh, ow)
    attrs = ops.Conv2DAttrs((2, 2), pads, activation=act_of(fn), has_bias=True, has_residual=True)
    got = {}
    for const in ((1, 2), (2,)):
        (got[const],) = run1(CpuX86Backend(threads=2), Op.CONV2D, attrs, [x, w, bias, res], const=const)
        want = ACTIVATIONS[fn][2](np_conv(x, w, bias, (2, 2), pads) + res).astype(np.float32)
        close(got[const], want, atol=1e-4)
    np.testing.assert_array_equal(got[(1, 2)], got[(2,)])


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fn", [UnaryFn.IDENTITY, UnaryFn.RELU, UnaryFn.CLIP, UnaryFn.SIGMOID], ids=lambda f: f.value)
@pytest.mark.parametrize("kernel", [1, 3])
def test_conv_epilogue_in_the_gemm_tiles_is_bit_exact(monkeypatch, isa, fn, kernel):
    """Bias, residual and relu/clip are applied by the micro-kernel as it stores its last k block
    (AVX2), other activations in a pass over the block: either way each element is exactly
    act((conv + bias) + residual) in float32. 13 output channels and 7x9 pixels leave edge
    tiles in both directions; K > 256 takes two k blocks."""
    monkeypatch.setenv("WALLE_CPU_X86_ISA", isa)
    monkeypatch.setenv("WALLE_CPU_X86_WINOGRAD", "0")
    c = 300 if kernel == 1 else 40
    x, w, bias, res = f32(1, c, 7, 9), f32(13, c, kernel, kernel), f32(13), f32(1, 13, 7, 9)
    pads = (kernel // 2,) * 4
    backend = CpuX86Backend()
    (plain,) = run1(backend, Op.CONV2D, ops.Conv2DAttrs(pads=pads), [x, w], const=(1,))
    attrs = ops.Conv2DAttrs(pads=pads, activation=act_of(fn), has_bias=True, has_residual=True)
    (got,) = run1(backend, Op.CONV2D, attrs, [x, w, bias, res], const=(1, 2))
    summed = (plain + bias.reshape(1, -1, 1, 1)) + res
    if fn is UnaryFn.SIGMOID:  # a vectorised approximation: not a rounding-exact reference
        close(got, ACTIVATIONS[fn][2](summed).astype(np.float32), atol=1e-6)
    else:
        np.testing.assert_array_equal(got, ACTIVATIONS[fn][2](summed).astype(np.float32))


@pytest.mark.parametrize("isa", ISAS)
def test_1x1_conv_reads_few_channels_activations_in_place(monkeypatch, isa):
    """Up to 64 output channels, a 1x1 convolution's GEMM reads the activations in place instead of
    packing them; more channels pack them. Both sum in the same order, so the 64 channels of the
    first are bit-identical to the same 64 channels of the second. 7x9 pixels leave a partial last
    panel (packed, zero padded, even in place) and K = 300 takes two k blocks."""
    monkeypatch.setenv("WALLE_CPU_X86_ISA", isa)
    x, w, bias = f32(1, 300, 7, 9), f32(65, 300, 1, 1), f32(65)
    attrs = ops.Conv2DAttrs(activation=act_of(UnaryFn.RELU), has_bias=True)
    backend = CpuX86Backend()
    (in_place,) = run1(backend, Op.CONV2D, attrs, [x, w[:64], bias[:64]], const=(1, 2))
    (packed,) = run1(backend, Op.CONV2D, attrs, [x, w, bias], const=(1, 2))
    np.testing.assert_array_equal(in_place, packed[:, :64])
    close(in_place, np.maximum(np_conv(x, w[:64], bias[:64]), 0).astype(np.float32), atol=1e-4)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fn", [UnaryFn.RELU, UnaryFn.SIGMOID], ids=lambda f: f.value)
@pytest.mark.parametrize("geometry", [((2, 300, 7, 7), 1, 1, 0), ((1, 40, 13, 14), 3, 2, 1), ((2, 36, 28, 27), 3, 2, 1),
                                      ((1, 300, 13, 13), 1, 2, 0), ((1, 40, 14, 14), 1, 1, 0)],
                         ids=["1x1", "3x3s2-phased", "3x3s2-2img", "1x1s2-im2col", "14x14"])
def test_conv_with_pixels_as_gemm_rows(monkeypatch, isa, fn, geometry):
    """On a 7x7 or 14x14 output, a convolution with many output channels runs with the pixels as
    the GEMM's rows (a 1x1 reading the image, others its transposed im2col; a stride-2 window
    on AVX2 reads its taps straight from the phase-split image) and stores its tiles transposed,
    120 rows at a time (196 pixels, as the stride-2 window over 28x27 gives: two). Same products
    summed in the same order as the usual orientation (which 16 channels keep): bit-identical
    channel by channel, with bias, residual and activation; K = 300 takes two k blocks, K = 360
    and 324 too. 92 channels: eleven eight-channel transposes and four left."""
    monkeypatch.setenv("WALLE_CPU_X86_ISA", isa)
    monkeypatch.setenv("WALLE_CPU_X86_WINOGRAD", "0")
    xs, k, stride, pad = geometry
    x, w, bias = f32(*xs), f32(92, xs[1], k, k), f32(92)
    oh, ow = (xs[2] + 2 * pad - k) // stride + 1, (xs[3] + 2 * pad - k) // stride + 1
    res = f32(xs[0], 92, oh, ow)
    attrs = ops.Conv2DAttrs((stride, stride), (pad,) * 4, activation=act_of(fn), has_bias=True, has_residual=True)
    backend = CpuX86Backend()
    (wide,) = run1(backend, Op.CONV2D, attrs, [x, w, bias, res], const=(1, 2))
    for c in range(0, 92, 16):
        part = slice(c, c + 16)
        (narrow,) = run1(backend, Op.CONV2D, attrs, [x, w[part], bias[part], res[:, part]], const=(1, 2))
        np.testing.assert_array_equal(wide[:, part], narrow)
    want = ACTIVATIONS[fn][2](np_conv(x, w, bias, (stride, stride), (pad,) * 4) + res).astype(np.float32)
    close(wide, want, atol=1e-4)


# Winograd: every eligible shape (3x3, stride 1, one group, constant weights) against NumPy and
# against the direct algorithm; odd sizes and asymmetric pads exercise partial tiles and lane blocks.
WINOGRAD_CASES = [
    # (x shape, o, pads)
    ((1, 8, 12, 12), 8, (1, 1, 1, 1)),
    ((2, 16, 13, 9), 24, (0, 1, 2, 0)),
    ((1, 12, 35, 7), 10, (1, 1, 1, 1)),  # several lane blocks along one tile row of F(2,3)
    ((1, 33, 5, 40), 17, (2, 2, 0, 1)),  # more tiles than lanes across; rows shorter than a tile
]


@pytest.mark.parametrize("case", WINOGRAD_CASES, ids=[f"wino{i}" for i in range(len(WINOGRAD_CASES))])
@pytest.mark.parametrize("tile", ["2", "4", "6"])
@pytest.mark.parametrize("isa", ISAS)
def test_conv2d_winograd_matches_direct(backend, monkeypatch, case, tile, isa):
    """Winograd against NumPy and the direct algorithm, each case with data of its own (not the
    module's shared stream, whose state depends on which tests ran before). The tolerance scales
    with the outputs: F(4,3)'s transforms lose more of the low bits than a direct sum (1.8e-4
    was seen on a 297-tap case whose outputs reach tens)."""
    monkeypatch.setenv("WALLE_CPU_X86_ISA", isa)
    xs, o, pads = case
    oh, ow = xs[2] + pads[0] + pads[2] - 2, xs[3] + pads[1] + pads[3] - 2
    data = np.random.default_rng(WINOGRAD_CASES.index(case))
    x, w, bias, res = (data.standard_normal(shape).astype(np.float32)
                       for shape in (xs, (o, xs[1], 3, 3), (o,), (xs[0], o, oh, ow)))
    attrs = ops.Conv2DAttrs(pads=pads, activation=Activation(UnaryFn.RELU), has_bias=True, has_residual=True)
    got = {}
    for mode in ("0", tile):
        monkeypatch.setenv("WALLE_CPU_X86_WINOGRAD", mode)
        seg, feeds = build(Op.CONV2D, attrs, [x, w, bias, res], const=(1, 2))
        exe = backend.compile(seg)
        # only the Winograd algorithm needs the shared workspace: proves which one ran
        assert (exe.plan.workspace_bytes > 0) == (mode != "0")
        (got[mode],) = exe.run(feeds)
    want = np.maximum(np_conv(x, w, bias, pads=pads) + res, 0).astype(np.float32)
    atol = 2e-5 * float(np.abs(want).max())
    close(got[tile], want, atol=atol)
    close(got[tile], got["0"], rtol=1e-4, atol=atol)


@pytest.mark.parametrize("tile", ["2", "4", "6"])
@pytest.mark.parametrize("isa", ISAS)
def test_winograd_ignores_what_the_workspace_held(monkeypatch, tile, isa):
    """The tile transforms run whole vectors of tiles, reading on past a row's last tile into the
    shared workspace, where the op before left non-finite values: lanes of their own, never stored,
    so the second convolution's output is exactly what it is alone."""
    monkeypatch.setenv("WALLE_CPU_X86_ISA", isa)
    monkeypatch.setenv("WALLE_CPU_X86_WINOGRAD", tile)
    backend = CpuX86Backend()
    x1, w1 = f32(1, 24, 21, 19), f32(16, 24, 3, 3)
    x1[0, :, ::3, ::2] = np.inf
    x2, w2 = f32(1, 8, 11, 13), f32(10, 8, 3, 3)
    b = GraphBuilder()
    a1, a2 = b.add_input("x1", TensorType(x1.dtype, x1.shape)), b.add_input("x2", TensorType(x2.dtype, x2.shape))
    pads = ops.Conv2DAttrs(pads=(1, 1, 1, 1))
    (y1,) = b.emit(Op.CONV2D, [a1, b.constant(w1)], pads)
    (y2,) = b.emit(Op.CONV2D, [a2, b.constant(w2)], pads)
    g = b.graph
    exe = backend.compile(Segment(g.nodes, list(g.inputs), [y1, y2], dict(g.types), dict(g.constants)))
    got1, got2 = exe.run([x1, x2])
    assert not np.isfinite(got1).all()
    (alone,) = run1(backend, Op.CONV2D, pads, [x2, w2], const=(1,))
    np.testing.assert_array_equal(got2, alone)
    want = np_conv(x2, w2, pads=(1, 1, 1, 1)).astype(np.float32)
    close(got2, want, atol=1e-5 * np.abs(want).max())  # F(4,3) rounds relative to the output's scale


@pytest.mark.parametrize("shape,picks_winograd", [((1, 64, 56, 56), True), ((1, 4, 56, 56), False),
                                                 ((1, 512, 7, 7), True), ((1, 64, 400, 400), False)],
                         ids=str)
def test_winograd_cost_rule(monkeypatch, shape, picks_winograd):
    """Large maps with many channels go to Winograd; few channels (transforms dominate), maps
    whose tiles would pad the GEMM's columns and maps whose transform would exceed the 64 MiB
    workspace bound stay direct."""
    monkeypatch.delenv("WALLE_CPU_X86_WINOGRAD", raising=False)
    c = shape[1]
    x = np.zeros(shape, np.float32)  # only its type matters: the plan is compiled, not run
    seg, _ = build(Op.CONV2D, ops.Conv2DAttrs(pads=(1, 1, 1, 1)), [x, f32(c, c, 3, 3)], const=(1,))
    assert (CpuX86Backend().compile(seg).plan.workspace_bytes > 0) == picks_winograd


def test_workspace_lies_over_bytes_no_live_tensor_holds(monkeypatch):
    """An op's workspace goes where no tensor alive during that op has bytes: over the 128-channel
    activation the first Winograd convolution no longer needs (no memory past the arena for it),
    and clear of the 16-channel one the second still reads as its input and the residual that
    comes after it."""
    monkeypatch.setenv("WALLE_CPU_X86_WINOGRAD", "4")
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 16, 20, 20)).astype(np.float32)
    w_up, w_down = (rng.standard_normal(s).astype(np.float32) * 0.3 for s in ((128, 16, 1, 1), (16, 128, 1, 1)))
    w3a, w3b = (rng.standard_normal((16, 16, 3, 3)).astype(np.float32) * 0.2 for _ in range(2))
    b = GraphBuilder()
    xi = b.add_input("x", TensorType(x.dtype, x.shape))
    (wide,) = b.emit(Op.CONV2D, [xi, b.constant(w_up)], ops.Conv2DAttrs())
    (narrow,) = b.emit(Op.CONV2D, [wide, b.constant(w_down)], ops.Conv2DAttrs())
    pads = ops.Conv2DAttrs(pads=(1, 1, 1, 1))
    (first,) = b.emit(Op.CONV2D, [narrow, b.constant(w3a)], pads)
    (second,) = b.emit(Op.CONV2D, [first, b.constant(w3b), narrow], ops.Conv2DAttrs(pads=(1, 1, 1, 1), has_residual=True))
    g = b.graph
    exe = CpuX86Backend().compile(Segment(g.nodes, list(g.inputs), [second], dict(g.types), dict(g.constants)))
    plan = exe.plan
    assert plan.workspace_bytes > 0
    assert plan.memory_bytes == -(-plan.arena_bytes // 64) * 64  # every workspace inside the arena
    narrow_want = np_conv(np_conv(x, w_up), w_down)
    want = np_conv(np_conv(narrow_want, w3a, pads=(1, 1, 1, 1)), w3b, pads=(1, 1, 1, 1)) + narrow_want
    for _ in range(2):  # the second run finds the first one's values in the reused bytes
        (got,) = exe.run([x])
        close(got, want.astype(np.float32), atol=1e-4 * float(np.abs(want).max()))


@pytest.mark.parametrize("winograd", ["0", "4"])
def test_packed_weights_are_not_kept_twice(monkeypatch, winograd):
    """Weights packed at compile time (GEMM panels or Winograd transforms) are dropped from the
    plan's constants; the bias, read at run time, stays."""
    monkeypatch.setenv("WALLE_CPU_X86_WINOGRAD", winograd)
    x, w, bias = f32(1, 8, 10, 10), f32(16, 8, 3, 3), f32(16)
    attrs = ops.Conv2DAttrs(pads=(1, 1, 1, 1), has_bias=True)
    seg, feeds = build(Op.CONV2D, attrs, [x, w, bias], const=(1, 2))
    exe = CpuX86Backend().compile(seg)
    assert exe.plan.constant_bytes == bias.nbytes
    close(exe.run(feeds)[0], np_conv(x, w, bias, pads=(1, 1, 1, 1)).astype(np.float32), atol=1e-4)


def test_constant_still_read_at_run_time_is_kept():
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    import walle_core as wc

    w = f32(4, 4)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Sub", ["y", "w"], ["z"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [4, 4])], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    session = wc.load(model, backend="cpu_x86")
    x = f32(4, 4)
    (exe,) = session.plan_for({"x": x}).executables
    assert exe.plan.constant_bytes == w.nbytes  # packed for the MatMul, still read by the Sub
    close(session.run({"x": x})["z"], x @ w - w, atol=1e-5)


def test_winograd_env_is_validated(monkeypatch):
    monkeypatch.setenv("WALLE_CPU_X86_WINOGRAD", "3")
    seg, _ = build(Op.CONV2D, ops.Conv2DAttrs(pads=(1, 1, 1, 1)), [f32(1, 8, 6, 6), f32(8, 8, 3, 3)], const=(1,))
    with pytest.raises(BackendError, match="WALLE_CPU_X86_WINOGRAD"):
        CpuX86Backend().compile(seg)


# -------------------------------------------------------------------------------- pool

POOL_CASES = [
    ("max", (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), (3, 3), False),
    ("max", (2, 2), (2, 2), (0, 0, 0, 0), (1, 1), (4, 3), False),  # ceil mode: windows past the edge
    ("max", (2, 3), (1, 2), (0, 1, 0, 1), (2, 1), (5, 3), False),  # dilated
    ("avg", (3, 2), (1, 2), (1, 0, 1, 1), (1, 1), (7, 3), False),
    ("avg", (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), (4, 3), True),
    ("avg", (2, 2), (2, 2), (0, 0, 0, 0), (1, 1), (4, 3), True),  # ceil mode cells never counted
]


@pytest.mark.parametrize("case", POOL_CASES, ids=[f"pool{i}" for i in range(len(POOL_CASES))])
def test_pool2d(backend, case):
    kind, k, s, pads, dil, out_hw, include = case
    x = f32(2, 3, 7, 6)
    attrs = ops.Pool2DAttrs(PoolKind.MAX if kind == "max" else PoolKind.AVG, k, s, pads, dil, out_hw, include)
    (got,) = run1(backend, Op.POOL2D, attrs, [x])
    close(got, np_pool(x, kind, k, s, pads, dil, out_hw, include))


def random_pool(seed: int, max_kernel: int, max_stride: int, max_hw: tuple[int, int]):
    """A random pooling geometry: (kind, kernel, strides, pads, dilations, output size,
    count_include_pad, input size). Odd seeds take ceil mode where it adds a window, every third
    seed dilations, seeds 2 and 3 mod 4 average pooling (3 counting the pads)."""
    g = np.random.default_rng(seed)
    k = tuple(int(v) for v in g.integers(1, max_kernel + 1, 2))
    s = tuple(int(v) for v in g.integers(1, max_stride + 1, 2))
    dil = tuple(int(v) for v in g.integers(1, 3, 2)) if seed % 3 == 0 else (1, 1)
    pads = tuple(int(g.integers(0, k[i % 2])) for i in range(4))
    h, w = int(g.integers(k[0] * dil[0] + 1, max_hw[0])), int(g.integers(k[1] * dil[1] + 1, max_hw[1]))
    out = []
    for size, kk, ss, dd, lo, hi in ((h, k[0], s[0], dil[0], pads[0], pads[2]), (w, k[1], s[1], dil[1], pads[1], pads[3])):
        extent = size + lo + hi - ((kk - 1) * dd + 1)
        n = extent // ss + 1
        if seed % 2 and extent % ss and n * ss < size + lo:  # ceil mode: one more window, starting inside
            n += 1
        out.append(n)
    kind = "max" if seed % 4 < 2 else "avg"
    return kind, k, s, pads, dil, tuple(out), seed % 4 == 3, (h, w)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("seed", range(10))
def test_pool2d_random_geometry(monkeypatch, isa, seed):
    """Wide rows, so both the inner windows (stride 2 reads the row's even and odd columns) and
    the edge-clipped ones are exercised, for random kernels, strides, pads and dilations."""
    monkeypatch.setenv("WALLE_CPU_X86_ISA", isa)
    kind, k, s, pads, dil, out, include, (h, w) = random_pool(seed, max_kernel=4, max_stride=3, max_hw=(30, 70))
    x = f32(1, 3, h, w)
    attrs = ops.Pool2DAttrs(PoolKind.MAX if kind == "max" else PoolKind.AVG, k, s, pads, dil, out, include)
    (got,) = run1(CpuX86Backend(), Op.POOL2D, attrs, [x])
    close(got, np_pool(x, kind, k, s, pads, dil, out, include))


@pytest.mark.parametrize("seed", range(12))
def test_pool2d_eight_planes_at_a_time_matches_plane_by_plane(monkeypatch, seed):
    """Small planes go eight at a time on AVX2 (interleaved, one 8-lane operation per tap and
    pixel); the portable build goes plane by plane. Same operations in the same order: equal
    results, NaNs included, for random windows, strides, pads, dilations, ceil mode and
    count_include_pad, over 18 planes (two blocks of eight and two planes left over)."""
    kind, k, s, pads, dil, out, include, (h, w) = random_pool(100 + seed, max_kernel=3, max_stride=2, max_hw=(20, 30))
    x = f32(2, 9, h, w)
    x[0, 3, h // 2, w // 2] = np.nan
    attrs = ops.Pool2DAttrs(PoolKind.MAX if kind == "max" else PoolKind.AVG, k, s, pads, dil, out, include)
    pool_on_every_isa(monkeypatch, x, attrs, np_pool(x, kind, k, s, pads, dil, out, include))


def pool_on_every_isa(monkeypatch, x, attrs, want) -> None:
    """The pooling of x on every instruction set equals the portable build's to the bit (NaNs
    included), and that one equals ``want`` (NaNs in the same places)."""
    results = {}
    for isa in ISAS:
        monkeypatch.setenv("WALLE_CPU_X86_ISA", isa)
        (results[isa],) = run1(CpuX86Backend(), Op.POOL2D, attrs, [x])
    for got in results.values():
        np.testing.assert_array_equal(got, results["portable"])
    close(np.nan_to_num(results["portable"], nan=7.0), np.nan_to_num(want, nan=7.0))


@pytest.mark.parametrize("width", [9, 17, 19, 33, 35, 111, 112])
@pytest.mark.parametrize("pad", [0, 1])
def test_max_pool_3x3_stride2_rows_match_plane_by_plane(monkeypatch, width, pad):
    """The AVX2 row kernel of the 3-wide stride-2 max (eight outputs per step, a last partial
    group redone as the eight ending at the row's inner end) against the portable build's
    taps, NaNs included, for rows of fewer than eight inner windows up to ResNet's 112."""
    out_w = (width + 2 * pad - 3) // 2 + 1
    x = f32(1, 3, 7, width)
    x[0, 1, 2, ::7] = np.nan
    attrs = ops.Pool2DAttrs(PoolKind.MAX, (3, 3), (2, 2), (pad, pad, pad, pad), (1, 1), (3 + pad, out_w))
    pool_on_every_isa(monkeypatch, x, attrs, np_pool(x, "max", (3, 3), (2, 2), (pad,) * 4, (1, 1), (3 + pad, out_w)))


def test_max_pool_propagates_nan_and_splits_planes(backend):
    x = f32(3, 5, 9, 11)
    x[1, 2, 3, 3] = np.nan  # inside the windows of outputs (1..2, 1..2)
    attrs = ops.Pool2DAttrs(PoolKind.MAX, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), (5, 6))
    (got,) = run1(backend, Op.POOL2D, attrs, [x])
    want = np_pool(x, "max", (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), (5, 6))
    assert np.isnan(got[1, 2, 1:3, 1:3]).all() and np.isnan(got).sum() == 4
    close(np.nan_to_num(got, nan=7.0), np.nan_to_num(want, nan=7.0))


# ------------------------------------------------------------------------------ profile

def test_profile_times_every_op(monkeypatch):
    monkeypatch.setenv("WALLE_PROFILE", "1")
    b = GraphBuilder()
    x = b.add_input("x", TensorType(np.dtype(np.float32), (1, 8, 10, 10)))
    c = b.emit1(Op.CONV2D, [x, b.constant(f32(8, 8, 3, 3))], ops.Conv2DAttrs(pads=(1, 1, 1, 1)))
    y = b.emit1(Op.UNARY, [c], ops.UnaryAttrs(UnaryFn.EXP))
    g = b.graph
    exe = CpuX86Backend().compile(Segment(g.nodes, ["x"], [y], dict(g.types), dict(g.constants)))
    for _ in range(3):
        exe.run([f32(1, 8, 10, 10)])
    rows = exe.profile()
    assert [r["op"] for r in rows] == ["conv2d", "unary"]
    assert all(r["runs"] == 3 and r["ms"] > 0 for r in rows)
    exe.plan.reset_profile()
    exe.plan.profiling = False
    exe.run([f32(1, 8, 10, 10)])
    assert exe.profile() == []


def test_profile_is_off_by_default(monkeypatch):
    monkeypatch.delenv("WALLE_PROFILE", raising=False)
    seg, feeds = build(Op.UNARY, ops.UnaryAttrs(UnaryFn.NEG), [f32(4)])
    exe = CpuX86Backend().compile(seg)
    exe.run(feeds)
    assert not exe.plan.profiling and exe.profile() == []


# ---------------------------------------------------------------------------- indexing

@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("idx_dtype", [np.int64, np.int32])
def test_gather(backend, axis, idx_dtype):
    x = f32(3, 4, 5)
    n = x.shape[axis]
    idx = np.array([[0, -1], [n - 1, -n], [1, 1]], idx_dtype)
    (got,) = run1(backend, Op.GATHER, ops.GatherAttrs(axis), [x, idx])
    close(got, np.take(x, idx.astype(np.int64), axis=axis))


def test_gather_other_dtypes(backend):
    for data in (np.arange(12, dtype=np.int8).reshape(3, 4), (f32(3, 4) > 0), f32(3, 4).astype(np.float16)):
        (got,) = run1(backend, Op.GATHER, ops.GatherAttrs(1), [data, np.array([3, 0], np.int64)])
        close(got, data[:, [3, 0]])


@pytest.mark.parametrize("bad", [4, -5])
def test_gather_out_of_range_is_a_clear_error(backend, bad):
    x = f32(3, 4)
    seg, _ = build(Op.GATHER, ops.GatherAttrs(1), [x, np.array([0, 1], np.int64)])
    exe = backend.compile(seg)
    with pytest.raises(BackendError, match=rf"gather.*index {bad} out of range for axis of size 4"):
        exe.run([x, np.array([0, bad], np.int64)])
    close(exe.run([x, np.array([3, -4], np.int64)])[0], x[:, [3, 0]])  # still usable


@pytest.mark.parametrize("reduction", [None, BinaryFn.ADD, BinaryFn.MUL, BinaryFn.MAX, BinaryFn.MIN],
                         ids=lambda r: r.value if r else "assign")
@pytest.mark.parametrize("dtype", [np.float32, np.int64])
def test_scatter(backend, reduction, dtype):
    data = (f32(5, 3) * 4).astype(dtype)
    idx = np.array([1, 3, -4, 0, 3], np.int64)  # duplicates: applied in order
    upd = (f32(5, 3) * 4).astype(dtype)
    (got,) = run1(backend, Op.SCATTER, ops.ScatterAttrs(reduction), [data, idx, upd])
    want = data.copy()
    for i, row in enumerate(np.where(idx < 0, idx + 5, idx)):
        if reduction is None:
            want[row] = upd[i]
        else:
            want[row] = {BinaryFn.ADD: np.add, BinaryFn.MUL: np.multiply, BinaryFn.MAX: np.maximum,
                         BinaryFn.MIN: np.minimum}[reduction](want[row], upd[i])
    close(got, want)


def test_scatter_out_of_range_is_a_clear_error(backend):
    seg, _ = build(Op.SCATTER, ops.ScatterAttrs(BinaryFn.ADD),
                   [f32(3, 2), np.array([0], np.int64), f32(1, 2)])
    with pytest.raises(BackendError, match="scatter.*index 3 out of range for axis of size 3"):
        backend.compile(seg).run([f32(3, 2), np.array([3], np.int64), f32(1, 2)])


# ------------------------------------------------------------------------- ISA levels

@pytest.mark.parametrize("isa", ISAS)
def test_every_isa_level(monkeypatch, isa):
    monkeypatch.setenv("WALLE_CPU_X86_ISA", isa)
    be = CpuX86Backend(threads=2)
    a, b, bias = f32(37, 300), f32(300, 70), f32(70)
    seg, feeds = build(Op.MATMUL, ops.MatMulAttrs(activation=Activation(UnaryFn.RELU)), [a, b, bias], const=(1,))
    exe = be.compile(seg)
    assert exe.plan.isa == isa
    close(exe.run(feeds)[0], np.maximum(np_matmul(a, b, False, False) + bias, 0).astype(np.float32), atol=1e-4)
    x, w = f32(1, 5, 9, 8), f32(7, 5, 3, 3)
    (got,) = run1(be, Op.CONV2D, ops.Conv2DAttrs(pads=(1, 1, 1, 1)), [x, w], const=(1,))
    close(got, np_conv(x, w, pads=(1, 1, 1, 1)).astype(np.float32), atol=1e-4)
    # depthwise has its own per-ISA inner loop; 19 x 18 outputs leave a partial vector
    x, w = f32(1, 6, 37, 35), f32(6, 1, 3, 3)
    attrs = ops.Conv2DAttrs((2, 2), (1, 1, 1, 1), groups=6)
    (got,) = run1(be, Op.CONV2D, attrs, [x, w], const=(1,))
    close(got, np_conv(x, w, None, (2, 2), (1, 1, 1, 1), groups=6).astype(np.float32), atol=1e-4)
    # Winograd tile transforms, pooling and the fused epilogue rows have per-ISA copies too;
    # 13 x 11 maps leave partial lane blocks and partial vectors everywhere
    x, w, bias, res = f32(1, 9, 13, 11), f32(10, 9, 3, 3), f32(10), f32(1, 10, 13, 11)
    res[0, 0, 0, :3] = np.nan  # the clip must keep NaN, as NumPy's minimum/maximum do
    act = Activation(UnaryFn.CLIP, -0.5, 0.75)
    want = np.clip(np_conv(x, w, bias, pads=(1, 1, 1, 1)) + res, -0.5, 0.75).astype(np.float32)
    for tile in ("2", "4", "6"):
        monkeypatch.setenv("WALLE_CPU_X86_WINOGRAD", tile)
        attrs = ops.Conv2DAttrs(pads=(1, 1, 1, 1), activation=act, has_bias=True, has_residual=True)
        seg, feeds = build(Op.CONV2D, attrs, [x, w, bias, res], const=(1, 2))
        exe = be.compile(seg)
        assert exe.plan.workspace_bytes > 0  # Winograd ran
        got = exe.run(feeds)[0]
        assert np.isnan(got[0, 0, 0, :3]).all()
        close(got, want, atol=1e-4)
    x = f32(2, 3, 17, 19)
    for kind in ("max", "avg"):
        attrs = ops.Pool2DAttrs(PoolKind.MAX if kind == "max" else PoolKind.AVG, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1),
                                (9, 10))
        (got,) = run1(be, Op.POOL2D, attrs, [x])
        close(got, np_pool(x, kind, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), (9, 10)))


def test_unknown_isa_is_rejected(monkeypatch):
    monkeypatch.setenv("WALLE_CPU_X86_ISA", "sse9")
    seg, _ = build(Op.UNARY, ops.UnaryAttrs(UnaryFn.EXP), [f32(3)])
    with pytest.raises(BackendError, match="unknown ISA 'sse9'"):
        CpuX86Backend().compile(seg)


# ------------------------------------------------------------- threads and concurrency

def test_many_python_threads_share_one_executable():
    be = CpuX86Backend(threads=2)
    b = f32(64, 48)
    seg, _ = build(Op.MATMUL, ops.MatMulAttrs(activation=Activation(UnaryFn.TANH)), [f32(40, 64), b], const=(1,))
    exe = be.compile(seg)

    def worker(seed: int) -> int:
        local = np.random.default_rng(seed)
        for _ in range(30):
            a = local.standard_normal((40, 64)).astype(np.float32)
            (got,) = exe.run([a])
            np.testing.assert_allclose(got, np.tanh(a.astype(np.float64) @ b), rtol=1e-4, atol=1e-4)
        return seed

    n_threads = 6
    with ThreadPoolExecutor(n_threads) as ex:
        assert sorted(f.result() for f in [ex.submit(worker, i) for i in range(n_threads)]) == list(range(n_threads))
    assert 1 <= exe.plan.arenas_created <= n_threads  # arenas are reused, one per concurrent run at most


def _thread_cpu_seconds(tid: str) -> float:
    with open(f"/proc/self/task/{tid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads per-thread CPU time from /proc")
def test_idle_pool_workers_use_no_cpu():
    """Workers poll for a new loop only briefly after each one, then sleep: between runs the
    pool must not keep a core busy (other tasks of the task VM need it)."""
    before = set(os.listdir("/proc/self/task"))
    be = CpuX86Backend(threads=2)
    seg, feeds = build(Op.MATMUL, ops.MatMulAttrs(), [f32(256, 256), f32(256, 256)])
    exe = be.compile(seg)
    for _ in range(20):
        exe.run(feeds)
    workers = sorted(set(os.listdir("/proc/self/task")) - before)
    assert workers, "the pool should have started a worker thread"
    time.sleep(0.05)  # past any polling
    start = {tid: _thread_cpu_seconds(tid) for tid in workers}
    time.sleep(0.5)
    used = sum(_thread_cpu_seconds(tid) - start[tid] for tid in workers)
    assert used < 0.05, f"idle workers used {used:.3f} s of CPU in 0.5 s"


def test_arena_is_reused_when_runs_are_sequential():
    seg, feeds = build(Op.UNARY, ops.UnaryAttrs(UnaryFn.EXP), [f32(100)])
    exe = CpuX86Backend().compile(seg)
    for _ in range(5):
        exe.run(feeds)
    assert exe.plan.arenas_created == 1


def test_gil_is_released_during_a_large_matmul():
    be = CpuX86Backend(threads=1)
    n = 768
    seg, _ = build(Op.MATMUL, ops.MatMulAttrs(), [f32(n, n), f32(n, n)])
    exe = be.compile(seg)
    a, b = f32(n, n), f32(n, n)
    start = time.perf_counter()
    exe.run([a, b])
    once = time.perf_counter() - start
    ticks = 0
    done = threading.Event()

    def native() -> None:
        for _ in range(5):
            exe.run([a, b])
        done.set()

    t = threading.Thread(target=native)
    t.start()
    while not done.is_set():
        ticks += 1
        time.sleep(0)
    t.join()
    # with the GIL held for the whole native call, the counting loop could not run at all
    assert ticks > 100, (ticks, once)


# ------------------------------------------------------------------------- bad input

def test_malformed_run_inputs_raise_value_error(backend):
    seg, feeds = build(Op.BINARY, ops.BinaryAttrs(BinaryFn.ADD), [f32(2, 3), f32(3)])
    exe = backend.compile(seg)
    with pytest.raises(ValueError, match=r"input 'in0': shape \(3, 2\), expected \(2, 3\)"):
        exe.run([f32(3, 2), feeds[1]])
    with pytest.raises(ValueError, match="input 'in1': dtype float64, expected float32"):
        exe.run([feeds[0], np.zeros(3)])
    with pytest.raises(ValueError, match="expected 2 inputs, got 1"):
        exe.run([feeds[0]])
    got = exe.run([np.asfortranarray(feeds[0]), feeds[1]])[0]  # non-contiguous: converted, accepted
    close(got, feeds[0] + feeds[1])


@pytest.mark.parametrize("threads", [1, 2])
def test_native_plan_validates_its_tables(threads):
    """Kernels are built on the plan's pool: a bad record among many still fails the whole plan
    with its own message."""
    pool = _ext.ThreadPool(threads)
    f32_code = _ext.dtype_names().index("float32")
    unary = _ext.op_names().index("unary")
    exp = _ext.unary_fns().index("exp")
    tensors = [(f32_code, 4, [3], 0, 0), (f32_code, 4, [3], 1, 0)]
    good = [(unary, 0, "unary", [0], [1], [exp], [0.0, 0.0])]
    _ext.Plan(tensors, [], [0], [1], good, 0, "", pool)
    bad_cases = {
        "input tensor id out of range": [(unary, 0, "unary", [7], [1], [exp], [0.0, 0.0])],
        "unknown unary function": [(unary, 0, "unary", [0], [1], [999], [0.0, 0.0])],
        "float attribute 0 missing": [(unary, 0, "unary", [0], [1], [exp], [])],
        "writes an input": [(unary, 0, "unary", [0], [0], [exp], [0.0, 0.0])],
    }
    for message, records in bad_cases.items():
        with pytest.raises(ValueError, match=message):
            _ext.Plan(tensors, [], [0], [1], records, 0, "", pool)
    # a chain x -> t1 -> ... -> t8 whose sixth op has a bad function
    chain = [(f32_code, 4, [3], 0, 0)] + [(f32_code, 4, [3], 2, 64 * (i % 2)) for i in range(7)] + \
        [(f32_code, 4, [3], 1, 0)]
    ops = [(unary, i, f"u{i}", [i], [i + 1], [999 if i == 5 else exp], [0.0, 0.0]) for i in range(8)]
    with pytest.raises(ValueError, match="unknown unary function"):
        _ext.Plan(chain, [], [0], [8], ops, 128, "", pool)
    ops[5] = (unary, 5, "u5", [5], [6], [exp], [0.0, 0.0])
    _ext.Plan(chain, [], [0], [8], ops, 128, "", pool)
    with pytest.raises(ValueError, match="arena range outside the arena"):
        _ext.Plan([(f32_code, 4, [3], 0, 0), (f32_code, 4, [3], 2, 64), (f32_code, 4, [3], 1, 0)], [], [0], [2],
                  [(unary, 0, "u", [0], [1], [exp], [0.0, 0.0]), (unary, 1, "u", [1], [2], [exp], [0.0, 0.0])],
                  64, "", pool)
    raster = _ext.op_names().index("raster")
    with pytest.raises(ValueError, match="region 0.*outside its buffer"):
        _ext.Plan(tensors, [], [0], [1], [(raster, 0, "raster", [0], [1], [0, 1, 0, 1, 3, 1, 0, 1, 1], [])], 0, "",
                  pool)


def test_native_plan_checks_parts_written_in_place():
    """A concatenation input written inside the concatenation (a part) may share its bytes while
    both are live; anything else may not, and a part must lie inside its whole."""
    pool = _ext.ThreadPool(1)
    f32_code = _ext.dtype_names().index("float32")
    unary = _ext.op_names().index("unary")
    raster = _ext.op_names().index("raster")
    exp = _ext.unary_fns().index("exp")
    # x -> a (arena, inside c at byte 64) -> c = raster(a) copying nothing, flagged in place -> y
    tensors = [(f32_code, 4, [16], 0, 0), (f32_code, 4, [16], 2, 64), (f32_code, 4, [32], 2, 0),
               (f32_code, 4, [32], 1, 0)]
    records = [(unary, 0, "u", [0], [1], [exp], [0.0, 0.0]), (raster, 1, "cat", [1], [2], [0, 0, 1], []),
               (unary, 2, "u", [2], [3], [exp], [0.0, 0.0])]
    _ext.Plan(tensors, [], [0], [3], records, 128, "", pool, [], [(1, 2)])
    with pytest.raises(ValueError, match="arena plan overlaps live tensors 1 and 2"):
        _ext.Plan(tensors, [], [0], [3], records, 128, "", pool)
    outside = list(tensors)
    outside[1] = (f32_code, 4, [16], 2, 128)
    with pytest.raises(ValueError, match="tensor 1: not an arena range inside the arena tensor it is part of"):
        _ext.Plan(outside, [], [0], [3], records, 192, "", pool, [], [(1, 2)])
    with pytest.raises(ValueError, match="parts form a cycle"):
        _ext.Plan(tensors, [], [0], [3], records, 128, "", pool, [], [(1, 2), (2, 1)])
    with pytest.raises(ValueError, match="in-place flag must be 0 or 1"):
        bad = [records[0], (raster, 1, "cat", [1], [2], [0, 0, 2], []), records[2]]
        _ext.Plan(tensors, [], [0], [3], bad, 128, "", pool, [], [(1, 2)])


@pytest.mark.parametrize("threads", [1, 2])
def test_concatenation_written_in_place(threads):
    """SqueezeNet's fire module: two convolutions write straight into their halves of the
    concatenation, whose copy is left out; a third part, a segment input, is still copied."""
    b = GraphBuilder()
    x = b.add_input("x", TensorType(np.dtype(np.float32), (1, 8, 9, 9)))
    w1, w3 = f32(16, 8, 1, 1), f32(16, 8, 3, 3)
    e1 = b.emit1(Op.CONV2D, [x, b.constant(w1)], ops.Conv2DAttrs(activation=act_of(UnaryFn.RELU)))
    e3 = b.emit1(Op.CONV2D, [x, b.constant(w3)], ops.Conv2DAttrs(pads=(1, 1, 1, 1), activation=act_of(UnaryFn.RELU)))
    n = 16 * 81
    regions = (region(0, (n,), 0, (1,), 0, (1,)), region(1, (n,), 0, (1,), n, (1,)),
               region(2, (8 * 81,), 0, (1,), 2 * n, (1,)))
    cat = b.emit1(Op.RASTER, [e1, e3, x], ops.RasterAttrs((1, 40, 9, 9), regions))
    y = b.emit1(Op.UNARY, [cat], ops.UnaryAttrs(UnaryFn.NEG))
    g = b.graph
    seg = Segment(g.nodes, ["x"], [y], dict(g.types), dict(g.constants))
    exe = CpuX86Backend(threads=threads).compile(seg)
    xv = f32(1, 8, 9, 9)
    (got,) = exe.run([xv])
    want = -np.concatenate([np.maximum(np_conv(xv, w1), 0), np.maximum(np_conv(xv, w3, pads=(1, 1, 1, 1)), 0), xv],
                           axis=1)
    close(got, want.astype(np.float32), atol=1e-4)
    # the parts live inside the concatenation; past it, the gap kept for the 3x3 convolution's
    # workspace if it runs Winograd (the concatenation is alive while it runs)
    assert exe.plan.arena_bytes == -(-40 * 81 * 4 // 64) * 64 + exe.plan.workspace_bytes
    assert exe.plan.memory_bytes == exe.plan.arena_bytes


# ------------------------------------------------------------------- whole segments

def test_conv_relu_pool_matmul_in_one_executable(backend):
    b = GraphBuilder()
    x = b.add_input("x", TensorType(np.dtype(np.float32), (2, 3, 8, 8)))
    w, bias = f32(6, 3, 3, 3), f32(6)
    c = b.emit1(Op.CONV2D, [x, b.constant(w), b.constant(bias)], ops.Conv2DAttrs(pads=(1, 1, 1, 1), has_bias=True))
    r = b.emit1(Op.UNARY, [c], ops.UnaryAttrs(UnaryFn.RELU))
    p = b.emit1(Op.POOL2D, [r], ops.Pool2DAttrs(PoolKind.MAX, (2, 2), (2, 2), (0, 0, 0, 0), (1, 1), (4, 4)))
    flat = b.emit1(Op.RASTER, [p], ops.RasterAttrs((2, 96), (region(0, (192,), 0, (1,), 0, (1,)),)))
    fc = f32(96, 10)
    y = b.emit1(Op.MATMUL, [flat, b.constant(fc)], ops.MatMulAttrs())
    g = b.graph
    seg = Segment(g.nodes, ["x"], [y, r], dict(g.types), dict(g.constants))  # r: also read later
    exe = backend.compile(seg)
    xv = f32(2, 3, 8, 8)
    got_y, got_r = exe.run([xv])
    want_r = np.maximum(np_conv(xv, w, bias, pads=(1, 1, 1, 1)), 0)
    want_p = want_r.reshape(2, 6, 4, 2, 4, 2).max(axis=(3, 5))
    close(got_r, want_r.astype(np.float32), atol=1e-4)
    close(got_y, (want_p.reshape(2, 96) @ fc).astype(np.float32), atol=1e-4)
    assert exe.plan.arena_bytes > 0


def test_outputs_may_be_inputs_constants_or_repeated(backend):
    b = GraphBuilder()
    x = b.add_input("x", TensorType(np.dtype(np.float32), (4,)))
    k = b.constant(np.arange(4, dtype=np.float32))
    y = b.emit1(Op.BINARY, [x, k], ops.BinaryAttrs(BinaryFn.MUL))
    g = b.graph
    seg = Segment(g.nodes, ["x"], [y, x, k, y], dict(g.types), dict(g.constants))
    xv = f32(4)
    got = backend.compile(seg).run([xv])
    for out, want in zip(got, [xv * np.arange(4), xv, np.arange(4, dtype=np.float32), xv * np.arange(4)]):
        close(out, want.astype(np.float32))
    assert got[0] is not got[3]
