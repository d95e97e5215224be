"""Which activations pass between pointwise and depthwise convolutions in blocks of 8 channels.

The depthwise kernel works on eight channels at a time with each pixel's eight values side by
side (NCHW8c), so an NCHW input costs it a transpose on the way in and an NCHW output one on the
way out. A pointwise convolution with the pixels as its GEMM rows handles that layout directly on
either side: a register tile's 16 columns are two blocks' rows when it writes, and a tile's rows
are eight consecutive floats per channel block when it reads (in place, where an NCHW operand is
read as K strided rows). So the activation one pointwise convolution passes to one depthwise
convolution (MobileNet's expand -> depthwise) stays blocked between them, and so does the one a
depthwise convolution passes to one pointwise convolution (depthwise -> project), unless that
pointwise convolution already writes blocks. A pointwise convolution that reads blocks may also
write them, its residual in blocks too: MobileNetV2's projection -> next expansion and the
residual chain through a stage stay blocked where every reader takes blocks
(``_pointwise_chains``). Everything else, segment inputs and outputs included, stays NCHW.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping

import numpy as np

from walle_core.backend import Segment
from walle_core.errors import BackendError
from walle_core.ir import Node, TensorType
from walle_core.ops import Op

#: ``0`` keeps every activation NCHW (for comparisons); ``1`` (the default) allows blocks
BLOCKED_ENV = "WALLE_CPU_X86_BLOCKED"


def blocking_enabled() -> bool:
    value = os.environ.get(BLOCKED_ENV, "1").strip()
    if value not in ("0", "1"):
        raise BackendError(f"[cpu_x86] {BLOCKED_ENV}={value!r}: expected 0 or 1")
    return value == "1"


def _conv_shapes(node: Node, types: Mapping[str, TensorType], constants: Mapping[str, np.ndarray]
                 ) -> tuple[TensorType, tuple[int, ...]] | None:
    """The input type and weight shape of a float32 convolution, else None."""
    if node.op is not Op.CONV2D:
        return None
    x, w = types[node.inputs[0]], node.inputs[1]
    w_shape = constants[w].shape if w in constants else types[w].shape
    if x.dtype != np.float32 or len(x.shape) != 4 or len(w_shape) != 4:
        return None
    return x, tuple(int(d) for d in w_shape)


def _is_depthwise(node: Node, types: Mapping[str, TensorType], constants: Mapping[str, np.ndarray]) -> bool:
    shapes = _conv_shapes(node, types, constants)
    if shapes is None:
        return False
    x, w = shapes
    channels = x.shape[1]
    return node.attrs.groups == channels and w[0] == channels and w[1] == 1 and channels % 8 == 0


def _is_pointwise(node: Node, types: Mapping[str, TensorType], constants: Mapping[str, np.ndarray]) -> bool:
    shapes = _conv_shapes(node, types, constants)
    if shapes is None:
        return False
    _, w = shapes
    a = node.attrs
    return (w[2:] == (1, 1) and a.groups == 1 and tuple(a.strides) == (1, 1) and not any(a.pads)
            and tuple(a.dilations) == (1, 1) and node.inputs[1] in constants)


def _pixel_rows_fill_tiles(y: TensorType, tile: tuple[int, int]) -> bool:
    """Whether a pointwise convolution's register tiles do no more work with the pixels as GEMM
    rows (how it reads blocks) than with its output channels as rows (how it reads NCHW). Measured
    in MobileNetV2: 24 output channels at 56x56 (a third of every 16-column tile wasted) took
    30 % longer blocked; 16 at 112x112, 64 and 96 at 14x14, 160 at 7x7 took 10-25 % less."""
    channels, pixels = y.shape[1], y.shape[2] * y.shape[3]

    def padded(v: int, t: int) -> int:
        return -(-v // t) * t

    rows, columns = tile
    return padded(pixels, rows) * padded(channels, columns) <= padded(channels, rows) * padded(pixels, columns)


def blocked_activations(segment: Segment, tile: tuple[int, int] | None) -> frozenset[str]:
    """The tensors of ``segment`` to keep in 8-channel blocks on a plan whose GEMM register tile
    is ``tile`` (rows, columns); None where no register tile stores blocks (the portable kernel,
    whose tiles would go through a buffer, and which has no eight-channel depthwise kernel)."""
    if tile is None or not blocking_enabled():
        return frozenset()
    types, constants = segment.types, segment.constants
    readers = Counter(name for node in segment.nodes for name in node.inputs)
    kept_plain = set(segment.outputs) | set(segment.inputs)
    producer = {out: node for node in segment.nodes for out in node.outputs}
    blocked = set()
    # pointwise -> depthwise (the pointwise writes blocks without a residual)
    for node in segment.nodes:
        x = node.inputs[0] if node.inputs else None
        p = producer.get(x)
        if (p is not None and _is_depthwise(node, types, constants) and _is_pointwise(p, types, constants)
                and not p.attrs.has_residual and readers[x] == 1 and x not in kept_plain):
            blocked.add(x)
    # depthwise -> pointwise (the depthwise writes blocks without a residual; a pointwise
    # convolution that already writes blocks for a depthwise one keeps its NCHW input here, as
    # when this edge was measured; _pointwise_chains may block both sides of others)
    for node in segment.nodes:
        x = node.inputs[0] if node.inputs else None
        p = producer.get(x)
        if (p is not None and _is_pointwise(node, types, constants) and _is_depthwise(p, types, constants)
                and not p.attrs.has_residual and node.outputs[0] not in blocked and readers[x] == 1
                and x not in kept_plain and _pixel_rows_fill_tiles(types[node.outputs[0]], tile)):
            blocked.add(x)
    blocked |= _pointwise_chains(segment, blocked, kept_plain, producer, tile)
    return frozenset(blocked)


def _pointwise_chains(segment: Segment, blocked: set[str], kept_plain: set[str], producer: dict[str, Node],
                      tile: tuple[int, int]) -> set[str]:
    """Activations one pointwise convolution that reads blocks passes to others in blocks: MobileNetV2's
    projection -> next expansion, and the residual chain through a stage, whose every tensor is read
    by the next expansion and by the next projection's residual. Such an activation stays blocked
    when every reader takes blocks: a pointwise convolution reading it (that writes blocks, or NCHW
    where its tiles fill as well with the pixels as rows) or adding it as a residual to an output
    in blocks. A pointwise convolution writing blocks has its residual in blocks too. Found by
    dropping candidates until the rest is consistent."""
    types, constants = segment.types, segment.constants
    readers: dict[str, list[Node]] = {}
    for node in segment.nodes:
        for name in set(node.inputs):
            readers.setdefault(name, []).append(node)

    def residual(node: Node) -> str | None:
        return node.inputs[-1] if node.attrs.has_residual else None

    chain = set()
    for node in segment.nodes:
        out = node.outputs[0] if node.outputs else None
        if (_is_pointwise(node, types, constants) and out not in kept_plain and out not in blocked
                and types[out].shape[1] % 8 == 0 and len(types[out].shape) == 4):
            chain.add(out)
    while True:
        drop = set()
        for t in chain:
            p = producer[t]
            ok = (p.inputs[0] in blocked or p.inputs[0] in chain) and (residual(p) is None or residual(p) in chain)
            for r in readers.get(t, []):
                if not ok:
                    break
                if not _is_pointwise(r, types, constants) or r.inputs.count(t) != 1:
                    ok = False
                elif t == r.inputs[0]:  # read as the GEMM's operand
                    out = r.outputs[0]
                    ok = out in blocked or out in chain or _pixel_rows_fill_tiles(types[out], tile)
                else:  # added as the residual
                    ok = r.outputs[0] in chain
            if not ok:
                drop.add(t)
        if not drop:
            return chain
        chain -= drop
