"""Normalisations beyond the batch/instance/layer ones in ``nn``: LpNormalization and LRN."""

from __future__ import annotations

import math

import onnx

from walle_core.decompose import raster
from walle_core.decompose.context import LoweringContext, Rule
from walle_core.decompose.elementwise import binary, select, unary
from walle_core.decompose.reduce import reduce
from walle_core.ops import BinaryFn, Op, Pool2DAttrs, PoolKind, ReduceFn, UnaryFn


def _lp_normalization(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    """x / ||x||_p along one axis (p = 1 or 2); an all-zero slice stays zero."""
    x = ctx.required_input(node, 0)
    axis = ctx.axis(ctx.attr(node, "axis", -1), ctx.rank(x))
    p = int(ctx.attr(node, "p", 2))
    if p == 1:
        norm = reduce(ctx, unary(ctx, x, UnaryFn.ABS), ReduceFn.SUM, (axis,), True)
    elif p == 2:
        norm = unary(ctx, reduce(ctx, binary(ctx, BinaryFn.MUL, x, x), ReduceFn.SUM, (axis,), True), UnaryFn.SQRT)
    else:
        raise ctx.invalid(f"p={p} is not 1 or 2")
    zero = ctx.scalar(0, x)
    return [select(ctx, binary(ctx, BinaryFn.EQ, norm, zero), zero, binary(ctx, BinaryFn.DIV, x, norm))]


def _lrn(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    """x / (bias + alpha / size * sum of squares over a channel window) ^ beta. The window sum
    is an average POOL2D over the channel axis (pads counted) times the window size."""
    x = ctx.required_input(node, 0)
    shape = ctx.shape(x)
    if len(shape) < 3:
        raise ctx.invalid(f"input must be at least 3-D, got {shape}")
    size = ctx.attr(node, "size")
    if size is None or size <= 0:
        raise ctx.invalid("attribute 'size' must be positive")
    alpha, beta, bias = ctx.attr(node, "alpha", 1e-4), ctx.attr(node, "beta", 0.75), ctx.attr(node, "bias", 1.0)
    n, c, rest = shape[0], shape[1], math.prod(shape[2:])
    before, after = (size - 1) // 2, math.ceil((size - 1) / 2)
    squares = raster.reshape(ctx, binary(ctx, BinaryFn.MUL, x, x), [n, 1, c, rest])
    attrs = Pool2DAttrs(PoolKind.AVG, (size, 1), (1, 1), (before, 0, after, 0), (1, 1), (c, rest),
                        count_include_pad=True)
    mean = raster.reshape(ctx, ctx.emit1(Op.POOL2D, [squares], attrs), shape)
    scaled = binary(ctx, BinaryFn.MUL, mean, ctx.scalar(alpha, x))  # alpha / size * (size * mean)
    denom = binary(ctx, BinaryFn.POW, binary(ctx, BinaryFn.ADD, scaled, ctx.scalar(bias, x)), ctx.scalar(beta, x))
    return [binary(ctx, BinaryFn.DIV, x, denom)]


RULES: dict[str, Rule] = {"LpNormalization": _lp_normalization, "LRN": _lrn}
