"""The numeric ops of the ``ai.onnx.ml`` domain that are plain tensor ops underneath."""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import numpy_helper

from walle_core.decompose import raster
from walle_core.decompose.context import LoweringContext, Rule
from walle_core.decompose.elementwise import binary, cast, select
from walle_core.ops import ArgReduceAttrs, BinaryFn, GatherAttrs, Op, ReduceAttrs, ReduceFn


def _binarizer(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    x = ctx.required_input(node, 0)
    above = binary(ctx, BinaryFn.GT, x, ctx.scalar(ctx.attr(node, "threshold", 0.0), x))
    return [cast(ctx, above, ctx.dtype(x))]


def _array_feature_extractor(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    """Columns ``indices`` (flattened) of the last axis; a 1-D input gives one row."""
    x, idx = ctx.required_input(node, 0), ctx.required_input(node, 1)
    count = math.prod(ctx.shape(idx))
    flat = raster.reshape(ctx, cast(ctx, idx, np.dtype(np.int64)), [count])
    y = ctx.emit1(Op.GATHER, [x, flat], GatherAttrs(max(ctx.rank(x) - 1, 0)))
    return [raster.reshape(ctx, y, [1, count]) if ctx.rank(x) == 1 else y]


def _label_encoder_table(ctx: LoweringContext, node: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(keys, values, default) of a LabelEncoder's attributes, as arrays."""
    def pick(kind: str) -> np.ndarray | None:
        for suffix, dtype in (("strings", object), ("int64s", np.int64), ("floats", np.float32)):
            value = ctx.attr(node, f"{kind}_{suffix}")
            if value is not None and len(value):
                return np.array([v.decode() if isinstance(v, bytes) else v for v in value], dtype=dtype)
        tensor = ctx.attr(node, f"{kind}_tensor")
        return None if tensor is None else numpy_helper.to_array(tensor).reshape(-1)

    keys, values = pick("keys"), pick("values")
    if keys is None or values is None or len(keys) != len(values) or not len(keys):
        raise ctx.invalid("needs as many keys as values (one non-empty keys_* and values_* attribute)")
    if ctx.attr(node, "default_tensor") is not None:
        default = numpy_helper.to_array(ctx.attr(node, "default_tensor")).reshape(-1)[:1]
    elif values.dtype == object:
        default = np.array([ctx.attr(node, "default_string", "_Unused")], dtype=object)
    elif values.dtype == np.int64:
        default = np.array([ctx.attr(node, "default_int64", -1)], dtype=np.int64)
    else:
        default = np.array([ctx.attr(node, "default_float", -0.0)], dtype=np.float32)
    return keys, values, default.astype(values.dtype).reshape(())


def _label_encoder(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    """Compare every element with all keys at once (EQ against a [K] row), take the last hit
    (ARG_REDUCE; a repeated key maps to its last value, as in the reference evaluator), GATHER
    its value, and SELECT the default where nothing matched."""
    x = ctx.required_input(node, 0)
    keys, values, default = _label_encoder_table(ctx, node)
    if (keys.dtype == object) != (ctx.dtype(x) == object):
        raise ctx.invalid(f"keys of {keys.dtype} cannot match an input of {ctx.dtype(x)}")
    rank = ctx.rank(x)
    hits = binary(ctx, BinaryFn.EQ, raster.unsqueeze(ctx, x, [rank]), ctx.constant(keys.astype(ctx.dtype(x))))
    flags = cast(ctx, hits, np.dtype(np.int32))
    found = ctx.emit1(Op.REDUCE, [flags], ReduceAttrs(ReduceFn.MAX, (rank,), False))
    first = ctx.emit1(Op.ARG_REDUCE, [flags], ArgReduceAttrs(rank, False, largest=True, select_last_index=True))
    mapped = ctx.emit1(Op.GATHER, [ctx.constant(values), first], GatherAttrs(0))
    matched = binary(ctx, BinaryFn.GT, found, ctx.constant(np.array(0, dtype=np.int32)))
    return [select(ctx, matched, mapped, ctx.constant(default))]


RULES: dict[str, Rule] = {"Binarizer": _binarizer, "ArrayFeatureExtractor": _array_feature_extractor,
                          "LabelEncoder": _label_encoder}
