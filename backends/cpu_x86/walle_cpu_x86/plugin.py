"""The cpu_x86 backend as a Walle plugin: which nodes it takes, and compile/run glue.

All computation happens in the native module; ``run`` checks the inputs, allocates the outputs
and makes one native call for the whole segment, with the GIL released.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from walle_core.backend import Availability, Backend, Executable, Segment
from walle_core.cancel import CancelToken
from walle_core.errors import BackendError, RunCancelled
from walle_core.hookspecs import hookimpl
from walle_core.ir import GraphBuilder, Node, TensorType
from walle_core.ops import BinaryFn, Conv2DAttrs, Op, UnaryFn
from walle_cpu_x86 import packed_cache
from walle_cpu_x86.conv_search import (
    GEMM,
    GEMM_ROWS,
    POLICY,
    ConvChooser,
    ConvShape,
    best_time,
    forced_policy,
    random_conv_inputs,
    winograd_workspace_bytes,
)
from walle_cpu_x86.layout import blocked_activations
from walle_cpu_x86.lowering import Codes, as_bytes, encode_segment

try:
    from walle_cpu_x86 import _ext
except ImportError as exc:  # reported by availability(), never raised at import
    _ext = None
    _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"
else:
    _IMPORT_ERROR = ""

#: environment variable that may force a lower instruction set (portable, avx2, avx512)
ISA_ENV = "WALLE_CPU_X86_ISA"
#: environment variable that turns on per-op timing in every plan compiled while it is set
PROFILE_ENV = "WALLE_PROFILE"

_ISA_LABEL = {"avx512": "AVX-512", "avx2": "AVX2", "portable": "portable"}

F32 = np.dtype(np.float32)
BOOL = np.dtype(bool)
_INTS = (np.dtype(np.int32), np.dtype(np.int64))
_CASTABLE = frozenset(np.dtype(d) for d in (np.float32, np.int32, np.int64, bool, np.uint8, np.int8))
_MAX_REGION_RANK = 8

_F32_BINARY = frozenset({BinaryFn.ADD, BinaryFn.SUB, BinaryFn.MUL, BinaryFn.DIV, BinaryFn.POW, BinaryFn.MAX,
                         BinaryFn.MIN, BinaryFn.MOD, BinaryFn.FMOD, BinaryFn.EQ, BinaryFn.NE, BinaryFn.LT,
                         BinaryFn.LE, BinaryFn.GT, BinaryFn.GE})
_INT_BINARY = frozenset(BinaryFn) - {BinaryFn.POW, BinaryFn.AND, BinaryFn.OR, BinaryFn.XOR}
_BOOL_BINARY = frozenset({BinaryFn.AND, BinaryFn.OR, BinaryFn.XOR, BinaryFn.EQ, BinaryFn.NE})
_SCATTER_REDUCTIONS = frozenset({BinaryFn.ADD, BinaryFn.MUL, BinaryFn.MAX, BinaryFn.MIN})


def _movable(dtype: np.dtype) -> bool:
    """Plain fixed-size elements the native side may copy as raw bytes (no Python objects)."""
    return dtype.itemsize in (1, 2, 4, 8) and not dtype.hasobject and dtype.fields is None


def _dtype_ok(node: Node, t: list[TensorType], o: list[TensorType]) -> bool:
    op, a = node.op, node.attrs
    if op is Op.RASTER:
        return _movable(o[0].dtype) and all(len(r.size) <= _MAX_REGION_RANK for r in a.regions)
    if op is Op.UNARY:
        return t[0].dtype == (BOOL if a.fn is UnaryFn.NOT else F32)
    if op is Op.BINARY:
        dt = t[0].dtype
        allowed = (_F32_BINARY if dt == F32 else _INT_BINARY if dt in _INTS
                   else _BOOL_BINARY if dt == BOOL else frozenset())
        return a.fn in allowed
    if op is Op.SELECT:
        return _movable(t[1].dtype)
    if op is Op.CAST:
        return t[0].dtype in _CASTABLE and o[0].dtype in _CASTABLE and not a.bitcast
    if op is Op.GATHER:
        return _movable(t[0].dtype) and t[1].dtype in _INTS
    if op is Op.SCATTER:
        if a.reduction is None:
            return _movable(t[0].dtype)
        return a.reduction in _SCATTER_REDUCTIONS and t[0].dtype in (F32, *_INTS)
    # reductions, scans and the dense ops: float32 throughout
    return all(x.dtype == F32 for x in t)


def _functions_known(node: Node, codes: Codes) -> bool:
    """Whether the native tables know the node's function (the core's enums may grow first)."""
    a = node.attrs
    if node.op is Op.UNARY:
        return a.fn.value in codes.unary
    if node.op is Op.BINARY:
        return a.fn.value in codes.binary
    if node.op is Op.REDUCE:
        return a.fn.value in codes.reduce
    if node.op is Op.SCATTER and a.reduction is not None:
        return a.reduction.value in codes.binary
    if node.op in (Op.MATMUL, Op.CONV2D):
        return a.activation.fn.value in codes.unary
    return node.op.value in codes.ops


class CpuX86Executable(Executable):
    """One compiled segment: a native plan plus the types to check ``run`` arguments against."""

    def __init__(self, plan: Any, segment: Segment, profile: bool = False) -> None:
        self.plan = plan
        self.plan.profiling = profile
        self._labels = [(node.op.value, node.origin) for node in segment.nodes]
        self._in_names = list(segment.inputs)
        self._in_types = [segment.types[n] for n in segment.inputs]
        self._out_types = [segment.types.get(n) or _const_type(segment, n) for n in segment.outputs]

    def run(self, inputs: list[Any]) -> list[Any]:
        return self._run(inputs, None)

    def run_cancellable(self, inputs: list[Any], cancel: CancelToken) -> list[Any]:
        """The native plan polls a flag of its own between ops and between blocks of work
        inside them; the token raises it from whichever thread cancels."""
        flag = _ext.CancelFlag()
        unsubscribe = cancel.subscribe(flag.set)
        try:
            return self._run(inputs, flag)
        except _ext.Cancelled as exc:
            raise RunCancelled(str(exc)) from None
        finally:
            unsubscribe()

    def _run(self, inputs: list[Any], flag: Any) -> list[Any]:
        if len(inputs) != len(self._in_types):
            raise ValueError(f"[cpu_x86] expected {len(self._in_types)} inputs, got {len(inputs)}")
        views = []
        for name, value, t in zip(self._in_names, inputs, self._in_types):
            array = np.asarray(value)
            if array.dtype != t.dtype:
                raise ValueError(f"[cpu_x86] input {name!r}: dtype {array.dtype}, expected {t.dtype}")
            if array.shape != t.shape:
                raise ValueError(f"[cpu_x86] input {name!r}: shape {array.shape}, expected {t.shape}")
            views.append(as_bytes(np.ascontiguousarray(array)))
        outputs = [np.empty(t.shape, t.dtype) for t in self._out_types]
        try:
            self.plan.run(views, [as_bytes(o) for o in outputs], flag)
        except IndexError as exc:
            raise BackendError(str(exc)) from None
        return outputs

    def profile(self) -> list[dict[str, Any]]:
        """Mean native time per op over the runs since profiling was turned on (``WALLE_PROFILE=1``
        at compile time, or ``plan.profiling = True``): ``[{op, origin, ms, runs}]`` in execution
        order. Empty while profiling is off and nothing was recorded."""
        rows = []
        for index, _label, total_ns, runs in self.plan.profile():
            op, origin = self._labels[index]
            rows.append({"op": op, "origin": origin, "ms": total_ns / runs / 1e6 if runs else 0.0, "runs": runs})
        return rows if any(r["runs"] for r in rows) else []


def _const_type(segment: Segment, name: str) -> TensorType:
    value = segment.constants[name]
    return TensorType(value.dtype, tuple(value.shape))


class CpuX86Backend(Backend):
    """x86-64 CPUs: packed GEMM with AVX-512 / AVX2 micro-kernels, chosen at run time."""

    name = "cpu_x86"
    priority = 100

    def __init__(self, threads: int = 1) -> None:
        super().__init__(threads)
        self._pool: Any = None
        self._pool_lock = threading.Lock()
        self._codes = Codes(_ext) if _ext is not None else None
        self._chooser: ConvChooser | None = None

    @classmethod
    def availability(cls) -> Availability:
        if _ext is None:
            return Availability(False, reason=_IMPORT_ERROR)
        isa = _ISA_LABEL[_ext.best_isa()]
        return Availability(True, device=f"x86-64 {isa} ({os.cpu_count()} cores)")

    @classmethod
    def supported_ops(cls) -> frozenset[Op]:
        return frozenset(Op)

    def supports(self, node: Node, types: Mapping[str, TensorType]) -> bool:
        if self._codes is None:
            return False
        try:
            ins = [types[n] for n in node.inputs]
            outs = [types[n] for n in node.outputs]
        except KeyError:
            return False
        return _functions_known(node, self._codes) and _dtype_ok(node, ins, outs)

    def _thread_pool(self) -> Any:
        with self._pool_lock:
            if self._pool is None:
                self._pool = _ext.ThreadPool(self.threads)
            return self._pool

    # -- convolution algorithms (conv_search) --------------------------------------------
    def conv_chooser(self) -> ConvChooser:
        """Created on first use: its rates may need a calibration run (once per machine)."""
        if self._chooser is None:
            isa = os.environ.get(ISA_ENV, "").strip().lower()
            _mr, nr = _register_tile(isa)
            self._chooser = ConvChooser(f"{isa or _ext.best_isa()}|{self.threads}", nr, self._time_conv)
        return self._chooser

    def _conv_policy(self, node: Node, segment: Segment) -> int:
        forced = forced_policy()
        if forced is not None:
            return forced
        algorithm = self.conv_chooser().choose(ConvShape.of(node, segment.types)).algorithm
        if algorithm == GEMM_ROWS and node.inputs[1] not in segment.constants:
            algorithm = GEMM  # weights known only at run time are packed per run, as A
        return POLICY[algorithm]

    def algorithm(self, node: Node, types: Mapping[str, TensorType]) -> str | None:
        """The kernel variant this backend runs ``node`` with (shown by ``walle plan``)."""
        if _ext is None:
            return None
        if node.op is Op.CONV2D:
            forced = forced_policy()
            if forced is not None:
                return f"forced Winograd tile {forced}" if forced else "forced gemm"
            choice = self.conv_chooser().choose(ConvShape.of(node, types))
            return choice.algorithm + (" (timed)" if choice.measured_s is not None else "")
        if node.op is Op.MATMUL:
            return "gemm"
        return None

    def estimate_cost(self, node: Node, types: Mapping[str, TensorType]) -> float | None:
        """Convolutions: the chosen algorithm's time, as timed or as the calibrated model
        predicts it. Other ops: the generic profile."""
        if _ext is None or node.op is not Op.CONV2D or forced_policy() is not None:
            return None
        choice = self.conv_chooser().choose(ConvShape.of(node, types))
        return choice.measured_s if choice.measured_s is not None else choice.predicted_s

    def _time_conv(self, shape: ConvShape, algorithm: str) -> float:
        """Best time of one convolution of ``shape`` run with ``algorithm`` (random data)."""
        x, w = random_conv_inputs(shape)
        b = GraphBuilder()
        b.add_input("x", TensorType(x.dtype, x.shape))
        b.graph.types["w"] = TensorType(w.dtype, w.shape)
        attrs = Conv2DAttrs(strides=shape.strides, pads=shape.pads, dilations=shape.dilations, groups=shape.groups)
        out = b.emit(Op.CONV2D, ["x", "w"], attrs)
        segment = Segment(b.graph.nodes, ["x"], out, dict(b.graph.types), {"w": w})
        exe = self._compile(segment, lambda node: POLICY[algorithm])
        return best_time(lambda: exe.run([x]))

    def compile(self, segment: Segment) -> Executable:
        return self._compile(segment, lambda node: self._conv_policy(node, segment), cache_packed=True)

    def _compile(self, segment: Segment, conv_policy: Any, cache_packed: bool = False) -> Executable:
        """``cache_packed``: take the ops' packed weights from the packed-weight cache, and
        save there what had to be packed (packed_cache.py)."""
        if _ext is None:
            raise BackendError(f"[cpu_x86] native module unavailable: {_IMPORT_ERROR}")
        isa = os.environ.get(ISA_ENV, "").strip().lower()
        best = isa or _ext.best_isa()
        tile = None if best == "portable" else _register_tile(isa)
        enc = encode_segment(segment, self._codes, conv_policy, blocked_activations(segment, tile),
                             lambda node: _workspace_bytes(node, segment, conv_policy, self.conv_chooser().nr))
        keys = packed_cache.op_keys(enc, best, _ext.__file__) if cache_packed and packed_cache.enabled() else []
        saved = packed_cache.load_saved(keys)

        def build(saved: list[list[np.ndarray]]) -> Any:
            return _ext.Plan(enc.tensors, enc.constants, enc.inputs, enc.outputs, enc.ops, enc.arena_bytes,
                             isa, self._thread_pool(), enc.reclaimable, enc.parts, saved)

        try:
            try:
                plan = build(saved)
            except ValueError:
                if not saved:
                    raise
                saved = []  # a saved file that does not fit its op: pack afresh and replace it
                plan = build(saved)
        except ValueError as exc:
            raise BackendError(f"{exc}") from None
        if keys:
            packed_cache.save(keys, saved, plan.packed())
        profile = os.environ.get(PROFILE_ENV, "").strip() not in ("", "0")
        return CpuX86Executable(plan, segment, profile=profile)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        if _ext is not None:
            info["isa"] = os.environ.get(ISA_ENV) or _ext.best_isa()
        return info


@hookimpl
def walle_register_backends() -> list[type[Backend]]:
    return [CpuX86Backend]


def _register_tile(isa: str) -> tuple[int, int]:
    """(rows, columns) of the GEMM register tile of a plan for ``isa`` ('' = the best)."""
    try:
        mr, nr = _ext.micro_kernel(isa)
    except ValueError as exc:
        raise BackendError(f"[cpu_x86] {exc}") from None
    return mr, nr


def _workspace_bytes(node: Node, segment: Segment, conv_policy: Any, nr: int) -> int:
    """The workspace the native kernel of ``node`` will take, as far as the arena plan needs to
    know it: a Winograd convolution's (``conv_policy(node)`` gives its tile), whose transformed
    image and GEMM output are megabytes at ResNet's first stages. Other workspaces (a matmul's
    per-run packing) are small, and go where they fit."""
    if node.op is not Op.CONV2D or node.inputs[1] not in segment.constants:
        return 0
    shape = ConvShape.of(node, segment.types)
    tile = conv_policy(node) if shape.winograd_ok else 0
    if tile not in (2, 4, 6):  # a GEMM's (0, or 1 with the pixels as rows) is small
        return 0
    return winograd_workspace_bytes(shape, tile, nr)
