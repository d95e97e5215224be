"""The opencl backend as a Walle plugin: which nodes it takes, compile, and device transfers.

Tensors stay in device buffers between consecutive OpenCL segments; the core's executor calls
``to_device`` / ``to_host`` only where a tensor crosses into or out of the ``opencl`` domain.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from walle_core.backend import Availability, Backend, Executable, Segment
from walle_core.errors import BackendError
from walle_core.hookspecs import hookimpl
from walle_core.ir import Node, TensorType
from walle_core.ops import Op, UnaryFn
from walle_opencl import device as dev
from walle_opencl import tuning
from walle_opencl.device import DeviceTensor
from walle_opencl.lowering import (
    ARITHMETIC_FNS,
    COMPARE_FNS,
    FLOAT_SUFFIXES,
    INT_FNS,
    LOGIC_FNS,
    LOWERED_OPS,
    SCATTER_FNS,
    UNARY_FNS,
    lower_segment,
)

F32 = np.dtype(np.float32)
F16 = np.dtype(np.float16)
BOOL = np.dtype(bool)
#: float dtypes with kernels; float16 is stored as half and computed in float32 (see kernels_float.cl)
_FLOATS = frozenset(FLOAT_SUFFIXES)
_INDEX = (np.dtype(np.int32), np.dtype(np.int64))
_INTS = (np.dtype(np.int32), np.dtype(np.int64))
#: dtypes CAST converts between
_CASTABLE = frozenset({*_FLOATS, *_INTS, BOOL})
#: how float16 runs: ``storage`` (half in buffers, float32 arithmetic; every OpenCL 1.2 device)
FLOAT16_MODE = "storage"
#: element sizes the pure data movers (RASTER, SELECT, GATHER) copy for any bool/int/float dtype
_MOVABLE_SIZES = frozenset({1, 2, 4, 8})
_MAX_REGION_RANK = 8
_UNARY = frozenset(UNARY_FNS)
_BINARY = frozenset(ARITHMETIC_FNS + COMPARE_FNS)
_INT_BINARY = frozenset(INT_FNS + COMPARE_FNS)
_BOOL_BINARY = frozenset(LOGIC_FNS + COMPARE_FNS)


def _movable(dtype: np.dtype) -> bool:
    return dtype.kind in "biuf" and dtype.itemsize in _MOVABLE_SIZES


def _binary_supported(fn: object, dtype: np.dtype) -> bool:
    if dtype in _FLOATS:
        return fn in _BINARY
    if dtype in _INTS:
        return fn in _INT_BINARY
    return dtype == BOOL and fn in _BOOL_BINARY


def _supported(node: Node, t: list[TensorType], o: list[TensorType]) -> bool:
    op, a = node.op, node.attrs
    if op is Op.RASTER:
        return _movable(o[0].dtype) and all(len(r.size) <= _MAX_REGION_RANK for r in a.regions)
    if op is Op.UNARY:
        return (a.fn in _UNARY and t[0].dtype in _FLOATS) or (a.fn is UnaryFn.NOT and t[0].dtype == BOOL)
    if op is Op.BINARY:
        return t[0].dtype == t[1].dtype and _binary_supported(a.fn, t[0].dtype)
    if op is Op.SELECT:
        return t[0].dtype == BOOL and _movable(o[0].dtype)
    if op is Op.CAST:
        return not a.bitcast and t[0].dtype in _CASTABLE and o[0].dtype in _CASTABLE
    if op is Op.GATHER:
        return _movable(t[0].dtype) and t[1].dtype in _INDEX
    if op in (Op.ARG_REDUCE, Op.CUMULATIVE, Op.TOPK):
        return t[0].dtype in _FLOATS
    if op is Op.SCATTER:
        return (t[0].dtype in (*_FLOATS, *_INTS) and t[1].dtype == np.dtype(np.int64) and t[2].dtype == t[0].dtype
                and a.reduction in SCATTER_FNS)
    same_float = t[0].dtype in _FLOATS and all(x.dtype == t[0].dtype for x in t)
    if op in (Op.MATMUL, Op.CONV2D):
        return a.activation.fn in _UNARY and same_float
    return op in LOWERED_OPS and same_float


def float16_summary(has_fp16: bool) -> str:
    """How float16 runs, for the device description (``walle backends``)."""
    ext = "the device reports cl_khr_fp16" if has_fp16 else "no cl_khr_fp16"
    return f"float16: {FLOAT16_MODE} (half buffers, float32 arithmetic; {ext})"


class OpenCLExecutable(Executable):
    """One compiled segment: device-resident constants and intermediates plus the launch list."""

    def __init__(self, device: dev.Device, segment: Segment) -> None:
        lowered = lower_segment(segment)
        self._device = device
        self._in_names = list(segment.inputs)
        self._in_types = [segment.types[n] for n in segment.inputs]
        self._out_types = lowered.output_types
        self._lowered = lowered
        # Everything that does not change between runs lives on the device from now on.
        self._fixed: dict[int, Any] = {s: device.alloc(n) for s, n in lowered.intermediates.items()}
        for s, value in lowered.constants.items():
            self._fixed[s] = device.upload(value).buffer
        try:
            level = tuning.tuning_level()
            launches = lowered.launches
            if level != "none":
                self._tuning_slots: list[Any] | None = None
                launches = tuning.tune_launches(launches, device.key, dev.cache_dir(), level, self._time_launch)
                self._tuning_slots = None  # the zero-filled buffers were only for timing
            self.plan = dev._ext.Plan(device.context, device.program, launches, lowered.n_slots,
                                      lowered.flag_slot)
        except (ValueError, RuntimeError) as exc:
            raise BackendError(str(exc)) from None

    def _time_launch(self, launch: tuple) -> float | None:
        """Seconds one launch takes on zero-filled buffers, or None when the device rejects it
        (a local size above the kernel's limit, or an index check tripped by the zero data)."""
        lw, device = self._lowered, self._device
        if self._tuning_slots is None:
            slots: list[Any] = [None] * lw.n_slots
            sizes = dict(zip(lw.input_slots, (t.nbytes for t in self._in_types)))
            sizes.update(zip(lw.output_slots, (t.nbytes for t in self._out_types)))
            sizes.update(lw.intermediates)
            for s, nbytes in sizes.items():
                slots[s] = device.upload(np.zeros(nbytes, np.uint8)).buffer
            for s in lw.constants:
                slots[s] = self._fixed[s]
            self._tuning_slots = slots
        slots = self._tuning_slots
        try:
            plan = dev._ext.Plan(device.context, device.program, [launch], lw.n_slots, lw.flag_slot)
            return tuning.best_of(lambda: plan.run(slots))
        except (ValueError, RuntimeError, IndexError):
            return None

    def _as_device(self, name: str, value: Any, t: TensorType) -> Any:
        if isinstance(value, DeviceTensor):
            if value.dtype != t.dtype or value.shape != t.shape:
                raise ValueError(f"[opencl] input {name!r}: {value.dtype}{list(value.shape)}, expected {t}")
            return value.buffer
        array = np.asarray(value)
        if array.dtype != t.dtype or array.shape != t.shape:
            raise ValueError(f"[opencl] input {name!r}: {array.dtype}{list(array.shape)}, expected {t}")
        return self._device.upload(array).buffer

    def run(self, inputs: list[Any]) -> list[DeviceTensor]:
        """Run the segment; inputs may be :class:`DeviceTensor` or host arrays (uploaded first)."""
        if len(inputs) != len(self._in_types):
            raise ValueError(f"[opencl] expected {len(self._in_types)} inputs, got {len(inputs)}")
        lw = self._lowered
        slots: list[Any] = [None] * lw.n_slots
        for s, name, value, t in zip(lw.input_slots, self._in_names, inputs, self._in_types):
            slots[s] = self._as_device(name, value, t)
        outputs = [DeviceTensor(self._device.alloc(t.nbytes), t.shape, t.dtype) for t in self._out_types]
        for s, out in zip(lw.output_slots, outputs):
            slots[s] = out.buffer
        for s, buffer in self._fixed.items():
            slots[s] = buffer
        try:
            self.plan.run(slots)
        except IndexError as exc:
            raise BackendError(str(exc)) from None
        except RuntimeError as exc:
            raise BackendError(str(exc)) from None
        return outputs


class OpenCLBackend(Backend):
    """Any OpenCL 1.2+ device (a GPU when one is present), through the ICD loader."""

    name = "opencl"
    memory_domain = "opencl"
    priority = 50  # below cpu_x86 until the cost-based search decides per op

    @classmethod
    def availability(cls) -> Availability:
        if dev._ext is None:
            return Availability(False, reason=dev.IMPORT_ERROR)
        available, reason, device, has_fp16 = dev._ext.probe()
        if available:
            device = f"{device}; {float16_summary(has_fp16)}"
        return Availability(bool(available), reason=reason, device=device)

    @classmethod
    def supported_ops(cls) -> frozenset[Op]:
        return LOWERED_OPS

    def supports(self, node: Node, types: Mapping[str, TensorType]) -> bool:
        try:
            ins = [types[n] for n in node.inputs]
            outs = [types[n] for n in node.outputs]
        except KeyError:
            return False
        return _supported(node, ins, outs)

    def _device(self) -> dev.Device:
        if dev._ext is None:
            raise BackendError(f"[opencl] native module unavailable: {dev.IMPORT_ERROR}")
        try:
            return dev.shared_device()
        except RuntimeError as exc:
            raise BackendError(str(exc)) from None

    def compile(self, segment: Segment) -> Executable:
        return OpenCLExecutable(self._device(), segment)

    def to_device(self, array: np.ndarray) -> DeviceTensor:
        return self._device().upload(np.asarray(array))

    def to_host(self, value: Any) -> np.ndarray:
        if isinstance(value, DeviceTensor):
            return self._device().download(value)
        return np.asarray(value)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["cache_dir"] = str(dev.cache_dir())
        info["float16"] = {"mode": FLOAT16_MODE, "cl_khr_fp16": bool(self._device().context.has_fp16)}
        return info


@hookimpl
def walle_register_backends() -> list[type[Backend]]:
    return [OpenCLBackend]
