"""The built-in decomposition rules, registered through the same hook as any plugin's."""

from __future__ import annotations

from collections.abc import Callable

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
from walle_core.decompose.context import Rule
from walle_core.hookspecs import hookimpl

BUILTIN_RULES: dict[str, Rule] = {
    **elementwise.RULES, **tensor.RULES, **nn.RULES, **reduce.RULES, **einsum.RULES, **indexing.RULES,
    **resize.RULES, **normalize.RULES, **quant.RULES, **control.RULES, **rnn.RULES,
    **spectral.RULES, **grid_sample.RULES, **detection.RULES, **linalg.RULES,
    **sequence.RULES, **strings.RULES, **roi_align.RULES,
    **tfidf.RULES, **deform_conv.RULES,
}


#: rules of the non-default ONNX domains this core covers
DOMAIN_RULES: dict[str, dict[str, Rule]] = {
    "ai.onnx.ml": {**ml.RULES, **trees.RULES},
    "ai.onnx.preview.training": training.RULES,
}


@hookimpl
def walle_register_decompositions(register: Callable[..., None]) -> None:
    for op_type, rule in BUILTIN_RULES.items():
        register(op_type, rule)
    for domain, rules in DOMAIN_RULES.items():
        for op_type, rule in rules.items():
            register(op_type, rule, domain=domain)
