"""The state a decomposition rule works with: the IR builder, the ONNX-name -> IR-name map,
and eager constant folding.

Folding happens as nodes are emitted, not in a later pass, because rules need the *values* of
some inputs (Reshape's shape, Slice's starts, Pad's pads ...) and those are often computed by
Shape -> Gather -> Concat chains: by the time a rule asks, the chain has already folded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import helper

from walle_core.errors import ModelError, UnsupportedOpError, WalleError
from walle_core.ir import GraphBuilder, TensorType
from walle_core.ops import Op
from walle_core.reference.kernels import evaluate
from walle_core.shapes import infer_types

Rule = Callable[["LoweringContext", onnx.NodeProto], list[str]]

#: constants folded during lowering are capped so an Expand/Tile of a constant cannot blow up
#: memory at load time; past this the node is emitted and runs like any other
MAX_FOLDED_ELEMENTS = 1 << 24


class LoweringContext:
    """Wraps a :class:`GraphBuilder` for the rules of one model lowering."""

    def __init__(self, builder: GraphBuilder, opsets: dict[str, int] | None = None) -> None:
        self.builder = builder
        self.opsets = dict(opsets or {"": 17})
        self.names: dict[str, str] = {}  # ONNX tensor name -> IR tensor name
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

    # -- node inputs and attributes --------------------------------------------------
    def input(self, node: onnx.NodeProto, i: int) -> str:
        """IR name of input ``i``; "" when absent or omitted."""
        if i >= len(node.input) or not node.input[i]:
            return ""
        return self.names[node.input[i]]

    def required_input(self, node: onnx.NodeProto, i: int) -> str:
        name = self.input(node, i)
        if not name:
            raise self.invalid(f"required input {i} is missing")
        return name

    def const_input(self, node: onnx.NodeProto, i: int, what: str) -> np.ndarray | None:
        """Value of optional input ``i``, which must be a constant when present."""
        name = self.input(node, i)
        if not name:
            return None
        value = self.const_value(name)
        if value is None:
            raise self.unsupported(f"input {i} ({what}) must be a constant (it is computed at run time)")
        return value

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

    def const_value(self, name: str) -> np.ndarray | None:
        """The value of ``name`` if it is known at lowering time, else None."""
        return self.builder.graph.constants.get(name)

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
        values = [self.const_value(name) for name in inputs]
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
