"""Data-movement helpers, every one a single RASTER node (or none, when it would be a no-op).

A RASTER region is a strided view of one input copied into a strided view of the output, so a
reshape is one contiguous copy, a transpose or slice one permuted/strided view, a broadcast a
view with stride 0, and a concat or constant pad a few regions into one output. Regions are
kept small by dropping unit dimensions and merging dimensions that are contiguous on both sides.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from walle_core.decompose.context import LoweringContext
from walle_core.ops import Op, RasterAttrs, Region


def contiguous_strides(shape: Sequence[int]) -> tuple[int, ...]:
    strides = [1] * len(shape)
    for d in range(len(shape) - 2, -1, -1):
        strides[d] = strides[d + 1] * max(int(shape[d + 1]), 1)
    return tuple(strides)


def make_region(input: int, size: Sequence[int], src_offset: int, src_strides: Sequence[int],
                dst_offset: int, dst_strides: Sequence[int]) -> Region | None:
    """A region with unit dims dropped and contiguous dims merged; None if it copies nothing."""
    if any(n <= 0 for n in size):
        return None
    dims = [(int(n), int(s), int(d)) for n, s, d in zip(size, src_strides, dst_strides) if n != 1]
    merged: list[tuple[int, int, int]] = []
    for n, s, d in dims:
        if merged:
            pn, ps, pd = merged[-1]
            if ps == s * n and pd == d * n:
                merged[-1] = (pn * n, s, d)
                continue
        merged.append((n, s, d))
    if not merged:
        merged = [(1, 1, 1)]
    return Region(input, tuple(m[0] for m in merged), int(src_offset), tuple(m[1] for m in merged),
                  int(dst_offset), tuple(m[2] for m in merged))


def raster(ctx: LoweringContext, inputs: list[str], shape: Sequence[int], regions: list[Region | None],
           fill: float | None = None) -> str:
    """Emit one RASTER node (``None`` regions, which copy nothing, are dropped)."""
    kept = tuple(r for r in regions if r is not None)
    attrs = RasterAttrs(tuple(int(d) for d in shape), kept, fill)
    return ctx.emit1(Op.RASTER, inputs, attrs)


def view_copy(ctx: LoweringContext, x: str, shape: Sequence[int], offset: int,
              strides: Sequence[int]) -> str:
    """Contiguous copy of the view of ``x`` given by (shape, offset, element strides)."""
    region = make_region(0, shape, offset, strides, 0, contiguous_strides(shape))
    return raster(ctx, [x], shape, [region])


def reshape(ctx: LoweringContext, x: str, shape: Sequence[int]) -> str:
    shape = tuple(int(d) for d in shape)
    old = ctx.shape(x)
    if shape == old:
        return x
    if math.prod(shape) != math.prod(old):
        raise ctx.invalid(f"cannot reshape {old} to {shape}")
    n = math.prod(shape)
    return raster(ctx, [x], shape, [make_region(0, (n,), 0, (1,), 0, (1,))])


def transpose(ctx: LoweringContext, x: str, perm: Sequence[int]) -> str:
    shape = ctx.shape(x)
    perm = [int(p) for p in perm]
    if sorted(perm) != list(range(len(shape))):
        raise ctx.invalid(f"perm {perm} is not a permutation of {len(shape)} axes")
    if perm == sorted(perm):
        return x
    strides = contiguous_strides(shape)
    return view_copy(ctx, x, [shape[p] for p in perm], 0, [strides[p] for p in perm])


def slice_axes(ctx: LoweringContext, x: str, starts: Sequence[int], ends: Sequence[int],
               axes: Sequence[int] | None = None, steps: Sequence[int] | None = None) -> str:
    """ONNX Slice semantics: out-of-range starts/ends clamp, negative ones count from the end."""
    shape = list(ctx.shape(x))
    rank = len(shape)
    axes = list(range(len(starts))) if axes is None else [ctx.axis(a, rank) for a in axes]
    steps = [1] * len(starts) if steps is None else [int(s) for s in steps]
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise ctx.invalid("starts, ends, axes and steps must have the same length")
    if len(set(axes)) != len(axes):
        raise ctx.invalid(f"axes {axes} repeat an axis")
    in_strides = contiguous_strides(shape)
    out_shape, strides, offset = list(shape), list(in_strides), 0
    for start, end, axis, step in zip(starts, ends, axes, steps):
        dim = shape[axis]
        start, end = int(start), int(end)
        if step == 0:
            raise ctx.invalid(f"slice step on axis {axis} is 0")
        start = start + dim if start < 0 else start
        end = end + dim if end < 0 else end
        if step > 0:
            start, end = min(max(start, 0), dim), min(max(end, 0), dim)
        else:
            start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
        count = max(0, -(-(end - start) // step))
        out_shape[axis] = count
        offset += start * in_strides[axis] if count else 0
        strides[axis] = in_strides[axis] * step
    if out_shape == shape and offset == 0 and list(strides) == list(in_strides):
        return x
    return view_copy(ctx, x, out_shape, offset, strides)


def concat(ctx: LoweringContext, xs: Sequence[str], axis: int) -> str:
    if not xs:
        raise ctx.invalid("concat of no inputs")
    base = list(ctx.shape(xs[0]))
    rank = len(base)
    axis = ctx.axis(axis, rank)
    for x in xs:
        shape = ctx.shape(x)
        if len(shape) != rank or any(a != b for d, (a, b) in enumerate(zip(shape, base)) if d != axis):
            raise ctx.invalid(f"cannot concatenate shapes {[ctx.shape(v) for v in xs]} on axis {axis}")
    if len(xs) == 1:
        return xs[0]
    out_shape = list(base)
    out_shape[axis] = sum(ctx.shape(x)[axis] for x in xs)
    out_strides = contiguous_strides(out_shape)
    regions, at = [], 0
    for i, x in enumerate(xs):
        shape = ctx.shape(x)
        regions.append(make_region(i, shape, 0, contiguous_strides(shape), at * out_strides[axis],
                                   out_strides))
        at += shape[axis]
    return raster(ctx, list(xs), out_shape, regions)


def split(ctx: LoweringContext, x: str, axis: int, sizes: Sequence[int]) -> list[str]:
    axis = ctx.axis(axis, ctx.rank(x))
    if any(s < 0 for s in sizes) or sum(sizes) != ctx.shape(x)[axis]:
        raise ctx.invalid(f"split sizes {list(sizes)} do not add up to dimension {ctx.shape(x)[axis]}")
    outs, at = [], 0
    for size in sizes:
        outs.append(slice_axes(ctx, x, [at], [at + size], [axis]))
        at += size
    return outs


def broadcast_to(ctx: LoweringContext, x: str, shape: Sequence[int]) -> str:
    """NumPy broadcasting of ``x`` to ``shape`` (a view with stride 0 on stretched dims)."""
    shape = tuple(int(d) for d in shape)
    src = ctx.shape(x)
    if src == shape:
        return x
    if len(src) > len(shape):
        raise ctx.invalid(f"cannot broadcast {src} to {shape}")
    lead = len(shape) - len(src)
    src_strides = contiguous_strides(src)
    strides = []
    for d, n in enumerate(shape):
        if d < lead:
            strides.append(0)
            continue
        m = src[d - lead]
        if m == n:
            strides.append(src_strides[d - lead])
        elif m == 1:
            strides.append(0)
        else:
            raise ctx.invalid(f"cannot broadcast {src} to {shape}")
    return view_copy(ctx, x, shape, 0, strides)


def pad_constant(ctx: LoweringContext, x: str, begins: Sequence[int], ends: Sequence[int],
                 value: float = 0.0) -> str:
    """Pad with a constant: output filled with ``value`` plus one region. Negative pads crop."""
    shape = ctx.shape(x)
    begins, ends = [int(b) for b in begins], [int(e) for e in ends]
    if any(b < 0 for b in begins) or any(e < 0 for e in ends):
        x = slice_axes(ctx, x, [max(0, -b) for b in begins],
                       [d - max(0, -e) for d, e in zip(shape, ends)])
        begins, ends = [max(b, 0) for b in begins], [max(e, 0) for e in ends]
        shape = ctx.shape(x)
    if not any(begins) and not any(ends):
        return x
    out_shape = [b + d + e for b, d, e in zip(begins, shape, ends)]
    out_strides = contiguous_strides(out_shape)
    offset = sum(b * s for b, s in zip(begins, out_strides))
    region = make_region(0, shape, 0, contiguous_strides(shape), offset, out_strides)
    return raster(ctx, [x], out_shape, [region], fill=float(value))


def pad_mode(ctx: LoweringContext, x: str, begins: Sequence[int], ends: Sequence[int], mode: str) -> str:
    """Pad with ``reflect`` / ``edge`` / ``wrap`` borders, one RASTER per padded axis.

    Each border is one region reading the input backwards (reflect), with stride 0 (edge), or
    forwards from the far side (wrap), so an axis takes at most three regions.
    """
    begins, ends = [int(b) for b in begins], [int(e) for e in ends]
    if any(b < 0 for b in begins) or any(e < 0 for e in ends):
        shape = ctx.shape(x)
        x = slice_axes(ctx, x, [max(0, -b) for b in begins],
                       [d - max(0, -e) for d, e in zip(shape, ends)])
        begins, ends = [max(b, 0) for b in begins], [max(e, 0) for e in ends]
    for axis, (before, after) in enumerate(zip(begins, ends)):
        if before or after:
            x = _pad_axis(ctx, x, axis, before, after, mode)
    return x


def _pad_axis(ctx: LoweringContext, x: str, axis: int, before: int, after: int, mode: str) -> str:
    shape = list(ctx.shape(x))
    n = shape[axis]
    if n == 0:
        raise ctx.invalid(f"cannot {mode}-pad an empty axis {axis}")
    if mode == "reflect" and max(before, after) >= n:
        raise ctx.unsupported(f"reflect padding of {max(before, after)} needs an axis longer than {n}")
    if mode == "wrap" and max(before, after) > n:
        raise ctx.unsupported(f"wrap padding of {max(before, after)} is longer than the axis ({n})")
    out_shape = list(shape)
    out_shape[axis] = before + n + after
    src_strides = contiguous_strides(shape)
    dst_strides = contiguous_strides(out_shape)
    step_src, step_dst = src_strides[axis], dst_strides[axis]

    def region(count: int, src_index: int, src_step: int, dst_index: int) -> Region | None:
        size = list(shape)
        size[axis] = count
        s = list(src_strides)
        s[axis] = src_step * step_src
        return make_region(0, size, src_index * step_src, s, dst_index * step_dst, dst_strides)

    if mode == "reflect":  # out[before - 1 - i] = x[1 + i], out[before + n + i] = x[n - 2 - i]
        head, tail = region(before, before, -1, 0), region(after, n - 2, -1, before + n)
    elif mode == "edge":
        head, tail = region(before, 0, 0, 0), region(after, n - 1, 0, before + n)
    elif mode == "wrap":
        head, tail = region(before, n - before, 1, 0), region(after, 0, 1, before + n)
    else:
        raise ctx.unsupported(f"pad mode {mode!r}")
    body = region(n, 0, 1, before)
    return raster(ctx, [x], out_shape, [head, body, tail])


def tile(ctx: LoweringContext, x: str, repeats: Sequence[int]) -> str:
    """One region over the view [r0, d0, r1, d1, ...] with stride 0 on every repeat dim."""
    shape = ctx.shape(x)
    repeats = [int(r) for r in repeats]
    if len(repeats) != len(shape) or any(r < 0 for r in repeats):
        raise ctx.invalid(f"repeats {repeats} do not match rank {len(shape)} (or are negative)")
    if all(r == 1 for r in repeats):
        return x
    src = contiguous_strides(shape)
    size, src_strides = [], []
    for r, d, s in zip(repeats, shape, src):
        size += [r, d]
        src_strides += [0, s]
    out_shape = [r * d for r, d in zip(repeats, shape)]
    region = make_region(0, size, 0, src_strides, 0, contiguous_strides(size))
    return raster(ctx, [x], out_shape, [region])


def squeeze(ctx: LoweringContext, x: str, axes: Sequence[int] | None) -> str:
    shape = ctx.shape(x)
    if axes is None:
        axes = [d for d, n in enumerate(shape) if n == 1]
    axes = {ctx.axis(a, len(shape)) for a in axes}
    for a in axes:
        if shape[a] != 1:
            raise ctx.invalid(f"cannot squeeze axis {a} of size {shape[a]}")
    return reshape(ctx, x, [n for d, n in enumerate(shape) if d not in axes])


def unsqueeze(ctx: LoweringContext, x: str, axes: Sequence[int]) -> str:
    shape = list(ctx.shape(x))
    rank = len(shape) + len(axes)
    norm = sorted(ctx.axis(a, rank) for a in axes)
    if len(set(norm)) != len(norm):
        raise ctx.invalid(f"unsqueeze axes {list(axes)} repeat an axis")
    for a in norm:
        shape.insert(a, 1)
    return reshape(ctx, x, shape)


def flatten(ctx: LoweringContext, x: str, axis: int) -> str:
    shape = ctx.shape(x)
    axis = int(axis) + len(shape) if int(axis) < 0 else int(axis)
    if not 0 <= axis <= len(shape):
        raise ctx.invalid(f"axis {axis} is out of range for rank {len(shape)}")
    return reshape(ctx, x, [math.prod(shape[:axis]), math.prod(shape[axis:])])


def flip_strides(shape: Sequence[int], axes: Sequence[int]) -> tuple[int, tuple[int, ...]]:
    """(offset, strides) of a view of a contiguous ``shape`` reversed along ``axes``."""
    strides = list(contiguous_strides(shape))
    offset = 0
    for a in axes:
        offset += (shape[a] - 1) * strides[a]
        strides[a] = -strides[a]
    return offset, tuple(strides)


def numpy_shape(values: np.ndarray) -> list[int]:
    """A 1-D int tensor value as a list of Python ints."""
    return [int(v) for v in np.asarray(values).reshape(-1)]
