"""Graph passes over the atomic IR. Each pass keeps the graph's results identical (tests
check every pass against the unoptimised graph on the reference backend)."""

from __future__ import annotations

import dataclasses

from walle_core.ir import Graph, Node
from walle_core.ops import Activation, BinaryFn, Op, UnaryFn

#: unary functions a MATMUL / CONV2D epilogue applies (everything in ``Activation``)
FUSABLE_ACTIVATIONS = frozenset({
    UnaryFn.RELU, UnaryFn.LEAKY_RELU, UnaryFn.CLIP, UnaryFn.SIGMOID, UnaryFn.HARD_SIGMOID,
    UnaryFn.HARD_SWISH, UnaryFn.TANH, UnaryFn.ELU, UnaryFn.SOFTPLUS,
})


def eliminate_dead_code(graph: Graph) -> Graph:
    """Drop nodes none of whose outputs reach a graph output."""
    live = set(graph.outputs)
    kept: list[Node] = []
    for node in reversed(graph.nodes):
        if any(out in live for out in node.outputs):
            kept.append(node)
            live.update(node.inputs)
    graph.nodes = kept[::-1]
    used = live | set(graph.inputs)
    graph.constants = {k: v for k, v in graph.constants.items() if k in used}
    return graph


def _single_use(graph: Graph, name: str, consumers: dict[str, list[int]]) -> bool:
    return len(consumers.get(name, [])) == 1 and name not in graph.outputs


def fuse_epilogues(graph: Graph) -> Graph:
    """Fold ``CONV2D -> ADD(residual)`` and ``CONV2D/MATMUL -> activation`` into the
    producing node's epilogue, when the intermediate has no other reader."""
    changed = True
    while changed:
        changed = False
        consumers = graph.consumers()
        producers = graph.producers()
        for idx, node in enumerate(graph.nodes):
            if node.op is Op.BINARY and node.attrs.fn is BinaryFn.ADD:
                for mine, other in ((0, 1), (1, 0)):
                    src = producers.get(node.inputs[mine])
                    if src is None:
                        continue
                    conv = graph.nodes[src]
                    if (conv.op is Op.CONV2D and not conv.attrs.has_residual
                            and conv.attrs.activation.fn is UnaryFn.IDENTITY
                            and _single_use(graph, node.inputs[mine], consumers)
                            and graph.types[node.inputs[other]] == graph.types[conv.outputs[0]]
                            and producers.get(node.inputs[other], -1) < src):
                        conv.inputs = [*conv.inputs, node.inputs[other]]
                        conv.attrs = dataclasses.replace(conv.attrs, has_residual=True)
                        conv.outputs = list(node.outputs)
                        del graph.nodes[idx]
                        changed = True
                        break
            elif node.op is Op.UNARY and node.attrs.fn in FUSABLE_ACTIVATIONS:
                src = producers.get(node.inputs[0])
                if src is None:
                    continue
                prod = graph.nodes[src]
                if (prod.op in (Op.CONV2D, Op.MATMUL)
                        and prod.attrs.activation.fn is UnaryFn.IDENTITY
                        and _single_use(graph, node.inputs[0], consumers)):
                    act = Activation(node.attrs.fn, node.attrs.alpha, node.attrs.beta)
                    prod.attrs = dataclasses.replace(prod.attrs, activation=act)
                    prod.outputs = list(node.outputs)
                    del graph.nodes[idx]
                    changed = True
            if changed:
                break
    return graph


def optimize(graph: Graph) -> Graph:
    return fuse_epilogues(eliminate_dead_code(graph))
