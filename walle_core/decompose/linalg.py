"""Small dense linear algebra that has no atomic op of its own.

Det uses the Leibniz formula: one GATHER picks, for every permutation, the n entries it
multiplies, a PROD reduction forms the terms and a signed SUM adds them. That is n! * n
gathered values per matrix, so it is only offered for the small matrices models actually
carry (3-D pose, 4x4 transforms); a larger one asks for a factorisation this core lacks.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx

from walle_core.decompose import raster
from walle_core.decompose.context import LoweringContext, Rule
from walle_core.decompose.elementwise import binary
from walle_core.decompose.reduce import reduce
from walle_core.ops import BinaryFn, GatherAttrs, Op, ReduceFn

#: largest matrix Det expands: 5! = 120 products of 5 factors each
MAX_DET_SIZE = 5


def _permutation_table(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(flat indices [n!, n] into a row-major n x n matrix, signs [n!]) of every permutation."""
    perms = list(itertools.permutations(range(n)))
    index = np.array([[row * n + col for row, col in enumerate(p)] for p in perms], dtype=np.int64)
    inversions = [sum(p[i] > p[j] for i in range(n) for j in range(i + 1, n)) for p in perms]
    return index.reshape(len(perms), n), np.array([(-1.0) ** k for k in inversions])


def _det(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    x = ctx.required_input(node, 0)
    shape = ctx.shape(x)
    if len(shape) < 2 or shape[-1] != shape[-2]:
        raise ctx.invalid(f"input must be [..., n, n], got {list(shape)}")
    if ctx.dtype(x).kind != "f":
        raise ctx.invalid(f"input must be floating point, got {ctx.dtype(x)}")
    n = shape[-1]
    if n > MAX_DET_SIZE:
        raise ctx.unsupported(f"determinant of a {n}x{n} matrix (expanded only up to {MAX_DET_SIZE}x{MAX_DET_SIZE})")
    batch = shape[:-2]
    if n == 0:
        return [ctx.constant(np.ones(batch, dtype=ctx.dtype(x)))]
    index, signs = _permutation_table(n)
    flat = raster.reshape(ctx, x, (*batch, n * n))
    picked = ctx.emit1(Op.GATHER, [flat, ctx.constant(index)], GatherAttrs(len(batch)))
    terms = reduce(ctx, picked, ReduceFn.PROD, (len(batch) + 1,), keepdims=False)
    signed = binary(ctx, BinaryFn.MUL, terms, ctx.constant(signs.astype(ctx.dtype(x))))
    return [reduce(ctx, signed, ReduceFn.SUM, (len(batch),), keepdims=False)]


RULES: dict[str, Rule] = {"Det": _det}
