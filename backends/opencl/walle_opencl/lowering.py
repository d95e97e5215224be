"""Lowers a :class:`~walle_core.backend.Segment` into the launch list of a native ``Plan``.

Every tensor gets a buffer *slot*: segment inputs first, then segment outputs (fresh buffers per
run, owned by the caller), then intermediates and constants (allocated and uploaded once, at
compile time), then the int32 error flag. Each node becomes one or more kernel launches whose
arguments are slots or scalars; shape tables ("params") are small int32 constants. All sizes and
offsets a model supplies are checked here, before anything reaches the device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from walle_core import ops
from walle_core.backend import Segment
from walle_core.errors import BackendError
from walle_core.ir import Node, TensorType
from walle_core.ops import BinaryFn, Op, ReduceFn, UnaryFn

SLOT, INT32, INT64, FLOAT32 = range(4)
TILE = 16  # matmul tile edge; must match TILE in kernels.cl
#: work-group size of the 1-D kernels: a multiple of common GPU wavefront/warp widths, well under
#: the 256 work-items the matmul tile already requires (on PoCL it cut a tiny launch from ~75 to ~25 us)
GROUP = 64

#: functions with a kernel (the supports() sets; kernel_source() instantiates exactly these)
UNARY_FNS = tuple(fn for fn in UnaryFn if fn is not UnaryFn.NOT)
ARITHMETIC_FNS = (BinaryFn.ADD, BinaryFn.SUB, BinaryFn.MUL, BinaryFn.DIV, BinaryFn.POW, BinaryFn.MAX,
                  BinaryFn.MIN, BinaryFn.MOD, BinaryFn.FMOD)
COMPARE_FNS = (BinaryFn.EQ, BinaryFn.NE, BinaryFn.LT, BinaryFn.LE, BinaryFn.GT, BinaryFn.GE)
#: functions with int32 / int64 kernels: every non-comparison function
INT_FNS = tuple(fn for fn in BinaryFn if fn not in ops.COMPARISON_FNS)
#: functions on bool inputs
LOGIC_FNS = (BinaryFn.AND, BinaryFn.OR, BinaryFn.XOR)
#: scatter reductions with a kernel (None is assignment)
SCATTER_FNS = (None, BinaryFn.ADD, BinaryFn.MUL, BinaryFn.MAX, BinaryFn.MIN)
INT32_MAX = 2**31 - 1

_BITS = {1: "b8", 2: "b16", 4: "b32", 8: "b64"}
#: float storage types and their kernel-name suffix (kernels_float.cl is instantiated once for each);
#: float16 is stored as half and computed in float32
FLOAT_SUFFIXES = {np.dtype(np.float32): "f32", np.dtype(np.float16): "f16"}
#: kernel-name suffix of the arithmetic, comparison and scatter kernels per dtype
_TYPED = {**FLOAT_SUFFIXES, np.dtype(np.int32): "i32", np.dtype(np.int64): "i64", np.dtype(bool): "b8"}
_SCATTER_TYPES = {**FLOAT_SUFFIXES, np.dtype(np.int32): "i32", np.dtype(np.int64): "i64"}
_CAST_NAMES = {np.dtype(np.float32): "float32", np.dtype(np.float16): "float16", np.dtype(np.int32): "int32",
               np.dtype(np.int64): "int64", np.dtype(bool): "bool"}
_UNARY_CODE = {fn: i for i, fn in enumerate(UnaryFn)}
_REDUCE_CODE = {fn: i for i, fn in enumerate(ReduceFn)}

Launch = tuple[str, list[tuple[int, int, float]], list[int], list[int], str]


def slot(i: int) -> tuple[int, int, float]:
    return (SLOT, i, 0.0)


def i32(v: int) -> tuple[int, int, float]:
    if not -(2**31) <= v <= INT32_MAX:
        raise BackendError(f"[opencl] value {v} does not fit the kernels' 32-bit indexing")
    return (INT32, int(v), 0.0)


def i64(v: int) -> tuple[int, int, float]:
    return (INT64, int(v), 0.0)


def f32(v: float) -> tuple[int, int, float]:
    return (FLOAT32, 0, float(v))


def node_label(node: Node) -> str:
    """How messages name a node: its op, and the front-end node it came from if known."""
    if node.origin:
        return f"{node.op.value} lowered from {node.origin_op or 'node'} {node.origin!r}"
    return node.op.value


def contiguous_strides(shape: tuple[int, ...]) -> list[int]:
    strides, acc = [], 1
    for d in reversed(shape):
        strides.append(acc)
        acc *= d
    return strides[::-1]


def broadcast_strides(shape: tuple[int, ...], out: tuple[int, ...]) -> list[int]:
    """Element strides that read ``shape`` as if broadcast to ``out`` (0 along broadcast dims)."""
    padded = (1,) * (len(out) - len(shape)) + tuple(shape)
    return [0 if d == 1 and o != 1 else s for d, o, s in zip(padded, out, contiguous_strides(padded))]


def fill_bits(fill: float, dtype: np.dtype) -> int:
    """The fill element's bytes as a signed 64-bit integer (the kernel keeps the low bytes)."""
    raw = np.array(fill).astype(dtype).tobytes()
    return int.from_bytes(raw.ljust(8, b"\0"), "little", signed=True)


