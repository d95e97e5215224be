"""3-D convolution and pooling on the 2-D atoms.

A 3-D conv is a sum over the kernel's depth taps of 2-D convs: tap ``kd`` convolves, for every
output depth at once (folded into the batch), the input depth slice it reads. A 3-D pool is
separable: pool over (H, W) with the depth folded into the channels, then over the depth with
(H, W) flattened into one axis. That holds for max, and for averages too because a window's
cell count is the product of its per-axis counts.
"""

from __future__ import annotations

import math

from walle_core.decompose import raster
from walle_core.decompose.context import LoweringContext
from walle_core.decompose.elementwise import binary
from walle_core.ops import BinaryFn, Conv2DAttrs, Op, Pool2DAttrs, PoolKind


def conv3d(ctx: LoweringContext, x: str, w: str, b: str, kernel: list[int], strides: list[int],
           dilations: list[int], begins: list[int], ends: list[int], groups: int) -> str:
    n, c, depth, h, wd = ctx.shape(x)
    o = ctx.shape(w)[0]
    x = raster.pad_constant(ctx, x, [0, 0, begins[0], 0, 0], [0, 0, ends[0], 0, 0])
    padded = depth + begins[0] + ends[0]
    od = (padded - dilations[0] * (kernel[0] - 1) - 1) // strides[0] + 1
    if od <= 0:
        raise ctx.invalid(f"kernel depth {kernel[0]} does not fit input depth {depth} with its pads")
    attrs = Conv2DAttrs(strides=(strides[1], strides[2]), pads=(begins[1], begins[2], ends[1], ends[2]),
                        dilations=(dilations[1], dilations[2]), groups=groups)
    total = None
    for kd in range(kernel[0]):
        start = kd * dilations[0]
        xs = raster.slice_axes(ctx, x, [start], [start + (od - 1) * strides[0] + 1], [2], [strides[0]])
        xs = raster.reshape(ctx, raster.transpose(ctx, xs, [0, 2, 1, 3, 4]), [n * od, c, h, wd])
        wk = raster.squeeze(ctx, raster.slice_axes(ctx, w, [kd], [kd + 1], [2]), [2])
        y = ctx.emit1(Op.CONV2D, [xs, wk], attrs)
        total = y if total is None else binary(ctx, BinaryFn.ADD, total, y)
    oh, ow = ctx.shape(total)[2:]
    y = raster.transpose(ctx, raster.reshape(ctx, total, [n, od, o, oh, ow]), [0, 2, 1, 3, 4])
    if b:
        y = binary(ctx, BinaryFn.ADD, y, raster.reshape(ctx, b, [o, 1, 1, 1]))
    return y


def pool3d(ctx: LoweringContext, x: str, kind: PoolKind, kernel: list[int], strides: list[int],
           dilations: list[int], begins: list[int], ends: list[int], out: list[int],
           count_include_pad: bool) -> str:
    n, c, depth, h, w = ctx.shape(x)
    plane = Pool2DAttrs(kind, (kernel[1], kernel[2]), (strides[1], strides[2]),
                        (begins[1], begins[2], ends[1], ends[2]), (dilations[1], dilations[2]),
                        (out[1], out[2]), count_include_pad)
    y = ctx.emit1(Op.POOL2D, [raster.reshape(ctx, x, [n, c * depth, h, w])], plane)
    deep = Pool2DAttrs(kind, (kernel[0], 1), (strides[0], 1), (begins[0], 0, ends[0], 0), (dilations[0], 1),
                       (out[0], out[1] * out[2]), count_include_pad)
    y = ctx.emit1(Op.POOL2D, [raster.reshape(ctx, y, [n, c, depth, math.prod(out[1:])])], deep)
    return raster.reshape(ctx, y, [n, c, *out])
