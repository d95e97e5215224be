"""Reductions and scans: Reduce*, ArgMax/ArgMin, Softmax/LogSoftmax, TopK, CumSum."""

from __future__ import annotations

import math

import numpy as np
import onnx

from walle_core.decompose import raster
from walle_core.decompose.context import LoweringContext, Rule
from walle_core.decompose.elementwise import binary, cast, unary
from walle_core.decompose.raster import numpy_shape
from walle_core.ops import (
    ArgReduceAttrs,
    BinaryFn,
    CumulativeAttrs,
    Op,
    ReduceAttrs,
    ReduceFn,
    TopKAttrs,
    UnaryFn,
)

#: the opset from which each Reduce* op takes its axes as an input instead of an attribute
_AXES_INPUT_SINCE = 18


def reduce(ctx: LoweringContext, x: str, fn: ReduceFn, axes: tuple[int, ...], keepdims: bool) -> str:
    return ctx.emit1(Op.REDUCE, [x], ReduceAttrs(fn, tuple(sorted(set(axes))), keepdims))


def _reduce_axes(ctx: LoweringContext, node: onnx.NodeProto, x: str) -> tuple[int, ...] | None:
    """Normalised axes to reduce, or None for "leave the input as it is" (noop_with_empty_axes)."""
    since = 13 if node.op_type == "ReduceSum" else _AXES_INPUT_SINCE
    rank = ctx.rank(x)
    if ctx.opset < since:
        axes = ctx.ints_attr(node, "axes")
    else:
        value = ctx.const_input(node, 1, "axes")
        axes = None if value is None else numpy_shape(value)
    if not axes:  # absent and empty axes mean the same
        if ctx.attr(node, "noop_with_empty_axes", 0):
            return None
        return tuple(range(rank))
    norm = tuple(ctx.axis(a, rank) for a in axes)
    if len(set(norm)) != len(norm):
        raise ctx.invalid(f"axes {axes} repeat an axis")
    return norm


