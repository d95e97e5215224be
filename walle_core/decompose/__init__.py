"""Decomposition rules: every ONNX op lowered onto the atomic op set, in the core.

A rule is ``rule(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]``: it reads the
node's inputs through ``ctx`` (``ctx.input``, ``ctx.const_value``, ``ctx.shape``), emits atomic
nodes with ``ctx.emit`` (which constant-folds), and returns the IR names of the node's outputs
in order ("" for an omitted optional one). Backends never see ONNX.
"""

from walle_core.decompose.context import LoweringContext, Rule

__all__ = ["LoweringContext", "Rule"]
