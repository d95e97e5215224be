"""Which activations a pointwise convolution passes to a depthwise one in blocks of 8 channels.

The depthwise kernel works on eight channels at a time with each pixel's eight values side by
side (NCHW8c), so an NCHW input costs it a transpose on the way in. A pointwise convolution can
write that layout directly: with the pixels as its GEMM rows, a register tile's 16 columns are two
blocks' rows. So the activation one pointwise convolution passes to one depthwise convolution
(MobileNet's expand -> depthwise) stays blocked between them. Everything else, segment inputs and
outputs included, stays NCHW. (The other direction, depthwise -> pointwise, was measured slower:
the pointwise GEMM then has to repack its operand, where an NCHW one is read in place.)
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


def blocked_activations(segment: Segment, isa: str) -> frozenset[str]:
    """The tensors of ``segment`` to keep in 8-channel blocks on a plan for ``isa`` (AVX2 only:
    the register tile that stores blocks directly is AVX2's; elsewhere tiles would go through a
    buffer)."""
    if isa != "avx2" or not blocking_enabled():
        return frozenset()
    types, constants = segment.types, segment.constants
    readers = Counter(name for node in segment.nodes for name in node.inputs)
    kept_plain = set(segment.outputs) | set(segment.inputs)
    producer = {out: node for node in segment.nodes for out in node.outputs}
    blocked = set()
    for node in segment.nodes:
        x = node.inputs[0] if node.inputs else None
        p = producer.get(x)
        if (p is not None and _is_depthwise(node, types, constants) and _is_pointwise(p, types, constants)
                and not p.attrs.has_residual and readers[x] == 1 and x not in kept_plain):
            blocked.add(x)
    return frozenset(blocked)