def _reduce_rule(kind: str) -> Rule:
    """ReduceSum/Mean/Max/Min/Prod, and the composites ReduceL1/L2/SumSquare/LogSum/LogSumExp."""

    def rule(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
        x = ctx.required_input(node, 0)
        axes = _reduce_axes(ctx, node, x)
        keep = bool(ctx.attr(node, "keepdims", 1))
        if axes is None:
            return [x]
        if kind in ("Sum", "Mean", "Max", "Min", "Prod"):
            return [reduce(ctx, x, ReduceFn[kind.upper()], axes, keep)]
        if kind == "L1":
            return [reduce(ctx, unary(ctx, x, UnaryFn.ABS), ReduceFn.SUM, axes, keep)]
        if kind in ("L2", "SumSquare"):
            total = reduce(ctx, binary(ctx, BinaryFn.MUL, x, x), ReduceFn.SUM, axes, keep)
            return [unary(ctx, total, UnaryFn.SQRT) if kind == "L2" else total]
        if kind == "LogSum":
            return [unary(ctx, reduce(ctx, x, ReduceFn.SUM, axes, keep), UnaryFn.LOG)]
        # LogSumExp, shifted by the max for stability
        peak = reduce(ctx, x, ReduceFn.MAX, axes, True)
        total = reduce(ctx, unary(ctx, binary(ctx, BinaryFn.SUB, x, peak), UnaryFn.EXP), ReduceFn.SUM, axes, True)
        y = binary(ctx, BinaryFn.ADD, unary(ctx, total, UnaryFn.LOG), peak)
        if not keep:
            y = raster.squeeze(ctx, y, list(axes))
        return [y]

    return rule


def _arg_rule(largest: bool) -> Rule:
    def rule(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
        x = ctx.required_input(node, 0)
        attrs = ArgReduceAttrs(axis=ctx.axis(ctx.attr(node, "axis", 0), ctx.rank(x)),
                               keepdims=bool(ctx.attr(node, "keepdims", 1)), largest=largest,
                               select_last_index=bool(ctx.attr(node, "select_last_index", 0)))
        return [ctx.emit1(Op.ARG_REDUCE, [x], attrs)]

    return rule


def _softmax_rule(log: bool) -> Rule:
    """max, sub, exp, sum, div (or sub log-sum for LogSoftmax) along one axis. Before opset 13
    the input is coerced to 2-D at ``axis`` and normalised over the whole trailing block."""

    def rule(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
        x = ctx.required_input(node, 0)
        shape = ctx.shape(x)
        if ctx.opset < 13:
            axis = int(ctx.attr(node, "axis", 1))
            axis = axis + len(shape) if axis < 0 else axis
            if not 0 <= axis <= len(shape):
                raise ctx.invalid(f"axis {axis} is out of range for rank {len(shape)}")
            flat = raster.reshape(ctx, x, [math.prod(shape[:axis]), math.prod(shape[axis:])])
            return [raster.reshape(ctx, softmax(ctx, flat, 1, log), shape)]
        axis = ctx.axis(ctx.attr(node, "axis", -1), len(shape))
        return [softmax(ctx, x, axis, log)]

    return rule


def softmax(ctx: LoweringContext, x: str, axis: int, log: bool = False) -> str:
    shifted = binary(ctx, BinaryFn.SUB, x, reduce(ctx, x, ReduceFn.MAX, (axis,), True))
    exp = unary(ctx, shifted, UnaryFn.EXP)
    total = reduce(ctx, exp, ReduceFn.SUM, (axis,), True)
    if log:
        return binary(ctx, BinaryFn.SUB, shifted, unary(ctx, total, UnaryFn.LOG))
    return binary(ctx, BinaryFn.DIV, exp, total)


def _hardmax(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    """One at the first maximum along the axis: argmax compared with an index ramp."""
    x = ctx.required_input(node, 0)
    shape = ctx.shape(x)
    if ctx.opset < 13:  # coerced to 2-D at axis, like Softmax
        axis = int(ctx.attr(node, "axis", 1))
        axis = axis + len(shape) if axis < 0 else axis
        if not 0 <= axis <= len(shape):
            raise ctx.invalid(f"axis {axis} is out of range for rank {len(shape)}")
        flat = raster.reshape(ctx, x, [math.prod(shape[:axis]), math.prod(shape[axis:])])
        return [raster.reshape(ctx, hardmax(ctx, flat, 1), shape)]
    return [hardmax(ctx, x, ctx.axis(ctx.attr(node, "axis", -1), len(shape)))]


def hardmax(ctx: LoweringContext, x: str, axis: int) -> str:
    shape = ctx.shape(x)
    best = ctx.emit1(Op.ARG_REDUCE, [x], ArgReduceAttrs(axis, keepdims=True, largest=True))
    view = [1] * len(shape)
    view[axis] = shape[axis]
    ramp = ctx.constant(np.arange(shape[axis], dtype=np.int64).reshape(view))
    return cast(ctx, binary(ctx, BinaryFn.EQ, best, ramp), ctx.dtype(x))


def _topk(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    x = ctx.required_input(node, 0)
    if ctx.opset < 10:
        k = ctx.attr(node, "k")
    else:
        value = ctx.const_input(node, 1, "K")
        k = None if value is None else int(np.asarray(value).reshape(-1)[0])
    if k is None:
        raise ctx.invalid("k is required")
    axis = ctx.axis(ctx.attr(node, "axis", -1), ctx.rank(x))
    if not 0 <= k <= ctx.shape(x)[axis]:
        raise ctx.invalid(f"k={k} is out of range for axis {axis} of size {ctx.shape(x)[axis]}")
    attrs = TopKAttrs(axis, int(k), bool(ctx.attr(node, "largest", 1)), bool(ctx.attr(node, "sorted", 1)))
    return ctx.emit(Op.TOPK, [x], attrs, n_outputs=2)


def _cumsum(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    x = ctx.required_input(node, 0)
    value = ctx.const_input(node, 1, "axis")
    if value is None:
        raise ctx.invalid("input 1 (axis) is missing")
    axis = ctx.axis(int(np.asarray(value).reshape(-1)[0]), ctx.rank(x))
    attrs = CumulativeAttrs(axis, bool(ctx.attr(node, "exclusive", 0)), bool(ctx.attr(node, "reverse", 0)))
    return [ctx.emit1(Op.CUMULATIVE, [x], attrs)]


RULES: dict[str, Rule] = {
    **{f"Reduce{kind}": _reduce_rule(kind) for kind in
       ("Sum", "Mean", "Max", "Min", "Prod", "L1", "L2", "SumSquare", "LogSum", "LogSumExp")},
    "ArgMax": _arg_rule(True), "ArgMin": _arg_rule(False),
    "Softmax": _softmax_rule(False), "LogSoftmax": _softmax_rule(True),
    "TopK": _topk, "CumSum": _cumsum, "Hardmax": _hardmax,
}
