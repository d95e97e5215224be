"""Einsum for the common cases: one or two operands, no ellipsis, no repeated index within an
operand. Two operands become transpose -> reshape -> batched MATMUL -> reshape -> transpose."""

from __future__ import annotations

import math

import onnx

from walle_core.decompose import raster
from walle_core.decompose.context import LoweringContext, Rule
from walle_core.decompose.reduce import reduce
from walle_core.ops import MatMulAttrs, Op, ReduceFn


def _parse(ctx: LoweringContext, equation: str, n_inputs: int) -> tuple[list[str], str]:
    equation = equation.replace(" ", "")
    if "..." in equation:
        raise ctx.unsupported("einsum with an ellipsis ('...')")
    lhs, arrow, out = equation.partition("->")
    terms = lhs.split(",")
    if len(terms) != n_inputs:
        raise ctx.invalid(f"equation {equation!r} names {len(terms)} operands, the node has {n_inputs}")
    if not arrow:
        letters = "".join(terms)
        out = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    for term in [*terms, out]:
        if not all(c.isalpha() for c in term):
            raise ctx.invalid(f"equation {equation!r} has a malformed term {term!r}")
        if len(set(term)) != len(term):
            raise ctx.unsupported(f"einsum term {term!r} repeats an index (diagonals)")
    if any(c not in "".join(terms) for c in out):
        raise ctx.invalid(f"output {out!r} uses an index no operand has")
    return terms, out


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
    terms, out = _parse(ctx, ctx.attr(node, "equation", ""), len(xs))
    sizes: dict[str, int] = {}
    for x, term in zip(xs, terms):
        if len(term) != ctx.rank(x):
            raise ctx.invalid(f"term {term!r} does not match operand rank {ctx.rank(x)}")
        for c, n in zip(term, ctx.shape(x)):
            if sizes.setdefault(c, n) != n:
                raise ctx.unsupported(f"index {c!r} has sizes {sizes[c]} and {n} (broadcasting)")
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
