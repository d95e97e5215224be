"""ONNX front-end: parse and validate a model (``load_model``), then lower it to the atomic-op
IR at concrete input shapes (``lower``)."""

from walle_core.onnx.lower import OutputSlot, element_name, lower, lower_with_layout
from walle_core.onnx.model import InputSpec, OnnxModel, load_model

__all__ = ["InputSpec", "OnnxModel", "OutputSlot", "element_name", "load_model", "lower", "lower_with_layout"]
