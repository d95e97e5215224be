"""The numeric ops of the ``ai.onnx.ml`` domain that are plain tensor ops underneath."""

from __future__ import annotations

import math

import numpy as np
import onnx

from walle_core.decompose import raster
from walle_core.decompose.context import LoweringContext, Rule
from walle_core.decompose.elementwise import binary, cast
from walle_core.ops import BinaryFn, GatherAttrs, Op


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


RULES: dict[str, Rule] = {"Binarizer": _binarizer, "ArrayFeatureExtractor": _array_feature_extractor}
