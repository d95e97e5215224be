"""NumPy implementations of every atomic op: the oracle for tests, the fallback for ops a
backend declines, and the evaluator for constant folding. Clarity over speed."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided

from walle_core import ops
from walle_core.errors import WalleError
from walle_core.ops import BinaryFn, Op, PoolKind, ReduceFn, UnaryFn

Kernel = Callable[[Any, list[np.ndarray]], list[np.ndarray]]

_erf_scalar = np.frompyfunc(math.erf, 1, 1)

#: ml_dtypes' floating types: NumPy files them under kind "V", outside ``np.floating``
_ML_FLOATS = frozenset({"bfloat16", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz",
                        "float8_e8m0fnu", "float4_e2m1fn"})


def is_float(dtype: Any) -> bool:
    """True for every floating dtype, the ml_dtypes ones (bfloat16, float8 ...) included."""
    dtype = np.dtype(dtype)
    return dtype.kind == "f" or dtype.name in _ML_FLOATS


def _erf(x: np.ndarray) -> np.ndarray:
    return _erf_scalar(x.astype(np.float64)).astype(np.float64)


def _int_bounds(dtype: np.dtype, lo: float, hi: float) -> tuple[Any, Any]:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        lo = info.min if lo < info.min else int(lo)
        hi = info.max if hi > info.max else int(hi)
    return lo, hi


def apply_unary(fn: UnaryFn, x: np.ndarray, alpha: float = 0.0, beta: float = 0.0) -> np.ndarray:
    """Apply one unary function, keeping ``x``'s dtype (also used for fused activations)."""
    f = fn
    if f is UnaryFn.IDENTITY:
        y = x.copy()
    elif f is UnaryFn.NOT:
        y = np.logical_not(x)
    elif f is UnaryFn.RELU:
        y = np.maximum(x, np.zeros((), x.dtype))
    elif f is UnaryFn.LEAKY_RELU:
        y = np.where(x >= 0, x, x * alpha)
    elif f is UnaryFn.CLIP:
        lo, hi = _int_bounds(x.dtype, alpha, beta)
        y = np.minimum(np.maximum(x, lo), hi)
    elif f is UnaryFn.SIGMOID:
        y = 1.0 / (1.0 + np.exp(-x))
    elif f is UnaryFn.HARD_SIGMOID:
        y = np.clip(x * alpha + beta, 0.0, 1.0)
    elif f is UnaryFn.HARD_SWISH:
        y = x * np.clip(x / 6.0 + 0.5, 0.0, 1.0)
    elif f is UnaryFn.ELU:
        y = np.where(x > 0, x, alpha * (np.exp(x) - 1.0))
    elif f is UnaryFn.SOFTPLUS:
        y = np.logaddexp(0.0, x)
    elif f is UnaryFn.RSQRT:
        y = 1.0 / np.sqrt(x)
    elif f is UnaryFn.RECIPROCAL:
        y = 1.0 / x
    elif f is UnaryFn.ERF:
        y = _erf(x)
    else:
        y = _NUMPY_UNARY[f](x)
    return np.asarray(y).astype(x.dtype, copy=False)


_NUMPY_UNARY: dict[UnaryFn, Callable[[np.ndarray], np.ndarray]] = {
    UnaryFn.NEG: np.negative, UnaryFn.ABS: np.abs, UnaryFn.SIGN: np.sign, UnaryFn.EXP: np.exp,
    UnaryFn.LOG: np.log, UnaryFn.SQRT: np.sqrt, UnaryFn.FLOOR: np.floor, UnaryFn.CEIL: np.ceil,
    UnaryFn.ROUND: np.round, UnaryFn.SIN: np.sin, UnaryFn.COS: np.cos, UnaryFn.TAN: np.tan,
    UnaryFn.ASIN: np.arcsin, UnaryFn.ACOS: np.arccos, UnaryFn.ATAN: np.arctan, UnaryFn.SINH: np.sinh,
    UnaryFn.COSH: np.cosh, UnaryFn.ASINH: np.arcsinh, UnaryFn.ACOSH: np.arccosh,
    UnaryFn.ATANH: np.arctanh, UnaryFn.TANH: np.tanh,
}


