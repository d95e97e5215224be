"""Runner for the shared ONNX node-conformance harness (``--runner
walle_core.testing.onnx_runner:run``): one model file, inputs in ``graph.input`` order."""

from __future__ import annotations

from typing import Any

import onnx

import walle_core as wc


def feed_names(model: onnx.ModelProto) -> list[str]:
    """The graph inputs a caller must feed: ``graph.input`` minus initializers, in order."""
    initializers = {init.name for init in model.graph.initializer}
    return [value.name for value in model.graph.input if value.name not in initializers]


def run(model_path: str, inputs: list[Any]) -> list[Any]:
    """Load ``model_path`` with ``backend="auto"``, run it once, return the outputs in
    ``graph.output`` order. Nothing is cached between calls: every case is a new model."""
    model = onnx.load(model_path)
    names = feed_names(model)
    if len(inputs) != len(names):
        raise wc.WalleError(f"the model has {len(names)} inputs {names}, got {len(inputs)} values")
    session = wc.load(model, backend="auto")
    outputs = session.run(dict(zip(names, inputs)))
    return [outputs[value.name] for value in model.graph.output]
