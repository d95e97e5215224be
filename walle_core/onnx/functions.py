"""Expand an ONNX node into the body of its schema's function, for ops without a rule.

Many ONNX ops (Attention, the losses, RMSNormalization, Celu, Shrink ...) are *defined* by a
function body in their schema: a small graph of simpler ONNX ops. When no decomposition rule
is registered for such an op, the importer inlines that body and lowers its nodes one by one,
so the op still ends as atomic ops without a hand-written rule. Hand-written rules still win:
they give tighter graphs for the ops that matter for speed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import onnx
from onnx import AttributeProto, FunctionProto, NodeProto, TypeProto, helper

from walle_core.errors import ModelError, UnsupportedOpError


def _schema(node: NodeProto, opsets: Mapping[str, int]) -> onnx.defs.OpSchema | None:
    domain = "" if node.domain in ("", "ai.onnx") else node.domain
    version = opsets.get(domain)
    if version is None:
        return None
    try:
        return onnx.defs.get_schema(node.op_type, version, domain)
    except onnx.defs.SchemaError:
        return None


def has_function(node: NodeProto, opsets: Mapping[str, int]) -> bool:
    """Whether ``node``'s schema (at the model's opset) defines a function body."""
    schema = _schema(node, opsets)
    return schema is not None and (schema.has_function or schema.has_context_dependent_function)


def expand(node: NodeProto, opsets: Mapping[str, int], input_types: list[TypeProto | None],
           prefix: str) -> tuple[list[NodeProto], dict[str, int]] | None:
    """The nodes of ``node``'s function body with tensors renamed into the caller's graph
    (internal ones get ``prefix``), and the body's own opset imports; None without a body."""
    schema = _schema(node, opsets)
    if schema is None or not (schema.has_function or schema.has_context_dependent_function):
        return None
    full = NodeProto()
    full.CopyFrom(node)
    given = {a.name for a in node.attribute}
    for name, attr in schema.attributes.items():
        if name not in given and attr.default_value and attr.default_value.type:
            full.attribute.append(attr.default_value)
    body = _body(schema, full, input_types)
    if body is None:
        return None
    names: dict[str, str] = {}
    for i, formal in enumerate(body.input):
        names[formal] = node.input[i] if i < len(node.input) else ""
    for i, formal in enumerate(body.output):
        if i < len(node.output) and node.output[i]:
            names[formal] = node.output[i]

    def rename(name: str) -> str:
        if not name:
            return ""
        return names.get(name, prefix + name)

    attrs = {a.name: a for a in full.attribute}
    nodes = [_renamed(inner, rename, attrs) for inner in body.node]
    body_opsets = {("" if o.domain == "ai.onnx" else o.domain): int(o.version) for o in body.opset_import}
    return nodes, body_opsets


def _body(schema: onnx.defs.OpSchema, node: NodeProto, input_types: list[TypeProto | None]) -> FunctionProto | None:
    """The function body for the schema's own version (context-dependent ones see the types)."""
    proto = FunctionProto()
    if schema.has_function:
        data = schema.get_function_with_opset_version(schema.since_version)
    else:
        # an omitted optional input is described by an empty type, as onnx's own expander does
        types = [(t if t is not None else TypeProto()).SerializeToString() for t in input_types]
        try:
            data = schema.get_context_dependent_function_with_opset_version(
                schema.since_version, node.SerializeToString(), types)
        except Exception as exc:  # noqa: BLE001 -- the builder raises plain Exceptions on bad nodes
            raise ModelError(f"{node.op_type} node {node.name!r}: cannot build its function body: {exc}") from None
    if not data:
        return None
    proto.ParseFromString(data)
    return proto


def _renamed(inner: NodeProto, rename: Callable[[str], str], attrs: Mapping[str, AttributeProto]) -> NodeProto:
    out = NodeProto()
    out.CopyFrom(inner)
    del out.input[:]
    del out.output[:]
    del out.attribute[:]
    out.input.extend(rename(n) for n in inner.input)
    out.output.extend(rename(n) for n in inner.output)
    for attr in inner.attribute:
        if attr.ref_attr_name:
            if attr.ref_attr_name in attrs:
                copy = AttributeProto()
                copy.CopyFrom(attrs[attr.ref_attr_name])
                copy.name = attr.name
                out.attribute.append(copy)
        elif attr.type == AttributeProto.GRAPH:
            copy = AttributeProto()
            copy.CopyFrom(attr)
            _rename_free(copy.g, rename, attrs)
            out.attribute.append(copy)
        elif attr.type == AttributeProto.GRAPHS:
            raise UnsupportedOpError(f"function body node {inner.op_type!r} has a list-of-graphs attribute")
        else:
            out.attribute.append(attr)
    return out


def _rename_free(graph: onnx.GraphProto, rename: Callable[[str], str], attrs: Mapping[str, AttributeProto]) -> None:
    """Rename, in place, the names a body graph reads from the function's scope; names the body
    defines itself stay (they shadow the outer scope while it is lowered)."""
    defined = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    for node in graph.node:
        defined |= {name for name in node.output if name}

    def inner(name: str) -> str:
        return name if not name or name in defined else rename(name)

    nodes = [_renamed(node, inner, attrs) for node in graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    for out in graph.output:
        out.name = inner(out.name)


def tensor_type(elem_type: int, shape: tuple[int, ...]) -> TypeProto:
    return helper.make_tensor_type_proto(elem_type, list(shape))
