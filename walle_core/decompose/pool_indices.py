"""MaxPool with its Indices output: windows gathered from a constant table, then REDUCE MAX
and ARG_REDUCE over each window.

POOL2D gives the maxima but not where they are, so when the Indices output is asked for, the
pool is written out: a constant [outputs, kernel] table of flat input positions (a padding
position points at one extra -inf column) drives one GATHER, and the arg-max's table entry,
translated to ONNX's flat NCHW (or column-major, ``storage_order=1``) index, is the index.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

from walle_core.decompose import raster
from walle_core.decompose.context import LoweringContext
from walle_core.decompose.elementwise import binary
from walle_core.ops import ArgReduceAttrs, BinaryFn, GatherAttrs, Op, ReduceAttrs, ReduceFn

#: window entries (outputs x kernel) beyond which the constant tables are too large
MAX_TABLE = 1 << 24


def window_tables(spatial: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
                  dilations: Sequence[int], begins: Sequence[int], out: Sequence[int],
                  column_major: bool) -> tuple[np.ndarray, np.ndarray]:
    """(gather positions, reported indices), both [prod(out), prod(kernel)] int64. A window
    element in the padding gathers position prod(spatial) (the -inf column)."""
    size = math.prod(spatial)
    row_strides = np.cumprod([1, *spatial[::-1]])[:-1][::-1]
    col_strides = np.cumprod([1, *spatial])[:-1]
    gather = np.full((math.prod(out), math.prod(kernel)), size, dtype=np.int64)
    report = np.zeros_like(gather)
    for p, o in enumerate(itertools.product(*(range(n) for n in out))):
        for k, t in enumerate(itertools.product(*(range(n) for n in kernel))):
            at = [oi * s + ti * d - b for oi, ti, s, d, b in zip(o, t, strides, dilations, begins)]
            if all(0 <= a < n for a, n in zip(at, spatial)):
                gather[p, k] = int(np.dot(at, row_strides))
                report[p, k] = int(np.dot(at, col_strides if column_major else row_strides))
    return gather, report


def max_pool_with_indices(ctx: LoweringContext, x: str, kernel: Sequence[int], strides: Sequence[int],
                          dilations: Sequence[int], begins: Sequence[int], out: Sequence[int],
                          column_major: bool) -> tuple[str, str]:
    n, c, *spatial = ctx.shape(x)
    if math.prod(out) * math.prod(kernel) > MAX_TABLE:
        raise ctx.unsupported(f"MaxPool indices over a {list(out)} output with kernel {list(kernel)} is too large")
    gather, report = window_tables(spatial, kernel, strides, dilations, begins, out, column_major)
    size = math.prod(spatial)
    flat = raster.reshape(ctx, x, (n, c, size))
    lowest = -np.inf if ctx.dtype(x).kind == "f" else np.iinfo(ctx.dtype(x)).min
    padded = raster.pad_constant(ctx, flat, [0, 0, 0], [0, 0, 1], lowest)
    windows = ctx.emit1(Op.GATHER, [padded, ctx.constant(gather)], GatherAttrs(2))  # [N, C, P, K]
    values = ctx.emit1(Op.REDUCE, [windows], ReduceAttrs(ReduceFn.MAX, (3,), False))
    first = ctx.emit1(Op.ARG_REDUCE, [windows], ArgReduceAttrs(3, False, largest=True))
    per_output = ctx.constant(np.arange(len(gather), dtype=np.int64) * gather.shape[1])
    local = ctx.emit1(Op.GATHER, [ctx.constant(report.reshape(-1)),
                                  binary(ctx, BinaryFn.ADD, first, per_output)], GatherAttrs(0))
    planes = ctx.constant((np.arange(n * c, dtype=np.int64) * size).reshape(n, c, 1))
    index = binary(ctx, BinaryFn.ADD, local, planes)
    shape = (n, c, *out)
    return raster.reshape(ctx, values, shape), raster.reshape(ctx, index, shape)
