"""Lower a validated ONNX model to the atomic-op IR at concrete input shapes.

The session calls this once per input-shape signature, so every shape is static here and
shape computations (Shape -> Gather -> Concat -> Reshape) fold to constants as they are emitted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from walle_core.decompose.context import NONE, LoweringContext, NoneValue, SequenceValue, Value
from walle_core.decompose.raster import make_region, raster
from walle_core.errors import ModelError, UnsupportedOpError, WalleError
from walle_core.ir import Graph, GraphBuilder, TensorType
from walle_core.onnx import functions
from walle_core.onnx.model import InputSpec, OnnxModel, node_label

#: the type of a graph input at one run: a tensor, a sequence of tensors, or None for an
#: optional input without a value
InputType = TensorType | list[TensorType] | None


@dataclass(frozen=True)
class OutputSlot:
    """How one ONNX graph output maps onto the flat IR outputs: ``count`` consecutive IR
    tensors, returned as one tensor ("tensor"), a list ("sequence") or None ("none")."""

    kind: str
    count: int


def element_name(name: str, index: int) -> str:
    """IR input name of element ``index`` of sequence graph input ``name``."""
    return f"{name}[{index}]"


def lower(model: OnnxModel, input_types: Mapping[str, InputType],
          rules: Mapping[tuple[str, str], Callable[..., list[str]]],
          input_values: Mapping[str, np.ndarray] | None = None) -> Graph:
    """The IR graph of ``model`` for inputs of ``input_types`` (keyed by ONNX input name);
    sequence outputs are flattened into ``graph.outputs`` (see :func:`lower_with_layout`)."""
    return lower_with_layout(model, input_types, rules, input_values)[0]


def lower_with_layout(model: OnnxModel, input_types: Mapping[str, InputType],
                      rules: Mapping[tuple[str, str], Callable[..., list[str]]],
                      input_values: Mapping[str, np.ndarray] | None = None) -> tuple[Graph, list[OutputSlot]]:
    """The IR graph of ``model`` and how its flat outputs form the ONNX outputs.

    The IR holds tensors only: element ``i`` of a sequence input ``s`` is the IR input
    ``element_name(s, i)``, and an absent optional input has no IR input at all.
    ``input_values`` optionally holds the run-time values of IR inputs. A rule that needs
    the value of an input (a shape fed as an input, say) gets it from there and the input is
    listed in ``graph.value_inputs``; without it such a rule raises ``InputValueRequired``.
    """
    builder = GraphBuilder()
    ctx = LoweringContext(builder, model.opsets, input_values)
    ctx.subgraph_lowerer = lambda graph, bindings: _lower_subgraph(ctx, model, rules, graph, bindings)
    for spec in model.inputs:
        ctx.names[spec.name] = _add_input(builder, spec, input_types)
    for name, value in model.initializers.items():
        ir_name = builder.constant(value, name=None if name.startswith("%") else name)
        ctx.names[name] = ir_name
    for index, node in enumerate(model.nodes):
        _lower_node(ctx, model, rules, node, index)
    flat: list[str] = []
    layout: list[OutputSlot] = []
    for name in model.output_names:
        value = ctx.names[name]
        if isinstance(value, SequenceValue):
            flat.extend(value.items)
            layout.append(OutputSlot("sequence", len(value.items)))
        elif isinstance(value, NoneValue):
            layout.append(OutputSlot("none", 0))
        else:
            flat.append(value)
            layout.append(OutputSlot("tensor", 1))
    outputs = _unique_outputs(ctx, flat)
    builder.origin = builder.origin_op = ""
    graph = builder.graph
    graph.outputs = outputs
    graph.output_names = list(model.output_names)
    _drop_unused_constants(graph)
    return graph, layout


def _add_input(builder: GraphBuilder, spec: InputSpec, input_types: Mapping[str, InputType]) -> Value:
    if spec.name not in input_types or (input_types[spec.name] is None and spec.kind == "tensor"):
        raise ModelError(f"no type given for graph input {spec.name!r}")
    given = input_types[spec.name]
    if given is None:
        if not spec.kind.startswith("optional"):
            raise ModelError(f"graph input {spec.name!r} ({spec.kind}) needs a value")
        return NONE
    if isinstance(given, TensorType):
        if spec.kind not in ("tensor", "optional"):
            raise ModelError(f"graph input {spec.name!r} is a {spec.kind}, a tensor was given")
        _check_input_type(spec.name, spec.dtype, spec.shape if spec.kind == "tensor" else None, given)
        return builder.add_input(spec.name, given)
    if spec.kind not in ("sequence", "optional_sequence"):
        raise ModelError(f"graph input {spec.name!r} is a {spec.kind}, a sequence was given")
    items = []
    for i, ttype in enumerate(given):
        name = element_name(spec.name, i)
        _check_input_type(name, spec.dtype, None, ttype)
        items.append(builder.add_input(name, ttype))
    return SequenceValue(tuple(items), spec.dtype)


def _check_input_type(name: str, dtype: np.dtype, shape: tuple | None, ttype: TensorType) -> None:
    """``shape`` None: only the dtype is checked (sequence and optional elements)."""
    if np.dtype(ttype.dtype) != dtype:
        raise ModelError(f"graph input {name!r}: dtype {np.dtype(ttype.dtype)} given, the model declares {dtype}")
    if shape is not None and (len(ttype.shape) != len(shape) or any(
        isinstance(d, int) and d != g for d, g in zip(shape, ttype.shape)
    )):
        raise ModelError(f"graph input {name!r}: shape {ttype.shape} does not match the declared {shape}")
    if any(int(d) < 0 for d in ttype.shape):
        raise ModelError(f"graph input {name!r}: negative dimension in {ttype.shape}")


def _lower_node(ctx: LoweringContext, model: OnnxModel, rules: Mapping, node, index: int | str,
                depth: int = 0) -> None:
    domain = "" if node.domain == "ai.onnx" else node.domain
    label = node_label(node, index) if isinstance(index, int) else index
    rule = rules.get((domain, node.op_type))
    if rule is None:
        _lower_function(ctx, model, rules, node, label, depth)
        return
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


#: function bodies may use ops that are functions themselves; this bounds the nesting
_MAX_FUNCTION_DEPTH = 8


def _lower_function(ctx: LoweringContext, model: OnnxModel, rules: Mapping, node, label: str,
                    depth: int) -> None:
    """Lower a node without a rule by inlining its schema's function body, if it has one."""
    domain = "" if node.domain == "ai.onnx" else node.domain
    types = [_type_proto(ctx, ctx.names[name]) if name else None for name in node.input]
    expanded = None if depth >= _MAX_FUNCTION_DEPTH else functions.expand(
        node, ctx.opsets, types, f"{label}/")
    if expanded is None:
        raise UnsupportedOpError(f"unsupported op {node.op_type!r} (domain {domain!r}, opset "
                                 f"{ctx.opsets.get(domain)}) at node {label!r}")
    body, body_opsets = expanded
    saved = ctx.opsets
    ctx.opsets = {**saved, **body_opsets}
    try:
        for i, inner in enumerate(body):
            _lower_node(ctx, model, rules, inner, f"{label}/{inner.name or f'#{i} ({inner.op_type})'}",
                        depth + 1)
    finally:
        ctx.opsets = saved
    for name in node.output:
        if name and name not in ctx.names:
            raise UnsupportedOpError(f"{node.op_type} node {label!r}: its function body does not "
                                     f"produce output {name!r}")


