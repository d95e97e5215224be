"""Graph passes over the atomic IR. Each pass keeps the graph's results identical (tests
check every pass against the unoptimised graph on the reference backend)."""

from __future__ import annotations

import dataclasses

import numpy as np

from walle_core.ir import Graph, Node
from walle_core.ops import Activation, BinaryFn, Op, UnaryFn
from walle_core.raster_fusion import fuse_raster_chains

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


def _per_channel(value: np.ndarray, channels: int) -> np.ndarray | None:
    """``value`` as a [channels] vector if it broadcasts over an NCHW conv output only along C."""
    shape = value.shape
    if len(shape) > 4 or value.size not in (1, channels):
        return None
    padded = (1,) * (4 - len(shape)) + shape
    if value.size == channels and channels > 1 and padded != (1, channels, 1, 1):
        return None
    return np.broadcast_to(value.reshape(-1), (channels,)).astype(np.float64)


def fold_affine_into_conv(graph: Graph) -> Graph:
    """Fold ``CONV2D -> MUL(per-channel constant)`` and ``-> ADD(per-channel constant)`` into
    the convolution's constant weights and bias: this is what an inference BatchNormalization
    (lowered to MUL + ADD) becomes, so it costs nothing at run time."""
    changed = True
    while changed:
        changed = False
        consumers = graph.consumers()
        producers = graph.producers()
        for idx, node in enumerate(graph.nodes):
            if node.op is not Op.BINARY or node.attrs.fn not in (BinaryFn.MUL, BinaryFn.ADD):
                continue
            for mine, other in ((0, 1), (1, 0)):
                src = producers.get(node.inputs[mine])
                const = graph.constants.get(node.inputs[other])
                if src is None or const is None:
                    continue
                conv = graph.nodes[src]
                if (conv.op is not Op.CONV2D or conv.attrs.has_residual
                        or conv.attrs.activation.fn is not UnaryFn.IDENTITY
                        or conv.inputs[1] not in graph.constants
                        or (conv.attrs.has_bias and conv.inputs[2] not in graph.constants)
                        or not _single_use(graph, node.inputs[mine], consumers)
                        or graph.types[node.outputs[0]] != graph.types[conv.outputs[0]]):
                    continue
                weight = graph.constants[conv.inputs[1]]
                channels = weight.shape[0]
                vec = _per_channel(const, channels)
                if vec is None or weight.dtype != np.float32:
                    continue
                bias = (graph.constants[conv.inputs[2]].astype(np.float64) if conv.attrs.has_bias
                        else np.zeros(channels))
                if node.attrs.fn is BinaryFn.MUL:
                    weight = (weight * vec.reshape(-1, 1, 1, 1)).astype(weight.dtype)
                    bias = bias * vec
                else:
                    bias = bias + vec
                w_name = f"{conv.inputs[1]}~folded{idx}"
                b_name = f"{w_name}.bias"
                graph.constants[w_name] = weight
                graph.constants[b_name] = bias.astype(weight.dtype)
                graph.types[w_name] = graph.types[conv.inputs[1]]
                graph.types[b_name] = type(graph.types[conv.inputs[1]])(weight.dtype, (channels,))
                conv.inputs = [conv.inputs[0], w_name, b_name]
                conv.attrs = dataclasses.replace(conv.attrs, has_bias=True)
                conv.outputs = list(node.outputs)
                del graph.nodes[idx]
                changed = True
                break
            if changed:
                break
    return graph


def optimize(graph: Graph) -> Graph:
    """The default pipeline, in an order where each pass exposes work for the next."""
    graph = eliminate_dead_code(graph)
    graph = fuse_raster_chains(graph)
    graph = fold_affine_into_conv(graph)
    graph = fuse_epilogues(graph)
    return eliminate_dead_code(graph)
