"""Decomposition rules: every ONNX op lowered onto the atomic op set, in the core.

A rule is ``rule(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]``: it reads the
node's inputs through ``ctx`` (``ctx.input``, ``ctx.const_value``, ``ctx.shape``), emits atomic
nodes with ``ctx.emit`` (which constant-folds), and returns the IR names of the node's outputs
in order ("" for an omitted optional one). Backends never see ONNX.
"""

from typing import Any

__all__ = ["LoweringContext", "Rule"]


def __getattr__(name: str) -> Any:
    # the context imports onnx: load it with the first rule, not with the package (the
    # plugin manager imports ``walle_core.decompose.builtin`` even for compiled models)
    if name in __all__:
        from walle_core.decompose import context

        return getattr(context, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
