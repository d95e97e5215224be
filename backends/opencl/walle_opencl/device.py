"""The process-wide OpenCL device: one context and queue, device tensors, and the program cache.

Every backend instance of a process shares one context, so a :class:`DeviceTensor` made by one
session's backend is valid in any other. The kernels are compiled once per process; the driver's
binary is also kept on disk (keyed by device, driver version and source hash) so the next process
skips the compiler.
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from walle_core.ops import BinaryFn, ReduceFn, UnaryFn
from walle_opencl.lowering import ARITHMETIC_FNS, COMPARE_FNS, FLOAT_SUFFIXES, INT_FNS, UNARY_FNS

try:
    from walle_opencl import _ext
except ImportError as exc:  # reported by availability(), never raised at import
    _ext = None
    IMPORT_ERROR = f"{type(exc).__name__}: {exc}"
else:
    IMPORT_ERROR = ""

#: environment variable naming Walle's cache root (the binaries go to its ``opencl`` folder)
CACHE_ENV = "WALLE_CACHE_DIR"


@dataclass(frozen=True)
class DeviceTensor:
    """A tensor living in an OpenCL buffer: what the opencl backend's executables take and return."""

    buffer: Any  # walle_opencl._ext.Buffer
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def kernel_source() -> str:
    """The OpenCL C source: the function codes generated from ``walle_core.ops`` and the lists of
    functions to instantiate kernels for, ``kernels.cl``, then ``kernels_float.cl`` once per float
    storage type (``FN`` names it: ``f32``, ``f16``)."""
    lines = [f"#define U_{fn.name} {i}" for i, fn in enumerate(UnaryFn)]
    lines += [f"#define B_{fn.name} {i}" for i, fn in enumerate(BinaryFn)]
    lines += [f"#define R_{fn.name} {i}" for i, fn in enumerate(ReduceFn)]
    for group, fns in (("UNARY", UNARY_FNS), ("BINARY", ARITHMETIC_FNS), ("COMPARE", COMPARE_FNS),
                       ("INT_BINARY", INT_FNS)):
        lines.append(f"#define FOR_EACH_{group}(X) " + " ".join(f"X({fn.name})" for fn in fns))
    files = resources.files("walle_opencl")
    lines.append(files.joinpath("kernels.cl").read_text(encoding="utf-8"))
    generic = files.joinpath("kernels_float.cl").read_text(encoding="utf-8")
    for suffix in FLOAT_SUFFIXES.values():
        lines += [f"#define FN {suffix}", generic, "#undef FN"]
    return "\n".join(lines) + "\n"


def cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "walle")
    return Path(root) / "opencl"


def build_options(context: Any) -> str:
    # Division and sqrt must round like NumPy's; OpenCL allows 2.5 ulp otherwise.
    opts = ["-cl-std=CL1.2"]
    if context.correctly_rounded_divide_sqrt:
        opts.append("-cl-fp32-correctly-rounded-divide-sqrt")
    return " ".join(opts)


def cache_key(context: Any, source: str, options: str) -> str:
    digest = hashlib.sha256()
    for part in (context.platform_name, context.device_name, context.driver_version, options, source):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:32]


def load_program(context: Any, source: str) -> Any:
    """Build ``source`` for ``context``'s device, through the on-disk binary cache.

    The returned program's ``from_binary`` says whether the cache was used. An unreadable or
    rejected cache entry is rebuilt from source and overwritten; a read-only cache is ignored.
    """
    options = build_options(context)
    path = cache_dir() / f"{cache_key(context, source, options)}.bin"
    try:
        binary = path.read_bytes()
    except OSError:
        binary = b""
    program = context.build(source, options, binary)
    if not program.from_binary:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(program.binary())
            os.replace(tmp, path)  # atomic: concurrent processes never read half a file
        except OSError:
            pass
    return program


class Device:
    """The shared context plus the kernels program, created on first use."""

    def __init__(self) -> None:
        self.context = _ext.Context()
        self.program = load_program(self.context, kernel_source())
        #: names the device in the tuning cache, like the binary cache key does
        self.key = cache_key(self.context, "", "")

    def alloc(self, nbytes: int) -> Any:
        return self.context.alloc(int(nbytes))

    def upload(self, array: np.ndarray) -> DeviceTensor:
        shape = np.shape(array)  # ascontiguousarray makes a 0-d array 1-d; the tensor keeps its rank
        array = np.ascontiguousarray(array)
        buffer = self.context.alloc(array.nbytes)
        self.context.write(buffer, array.reshape(-1).view(np.uint8))
        return DeviceTensor(buffer, tuple(shape), array.dtype)

    def download(self, tensor: DeviceTensor) -> np.ndarray:
        out = np.empty(tensor.shape, tensor.dtype)
        self.context.read(tensor.buffer, out.reshape(-1).view(np.uint8))
        return out


_lock = threading.Lock()


@functools.cache
def _device_once() -> Device:
    return Device()


def shared_device() -> Device:
    """The process's device (created, and its kernels built, on first call)."""
    with _lock:
        return _device_once()
