"""ONNX element types -> NumPy dtypes.

bfloat16, float8 and int4 come from ``ml_dtypes`` (through ``onnx.helper``), so a model using
them still loads; whether a backend computes in them is the backend's business.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from walle_core.errors import ModelError

#: strings are NumPy object arrays of ``str``: only the reference backend computes on them
STRING = np.dtype(object)


def onnx_to_numpy(elem_type: int, where: str) -> np.dtype:
    """NumPy dtype of ONNX ``elem_type``; ``where`` names the model element for the error."""
    if elem_type == onnx.TensorProto.STRING:
        return STRING
    if elem_type == onnx.TensorProto.UNDEFINED:
        raise ModelError(f"{where}: element type is undefined")
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, ValueError, TypeError) as exc:
        raise ModelError(f"{where}: unknown element type {elem_type}") from exc
