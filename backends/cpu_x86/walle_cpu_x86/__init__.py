"""Walle's x86-64 CPU backend.

The kernels live in the private native module ``walle_cpu_x86._ext``; this package is the thin
Python side: the :class:`CpuX86Backend` plugin and the lowering of a segment into the native plan.
"""

from walle_cpu_x86.plugin import CpuX86Backend, CpuX86Executable

__version__ = "0.1.0"

__all__ = ["CpuX86Backend", "CpuX86Executable"]
