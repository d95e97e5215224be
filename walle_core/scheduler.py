"""Assigns every node of a graph to a backend and cuts the graph into per-backend segments.

The assignment strategy is a seam: :class:`FirstSupportingAssigner` (preferred backend,
per-op fallback to the next one that supports the node) is the default; the cost-based
search plugs in as another :class:`Assigner`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from walle_core.backend import Backend, Segment
from walle_core.errors import WalleError
from walle_core.ir import Graph


class Assigner(Protocol):
    def assign(self, graph: Graph, backends: Sequence[Backend]) -> list[int]:
        """Index into ``backends`` for every node of ``graph``."""
        ...


class FirstSupportingAssigner:
    """Each node goes to the first backend (in preference order) that supports it."""

    def assign(self, graph: Graph, backends: Sequence[Backend]) -> list[int]:
        choice = []
        for node in graph.nodes:
            for i, backend in enumerate(backends):
                if backend.supports(node, graph.types):
                    choice.append(i)
                    break
            else:
                ins = ", ".join(str(graph.types[n]) for n in node.inputs)
                raise WalleError(
                    f"no backend among {[b.name for b in backends]} supports {node.op.value}"
                    f"({ins}) lowered from {node.origin_op} node {node.origin!r}"
                )
        return choice


@dataclass
class ScheduledSegment:
    backend: Backend
    segment: Segment


@dataclass
class Schedule:
    segments: list[ScheduledSegment]
    assignment: list[str]  # backend name per graph node
    copies: int  # tensors that cross a memory-domain boundary per run


def schedule(graph: Graph, backends: Sequence[Backend], assigner: Assigner | None = None) -> Schedule:
    """Assign nodes, then group consecutive nodes of one backend into segments."""
    choice = (assigner or FirstSupportingAssigner()).assign(graph, backends)
    runs: list[tuple[int, list[int]]] = []
    for i, b in enumerate(choice):
        if runs and runs[-1][0] == b:
            runs[-1][1].append(i)
        else:
            runs.append((b, [i]))

    consumers = graph.consumers()
    node_segment = {i: s for s, (_, idxs) in enumerate(runs) for i in idxs}
    producer = graph.producers()
    graph_outputs = set(graph.outputs)
    segments: list[ScheduledSegment] = []
    # memory domains where each tensor is available (the executor keeps converted copies)
    domains: dict[str, set[str]] = {name: {"host"} for name in graph.inputs}
    copies = 0
    for s, (b, idxs) in enumerate(runs):
        backend = backends[b]
        nodes = [graph.nodes[i] for i in idxs]
        produced = {out for node in nodes for out in node.outputs}
        inputs: list[str] = []
        constants = {}
        for node in nodes:
            for name in node.inputs:
                if name in graph.constants:
                    constants[name] = graph.constants[name]
                elif name not in produced and name not in inputs:
                    inputs.append(name)
        outputs = [
            out for node in nodes for out in node.outputs
            if out in graph_outputs or any(node_segment[c] != s for c in consumers.get(out, []))
        ]
        for name in inputs:
            have = domains.setdefault(name, {"host"})
            if backend.memory_domain not in have:
                copies += 1 if "host" in have or backend.memory_domain == "host" else 2
                have.update({"host", backend.memory_domain})
        for name in outputs:
            domains[name] = {backend.memory_domain}
        types = {n: graph.types[n] for node in nodes for n in (*node.inputs, *node.outputs)}
        segments.append(ScheduledSegment(backend, Segment(nodes, inputs, outputs, types, constants)))
    copies += sum(1 for name in set(graph.outputs) if name in producer and "host" not in domains[name])
    return Schedule(segments, [backends[b].name for b in choice], copies)
