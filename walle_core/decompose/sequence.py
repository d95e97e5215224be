"""Sequence and optional ops, resolved while lowering.

A sequence is a :class:`SequenceValue` (a list of IR tensors) and an empty optional is
:data:`NONE`; neither reaches the IR. So these ops are bookkeeping on the lowering context:
every position they use must be known while lowering (a constant, or a value-specialised
graph input), and SequenceMap unrolls its body once per element.
"""

from __future__ import annotations

import numpy as np
import onnx

from walle_core.decompose import raster
from walle_core.decompose.context import NONE, LoweringContext, NoneValue, Rule, SequenceValue, Value
from walle_core.onnx.dtypes import onnx_to_numpy

#: SequenceMap unrolls its body; past this many elements that stops being sensible
MAX_ELEMENTS = 1024


def _position(ctx: LoweringContext, node: onnx.NodeProto, i: int, length: int, default: int,
              inclusive: bool = False) -> int:
    """The normalised position of input ``i`` (``default`` when omitted); ``inclusive`` allows
    ``length`` itself (insertion at the back)."""
    value = ctx.const_input(node, i, "position")
    if value is None:
        return default
    if value.size != 1 or value.dtype.kind not in "iu":
        raise ctx.invalid(f"position must be an integer scalar, got {value.dtype}{list(value.shape)}")
    pos = int(value.reshape(-1)[0])
    upper = length if inclusive else length - 1
    if not -length <= pos <= upper:
        raise ctx.invalid(f"position {pos} is out of range for a sequence of {length} tensors")
    return pos + length if pos < 0 else pos


def _check_dtype(ctx: LoweringContext, seq: SequenceValue, tensor: str) -> None:
    if ctx.dtype(tensor) != seq.dtype:
        raise ctx.invalid(f"a {ctx.dtype(tensor)} tensor cannot join a sequence of {seq.dtype}")


def _sequence_empty(ctx: LoweringContext, node: onnx.NodeProto) -> list[Value]:
    dtype = onnx_to_numpy(int(ctx.attr(node, "dtype", onnx.TensorProto.FLOAT)),
                          f"SequenceEmpty node {ctx.node_label!r}")
    return [SequenceValue((), dtype)]


def _sequence_construct(ctx: LoweringContext, node: onnx.NodeProto) -> list[Value]:
    items = tuple(ctx.required_input(node, i) for i in range(len(node.input)))
    if not items:
        raise ctx.invalid("needs at least one input")
    seq = SequenceValue(items, ctx.dtype(items[0]))
    for item in items[1:]:
        _check_dtype(ctx, seq, item)
    return [seq]


def _sequence_at(ctx: LoweringContext, node: onnx.NodeProto) -> list[Value]:
    seq = ctx.sequence_input(node, 0)
    if not seq.items:
        raise ctx.invalid("the sequence is empty")
    if not ctx.input(node, 1):
        raise ctx.invalid("required input 1 (position) is missing")
    return [seq.items[_position(ctx, node, 1, len(seq.items), 0)]]


def _sequence_insert(ctx: LoweringContext, node: onnx.NodeProto) -> list[Value]:
    seq = ctx.sequence_input(node, 0)
    tensor = ctx.required_input(node, 1)
    _check_dtype(ctx, seq, tensor)
    n = len(seq.items)
    pos = _position(ctx, node, 2, n, n, inclusive=True)
    return [SequenceValue(seq.items[:pos] + (tensor,) + seq.items[pos:], seq.dtype)]


def _sequence_erase(ctx: LoweringContext, node: onnx.NodeProto) -> list[Value]:
    seq = ctx.sequence_input(node, 0)
    n = len(seq.items)
    if not n:
        raise ctx.invalid("cannot erase from an empty sequence")
    pos = _position(ctx, node, 1, n, n - 1)
    return [SequenceValue(seq.items[:pos] + seq.items[pos + 1:], seq.dtype)]


def _sequence_length(ctx: LoweringContext, node: onnx.NodeProto) -> list[Value]:
    return [ctx.constant(np.array(len(ctx.sequence_input(node, 0).items), dtype=np.int64))]


