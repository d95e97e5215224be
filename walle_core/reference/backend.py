"""The reference backend as a plugin: registered through the same hook as any backend."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from walle_core.backend import Availability, Backend, Executable, Segment
from walle_core.hookspecs import hookimpl
from walle_core.ir import Graph, Node, TensorType
from walle_core.reference.kernels import evaluate


def _execute(nodes: list[Node], env: dict[str, np.ndarray]) -> None:
    for node in nodes:
        results = evaluate(node.op, node.attrs, [env[name] for name in node.inputs])
        env.update(zip(node.outputs, results))


def _aligned_constants(constants: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The constants, with a copy of each one not on a 16-byte boundary (a weight viewed in a
    mapped model file sits at any offset). NumPy's vector loops and BLAS split sums by the
    address, so without the copies a result could differ in the last bit depending on
    whether the model came from a file, bytes or a ModelProto."""
    return {name: value if value.ctypes.data % 16 == 0 else value.copy() for name, value in constants.items()}


def run_graph(graph: Graph, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Run a whole IR graph with the reference kernels; returns ``graph.outputs`` in order."""
    env: dict[str, np.ndarray] = _aligned_constants(graph.constants)
    env.update({name: np.asarray(feeds[name]) for name in graph.inputs})
    _execute(graph.nodes, env)
    return [np.array(env[name], copy=True) for name in graph.outputs]


class ReferenceExecutable(Executable):
    def __init__(self, segment: Segment) -> None:
        self.segment = segment
        self._constants = _aligned_constants(segment.constants)

    def run(self, inputs: list[Any]) -> list[Any]:
        env: dict[str, np.ndarray] = dict(self._constants)
        env.update(zip(self.segment.inputs, inputs))
        _execute(self.segment.nodes, env)
        return [np.array(env[name], copy=True) for name in self.segment.outputs]


class ReferenceBackend(Backend):
    """Every op, every dtype, in NumPy: slow but obviously right."""

    name = "reference"
    priority = 0

    @classmethod
    def availability(cls) -> Availability:
        return Availability(True, device=f"NumPy {np.__version__}")

    def supports(self, node: Node, types: Mapping[str, TensorType]) -> bool:
        return True

    def compile(self, segment: Segment) -> Executable:
        return ReferenceExecutable(segment)


@hookimpl
def walle_register_backends() -> list[type[Backend]]:
    return [ReferenceBackend]
