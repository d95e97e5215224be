"""Walle's OpenCL backend.

The OpenCL runtime glue lives in the private native module ``walle_opencl._ext`` and the kernels
in ``kernels.cl``; this package is the Python side: the :class:`OpenCLBackend` plugin, the device
tensors, the program cache and the lowering of a segment into kernel launches.
"""

from walle_opencl.device import DeviceTensor
from walle_opencl.plugin import OpenCLBackend, OpenCLExecutable

__version__ = "0.1.0"

__all__ = ["DeviceTensor", "OpenCLBackend", "OpenCLExecutable"]