def _lower_subgraph(ctx: LoweringContext, model: OnnxModel, rules: Mapping, graph: onnx.GraphProto,
                    bindings: Mapping[str, Value]) -> list[Value]:
    """Lower the nodes of a control-flow body in the current scope, with its formal inputs bound
    to IR tensors; returns the IR names of its outputs. Names it defines do not leak out."""
    label, node = ctx.node_label, ctx.node
    saved = dict(ctx.names)
    ctx.depth += 1
    try:
        if ctx.depth > _MAX_FUNCTION_DEPTH:
            raise UnsupportedOpError(f"node {label!r}: control flow nested too deeply")
        for init in graph.initializer:
            ctx.names[init.name] = ctx.constant(numpy_helper.to_array(init))
        ctx.names.update(bindings)
        for i, inner in enumerate(graph.node):
            _lower_node(ctx, model, rules, inner, f"{label}/{inner.name or f'#{i} ({inner.op_type})'}", ctx.depth)
        missing = [out.name for out in graph.output if out.name not in ctx.names]
        if missing:
            raise ModelError(f"node {label!r}: subgraph outputs {missing} are not produced")
        return [ctx.names[out.name] for out in graph.output]
    finally:
        ctx.names = saved
        ctx.depth -= 1
        if node is not None:
            ctx.begin_node(node, label)


def _type_proto(ctx: LoweringContext, name: Value):
    if not isinstance(name, str):
        return None
    ttype = ctx.type_of(name)
    try:
        elem = helper.np_dtype_to_tensor_dtype(np.dtype(ttype.dtype))
    except (KeyError, ValueError, TypeError):
        return None
    return functions.tensor_type(elem, ttype.shape)


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
