"""Encodes a :class:`~walle_core.backend.Segment` into the flat tables of the native ``Plan``.

Every op becomes ``(op code, index, label, input ids, output ids, int attributes, float
attributes)``; codes are positions in the name lists the native module exports, so the two sides
share one source of truth. The native side re-validates everything it receives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from walle_core import ops
from walle_core.backend import Segment
from walle_core.errors import BackendError
from walle_core.ir import Node, TensorType
from walle_core.mapped import is_reclaimable
from walle_core.memory import in_place_raster_inputs, plan_segment_memory
from walle_core.ops import Op

# tensor kinds, in the order of the native TensorKind enum
INPUT, OUTPUT, ARENA, CONSTANT = range(4)


class Codes:
    """Name -> code tables read from the native module."""

    def __init__(self, ext: Any) -> None:
        self.dtypes = {np.dtype(name): i for i, name in enumerate(ext.dtype_names())}
        self.opaque = ext.opaque_dtype_code()
        self.ops = {name: i for i, name in enumerate(ext.op_names())}
        self.unary = {name: i for i, name in enumerate(ext.unary_fns())}
        self.binary = {name: i for i, name in enumerate(ext.binary_fns())}
        self.reduce = {name: i for i, name in enumerate(ext.reduce_fns())}

    def dtype(self, dtype: np.dtype) -> int:
        return self.dtypes.get(np.dtype(dtype), self.opaque)


@dataclass
class EncodedSegment:
    tensors: list[tuple[int, int, list[int], int, int]]
    constants: list[np.ndarray]  # uint8 views, in constant-index order
    reclaimable: list[bool]  # per constant: a view of a read-only file mapping (walle_core.mapped)
    inputs: list[int]
    outputs: list[int]
    ops: list[tuple[int, int, str, list[int], list[int], list[int], list[float]]]
    arena_bytes: int
    parts: list[tuple[int, int]]  # (tensor, tensor it is written inside): concatenation inputs in place


def as_bytes(array: np.ndarray) -> np.ndarray:
    """A flat uint8 view of a C-contiguous array (how buffers cross into the native module)."""
    return array.reshape(-1).view(np.uint8)


def fill_bits(fill: float | None, dtype: np.dtype) -> int:
    """The fill element's bytes as a signed 64-bit integer (0: zero fill)."""
    if fill is None:
        return 0
    raw = np.array(fill).astype(dtype).tobytes()
    return int.from_bytes(raw.ljust(8, b"\0"), "little", signed=True)


def _act(codes: Codes, act: ops.Activation) -> tuple[list[int], list[float]]:
    return [codes.unary[act.fn.value]], [float(act.alpha), float(act.beta)]


def _raster(codes: Codes, a: ops.RasterAttrs, node: Node, types: dict[str, TensorType]):
    ints = [fill_bits(a.fill, types[node.outputs[0]].dtype), len(a.regions)]
    for r in a.regions:
        ints += [r.input, len(r.size), *r.size, r.src_offset, *r.src_strides, r.dst_offset, *r.dst_strides]
    return ints, []


def _matmul(codes: Codes, a: ops.MatMulAttrs, node: Node, types):
    act_ints, floats = _act(codes, a.activation)
    return [int(a.trans_a), int(a.trans_b), *act_ints], floats



def _conv2d(codes: Codes, a: ops.Conv2DAttrs, node: Node, types):
    act_ints, floats = _act(codes, a.activation)
    # then the algorithm policy (-1: the native rule) and whether the input and the output are in
    # 8-channel blocks, all three set by encode_segment
    ints = [*a.strides, *a.pads, *a.dilations, a.groups, int(a.has_bias), int(a.has_residual), *act_ints, -1, 0, 0]
    return ints, floats


def _pool2d(codes: Codes, a: ops.Pool2DAttrs, node: Node, types):
    kind = 0 if a.kind is ops.PoolKind.MAX else 1
    ints = [kind, *a.kernel, *a.strides, *a.pads, *a.dilations, *a.out_hw, int(a.count_include_pad)]
    return ints, []


Encoder = Callable[[Codes, Any, Node, dict[str, TensorType]], tuple[list[int], list[float]]]

_ENCODERS: dict[Op, Encoder] = {
    Op.RASTER: _raster,
    Op.UNARY: lambda c, a, n, t: ([c.unary[a.fn.value]], [float(a.alpha), float(a.beta)]),
    Op.BINARY: lambda c, a, n, t: ([c.binary[a.fn.value]], []),
    Op.SELECT: lambda c, a, n, t: ([], []),
    Op.CAST: lambda c, a, n, t: ([], []),
    Op.REDUCE: lambda c, a, n, t: ([c.reduce[a.fn.value], int(a.keepdims), *a.axes], []),
    Op.ARG_REDUCE: lambda c, a, n, t: ([a.axis, int(a.keepdims), int(a.largest), int(a.select_last_index)], []),
    Op.CUMULATIVE: lambda c, a, n, t: ([a.axis, int(a.exclusive), int(a.reverse)], []),
    Op.TOPK: lambda c, a, n, t: ([a.axis, a.k, int(a.largest), int(a.sorted)], []),
    Op.MATMUL: _matmul,
    Op.CONV2D: _conv2d,
    Op.POOL2D: _pool2d,
    Op.GATHER: lambda c, a, n, t: ([a.axis], []),
    Op.SCATTER: lambda c, a, n, t: ([-1 if a.reduction is None else c.binary[a.reduction.value]], []),
}


