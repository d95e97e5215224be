"""The IR: a topologically ordered graph of atomic ops with static shapes and dtypes.

Front-ends build it through :class:`GraphBuilder`, which infers every output type as a
node is added, so a finished :class:`Graph` never holds an unknown shape. A graph is lowered
anew for every input-shape signature (see ``walle_core.session``), which is what keeps the
shapes static while models still accept new input shapes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from walle_core.errors import WalleError
from walle_core.ops import Op
from walle_core.shapes import infer_types


@dataclass(frozen=True)
class TensorType:
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return int(math.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __str__(self) -> str:
        return f"{self.dtype.name}[{','.join(map(str, self.shape))}]"


@dataclass
class Node:
    """One atomic op. ``origin`` names the front-end node it was lowered from (for errors
    and ``walle info``); ``origin_op`` its op type."""

    op: Op
    inputs: list[str]
    outputs: list[str]
    attrs: Any
    origin: str = ""
    origin_op: str = ""


@dataclass
class Graph:
    inputs: list[str]
    outputs: list[str]
    types: dict[str, TensorType]
    constants: dict[str, np.ndarray]
    nodes: list[Node] = field(default_factory=list)
    #: user-facing names of ``outputs`` (e.g. the ONNX output names), same order
    output_names: list[str] = field(default_factory=list)
    #: graph inputs whose run-time *values* were baked in while lowering (e.g. a shape
    #: tensor fed as an input); a plan is then only valid for those exact values
    value_inputs: list[str] = field(default_factory=list)

    def producers(self) -> dict[str, int]:
        return {out: i for i, node in enumerate(self.nodes) for out in node.outputs}

    def consumers(self) -> dict[str, list[int]]:
        users: dict[str, list[int]] = {}
        for i, node in enumerate(self.nodes):
            for name in node.inputs:
                users.setdefault(name, []).append(i)
        return users

    def op_histogram(self) -> dict[str, int]:
        hist: dict[str, int] = {}
        for node in self.nodes:
            hist[node.op.value] = hist.get(node.op.value, 0) + 1
        return hist


class GraphBuilder:
    """Accumulates a :class:`Graph`; every ``emit`` checks and infers the output types."""

    def __init__(self) -> None:
        self.graph = Graph(inputs=[], outputs=[], types={}, constants={})
        self._counter = 0
        self.origin = ""
        self.origin_op = ""

    def fresh(self, hint: str = "t") -> str:
        self._counter += 1
        return f"%{hint}{self._counter}"

    def add_input(self, name: str, ttype: TensorType) -> str:
        self.graph.inputs.append(name)
        self.graph.types[name] = ttype
        return name

    def constant(self, value: np.ndarray, hint: str = "c", name: str | None = None) -> str:
        value = np.asarray(value, order="C")
        name = name or self.fresh(hint)
        self.graph.constants[name] = value
        self.graph.types[name] = TensorType(value.dtype, tuple(value.shape))
        return name

    def type_of(self, name: str) -> TensorType:
        return self.graph.types[name]

    def emit(self, op: Op, inputs: list[str], attrs: Any, n_outputs: int = 1) -> list[str]:
        in_types = [self.graph.types[name] for name in inputs]
        try:
            out_types = infer_types(op, in_types, attrs)
        except WalleError as exc:
            where = f" (lowering {self.origin_op} node {self.origin!r})" if self.origin else ""
            raise WalleError(f"{exc}{where}") from None
        assert len(out_types) == n_outputs or n_outputs == 1
        outputs = [self.fresh(op.value) for _ in out_types]
        for name, ttype in zip(outputs, out_types):
            self.graph.types[name] = TensorType(np.dtype(ttype[0]), tuple(int(d) for d in ttype[1]))
        self.graph.nodes.append(Node(op, list(inputs), outputs, attrs, self.origin, self.origin_op))
        return outputs

    def emit1(self, op: Op, inputs: list[str], attrs: Any) -> str:
        return self.emit(op, inputs, attrs)[0]
