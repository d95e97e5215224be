"""Shape and data-movement ONNX ops (Reshape, Transpose, Slice, Pad, Gather ...) and the ops
that only produce constants at fixed shapes (Shape, Size, Constant, Range ...)."""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import numpy_helper

from walle_core.decompose import raster
from walle_core.decompose.context import LoweringContext, Rule, Value
from walle_core.decompose.raster import numpy_shape
from walle_core.errors import WalleError
from walle_core.ops import GatherAttrs, Op
from walle_core.shapes import broadcast_shapes


def _identity(ctx: LoweringContext, node: onnx.NodeProto) -> list[Value]:
    """Passes any value through: a tensor, a sequence or an optional."""
    value = ctx.value(node, 0)
    if value is None:
        raise ctx.invalid("required input 0 is missing")
    return [value]


def _dropout(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    """Inference (or training with ratio 0): the data passes through, the mask is all true.
    Training with a positive ratio draws random numbers, which has no atomic op."""
    x = ctx.required_input(node, 0)
    if ctx.opset >= 12:
        training = ctx.const_input(node, 2, "training_mode")
        ratio = ctx.const_input(node, 1, "ratio")
        ratio = 0.5 if ratio is None else float(np.asarray(ratio).reshape(-1)[0])
        if training is not None and bool(np.asarray(training).reshape(-1)[0]) and ratio != 0.0:
            raise ctx.unsupported("training_mode=1 with a positive ratio (random dropout) is not supported")
    outs = [x]
    if len(node.output) > 1 and node.output[1]:
        outs.append(ctx.constant(np.ones(ctx.shape(x), dtype=bool)))
    return outs


def _reshape(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    x = ctx.required_input(node, 0)
    if ctx.opset < 5:
        target = ctx.ints_attr(node, "shape")
        if target is None:
            raise ctx.invalid("attribute 'shape' is missing")
    else:
        value = ctx.const_input(node, 1, "shape")
        if value is None:
            raise ctx.invalid("input 1 (shape) is missing")
        target = numpy_shape(value)
    allowzero = ctx.attr(node, "allowzero", 0)
    shape = list(ctx.shape(x))
    out = []
    for i, d in enumerate(target):
        if d == 0 and not allowzero:
            if i >= len(shape):
                raise ctx.invalid(f"shape {target}: 0 at position {i} copies a dim the input lacks")
            out.append(shape[i])
        else:
            out.append(d)
    if out.count(-1) > 1 or any(d < -1 for d in out):
        raise ctx.invalid(f"shape {target} is invalid")
    if -1 in out:
        known = math.prod(d for d in out if d != -1)
        total = math.prod(shape)
        if known == 0 or total % known:
            raise ctx.invalid(f"cannot infer -1 in shape {target} for input {tuple(shape)}")
        out[out.index(-1)] = total // known
    return [raster.reshape(ctx, x, out)]


def _flatten(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    return [raster.flatten(ctx, ctx.required_input(node, 0), ctx.attr(node, "axis", 1))]


def _transpose(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    x = ctx.required_input(node, 0)
    perm = ctx.ints_attr(node, "perm", list(range(ctx.rank(x)))[::-1])
    return [raster.transpose(ctx, x, perm)]


def _concat(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    xs = [ctx.required_input(node, i) for i in range(len(node.input))]
    axis = ctx.attr(node, "axis")
    if axis is None:
        raise ctx.invalid("attribute 'axis' is missing")
    dtypes = {ctx.dtype(x) for x in xs}
    if len(dtypes) > 1:
        raise ctx.invalid(f"inputs have different dtypes {sorted(map(str, dtypes))}")
    return [raster.concat(ctx, xs, axis)]


def _split(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    x = ctx.required_input(node, 0)
    axis = ctx.axis(ctx.attr(node, "axis", 0), ctx.rank(x))
    dim = ctx.shape(x)[axis]
    n = len(node.output)
    if ctx.opset < 13:
        sizes = ctx.ints_attr(node, "split")
    else:
        value = ctx.const_input(node, 1, "split")
        sizes = None if value is None else numpy_shape(value)
    if sizes is None:
        parts = ctx.attr(node, "num_outputs", n)
        if parts <= 0:
            raise ctx.invalid(f"num_outputs={parts} must be positive")
        chunk = -(-dim // parts)
        sizes = [min(chunk, max(dim - i * chunk, 0)) for i in range(parts)]
        if ctx.attr(node, "num_outputs") is None and dim % parts:
            raise ctx.invalid(f"dimension {dim} does not split evenly into {parts} outputs")
    if len(sizes) != n:
        raise ctx.invalid(f"{len(sizes)} split sizes for {n} outputs")
    return raster.split(ctx, x, axis, sizes)


def _slice(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    x = ctx.required_input(node, 0)
    rank = ctx.rank(x)
    if ctx.opset < 10:
        starts, ends = ctx.ints_attr(node, "starts"), ctx.ints_attr(node, "ends")
        axes, steps = ctx.ints_attr(node, "axes"), None
        if starts is None or ends is None:
            raise ctx.invalid("attributes 'starts' and 'ends' are required")
    else:
        values = [ctx.const_input(node, i, what) for i, what in
                  enumerate(("starts", "ends", "axes", "steps"), start=1)]
        if values[0] is None or values[1] is None:
            raise ctx.invalid("inputs 1 (starts) and 2 (ends) are required")
        starts, ends, axes, steps = (None if v is None else numpy_shape(v) for v in values)
    if axes is None:
        axes = list(range(len(starts)))
    # ONNX clamps starts/ends to the axis, so huge sentinels (INT64_MAX) are fine
    big = 1 << 62
    clip = [max(min(v, big), -big) for v in starts], [max(min(v, big), -big) for v in ends]
    return [raster.slice_axes(ctx, x, clip[0], clip[1], [ctx.axis(a, rank) for a in axes], steps)]


def _axes_arg(ctx: LoweringContext, node: onnx.NodeProto, attr_until: int) -> list[int] | None:
    """Axes given as an attribute (opsets before ``attr_until``) or as input 1."""
    if ctx.opset < attr_until:
        return ctx.ints_attr(node, "axes")
    value = ctx.const_input(node, 1, "axes")
    return None if value is None else numpy_shape(value)


def _squeeze(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    x = ctx.required_input(node, 0)
    return [raster.squeeze(ctx, x, _axes_arg(ctx, node, 13))]


def _unsqueeze(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    x = ctx.required_input(node, 0)
    axes = _axes_arg(ctx, node, 13)
    if axes is None:
        raise ctx.invalid("axes are required")
    return [raster.unsqueeze(ctx, x, axes)]


def _expand(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    x = ctx.required_input(node, 0)
    value = ctx.const_input(node, 1, "shape")
    if value is None:
        raise ctx.invalid("input 1 (shape) is missing")
    try:
        shape = broadcast_shapes(Op.RASTER, ctx.shape(x), numpy_shape(value))
    except WalleError:
        raise ctx.invalid(f"shape {numpy_shape(value)} does not broadcast with input {ctx.shape(x)}") from None
    return [raster.broadcast_to(ctx, x, shape)]


def _tile(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    x = ctx.required_input(node, 0)
    repeats = ctx.const_input(node, 1, "repeats")
    if repeats is None:
        raise ctx.invalid("input 1 (repeats) is missing")
    return [raster.tile(ctx, x, numpy_shape(repeats))]


def _pad(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    x = ctx.required_input(node, 0)
    rank = ctx.rank(x)
    mode = ctx.attr(node, "mode", "constant")
    if ctx.opset < 11:
        pads = ctx.ints_attr(node, "pads") or ctx.ints_attr(node, "paddings")
        value = float(ctx.attr(node, "value", 0.0))
        axes = list(range(rank))
    else:
        pads_value = ctx.const_input(node, 1, "pads")
        if pads_value is None:
            raise ctx.invalid("input 1 (pads) is missing")
        pads = numpy_shape(pads_value)
        fill = ctx.const_input(node, 2, "constant_value")
        value = 0.0 if fill is None or fill.size == 0 else fill.reshape(-1)[0].item()
        axes_value = ctx.const_input(node, 3, "axes")
        axes = list(range(rank)) if axes_value is None else [ctx.axis(a, rank) for a in numpy_shape(axes_value)]
    if pads is None or len(pads) != 2 * len(axes):
        raise ctx.invalid(f"pads {pads} must hold 2 x {len(axes)} values")
    begins, ends = [0] * rank, [0] * rank
    for i, a in enumerate(axes):
        begins[a], ends[a] = pads[i], pads[i + len(axes)]
    if mode == "constant":
        return [raster.pad_constant(ctx, x, begins, ends, value)]
    return [raster.pad_mode(ctx, x, begins, ends, mode)]


def _gather(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    data, indices = ctx.required_input(node, 0), ctx.required_input(node, 1)
    axis = ctx.axis(ctx.attr(node, "axis", 0), ctx.rank(data))
    if ctx.dtype(indices) not in (np.dtype(np.int32), np.dtype(np.int64)):
        raise ctx.invalid(f"indices must be int32 or int64, got {ctx.dtype(indices)}")
    value = ctx.known_value(indices)
    if value is not None:
        n = ctx.shape(data)[axis]
        if np.any((value < -n) | (value >= n)):
            raise ctx.invalid(f"an index is out of range for axis {axis} of size {n}")
    return [ctx.emit1(Op.GATHER, [data, indices], GatherAttrs(axis))]


def _shape(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    shape = ctx.shape(ctx.required_input(node, 0))
    rank = len(shape)
    start, end = ctx.attr(node, "start", 0), ctx.attr(node, "end", rank)
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = min(max(end + rank if end < 0 else end, 0), rank)
    return [ctx.constant(np.array(shape[start:end], dtype=np.int64))]


def _size(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    return [ctx.constant(np.array(math.prod(ctx.shape(ctx.required_input(node, 0))), dtype=np.int64))]


def _constant(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    if len(node.attribute) != 1:
        raise ctx.invalid("exactly one value attribute is required")
    a = node.attribute[0]
    if a.name == "value":
        value = numpy_helper.to_array(a.t)
    elif a.name == "value_float":
        value = np.array(a.f, dtype=np.float32)
    elif a.name == "value_floats":
        value = np.array(list(a.floats), dtype=np.float32)
    elif a.name == "value_int":
        value = np.array(a.i, dtype=np.int64)
    elif a.name == "value_ints":
        value = np.array(list(a.ints), dtype=np.int64)
    elif a.name == "sparse_value":
        value = _dense_from_sparse(ctx, a.sparse_tensor)
    elif a.name in ("value_string", "value_strings"):
        raise ctx.unsupported("string constants are not supported")
    else:
        raise ctx.invalid(f"unknown attribute {a.name!r}")
    return [ctx.constant(value)]


def _dense_from_sparse(ctx: LoweringContext, sparse: onnx.SparseTensorProto) -> np.ndarray:
    dims = [int(d) for d in sparse.dims]
    if any(d < 0 for d in dims) or math.prod(dims) > (1 << 28):
        raise ctx.invalid(f"sparse_value dims {dims} are invalid")
    values = numpy_helper.to_array(sparse.values).reshape(-1)
    indices = numpy_helper.to_array(sparse.indices)
    dense = np.zeros(math.prod(dims), dtype=values.dtype)
    flat = indices.reshape(-1) if indices.ndim == 1 else np.ravel_multi_index(indices.T, dims)
    if flat.size != values.size or np.any((flat < 0) | (flat >= dense.size)):
        raise ctx.invalid("sparse_value indices do not match its values or dims")
    dense[flat] = values
    return dense.reshape(dims)


def _constant_of_shape(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    shape_value = ctx.const_input(node, 0, "shape")
    shape = [] if shape_value is None else numpy_shape(shape_value)
    if any(d < 0 for d in shape):
        raise ctx.invalid(f"negative dimension in shape {shape}")
    tensor = ctx.attr(node, "value")
    fill = np.zeros(1, np.float32) if tensor is None else numpy_helper.to_array(tensor).reshape(-1)
    if fill.size != 1:
        raise ctx.invalid("attribute 'value' must hold exactly one element")
    if math.prod(shape) <= (1 << 20):
        return [ctx.constant(np.full(shape, fill[0], dtype=fill.dtype))]
    # large: a RASTER that only fills, so the value is not stored in the graph
    return [raster.raster(ctx, [ctx.constant(fill)], shape, [], fill=fill[0].item())]


def _range(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    start, limit, delta = (ctx.const_input(node, i, what) for i, what in
                           enumerate(("start", "limit", "delta")))
    if start is None or limit is None or delta is None:
        raise ctx.invalid("start, limit and delta are required")
    dtype = start.dtype
    step = delta.item()
    if step == 0:
        raise ctx.invalid("delta is 0")
    count = max(math.ceil((limit.item() - start.item()) / step), 0)
    if count > (1 << 28):
        raise ctx.invalid(f"range of {count} elements is too large")
    values = start.item() + np.arange(count, dtype=np.float64 if dtype.kind == "f" else np.int64) * step
    return [ctx.constant(values.astype(dtype))]


def _depth_to_space(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    x = ctx.required_input(node, 0)
    n, c, h, w = _nchw(ctx, x)
    b = ctx.attr(node, "blocksize")
    if not b or b <= 0 or c % (b * b):
        raise ctx.invalid(f"blocksize {b} does not divide channels {c}")
    if ctx.attr(node, "mode", "DCR") == "DCR":
        y = raster.reshape(ctx, x, [n, b, b, c // (b * b), h, w])
        y = raster.transpose(ctx, y, [0, 3, 4, 1, 5, 2])
    else:
        y = raster.reshape(ctx, x, [n, c // (b * b), b, b, h, w])
        y = raster.transpose(ctx, y, [0, 1, 4, 2, 5, 3])
    return [raster.reshape(ctx, y, [n, c // (b * b), h * b, w * b])]


def _space_to_depth(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    x = ctx.required_input(node, 0)
    n, c, h, w = _nchw(ctx, x)
    b = ctx.attr(node, "blocksize")
    if not b or b <= 0 or h % b or w % b:
        raise ctx.invalid(f"blocksize {b} does not divide spatial size {(h, w)}")
    y = raster.reshape(ctx, x, [n, c, h // b, b, w // b, b])
    mode = ctx.attr(node, "mode", "DCR")
    if mode not in ("DCR", "CRD"):
        raise ctx.invalid(f"mode={mode!r} is not DCR or CRD")
    y = raster.transpose(ctx, y, [0, 3, 5, 1, 2, 4] if mode == "DCR" else [0, 1, 3, 5, 2, 4])
    return [raster.reshape(ctx, y, [n, c * b * b, h // b, w // b])]


def _nchw(ctx: LoweringContext, x: str) -> tuple[int, int, int, int]:
    shape = ctx.shape(x)
    if len(shape) != 4:
        raise ctx.invalid(f"input must be 4-D, got {shape}")
    return shape  # type: ignore[return-value]


RULES: dict[str, Rule] = {
    "Identity": _identity, "Dropout": _dropout, "Reshape": _reshape, "Flatten": _flatten,
    "Transpose": _transpose, "Concat": _concat, "Split": _split, "Slice": _slice,
    "Squeeze": _squeeze, "Unsqueeze": _unsqueeze, "Expand": _expand, "Tile": _tile, "Pad": _pad,
    "Gather": _gather, "Shape": _shape, "Size": _size, "Constant": _constant,
    "ConstantOfShape": _constant_of_shape, "Range": _range, "DepthToSpace": _depth_to_space,
    "SpaceToDepth": _space_to_depth,
}