def node_label(node: Node) -> str:
    """How messages name a node: its op, and the front-end node it came from if known."""
    if node.origin:
        return f"{node.op.value} lowered from {node.origin_op or 'node'} {node.origin!r}"
    return node.op.value


def encode_segment(segment: Segment, codes: Codes, conv_policy: Callable[[Node], int] | None = None,
                   blocked: frozenset[str] = frozenset(),
                   workspace: Callable[[Node], int] | None = None) -> EncodedSegment:
    """Build the native tables for ``segment``: tensor table, constants, op records, arena size.
    ``conv_policy(node)`` gives each convolution's algorithm (the native Winograd tile, 0 for
    none); without it the native rule decides. ``blocked`` names the activations convolutions
    pass in 8-channel blocks (see layout.py). ``workspace(node)``: the bytes of workspace the
    node's kernel will take, for which the arena keeps a gap among the tensors alive while it
    runs; the native plan places the workspace itself, over such a gap where one fits."""
    types = dict(segment.types)
    ids: dict[str, int] = {}
    tensors: list[tuple[int, int, list[int], int, int]] = []
    constants: list[np.ndarray] = []
    reclaimable: list[bool] = []

    def add(name: str, kind: int, where: int) -> None:
        t = types[name]
        ids[name] = len(tensors)
        tensors.append((codes.dtype(t.dtype), int(t.dtype.itemsize), [int(d) for d in t.shape], kind, int(where)))

    def add_constant(name: str) -> None:
        value = segment.constants[name]
        t = types.setdefault(name, TensorType(value.dtype, tuple(value.shape)))
        if value.dtype != t.dtype or tuple(value.shape) != t.shape:
            raise BackendError(f"[cpu_x86] constant {name!r} is {value.dtype}{value.shape}, typed as {t}")
        constants.append(as_bytes(np.ascontiguousarray(value)))
        reclaimable.append(is_reclaimable(constants[-1]))
        add(name, CONSTANT, len(constants) - 1)

    for slot, name in enumerate(segment.inputs):
        if name in ids:
            raise BackendError(f"[cpu_x86] segment input {name!r} is listed twice")
        add(name, INPUT, slot)
    produced = {out for node in segment.nodes for out in node.outputs}
    for node in segment.nodes:
        for name in node.inputs:
            if name not in ids and name not in produced:
                if name not in segment.constants:
                    raise BackendError(f"[cpu_x86] {node_label(node)} reads {name!r}, which the segment lacks")
                add_constant(name)
    for name in segment.outputs:
        if name not in ids and name not in produced and name in segment.constants:
            add_constant(name)
    # concatenation inputs written straight into their part of the concatenation: their copies go
    scratch = {index: workspace(node) for index, node in enumerate(segment.nodes)} if workspace else {}
    memory = plan_segment_memory(segment, aliases=in_place_raster_inputs(segment), scratch=scratch)
    first_slot = {}
    for slot, name in enumerate(segment.outputs):
        first_slot.setdefault(name, slot)
    for node in segment.nodes:
        for name in node.outputs:
            if name in ids:
                raise BackendError(f"[cpu_x86] tensor {name!r} is produced twice or overwrites an input")
            if name in first_slot:
                add(name, OUTPUT, first_slot[name])
            else:
                add(name, ARENA, memory.offsets[name])
    for name in segment.outputs:
        if name not in ids:
            raise BackendError(f"[cpu_x86] segment output {name!r} is neither produced, an input nor a constant")

    records = []
    for index, node in enumerate(segment.nodes):
        attrs = node.attrs
        in_place = node.op is Op.RASTER and any(node.inputs[r.input] in memory.parts for r in attrs.regions)
        if in_place:  # without the parts written in place (maybe none left), and no fill
            attrs = replace(attrs, regions=tuple(r for r in attrs.regions if node.inputs[r.input] not in memory.parts))
        ints, floats = _ENCODERS[node.op](codes, attrs, node, types)
        if in_place:
            ints.append(1)
        if node.op is Op.CONV2D:
            if conv_policy is not None:
                ints[-3] = conv_policy(node)
            ints[-2], ints[-1] = int(node.inputs[0] in blocked), int(node.outputs[0] in blocked)
        records.append((codes.ops[node.op.value], index, node_label(node), [ids[n] for n in node.inputs],
                        [ids[n] for n in node.outputs], [int(i) for i in ints], floats))
    return EncodedSegment(
        tensors=tensors,
        constants=constants,
        reclaimable=reclaimable,
        inputs=[ids[n] for n in segment.inputs],
        outputs=[ids[n] for n in segment.outputs],
        ops=records,
        arena_bytes=memory.arena_bytes,
        parts=[(ids[part], ids[whole]) for part, whole in memory.parts.items()],
    )
