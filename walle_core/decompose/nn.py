"""Neural-network ONNX ops: convolutions, pooling, normalisation, Gemm/MatMul.

1-D convolutions and pools run as 2-D ones over an inserted unit height, and 3-D ones as
several 2-D ones (``volumetric``), so CONV2D and POOL2D are the only spatial kernels a backend
writes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx

from walle_core.decompose import pool_indices, raster, volumetric
from walle_core.decompose.context import LoweringContext, Rule
from walle_core.decompose.elementwise import binary, cast, unary
from walle_core.ops import (
    BinaryFn,
    Conv2DAttrs,
    MatMulAttrs,
    Op,
    Pool2DAttrs,
    PoolKind,
    ReduceAttrs,
    ReduceFn,
    UnaryFn,
)


@dataclass
class Window:
    """Spatial parameters of a conv or pool, one entry per spatial dim (1 or 2 of them)."""

    kernel: list[int]
    strides: list[int]
    dilations: list[int]
    begins: list[int]
    ends: list[int]

    def lifted(self) -> Window:
        """The same window with a leading unit height, so a 1-D op runs as 2-D."""
        if len(self.kernel) == 2:
            return self
        return Window([1, *self.kernel], [1, *self.strides], [1, *self.dilations],
                      [0, *self.begins], [0, *self.ends])

    @property
    def pads(self) -> tuple[int, int, int, int]:
        return (self.begins[0], self.begins[1], self.ends[0], self.ends[1])


def _spatial_rank(ctx: LoweringContext, x: str) -> int:
    rank = ctx.rank(x)
    if rank not in (3, 4, 5):
        raise ctx.unsupported(f"only 1-D, 2-D and 3-D spatial inputs are supported, got rank {rank}")
    return rank - 2


def _window(ctx: LoweringContext, node: onnx.NodeProto, spatial: tuple[int, ...],
            kernel: list[int], dilate_auto_pad: bool = True) -> Window:
    """Read strides/dilations/pads/auto_pad; SAME_* pads are resolved at these input sizes."""
    nd = len(spatial)
    strides = ctx.ints_attr(node, "strides", [1] * nd)
    dilations = ctx.ints_attr(node, "dilations", [1] * nd)
    if len(kernel) != nd or len(strides) != nd or len(dilations) != nd:
        raise ctx.invalid(f"kernel/strides/dilations must have {nd} values")
    if any(v <= 0 for v in [*kernel, *strides, *dilations]):
        raise ctx.invalid("kernel, strides and dilations must be positive")
    auto_pad = ctx.attr(node, "auto_pad", "NOTSET")
    if auto_pad == "NOTSET":
        pads = ctx.ints_attr(node, "pads", [0] * 2 * nd)
        if len(pads) != 2 * nd or any(p < 0 for p in pads):
            raise ctx.invalid(f"pads {pads} must be {2 * nd} non-negative values")
        begins, ends = pads[:nd], pads[nd:]
    elif auto_pad == "VALID":
        begins, ends = [0] * nd, [0] * nd
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for size, k, s, d in zip(spatial, kernel, strides, dilations):
            span = (k - 1) * (d if dilate_auto_pad else 1) + 1
            total = max(0, (-(-size // s) - 1) * s + span - size)
            small, large = total // 2, total - total // 2
            begins.append(small if auto_pad == "SAME_UPPER" else large)
            ends.append(large if auto_pad == "SAME_UPPER" else small)
    else:
        raise ctx.invalid(f"auto_pad={auto_pad!r} is not NOTSET, VALID, SAME_UPPER or SAME_LOWER")
    return Window(kernel, strides, dilations, begins, ends)


def _to_2d(ctx: LoweringContext, x: str) -> str:
    """[N, C, W] -> [N, C, 1, W]; 4-D passes through."""
    return raster.unsqueeze(ctx, x, [2]) if ctx.rank(x) == 3 else x


# -- convolution ---------------------------------------------------------------------------

def _conv(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    return [conv(ctx, node, ctx.required_input(node, 0), ctx.required_input(node, 1), ctx.input(node, 2))]


def conv(ctx: LoweringContext, node: onnx.NodeProto, x: str, w: str, b: str) -> str:
    """An ONNX Conv with ``node``'s attributes on the given tensors (also for ConvInteger and
    QLinearConv, which convolve integers after removing zero points)."""
    nd = _spatial_rank(ctx, x)
    if ctx.rank(w) != nd + 2:
        raise ctx.invalid(f"weight rank {ctx.rank(w)} does not match input rank {ctx.rank(x)}")
    kernel = ctx.ints_attr(node, "kernel_shape", list(ctx.shape(w)[2:]))
    if kernel != list(ctx.shape(w)[2:]):
        raise ctx.invalid(f"kernel_shape {kernel} differs from the weight's {ctx.shape(w)[2:]}")
    win = _window(ctx, node, ctx.shape(x)[2:], kernel)
    if nd == 3:
        return volumetric.conv3d(ctx, x, w, b, win.kernel, win.strides, win.dilations, win.begins, win.ends,
                                 int(ctx.attr(node, "group", 1)))
    win = win.lifted()
    inputs = [_to_2d(ctx, x), _to_2d(ctx, w)]
    if b:
        inputs.append(b)
    attrs = Conv2DAttrs(strides=tuple(win.strides), pads=win.pads, dilations=tuple(win.dilations),
                        groups=int(ctx.attr(node, "group", 1)), has_bias=bool(b))
    y = ctx.emit1(Op.CONV2D, inputs, attrs)
    return raster.squeeze(ctx, y, [2]) if nd == 1 else y


def _conv_transpose(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    """Transposed conv = stride-1 conv of the zero-inserted input with the flipped,
    in/out-swapped kernel; explicit pads crop the full output (negative conv pads)."""
    x, w, b = ctx.required_input(node, 0), ctx.required_input(node, 1), ctx.input(node, 2)
    nd = _spatial_rank(ctx, x)
    if ctx.rank(w) != nd + 2:
        raise ctx.invalid(f"weight rank {ctx.rank(w)} does not match input rank {ctx.rank(x)}")
    group = int(ctx.attr(node, "group", 1))
    c = ctx.shape(x)[1]
    wc, og = ctx.shape(w)[:2]
    if group <= 0 or c % group or wc != c:
        raise ctx.invalid(f"weight {ctx.shape(w)} does not match {c} input channels and group={group}")
    kernel = list(ctx.shape(w)[2:])
    spatial = list(ctx.shape(x)[2:])
    strides = ctx.ints_attr(node, "strides", [1] * nd)
    dilations = ctx.ints_attr(node, "dilations", [1] * nd)
    out_pad = ctx.ints_attr(node, "output_padding", [0] * nd)
    if len(strides) != nd or len(dilations) != nd or len(out_pad) != nd:
        raise ctx.invalid(f"strides/dilations/output_padding must have {nd} values")
    if any(v <= 0 for v in [*strides, *dilations]) or any(v < 0 for v in out_pad):
        raise ctx.invalid("strides and dilations must be positive, output_padding non-negative")
    full = [s * (i - 1) + p + (k - 1) * d + 1
            for s, i, p, k, d in zip(strides, spatial, out_pad, kernel, dilations)]
    output_shape = ctx.ints_attr(node, "output_shape")
    auto_pad = ctx.attr(node, "auto_pad", "NOTSET")
    if output_shape is not None or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        target = output_shape[-nd:] if output_shape is not None else [i * s for i, s in zip(spatial, strides)]
        # a target beyond the full output gives negative pads: the conv then reaches further,
        # adding outputs that only see zeros (and the bias), as ONNX's padding formula implies
        totals = [f - t for f, t in zip(full, target)]
        if len(target) != nd or any(t <= 0 for t in target):
            raise ctx.invalid(f"output_shape {output_shape} must end in {nd} positive sizes")
        upper = auto_pad == "SAME_UPPER"
        begins = [t // 2 if upper else t - t // 2 for t in totals]
        ends = [t - bg for t, bg in zip(totals, begins)]
    elif auto_pad in ("NOTSET", "VALID"):
        pads = [0] * 2 * nd if auto_pad == "VALID" else ctx.ints_attr(node, "pads", [0] * 2 * nd)
        if len(pads) != 2 * nd or any(p < 0 for p in pads):
            raise ctx.invalid(f"pads {pads} must be {2 * nd} non-negative values")
        begins, ends = pads[:nd], pads[nd:]
    else:
        raise ctx.invalid(f"auto_pad={auto_pad!r} is not NOTSET, VALID, SAME_UPPER or SAME_LOWER")
    if nd == 1:
        strides, dilations, kernel, spatial = [1, *strides], [1, *dilations], [1, *kernel], [1, *spatial]
        out_pad, begins, ends = [0, *out_pad], [0, *begins], [0, *ends]
    xz = _zero_insert(ctx, x if nd == 3 else _to_2d(ctx, x), strides)
    wf = _flipped_kernel(ctx, w if nd == 3 else _to_2d(ctx, w), group, og)
    # conv pads around the zero-inserted input: full reach of the kernel, minus the crop
    conv_begin = [(k - 1) * d - bg for k, d, bg in zip(kernel, dilations, begins)]
    conv_end = [(k - 1) * d - e + p for k, d, e, p in zip(kernel, dilations, ends, out_pad)]
    pad_begin, pad_end = [max(v, 0) for v in conv_begin], [max(v, 0) for v in conv_end]
    if nd == 3:
        y = volumetric.conv3d(ctx, xz, wf, b, kernel, [1, 1, 1], dilations, pad_begin, pad_end, group)
    else:
        attrs = Conv2DAttrs(pads=(pad_begin[0], pad_begin[1], pad_end[0], pad_end[1]),
                            dilations=(dilations[0], dilations[1]), groups=group, has_bias=bool(b))
        y = ctx.emit1(Op.CONV2D, [xz, wf, b] if b else [xz, wf], attrs)
    if min(conv_begin + conv_end) < 0:
        sizes = ctx.shape(y)[2:]
        y = raster.slice_axes(ctx, y, [max(-v, 0) for v in conv_begin],
                              [n - max(-v, 0) for n, v in zip(sizes, conv_end)], list(range(2, 2 + len(sizes))))
    return [raster.squeeze(ctx, y, [2]) if nd == 1 else y]


def _zero_insert(ctx: LoweringContext, x: str, strides: list[int]) -> str:
    """[N, C, *S] -> [N, C, *((S - 1) * stride + 1)] with the input on the stride grid."""
    if all(s == 1 for s in strides):
        return x
    shape = ctx.shape(x)
    out = [*shape[:2], *((d - 1) * s + 1 for d, s in zip(shape[2:], strides))]
    dst = raster.contiguous_strides(out)
    dst = (*dst[:2], *(d * s for d, s in zip(dst[2:], strides)))
    region = raster.make_region(0, shape, 0, raster.contiguous_strides(shape), 0, dst)
    return raster.raster(ctx, [x], out, [region], fill=0.0)


def _flipped_kernel(ctx: LoweringContext, w: str, group: int, og: int) -> str:
    """[C, O/g, *K] -> [O, C/g, *K], spatially flipped: one region over a (group, C/g, O/g, *K) view."""
    c, _, *kernel = ctx.shape(w)
    cg = c // group
    view = (group, cg, og, *kernel)
    offset, strides = raster.flip_strides(view, list(range(3, len(view))))
    size = (group, og, cg, *kernel)
    src = (strides[0], strides[2], strides[1], *strides[3:])
    region = raster.make_region(0, size, offset, src, 0, raster.contiguous_strides(size))
    return raster.raster(ctx, [w], (group * og, cg, *kernel), [region])


# -- pooling -------------------------------------------------------------------------------

def _pool_rule(kind: PoolKind, lp: bool = False) -> Rule:
    """MaxPool / AveragePool, and LpPool (``lp``): (sum of |x|^p over the window)^(1/p), the
    sum being an average with the pads counted times the window size."""

    def rule(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
        x = ctx.required_input(node, 0)
        if len(node.output) > 1 and node.output[1]:
            _spatial_rank(ctx, x)
            win, out = _pool_geometry(ctx, node, x)
            return list(pool_indices.max_pool_with_indices(
                ctx, x, win.kernel, win.strides, win.dilations, win.begins, out,
                column_major=bool(ctx.attr(node, "storage_order", 0))))
        if lp:
            p = ctx.scalar(float(ctx.attr(node, "p", 2)), x)
            y = rule_body(ctx, node, binary(ctx, BinaryFn.POW, unary(ctx, x, UnaryFn.ABS), p), True)
            size = ctx.scalar(float(math.prod(ctx.ints_attr(node, "kernel_shape") or [1])), x)
            inv_p = binary(ctx, BinaryFn.DIV, ctx.scalar(1.0, x), p)
            return [binary(ctx, BinaryFn.POW, binary(ctx, BinaryFn.MUL, y, size), inv_p)]
        return [rule_body(ctx, node, x, bool(ctx.attr(node, "count_include_pad", 0)))]

    def rule_body(ctx: LoweringContext, node: onnx.NodeProto, x: str, include_pad: bool) -> str:
        nd = _spatial_rank(ctx, x)
        win, out = _pool_geometry(ctx, node, x)
        if nd == 3:
            return volumetric.pool3d(ctx, x, kind, win.kernel, win.strides, win.dilations, win.begins, win.ends,
                                     out, include_pad)
        win, out = win.lifted(), ([1, *out] if nd == 1 else out)
        attrs = Pool2DAttrs(kind, tuple(win.kernel), tuple(win.strides), win.pads, tuple(win.dilations),
                            (out[0], out[1]), include_pad)
        y = ctx.emit1(Op.POOL2D, [_to_2d(ctx, x)], attrs)
        return raster.squeeze(ctx, y, [2]) if nd == 1 else y

    return rule


def _pool_geometry(ctx: LoweringContext, node: onnx.NodeProto, x: str) -> tuple[Window, list[int]]:
    """The pooling window of ``node`` and its output spatial sizes (ceil_mode included)."""
    kernel = ctx.ints_attr(node, "kernel_shape")
    if kernel is None:
        raise ctx.invalid("attribute 'kernel_shape' is missing")
    spatial = ctx.shape(x)[2:]
    # ONNX sizes SAME pads for pools without the dilation
    win = _window(ctx, node, spatial, kernel, dilate_auto_pad=False)
    ceil_mode = bool(ctx.attr(node, "ceil_mode", 0))
    out = []
    for i, size in enumerate(spatial):
        span = (win.kernel[i] - 1) * win.dilations[i] + 1
        padded = size + win.begins[i] + win.ends[i] - span
        if padded < 0:
            raise ctx.invalid(f"window {span} does not fit spatial size {size} with its pads")
        count = (-(-padded // win.strides[i]) if ceil_mode else padded // win.strides[i]) + 1
        if ceil_mode and (count - 1) * win.strides[i] >= size + win.begins[i]:
            count -= 1  # the last window must start inside the input or its leading pad
        out.append(count)
    return win, out


def _global_pool_rule(fn: ReduceFn) -> Rule:
    def rule(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
        x = ctx.required_input(node, 0)
        if ctx.rank(x) < 3:
            raise ctx.invalid(f"input must have spatial dims, got shape {ctx.shape(x)}")
        axes = tuple(range(2, ctx.rank(x)))
        return [ctx.emit1(Op.REDUCE, [x], ReduceAttrs(fn, axes, True))]

    return rule


# -- normalisation -------------------------------------------------------------------------

def _channel_shape(ctx: LoweringContext, x: str) -> list[int]:
    """Shape [C, 1, ..., 1] that broadcasts a per-channel vector against NC... ``x``."""
    shape = ctx.shape(x)
    if len(shape) < 2:
        raise ctx.invalid(f"input must be at least 2-D, got {shape}")
    return [shape[1]] + [1] * (len(shape) - 2)


def _per_channel(ctx: LoweringContext, v: str, x: str) -> str:
    shape = _channel_shape(ctx, x)
    if math.prod(ctx.shape(v)) != shape[0]:
        raise ctx.invalid(f"per-channel input {ctx.shape(v)} does not match {shape[0]} channels")
    return raster.reshape(ctx, v, shape)


def _batch_norm(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    """Inference form: y = x * s + t with s = gamma / sqrt(var + eps), t = beta - mean * s."""
    if ctx.attr(node, "training_mode", 0):
        return _batch_norm_training(ctx, node)
    if any(out for out in node.output[1:]):
        raise ctx.unsupported("the running mean/variance outputs (training) are not supported")
    x = ctx.required_input(node, 0)
    gamma, beta, mean, var = (_per_channel(ctx, ctx.required_input(node, i), x) for i in range(1, 5))
    eps = ctx.scalar(ctx.attr(node, "epsilon", 1e-5), var)
    scale = binary(ctx, BinaryFn.MUL, gamma, unary(ctx, binary(ctx, BinaryFn.ADD, var, eps), UnaryFn.RSQRT))
    shift = binary(ctx, BinaryFn.SUB, beta, binary(ctx, BinaryFn.MUL, mean, scale))
    return [binary(ctx, BinaryFn.ADD, binary(ctx, BinaryFn.MUL, x, scale), shift)]


def _batch_norm_training(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    """Normalise with the batch statistics; the running statistics move towards them by
    (1 - momentum)."""
    x = ctx.required_input(node, 0)
    rank = ctx.rank(x)
    if rank < 2:
        raise ctx.invalid(f"input must be at least 2-D, got {ctx.shape(x)}")
    gamma, beta = (_per_channel(ctx, ctx.required_input(node, i), x) for i in (1, 2))
    y, mean, _ = _normalise(ctx, x, (0, *range(2, rank)), ctx.attr(node, "epsilon", 1e-5))
    y = binary(ctx, BinaryFn.ADD, binary(ctx, BinaryFn.MUL, y, gamma), beta)
    c = ctx.shape(x)[1]
    momentum = ctx.attr(node, "momentum", 0.9)
    batch_mean = raster.reshape(ctx, mean, [c])
    centred = binary(ctx, BinaryFn.SUB, x, mean)
    batch_var = raster.reshape(ctx, ctx.emit1(Op.REDUCE, [binary(ctx, BinaryFn.MUL, centred, centred)],
                                              ReduceAttrs(ReduceFn.MEAN, (0, *range(2, rank)), True)), [c])
    outs = [y]
    for i, batch in ((3, batch_mean), (4, batch_var)):
        running = ctx.required_input(node, i)
        outs.append(binary(ctx, BinaryFn.ADD, binary(ctx, BinaryFn.MUL, running, ctx.scalar(momentum, running)),
                           binary(ctx, BinaryFn.MUL, batch, ctx.scalar(1 - momentum, batch))))
    return outs


def _normalise(ctx: LoweringContext, x: str, axes: tuple[int, ...], eps: float) -> tuple[str, str, str]:
    """(x - mean) * rsqrt(var + eps) over ``axes``; returns (normalised, mean, inv_std)."""
    mean = ctx.emit1(Op.REDUCE, [x], ReduceAttrs(ReduceFn.MEAN, axes, True))
    centred = binary(ctx, BinaryFn.SUB, x, mean)
    var = ctx.emit1(Op.REDUCE, [binary(ctx, BinaryFn.MUL, centred, centred)],
                    ReduceAttrs(ReduceFn.MEAN, axes, True))
    inv_std = unary(ctx, binary(ctx, BinaryFn.ADD, var, ctx.scalar(eps, var)), UnaryFn.RSQRT)
    return binary(ctx, BinaryFn.MUL, centred, inv_std), mean, inv_std


def _instance_norm(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    x = ctx.required_input(node, 0)
    if ctx.rank(x) < 3:
        raise ctx.invalid(f"input must have spatial dims, got shape {ctx.shape(x)}")
    y, _, _ = _normalise(ctx, x, tuple(range(2, ctx.rank(x))), ctx.attr(node, "epsilon", 1e-5))
    scale, bias = (_per_channel(ctx, ctx.required_input(node, i), x) for i in (1, 2))
    return [binary(ctx, BinaryFn.ADD, binary(ctx, BinaryFn.MUL, y, scale), bias)]


def _layer_norm(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    x = ctx.required_input(node, 0)
    dtype = ctx.dtype(x)
    rank = ctx.rank(x)
    axis = ctx.axis(ctx.attr(node, "axis", -1), rank)
    stash = ctx.attr(node, "stash_type", 1)
    work = cast(ctx, x, np.float32) if stash == 1 and dtype != np.float32 else x
    y, mean, inv_std = _normalise(ctx, work, tuple(range(axis, rank)), ctx.attr(node, "epsilon", 1e-5))
    y = cast(ctx, y, dtype)
    y = binary(ctx, BinaryFn.MUL, y, ctx.required_input(node, 1))
    if ctx.input(node, 2):
        y = binary(ctx, BinaryFn.ADD, y, ctx.input(node, 2))
    return [y, mean, inv_std][: max(len(node.output), 1)]


# -- linear algebra --------------------------------------------------------------------------

def _gemm(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    a, b, c = ctx.required_input(node, 0), ctx.required_input(node, 1), ctx.input(node, 2)
    if ctx.rank(a) != 2 or ctx.rank(b) != 2:
        raise ctx.invalid(f"A and B must be 2-D, got {ctx.shape(a)} and {ctx.shape(b)}")
    alpha, beta = ctx.attr(node, "alpha", 1.0), ctx.attr(node, "beta", 1.0)
    if alpha != 1.0:  # scale B: folds into the weights when B is a constant
        b = binary(ctx, BinaryFn.MUL, b, ctx.scalar(alpha, b))
    inputs = [a, b]
    if c and beta != 0.0:
        inputs.append(c if beta == 1.0 else binary(ctx, BinaryFn.MUL, c, ctx.scalar(beta, c)))
    attrs = MatMulAttrs(trans_a=bool(ctx.attr(node, "transA", 0)), trans_b=bool(ctx.attr(node, "transB", 0)))
    return [ctx.emit1(Op.MATMUL, inputs, attrs)]


def matmul(ctx: LoweringContext, a: str, b: str) -> str:
    """numpy.matmul semantics, 1-D operands included."""
    ra, rb = ctx.rank(a), ctx.rank(b)
    if ra == 0 or rb == 0:
        raise ctx.invalid("MatMul operands must be at least 1-D")
    a2 = raster.reshape(ctx, a, [1, ctx.shape(a)[0]]) if ra == 1 else a
    b2 = raster.reshape(ctx, b, [ctx.shape(b)[0], 1]) if rb == 1 else b
    y = ctx.emit1(Op.MATMUL, [a2, b2], MatMulAttrs())
    shape = list(ctx.shape(y))
    if rb == 1:
        shape.pop(-1)
    if ra == 1:
        shape.pop(-2 if rb != 1 else -1)
    return raster.reshape(ctx, y, shape)


def _matmul(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    a, b = ctx.required_input(node, 0), ctx.required_input(node, 1)
    if ctx.dtype(a) != ctx.dtype(b):
        raise ctx.invalid(f"input dtypes differ ({ctx.dtype(a)} vs {ctx.dtype(b)})")
    return [matmul(ctx, a, b)]


RULES: dict[str, Rule] = {
    "Conv": _conv, "ConvTranspose": _conv_transpose,
    "MaxPool": _pool_rule(PoolKind.MAX), "AveragePool": _pool_rule(PoolKind.AVG),
    "LpPool": _pool_rule(PoolKind.AVG, lp=True),
    "GlobalAveragePool": _global_pool_rule(ReduceFn.MEAN), "GlobalMaxPool": _global_pool_rule(ReduceFn.MAX),
    "BatchNormalization": _batch_norm, "InstanceNormalization": _instance_norm,
    "LayerNormalization": _layer_norm, "Gemm": _gemm, "MatMul": _matmul,
}
