"""The built-in decomposition rules, registered through the same hook as any plugin's."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from walle_core.hookspecs import hookimpl

if TYPE_CHECKING:
    from walle_core.decompose.context import Rule


def builtin_rules() -> dict[str, dict[str, Rule]]:
    """Domain -> op type -> rule. The rule modules import ``onnx``, so they load when the
    first ONNX model does, not when the plugin manager starts (a compiled model needs none)."""
    from walle_core.decompose import (
        control,
        deform_conv,
        detection,
        einsum,
        elementwise,
        grid_sample,
        indexing,
        linalg,
        ml,
        nn,
        normalize,
        quant,
        reduce,
        resize,
        rnn,
        roi_align,
        sequence,
        spectral,
        strings,
        tensor,
        tfidf,
        training,
        trees,
    )

    return {
        "": {
            **elementwise.RULES, **tensor.RULES, **nn.RULES, **reduce.RULES, **einsum.RULES, **indexing.RULES,
            **resize.RULES, **normalize.RULES, **quant.RULES, **control.RULES, **rnn.RULES,
            **spectral.RULES, **grid_sample.RULES, **detection.RULES, **linalg.RULES,
            **sequence.RULES, **strings.RULES, **roi_align.RULES,
            **tfidf.RULES, **deform_conv.RULES,
        },
        "ai.onnx.ml": {**ml.RULES, **trees.RULES},
        "ai.onnx.preview.training": training.RULES,
    }


@hookimpl
def walle_register_decompositions(register: Callable[..., None]) -> None:
    for domain, rules in builtin_rules().items():
        for op_type, rule in rules.items():
            register(op_type, rule, domain=domain)
