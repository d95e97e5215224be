"""Small ONNX models built with ``onnx.helper`` and fixed seeded weights."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

#: opset of the models built here; old enough for every importer, new enough for Gemm/BN defaults
OPSET = 17


def _initializer(name: str, array: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(array), name=name)


def example_cnn(seed: int = 0, image_size: int = 32, classes: int = 10) -> onnx.ModelProto:
    """A LeNet-sized image classifier: two conv/batch-norm/relu/max-pool stages, global
    average pooling and a fully connected layer, with input ``image`` [N, 3, H, W] (N symbolic)
    and output ``logits`` [N, classes]."""
    rng = np.random.default_rng(seed)
    inits: list[TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def weight(name: str, *shape: int, scale: float) -> str:
        inits.append(_initializer(name, (rng.standard_normal(shape) * scale).astype(np.float32)))
        return name

    x = "image"
    channels = 3
    for stage, width in enumerate((16, 32), start=1):
        w = weight(f"conv{stage}.w", width, channels, 3, 3, scale=(2.0 / (9 * channels)) ** 0.5)
        b = weight(f"conv{stage}.b", width, scale=0.1)
        scale = _positive(rng, width, inits, f"bn{stage}.scale")
        shift = weight(f"bn{stage}.bias", width, scale=0.1)
        mean = weight(f"bn{stage}.mean", width, scale=0.1)
        var = _positive(rng, width, inits, f"bn{stage}.var")
        nodes += [
            helper.make_node("Conv", [x, w, b], [f"conv{stage}"], name=f"conv{stage}", pads=[1, 1, 1, 1]),
            helper.make_node("BatchNormalization", [f"conv{stage}", scale, shift, mean, var], [f"bn{stage}"],
                             name=f"bn{stage}", epsilon=1e-5),
            helper.make_node("Relu", [f"bn{stage}"], [f"relu{stage}"], name=f"relu{stage}"),
            helper.make_node("MaxPool", [f"relu{stage}"], [f"pool{stage}"], name=f"pool{stage}",
                             kernel_shape=[2, 2], strides=[2, 2]),
        ]
        x, channels = f"pool{stage}", width
    fc_w = weight("fc.w", classes, channels, scale=(1.0 / channels) ** 0.5)
    fc_b = weight("fc.b", classes, scale=0.1)
    nodes += [
        helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["features"], name="flatten", axis=1),
        helper.make_node("Gemm", ["features", fc_w, fc_b], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "walle_example_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, image_size, image_size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="walle.testing")
    onnx.checker.check_model(model, full_check=True)
    return model


def _positive(rng: np.random.Generator, n: int, inits: list[TensorProto], name: str) -> str:
    inits.append(_initializer(name, rng.uniform(0.5, 1.5, n).astype(np.float32)))
    return name
