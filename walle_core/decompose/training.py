"""The optimiser steps of the ``ai.onnx.preview.training`` domain (Adagrad, Momentum, Adam):
elementwise updates of every (X, G, state) group. The step count T selects formulas, so it is
read as a value (specialised when fed as an input)."""

from __future__ import annotations

import math

import numpy as np
import onnx

from walle_core.decompose.context import LoweringContext, Rule
from walle_core.decompose.elementwise import binary, cast, unary
from walle_core.ops import BinaryFn, UnaryFn


def _groups(ctx: LoweringContext, node: onnx.NodeProto, per: int) -> tuple[str, int, list[list[str]]]:
    """(rate R, step T, [[X, G, state...] for each optimised tensor])."""
    rate = ctx.required_input(node, 0)
    step = int(np.asarray(ctx.const_input(node, 1, "T")).reshape(-1)[0])
    rest = [ctx.required_input(node, i) for i in range(2, len(node.input))]
    if not rest or len(rest) % per:
        raise ctx.invalid(f"inputs after R and T must come in {per} groups of equal length")
    n = len(rest) // per
    return rate, step, [[rest[k * n + i] for k in range(per)] for i in range(n)]


def _lin(ctx: LoweringContext, a: float, x: str, b: float, y: str) -> str:
    """a * x + b * y."""
    return binary(ctx, BinaryFn.ADD, binary(ctx, BinaryFn.MUL, x, ctx.scalar(a, x)),
                  binary(ctx, BinaryFn.MUL, y, ctx.scalar(b, y)))


def _adagrad(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    rate, step, groups = _groups(ctx, node, 3)
    decay, eps = ctx.attr(node, "decay_factor", 0.0), ctx.attr(node, "epsilon", 0.0)
    norm = ctx.attr(node, "norm_coefficient", 0.0)
    xs, hs = [], []
    for x, g, h in groups:
        r = binary(ctx, BinaryFn.DIV, cast(ctx, rate, ctx.dtype(x)), ctx.scalar(1 + step * decay, x))
        grad = _lin(ctx, norm, x, 1.0, g)
        h_new = binary(ctx, BinaryFn.ADD, h, binary(ctx, BinaryFn.MUL, grad, grad))
        denom = binary(ctx, BinaryFn.ADD, unary(ctx, h_new, UnaryFn.SQRT), ctx.scalar(eps, x))
        xs.append(binary(ctx, BinaryFn.SUB, x, binary(ctx, BinaryFn.DIV, binary(ctx, BinaryFn.MUL, r, grad), denom)))
        hs.append(h_new)
    return xs + hs


def _momentum(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    rate, step, groups = _groups(ctx, node, 3)
    alpha, beta = ctx.attr(node, "alpha"), ctx.attr(node, "beta")
    norm, mode = ctx.attr(node, "norm_coefficient"), ctx.attr(node, "mode", "standard")
    if alpha is None or beta is None or norm is None or mode not in ("standard", "nesterov"):
        raise ctx.invalid("alpha, beta, norm_coefficient and mode (standard/nesterov) are required")
    xs, vs = [], []
    for x, g, v in groups:
        r = cast(ctx, rate, ctx.dtype(x))
        grad = _lin(ctx, norm, x, 1.0, g)
        v_new = _lin(ctx, alpha, v, beta if step > 0 else 1.0, grad)
        move = v_new if mode == "standard" else _lin(ctx, 1.0, grad, alpha, v_new)
        xs.append(binary(ctx, BinaryFn.SUB, x, binary(ctx, BinaryFn.MUL, r, move)))
        vs.append(v_new)
    return xs + vs


def _adam(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    rate, step, groups = _groups(ctx, node, 4)
    alpha, beta = ctx.attr(node, "alpha", 0.9), ctx.attr(node, "beta", 0.999)
    eps, norm = ctx.attr(node, "epsilon", 0.0), ctx.attr(node, "norm_coefficient", 0.0)
    post = ctx.attr(node, "norm_coefficient_post", 0.0)
    bias_fix = math.sqrt(1 - beta ** step) / (1 - alpha ** step) if step > 0 else 1.0
    xs, vs, hs = [], [], []
    for x, g, v, h in groups:
        r = binary(ctx, BinaryFn.MUL, cast(ctx, rate, ctx.dtype(x)), ctx.scalar(bias_fix, x))
        grad = _lin(ctx, norm, x, 1.0, g)
        v_new = _lin(ctx, alpha, v, 1 - alpha, grad)
        h_new = _lin(ctx, beta, h, 1 - beta, binary(ctx, BinaryFn.MUL, grad, grad))
        denom = binary(ctx, BinaryFn.ADD, unary(ctx, h_new, UnaryFn.SQRT), ctx.scalar(eps, x))
        x_new = binary(ctx, BinaryFn.SUB, x, binary(ctx, BinaryFn.MUL, r, binary(ctx, BinaryFn.DIV, v_new, denom)))
        xs.append(binary(ctx, BinaryFn.MUL, x_new, ctx.scalar(1 - post, x)))
        vs.append(v_new)
        hs.append(h_new)
    return xs + vs + hs


RULES: dict[str, Rule] = {"Adagrad": _adagrad, "Momentum": _momentum, "Adam": _adam}