@dataclass
class LoweredSegment:
    launches: list[Launch]
    n_slots: int
    flag_slot: int
    input_slots: list[int]
    output_slots: list[int]
    output_types: list[TensorType]
    intermediates: dict[int, int] = field(default_factory=dict)  # slot -> bytes
    constants: dict[int, np.ndarray] = field(default_factory=dict)  # slot -> host value


class _Lowering:
    def __init__(self, segment: Segment) -> None:
        self.segment = segment
        self.types = dict(segment.types)
        self.slots: dict[str, int] = {}
        self.launches: list[Launch] = []
        self.intermediates: dict[int, int] = {}
        self.constants: dict[int, np.ndarray] = {}
        self.n_slots = 0
        self.flag_slot = -1

    # --- slots -------------------------------------------------------------
    def _new_slot(self) -> int:
        self.n_slots += 1
        return self.n_slots - 1

    def constant(self, value: np.ndarray) -> int:
        s = self._new_slot()
        self.constants[s] = np.ascontiguousarray(value)
        return s

    def params(self, values: list[int]) -> int:
        for v in values:
            i32(v)
        return self.constant(np.array(values or [0], np.int32))

    def flag(self) -> int:
        if self.flag_slot < 0:
            self.flag_slot = self.constant(np.zeros(1, np.int32))
        return self.flag_slot

    def type(self, name: str) -> TensorType:
        return self.types[name]

    def launch(self, node: Node, kernel: str, args: list, work: int | list[int], local: list[int] | None = None):
        global_size = [work] if isinstance(work, int) else list(work)
        if min(global_size) <= 0:
            return  # empty tensor: nothing to do
        if local is None and len(global_size) == 1:
            # 1-D kernels bounds-check their index, so the range may be rounded up to whole groups
            global_size, local = [-(-global_size[0] // GROUP) * GROUP], [GROUP]
        for g in global_size:
            i32(g)
        self.launches.append((kernel, args, global_size, local or [], node_label(node)))

    # --- the segment ---------------------------------------------------------
    def lower(self) -> LoweredSegment:
        seg = self.segment
        for name in seg.inputs:
            if name in self.slots:
                raise BackendError(f"[opencl] segment input {name!r} is listed twice")
            self.slots[name] = self._new_slot()
        input_slots = [self.slots[n] for n in seg.inputs]
        produced = {out for node in seg.nodes for out in node.outputs}
        output_slots, output_types, copies = [], [], []
        for name in seg.outputs:
            t = self.types.get(name)
            if t is None and name in seg.constants:
                value = seg.constants[name]
                t = self.types[name] = TensorType(value.dtype, tuple(value.shape))
            if t is None or (name not in produced and name not in self.slots and name not in seg.constants):
                raise BackendError(f"[opencl] segment output {name!r} is neither produced, an input nor a constant")
            s = self._new_slot()
            output_slots.append(s)
            output_types.append(t)
            if name in produced and name not in self.slots:
                self.slots[name] = s  # the producing kernel writes straight into the caller's buffer
            else:
                copies.append((name, s))
        for node in seg.nodes:
            for name in node.inputs:
                if name not in self.slots:
                    if name in produced:
                        raise BackendError(f"[opencl] {node_label(node)} reads {name!r} before it is produced")
                    self._constant_tensor(name, node)
            for name in node.outputs:
                if name in self.slots and self.slots[name] not in output_slots:
                    raise BackendError(f"[opencl] tensor {name!r} is produced twice or overwrites an input")
                if name not in self.slots:
                    self.slots[name] = self._new_slot()
                    self.intermediates[self.slots[name]] = self.type(name).nbytes
            for t in [self.type(n) for n in node.inputs + node.outputs]:
                if t.size > INT32_MAX:
                    raise BackendError(f"[opencl] {node_label(node)}: tensor {t} exceeds 32-bit indexing")
            _LOWER[node.op](self, node, node.attrs)
        for name, s in copies:
            if name not in self.slots:
                self._constant_tensor(name, None)
            nbytes = self.type(name).nbytes
            self.launches.append(("copy_bytes", [slot(self.slots[name]), slot(s), i32(nbytes)], [max(nbytes, 1)],
                                  [], f"segment output {name!r}"))
        return LoweredSegment(self.launches, self.n_slots, self.flag_slot, input_slots, output_slots, output_types,
                              self.intermediates, self.constants)

    def _constant_tensor(self, name: str, node: Node | None) -> None:
        if name not in self.segment.constants:
            where = node_label(node) if node is not None else "the segment"
            raise BackendError(f"[opencl] {where} reads {name!r}, which the segment lacks")
        value = np.asarray(self.segment.constants[name])
        t = self.types.setdefault(name, TensorType(value.dtype, tuple(value.shape)))
        if value.dtype != t.dtype or tuple(value.shape) != t.shape:
            raise BackendError(f"[opencl] constant {name!r} is {value.dtype}{value.shape}, typed as {t}")
        self.slots[name] = self.constant(value)


# --- per-op lowering -----------------------------------------------------------


def _raster(lw: _Lowering, node: Node, a: ops.RasterAttrs) -> None:
    out = lw.type(node.outputs[0])
    bits = _BITS[out.dtype.itemsize]
    y = lw.slots[node.outputs[0]]
    covered = sum(int(np.prod(r.size, dtype=np.int64)) for r in a.regions)
    if a.fill is not None or covered < out.size:
        lw.launch(node, f"fill_{bits}", [slot(y), i64(fill_bits(a.fill or 0.0, out.dtype)), i32(out.size)], out.size)
    for k, r in enumerate(a.regions):
        if not 0 <= r.input < len(node.inputs):
            raise BackendError(f"[opencl] {node_label(node)}: region {k} reads input {r.input} of {len(node.inputs)}")
        if not len(r.size) == len(r.src_strides) == len(r.dst_strides):
            raise BackendError(f"[opencl] {node_label(node)}: region {k} has mismatched ranks")
        total = int(np.prod(r.size, dtype=np.int64))
        if total == 0:
            continue
        src = lw.type(node.inputs[r.input])
        for what, off, strides, limit in (("source", r.src_offset, r.src_strides, src.size),
                                          ("destination", r.dst_offset, r.dst_strides, out.size)):
            lo = off + sum((n - 1) * s for n, s in zip(r.size, strides) if s < 0)
            hi = off + sum((n - 1) * s for n, s in zip(r.size, strides) if s > 0)
            if lo < 0 or hi >= limit:
                raise BackendError(f"[opencl] {node_label(node)}: region {k} {what} spans [{lo}, {hi}], "
                                   f"outside the tensor of {limit} elements")
        p = lw.params([len(r.size), *r.size, *r.src_strides, *r.dst_strides])
        lw.launch(node, f"raster_{bits}", [slot(lw.slots[node.inputs[r.input]]), slot(y), slot(p),
                                           i32(r.src_offset), i32(r.dst_offset), i32(total)], total)


def _float_suffix(lw: _Lowering, node: Node) -> str:
    """Kernel-name suffix of the float storage type of ``node``'s first input."""
    dtype = lw.type(node.inputs[0]).dtype
    if dtype not in FLOAT_SUFFIXES:
        raise BackendError(f"[opencl] {node_label(node)}: no kernel for {dtype}")
    return FLOAT_SUFFIXES[dtype]


def _unary(lw: _Lowering, node: Node, a: ops.UnaryAttrs) -> None:
    n = lw.type(node.outputs[0]).size
    if a.fn is UnaryFn.NOT:
        lw.launch(node, "unary_bool_NOT", [slot(lw.slots[node.inputs[0]]), slot(lw.slots[node.outputs[0]]), i32(n)], n)
        return
    suffix = _float_suffix(lw, node)
    lw.launch(node, f"unary_{suffix}_{a.fn.name}", [slot(lw.slots[node.inputs[0]]), slot(lw.slots[node.outputs[0]]),
                                                    f32(a.alpha), f32(a.beta), i32(n)], n)


def _broadcast_params(lw: _Lowering, node: Node, names: list[str]) -> int:
    out = lw.type(node.outputs[0]).shape
    table = [len(out), *out]
    for name in names:
        table += broadcast_strides(lw.type(name).shape, out)
    return lw.params(table)


def _binary(lw: _Lowering, node: Node, a: ops.BinaryAttrs) -> None:
    n = lw.type(node.outputs[0]).size
    dtype = lw.type(node.inputs[0]).dtype
    if a.fn in LOGIC_FNS:
        kernel = f"logic_{a.fn.name}"
    else:
        kernel = f"{'compare' if a.fn in ops.COMPARISON_FNS else 'binary'}_{_TYPED[dtype]}_{a.fn.name}"
    p = _broadcast_params(lw, node, node.inputs)
    lw.launch(node, kernel, [slot(lw.slots[node.inputs[0]]), slot(lw.slots[node.inputs[1]]),
                             slot(lw.slots[node.outputs[0]]), slot(p), i32(n)], n)


def _select(lw: _Lowering, node: Node, a: ops.SelectAttrs) -> None:
    out = lw.type(node.outputs[0])
    p = _broadcast_params(lw, node, node.inputs)
    args = [slot(lw.slots[name]) for name in node.inputs] + [slot(lw.slots[node.outputs[0]]), slot(p), i32(out.size)]
    lw.launch(node, f"select_{_BITS[out.dtype.itemsize]}", args, out.size)


def _cast(lw: _Lowering, node: Node, a: ops.CastAttrs) -> None:
    src, dst = lw.type(node.inputs[0]), lw.type(node.outputs[0])
    x, y = slot(lw.slots[node.inputs[0]]), slot(lw.slots[node.outputs[0]])
    if src.dtype == dst.dtype:
        lw.launch(node, "copy_bytes", [x, y, i32(dst.nbytes)], dst.nbytes)
    else:
        lw.launch(node, f"cast_{_CAST_NAMES[src.dtype]}_{_CAST_NAMES[dst.dtype]}", [x, y, i32(dst.size)], dst.size)


def _reduce(lw: _Lowering, node: Node, a: ops.ReduceAttrs) -> None:
    shape = lw.type(node.inputs[0]).shape
    strides = contiguous_strides(shape)
    if any(not 0 <= ax < len(shape) for ax in a.axes):
        raise BackendError(f"[opencl] {node_label(node)}: axes {a.axes} out of range for rank {len(shape)}")
    kept = [d for d in range(len(shape)) if d not in a.axes]
    red = list(a.axes)
    count = int(np.prod([shape[d] for d in red], dtype=np.int64))
    n = lw.type(node.outputs[0]).size
    p = lw.params([len(kept), len(red), count, *[shape[d] for d in kept], *[strides[d] for d in kept],
                   *[shape[d] for d in red], *[strides[d] for d in red]])
    kernel = f"reduce_{_float_suffix(lw, node)}"
    lw.launch(node, kernel, [slot(lw.slots[node.inputs[0]]), slot(lw.slots[node.outputs[0]]), slot(p),
                             i32(_REDUCE_CODE[a.fn]), i32(n)], n)


def _batch_offsets(shape: tuple[int, ...], batch: tuple[int, ...], matrix: int) -> np.ndarray:
    """Start offset of every (broadcast) batch matrix of a tensor of ``shape``, in output batch order."""
    lead = shape[:-2]
    index = np.arange(int(np.prod(lead, dtype=np.int64)), dtype=np.int64).reshape(lead)
    return np.broadcast_to(index, batch).reshape(-1) * matrix


def _strided_offsets(batch: tuple[int, ...], strides: list[int]) -> np.ndarray:
    """Offset of every batch index (row-major over ``batch``) given per-dimension element strides."""
    if not batch:
        return np.zeros(1, np.int64)
    coords = np.indices(batch).reshape(len(batch), -1)
    return (coords * np.array(strides, np.int64)[:, None]).sum(axis=0)


def _matmul(lw: _Lowering, node: Node, a: ops.MatMulAttrs) -> None:
    sa, sb = lw.type(node.inputs[0]).shape, lw.type(node.inputs[1]).shape
    out = lw.type(node.outputs[0]).shape
    batch_shape, (m, n) = out[:-2], out[-2:]
    k = sa[-2] if a.trans_a else sa[-1]
    batch = int(np.prod(batch_shape, dtype=np.int64))
    sam, sak = (1, m) if a.trans_a else (k, 1)
    sbk, sbn = (1, k) if a.trans_b else (n, 1)
    offs = [_batch_offsets(sa, batch_shape, m * k), _batch_offsets(sb, batch_shape, k * n)]
    has_bias = len(node.inputs) > 2
    bsm = bsn = 0
    if has_bias:
        strides = broadcast_strides(lw.type(node.inputs[2]).shape, out)
        bsm, bsn = strides[-2], strides[-1]
        offs.append(_strided_offsets(batch_shape, strides[:-2]))
    else:
        offs.append(np.zeros(batch, np.int64))
    p = lw.params([int(v) for v in np.concatenate(offs)])
    bias_slot = lw.slots[node.inputs[2]] if has_bias else lw.slots[node.outputs[0]]  # unread when no bias
    act = a.activation
    args = [slot(lw.slots[node.inputs[0]]), slot(lw.slots[node.inputs[1]]), slot(bias_slot),
            slot(lw.slots[node.outputs[0]]), slot(p), i32(m), i32(n), i32(k), i32(batch),
            i32(sam), i32(sak), i32(sbk), i32(sbn), i32(int(has_bias)), i32(bsm), i32(bsn),
            i32(_UNARY_CODE[act.fn]), f32(act.alpha), f32(act.beta)]
    rounded = [-(-n // TILE) * TILE, -(-m // TILE) * TILE, batch]
    lw.launch(node, f"matmul_{_float_suffix(lw, node)}", args, rounded, [TILE, TILE, 1])


def _conv2d(lw: _Lowering, node: Node, a: ops.Conv2DAttrs) -> None:
    nb, c, h, w = lw.type(node.inputs[0]).shape
    o, _, kh, kw = lw.type(node.inputs[1]).shape
    out = lw.type(node.outputs[0])
    _, _, oh, ow = out.shape
    y = lw.slots[node.outputs[0]]
    bias = lw.slots[node.inputs[2]] if a.has_bias else y  # unread when absent
    res = lw.slots[node.inputs[2 + int(a.has_bias)]] if a.has_residual else y
    act = a.activation
    p = lw.params([nb, c, h, w, o, oh, ow, kh, kw, *a.strides, a.pads[0], a.pads[1], *a.dilations, a.groups,
                   int(a.has_bias), int(a.has_residual), _UNARY_CODE[act.fn]])
    kernel = f"conv2d_{_float_suffix(lw, node)}"
    lw.launch(node, kernel, [slot(lw.slots[node.inputs[0]]), slot(lw.slots[node.inputs[1]]), slot(bias),
                             slot(res), slot(y), slot(p), f32(act.alpha), f32(act.beta), i32(out.size)],
              out.size)


def _pool2d(lw: _Lowering, node: Node, a: ops.Pool2DAttrs) -> None:
    h, w = lw.type(node.inputs[0]).shape[2:]
    out = lw.type(node.outputs[0])
    p = lw.params([h, w, *out.shape[2:], *a.kernel, *a.strides, *a.pads, *a.dilations,
                   int(a.kind is ops.PoolKind.AVG), int(a.count_include_pad)])
    kernel = f"pool2d_{_float_suffix(lw, node)}"
    lw.launch(node, kernel, [slot(lw.slots[node.inputs[0]]), slot(lw.slots[node.outputs[0]]), slot(p),
                             i32(out.size)], out.size)


def _gather(lw: _Lowering, node: Node, a: ops.GatherAttrs) -> None:
    data, idx = lw.type(node.inputs[0]), lw.type(node.inputs[1])
    out = lw.type(node.outputs[0])
    if not 0 <= a.axis < len(data.shape):
        raise BackendError(f"[opencl] {node_label(node)}: axis {a.axis} out of range for rank {len(data.shape)}")
    inner = int(np.prod(data.shape[a.axis + 1:], dtype=np.int64))
    kernel = f"gather_{_BITS[data.dtype.itemsize]}_{'int64' if idx.dtype == np.int64 else 'int32'}"
    launch_id = len(lw.launches) + 1  # the flag names this launch
    lw.launch(node, kernel, [slot(lw.slots[node.inputs[0]]), slot(lw.slots[node.inputs[1]]),
                             slot(lw.slots[node.outputs[0]]), slot(lw.flag()), i32(data.shape[a.axis]),
                             i32(idx.size), i32(max(inner, 1)), i32(out.size), i32(launch_id)], out.size)


def _lines(lw: _Lowering, node: Node, axis: int) -> tuple[int, int, int]:
    """(outer, dim, inner) of the first input seen as lines along ``axis``."""
    shape = lw.type(node.inputs[0]).shape
    if not 0 <= axis < len(shape):
        raise BackendError(f"[opencl] {node_label(node)}: axis {axis} out of range for rank {len(shape)}")
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
    return outer, shape[axis], inner


def _arg_reduce(lw: _Lowering, node: Node, a: ops.ArgReduceAttrs) -> None:
    outer, dim, inner = _lines(lw, node, a.axis)
    if dim == 0 and outer * inner > 0:
        raise BackendError(f"[opencl] {node_label(node)}: reducing an empty axis {a.axis}")
    kernel = f"arg_reduce_{_float_suffix(lw, node)}"
    lw.launch(node, kernel, [slot(lw.slots[node.inputs[0]]), slot(lw.slots[node.outputs[0]]), i32(dim),
                             i32(inner), i32(int(a.largest)), i32(int(a.select_last_index)),
                             i32(outer * inner)], outer * inner)


def _cumulative(lw: _Lowering, node: Node, a: ops.CumulativeAttrs) -> None:
    outer, dim, inner = _lines(lw, node, a.axis)
    kernel = f"cumulative_{_float_suffix(lw, node)}"
    lw.launch(node, kernel, [slot(lw.slots[node.inputs[0]]), slot(lw.slots[node.outputs[0]]), i32(dim),
                             i32(inner), i32(int(a.exclusive)), i32(int(a.reverse)),
                             i32(outer * inner)], outer * inner)


def _topk(lw: _Lowering, node: Node, a: ops.TopKAttrs) -> None:
    outer, dim, inner = _lines(lw, node, a.axis)
    if not 0 <= a.k <= dim:
        raise BackendError(f"[opencl] {node_label(node)}: k={a.k} outside [0, {dim}]")
    values, indices = (slot(lw.slots[name]) for name in node.outputs)
    kernel = f"topk_{_float_suffix(lw, node)}"
    lw.launch(node, kernel, [slot(lw.slots[node.inputs[0]]), values, indices, i32(dim), i32(inner), i32(a.k),
                             i32(int(a.largest)), i32(outer * inner)], outer * inner)


def _scatter(lw: _Lowering, node: Node, a: ops.ScatterAttrs) -> None:
    data, idx, upd = (lw.type(name) for name in node.inputs)
    if a.reduction not in SCATTER_FNS:
        raise BackendError(f"[opencl] {node_label(node)}: unsupported reduction {a.reduction}")
    rows = data.shape[0] if data.shape else 0
    inner = int(np.prod(data.shape[1:], dtype=np.int64))
    if upd.size != idx.size * inner:
        raise BackendError(f"[opencl] {node_label(node)}: updates {upd} do not match {idx.size} rows of {inner}")
    y = slot(lw.slots[node.outputs[0]])
    lw.launch(node, "copy_bytes", [slot(lw.slots[node.inputs[0]]), y, i32(data.nbytes)], data.nbytes)
    fn = -1 if a.reduction is None else list(BinaryFn).index(a.reduction)
    launch_id = len(lw.launches) + 1  # the flag names this launch
    if data.dtype not in _SCATTER_TYPES:
        raise BackendError(f"[opencl] {node_label(node)}: no scatter kernel for {data.dtype}")
    lw.launch(node, f"scatter_{_SCATTER_TYPES[data.dtype]}",
              [slot(lw.slots[node.inputs[1]]), slot(lw.slots[node.inputs[2]]), y, slot(lw.flag()), i32(rows),
               i32(idx.size), i32(inner), i32(fn), i32(launch_id)], inner if idx.size else 0)


_LOWER: dict[Op, Any] = {
    Op.RASTER: _raster,
    Op.UNARY: _unary,
    Op.BINARY: _binary,
    Op.SELECT: _select,
    Op.CAST: _cast,
    Op.REDUCE: _reduce,
    Op.MATMUL: _matmul,
    Op.CONV2D: _conv2d,
    Op.POOL2D: _pool2d,
    Op.GATHER: _gather,
    Op.ARG_REDUCE: _arg_reduce,
    Op.CUMULATIVE: _cumulative,
    Op.TOPK: _topk,
    Op.SCATTER: _scatter,
}

LOWERED_OPS = frozenset(_LOWER)


def lower_segment(segment: Segment) -> LoweredSegment:
    """Check ``segment`` and turn it into slots, device constants and kernel launches."""
    return _Lowering(segment).lower()
