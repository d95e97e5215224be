"""String ops that are plain elementwise ops on string (object) tensors.

Strings live in NumPy object arrays, which only the reference backend computes on (native
backends decline object dtypes), so these rules stay tiny: concatenation is a BINARY ADD and
comparison a BINARY EQ. Ops that need text processing (case mapping, regular expressions,
splitting into a data-dependent number of pieces) have no atomic counterpart and say so.
"""

from __future__ import annotations

import onnx

from walle_core.decompose.context import LoweringContext, Rule
from walle_core.decompose.elementwise import binary
from walle_core.onnx.dtypes import STRING
from walle_core.ops import BinaryFn


def _string_input(ctx: LoweringContext, node: onnx.NodeProto, i: int) -> str:
    x = ctx.required_input(node, i)
    if ctx.dtype(x) != STRING:
        raise ctx.invalid(f"input {i} must be a string tensor, got {ctx.dtype(x)}")
    return x


def _string_concat(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    return [binary(ctx, BinaryFn.ADD, _string_input(ctx, node, 0), _string_input(ctx, node, 1))]


def _string_normalizer(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    """Only the pass-through form: changing case has no atomic op, and dropping stopwords
    gives an output whose length depends on the data."""
    x = _string_input(ctx, node, 0)
    action = ctx.attr(node, "case_change_action", "NONE")
    if action != "NONE":
        raise ctx.unsupported(f"case_change_action={action!r} (case mapping has no atomic op)")
    if ctx.attr(node, "stopwords"):
        raise ctx.unsupported("stopwords (the output length would depend on the data)")
    return [x]


#: RegexFullMatch and StringSplit have no rule: the importer reports them as unsupported ops
RULES: dict[str, Rule] = {"StringConcat": _string_concat, "StringNormalizer": _string_normalizer}
