"""GridSample (2-D and 3-D; nearest, linear, cubic; zeros, border, reflection padding).

The sampling positions come from a run-time grid, so unlike Resize nothing folds: per spatial
dim the grid component is mapped to input coordinates with elementwise atoms, each tap of the
interpolation stencil becomes clamped integer indices plus a weight, and the taps are fetched
with one GATHER each from the input flattened to one axis (the batch and channel offsets are a
constant added to the spatial offset). A tap outside the input reads 0 under zeros padding.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import onnx

from walle_core.decompose import raster
from walle_core.decompose.context import LoweringContext, Rule
from walle_core.decompose.elementwise import binary, cast, select, unary
from walle_core.decompose.indexing import grid_offsets
from walle_core.decompose.raster import contiguous_strides
from walle_core.ops import BinaryFn, GatherAttrs, Op, UnaryFn

_I64 = np.dtype(np.int64)
_CUBIC_A = -0.75


def _reflect(ctx: LoweringContext, x: str, lo: float, hi: float) -> str:
    """Fold ``x`` into [lo, hi] by reflecting at the borders as often as needed."""
    span = ctx.scalar(hi - lo, x)

    def fold(dx: str) -> tuple[str, str]:  # (remainder, odd number of folds)
        n = unary(ctx, binary(ctx, BinaryFn.DIV, dx, span), UnaryFn.FLOOR)
        r = binary(ctx, BinaryFn.SUB, dx, binary(ctx, BinaryFn.MUL, n, span))
        odd = binary(ctx, BinaryFn.NE, binary(ctx, BinaryFn.FMOD, n, ctx.scalar(2.0, x)), ctx.scalar(0.0, x))
        return r, odd

    lo_c, hi_c = ctx.scalar(lo, x), ctx.scalar(hi, x)
    r_lo, odd_lo = fold(binary(ctx, BinaryFn.SUB, lo_c, x))
    below = select(ctx, odd_lo, binary(ctx, BinaryFn.SUB, hi_c, r_lo), binary(ctx, BinaryFn.ADD, lo_c, r_lo))
    r_hi, odd_hi = fold(binary(ctx, BinaryFn.SUB, x, hi_c))
    above = select(ctx, odd_hi, binary(ctx, BinaryFn.ADD, lo_c, r_hi), binary(ctx, BinaryFn.SUB, hi_c, r_hi))
    x = select(ctx, binary(ctx, BinaryFn.LT, x, lo_c), below, x)
    return select(ctx, binary(ctx, BinaryFn.GT, x, hi_c), above, x)


def _cubic_weights(ctx: LoweringContext, t: str) -> list[str]:
    """Keys' cubic coefficients of the taps at offsets -1, 0, 1, 2 for fraction ``t``."""
    a = _CUBIC_A

    def near(d: str) -> str:  # (a+2)|d|^3 - (a+3)|d|^2 + 1
        d2 = binary(ctx, BinaryFn.MUL, d, d)
        return binary(ctx, BinaryFn.ADD, binary(ctx, BinaryFn.MUL, d2, binary(
            ctx, BinaryFn.SUB, binary(ctx, BinaryFn.MUL, d, ctx.scalar(a + 2, d)), ctx.scalar(a + 3, d))),
            ctx.scalar(1.0, d))

    def far(d: str) -> str:  # a|d|^3 - 5a|d|^2 + 8a|d| - 4a
        poly = binary(ctx, BinaryFn.SUB, binary(ctx, BinaryFn.MUL, d, ctx.scalar(a, d)), ctx.scalar(5 * a, d))
        poly = binary(ctx, BinaryFn.ADD, binary(ctx, BinaryFn.MUL, poly, d), ctx.scalar(8 * a, d))
        return binary(ctx, BinaryFn.SUB, binary(ctx, BinaryFn.MUL, poly, d), ctx.scalar(4 * a, d))

    one = ctx.scalar(1.0, t)
    return [far(binary(ctx, BinaryFn.ADD, t, one)), near(t), near(binary(ctx, BinaryFn.SUB, one, t)),
            far(binary(ctx, BinaryFn.SUB, ctx.scalar(2.0, t), t))]


