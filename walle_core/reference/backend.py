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


def run_graph(graph: Graph, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Run a whole IR graph with the reference kernels; returns ``graph.outputs`` in order."""
    env: dict[str, np.ndarray] = dict(graph.constants)
    env.update({name: np.asarray(feeds[name]) for name in graph.inputs})
    _execute(graph.nodes, env)
    return [np.array(env[name], copy=True) for name in graph.outputs]


class ReferenceExecutable(Executable):
    def __init__(self, segment: Segment) -> None:
        self.segment = segment

    def run(self, inputs: list[Any]) -> list[Any]:
        env: dict[str, np.ndarray] = dict(self.segment.constants)
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
