"""Quantisation: QuantizeLinear / DequantizeLinear (per-tensor, per-axis, blocked; integer,
int4 and float8 targets) and the integer ops MatMulInteger, ConvInteger, QLinearMatMul and
QLinearConv.

The integer ops subtract zero points in int32 and run the MATMUL / CONV2D in int32, which is
exact; requantisation then scales in float64 so that round-half-even sees the same value as
ONNX's reference, whose integer outputs are compared bit for bit.
"""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import onnx

from walle_core.decompose import raster
from walle_core.decompose.context import LoweringContext, Rule
from walle_core.decompose.elementwise import binary, cast, cast_saturating, unary
from walle_core.decompose.nn import conv, matmul
from walle_core.onnx.dtypes import onnx_to_numpy
from walle_core.ops import BinaryFn, UnaryFn
from walle_core.reference.kernels import is_float

_I32, _F32, _F64 = np.dtype(np.int32), np.dtype(np.float32), np.dtype(np.float64)
_FLOAT8 = frozenset({"float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz"})


def _int_range(dtype: np.dtype) -> tuple[int, int]:
    info = ml_dtypes.iinfo(dtype)
    return int(info.min), int(info.max)


def broadcast_param(ctx: LoweringContext, v: str, shape: tuple[int, ...], axis: int, block: int) -> str:
    """A scale or zero point shaped to broadcast against ``shape``: scalar, per-axis vector,
    or (``block`` > 0) one value per block of ``block`` elements along ``axis``."""
    vshape = ctx.shape(v)
    if not vshape:
        return v
    if ctx.type_of(v).size == 1:
        return raster.reshape(ctx, v, [])
    if not 0 <= axis < len(shape):
        raise ctx.invalid(f"axis {axis} is out of range for rank {len(shape)}")
    if block <= 0:
        if len(vshape) != 1 or vshape[0] != shape[axis]:
            raise ctx.invalid(f"per-axis parameter {vshape} does not match axis {axis} of {shape}")
        view = [1] * len(shape)
        view[axis] = vshape[0]
        return raster.reshape(ctx, v, view)
    if len(vshape) != len(shape) or vshape[axis] != math.ceil(shape[axis] / block) or any(
            a != b for d, (a, b) in enumerate(zip(vshape, shape)) if d != axis):
        raise ctx.invalid(f"blocked parameter {vshape} does not match {shape} with block_size={block}")
    spread = list(vshape)
    spread.insert(axis + 1, block)
    y = raster.broadcast_to(ctx, raster.unsqueeze(ctx, v, [axis + 1]), spread)
    merged = list(vshape)
    merged[axis] *= block
    y = raster.reshape(ctx, y, merged)
    return raster.slice_axes(ctx, y, [0], [shape[axis]], [axis])


def _params(ctx: LoweringContext, node: onnx.NodeProto, x: str) -> tuple[int, int]:
    """(axis, block_size); the axis is only checked once a per-axis parameter uses it."""
    axis, rank = int(ctx.attr(node, "axis", 1)), ctx.rank(x)
    return (axis + rank if -rank <= axis < 0 else axis), int(ctx.attr(node, "block_size", 0))


def _common_float(a: np.dtype, b: np.dtype) -> np.dtype:
    if a == b:
        return a
    try:
        return np.result_type(a, b)
    except TypeError:  # an ml_dtypes type mixed with another: compute in float32
        return _F32


