"""TfIdfVectorizer as shifted comparisons and sums.

The n-gram pool is in the attributes, so for each gram length n and skip distance d the
input is viewed as n shifted slices (one RASTER each); comparing them with the pool's
n-grams (BINARY EQ against a [G] row) and AND-ing gives a [.., positions, G] match table
whose SUM counts each n-gram. Counts map onto output columns through a constant 0/1 MATMUL
(pool order -> ``ngram_indexes``) and are weighted elementwise. Counting follows the ONNX
reference: unigrams once, longer grams once per skip distance 1 .. max_skip_count + 1.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx

from walle_core.decompose import raster
from walle_core.decompose.context import LoweringContext, Rule
from walle_core.decompose.elementwise import binary, cast, select
from walle_core.decompose.reduce import reduce
from walle_core.ops import BinaryFn, MatMulAttrs, Op, ReduceFn

F32 = np.dtype(np.float32)


def _pool(ctx: LoweringContext, node: onnx.NodeProto, x_dtype: np.dtype) -> dict[int, np.ndarray]:
    """Pool n-grams by length n as [G_n, n] arrays of ``x_dtype``, in pool (id) order."""
    strings, ints = ctx.attr(node, "pool_strings"), ctx.attr(node, "pool_int64s")
    if strings:
        pool = np.array([s.decode() if isinstance(s, bytes) else s for s in strings], dtype=object)
    elif ints:
        pool = np.array(ints, dtype=np.int64)
    else:
        raise ctx.invalid("one of pool_strings / pool_int64s is required")
    if (pool.dtype == object) != (x_dtype == object):
        raise ctx.invalid(f"a pool of {pool.dtype} cannot match an input of {x_dtype}")
    starts = ctx.ints_attr(node, "ngram_counts", [])
    bounds = [*starts, len(pool)]
    if any(not 0 <= a <= b <= len(pool) for a, b in itertools.pairwise(bounds)):
        raise ctx.invalid(f"ngram_counts {starts} do not partition a pool of {len(pool)} items")
    grams = {}
    for n, (a, b) in enumerate(itertools.pairwise(bounds), start=1):
        if (b - a) % n:
            raise ctx.invalid(f"{b - a} pool items do not form whole {n}-grams")
        grams[n] = pool[a:b].reshape(-1, n).astype(x_dtype)
    return grams


def _count(ctx: LoweringContext, x: str, grams: np.ndarray, n: int, skip: int) -> str | None:
    """[..., G] float32 counts of each row of ``grams`` at items ``skip`` apart; None if none fit."""
    length = ctx.shape(x)[-1]
    positions = length - (n - 1) * skip
    if positions <= 0 or not len(grams):
        return None
    axis = ctx.rank(x) - 1
    match = None
    for k in range(n):
        tokens = raster.slice_axes(ctx, x, [k * skip], [k * skip + positions], [axis])
        hit = binary(ctx, BinaryFn.EQ, raster.unsqueeze(ctx, tokens, [axis + 1]), ctx.constant(grams[:, k]))
        match = hit if match is None else binary(ctx, BinaryFn.AND, match, hit)
    return reduce(ctx, cast(ctx, match, F32), ReduceFn.SUM, (axis,), keepdims=False)


def _tfidf(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    x = ctx.required_input(node, 0)
    if ctx.rank(x) not in (1, 2) or ctx.dtype(x).kind not in "iuO":
        raise ctx.invalid(f"input must be a [N] or [B, N] tensor of integers or strings, got "
                          f"{ctx.dtype(x)}{list(ctx.shape(x))}")
    lo, hi = int(ctx.attr(node, "min_gram_length", 1)), int(ctx.attr(node, "max_gram_length", 1))
    max_skip = int(ctx.attr(node, "max_skip_count", 0))
    mode = ctx.attr(node, "mode", "TF")
    if not 1 <= lo <= hi or max_skip < 0 or mode not in ("TF", "IDF", "TFIDF"):
        raise ctx.invalid(f"invalid min/max_gram_length {lo}/{hi}, max_skip_count {max_skip} or mode {mode!r}")
    grams = _pool(ctx, node, ctx.dtype(x))
    indexes = ctx.ints_attr(node, "ngram_indexes", [])
    total = sum(len(g) for g in grams.values())
    if len(indexes) != total or min(indexes, default=0) < 0:
        raise ctx.invalid(f"ngram_indexes must give a non-negative column for each of the {total} pool n-grams")
    width = max(indexes, default=-1) + 1
    if width * total > 1 << 24 or max_skip > ctx.shape(x)[-1]:
        raise ctx.unsupported(f"{total} n-grams into {width} columns with max_skip_count={max_skip} is too large")
    batch = ctx.shape(x)[:-1]
    parts, first = [], 0
    placement = np.zeros((total, width), dtype=np.float32)
    for n, pool in grams.items():
        # a repeated n-gram is counted under its last pool position only (as the reference's trie)
        last = {tuple(gram): g for g, gram in enumerate(pool.tolist())}
        for g in last.values():
            placement[first + g, indexes[first + g]] = 1.0
        first += len(pool)
        skips = range(1, max_skip + 2 if n > 1 else 2) if lo <= n <= hi else range(0)
        counts = [c for c in (_count(ctx, x, pool, n, d) for d in skips) if c is not None]
        total_n = counts[0] if counts else ctx.constant(np.zeros((*batch, len(pool)), F32))
        for c in counts[1:]:
            total_n = binary(ctx, BinaryFn.ADD, total_n, c)
        parts.append(total_n)
    freq = raster.concat(ctx, parts, len(batch)) if len(parts) > 1 else parts[0]
    rows = freq if batch else raster.unsqueeze(ctx, freq, [0])  # MATMUL wants a matrix
    freq = ctx.emit1(Op.MATMUL, [rows, ctx.constant(placement)], MatMulAttrs())
    if not batch:
        freq = raster.squeeze(ctx, freq, [0])
    weights = np.asarray(ctx.attr(node, "weights", []) or [], dtype=np.float32)
    if len(weights) and len(weights) != width:
        raise ctx.invalid(f"{len(weights)} weights for {width} output columns")
    zero = ctx.constant(np.array(0.0, F32))
    if mode == "IDF":
        present = binary(ctx, BinaryFn.GT, freq, zero)
        return [select(ctx, present, ctx.constant(weights if len(weights) else np.array(1.0, F32)), zero)]
    if mode == "TFIDF" and len(weights):
        return [binary(ctx, BinaryFn.MUL, freq, ctx.constant(weights))]
    return [freq]


RULES: dict[str, Rule] = {"TfIdfVectorizer": _tfidf}
