"""Einsum of one or two operands. An ellipsis becomes fresh index letters (right-aligned, as
NumPy broadcasts), a repeated index within an operand takes the diagonal (one RASTER whose
stride is the sum of the repeated axes' strides), then two operands become transpose ->
reshape -> batched MATMUL -> reshape -> transpose."""

from __future__ import annotations

import math
import string

import onnx

from walle_core.decompose import raster
from walle_core.decompose.context import LoweringContext, Rule
from walle_core.decompose.reduce import reduce
from walle_core.ops import MatMulAttrs, Op, ReduceFn


def _parse(ctx: LoweringContext, equation: str, ranks: list[int]) -> tuple[list[str], str]:
    equation = equation.replace(" ", "")
    lhs, arrow, out = equation.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        raise ctx.invalid(f"equation {equation!r} names {len(terms)} operands, the node has {len(ranks)}")
    terms, ellipsis = _expand_ellipsis(ctx, equation, terms, ranks)
    if not arrow:
        letters = "".join(terms)
        out = ellipsis + "".join(sorted(c for c in set(letters) if letters.count(c) == 1 and c not in ellipsis))
    elif "..." in out:
        out = out.replace("...", ellipsis, 1)
    for term in [*terms, out]:
        if not all(c.isalpha() for c in term):
            raise ctx.invalid(f"equation {equation!r} has a malformed term {term!r}")
    if len(set(out)) != len(out):
        raise ctx.invalid(f"output {out!r} repeats an index")
    if any(c not in "".join(terms) for c in out):
        raise ctx.invalid(f"output {out!r} uses an index no operand has")
    return terms, out


def _expand_ellipsis(ctx: LoweringContext, equation: str, terms: list[str], ranks: list[int]
                     ) -> tuple[list[str], str]:
    """Terms with each '...' replaced by letters unused in ``equation``, and those letters."""
    counts = [rank - (len(term) - 3) if "..." in term else 0 for term, rank in zip(terms, ranks)]
    if any(n < 0 for n in counts):
        raise ctx.invalid(f"equation {equation!r}: an operand has fewer dims than its term names")
    free = [c for c in string.ascii_letters if c not in equation]
    ellipsis = "".join(free[:max(counts, default=0)])
    expanded = [term.replace("...", ellipsis[len(ellipsis) - n:], 1) for term, n in zip(terms, counts)]
    return expanded, ellipsis


def _diagonal(ctx: LoweringContext, x: str, term: str) -> tuple[str, str]:
    """Take the diagonal over every index ``term`` repeats: one strided RASTER."""
    if len(set(term)) == len(term):
        return x, term
    shape, strides = ctx.shape(x), raster.contiguous_strides(ctx.shape(x))
    letters = "".join(dict.fromkeys(term))
    sizes, steps = [], []
    for c in letters:
        axes = [i for i, t in enumerate(term) if t == c]
        if len({shape[i] for i in axes}) != 1:
            raise ctx.invalid(f"repeated index {c!r} spans axes of sizes {[shape[i] for i in axes]}")
        sizes.append(shape[axes[0]])
        steps.append(sum(strides[i] for i in axes))
    region = raster.make_region(0, sizes, 0, steps, 0, raster.contiguous_strides(sizes))
    return raster.raster(ctx, [x], sizes, [region]), letters


def _sum_out(ctx: LoweringContext, x: str, term: str, keep: str) -> tuple[str, str]:
    """Sum over the indices of ``term`` not in ``keep``; returns the tensor and its new term."""
    axes = tuple(i for i, c in enumerate(term) if c not in keep)
    if not axes:
        return x, term
    return reduce(ctx, x, ReduceFn.SUM, axes, False), "".join(c for c in term if c in keep)


def _arrange(ctx: LoweringContext, x: str, term: str, order: str) -> str:
    return raster.transpose(ctx, x, [term.index(c) for c in order])


def _einsum(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    xs = [ctx.required_input(node, i) for i in range(len(node.input))]
    terms, out = _parse(ctx, ctx.attr(node, "equation", ""), [ctx.rank(x) for x in xs])
    for i, (x, term) in enumerate(zip(xs, terms)):
        if len(term) != ctx.rank(x):
            raise ctx.invalid(f"term {term!r} does not match operand rank {ctx.rank(x)}")
        xs[i], terms[i] = _diagonal(ctx, x, term)
    sizes: dict[str, int] = {}
    for x, term in zip(xs, terms):
        for c, n in zip(term, ctx.shape(x)):
            if sizes.setdefault(c, n) != n and 1 not in (sizes[c], n):
                raise ctx.invalid(f"index {c!r} has sizes {sizes[c]} and {n}")
            sizes[c] = max(sizes[c], n)
    # an index of size 1 in one operand broadcasts against the other's
    xs = [raster.broadcast_to(ctx, x, [sizes[c] for c in term]) for x, term in zip(xs, terms)]
    if len(xs) == 1:
        y, term = _sum_out(ctx, xs[0], terms[0], out)
        return [_arrange(ctx, y, term, out)]
    if len(xs) != 2:
        raise ctx.unsupported(f"einsum of {len(xs)} operands (only 1 or 2 are supported)")
    (a, ta), (b, tb) = _sum_out(ctx, xs[0], terms[0], out + terms[1]), _sum_out(ctx, xs[1], terms[1], out + terms[0])
    batch = "".join(c for c in out if c in ta and c in tb)
    left = "".join(c for c in out if c in ta and c not in tb)
    right = "".join(c for c in out if c in tb and c not in ta)
    inner = "".join(c for c in ta if c in tb and c not in out)

    def size(letters: str) -> int:
        return math.prod(sizes[c] for c in letters)

    a3 = raster.reshape(ctx, _arrange(ctx, a, ta, batch + left + inner), [size(batch), size(left), size(inner)])
    b3 = raster.reshape(ctx, _arrange(ctx, b, tb, batch + inner + right), [size(batch), size(inner), size(right)])
    y = ctx.emit1(Op.MATMUL, [a3, b3], MatMulAttrs())
    y = raster.reshape(ctx, y, [sizes[c] for c in batch + left + right])
    return [_arrange(ctx, y, batch + left + right, out)]


RULES: dict[str, Rule] = {"Einsum": _einsum}
