"""Index-driven ONNX ops on the one-axis GATHER / SCATTER atoms.

GatherElements, GatherND, ScatterElements, ScatterND and TensorScatter all address single
elements (or rows) of their data. Each is lowered by computing the *flat* row-major offset of
every addressed element -- a constant part from the index grid plus the run-time indices times
a stride -- and then gathering from / scattering into the data viewed as one long axis.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import onnx

from walle_core.decompose import raster
from walle_core.decompose.context import LoweringContext, Rule
from walle_core.decompose.elementwise import binary, cast, select
from walle_core.decompose.raster import contiguous_strides, numpy_shape
from walle_core.decompose.reduce import reduce
from walle_core.onnx.dtypes import onnx_to_numpy
from walle_core.ops import BinaryFn, GatherAttrs, Op, ReduceFn, ScatterAttrs

_INT64 = np.dtype(np.int64)


def grid_offsets(shape: Sequence[int], strides: Sequence[int], skip: int | None = None) -> np.ndarray:
    """int64 array of ``shape``: sum over dims (except ``skip``) of coordinate * stride."""
    total = np.zeros(tuple(shape), dtype=np.int64)
    for d, (n, s) in enumerate(zip(shape, strides)):
        if d == skip or n == 1:
            continue
        view = [1] * len(shape)
        view[d] = n
        total = total + (np.arange(n, dtype=np.int64) * int(s)).reshape(view)
    return total


def wrap_negative(ctx: LoweringContext, idx: str, n: int) -> str:
    """int64 indices with negative ones counted from the end of an axis of size ``n``."""
    idx = cast(ctx, idx, _INT64)
    negative = binary(ctx, BinaryFn.LT, idx, ctx.constant(np.int64(0)))
    return select(ctx, negative, binary(ctx, BinaryFn.ADD, idx, ctx.constant(np.int64(n))), idx)


def check_index_range(ctx: LoweringContext, idx: str, n: int, what: str) -> None:
    """Reject constant indices outside [-n, n): flat offsets would silently address a neighbour."""
    value = ctx.known_value(idx)
    if value is not None and value.size and (value.min() < -n or value.max() >= n):
        raise ctx.invalid(f"{what} holds an index outside [-{n}, {n})")


def element_offsets(ctx: LoweringContext, data_shape: Sequence[int], axis: int, idx: str) -> str:
    """Flat offsets into ``data_shape`` of the elements that ``idx`` (an index along ``axis``
    for each position of its own grid) addresses, as GatherElements defines them."""
    strides = contiguous_strides(data_shape)
    idx = wrap_negative(ctx, idx, data_shape[axis])
    base = ctx.constant(grid_offsets(ctx.shape(idx), strides, skip=axis))
    return binary(ctx, BinaryFn.ADD, base, binary(ctx, BinaryFn.MUL, idx, ctx.constant(np.int64(strides[axis]))))


def gather_flat(ctx: LoweringContext, data: str, offsets: str) -> str:
    flat = raster.reshape(ctx, data, [ctx.type_of(data).size])
    return ctx.emit1(Op.GATHER, [flat, offsets], GatherAttrs(0))


def scatter_rows(ctx: LoweringContext, data: str, rows: str, updates: str, row_size: int,
                 reduction: BinaryFn | None) -> str:
    """Write ``updates`` into ``data`` viewed as [n, row_size] at row indices ``rows``."""
    shape = ctx.shape(data)
    table = raster.reshape(ctx, data, [ctx.type_of(data).size // max(row_size, 1), row_size])
    count = ctx.type_of(rows).size
    flat_rows = raster.reshape(ctx, rows, [count])
    upd = raster.reshape(ctx, updates, [count, row_size])
    out = ctx.emit1(Op.SCATTER, [table, flat_rows, upd], ScatterAttrs(reduction))
    return raster.reshape(ctx, out, shape)


_REDUCTIONS = {"none": None, "add": BinaryFn.ADD, "mul": BinaryFn.MUL, "max": BinaryFn.MAX, "min": BinaryFn.MIN}


def _reduction(ctx: LoweringContext, node: onnx.NodeProto) -> BinaryFn | None:
    name = ctx.attr(node, "reduction", "none")
    if name not in _REDUCTIONS:
        raise ctx.invalid(f"reduction={name!r} is not one of {sorted(_REDUCTIONS)}")
    return _REDUCTIONS[name]


def _index_input(ctx: LoweringContext, node: onnx.NodeProto, i: int) -> str:
    idx = ctx.required_input(node, i)
    if ctx.dtype(idx) not in (np.dtype(np.int32), _INT64):
        raise ctx.invalid(f"indices must be int32 or int64, got {ctx.dtype(idx)}")
    return idx


# -- element-wise addressing ---------------------------------------------------------------

def _gather_elements(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    data, idx = ctx.required_input(node, 0), _index_input(ctx, node, 1)
    shape = ctx.shape(data)
    axis = ctx.axis(ctx.attr(node, "axis", 0), len(shape))
    if ctx.rank(idx) != len(shape):
        raise ctx.invalid(f"indices rank {ctx.rank(idx)} differs from data rank {len(shape)}")
    check_index_range(ctx, idx, shape[axis], "indices")
    return [gather_flat(ctx, data, element_offsets(ctx, shape, axis, idx))]


def _scatter_elements(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    data, idx, updates = ctx.required_input(node, 0), _index_input(ctx, node, 1), ctx.required_input(node, 2)
    shape = ctx.shape(data)
    axis = ctx.axis(ctx.attr(node, "axis", 0), len(shape))
    if ctx.shape(idx) != ctx.shape(updates) or ctx.rank(idx) != len(shape):
        raise ctx.invalid(f"indices {ctx.shape(idx)} and updates {ctx.shape(updates)} must match in shape "
                          f"and have the data's rank {len(shape)}")
    check_index_range(ctx, idx, shape[axis], "indices")
    offsets = element_offsets(ctx, shape, axis, idx)
    return [scatter_rows(ctx, data, offsets, updates, 1, _reduction(ctx, node))]


def _nd_offsets(ctx: LoweringContext, idx: str, dims: Sequence[int], strides: Sequence[int]) -> str:
    """sum_j idx[..., j] * strides[j], indices wrapped per dim; shape idx.shape[:-1]."""
    lead = list(ctx.shape(idx)[:-1])
    total = None
    for j, (n, s) in enumerate(zip(dims, strides)):
        component = raster.reshape(ctx, raster.slice_axes(ctx, idx, [j], [j + 1], [ctx.rank(idx) - 1]), lead)
        check_index_range(ctx, component, n, f"index component {j}")
        term = binary(ctx, BinaryFn.MUL, wrap_negative(ctx, component, n), ctx.constant(np.int64(s)))
        total = term if total is None else binary(ctx, BinaryFn.ADD, total, term)
    if total is None:
        total = ctx.constant(np.zeros(lead, dtype=np.int64))
    return total


def _gather_nd(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    data, idx = ctx.required_input(node, 0), _index_input(ctx, node, 1)
    shape, ishape = ctx.shape(data), ctx.shape(idx)
    b = int(ctx.attr(node, "batch_dims", 0))
    if not ishape or b < 0 or b >= len(ishape) or b >= len(shape):
        raise ctx.invalid(f"batch_dims={b} does not fit data {shape} and indices {ishape}")
    k = ishape[-1]
    if shape[:b] != ishape[:b] or b + k > len(shape):
        raise ctx.invalid(f"indices {ishape} do not address data {shape} with batch_dims={b}")
    lead, rest = shape[b:b + k], shape[b + k:]
    offsets = _nd_offsets(ctx, idx, lead, contiguous_strides(lead))
    lead_size = math.prod(lead)
    if b:
        batch = grid_offsets(ishape[:-1], [*(s * lead_size for s in contiguous_strides(shape[:b])),
                                           *([0] * (len(ishape) - 1 - b))])
        offsets = binary(ctx, BinaryFn.ADD, offsets, ctx.constant(batch))
    table = raster.reshape(ctx, data, [math.prod(shape[:b]) * lead_size, *rest])
    return [ctx.emit1(Op.GATHER, [table, offsets], GatherAttrs(0))]


def _scatter_nd(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    data, idx, updates = ctx.required_input(node, 0), _index_input(ctx, node, 1), ctx.required_input(node, 2)
    shape, ishape = ctx.shape(data), ctx.shape(idx)
    if not ishape or ishape[-1] > len(shape):
        raise ctx.invalid(f"indices {ishape} do not address data {shape}")
    k = ishape[-1]
    lead, rest = shape[:k], shape[k:]
    if ctx.shape(updates) != tuple(ishape[:-1]) + tuple(rest):
        raise ctx.invalid(f"updates {ctx.shape(updates)} must have shape {tuple(ishape[:-1]) + tuple(rest)}")
    rows = _nd_offsets(ctx, idx, lead, contiguous_strides(lead))
    return [scatter_rows(ctx, data, rows, updates, math.prod(rest), _reduction(ctx, node))]


def _tensor_scatter(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    """KV-cache write: ``update`` lands at write_indices[b] + s along ``axis`` (mod the cache
    length in circular mode)."""
    cache, update, where = ctx.required_input(node, 0), ctx.required_input(node, 1), ctx.input(node, 2)
    shape, ushape = ctx.shape(cache), ctx.shape(update)
    axis = ctx.axis(ctx.attr(node, "axis", -2), len(shape))
    mode = ctx.attr(node, "mode", "linear")
    if mode not in ("linear", "circular"):
        raise ctx.invalid(f"mode={mode!r} is not 'linear' or 'circular'")
    if axis == 0 or len(ushape) != len(shape) or any(
            a != b for d, (a, b) in enumerate(zip(shape, ushape)) if d != axis) or ushape[axis] > shape[axis]:
        raise ctx.invalid(f"update {ushape} does not fit cache {shape} along axis {axis}")
    view = [1] * len(shape)
    view[axis] = ushape[axis]
    pos = ctx.constant(np.arange(ushape[axis], dtype=np.int64).reshape(view))
    if where:
        start = raster.reshape(ctx, cast(ctx, where, _INT64), [shape[0]] + [1] * (len(shape) - 1))
        pos = binary(ctx, BinaryFn.ADD, pos, start)
    if mode == "circular":
        pos = binary(ctx, BinaryFn.MOD, pos, ctx.constant(np.int64(shape[axis])))
    pos = raster.broadcast_to(ctx, pos, ushape)
    offsets = element_offsets(ctx, shape, axis, pos)
    return [scatter_rows(ctx, cache, offsets, update, 1, None)]


def _zeros(ctx: LoweringContext, shape: Sequence[int], dtype: np.dtype) -> str:
    """A zero tensor as a fill-only RASTER, so a large one is not stored in the graph."""
    return raster.raster(ctx, [ctx.constant(np.zeros(1, dtype))], shape, [], fill=0.0)


def _max_unpool(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    """Zeros of the unpooled shape with each input value written at its flat index; a larger
    ``output_shape`` pads that result at the end of each axis."""
    x, idx = ctx.required_input(node, 0), _index_input(ctx, node, 1)
    shape = ctx.shape(x)
    nd = len(shape) - 2
    kernel = ctx.ints_attr(node, "kernel_shape")
    strides = ctx.ints_attr(node, "strides", [1] * nd)
    pads = ctx.ints_attr(node, "pads", [0] * 2 * nd)
    if kernel is None or len(kernel) != nd or len(strides) != nd or len(pads) != 2 * nd:
        raise ctx.invalid("kernel_shape, strides and pads must match the spatial rank")
    unpooled = [*shape[:2], *((d - 1) * s - pads[i] - pads[i + nd] + k
                              for i, (d, s, k) in enumerate(zip(shape[2:], strides, kernel)))]
    given = ctx.const_input(node, 2, "output_shape")
    out = unpooled if given is None else numpy_shape(given)
    if ctx.shape(idx) != shape or len(out) != len(shape) or any(
            d <= 0 or o < d for d, o in zip(unpooled, out)):
        raise ctx.invalid(f"indices {ctx.shape(idx)} / output shape {out} do not fit input {shape}")
    size = math.prod(unpooled)
    check_index_range(ctx, idx, size, "indices")
    table = _zeros(ctx, [size, 1], ctx.dtype(x))
    y = raster.reshape(ctx, scatter_rows(ctx, table, wrap_negative(ctx, idx, size), x, 1, None), unpooled)
    return [raster.pad_constant(ctx, y, [0] * len(out), [o - d for o, d in zip(out, unpooled)])]


def _col2im(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    """Sum sliding blocks back into an image: every (kernel offset, block) element has a fixed
    destination, so it is one SCATTER-add of rows; cells in the padding go to a spare row."""
    x = ctx.required_input(node, 0)
    image = numpy_shape(ctx.const_input(node, 1, "image_shape"))
    block = numpy_shape(ctx.const_input(node, 2, "block_shape"))
    nd = len(image)
    dil = ctx.ints_attr(node, "dilations", [1] * nd)
    pads = ctx.ints_attr(node, "pads", [0] * 2 * nd)
    strides = ctx.ints_attr(node, "strides", [1] * nd)
    n, ck, length = ctx.shape(x)
    k = math.prod(block)
    counts = [(image[i] + pads[i] + pads[i + nd] - dil[i] * (block[i] - 1) - 1) // strides[i] + 1 for i in range(nd)]
    if len(block) != nd or ck % k or math.prod(counts) != length or min(counts) <= 0:
        raise ctx.invalid(f"input {ctx.shape(x)} does not match image {image} / block {block}")
    c = ck // k
    kernel_at = np.indices(block).reshape(nd, k, 1)
    block_at = np.indices(counts).reshape(nd, 1, length)
    pos = [block_at[i] * strides[i] - pads[i] + kernel_at[i] * dil[i] for i in range(nd)]
    inside = np.logical_and.reduce([(p >= 0) & (p < image[i]) for i, p in enumerate(pos)])
    spatial = math.prod(image)
    flat = sum(p * s for p, s in zip(pos, contiguous_strides(image)))
    rows = np.where(inside, flat, spatial).astype(np.int64).reshape(-1)  # [k * length]
    cols = raster.transpose(ctx, raster.reshape(ctx, x, [n * c, k * length]), [1, 0])
    table = _zeros(ctx, [spatial + 1, n * c], ctx.dtype(x))
    y = scatter_rows(ctx, table, ctx.constant(rows), cols, n * c, BinaryFn.ADD)
    y = raster.slice_axes(ctx, y, [0], [spatial], [0])
    return [raster.reshape(ctx, raster.transpose(ctx, y, [1, 0]), [n, c, *image])]


# -- constant-pattern ops ------------------------------------------------------------------

def _one_hot(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    idx, values = ctx.required_input(node, 0), ctx.required_input(node, 2)
    depth_value = ctx.const_input(node, 1, "depth")
    if depth_value is None or depth_value.size != 1:
        raise ctx.invalid("depth must hold one value")
    depth = int(np.asarray(depth_value).reshape(-1)[0])
    if depth <= 0:
        raise ctx.invalid(f"depth {depth} must be positive")
    if ctx.type_of(values).size != 2:
        raise ctx.invalid(f"values must hold [off, on], got shape {ctx.shape(values)}")
    rank = ctx.rank(idx)
    axis = ctx.axis(ctx.attr(node, "axis", -1), rank + 1)
    idx = wrap_negative(ctx, idx, depth)
    shape = list(ctx.shape(idx))
    idx = raster.reshape(ctx, idx, [*shape[:axis], 1, *shape[axis:]])
    targets = np.arange(depth, dtype=np.int64).reshape([1] * axis + [depth] + [1] * (rank - axis))
    hot = binary(ctx, BinaryFn.EQ, idx, ctx.constant(targets))
    off, on = (raster.reshape(ctx, raster.slice_axes(ctx, raster.reshape(ctx, values, [2]), [i], [i + 1]), [])
               for i in (0, 1))
    return [select(ctx, hot, on, off)]


def _trilu(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    x = ctx.required_input(node, 0)
    if ctx.rank(x) < 2:
        raise ctx.invalid(f"input must be at least 2-D, got {ctx.shape(x)}")
    k_value = ctx.const_input(node, 1, "k")
    k = 0 if k_value is None else int(np.asarray(k_value).reshape(-1)[0])
    n, m = ctx.shape(x)[-2:]
    diff = np.arange(m).reshape(1, m) - np.arange(n).reshape(n, 1)
    keep = diff >= k if ctx.attr(node, "upper", 1) else diff <= k
    zero = ctx.constant(np.zeros((), dtype=ctx.dtype(x)))
    return [select(ctx, ctx.constant(keep), x, zero)]


def _eye_like(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    x = ctx.required_input(node, 0)
    if ctx.rank(x) != 2:
        raise ctx.invalid(f"input must be 2-D, got {ctx.shape(x)}")
    to = ctx.attr(node, "dtype")
    dtype = ctx.dtype(x) if to is None else onnx_to_numpy(int(to), f"EyeLike node {ctx.node_label!r}")
    n, m = ctx.shape(x)
    return [ctx.constant(np.eye(n, m, int(ctx.attr(node, "k", 0))).astype(dtype))]


def _cum_prod(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    """Running product as a masked product over a new axis: y[i] = prod_{j in window(i)} x[j].
    Quadratic in the axis length, which is what keeps it exact for zeros and signs."""
    x = ctx.required_input(node, 0)
    value = ctx.const_input(node, 1, "axis")
    if value is None:
        raise ctx.invalid("input 1 (axis) is missing")
    shape = list(ctx.shape(x))
    axis = ctx.axis(int(np.asarray(value).reshape(-1)[0]), len(shape))
    n = shape[axis]
    i, j = np.arange(n).reshape(n, 1), np.arange(n).reshape(1, n)
    exclusive, reverse = bool(ctx.attr(node, "exclusive", 0)), bool(ctx.attr(node, "reverse", 0))
    if reverse:
        mask = j > i if exclusive else j >= i
    else:
        mask = j < i if exclusive else j <= i
    pairs = raster.broadcast_to(ctx, raster.unsqueeze(ctx, x, [axis]), [*shape[:axis], n, n, *shape[axis + 1:]])
    mask_shape = [1] * axis + [n, n] + [1] * (len(shape) - axis - 1)
    picked = select(ctx, ctx.constant(mask.reshape(mask_shape)), pairs, ctx.constant(np.ones((), ctx.dtype(x))))
    return [reduce(ctx, picked, ReduceFn.PROD, (axis + 1,), False)]


def _reverse_sequence(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    x = ctx.required_input(node, 0)
    lens = ctx.const_input(node, 1, "sequence_lens")
    shape = ctx.shape(x)
    batch_axis, time_axis = ctx.attr(node, "batch_axis", 1), ctx.attr(node, "time_axis", 0)
    if {batch_axis, time_axis} != {0, 1} or len(shape) < 2:
        raise ctx.invalid(f"batch_axis={batch_axis} and time_axis={time_axis} must be 0 and 1")
    lens = numpy_shape(lens)
    steps, batch = shape[time_axis], shape[batch_axis]
    if len(lens) != batch or any(not 0 <= n <= steps for n in lens):
        raise ctx.invalid(f"sequence_lens {lens} do not match batch {batch} / steps {steps}")
    t = np.arange(steps).reshape(steps, 1)
    n = np.array(lens).reshape(1, batch)
    src = np.where(t < n, n - 1 - t, t)  # [time, batch]
    if time_axis == 1:
        src = src.T
    src = np.broadcast_to(src.reshape(src.shape + (1,) * (len(shape) - 2)), shape).astype(np.int64)
    return [gather_flat(ctx, x, element_offsets(ctx, shape, time_axis, ctx.constant(src)))]


# -- data-dependent output shapes: only for constant (or value-specialised) inputs ---------

def _non_zero(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    value = ctx.const_input(node, 0, "X")
    return [ctx.constant(np.array(np.nonzero(value), dtype=np.int64).reshape(value.ndim, -1))]


def _compress(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    x = ctx.required_input(node, 0)
    cond = np.asarray(ctx.const_input(node, 1, "condition")).reshape(-1).astype(bool)
    axis = ctx.attr(node, "axis")
    if axis is None:
        x = raster.reshape(ctx, x, [ctx.type_of(x).size])
        axis = 0
    axis = ctx.axis(axis, ctx.rank(x))
    n = ctx.shape(x)[axis]
    if cond.size > n:
        raise ctx.invalid(f"condition has {cond.size} entries for an axis of size {n}")
    picked = np.nonzero(cond)[0].astype(np.int64)
    return [ctx.emit1(Op.GATHER, [x, ctx.constant(picked)], GatherAttrs(axis))]


def _unique(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    value = ctx.const_input(node, 0, "X")
    axis = ctx.attr(node, "axis")
    if axis is None:
        value, axis = value.reshape(-1), 0
    else:
        axis = ctx.axis(axis, value.ndim)
    uniq, first, inverse, counts = np.unique(value, return_index=True, return_inverse=True,
                                             return_counts=True, axis=axis)
    if not ctx.attr(node, "sorted", 1):  # order of first occurrence
        order = np.argsort(first, kind="stable")
        uniq, first, counts = np.take(uniq, order, axis=axis), first[order], counts[order]
        inverse = np.argsort(order)[inverse.reshape(-1)]
    return [ctx.constant(uniq), ctx.constant(first.astype(np.int64)),
            ctx.constant(inverse.reshape(-1).astype(np.int64)), ctx.constant(counts.astype(np.int64))]


RULES: dict[str, Rule] = {
    "GatherElements": _gather_elements, "GatherND": _gather_nd, "ScatterElements": _scatter_elements,
    "Scatter": _scatter_elements, "ScatterND": _scatter_nd, "TensorScatter": _tensor_scatter,
    "OneHot": _one_hot, "Trilu": _trilu, "EyeLike": _eye_like, "CumProd": _cum_prod,
    "ReverseSequence": _reverse_sequence, "MaxUnpool": _max_unpool, "Col2Im": _col2im, "NonZero": _non_zero, "Compress": _compress, "Unique": _unique,
}
