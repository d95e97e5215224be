"""Lower a validated ONNX model to the atomic-op IR at concrete input shapes.

The session calls this once per input-shape signature, so every shape is static here and
shape computations (Shape -> Gather -> Concat -> Reshape) fold to constants as they are emitted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from walle_core.decompose.context import LoweringContext
from walle_core.decompose.raster import make_region, raster
from walle_core.errors import ModelError, UnsupportedOpError, WalleError
from walle_core.ir import Graph, GraphBuilder, TensorType
from walle_core.onnx.model import OnnxModel, node_label


def lower(model: OnnxModel, input_types: Mapping[str, TensorType],
          rules: Mapping[tuple[str, str], Callable[..., list[str]]]) -> Graph:
    """The IR graph of ``model`` for inputs of ``input_types`` (keyed by ONNX input name)."""
    builder = GraphBuilder()
    ctx = LoweringContext(builder, model.opsets)
    for spec in model.inputs:
        ttype = input_types.get(spec.name)
        if ttype is None:
            raise ModelError(f"no type given for graph input {spec.name!r}")
        _check_input_type(spec.name, spec.dtype, spec.shape, ttype)
        ctx.names[spec.name] = builder.add_input(spec.name, ttype)
    for name, value in model.initializers.items():
        ir_name = builder.constant(value, name=None if name.startswith("%") else name)
        ctx.names[name] = ir_name
    for index, node in enumerate(model.nodes):
        _lower_node(ctx, model, rules, node, index)
    outputs = _unique_outputs(ctx, [ctx.names[name] for name in model.output_names])
    builder.origin = builder.origin_op = ""
    graph = builder.graph
    graph.outputs = outputs
    graph.output_names = list(model.output_names)
    _drop_unused_constants(graph)
    return graph


def _check_input_type(name: str, dtype: np.dtype, shape: tuple, ttype: TensorType) -> None:
    if np.dtype(ttype.dtype) != dtype:
        raise ModelError(f"graph input {name!r}: dtype {np.dtype(ttype.dtype)} given, the model declares {dtype}")
    if len(ttype.shape) != len(shape) or any(
        isinstance(d, int) and d != g for d, g in zip(shape, ttype.shape)
    ):
        raise ModelError(f"graph input {name!r}: shape {ttype.shape} does not match the declared {shape}")
    if any(int(d) < 0 for d in ttype.shape):
        raise ModelError(f"graph input {name!r}: negative dimension in {ttype.shape}")


def _lower_node(ctx: LoweringContext, model: OnnxModel, rules: Mapping, node, index: int) -> None:
    domain = "" if node.domain == "ai.onnx" else node.domain
    label = node_label(node, index)
    rule = rules.get((domain, node.op_type))
    if rule is None:
        raise UnsupportedOpError(f"unsupported op {node.op_type!r} (domain {domain!r}, opset "
                                 f"{model.opsets.get(domain)}) at node {label!r}")
    ctx.begin_node(node, label)
    try:
        outs = rule(ctx, node)
    except WalleError:
        raise
    except Exception as exc:  # a rule tripping over a malformed node must not escape as a crash
        raise ModelError(f"{node.op_type} node {label!r}: cannot lower: {type(exc).__name__}: {exc}") from exc
    for slot, name in enumerate(node.output):
        if not name:
            continue
        if slot >= len(outs) or not outs[slot]:
            raise UnsupportedOpError(f"{node.op_type} node {label!r}: output {slot} ({name!r}) is not supported")
        ctx.names[name] = outs[slot]


def _unique_outputs(ctx: LoweringContext, outputs: list[str]) -> list[str]:
    """Graph outputs that name one tensor twice get a copy, so each output owns its buffer."""
    seen: set[str] = set()
    unique = []
    for name in outputs:
        if name in seen:
            n = ctx.type_of(name).size
            name = raster(ctx, [name], ctx.shape(name), [make_region(0, (n,), 0, (1,), 0, (1,))])
        seen.add(name)
        unique.append(name)
    return unique


def _drop_unused_constants(graph: Graph) -> None:
    used = {name for node in graph.nodes for name in node.inputs} | set(graph.outputs)
    for name in [n for n in graph.constants if n not in used]:
        del graph.constants[name]
        del graph.types[name]