def _dequantize(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    x, scale, zp = ctx.required_input(node, 0), ctx.required_input(node, 1), ctx.input(node, 2)
    shape = ctx.shape(x)
    axis, block = _params(ctx, node, x)
    work = _F64 if ctx.dtype(scale) == _F64 else _F32
    y = cast(ctx, x, work)
    if zp and not is_float(ctx.dtype(x)):
        y = binary(ctx, BinaryFn.SUB, y, cast(ctx, broadcast_param(ctx, zp, shape, axis, block), work))
    y = binary(ctx, BinaryFn.MUL, y, cast(ctx, broadcast_param(ctx, scale, shape, axis, block), work))
    to = ctx.attr(node, "output_dtype", 0)
    out = onnx_to_numpy(int(to), f"DequantizeLinear node {ctx.node_label!r}") if to else ctx.dtype(scale)
    return [cast(ctx, y, out)]


def quantize(ctx: LoweringContext, x: str, scale: str, zp: str, out: np.dtype, saturate: bool = True,
             precision: np.dtype | None = None) -> str:
    """x / scale, rounded half to even, plus the zero point, saturated to ``out``'s range
    (scale and zero point already broadcastable against ``x``)."""
    work = precision if precision is not None else _common_float(ctx.dtype(x), ctx.dtype(scale))
    y = binary(ctx, BinaryFn.DIV, cast(ctx, x, work), cast(ctx, scale, work))
    if out.name in _FLOAT8:
        return cast_saturating(ctx, y, out, saturate)
    if is_float(out):  # float4: zero point added in float
        if zp:
            y = binary(ctx, BinaryFn.ADD, y, cast(ctx, zp, work))
        return cast(ctx, y, out)
    lo, hi = _int_range(out)
    y = cast(ctx, unary(ctx, cast(ctx, y, _F64), UnaryFn.ROUND), _F64)
    if zp:
        y = binary(ctx, BinaryFn.ADD, y, cast(ctx, zp, _F64))
    return cast(ctx, unary(ctx, y, UnaryFn.CLIP, lo, hi), out)


def _quantize(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    x, scale, zp = ctx.required_input(node, 0), ctx.required_input(node, 1), ctx.input(node, 2)
    shape = ctx.shape(x)
    axis, block = _params(ctx, node, x)
    to = ctx.attr(node, "output_dtype", 0)
    where = f"QuantizeLinear node {ctx.node_label!r}"
    out = ctx.dtype(zp) if zp else (onnx_to_numpy(int(to), where) if to else np.dtype(np.uint8))
    precision = ctx.attr(node, "precision", 0)
    scale = broadcast_param(ctx, scale, shape, axis, block)
    zp = broadcast_param(ctx, zp, shape, axis, block) if zp else ""
    return [quantize(ctx, x, scale, zp, out, bool(ctx.attr(node, "saturate", 1)),
                     onnx_to_numpy(int(precision), where) if precision else None)]


# -- integer ops -----------------------------------------------------------------------------

def _centred(ctx: LoweringContext, x: str, zp: str, view: list[int] | None = None) -> str:
    """int32 ``x - zp``; ``view`` reshapes a per-channel zero point first."""
    y = cast(ctx, x, _I32)
    if not zp:
        return y
    zp = cast(ctx, zp, _I32)
    if view is not None and ctx.type_of(zp).size > 1:
        zp = raster.reshape(ctx, zp, view)
    return binary(ctx, BinaryFn.SUB, y, zp)


def _requantize(ctx: LoweringContext, acc: str, scale: str, zp: str, out: np.dtype) -> str:
    lo, hi = _int_range(out)
    y = binary(ctx, BinaryFn.MUL, cast(ctx, acc, _F64), cast(ctx, scale, _F64))
    if zp:
        y = binary(ctx, BinaryFn.ADD, y, cast(ctx, zp, _F64))
    return cast(ctx, unary(ctx, unary(ctx, y, UnaryFn.ROUND), UnaryFn.CLIP, lo, hi), out)


def _scale_ratio(ctx: LoweringContext, a: str, b: str, y: str, view: list[int] | None = None) -> str:
    a, b, y = (cast(ctx, s, _F64) for s in (a, b, y))
    if view is not None and ctx.type_of(b).size > 1:
        b = raster.reshape(ctx, b, view)
    return binary(ctx, BinaryFn.DIV, binary(ctx, BinaryFn.MUL, a, b), y)


def _matmul_integer(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    a, b = ctx.required_input(node, 0), ctx.required_input(node, 1)
    return [matmul(ctx, _centred(ctx, a, ctx.input(node, 2)), _centred(ctx, b, ctx.input(node, 3)))]


def _qlinear_matmul(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp = (ctx.input(node, i) for i in range(8))
    if not (a and b and a_scale and b_scale and y_scale):
        raise ctx.invalid("a, b and the three scales are required")
    acc = matmul(ctx, _centred(ctx, a, a_zp), _centred(ctx, b, b_zp))
    out = ctx.dtype(y_zp) if y_zp else ctx.dtype(a)
    return [_requantize(ctx, acc, _scale_ratio(ctx, a_scale, b_scale, y_scale), y_zp, out)]


def _conv_integer(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    x, w = ctx.required_input(node, 0), ctx.required_input(node, 1)
    view = [ctx.shape(w)[0]] + [1] * (ctx.rank(w) - 1)
    return [conv(ctx, node, _centred(ctx, x, ctx.input(node, 2)), _centred(ctx, w, ctx.input(node, 3), view), "")]


def _qlinear_conv(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, bias = (ctx.input(node, i) for i in range(9))
    if not (x and w and x_scale and w_scale and y_scale):
        raise ctx.invalid("x, w and the three scales are required")
    wview = [ctx.shape(w)[0]] + [1] * (ctx.rank(w) - 1)
    acc = conv(ctx, node, _centred(ctx, x, x_zp), _centred(ctx, w, w_zp, wview),
               cast(ctx, bias, _I32) if bias else "")
    channel_view = [ctx.shape(w)[0]] + [1] * (ctx.rank(w) - 2)
    out = ctx.dtype(y_zp) if y_zp else ctx.dtype(x)
    return [_requantize(ctx, acc, _scale_ratio(ctx, x_scale, w_scale, y_scale, channel_view), y_zp, out)]


RULES: dict[str, Rule] = {
    "QuantizeLinear": _quantize, "DequantizeLinear": _dequantize, "MatMulInteger": _matmul_integer,
    "QLinearMatMul": _qlinear_matmul, "ConvInteger": _conv_integer, "QLinearConv": _qlinear_conv,
}