def _split_to_sequence(ctx: LoweringContext, node: onnx.NodeProto) -> list[Value]:
    x = ctx.required_input(node, 0)
    axis = ctx.axis(ctx.attr(node, "axis", 0), ctx.rank(x))
    dim = ctx.shape(x)[axis]
    split = ctx.const_input(node, 1, "split")
    if split is None:
        parts = raster.split(ctx, x, axis, [1] * dim)
        if ctx.attr(node, "keepdims", 1) == 0:
            parts = [raster.squeeze(ctx, p, [axis]) for p in parts]
        return [SequenceValue(tuple(parts), ctx.dtype(x))]
    if split.dtype.kind not in "iu" or split.ndim > 1 or (split < 0).any():
        raise ctx.invalid(f"split must hold non-negative integers, got {split.tolist()}")
    if split.ndim == 0:
        chunk = int(split)
        if chunk <= 0:
            raise ctx.invalid(f"split size {chunk} must be positive")
        sizes = [min(chunk, dim - start) for start in range(0, dim, chunk)]
    else:
        sizes = [int(s) for s in split]
        if sum(sizes) != dim:
            raise ctx.invalid(f"split sizes {sizes} do not add up to dimension {dim}")
    return [SequenceValue(tuple(raster.split(ctx, x, axis, sizes)), ctx.dtype(x))]


def _concat_from_sequence(ctx: LoweringContext, node: onnx.NodeProto) -> list[Value]:
    seq = ctx.sequence_input(node, 0)
    if not seq.items:
        raise ctx.invalid("cannot concatenate an empty sequence")
    rank = ctx.rank(seq.items[0])
    if ctx.attr(node, "new_axis", 0):
        axis = ctx.axis(ctx.attr(node, "axis"), rank + 1)
        items = [raster.unsqueeze(ctx, x, [axis]) for x in seq.items]
    else:
        axis = ctx.axis(ctx.attr(node, "axis"), rank)
        items = list(seq.items)
    return [raster.concat(ctx, items, axis)]


def _sequence_map(ctx: LoweringContext, node: onnx.NodeProto) -> list[Value]:
    body = ctx.attr(node, "body")
    if not isinstance(body, onnx.GraphProto):
        raise ctx.invalid("attribute 'body' (a graph) is missing")
    inputs = [ctx.value(node, i) for i in range(len(node.input))]
    if len(body.input) != len(inputs) or len(body.output) != len(node.output):
        raise ctx.invalid("the body's inputs/outputs do not match the node's")
    if not isinstance(inputs[0], SequenceValue):
        raise ctx.invalid("input 0 must be a sequence")
    n = len(inputs[0].items)
    if n > MAX_ELEMENTS:
        raise ctx.unsupported(f"mapping over {n} elements is too many to unroll")
    for i, value in enumerate(inputs):
        if isinstance(value, SequenceValue) and len(value.items) != n:
            raise ctx.invalid(f"input {i} has {len(value.items)} elements, input 0 has {n}")
        if value is None or isinstance(value, NoneValue):
            raise ctx.invalid(f"input {i} is missing")
    collected: list[list[str]] = [[] for _ in body.output]
    for k in range(n):
        bindings = {formal.name: value.items[k] if isinstance(value, SequenceValue) else value
                    for formal, value in zip(body.input, inputs)}
        for acc, out in zip(collected, ctx.lower_subgraph(body, bindings)):
            if not isinstance(out, str):
                raise ctx.invalid("the body must produce tensors")
            acc.append(out)
    results: list[Value] = []
    for acc, out in zip(collected, body.output):
        if acc:
            dtype = ctx.dtype(acc[0])
        else:
            dtype = onnx_to_numpy(out.type.tensor_type.elem_type, f"SequenceMap node {ctx.node_label!r} output")
        results.append(SequenceValue(tuple(acc), np.dtype(dtype)))
    return results


def _optional(ctx: LoweringContext, node: onnx.NodeProto) -> list[Value]:
    value = ctx.value(node, 0)
    return [NONE if value is None else value]


def _optional_has_element(ctx: LoweringContext, node: onnx.NodeProto) -> list[Value]:
    value = ctx.value(node, 0)
    return [ctx.constant(np.array(value is not None and not isinstance(value, NoneValue)))]


def _optional_get_element(ctx: LoweringContext, node: onnx.NodeProto) -> list[Value]:
    value = ctx.value(node, 0)
    if value is None or isinstance(value, NoneValue):
        raise ctx.invalid("the optional is empty")
    return [value]


RULES: dict[str, Rule] = {
    "SequenceEmpty": _sequence_empty, "SequenceConstruct": _sequence_construct, "SequenceAt": _sequence_at,
    "SequenceInsert": _sequence_insert, "SequenceErase": _sequence_erase, "SequenceLength": _sequence_length,
    "SplitToSequence": _split_to_sequence, "ConcatFromSequence": _concat_from_sequence,
    "SequenceMap": _sequence_map, "Optional": _optional, "OptionalHasElement": _optional_has_element,
    "OptionalGetElement": _optional_get_element,
}
