"""DeformConv (2-D): bilinear sampling at learned offsets, then a grouped MATMUL.

Each kernel tap of each output position reads the input at its regular position plus a
run-time offset, so the four bilinear corners are computed in the graph (FLOOR, a few
BINARY ops) and turned into flat indices for one GATHER per corner; corners outside the
image get weight 0 (zero padding, as the reference's GridSample with align_corners=1). The
sampled, weighted and masked columns [N, C * K, positions] then meet the weights in one
batched MATMUL per convolution group.
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from walle_core.decompose import raster
from walle_core.decompose.context import LoweringContext, Rule
from walle_core.decompose.elementwise import binary, cast, unary
from walle_core.ops import BinaryFn, GatherAttrs, MatMulAttrs, Op, UnaryFn

I64 = np.dtype(np.int64)


def _corner(ctx: LoweringContext, y0: str, x0: str, dy: int, dx: int, hw: tuple[int, int]) -> tuple[str, str]:
    """(flat index into one H*W plane, 0/1 in-bounds flag as the input dtype) of a corner."""
    h, w = hw
    yc = binary(ctx, BinaryFn.ADD, y0, ctx.scalar(dy, y0))
    xc = binary(ctx, BinaryFn.ADD, x0, ctx.scalar(dx, x0))
    inside = None
    for v, size in ((yc, h), (xc, w)):
        ok = binary(ctx, BinaryFn.AND, binary(ctx, BinaryFn.GE, v, ctx.scalar(0, v)),
                    binary(ctx, BinaryFn.LE, v, ctx.scalar(size - 1, v)))
        inside = ok if inside is None else binary(ctx, BinaryFn.AND, inside, ok)
    yi = cast(ctx, unary(ctx, yc, UnaryFn.CLIP, 0.0, float(h - 1)), I64)
    xi = cast(ctx, unary(ctx, xc, UnaryFn.CLIP, 0.0, float(w - 1)), I64)
    flat = binary(ctx, BinaryFn.ADD, binary(ctx, BinaryFn.MUL, yi, ctx.constant(np.array(w, I64))), xi)
    return flat, cast(ctx, inside, ctx.dtype(y0))


def _deform_conv(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    x, w, offset = (ctx.required_input(node, i) for i in range(3))
    bias, mask = ctx.input(node, 3), ctx.input(node, 4)
    if ctx.rank(x) != 4 or ctx.rank(w) != 4 or ctx.rank(offset) != 4:
        raise ctx.unsupported("only 2-D DeformConv ([N, C, H, W] inputs) is supported")
    n, c, h, wd = ctx.shape(x)
    oc, cg, kh, kw = ctx.shape(w)
    _, off_ch, oh, ow = ctx.shape(offset)
    group, og = int(ctx.attr(node, "group", 1)), int(ctx.attr(node, "offset_group", 1))
    k = kh * kw
    if group <= 0 or og <= 0 or c != cg * group or oc % group or c % og or off_ch != og * 2 * k:
        raise ctx.invalid(f"inconsistent shapes: X {[n, c, h, wd]}, W {[oc, cg, kh, kw]}, offset "
                          f"{ctx.shape(offset)}, group={group}, offset_group={og}")
    if (ctx.ints_attr(node, "kernel_shape") or [kh, kw]) != [kh, kw]:
        raise ctx.invalid(f"kernel_shape does not match the weights' {[kh, kw]}")
    sh, sw = ctx.ints_attr(node, "strides", [1, 1])
    dh, dw = ctx.ints_attr(node, "dilations", [1, 1])
    pads = ctx.ints_attr(node, "pads", [0, 0, 0, 0])
    if min(sh, sw, dh, dw) <= 0 or len(pads) != 4:
        raise ctx.invalid("strides and dilations must be positive and pads hold 4 values")
    if (oh, ow) != ((h + pads[0] + pads[2] - (kh - 1) * dh - 1) // sh + 1,
                    (wd + pads[1] + pads[3] - (kw - 1) * dw - 1) // sw + 1):
        raise ctx.invalid(f"offset's spatial size {[oh, ow]} does not match the convolution's output")
    # sampling positions: regular grid [K, oH, oW] plus the offsets [N, G, K, oH, oW]
    taps = np.arange(k)
    base_y = (-pads[0] + sh * np.arange(oh)[None, :, None] + (taps // kw * dh)[:, None, None]).astype(ctx.dtype(x))
    base_x = (-pads[1] + sw * np.arange(ow)[None, None, :] + (taps % kw * dw)[:, None, None]).astype(ctx.dtype(x))
    off = raster.reshape(ctx, offset, (n, og, k, 2, oh, ow))
    y = binary(ctx, BinaryFn.ADD, raster.squeeze(ctx, raster.slice_axes(ctx, off, [0], [1], [3]), [3]),
               ctx.constant(base_y))
    xs = binary(ctx, BinaryFn.ADD, raster.squeeze(ctx, raster.slice_axes(ctx, off, [1], [2], [3]), [3]),
                ctx.constant(base_x))
    y0, x0 = unary(ctx, y, UnaryFn.FLOOR), unary(ctx, xs, UnaryFn.FLOOR)
    ly, lx = binary(ctx, BinaryFn.SUB, y, y0), binary(ctx, BinaryFn.SUB, xs, x0)
    one = ctx.scalar(1.0, y)
    hy, hx = binary(ctx, BinaryFn.SUB, one, ly), binary(ctx, BinaryFn.SUB, one, lx)
    # every (n, offset group, channel) plane of X flattened; a corner index adds the plane's start
    per_group = c // og
    planes = ctx.constant((np.arange(n * c, dtype=np.int64) * h * wd).reshape(n, og, per_group, 1, 1, 1))
    table = raster.reshape(ctx, x, (n * c * h * wd,))
    sampled = None
    for dy, dx, wy, wx in ((0, 0, hy, hx), (0, 1, hy, lx), (1, 0, ly, hx), (1, 1, ly, lx)):
        flat, inside = _corner(ctx, y0, x0, dy, dx, (h, wd))
        index = binary(ctx, BinaryFn.ADD, raster.unsqueeze(ctx, flat, [2]), planes)  # [N, G, C/G, K, oH, oW]
        values = ctx.emit1(Op.GATHER, [table, index], GatherAttrs(0))
        weight = binary(ctx, BinaryFn.MUL, binary(ctx, BinaryFn.MUL, wy, wx), inside)
        term = binary(ctx, BinaryFn.MUL, values, raster.unsqueeze(ctx, weight, [2]))
        sampled = term if sampled is None else binary(ctx, BinaryFn.ADD, sampled, term)
    if mask:
        if ctx.shape(mask) != (n, og * k, oh, ow):
            raise ctx.invalid(f"mask must be {[n, og * k, oh, ow]}, got {list(ctx.shape(mask))}")
        sampled = binary(ctx, BinaryFn.MUL, sampled, raster.unsqueeze(ctx, raster.reshape(
            ctx, mask, (n, og, k, oh, ow)), [2]))
    cols = raster.reshape(ctx, sampled, (n, group, cg * k, oh * ow))
    weights = raster.reshape(ctx, w, (group, oc // group, cg * k))
    out = ctx.emit1(Op.MATMUL, [weights, cols], MatMulAttrs())  # [N, group, oC/group, oH*oW]
    out = raster.reshape(ctx, out, (n, oc, oh, ow))
    if bias:
        if math.prod(ctx.shape(bias)) != oc:
            raise ctx.invalid(f"bias must hold {oc} values")
        out = binary(ctx, BinaryFn.ADD, out, raster.reshape(ctx, bias, (oc, 1, 1)))
    return [out]


RULES: dict[str, Rule] = {"DeformConv": _deform_conv}
