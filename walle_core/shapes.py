"""Type and shape inference for atomic ops, and the checks that keep a node well formed.

This is where sizes that come from a model file are validated once, in Python, before any
backend sees them; backends still check them again natively.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from walle_core import ops
from walle_core.errors import WalleError
from walle_core.ops import Op

MAX_RANK = 8
MAX_ELEMENTS = 1 << 40

OutType = tuple[np.dtype, tuple[int, ...]]


def _fail(op: Op, msg: str) -> WalleError:
    return WalleError(f"[{op.value}] {msg}")


def broadcast_shapes(op: Op, *shapes: Sequence[int]) -> tuple[int, ...]:
    rank = max(len(s) for s in shapes)
    out = []
    for axis in range(rank):
        dims = {s[axis - rank + len(s)] for s in shapes if axis - rank + len(s) >= 0}
        dims.discard(1)
        if len(dims) > 1:
            raise _fail(op, f"shapes {[tuple(s) for s in shapes]} do not broadcast")
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def _check_shape(op: Op, shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(d) for d in shape)
    if len(shape) > MAX_RANK:
        raise _fail(op, f"rank {len(shape)} exceeds {MAX_RANK}")
    if any(d < 0 for d in shape):
        raise _fail(op, f"negative dimension in {shape}")
    if int(np.prod(shape, dtype=np.float64)) > MAX_ELEMENTS:
        raise _fail(op, f"shape {shape} is too large")
    return shape


def _axis(op: Op, axis: int, rank: int) -> int:
    if not 0 <= axis < max(rank, 1):
        raise _fail(op, f"axis {axis} out of range for rank {rank}")
    return axis


def _raster(t: list, a: ops.RasterAttrs) -> list[OutType]:
    shape = _check_shape(Op.RASTER, a.shape)
    if not t:
        raise _fail(Op.RASTER, "needs at least one input")
    dtype = t[0].dtype
    if any(x.dtype != dtype for x in t):
        raise _fail(Op.RASTER, "all inputs must share one dtype")
    out_size = int(np.prod(shape, dtype=np.int64))
    for r in a.regions:
        if not 0 <= r.input < len(t):
            raise _fail(Op.RASTER, f"region input {r.input} out of range")
        if not (len(r.size) == len(r.src_strides) == len(r.dst_strides)):
            raise _fail(Op.RASTER, "region size/stride ranks differ")
        if any(s <= 0 for s in r.size):
            continue  # empty region: nothing to copy
        for off, strides, limit, side in (
            (r.src_offset, r.src_strides, t[r.input].size, "source"),
            (r.dst_offset, r.dst_strides, out_size, "destination"),
        ):
            lo = off + sum(min(0, (n - 1) * s) for n, s in zip(r.size, strides))
            hi = off + sum(max(0, (n - 1) * s) for n, s in zip(r.size, strides))
            if lo < 0 or hi >= limit:
                raise _fail(Op.RASTER, f"region reads/writes outside its {side} ({lo}..{hi} of {limit})")
    return [(dtype, shape)]


def _binary(t: list, a: ops.BinaryAttrs) -> list[OutType]:
    if t[0].dtype != t[1].dtype:
        raise _fail(Op.BINARY, f"{a.fn.value}: dtypes differ ({t[0].dtype} vs {t[1].dtype})")
    shape = broadcast_shapes(Op.BINARY, t[0].shape, t[1].shape)
    dtype = np.dtype(bool) if a.fn in ops.COMPARISON_FNS else t[0].dtype
    return [(dtype, shape)]


def _select(t: list, a: ops.SelectAttrs) -> list[OutType]:
    if t[0].dtype != np.dtype(bool):
        raise _fail(Op.SELECT, "condition must be bool")
    if t[1].dtype != t[2].dtype:
        raise _fail(Op.SELECT, "branches must share one dtype")
    return [(t[1].dtype, broadcast_shapes(Op.SELECT, t[0].shape, t[1].shape, t[2].shape))]


def _reduce(t: list, a: ops.ReduceAttrs) -> list[OutType]:
    shape = t[0].shape
    for axis in a.axes:
        _axis(Op.REDUCE, axis, len(shape))
    out = tuple(1 if i in a.axes else d for i, d in enumerate(shape) if a.keepdims or i not in a.axes)
    return [(t[0].dtype, out)]


def _arg_reduce(t: list, a: ops.ArgReduceAttrs) -> list[OutType]:
    shape = t[0].shape
    _axis(Op.ARG_REDUCE, a.axis, len(shape))
    if shape and shape[a.axis] == 0:
        raise _fail(Op.ARG_REDUCE, "cannot reduce an empty axis")
    out = tuple(1 if i == a.axis else d for i, d in enumerate(shape) if a.keepdims or i != a.axis)
    return [(np.dtype(np.int64), out)]


def _topk(t: list, a: ops.TopKAttrs) -> list[OutType]:
    shape = t[0].shape
    _axis(Op.TOPK, a.axis, len(shape))
    if not 0 <= a.k <= shape[a.axis]:
        raise _fail(Op.TOPK, f"k={a.k} out of range for axis of size {shape[a.axis]}")
    out = tuple(a.k if i == a.axis else d for i, d in enumerate(shape))
    return [(t[0].dtype, out), (np.dtype(np.int64), out)]


def _matmul(t: list, a: ops.MatMulAttrs) -> list[OutType]:
    sa, sb = t[0].shape, t[1].shape
    if len(sa) < 2 or len(sb) < 2:
        raise _fail(Op.MATMUL, f"operands must be at least 2-D, got {sa} and {sb}")
    if t[0].dtype != t[1].dtype:
        raise _fail(Op.MATMUL, f"dtypes differ ({t[0].dtype} vs {t[1].dtype})")
    m, k = (sa[-1], sa[-2]) if a.trans_a else (sa[-2], sa[-1])
    k2, n = (sb[-1], sb[-2]) if a.trans_b else (sb[-2], sb[-1])
    if k != k2:
        raise _fail(Op.MATMUL, f"inner dimensions differ: {sa} x {sb}")
    batch = broadcast_shapes(Op.MATMUL, sa[:-2], sb[:-2])
    out = batch + (m, n)
    if len(t) > 2:
        broadcast_shapes(Op.MATMUL, out, t[2].shape)
        if broadcast_shapes(Op.MATMUL, out, t[2].shape) != out:
            raise _fail(Op.MATMUL, f"bias {t[2].shape} does not broadcast to {out}")
    return [(t[0].dtype, out)]


def _conv_out(op: Op, size: int, k: int, s: int, p0: int, p1: int, d: int) -> int:
    if k <= 0 or s <= 0 or d <= 0 or p0 < 0 or p1 < 0:
        raise _fail(op, "kernel, strides and dilations must be positive, pads non-negative")
    span = d * (k - 1) + 1
    out = (size + p0 + p1 - span) // s + 1
    if out <= 0:
        raise _fail(op, f"window {span} does not fit input {size} with pads ({p0}, {p1})")
    return out


def _conv2d(t: list, a: ops.Conv2DAttrs) -> list[OutType]:
    x, w = t[0].shape, t[1].shape
    if len(x) != 4 or len(w) != 4:
        raise _fail(Op.CONV2D, f"input and weight must be 4-D, got {x} and {w}")
    g = a.groups
    if g <= 0 or x[1] % g or w[0] % g or w[1] * g != x[1]:
        raise _fail(Op.CONV2D, f"channels {x[1]} / weight {w} do not match groups={g}")
    oh = _conv_out(Op.CONV2D, x[2], w[2], a.strides[0], a.pads[0], a.pads[2], a.dilations[0])
    ow = _conv_out(Op.CONV2D, x[3], w[3], a.strides[1], a.pads[1], a.pads[3], a.dilations[1])
    out = (x[0], w[0], oh, ow)
    extra = 2
    if a.has_bias:
        if t[extra].shape != (w[0],):
            raise _fail(Op.CONV2D, f"bias shape {t[extra].shape} is not ({w[0]},)")
        extra += 1
    if a.has_residual and t[extra].shape != out:
        raise _fail(Op.CONV2D, f"residual shape {t[extra].shape} is not {out}")
    if len(t) != extra + int(a.has_residual):
        raise _fail(Op.CONV2D, "input count does not match has_bias/has_residual")
    return [(t[0].dtype, out)]


def _pool2d(t: list, a: ops.Pool2DAttrs) -> list[OutType]:
    x = t[0].shape
    if len(x) != 4:
        raise _fail(Op.POOL2D, f"input must be 4-D, got {x}")
    for i in range(2):
        if a.kernel[i] <= 0 or a.strides[i] <= 0 or a.dilations[i] <= 0 or a.out_hw[i] <= 0:
            raise _fail(Op.POOL2D, "kernel, strides, dilations and output size must be positive")
    return [(t[0].dtype, (x[0], x[1], *a.out_hw))]


def _gather(t: list, a: ops.GatherAttrs) -> list[OutType]:
    data, idx = t[0], t[1]
    _axis(Op.GATHER, a.axis, len(data.shape))
    if idx.dtype not in (np.dtype(np.int64), np.dtype(np.int32)):
        raise _fail(Op.GATHER, f"indices must be int32/int64, got {idx.dtype}")
    out = data.shape[: a.axis] + idx.shape + data.shape[a.axis + 1 :]
    return [(data.dtype, _check_shape(Op.GATHER, out))]


def _scatter(t: list, a: ops.ScatterAttrs) -> list[OutType]:
    data, idx, upd = t
    if idx.dtype != np.dtype(np.int64) or len(idx.shape) != 1:
        raise _fail(Op.SCATTER, "indices must be 1-D int64")
    if not data.shape or upd.shape != idx.shape + data.shape[1:]:
        raise _fail(Op.SCATTER, f"updates {upd.shape} do not match indices {idx.shape} / data {data.shape}")
    if upd.dtype != data.dtype:
        raise _fail(Op.SCATTER, "updates dtype differs from data")
    return [(data.dtype, data.shape)]


def _cumulative(t: list, a: ops.CumulativeAttrs) -> list[OutType]:
    _axis(Op.CUMULATIVE, a.axis, len(t[0].shape))
    return [(t[0].dtype, t[0].shape)]


def _cast(t: list, a: ops.CastAttrs) -> list[OutType]:
    to = np.dtype(a.to)
    if a.bitcast and (to.itemsize != t[0].dtype.itemsize or to.kind in "OUS" or t[0].dtype.kind in "OUS"):
        raise _fail(Op.CAST, f"bitcast from {t[0].dtype} to {to} needs two fixed-size types of one element size")
    return [(to, t[0].shape)]


_RULES: dict[Op, Any] = {
    Op.RASTER: _raster,
    Op.UNARY: lambda t, a: [(t[0].dtype, t[0].shape)],
    Op.BINARY: _binary,
    Op.SELECT: _select,
    Op.CAST: _cast,
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

_ARITY: dict[Op, tuple[int, int]] = {
    Op.RASTER: (1, 1 << 16), Op.UNARY: (1, 1), Op.BINARY: (2, 2), Op.SELECT: (3, 3),
    Op.CAST: (1, 1), Op.REDUCE: (1, 1), Op.ARG_REDUCE: (1, 1), Op.CUMULATIVE: (1, 1),
    Op.TOPK: (1, 1), Op.MATMUL: (2, 3), Op.CONV2D: (2, 4), Op.POOL2D: (1, 1),
    Op.GATHER: (2, 2), Op.SCATTER: (3, 3),
}


def infer_types(op: Op, inputs: list, attrs: Any) -> list[OutType]:
    """Output (dtype, shape) of ``op`` for input :class:`TensorType` s, or a WalleError."""
    if not isinstance(attrs, ops.ATTRS_TYPE[op]):
        raise _fail(op, f"attributes must be {ops.ATTRS_TYPE[op].__name__}, got {type(attrs).__name__}")
    lo, hi = _ARITY[op]
    if not lo <= len(inputs) <= hi:
        raise _fail(op, f"takes {lo}..{hi} inputs, got {len(inputs)}")
    return [(dt, _check_shape(op, shape)) for dt, shape in _RULES[op](inputs, attrs)]