def _grid_sample(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    x, grid = ctx.required_input(node, 0), ctx.required_input(node, 1)
    xs, gs = ctx.shape(x), ctx.shape(grid)
    nd = len(xs) - 2
    if nd < 1 or len(gs) != nd + 2 or gs[0] != xs[0] or gs[-1] != nd:
        raise ctx.invalid(f"grid {gs} does not match input {xs}")
    mode = ctx.attr(node, "mode", "linear")
    mode = {"bilinear": "linear", "bicubic": "cubic"}.get(mode, mode)
    padding = ctx.attr(node, "padding_mode", "zeros")
    align = bool(ctx.attr(node, "align_corners", 0))
    if mode not in ("nearest", "linear", "cubic") or padding not in ("zeros", "border", "reflection"):
        raise ctx.invalid(f"mode={mode!r} / padding_mode={padding!r} is not supported")
    dims, out = xs[2:], list(gs[1:-1])
    n, c = xs[:2]
    # per spatial dim (outermost first): taps of (index, weight) over [N, *out]
    stencils: list[list[tuple[str, str | None, str]]] = []
    for i, size in enumerate(dims):
        g = raster.squeeze(ctx, raster.slice_axes(ctx, grid, [nd - 1 - i], [nd - i], [nd + 1]), [nd + 1])
        if align:
            lo, hi = 0.0, size - 1.0
            pos = binary(ctx, BinaryFn.MUL, binary(ctx, BinaryFn.ADD, g, ctx.scalar(1.0, g)), ctx.scalar(hi / 2, g))
        else:
            lo, hi = -0.5, size - 0.5
            pos = binary(ctx, BinaryFn.DIV, binary(ctx, BinaryFn.SUB, binary(
                ctx, BinaryFn.MUL, binary(ctx, BinaryFn.ADD, g, ctx.scalar(1.0, g)), ctx.scalar(size, g)),
                ctx.scalar(1.0, g)), ctx.scalar(2.0, g))
        if mode == "nearest":
            pos = unary(ctx, pos, UnaryFn.ROUND)
        if padding == "border":  # only positions past the border move (as ONNX's reference does)
            outside = binary(ctx, BinaryFn.OR, binary(ctx, BinaryFn.LT, pos, ctx.scalar(lo, pos)),
                             binary(ctx, BinaryFn.GT, pos, ctx.scalar(hi, pos)))
            pos = select(ctx, outside, unary(ctx, pos, UnaryFn.CLIP, 0.0, size - 1.0), pos)
        elif padding == "reflection":
            pos = _reflect(ctx, pos, lo, hi)
        if mode == "nearest":
            taps = [(pos, None)]
        else:
            base = unary(ctx, pos, UnaryFn.FLOOR)
            t = binary(ctx, BinaryFn.SUB, pos, base)
            if mode == "linear":
                weights = [binary(ctx, BinaryFn.SUB, ctx.scalar(1.0, t), t), t]
                offsets = [0, 1]
            else:
                weights, offsets = _cubic_weights(ctx, t), [-1, 0, 1, 2]
            taps = [(binary(ctx, BinaryFn.ADD, base, ctx.scalar(o, base)), w) for o, w in zip(offsets, weights)]
        resolved = []
        for where, weight in taps:
            if padding == "reflection":
                where = _reflect(ctx, where, lo, hi)
            elif padding == "border":
                where = unary(ctx, where, UnaryFn.CLIP, 0.0, size - 1.0)
            idx = cast(ctx, where, _I64)  # truncation, as the reference's int()
            inside = binary(ctx, BinaryFn.AND, binary(ctx, BinaryFn.GE, where, ctx.scalar(0.0, where)),
                            binary(ctx, BinaryFn.LE, where, ctx.scalar(size - 1.0, where)))
            idx = select(ctx, inside, idx, ctx.constant(np.int64(0)))
            resolved.append((idx, weight, inside))
        stencils.append(resolved)
    strides = contiguous_strides(dims)
    spatial = math.prod(dims)
    base = ctx.constant(grid_offsets([n, c, *([1] * nd)], [c * spatial, spatial, *([0] * nd)]))
    table = raster.reshape(ctx, x, [n * c * spatial])
    dtype = ctx.dtype(x)
    total = None
    for combo in itertools.product(*stencils):
        flat, weight, valid = None, None, None
        for (idx, w, inside), stride in zip(combo, strides):
            term = binary(ctx, BinaryFn.MUL, idx, ctx.constant(np.int64(stride)))
            flat = term if flat is None else binary(ctx, BinaryFn.ADD, flat, term)
            if w is not None:
                weight = w if weight is None else binary(ctx, BinaryFn.MUL, weight, w)
            valid = inside if valid is None else binary(ctx, BinaryFn.AND, valid, inside)
        offsets = binary(ctx, BinaryFn.ADD, base, raster.unsqueeze(ctx, flat, [1]))
        value = ctx.emit1(Op.GATHER, [table, offsets], GatherAttrs(0))
        if padding == "zeros":
            value = select(ctx, raster.unsqueeze(ctx, valid, [1]), value, ctx.scalar(0, value))
        if weight is not None:
            value = binary(ctx, BinaryFn.MUL, value, raster.unsqueeze(ctx, cast(ctx, weight, dtype), [1]))
        total = value if total is None else binary(ctx, BinaryFn.ADD, total, value)
    return [raster.reshape(ctx, total, [n, c, *out])]


RULES: dict[str, Rule] = {"GridSample": _grid_sample}
