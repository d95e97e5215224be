"""The state a decomposition rule works with: the IR builder, the ONNX-name -> IR-name map,
and eager constant folding.

Folding happens as nodes are emitted, not in a later pass, because rules need the *values* of
some inputs (Reshape's shape, Slice's starts, Pad's pads ...) and those are often computed by
Shape -> Gather -> Concat chains: by the time a rule asks, the chain has already folded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper

from walle_core.errors import InputValueRequired, ModelError, UnsupportedOpError, WalleError
from walle_core.ir import GraphBuilder, TensorType
from walle_core.ops import Op
from walle_core.reference.kernels import evaluate
from walle_core.shapes import infer_types


@dataclass(frozen=True)
class SequenceValue:
    """An ONNX sequence while lowering: the IR tensors it holds, in order. Sequences never
    reach the IR; sequence ops only rearrange this list, so their positions must be known."""

    items: tuple[str, ...]
    dtype: np.dtype  # element type, needed when the sequence is empty


@dataclass(frozen=True)
class NoneValue:
    """An ONNX optional without a value. An optional *with* a value is just that value."""


#: what an ONNX value is while lowering: an IR tensor name, a sequence, or an empty optional
Value = str | SequenceValue | NoneValue
NONE = NoneValue()

Rule = Callable[["LoweringContext", onnx.NodeProto], list[Value]]

#: constants folded during lowering are capped so an Expand/Tile of a constant cannot blow up
#: memory at load time; past this the node is emitted and runs like any other
MAX_FOLDED_ELEMENTS = 1 << 24
#: how many emitted nodes a rule's request for a run-time value may evaluate
_MAX_EVALUATED_NODES = 4096


class LoweringContext:
    """Wraps a :class:`GraphBuilder` for the rules of one model lowering."""

    def __init__(self, builder: GraphBuilder, opsets: dict[str, int] | None = None,
                 input_values: Mapping[str, np.ndarray] | None = None) -> None:
        self.builder = builder
        self.opsets = dict(opsets or {"": 17})
        self.names: dict[str, Value] = {}  # ONNX value name -> IR tensor name (or sequence/optional)
        #: run-time values offered for graph inputs; one is only used once a rule needs it
        self._offered = dict(input_values or {})
        #: values known beyond the graph's constants: specialised graph inputs, and run-time
        #: tensors evaluated from them because a rule needed their value
        self._values: dict[str, np.ndarray] = {}
        self._producer: dict[str, int] = {}  # IR tensor -> index of the node computing it
        self._indexed = 0  # how many of the graph's nodes ``_producer`` covers
        #: lowers a control-flow body: (GraphProto, {formal input: IR name}) -> IR outputs;
        #: installed by the importer, which owns the rule table
        self.subgraph_lowerer: Callable[[onnx.GraphProto, Mapping[str, str]], list[str]] | None = None
        self.depth = 0  # nesting of function bodies and control-flow bodies being lowered
        self.node: onnx.NodeProto | None = None
        self.node_label = ""

    # -- where we are ----------------------------------------------------------------
    def begin_node(self, node: onnx.NodeProto, label: str) -> None:
        self.node = node
        self.node_label = label
        self.builder.origin = label
        self.builder.origin_op = node.op_type

    @property
    def opset(self) -> int:
        """Opset version of the current node's domain."""
        domain = self.node.domain if self.node is not None else ""
        return self.opsets.get("" if domain == "ai.onnx" else domain, 0)

    def unsupported(self, what: str) -> UnsupportedOpError:
        """An error for a feature of the current node that has no decomposition."""
        op = self.node.op_type if self.node is not None else "?"
        return UnsupportedOpError(f"{op} node {self.node_label!r}: {what}")

    def invalid(self, what: str) -> ModelError:
        """An error for an inconsistent current node (bad attribute, bad input rank ...)."""
        op = self.node.op_type if self.node is not None else "?"
        return ModelError(f"{op} node {self.node_label!r}: {what}")

    def lower_subgraph(self, graph: onnx.GraphProto, bindings: Mapping[str, str]) -> list[str]:
        """Lower a body graph (If branch, Loop/Scan body) inline; returns its outputs' IR names."""
        if self.subgraph_lowerer is None:
            raise self.unsupported("control flow needs the ONNX importer")
        return self.subgraph_lowerer(graph, bindings)

    # -- node inputs and attributes --------------------------------------------------
    def input(self, node: onnx.NodeProto, i: int) -> str:
        """IR name of tensor input ``i``; "" when absent or omitted."""
        value = self.value(node, i)
        if value is None:
            return ""
        if not isinstance(value, str):
            kind = "a sequence" if isinstance(value, SequenceValue) else "an empty optional"
            raise self.invalid(f"input {i} ({node.input[i]!r}) is {kind}, a tensor is expected")
        return value

    def value(self, node: onnx.NodeProto, i: int) -> Value | None:
        """Input ``i`` whatever its kind (tensor, sequence, empty optional); None when omitted."""
        if i >= len(node.input) or not node.input[i]:
            return None
        return self.names[node.input[i]]

    def sequence_input(self, node: onnx.NodeProto, i: int) -> SequenceValue:
        value = self.value(node, i)
        if not isinstance(value, SequenceValue):
            raise self.invalid(f"input {i} must be a sequence")
        return value

    def required_input(self, node: onnx.NodeProto, i: int) -> str:
        name = self.input(node, i)
        if not name:
            raise self.invalid(f"required input {i} is missing")
        return name

    def const_input(self, node: onnx.NodeProto, i: int, what: str) -> np.ndarray | None:
        """Value of optional input ``i``, which must be known while lowering when present."""
        name = self.input(node, i)
        if not name:
            return None
        return self.required_value(name, f"input {i} ({what})")

    def required_value(self, name: str, what: str) -> np.ndarray:
        """The value of ``name``, which the current rule cannot do without: raises
        InputValueRequired when it depends on a graph input whose value was not offered."""
        value, missing = self._resolve(name)
        if value is not None:
            return value
        op = self.node.op_type if self.node is not None else "?"
        if missing is not None:
            raise InputValueRequired(f"{op} node {self.node_label!r}: {what} depends on graph input "
                                     f"{missing!r}; its run-time value is needed to plan the model", missing)
        raise self.unsupported(f"{what} must be a constant (it is computed at run time)")

    @staticmethod
    def attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
        for a in node.attribute:
            if a.name == name:
                value = helper.get_attribute_value(a)
                return value.decode() if isinstance(value, bytes) else value
        return default

    def ints_attr(self, node: onnx.NodeProto, name: str, default: Any = None) -> Any:
        value = self.attr(node, name, None)
        if value is None:
            return default
        return [int(v) for v in value]

    # -- tensors -----------------------------------------------------------------------
    def type_of(self, name: str) -> TensorType:
        return self.builder.type_of(name)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.builder.type_of(name).shape

    def dtype(self, name: str) -> np.dtype:
        return self.builder.type_of(name).dtype

    def rank(self, name: str) -> int:
        return len(self.shape(name))

    def known_value(self, name: str) -> np.ndarray | None:
        """The value of ``name`` if it is already a constant (or a specialised input), else None.
        Unlike :meth:`const_value` this never specialises a graph input."""
        value = self.builder.graph.constants.get(name)
        return self._values.get(name) if value is None else value

    def const_value(self, name: str) -> np.ndarray | None:
        """The value of ``name`` if it can be known at lowering time, else None.

        A graph input whose run-time value was offered (``input_values`` of ``lower``) becomes
        a constant here, and so does a run-time tensor computed only from constants and such
        inputs (its producers are evaluated now). The plan is then only valid for those input
        values, which is why the inputs are recorded in ``graph.value_inputs`` (the session
        keys its plan cache on them).
        """
        return self._resolve(name)[0]

    def _resolve(self, name: str) -> tuple[np.ndarray | None, str | None]:
        """(value or None, a graph input whose missing value prevented it, or None)."""
        value = self.known_value(name)
        if value is not None:
            return value, None
        graph = self.builder.graph
        if name in graph.inputs:
            return self._specialise(name), (None if name in self._offered else name)
        needed = self._producers_of(name)
        if needed is None:
            return None, None
        leaves = {i for index in needed for i in graph.nodes[index].inputs if self.known_value(i) is None
                  and i in graph.inputs}
        missing = sorted(i for i in leaves if i not in self._offered)
        if missing:
            return None, missing[0]
        for leaf in sorted(leaves):
            self._specialise(leaf)
        for index in needed:
            node = graph.nodes[index]
            try:
                results = evaluate(node.op, node.attrs, [self.known_value(i) for i in node.inputs])
            except WalleError as exc:
                raise self.invalid(f"evaluating {node.origin_op} node {node.origin!r}: {exc}") from None
            for out, result in zip(node.outputs, results):
                ttype = self.type_of(out)
                self._values[out] = np.asarray(result, dtype=ttype.dtype).reshape(ttype.shape)
        return self._values.get(name), None

    def _producers_of(self, name: str) -> list[int] | None:
        """Indices (in graph order) of the nodes computing ``name`` from constants and graph
        inputs, or None when that is too much work to do while lowering."""
        nodes = self.builder.graph.nodes
        for index in range(self._indexed, len(nodes)):
            for out in nodes[index].outputs:
                self._producer[out] = index
        self._indexed = len(nodes)
        needed: set[int] = set()
        stack = [name]
        elements = 0
        while stack:
            current = stack.pop()
            index = self._producer.get(current)
            if index is None or index in needed or self.known_value(current) is not None:
                continue
            needed.add(index)
            elements += sum(self.type_of(out).size for out in nodes[index].outputs)
            if len(needed) > _MAX_EVALUATED_NODES or elements > MAX_FOLDED_ELEMENTS:
                return None
            stack.extend(nodes[index].inputs)
        return sorted(needed) if needed else None

    def _specialise(self, name: str) -> np.ndarray | None:
        """Bake the offered run-time value of graph input ``name`` into the plan."""
        if name in self._values:
            return self._values[name]
        if name not in self._offered:
            return None
        value = np.asarray(self._offered[name], order="C")
        ttype = self.type_of(name)
        if value.dtype != ttype.dtype or tuple(value.shape) != ttype.shape:
            raise ModelError(f"graph input {name!r}: value of {value.dtype}{list(value.shape)} does not "
                             f"match its type {ttype}")
        self._values[name] = value
        self.builder.graph.value_inputs.append(name)
        return value

    def constant(self, value: Any, dtype: Any = None) -> str:
        """A new IR constant (``dtype`` defaults to the array's own)."""
        return self.builder.constant(np.asarray(value, dtype=dtype, order="C"))

    def scalar(self, value: float, like: str) -> str:
        """A 0-d constant of ``like``'s dtype, for broadcasting against it."""
        return self.constant(np.array(value).astype(self.dtype(like)))

    def axis(self, axis: int, rank: int, what: str = "axis") -> int:
        """Normalise a possibly negative ONNX axis, or raise naming the node."""
        axis = int(axis)
        if not -rank <= axis < max(rank, 1):
            raise self.invalid(f"{what} {axis} is out of range for rank {rank}")
        return axis + rank if axis < 0 else axis

    # -- emitting ----------------------------------------------------------------------
    def emit(self, op: Op, inputs: list[str], attrs: Any, n_outputs: int = 1) -> list[str]:
        """Emit an atomic node, or evaluate it right away when all its inputs are constants."""
        values = [self.known_value(name) for name in inputs]
        if all(v is not None for v in values):
            try:
                out_types = infer_types(op, [self.type_of(n) for n in inputs], attrs)
            except WalleError:
                out_types = None  # let the builder report it with the node's origin
            if out_types is not None and all(
                int(np.prod(shape, dtype=np.float64)) <= MAX_FOLDED_ELEMENTS for _, shape in out_types
            ):
                try:
                    results = evaluate(op, attrs, values)  # type: ignore[arg-type]
                except WalleError as exc:
                    raise self.invalid(str(exc)) from None
                return [self.constant(np.asarray(r, dtype=dt).reshape(shape))
                        for r, (dt, shape) in zip(results, out_types)]
        return self.builder.emit(op, inputs, attrs, n_outputs)

    def emit1(self, op: Op, inputs: list[str], attrs: Any) -> str:
        return self.emit(op, inputs, attrs)[0]
