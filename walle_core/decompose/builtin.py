"""The built-in decomposition rules, registered through the same hook as any plugin's."""

from __future__ import annotations

from collections.abc import Callable

from walle_core.decompose import einsum, elementwise, nn, reduce, tensor
from walle_core.decompose.context import Rule
from walle_core.hookspecs import hookimpl

BUILTIN_RULES: dict[str, Rule] = {
    **elementwise.RULES, **tensor.RULES, **nn.RULES, **reduce.RULES, **einsum.RULES,
}


@hookimpl
def walle_register_decompositions(register: Callable[..., None]) -> None:
    for op_type, rule in BUILTIN_RULES.items():
        register(op_type, rule)