def _int_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    safe_b = np.where(b == 0, 1, b)
    q = a // safe_b
    q = q + ((a % safe_b != 0) & ((a < 0) != (safe_b < 0)))
    return np.where(b == 0, 0, q)


def apply_binary(fn: BinaryFn, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    integer = np.issubdtype(a.dtype, np.integer)
    if fn is BinaryFn.DIV and integer:
        y = _int_div(a, b)
    elif fn is BinaryFn.POW and integer:
        y = np.power(a.astype(np.float64), b.astype(np.float64))
    elif fn in (BinaryFn.MOD, BinaryFn.FMOD) and integer:
        safe_b = np.where(b == 0, 1, b)
        y = np.where(b == 0, 0, (np.mod if fn is BinaryFn.MOD else np.fmod)(a, safe_b))
    else:
        y = _NUMPY_BINARY[fn](a, b)
    out_dtype = np.dtype(bool) if fn in ops.COMPARISON_FNS else a.dtype
    return np.asarray(y).astype(out_dtype, copy=False)


_NUMPY_BINARY: dict[BinaryFn, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    BinaryFn.ADD: np.add, BinaryFn.SUB: np.subtract, BinaryFn.MUL: np.multiply,
    BinaryFn.DIV: np.divide, BinaryFn.POW: np.power, BinaryFn.MAX: np.maximum,
    BinaryFn.MIN: np.minimum, BinaryFn.MOD: np.mod, BinaryFn.FMOD: np.fmod, BinaryFn.EQ: np.equal,
    BinaryFn.NE: np.not_equal, BinaryFn.LT: np.less, BinaryFn.LE: np.less_equal,
    BinaryFn.GT: np.greater, BinaryFn.GE: np.greater_equal, BinaryFn.AND: np.logical_and,
    BinaryFn.OR: np.logical_or, BinaryFn.XOR: np.logical_xor, BinaryFn.BIT_AND: np.bitwise_and,
    BinaryFn.BIT_OR: np.bitwise_or, BinaryFn.BIT_XOR: np.bitwise_xor, BinaryFn.SHL: np.left_shift,
    BinaryFn.SHR: np.right_shift,
}


def _raster(a: ops.RasterAttrs, xs: list[np.ndarray]) -> list[np.ndarray]:
    dtype = xs[0].dtype
    if a.fill is None:
        out = np.zeros(a.shape, dtype)
    else:
        out = np.full(a.shape, a.fill).astype(dtype)
    flat_out = out.reshape(-1)
    item = dtype.itemsize
    for r in a.regions:
        if any(n <= 0 for n in r.size):
            continue
        src = np.asarray(xs[r.input], order="C").reshape(-1)
        src_view = as_strided(src[r.src_offset:], r.size, tuple(s * item for s in r.src_strides))
        dst_view = as_strided(flat_out[r.dst_offset:], r.size, tuple(s * item for s in r.dst_strides))
        dst_view[...] = src_view
    return [out]


def _reduce(a: ops.ReduceAttrs, xs: list[np.ndarray]) -> list[np.ndarray]:
    x = xs[0]
    if not a.axes:
        return [x.copy()]
    axes = tuple(a.axes)
    f = a.fn
    if f is ReduceFn.SUM:
        y = np.sum(x, axis=axes, keepdims=a.keepdims, dtype=x.dtype)
    elif f is ReduceFn.MEAN:
        y = np.mean(x, axis=axes, keepdims=a.keepdims)
    elif f is ReduceFn.PROD:
        y = np.prod(x, axis=axes, keepdims=a.keepdims, dtype=x.dtype)
    else:
        if is_float(x.dtype):
            init = -np.inf if f is ReduceFn.MAX else np.inf
        elif x.dtype == np.dtype(bool):
            init = f is not ReduceFn.MAX
        else:
            info = np.iinfo(x.dtype)
            init = info.min if f is ReduceFn.MAX else info.max
        red = np.max if f is ReduceFn.MAX else np.min
        y = red(x, axis=axes, keepdims=a.keepdims, initial=init)
    return [np.asarray(y).astype(x.dtype, copy=False)]


def _arg_reduce(a: ops.ArgReduceAttrs, xs: list[np.ndarray]) -> list[np.ndarray]:
    x = xs[0]
    f = np.argmax if a.largest else np.argmin
    if a.select_last_index:
        n = x.shape[a.axis]
        idx = n - 1 - f(np.flip(x, a.axis), axis=a.axis)
    else:
        idx = f(x, axis=a.axis)
    if a.keepdims:
        idx = np.expand_dims(idx, a.axis)
    return [np.asarray(idx, dtype=np.int64)]


def _cumulative(a: ops.CumulativeAttrs, xs: list[np.ndarray]) -> list[np.ndarray]:
    x = xs[0]
    if a.reverse:
        x = np.flip(x, a.axis)
    y = np.cumsum(x, axis=a.axis, dtype=x.dtype)
    if a.exclusive:
        y = y - x
    if a.reverse:
        y = np.flip(y, a.axis)
    return [np.asarray(y, order="C")]


def _topk(a: ops.TopKAttrs, xs: list[np.ndarray]) -> list[np.ndarray]:
    x = xs[0]
    n = x.shape[a.axis]
    if a.largest:
        # stable ascending sort of the reversed axis, read backwards: descending values,
        # ties in increasing original index
        order = np.argsort(np.flip(x, a.axis), axis=a.axis, kind="stable")
        idx = n - 1 - np.flip(order, a.axis)
    else:
        idx = np.argsort(x, axis=a.axis, kind="stable")
    idx = np.take(idx, np.arange(a.k), axis=a.axis)
    return [np.take_along_axis(x, idx, a.axis), idx.astype(np.int64)]


def _matmul(a: ops.MatMulAttrs, xs: list[np.ndarray]) -> list[np.ndarray]:
    lhs = np.swapaxes(xs[0], -1, -2) if a.trans_a else xs[0]
    rhs = np.swapaxes(xs[1], -1, -2) if a.trans_b else xs[1]
    y = np.matmul(lhs, rhs)
    if len(xs) > 2:
        y = y + xs[2]
    act = a.activation
    return [apply_unary(act.fn, np.asarray(y, xs[0].dtype), act.alpha, act.beta)]


def _windows(x: np.ndarray, kernel, strides, dilations, out_hw) -> np.ndarray:
    """View of shape [N, C, OH, OW, KH, KW] over an already padded NCHW array."""
    n, c = x.shape[:2]
    sn, sc, sh, sw = x.strides
    shape = (n, c, out_hw[0], out_hw[1], kernel[0], kernel[1])
    st = (sn, sc, sh * strides[0], sw * strides[1], sh * dilations[0], sw * dilations[1])
    return as_strided(x, shape, st, writeable=False)


def _conv2d(a: ops.Conv2DAttrs, xs: list[np.ndarray]) -> list[np.ndarray]:
    x, w = xs[0], xs[1]
    top, left, bottom, right = a.pads
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    oc, cg, kh, kw = w.shape
    g = a.groups
    oh = (xp.shape[2] - a.dilations[0] * (kh - 1) - 1) // a.strides[0] + 1
    ow = (xp.shape[3] - a.dilations[1] * (kw - 1) - 1) // a.strides[1] + 1
    win = _windows(xp, (kh, kw), a.strides, a.dilations, (oh, ow))
    win = win.reshape(x.shape[0], g, cg, oh, ow, kh, kw)
    wg = w.reshape(g, oc // g, cg, kh, kw)
    y = np.einsum("ngcyxij,gocij->ngoyx", win, wg, optimize=True).reshape(x.shape[0], oc, oh, ow)
    extra = 2
    if a.has_bias:
        y = y + xs[extra].reshape(1, oc, 1, 1)
        extra += 1
    if a.has_residual:
        y = y + xs[extra]
    act = a.activation
    return [apply_unary(act.fn, np.asarray(y, x.dtype, order="C"), act.alpha, act.beta)]


def _pool2d(a: ops.Pool2DAttrs, xs: list[np.ndarray]) -> list[np.ndarray]:
    x = xs[0]
    h, w = x.shape[2:]
    top, left, bottom, right = a.pads
    span_h = (a.out_hw[0] - 1) * a.strides[0] + a.dilations[0] * (a.kernel[0] - 1) + 1
    span_w = (a.out_hw[1] - 1) * a.strides[1] + a.dilations[1] * (a.kernel[1] - 1) + 1
    # windows may reach past the explicit pads (ceil_mode): extend, never counting those cells
    ext_b = max(bottom, span_h - h - top)
    ext_r = max(right, span_w - w - left)
    pad = ((0, 0), (0, 0), (top, ext_b), (left, ext_r))
    inside = np.zeros((1, 1, h + top + ext_b, w + left + ext_r), np.float64)
    inside[..., top : top + h, left : left + w] = 1.0
    if a.kind is PoolKind.MAX:
        low = -np.inf if is_float(x.dtype) else np.iinfo(x.dtype).min
        xp = np.pad(x, pad, constant_values=low)
        y = _windows(xp, a.kernel, a.strides, a.dilations, a.out_hw).max(axis=(4, 5))
        return [np.asarray(y, x.dtype, order="C")]
    xp = np.pad(x.astype(np.float64), pad)
    total = _windows(xp, a.kernel, a.strides, a.dilations, a.out_hw).sum(axis=(4, 5))
    if a.count_include_pad:
        inside[..., : top + h + bottom, : left + w + right] = 1.0
    count = _windows(inside, a.kernel, a.strides, a.dilations, a.out_hw).sum(axis=(4, 5))
    y = total / np.maximum(count, 1.0)
    return [np.asarray(y, x.dtype, order="C")]


def _normalised_indices(idx: np.ndarray, n: int, op: Op) -> np.ndarray:
    idx = idx.astype(np.int64)
    bad = (idx < -n) | (idx >= n)
    if bad.any():
        raise WalleError(f"[{op.value}] index {int(idx[bad].flat[0])} out of range for axis of size {n}")
    return np.where(idx < 0, idx + n, idx)


def _gather(a: ops.GatherAttrs, xs: list[np.ndarray]) -> list[np.ndarray]:
    data, idx = xs
    idx = _normalised_indices(idx, data.shape[a.axis], Op.GATHER)
    return [np.asarray(np.take(data, idx, axis=a.axis), order="C")]


_UFUNC_AT = {BinaryFn.ADD: np.add, BinaryFn.MUL: np.multiply, BinaryFn.MAX: np.maximum,
             BinaryFn.MIN: np.minimum}


def _scatter(a: ops.ScatterAttrs, xs: list[np.ndarray]) -> list[np.ndarray]:
    data, idx, upd = xs
    out = data.copy()
    idx = _normalised_indices(idx, data.shape[0], Op.SCATTER)
    if a.reduction is None:
        for i, row in enumerate(idx):  # in order: the last write to a row wins
            out[row] = upd[i]
    elif a.reduction in _UFUNC_AT:
        _UFUNC_AT[a.reduction].at(out, idx, upd)
    else:
        raise WalleError(f"[scatter] unsupported reduction {a.reduction}")
    return [out]


KERNELS: dict[Op, Kernel] = {
    Op.RASTER: _raster,
    Op.UNARY: lambda a, xs: [apply_unary(a.fn, xs[0], a.alpha, a.beta)],
    Op.BINARY: lambda a, xs: [apply_binary(a.fn, xs[0], xs[1])],
    Op.SELECT: lambda a, xs: [np.where(xs[0], xs[1], xs[2]).astype(xs[1].dtype, copy=False)],
    Op.CAST: lambda a, xs: [xs[0].view(a.to) if a.bitcast else xs[0].astype(a.to)],
    Op.REDUCE: _reduce,
    Op.ARG_REDUCE: _arg_reduce,
    Op.CUMULATIVE: _cumulative,
    Op.TOPK: _topk,
    Op.MATMUL: _matmul,
    Op.CONV2D: _conv2d,
    Op.POOL2D: _pool2d,
    Op.GATHER: _gather,
    Op.SCATTER: _scatter,
}


def evaluate(op: Op, attrs: Any, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Evaluate one atomic op on NumPy arrays; returns its outputs as contiguous arrays."""
    with np.errstate(all="ignore"):
        return [np.asarray(y, order="C") for y in KERNELS[op](attrs, list(arrays))]
