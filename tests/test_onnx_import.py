"""ONNX import: every supported op against onnx.reference, a small CNN, and malformed models."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx_models import check_against_reference, check_session_against_reference, lower_model, make_model

import walle_core as wc
from walle_core.errors import InputValueRequired, ModelError, UnsupportedOpError, WalleError
from walle_core.ir import TensorType
from walle_core.onnx import load_model, lower
from walle_core.ops import Op
from walle_core.plugins import decomposition_rules
from walle_core.reference import run_graph


def f32(*shape: int, seed: int = 0, low: float = -2.0, high: float = 2.0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(low, high, shape).astype(np.float32)


def ints(*shape: int, seed: int = 0, low: int = -9, high: int = 10, dtype=np.int64) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, high, shape).astype(dtype)


def i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def case(op: str, feeds: dict, inits: dict | None = None, order: list[str] | None = None, opset: int = 17,
         outputs: int = 1, id: str = "", oracle: str = "reference", **attrs):
    """One-node model: node inputs are ``order`` (default feeds then initializers)."""
    inits = inits or {}
    names = order if order is not None else [*feeds, *inits]
    outs = [f"y{i}" for i in range(outputs)]
    node = helper.make_node(op, names, outs, name=f"{op.lower()}_0", **attrs)
    model = make_model([node], feeds, outs, inits, opset)
    return pytest.param(model, feeds, oracle, id=f"{op}-{id}" if id else op)


def conv_t(feeds: dict, inits: dict | None = None, **kwargs):
    """ConvTranspose against ONNX Runtime: onnx.reference mishandles group > 1."""
    return case("ConvTranspose", feeds, inits, oracle="onnxruntime", **kwargs)


X4 = f32(2, 4, 7, 7)
X3 = f32(2, 3, 4, seed=1)

CNN_CASES = [
    case("Conv", {"x": X4}, {"w": f32(6, 4, 3, 3, seed=2)}, id="plain"),
    case("Conv", {"x": X4}, {"w": f32(6, 4, 3, 3, seed=2), "b": f32(6, seed=3)}, pads=[1, 2, 0, 1],
         strides=[2, 1], id="pads-strides-bias"),
    case("Conv", {"x": X4}, {"w": f32(4, 2, 3, 3, seed=2)}, group=2, dilations=[2, 2], pads=[2, 2, 2, 2],
         id="group-dilation"),
    case("Conv", {"x": X4}, {"w": f32(4, 1, 3, 3, seed=2)}, group=4, strides=[2, 2], auto_pad="SAME_UPPER",
         id="depthwise-same-upper"),
    case("Conv", {"x": X4}, {"w": f32(3, 4, 2, 2, seed=2)}, strides=[2, 2], auto_pad="SAME_LOWER",
         id="same-lower"),
    case("Conv", {"x": X4}, {"w": f32(3, 4, 3, 3, seed=2)}, strides=[2, 2], auto_pad="VALID", id="valid"),
    case("Conv", {"x": X3}, {"w": f32(5, 3, 2, seed=2), "b": f32(5, seed=3)}, pads=[1, 0], id="1d"),
    case("Conv", {"x": X4, "w": f32(2, 4, 1, 1, seed=4)}, id="runtime-weight"),
    conv_t({"x": f32(1, 4, 4, 5)}, {"w": f32(4, 3, 3, 3, seed=2)}, id="plain"),
    conv_t({"x": f32(1, 4, 4, 5)}, {"w": f32(4, 3, 3, 3, seed=2), "b": f32(3, seed=3)},
         strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 0], id="stride-pads-outpad"),
    conv_t({"x": f32(1, 4, 4, 5)}, {"w": f32(4, 1, 3, 2, seed=2)}, group=2, strides=[2, 3],
         dilations=[2, 1], id="group-dilation"),
    conv_t({"x": f32(1, 2, 3, 3)}, {"w": f32(2, 2, 3, 3, seed=2)}, strides=[2, 2],
         output_shape=[6, 7], auto_pad="SAME_UPPER", id="output-shape"),
    conv_t({"x": f32(1, 2, 3, 4)}, {"w": f32(2, 2, 4, 4, seed=2)}, strides=[2, 2],
         auto_pad="SAME_UPPER", id="same-upper"),
    conv_t({"x": f32(1, 2, 5, 5)}, {"w": f32(2, 2, 2, 2, seed=2)}, pads=[2, 0, 1, 2],
         id="pads-beyond-kernel"),
    conv_t({"x": f32(2, 3, 5)}, {"w": f32(3, 2, 3, seed=2)}, strides=[2], id="1d"),
    conv_t({"x": f32(1, 2, 3, 3), "w": f32(2, 3, 2, 2, seed=2)}, strides=[2, 2],
         id="runtime-weight"),
    case("MaxPool", {"x": X4}, kernel_shape=[2, 2], strides=[2, 2], id="2x2"),
    case("MaxPool", {"x": X4}, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], id="pads"),
    case("MaxPool", {"x": f32(1, 2, 6, 6)}, kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1, id="ceil"),
    case("MaxPool", {"x": X4}, kernel_shape=[2, 2], dilations=[2, 2], id="dilations"),
    case("MaxPool", {"x": X4}, kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER", id="same-upper"),
    case("MaxPool", {"x": X3}, kernel_shape=[2], strides=[1], id="1d"),
    case("MaxPool", {"x": ints(1, 2, 4, 4, dtype=np.int32)}, kernel_shape=[2, 2], strides=[2, 2], id="int"),
    case("AveragePool", {"x": X4}, kernel_shape=[3, 3], pads=[1, 1, 1, 1], id="exclude-pad"),
    case("AveragePool", {"x": X4}, kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1,
         id="include-pad"),
    case("AveragePool", {"x": f32(1, 2, 6, 6)}, kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1, id="ceil"),
    case("AveragePool", {"x": X3}, kernel_shape=[3], strides=[1], pads=[1, 1], id="1d"),
    case("GlobalAveragePool", {"x": X4}),
    case("GlobalMaxPool", {"x": X4}),
    case("BatchNormalization", {"x": X4}, {"s": f32(4, seed=2), "b": f32(4, seed=3), "m": f32(4, seed=4),
                                           "v": f32(4, seed=5, low=0.5, high=2.0)}, epsilon=1e-3),
    case("BatchNormalization", {"x": f32(5, 4)}, {"s": f32(4, seed=2), "b": f32(4, seed=3),
                                                  "m": f32(4, seed=4), "v": f32(4, seed=5, low=0.5)}, id="2d"),
    # onnx.reference gets BatchNormalization-9 wrong
    case("BatchNormalization", {"x": X4}, {"s": f32(4, seed=2), "b": f32(4, seed=3), "m": f32(4, seed=4),
                                           "v": f32(4, seed=5, low=0.5)}, opset=13, oracle="onnxruntime",
         id="opset13"),
    case("Gemm", {"a": f32(3, 5)}, {"b": f32(5, 4, seed=2)}, id="no-c"),
    case("Gemm", {"a": f32(5, 3)}, {"b": f32(4, 5, seed=2), "c": f32(4, seed=3)}, transA=1, transB=1,
         alpha=0.5, beta=2.0, id="trans-alpha-beta"),
    case("Gemm", {"a": f32(3, 5)}, {"b": f32(5, 4, seed=2), "c": f32(3, 4, seed=3)}, id="c-matrix"),
    case("Gemm", {"a": f32(3, 5), "b": f32(5, 4, seed=2), "c": f32(1, 1, seed=3)}, alpha=2.0,
         id="runtime-operands"),
    case("MatMul", {"a": f32(3, 5), "b": f32(5, 4, seed=2)}, id="2d"),
    case("MatMul", {"a": f32(2, 1, 3, 5), "b": f32(4, 5, 2, seed=2)}, id="batch-broadcast"),
    case("MatMul", {"a": f32(5), "b": f32(2, 5, 4, seed=2)}, id="1d-lhs"),
    case("MatMul", {"a": f32(2, 3, 5), "b": f32(5, seed=2)}, id="1d-rhs"),
    case("MatMul", {"a": f32(5), "b": f32(5, seed=2)}, id="1d-both"),
    case("MatMul", {"a": ints(3, 4, dtype=np.int32), "b": ints(4, 2, seed=1, dtype=np.int32)}, id="int32"),
]

ELEMENTWISE_CASES = [
    *(case(op, {"a": f32(2, 3, 4), "b": f32(3, 1, seed=1, low=0.5)}, id="broadcast")
      for op in ("Add", "Sub", "Mul", "Div")),
    case("Div", {"a": ints(3, 4), "b": ints(4, seed=1, low=1, high=5) * np.array([1, -1, 1, -1])},
         id="int-truncates"),
    case("Add", {"a": ints(2, 3, dtype=np.int32), "b": ints(1, seed=1, dtype=np.int32)}, id="int32"),
    case("Mul", {"a": f32(3, 4).astype(np.float16), "b": f32(4, seed=1).astype(np.float16)}, id="fp16"),
    case("Pow", {"a": f32(3, 4, low=0.1), "b": f32(3, 4, seed=1)}, id="float"),
    case("Pow", {"a": f32(3, 4)}, {"e": np.array(2, np.int64)}, id="int-exponent"),
    *(case(op, {"x": f32(3, 5)}) for op in ("Relu", "Sigmoid", "Tanh", "HardSwish", "Exp", "Neg", "Abs",
                                            "Floor", "Ceil", "Erf", "Sign", "Softplus", "Softsign", "Elu",
                                            "Selu", "Sin", "Cos", "Round")),
    *(case(op, {"x": f32(3, 5, low=0.1)}) for op in ("Log", "Sqrt", "Reciprocal")),
    *(case(op, {"x": f32(3, 5, low=-0.9, high=0.9)}) for op in ("Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh",
                                                                "Asinh", "Atanh")),
    case("Acosh", {"x": f32(3, 5, low=1.0, high=3.0)}),
    case("Swish", {"x": f32(3, 5)}, opset=24, alpha=0.7),
    *(case(op, {"a": ints(3, 4, dtype=np.int32), "b": ints(4, seed=1, dtype=np.int32)}, opset=18)
      for op in ("BitwiseAnd", "BitwiseOr", "BitwiseXor")),
    case("Relu", {"x": ints(3, 5, dtype=np.int32)}, id="int"),
    case("HardSigmoid", {"x": f32(3, 5)}, alpha=0.3, beta=0.4),
    case("LeakyRelu", {"x": f32(3, 5)}, alpha=0.2),
    case("Elu", {"x": f32(3, 5)}, alpha=0.5, id="alpha"),
    case("Selu", {"x": f32(3, 5)}, alpha=1.5, gamma=2.0, id="alpha-gamma"),
    case("Mish", {"x": f32(3, 5)}, opset=18),
    case("Gelu", {"x": f32(3, 5)}, opset=20, id="erf"),
    case("Gelu", {"x": f32(3, 5)}, opset=20, approximate="tanh", id="tanh"),
    case("PRelu", {"x": f32(2, 3, 4)}, {"s": f32(3, 1, seed=1)}),
    case("Clip", {"x": f32(3, 5)}, opset=6, min=-0.5, max=0.7, id="opset6-attrs"),
    case("Clip", {"x": f32(3, 5)}, {"lo": np.array(-0.5, np.float32)}, opset=13, id="min-only"),
    case("Clip", {"x": f32(3, 5)}, {"hi": np.array(0.3, np.float32)}, order=["x", "", "hi"], opset=13,
         id="max-only"),
    case("Clip", {"x": f32(3, 5)}, opset=13, id="no-bounds"),
    case("Clip", {"x": f32(3, 5), "lo": np.array(-1, np.float32), "hi": np.array(1, np.float32)}, opset=13,
         id="runtime-bounds"),
    case("Clip", {"x": ints(3, 5)}, {"lo": i64(-3), "hi": i64(4)}, opset=13, id="int64"),
    *(case(op, {"a": ints(3, 4), "b": ints(4, seed=1)}, id="int") for op in
      ("Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual")),
    case("Less", {"a": f32(3, 4), "b": f32(3, 4, seed=1)}, id="float"),
    *(case(op, {"a": ints(3, 4, low=0, high=2).astype(bool), "b": ints(3, 4, seed=1, low=0, high=2).astype(bool)})
      for op in ("And", "Or", "Xor")),
    case("Not", {"x": ints(3, 4, low=0, high=2).astype(bool)}),
    case("Where", {"c": ints(3, 4, low=0, high=2).astype(bool), "a": f32(3, 4), "b": f32(4, seed=1)}),
    *(case(op, {"a": f32(3, 4), "b": f32(4, seed=1), "c": f32(1, 4, seed=2)}) for op in
      ("Sum", "Mean", "Max", "Min")),
    case("Max", {"a": ints(3, 4)}, id="single"),
    case("Mod", {"a": ints(3, 4), "b": ints(3, 4, seed=1, low=1, high=5)}, id="int"),
    case("Mod", {"a": f32(3, 4), "b": f32(3, 4, seed=1, low=0.5)}, fmod=1, id="fmod"),
    case("BitShift", {"a": ints(3, 4, low=0, dtype=np.uint8), "b": ints(3, 4, low=0, high=3, dtype=np.uint8)},
         direction="LEFT"),
    case("IsNaN", {"x": np.array([1.0, np.nan, -np.inf], np.float32)}),
    *(case("Cast", {"x": f32(3, 4, low=-5, high=5)}, to=to, id=str(to)) for to in
      (onnx.TensorProto.INT32, onnx.TensorProto.INT64, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
       onnx.TensorProto.BOOL, onnx.TensorProto.INT8)),
    case("Cast", {"x": ints(3, 4)}, to=onnx.TensorProto.FLOAT, id="int-to-float"),
    case("CastLike", {"x": ints(3, 4), "like": f32(1)}),
]

TENSOR_CASES = [
    *(case("Flatten", {"x": X4}, axis=axis, id=str(axis)) for axis in (0, 1, 2, -1)),
    case("Reshape", {"x": X4}, {"s": i64(2, -1, 7)}, id="minus-one"),
    case("Reshape", {"x": X4}, {"s": i64(0, 0, 49)}, id="copy-zero"),
    case("Reshape", {"x": f32(0, 3)}, {"s": i64(3, 0)}, opset=14, allowzero=1, id="allowzero"),
    case("Transpose", {"x": X4}, id="default"),
    case("Transpose", {"x": X4}, perm=[0, 2, 3, 1], id="nhwc"),
    case("Concat", {"a": f32(2, 3, 4), "b": f32(2, 1, 4, seed=1), "c": f32(2, 2, 4, seed=2)}, axis=1),
    case("Concat", {"a": ints(2, 3), "b": ints(2, 2, seed=1)}, axis=-1, id="int-neg-axis"),
    case("Slice", {"x": X4}, opset=1, starts=[1, -5], ends=[3, 100], axes=[1, 3], id="opset1"),
    case("Slice", {"x": X4}, {"s": i64(-1, 6), "e": i64(-100, 1), "a": i64(1, 2), "st": i64(-1, -2)},
         opset=13, id="negative-steps"),
    case("Slice", {"x": X4}, {"s": i64(0, 1), "e": i64(2, 9223372036854775807), "a": i64(-1, 2),
                              "st": i64(2, 3)}, opset=13, id="steps-int-max"),
    case("Slice", {"x": X4}, {"s": i64(5), "e": i64(2)}, opset=13, id="empty"),
    case("Squeeze", {"x": f32(1, 3, 1, 4)}, opset=11, axes=[0, -2], id="attr"),
    case("Squeeze", {"x": f32(1, 3, 1, 4)}, {"a": i64(2)}, opset=13, id="input"),
    case("Squeeze", {"x": f32(1, 3, 1, 4)}, opset=13, id="all"),
    case("Unsqueeze", {"x": f32(3, 4)}, opset=11, axes=[0, 3], id="attr"),
    case("Unsqueeze", {"x": f32(3, 4)}, {"a": i64(-1, 1)}, opset=13, id="input"),
    # onnx.reference applies the opset-13 semantics to old opsets too: ONNX Runtime is the oracle
    *(case("Softmax", {"x": f32(2, 3, 4)}, opset=11, axis=axis, id=f"opset11-axis{axis}", oracle="onnxruntime")
      for axis in (1, -1)),
    *(case("Softmax", {"x": f32(2, 3, 4) * 30}, axis=axis, id=f"axis{axis}") for axis in (1, -1)),
    case("LogSoftmax", {"x": f32(2, 3, 4) * 10}, axis=1),
    case("LogSoftmax", {"x": f32(2, 3, 4)}, opset=11, axis=1, id="opset11", oracle="onnxruntime"),
    case("Identity", {"x": X3}),
    case("Dropout", {"x": X3}, outputs=2, opset=13, id="mask"),
    case("Dropout", {"x": X3}, opset=7, ratio=0.3, id="opset7"),
    case("Shape", {"x": X4}, id="all"),
    case("Shape", {"x": X4}, opset=15, start=1, end=-1, id="start-end"),
    case("Size", {"x": X4}),
    case("Gather", {"x": f32(5, 4)}, {"i": i64(0, -1, 3)}, id="axis0"),
    case("Gather", {"x": f32(3, 5, 2)}, {"i": np.array([[1, -2], [4, 0]], np.int32)}, axis=1, id="axis1-2d"),
    case("Gather", {"x": f32(3, 5), "i": np.array(2, np.int64)}, axis=1, id="runtime-scalar"),
    case("Expand", {"x": f32(3, 1)}, {"s": i64(2, 1, 4)}),
    case("Tile", {"x": f32(2, 3)}, {"r": i64(2, 3)}),
    case("Pad", {"x": f32(2, 3, 4)}, {"p": i64(0, 1, 2, 0, 2, 1), "v": np.array(1.5, np.float32)},
         opset=13, id="constant"),
    *(case("Pad", {"x": f32(2, 3, 4)}, {"p": i64(0, 2, 3, 1, 1, 2)}, opset=13, mode=mode, id=mode)
      for mode in ("reflect", "edge")),
    case("Pad", {"x": f32(2, 3, 4)}, {"p": i64(0, 2, 3, 1, 1, 2)}, opset=19, mode="wrap", id="wrap"),
    case("Pad", {"x": f32(2, 3, 4)}, opset=2, pads=[0, 1, 1, 0, 1, 1], value=2.0, id="opset2"),
    case("Pad", {"x": f32(2, 3, 4)}, {"p": i64(1, 2), "a": i64(-1)}, order=["x", "p", "", "a"], opset=18,
         mode="edge", id="axes"),
    case("Split", {"x": f32(2, 6)}, outputs=3, axis=1, opset=13, id="equal"),
    case("Split", {"x": f32(5, 2)}, {"s": i64(1, 4)}, outputs=2, opset=13, id="sizes-input"),
    case("Split", {"x": f32(5, 2)}, outputs=2, opset=11, split=[3, 2], id="sizes-attr"),
    case("Split", {"x": f32(7, 2)}, outputs=3, opset=18, num_outputs=3, id="num-outputs-uneven"),
    case("DepthToSpace", {"x": f32(1, 8, 2, 3)}, blocksize=2, id="dcr"),
    case("DepthToSpace", {"x": f32(1, 8, 2, 3)}, blocksize=2, mode="CRD", id="crd"),
    case("SpaceToDepth", {"x": f32(1, 2, 4, 6)}, blocksize=2),
]

CONSTANT_CASES = [
    pytest.param(make_model([helper.make_node("Constant", [], ["y"], **{name: value})], {}, ["y"]), {},
                 "reference", id=f"Constant-{name}")
    for name, value in [("value", numpy_helper.from_array(f32(2, 3))), ("value_float", 1.5),
                        ("value_floats", [1.0, 2.5]), ("value_int", 7), ("value_ints", [1, 2, 3])]
] + [
    case("ConstantOfShape", {}, {"s": i64(2, 3)}, id="default"),
    case("ConstantOfShape", {}, {"s": i64(2, 3)}, value=numpy_helper.from_array(np.array([4], np.int32)),
         id="int32"),
    case("Range", {}, {"a": np.array(1, np.int64), "b": np.array(10, np.int64), "d": np.array(3, np.int64)},
         id="int"),
    case("Range", {}, {"a": np.array(1, np.float32), "b": np.array(-2, np.float32),
                       "d": np.array(-0.5, np.float32)}, id="float"),
]

REDUCE_CASES = [
    *(case(op, {"x": f32(2, 3, 4)}, opset=13, axes=[1], keepdims=keep, id=f"keep{keep}")
      for op in ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
                 "ReduceSumSquare", "ReduceLogSumExp") for keep in (0, 1)),
    case("ReduceSum", {"x": f32(2, 3, 4)}, opset=11, axes=[0, -1], id="opset11"),
    case("ReduceSum", {"x": f32(2, 3, 4)}, {"a": i64(0, 2)}, opset=13, keepdims=0, id="axes-input"),
    case("ReduceSum", {"x": f32(2, 3, 4)}, opset=13, id="all"),
    case("ReduceSum", {"x": f32(2, 3, 4)}, opset=13, noop_with_empty_axes=1, id="noop"),
    case("ReduceSum", {"x": ints(2, 3, 4)}, opset=13, keepdims=0, id="int"),
    case("ReduceMax", {"x": f32(2, 3, 4)}, {"a": i64(-1)}, opset=18, id="opset18"),
    case("ReduceMean", {"x": f32(2, 3, 4)}, opset=18, keepdims=0, id="opset18-all"),
    case("ReduceLogSum", {"x": f32(2, 3, 4, low=0.1)}, opset=13, axes=[2]),
    case("ArgMax", {"x": f32(3, 4)}, axis=1, id="axis1"),
    case("ArgMax", {"x": ints(3, 4, low=0, high=3)}, axis=0, keepdims=0, select_last_index=1, id="last"),
    case("ArgMin", {"x": f32(3, 4)}, axis=-1, keepdims=0),
    case("TopK", {"x": f32(3, 6)}, {"k": i64(3)}, outputs=2, id="largest"),
    case("TopK", {"x": ints(3, 6, low=0, high=4)}, {"k": i64(2)}, outputs=2, axis=0, largest=0, id="smallest"),
    case("CumSum", {"x": f32(3, 4)}, {"a": np.array(1, np.int32)}, id="plain"),
    case("CumSum", {"x": ints(3, 4)}, {"a": np.array(-2, np.int64)}, exclusive=1, reverse=1, id="excl-rev"),
    case("LayerNormalization", {"x": f32(2, 3, 4)}, {"s": f32(4, seed=1), "b": f32(4, seed=2)}, id="last"),
    case("LayerNormalization", {"x": f32(2, 3, 4)}, {"s": f32(3, 4, seed=1)}, axis=1, epsilon=1e-3,
         outputs=3, id="axis1-stats"),
    case("InstanceNormalization", {"x": f32(2, 3, 4, 5)}, {"s": f32(3, seed=1), "b": f32(3, seed=2)}),
    case("Einsum", {"a": f32(3, 4), "b": f32(4, 5, seed=1)}, equation="ij,jk->ik", id="matmul"),
    case("Einsum", {"a": f32(2, 3, 4), "b": f32(2, 4, 5, seed=1)}, equation="bij,bjk->bki", id="batched"),
    case("Einsum", {"a": f32(3, 4), "b": f32(5, seed=1)}, equation="ij,k", id="outer-implicit"),
    case("Einsum", {"a": f32(3, 4, 2), "b": f32(4, 6, seed=1)}, equation="ijx,jk->ki", id="sum-out"),
    case("Einsum", {"a": f32(3, 4, 2)}, equation="ijk->kj", id="unary"),
]


@pytest.mark.parametrize("model, feeds, oracle", CNN_CASES + ELEMENTWISE_CASES + TENSOR_CASES + CONSTANT_CASES
                         + REDUCE_CASES)
def test_op_matches_onnx_reference(model: onnx.ModelProto, feeds: dict, oracle: str) -> None:
    check_against_reference(model, feeds, oracle=oracle)


def test_sparse_constant_densifies() -> None:
    values = f32(3)
    sparse = helper.make_sparse_tensor(numpy_helper.from_array(values), numpy_helper.from_array(i64(1, 4, 5)),
                                       [2, 3])
    graph = lower_model(make_model([helper.make_node("Constant", [], ["y"], sparse_value=sparse)], {}, ["y"]), {})
    expected = np.zeros(6, np.float32)
    expected[[1, 4, 5]] = values
    np.testing.assert_array_equal(run_graph(graph, {})[0], expected.reshape(2, 3))


def test_shape_chain_folds_to_one_reshape() -> None:
    """Shape -> Gather -> Unsqueeze -> Concat -> Reshape folds: only the data copy remains."""
    x = f32(2, 3, 4)
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "zero1"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"]),
    ]
    model = make_model(nodes, {"x": x}, ["y"], {"zero": i64(0)[0], "zero1": i64(0), "minus1": i64(-1)})
    graph = check_against_reference(model, {"x": x})
    assert [n.op for n in graph.nodes] == [Op.RASTER]
    assert len(graph.nodes[0].attrs.regions) == 1
    assert graph.nodes[0].origin == "" or graph.nodes[0].origin_op == "Reshape"
    assert set(graph.constants) == set()


def test_batchnorm_becomes_one_mul_and_one_add() -> None:
    x = X4
    params = {"s": f32(4, seed=2), "b": f32(4, seed=3), "m": f32(4, seed=4), "v": f32(4, seed=5, low=0.5)}
    model = make_model([helper.make_node("BatchNormalization", ["x", *params], ["y"])], {"x": x}, ["y"],
                       params)
    graph = lower_model(model, {"x": x})
    assert sorted(graph.op_histogram().items()) == [("binary", 2)]


def _small_cnn() -> tuple[onnx.ModelProto, dict]:
    x = f32(2, 3, 16, 16, seed=10)
    inits = {
        "w1": f32(8, 3, 3, 3, seed=11) * 0.3, "b1": f32(8, seed=12),
        "bn_s": f32(8, seed=13), "bn_b": f32(8, seed=14), "bn_m": f32(8, seed=15) * 0.1,
        "bn_v": f32(8, seed=16, low=0.5, high=1.5),
        "w2": f32(8, 8, 3, 3, seed=17) * 0.2, "b2": f32(8, seed=18),
        "fc_w": f32(10, 8, seed=19), "fc_b": f32(10, seed=20),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("BatchNormalization", ["c1", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn"], name="bn1"),
        helper.make_node("Relu", ["bn"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2], name="pool1"),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Add", ["c2", "p1"], ["res"], name="residual"),
        helper.make_node("GlobalAveragePool", ["res"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1, name="fc"),
        helper.make_node("Softmax", ["logits"], ["prob"], axis=1, name="softmax"),
    ]
    # shuffled node order: ONNX allows it, the importer sorts
    return make_model(nodes, {"x": x}, ["prob"], inits, opset=17), {"x": x}


def test_small_cnn_matches_reference() -> None:
    model, feeds = _small_cnn()
    expected = ReferenceEvaluator(model).run(None, feeds)[0]
    # shuffled node order: ONNX allows it and the importer sorts (onnx.reference would not)
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend([nodes[i] for i in (5, 0, 9, 1, 2, 4, 3, 6, 8, 7)])
    graph = lower_model(model, feeds)
    np.testing.assert_allclose(run_graph(graph, feeds)[0], expected, rtol=1e-5, atol=1e-6)
    origins = {n.origin for n in graph.nodes}
    assert {"conv1", "conv2", "pool1", "fc", "softmax"} <= origins
    assert graph.output_names == ["prob"]


def test_model_facts() -> None:
    model, _ = _small_cnn()
    om = load_model(model)
    assert om.op_types()["Conv"] == 2
    assert [s.name for s in om.inputs] == ["x"]
    assert om.inputs[0].dtype == np.float32 and om.inputs[0].shape == (2, 3, 16, 16)
    assert set(om.initializers) >= {"w1", "fc_b"} and om.opsets == {"": 17}
    seen: set[str] = {"x", *om.initializers}
    for node in om.nodes:  # topological order
        assert all(name in seen for name in node.input)
        seen.update(node.output)


def test_symbolic_dims_relower_per_shape() -> None:
    x_info = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 4, None])
    graph = helper.make_graph([helper.make_node("Shape", ["x"], ["s"]),
                               helper.make_node("Reshape", ["x", "flat"], ["y"]),
                               helper.make_node("Relu", ["y"], ["z"])], "dyn", [x_info],
                              [helper.make_empty_tensor_value_info("z"), helper.make_empty_tensor_value_info("s")],
                              [numpy_helper.from_array(i64(0, -1), "flat")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    om = load_model(model)
    assert om.inputs[0].shape == ("batch", 4, None)
    for shape in [(1, 4, 3), (5, 4, 2)]:
        feeds = {"x": f32(*shape)}
        check_against_reference(model, feeds)
        g = lower(om, {"x": TensorType(np.dtype(np.float32), shape)}, decomposition_rules())
        np.testing.assert_array_equal(g.constants[g.outputs[1]], np.array(shape))


def test_output_aliases_input_and_duplicates() -> None:
    x = f32(2, 3)
    nodes = [helper.make_node("Identity", ["x"], ["a"]), helper.make_node("Identity", ["x"], ["b"])]
    model = make_model(nodes, {"x": x}, ["a", "b"])
    graph = check_against_reference(model, {"x": x})
    assert len(set(graph.outputs)) == 2 and graph.output_names == ["a", "b"]


def test_external_data_loads_relative_to_model(tmp_path) -> None:
    x, w = f32(3, 8), f32(8, 300, seed=1)
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], {"x": x}, ["y"], {"w": w})
    path = tmp_path / "model.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location="weights.bin", size_threshold=0)
    assert (tmp_path / "weights.bin").exists()
    om = load_model(path)
    np.testing.assert_array_equal(om.initializers["w"], w)
    (tmp_path / "weights.bin").unlink()
    with pytest.raises(ModelError, match="external"):
        load_model(path)


# -- malformed models ------------------------------------------------------------------------

def _relu_model() -> onnx.ModelProto:
    return make_model([helper.make_node("Relu", ["x"], ["y"], name="relu_0")], {"x": f32(2, 3)}, ["y"])


def test_truncated_bytes() -> None:
    data = _relu_model().SerializeToString()
    with pytest.raises(ModelError, match="not a valid ONNX protobuf"):
        load_model(data[: len(data) // 2 + 3])
    with pytest.raises(ModelError):
        load_model(b"\xff\xff\xff garbage")


def test_missing_file_and_wrong_type(tmp_path) -> None:
    with pytest.raises(ModelError, match="cannot read"):
        load_model(tmp_path / "nope.onnx")
    with pytest.raises(ModelError, match="cannot load a model"):
        load_model(42)  # type: ignore[arg-type]


def test_cycle_is_reported() -> None:
    nodes = [helper.make_node("Add", ["x", "b"], ["a"], name="first"),
             helper.make_node("Relu", ["a"], ["b"], name="second")]
    model = make_model(nodes, {"x": f32(2)}, ["b"])
    with pytest.raises(ModelError, match="cycle.*first"):
        load_model(model)


def test_missing_input_names_node_and_slot() -> None:
    model = make_model([helper.make_node("Add", ["x", "ghost"], ["y"], name="add_1")], {"x": f32(2)}, ["y"])
    with pytest.raises(ModelError, match=r"'add_1' \(Add\) input 1 reads 'ghost'"):
        load_model(model)


def test_undefined_graph_output() -> None:
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], {"x": f32(2)}, ["nothing"])
    with pytest.raises(ModelError, match="graph output 'nothing'"):
        load_model(model)


def test_duplicate_output_name() -> None:
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="r1"), helper.make_node("Neg", ["x"], ["y"], name="r2")]
    with pytest.raises(ModelError, match="'r2'.*already produced by node 'r1'"):
        load_model(make_model(nodes, {"x": f32(2)}, ["y"]))


def test_unsupported_ops_are_all_listed() -> None:
    nodes = [helper.make_node("Foo", ["x"], ["a"], name="foo_1"), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Bar", ["b"], ["y"], name="bar_1")]
    om = load_model(make_model(nodes, {"x": f32(2)}, ["y"], opset=17))
    with pytest.raises(UnsupportedOpError) as info:
        om.check_supported(decomposition_rules())
    message = str(info.value)
    assert "unsupported op 'Foo' (domain '', opset 17) at node 'foo_1'" in message
    assert "'Bar'" in message and "bar_1" in message and "Relu" not in message


def test_unimported_domain() -> None:
    node = helper.make_node("Thing", ["x"], ["y"], name="t", domain="com.example")
    with pytest.raises(ModelError, match="domain 'com.example'"):
        load_model(make_model([node], {"x": f32(2)}, ["y"]))


def test_missing_default_opset() -> None:
    model = _relu_model()
    del model.opset_import[:]
    with pytest.raises(ModelError, match="uses domain '', which the model does not import"):
        load_model(model)


def test_bad_initializer_size() -> None:
    model = make_model([helper.make_node("Add", ["x", "w"], ["y"])], {"x": f32(4)}, ["y"], {"w": f32(4)})
    model.graph.initializer[0].raw_data = model.graph.initializer[0].raw_data[:-4]
    with pytest.raises(ModelError, match="initializer 'w': raw_data has 12 bytes"):
        load_model(model)
    model.graph.initializer[0].ClearField("raw_data")
    model.graph.initializer[0].float_data.extend([1.0, 2.0])
    with pytest.raises(ModelError, match="float_data holds 2 values"):
        load_model(model)


def test_negative_and_absurd_dims() -> None:
    model = make_model([helper.make_node("Add", ["x", "w"], ["y"])], {"x": f32(4)}, ["y"], {"w": f32(4)})
    model.graph.initializer[0].dims[0] = -4
    with pytest.raises(ModelError, match="negative dimension"):
        load_model(model)
    model.graph.initializer[0].dims[:] = [1 << 30, 1 << 30]
    with pytest.raises(ModelError, match="too large"):
        load_model(model)
    bad_input = _relu_model()
    bad_input.graph.input[0].type.tensor_type.shape.dim[0].dim_value = -2
    with pytest.raises(ModelError, match="graph input 'x': negative dimension"):
        load_model(bad_input)


def test_model_without_graph() -> None:
    with pytest.raises(ModelError, match="no graph"):
        load_model(onnx.ModelProto(ir_version=8).SerializeToString())


@pytest.mark.parametrize("node, feeds, inits, pattern", [
    (helper.make_node("Reshape", ["x", "s"], ["y"], name="rs"), {"x": f32(2, 3), "s": i64(3, 2)}, {},
     "Reshape node 'rs': input 1 \\(shape\\) depends on graph input 's'"),
    (helper.make_node("Reshape", ["x", "s"], ["y"], name="rs"), {"x": f32(2, 3)}, {"s": i64(4, 2)},
     "Reshape node 'rs': cannot reshape"),
    (helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="c3d"), {"x": f32(1, 2, 2, 2, 2)},
     {"w": f32(1, 1, 1, 1, 1)}, "ConvTranspose node 'c3d': weight \\(1, 1, 1, 1, 1\\) does not match 2 input"),
    (helper.make_node("Conv", ["x", "w"], ["y"], name="c4d"), {"x": f32(1, 1, 2, 2, 2, 2)},
     {"w": f32(1, 1, 1, 1, 1, 1)}, "Conv node 'c4d': only 1-D, 2-D and 3-D"),
    (helper.make_node("NonZero", ["x"], ["y"], name="nz"), {"x": f32(4)}, {},
     "NonZero node 'nz': input 0 \\(X\\) depends on graph input 'x'"),
    (helper.make_node("Conv", ["x", "w"], ["y"], name="cg"), {"x": f32(1, 3, 4, 4)}, {"w": f32(2, 2, 1, 1)},
     "conv2d.*groups.*Conv node 'cg'"),
    (helper.make_node("MaxPool", ["x"], ["y", "idx"], kernel_shape=[5, 2], name="mp"), {"x": f32(1, 1, 4, 4)},
     {}, "MaxPool node 'mp': window 5 does not fit spatial size 4"),
    (helper.make_node("Gather", ["x", "i"], ["y"], name="g"), {"x": f32(3)}, {"i": i64(5)},
     "Gather node 'g': an index is out of range"),
    (helper.make_node("Add", ["x", "i"], ["y"], name="mixed"), {"x": f32(3)}, {"i": i64(5)},
     "Add node 'mixed': input dtypes differ"),
])
def test_bad_node_errors_name_the_node(node, feeds, inits, pattern) -> None:
    model = make_model([node], feeds, list(node.output), inits)
    with pytest.raises(WalleError, match=pattern):
        lower_model(model, feeds)


# -- breadth: ops added by decomposition, each against onnx.reference (or ORT) ----------------

def qcase(op: str, feeds: dict, inits: dict | None = None, opset: int = 21, **attrs):
    return case(op, feeds, inits, opset=opset, **attrs)


IDX = np.array([[0, 2, 1], [1, 0, 2]], dtype=np.int64)
INDEXING_CASES = [
    case("GatherElements", {"x": f32(2, 3)}, {"i": IDX}, axis=1, id="axis1"),
    case("GatherElements", {"x": f32(3, 3), "i": np.array([[-1, 0, 2]], dtype=np.int64)}, id="negative"),
    case("GatherND", {"x": f32(2, 3, 4)}, {"i": np.array([[0, 1], [1, 2]], dtype=np.int64)}, id="rows"),
    case("GatherND", {"x": f32(2, 3, 4)}, {"i": np.array([[1], [2]], dtype=np.int64)}, batch_dims=1,
         id="batch-dims"),
    case("ScatterElements", {"x": f32(3, 3), "u": f32(2, 3, seed=1)}, {"i": IDX}, order=["x", "i", "u"],
         axis=0, reduction="add", opset=18, id="add"),
    case("ScatterElements", {"x": f32(3, 3), "u": f32(2, 3, seed=1)}, {"i": IDX}, order=["x", "i", "u"],
         axis=1, id="assign"),
    case("ScatterND", {"x": f32(4, 3), "u": f32(2, 3, seed=1)}, {"i": np.array([[3], [0]], dtype=np.int64)},
         order=["x", "i", "u"], id="rows"),
    case("ScatterND", {"x": f32(4, 3), "u": f32(2, seed=1)}, {"i": np.array([[3, 1], [3, 1]], dtype=np.int64)},
         order=["x", "i", "u"], reduction="mul", opset=18, id="mul-duplicates"),
    case("TensorScatter", {"c": f32(2, 2, 5, 3), "u": f32(2, 2, 2, 3, seed=1)},
         {"w": np.array([1, 4], dtype=np.int64)}, mode="circular", opset=24, id="circular"),
    case("OneHot", {"i": np.array([[0, 3], [-1, 5]], dtype=np.int64)},
         {"d": np.array(4, dtype=np.int64), "v": np.array([-1.0, 2.0], dtype=np.float32)}, axis=0, opset=11),
    case("Trilu", {"x": f32(2, 4, 5)}, {"k": np.array(1, dtype=np.int64)}, upper=0, opset=14),
    case("EyeLike", {"x": f32(3, 4)}, k=-1, dtype=onnx.TensorProto.INT32),
    case("CumProd", {"x": f32(2, 5)}, {"a": np.array(1, dtype=np.int64)}, exclusive=1, reverse=1, opset=26),
    case("ReverseSequence", {"x": f32(4, 3, 2)}, {"l": np.array([4, 1, 3], dtype=np.int64)}, opset=10),
    case("Compress", {"x": f32(3, 4)}, {"c": np.array([True, False, True])}, axis=0, opset=11),
    case("Unique", {}, {"x": np.array([2, 1, 1, 3, 4, 3], dtype=np.float32)}, outputs=4, sorted=0, opset=11),
]

ACTIVATION_CASES = [
    case("Mod", {"a": f32(6), "b": f32(6, seed=1)}, id="float-fmod0"),
    case("IsInf", {}, {"x": np.array([1.0, np.inf, -np.inf, np.nan], dtype=np.float32)}, detect_negative=0,
         opset=10),
    case("BitwiseNot", {"x": ints(5, dtype=np.uint8, low=0, high=200)}, opset=18),
    case("Shrink", {"x": f32(7)}, lambd=0.7, bias=0.2, opset=9),
    case("ThresholdedRelu", {"x": f32(7)}, alpha=0.3, opset=10),
    case("Celu", {"x": f32(7)}, alpha=2.0, opset=12),
    case("Hardmax", {"x": f32(3, 4)}, axis=0, opset=13),
    # onnx.reference sums x (not |x|) for p=1
    case("LpNormalization", {"x": f32(3, 4)}, axis=0, p=1, oracle="onnxruntime"),
    # onnx.reference's LRN walks the batch axis instead of the channels
    case("LRN", {"x": f32(2, 5, 3, 3)}, size=3, alpha=1e-3, beta=0.6, bias=1.5, oracle="onnxruntime"),
    case("Cast", {"x": np.array([1e5, -1e5, 3.3, -0.01], dtype=np.float32)},
         to=onnx.TensorProto.FLOAT8E4M3FN, opset=19, id="float8-saturate"),
    case("SpaceToDepth", {"x": f32(1, 2, 4, 6)}, blocksize=2, mode="CRD", opset=25, id="crd"),
]

RESIZE = {"x": f32(1, 2, 4, 5)}
RESIZE_CASES = [
    case("Resize", RESIZE, {"r": np.zeros(0, np.float32), "s": np.array([1, 1, 2, 1.5], np.float32)},
         mode="nearest", opset=19, id="nearest-up"),
    case("Resize", RESIZE, {"r": np.zeros(0, np.float32), "s": np.array([1, 1, 0.6, 0.8], np.float32)},
         mode="linear", opset=19, id="linear-down"),
    case("Resize", RESIZE, {"r": np.zeros(0, np.float32), "s": np.array([1, 1, 0.5, 0.6], np.float32)},
         mode="cubic", antialias=1, opset=19, id="cubic-antialias"),
    case("Resize", RESIZE, {"r": np.zeros(0, np.float32), "s": np.zeros(0, np.float32),
                            "z": np.array([3, 7], np.int64)}, mode="cubic", axes=[2, 3],
         coordinate_transformation_mode="align_corners", exclude_outside=1, opset=19, id="sizes-align"),
    case("Resize", RESIZE, {"r": np.array([0.1, 0.2, 0.9, 0.7], np.float32), "s": np.zeros(0, np.float32),
                            "z": np.array([3, 3], np.int64)}, mode="linear", axes=[2, 3],
         coordinate_transformation_mode="tf_crop_and_resize", extrapolation_value=9.0, opset=19, id="crop"),
    case("Resize", {"x": ints(1, 1, 3, 3, dtype=np.uint8, low=0, high=255)},
         {"r": np.zeros(0, np.float32), "s": np.array([1, 1, 1.5, 1.5], np.float32)}, mode="linear", opset=19,
         id="uint8-linear"),
]

Q_X = f32(2, 4, 3, low=-3, high=3)
QUANT_CASES = [
    qcase("QuantizeLinear", {"x": Q_X}, {"s": np.array(0.05, np.float32), "z": np.array(-3, np.int8)}),
    qcase("QuantizeLinear", {"x": Q_X}, {"s": f32(2, 2, 3, low=0.01, high=0.1), "z": np.zeros((2, 2, 3), np.uint8)},
          axis=1, block_size=2, id="blocked"),
    qcase("DequantizeLinear", {"x": ints(2, 4, 3, dtype=np.int8)},
          {"s": f32(4, low=0.1, high=1), "z": ints(4, dtype=np.int8)}, axis=1, id="per-axis"),
    qcase("MatMulInteger", {"a": ints(3, 4, dtype=np.uint8, low=0, high=255)},
          {"b": ints(4, 2, dtype=np.uint8, low=0, high=255), "az": np.array(12, np.uint8)}, opset=10),
    qcase("QLinearMatMul", {"a": ints(3, 4, dtype=np.uint8, low=0, high=255)},
          {"as": np.array(0.02, np.float32), "az": np.array(100, np.uint8),
           "b": ints(4, 2, dtype=np.uint8, low=0, high=255), "bs": np.array(0.03, np.float32),
           "bz": np.array(120, np.uint8), "ys": np.array(0.5, np.float32), "yz": np.array(7, np.uint8)}),
    qcase("ConvInteger", {"x": ints(1, 2, 4, 4, dtype=np.uint8, low=0, high=255)},
          {"w": ints(3, 2, 2, 2, dtype=np.uint8, low=0, high=255), "xz": np.array(9, np.uint8)}, opset=10,
          pads=[1, 1, 0, 0]),
]

SPATIAL_CASES = [
    case("Conv", {"x": f32(1, 2, 4, 5, 5)}, {"w": f32(4, 1, 2, 3, 2, seed=2), "b": f32(4, seed=3)}, group=2,
         strides=[2, 1, 2], pads=[1, 0, 1, 0, 1, 1], dilations=[1, 2, 1], id="3d"),
    case("MaxPool", {"x": f32(1, 2, 5, 4, 6)}, kernel_shape=[2, 3, 2], strides=[2, 1, 2], pads=[1, 1, 0, 0, 1, 1],
         id="3d"),
    case("AveragePool", {"x": f32(1, 2, 5, 4, 6)}, kernel_shape=[3, 2, 2], pads=[1, 0, 1, 1, 1, 0], id="3d"),
    case("LpPool", {"x": f32(1, 2, 5, 5)}, kernel_shape=[2, 2], strides=[2, 2], p=3, opset=18),
]

RNN_X = f32(4, 2, 3)


def _rnn_weights(gates: int, dirs: int = 1, hidden: int = 5) -> dict:
    return {"w": f32(dirs, gates * hidden, 3, seed=2, low=-0.5, high=0.5),
            "r": f32(dirs, gates * hidden, hidden, seed=3, low=-0.5, high=0.5),
            "b": f32(dirs, 2 * gates * hidden, seed=4, low=-0.5, high=0.5)}


RNN_CASES = [
    case("RNN", {"x": RNN_X}, _rnn_weights(1), hidden_size=5, outputs=2, opset=14),
    # onnx.reference ignores sequence_lens
    case("GRU", {"x": RNN_X}, {**_rnn_weights(3, 2), "l": np.array([4, 2], np.int32)}, hidden_size=5,
         direction="bidirectional", outputs=2, opset=14, linear_before_reset=1, oracle="onnxruntime",
         id="bidirectional"),
    case("LSTM", {"x": RNN_X}, _rnn_weights(4), hidden_size=5, outputs=3, opset=14, clip=2.0),
]


GRID = f32(2, 3, 4, 2, seed=5, low=-1.2, high=1.2)
SIGNAL_CASES = [
    case("DFT", {"x": f32(2, 6, 1)}, {"n": np.array(8, np.int64), "a": np.array(1, np.int64)}, onesided=1,
         opset=20, id="rfft-padded"),
    case("DFT", {"x": f32(2, 5, 2)}, {"n": np.array(5, np.int64), "a": np.array(-2, np.int64)}, inverse=1,
         opset=20, id="inverse-complex"),
    case("STFT", {"x": f32(1, 16, 1)}, {"s": np.array(4, np.int64), "w": np.hanning(8).astype(np.float32)},
         opset=17),
    case("GridSample", {"x": f32(2, 2, 3, 5), "g": GRID}, mode="linear", padding_mode="zeros", opset=20,
         id="linear-zeros"),
    case("GridSample", {"x": f32(2, 2, 3, 5), "g": GRID}, mode="cubic", padding_mode="border", opset=20,
         id="cubic-border"),
    case("GridSample", {"x": f32(2, 2, 3, 5), "g": GRID}, mode="nearest", padding_mode="reflection",
         align_corners=1, opset=20, id="nearest-reflection"),
    case("BatchNormalization", {"x": X4}, {"s": f32(4, seed=2), "b": f32(4, seed=3), "m": f32(4, seed=4),
                                           "v": f32(4, seed=5, low=0.5)}, outputs=3, training_mode=1,
         momentum=0.8, opset=15, id="training"),
    case("MaxUnpool", {"x": f32(1, 1, 2, 2)}, {"i": np.array([[[[5, 7], [13, 15]]]], np.int64),
                                               "o": np.array([1, 1, 5, 5], np.int64)}, kernel_shape=[2, 2],
         strides=[2, 2], opset=11),
    case("Col2Im", {"x": f32(1, 8, 6)}, {"i": np.array([4, 5], np.int64), "b": np.array([2, 2], np.int64)},
         pads=[1, 0, 0, 1], strides=[2, 2], opset=18),
    case("NonMaxSuppression", {}, {"b": f32(1, 6, 4, low=0, high=4), "s": f32(1, 2, 6, seed=1, low=0, high=1),
                                   "m": np.array([3], np.int64), "i": np.array([0.3], np.float32),
                                   "t": np.array([0.2], np.float32)}, opset=11),
]


def test_training_and_ml_domains() -> None:
    """ai.onnx.preview.training and ai.onnx.ml rules, without the default domain imported."""
    # two tensors: onnx.reference returns float64 for a single one
    names = ["x1", "x2", "g1", "g2", "v1", "v2", "h1", "h2"]
    feeds = {name: f32(4, seed=i, low=0.1) for i, name in enumerate(names)}
    inits = {"r": np.array(0.1, np.float32), "t": np.array(3, np.int64)}
    outs = ["x1n", "x2n", "v1n", "v2n", "h1n", "h2n"]
    node = helper.make_node("Adam", ["r", "t", *names], outs, alpha=0.8, norm_coefficient=0.1,
                            domain="ai.onnx.preview.training")
    model = make_model([node], feeds, outs, inits)
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("ai.onnx.preview.training", 1))
    check_against_reference(model, feeds)
    node = helper.make_node("Binarizer", ["x"], ["y"], threshold=0.2, domain="ai.onnx.ml")
    model = make_model([node], {"x": f32(5)}, ["y"])
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("ai.onnx.ml", 3))
    check_against_reference(model, {"x": f32(5)})


@pytest.mark.parametrize("model, feeds, oracle", INDEXING_CASES + ACTIVATION_CASES + RESIZE_CASES + QUANT_CASES
                         + SPATIAL_CASES + RNN_CASES + SIGNAL_CASES)
def test_breadth_op_matches_onnx_reference(model: onnx.ModelProto, feeds: dict, oracle: str) -> None:
    check_against_reference(model, feeds, rtol=1e-4, atol=1e-5, oracle=oracle)


def test_shape_input_is_value_specialised() -> None:
    """A shape fed as a graph input is read from ``input_values`` and recorded in value_inputs;
    without its value, lowering asks for it by name."""
    feeds = {"x": f32(2, 6), "s": i64(3, 4)}
    model = make_model([helper.make_node("Reshape", ["x", "s"], ["y"])], feeds, ["y"])
    om = load_model(model)
    types = {n: TensorType(v.dtype, v.shape) for n, v in feeds.items()}
    with pytest.raises(InputValueRequired, match="graph input 's'") as info:
        lower(om, types, decomposition_rules())
    assert info.value.input_name == "s"
    graph = lower(om, types, decomposition_rules(), input_values=feeds)
    assert graph.value_inputs == ["s"]
    np.testing.assert_array_equal(run_graph(graph, feeds)[0], feeds["x"].reshape(3, 4))


def test_value_only_needed_inputs_are_specialised() -> None:
    """A computed shape (Cast -> Add of an input) is evaluated from the input's value; a plain
    data input stays a run-time input even when its value is offered."""
    feeds = {"x": f32(2, 6), "n": np.array(2, dtype=np.int32)}
    nodes = [helper.make_node("Cast", ["n"], ["n64"], to=onnx.TensorProto.INT64),
             helper.make_node("Add", ["n64", "one"], ["rows"]),
             helper.make_node("Concat", ["rows", "minus"], ["shape"], axis=0),
             helper.make_node("Reshape", ["x", "shape"], ["y"]),
             helper.make_node("Relu", ["y"], ["z"])]
    model = make_model(nodes, feeds, ["z"], {"one": i64(1), "minus": i64(-1)})
    om = load_model(model)
    types = {n: TensorType(v.dtype, v.shape) for n, v in feeds.items()}
    graph = lower(om, types, decomposition_rules(), input_values=feeds)
    assert graph.value_inputs == ["n"]
    assert graph.types[graph.outputs[0]].shape == (3, 4)
    np.testing.assert_array_equal(run_graph(graph, feeds)[0], np.maximum(feeds["x"].reshape(3, 4), 0))


def test_function_body_expands_an_op_without_a_rule() -> None:
    """MeanVarianceNormalization has no rule: its schema's function body is inlined."""
    assert ("", "MeanVarianceNormalization") not in decomposition_rules()
    model = make_model([helper.make_node("MeanVarianceNormalization", ["x"], ["y"], axes=[0, 2])],
                       {"x": f32(3, 2, 4)}, ["y"], opset=13)
    graph = check_against_reference(model, {"x": f32(3, 2, 4)}, rtol=1e-4, atol=1e-5)
    assert {n.origin_op for n in graph.nodes} - {"ReduceMean", "Sub", "Mul", "Sqrt", "Div", "Add", "Pow"} == set()


def _branch(name: str, value: float) -> onnx.GraphProto:
    node = helper.make_node("Mul", ["x", f"{name}_k"], [f"{name}_y"])
    return helper.make_graph([node], name, [], [helper.make_empty_tensor_value_info(f"{name}_y")],
                             [numpy_helper.from_array(np.array(value, np.float32), f"{name}_k")])


def test_if_with_value_specialised_condition_inlines_one_branch() -> None:
    feeds = {"c": np.array(False), "x": f32(3)}
    node = helper.make_node("If", ["c"], ["y"], then_branch=_branch("then", 2.0), else_branch=_branch("else", -3.0))
    model = make_model([node], feeds, ["y"])
    om = load_model(model)
    types = {n: TensorType(v.dtype, v.shape) for n, v in feeds.items()}
    graph = lower(om, types, decomposition_rules(), input_values=feeds)
    assert graph.value_inputs == ["c"]
    np.testing.assert_allclose(run_graph(graph, feeds)[0], feeds["x"] * -3.0)


def test_loop_and_scan_unroll() -> None:
    # Loop: 3 iterations of acc = acc + x, scanning out each acc
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Add", ["acc", "x"], ["acc2"]),
         helper.make_node("Identity", ["acc2"], ["scan"])], "body",
        [helper.make_tensor_value_info("i", onnx.TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", onnx.TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc", onnx.TensorProto.FLOAT, [2])],
        [helper.make_empty_tensor_value_info(n) for n in ("cond_out", "acc2", "scan")])
    loop = helper.make_node("Loop", ["m", "go", "a0"], ["acc_final", "accs"], body=body)
    feeds = {"x": f32(2)}
    model = make_model([loop], feeds, ["acc_final", "accs"],
                       {"m": np.array(3, np.int64), "go": np.array(True), "a0": np.zeros(2, np.float32)})
    check_against_reference(model, feeds, oracle="onnxruntime")
    # Scan: running sum over axis 0 of a [4, 2] input
    sbody = helper.make_graph(
        [helper.make_node("Add", ["s", "row"], ["s2"]), helper.make_node("Identity", ["s2"], ["out"])], "sbody",
        [helper.make_tensor_value_info("s", onnx.TensorProto.FLOAT, [2]),
         helper.make_tensor_value_info("row", onnx.TensorProto.FLOAT, [2])],
        [helper.make_empty_tensor_value_info(n) for n in ("s2", "out")])
    scan = helper.make_node("Scan", ["s0", "xs"], ["total", "partial"], body=sbody, num_scan_inputs=1,
                            scan_input_directions=[1])
    feeds = {"xs": f32(4, 2)}
    model = make_model([scan], feeds, ["total", "partial"], {"s0": np.zeros(2, np.float32)}, opset=16)
    check_against_reference(model, feeds, oracle="onnxruntime")


# -- sequences, optionals, strings and the last op types ------------------------------------

def _graph_model(nodes, inputs, outputs, opset: int = 18, initializers=(), domains=()) -> onnx.ModelProto:
    """A model with explicitly typed inputs (ValueInfoProtos), for sequence and optional types."""
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_empty_tensor_value_info(n) for n in outputs],
                              list(initializers))
    imports = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, v) for d, v in domains)]
    return helper.make_model(graph, opset_imports=imports)


def _seq_info(name: str, elem=onnx.TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_sequence_value_info(name, elem, None)


def _opt_info(name: str, inner: onnx.TypeProto) -> onnx.ValueInfoProto:
    return helper.make_value_info(name, helper.make_optional_type_proto(inner))


def test_sequence_ops_match_onnx_reference() -> None:
    """SplitToSequence -> Insert -> Erase -> At / Length / ConcatFromSequence, positions constant."""
    consts = {"one": np.array(1, np.int64), "neg": np.array(-1, np.int64), "sz": np.array([1, 2], np.int64)}
    nodes = [
        helper.make_node("SplitToSequence", ["x", "sz"], ["s0"], axis=1),
        helper.make_node("SequenceInsert", ["s0", "y", "one"], ["s1"]),
        helper.make_node("SequenceErase", ["s1", "neg"], ["s2"]),
        helper.make_node("SequenceAt", ["s2", "neg"], ["last"]),
        helper.make_node("SequenceLength", ["s1"], ["n"]),
        helper.make_node("ConcatFromSequence", ["s2"], ["cat"], axis=1),
        helper.make_node("ConcatFromSequence", ["s1"], ["stacked"], axis=0, new_axis=1),
        helper.make_node("SequenceConstruct", ["x", "x"], ["pair"]),
        helper.make_node("SplitToSequence", ["x"], ["rows"], axis=0, keepdims=0),
    ]
    feeds = {"x": f32(2, 3), "y": f32(2, 1, seed=1)}
    inputs = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, v.shape) for n, v in feeds.items()]
    inits = [numpy_helper.from_array(v, n) for n, v in consts.items()]
    model = _graph_model([*nodes[:6], *nodes[7:]], inputs, ["last", "n", "cat", "pair", "rows", "s1"],
                         initializers=inits)
    check_session_against_reference(model, feeds)
    model = _graph_model(nodes[:7], inputs, ["stacked"], initializers=inits)
    with pytest.raises(WalleError, match="ConcatFromSequence"):
        wc.load(model).run(feeds)  # elements of shapes [2,1] and [2,2] cannot be stacked
    # inserting at position len(sequence) appends (onnx.reference wraps it round to the front)
    appended = wc.load(_graph_model([helper.make_node("SequenceInsert", ["s", "x", "p"], ["t"])],
                                    [_seq_info("s"), inputs[0]], ["t"],
                                    initializers=[numpy_helper.from_array(np.array(1, np.int64), "p")]))
    out = appended.run({"s": [feeds["y"]], "x": feeds["x"]})["t"]
    assert [a.shape for a in out] == [(2, 1), (2, 3)]


def test_sequence_position_out_of_range_names_the_node() -> None:
    nodes = [helper.make_node("SequenceAt", ["s", "p"], ["y"], name="pick")]
    model = _graph_model(nodes, [_seq_info("s")], ["y"], initializers=[numpy_helper.from_array(i64(3)[0], "p")])
    with pytest.raises(ModelError, match="SequenceAt node 'pick'.*position 3 is out of range"):
        wc.load(model).run({"s": [f32(2), f32(2)]})


def test_sequence_map_unrolls_its_body() -> None:
    body = helper.make_graph([helper.make_node("Add", ["a", "b"], ["c"]), helper.make_node("Shape", ["a"], ["d"])],
                             "body", [helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, None),
                                      helper.make_tensor_value_info("b", onnx.TensorProto.FLOAT, None)],
                             [helper.make_tensor_value_info("c", onnx.TensorProto.FLOAT, None),
                              helper.make_tensor_value_info("d", onnx.TensorProto.INT64, None)])
    nodes = [helper.make_node("SequenceMap", ["s", "t"], ["sums", "shapes"], body=body)]
    model = _graph_model(nodes, [_seq_info("s"), helper.make_tensor_value_info("t", onnx.TensorProto.FLOAT, [3])],
                         ["sums", "shapes"])
    check_session_against_reference(model, {"s": [f32(3), f32(2, 3, seed=1), f32(4, 3, seed=2)], "t": f32(3)})


def test_optional_ops_and_optional_inputs() -> None:
    tensor = helper.make_tensor_type_proto(onnx.TensorProto.FLOAT, [2])
    nodes = [helper.make_node("OptionalHasElement", ["o"], ["has"]),
             helper.make_node("Optional", [], ["none"], type=tensor),
             helper.make_node("OptionalHasElement", ["none"], ["has_none"]),
             helper.make_node("Identity", ["o"], ["same"])]
    model = _graph_model(nodes, [_opt_info("o", tensor)], ["has", "same"])
    check_session_against_reference(model, {"o": f32(2)})
    empty = wc.load(model).run({"o": None})  # onnx.reference cannot pass None through Identity
    assert empty["has"].item() is False and empty["same"] is None
    # onnx.reference wraps a missing input in a list, so it reports an element; the ONNX spec does not
    model = _graph_model(nodes, [_opt_info("o", tensor)], ["has_none"])
    assert wc.load(model).run({"o": f32(2)})["has_none"].item() is False
    get = _graph_model([helper.make_node("OptionalGetElement", ["o"], ["v"], name="get")],
                       [_opt_info("o", tensor)], ["v"])
    check_session_against_reference(get, {"o": f32(2)})
    with pytest.raises(ModelError, match="OptionalGetElement node 'get'.*empty"):
        wc.load(get).run({"o": None})


def test_bitcast_reinterprets_bytes() -> None:
    for src, dst in ((np.float32, onnx.TensorProto.INT32), (np.uint16, onnx.TensorProto.INT16),
                     (np.int64, onnx.TensorProto.DOUBLE)):
        feeds = {"x": f32(2, 3).astype(src)}
        model = make_model([helper.make_node("BitCast", ["x"], ["y"], to=dst)], feeds, ["y"], opset=26)
        check_session_against_reference(model, feeds)
    feeds = {"x": f32(3)}
    model = make_model([helper.make_node("BitCast", ["x"], ["y"], to=onnx.TensorProto.INT64, name="bc")],
                       feeds, ["y"], opset=26)
    with pytest.raises(ModelError, match="BitCast node 'bc'.*4 bytes"):
        wc.load(model)


@pytest.mark.parametrize("shape", [(2, 2), (3, 3), (2, 4, 4), (1, 5, 5)])
def test_det_matches_numpy(shape) -> None:
    feeds = {"x": f32(*shape, seed=len(shape))}
    model = make_model([helper.make_node("Det", ["x"], ["y"])], feeds, ["y"], opset=22)
    got = wc.load(model).run(feeds)["y"]
    np.testing.assert_allclose(got, np.linalg.det(feeds["x"].astype(np.float64)), rtol=1e-4, atol=1e-5)


def test_det_of_a_large_matrix_is_unsupported() -> None:
    feeds = {"x": f32(6, 6)}
    model = make_model([helper.make_node("Det", ["x"], ["y"], name="det")], feeds, ["y"], opset=22)
    with pytest.raises(UnsupportedOpError, match="Det node 'det'.*6x6"):
        wc.load(model)


def test_string_ops_on_the_reference_backend() -> None:
    words = np.array([["ab", "c"], ["", "dé"]], dtype=object)
    feeds = {"x": words, "y": np.array(["!", "c"], dtype=object)}
    nodes = [helper.make_node("StringConcat", ["x", "y"], ["cat"]), helper.make_node("Equal", ["x", "y"], ["eq"]),
             helper.make_node("StringNormalizer", ["y"], ["same"])]
    check_session_against_reference(make_model(nodes, feeds, ["cat", "eq", "same"], opset=20), feeds)
    upper = make_model([helper.make_node("StringNormalizer", ["y"], ["u"], case_change_action="UPPER")],
                       {"y": feeds["y"]}, ["u"], opset=20)
    with pytest.raises(UnsupportedOpError, match="case_change_action='UPPER'"):
        wc.load(upper)


def _ml_model(node: onnx.NodeProto, feeds: dict, outputs: list[str]) -> onnx.ModelProto:
    node.domain = "ai.onnx.ml"
    model = make_model([node], feeds, outputs)
    model.opset_import.append(helper.make_opsetid("ai.onnx.ml", 4))
    return model


def test_label_encoder_matches_onnx_reference() -> None:
    feeds = {"x": np.array([["a", "b"], ["zz", "c"]], dtype=object)}
    node = helper.make_node("LabelEncoder", ["x"], ["y"], keys_strings=["a", "b", "c", "a"],
                            values_int64s=[1, 2, 3, 9], default_int64=-7)
    check_session_against_reference(_ml_model(node, feeds, ["y"]), feeds)
    feeds = {"x": np.array([1, 5, 2, 2], dtype=np.int64)}
    node = helper.make_node("LabelEncoder", ["x"], ["y"], keys_int64s=[2, 5], values_strings=["two", "five"])
    check_session_against_reference(_ml_model(node, feeds, ["y"]), feeds)


@pytest.mark.parametrize("aggregate", [0, 1])
def test_tree_ensemble_matches_onnx_reference(aggregate: int) -> None:
    """Two trees: a depth-2 tree with LEQ/GT/member nodes and a single-leaf tree."""
    feeds = {"x": np.array([[0.5, 3.0], [2.0, 8.0], [1.5, np.nan], [-1.0, 4.0]], np.float32)}
    tensor = numpy_helper.from_array
    node = helper.make_node(
        "TreeEnsemble", ["x"], ["y"], n_targets=2, aggregate_function=aggregate, tree_roots=[0, 3],
        nodes_featureids=[0, 1, 1, 0], nodes_modes=tensor(np.array([0, 3, 6, 0], np.uint8)),
        nodes_splits=tensor(np.array([1.0, 5.0, 0.0, 0.0], np.float32)),
        nodes_truenodeids=[1, 0, 2, 4], nodes_trueleafs=[0, 1, 1, 1],
        nodes_falsenodeids=[2, 1, 3, 4], nodes_falseleafs=[0, 1, 1, 1],
        nodes_missing_value_tracks_true=[0, 0, 1, 0],
        membership_values=tensor(np.array([3.0, 4.0, np.nan], np.float32)),
        leaf_targetids=[0, 1, 0, 1, 1], leaf_weights=tensor(np.array([1.0, 2.0, 4.0, 8.0, 0.5], np.float32)))
    check_session_against_reference(_ml_model(node, feeds, ["y"]), feeds)


@pytest.mark.parametrize("mode, transform, ratio", [("avg", "half_pixel", 0), ("max", "output_half_pixel", 2)])
def test_roi_align_matches_onnx_reference(mode: str, transform: str, ratio: int) -> None:
    feeds = {"x": f32(2, 3, 6, 7), "rois": np.array([[0, 0, 4, 3], [1.5, 0.5, 6.5, 5.5], [-1, 2, 3, 9]], np.float32),
             "b": np.array([0, 1, 1], np.int64)}
    node = helper.make_node("RoiAlign", ["x", "rois", "b"], ["y"], mode=mode, output_height=3, output_width=2,
                            sampling_ratio=ratio, spatial_scale=0.8, coordinate_transformation_mode=transform)
    check_session_against_reference(make_model([node], feeds, ["y"], opset=16), feeds, rtol=1e-4, atol=1e-5)


def test_mel_weight_matrix_matches_onnx_reference() -> None:
    feeds = {"bins": np.array(8, np.int64), "dft": np.array(64, np.int64), "rate": np.array(8000, np.int64),
             "lo": np.array(20.0, np.float32), "hi": np.array(3800.0, np.float32)}
    node = helper.make_node("MelWeightMatrix", list(feeds), ["y"])
    check_session_against_reference(make_model([node], feeds, ["y"], opset=17), feeds)


@pytest.mark.parametrize("mode, skip, pool", [
    ("TF", 0, {"pool_int64s": [2, 3, 5, 4, 5, 6, 7, 8, 6, 7], "ngram_counts": [0, 4]}),
    ("TFIDF", 2, {"pool_int64s": [2, 3, 5, 4, 5, 6, 7, 8, 6, 7], "ngram_counts": [0, 4]}),
    ("IDF", 1, {"pool_strings": ["a", "b", "a", "b", "c"], "ngram_counts": [0, 3]}),
])
def test_tfidf_vectorizer_matches_onnx_reference(mode: str, skip: int, pool: dict) -> None:
    if "pool_strings" in pool:
        x = np.array([["a", "b", "c", "a"], ["b", "c", "a", "b"]], dtype=object)
        indexes, weights = [2, 0, 1, 3], [0.5, 1.0, 2.0, 3.0]
    else:
        x = np.array([[1, 1, 3, 3, 3, 7], [8, 6, 7, 5, 6, 8]], dtype=np.int32)
        indexes, weights = [0, 1, 2, 3, 4, 5, 6], [0.5, 1, 1.5, 2, 2.5, 3, 3.5]
    node = helper.make_node("TfIdfVectorizer", ["x"], ["y"], mode=mode, min_gram_length=1, max_gram_length=2,
                            max_skip_count=skip, ngram_indexes=indexes, weights=weights, **pool)
    for feeds in ({"x": x}, {"x": x[1]}):
        check_session_against_reference(make_model([node], feeds, ["y"], opset=9), feeds)


@pytest.mark.parametrize("shape, attrs", [
    ((1, 2, 5, 6), {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [2, 2]}),
    ((2, 1, 7, 5), {"kernel_shape": [2, 3], "dilations": [2, 1], "ceil_mode": 1, "strides": [2, 2]}),
    ((1, 3, 4, 4), {"kernel_shape": [2, 2], "storage_order": 1}),
    ((2, 2, 9), {"kernel_shape": [3], "strides": [2], "auto_pad": "SAME_UPPER"}),
])
def test_max_pool_indices_match_onnxruntime(shape, attrs) -> None:
    """ONNX Runtime is the oracle: onnx.reference misplaces indices on its stride-1 path."""
    feeds = {"x": f32(*shape)}
    node = helper.make_node("MaxPool", ["x"], ["y", "i"], **attrs)
    check_session_against_reference(make_model([node], feeds, ["y", "i"], opset=12), feeds, oracle="onnxruntime")


@pytest.mark.parametrize("group, offset_group, with_mask", [(1, 1, False), (2, 2, True), (2, 1, True)])
def test_deform_conv_matches_onnx_reference(group: int, offset_group: int, with_mask: bool) -> None:
    feeds = {"x": f32(2, 4, 5, 6), "w": f32(4, 4 // group, 2, 3, seed=1),
             "off": f32(2, offset_group * 2 * 6, 3, 3, seed=2, low=-1.5, high=1.5), "b": f32(4, seed=3)}
    if with_mask:
        feeds["m"] = f32(2, offset_group * 6, 3, 3, seed=4, low=0, high=1)
    node = helper.make_node("DeformConv", list(feeds), ["y"], group=group, offset_group=offset_group,
                            pads=[1, 0, 0, 1], strides=[2, 2], dilations=[1, 1])
    check_session_against_reference(make_model([node], feeds, ["y"], opset=19), feeds, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("attrs, oracle", [
    ({"output_shape": [10, 8], "strides": [3, 2]}, "onnxruntime"),
    ({"output_shape": [8, 7], "strides": [2, 2], "pads": [0, 0, 0, 0]}, "onnxruntime"),
])
def test_conv_transpose_output_shape_beyond_the_full_output(attrs, oracle) -> None:
    """Negative implied pads grow the output with positions that only see zeros and the bias."""
    feeds = {"x": f32(1, 2, 3, 3), "w": f32(2, 3, 3, 3, seed=1), "b": f32(3, seed=2)}
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], **attrs)
    check_session_against_reference(make_model([node], feeds, ["y"], opset=17), feeds, rtol=1e-4, atol=1e-5,
                                    oracle=oracle)


@pytest.mark.parametrize("attrs", [
    {"strides": [2, 1, 2], "pads": [1, 0, 0, 0, 1, 1]},
    {"strides": [1, 2, 2], "dilations": [2, 1, 1], "output_padding": [0, 1, 1], "group": 2},
])
def test_conv_transpose_3d_matches_onnxruntime(attrs) -> None:
    group = attrs.get("group", 1)
    feeds = {"x": f32(1, 4, 3, 4, 3), "w": f32(4, 6 // group, 2, 3, 2, seed=1), "b": f32(6, seed=2)}
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], **attrs)
    check_session_against_reference(make_model([node], feeds, ["y"], opset=17), feeds, rtol=1e-4, atol=1e-5,
                                    oracle="onnxruntime")


@pytest.mark.parametrize("equation, shapes", [
    ("...ii->...i", [(2, 3, 4, 4)]),
    ("ii", [(3, 3)]),
    ("bij,...jk->...ik", [(2, 3, 4), (4, 5)]),
    ("i...,i...", [(3, 2, 2), (3, 1, 2)]),
    ("iij,jk->ik", [(3, 3, 2), (2, 4)]),
])
def test_einsum_ellipsis_and_diagonals_match_numpy(equation: str, shapes: list) -> None:
    feeds = {f"x{i}": f32(*shape, seed=i) for i, shape in enumerate(shapes)}
    model = make_model([helper.make_node("Einsum", list(feeds), ["y"], equation=equation)], feeds, ["y"], opset=12)
    got = wc.load(model).run(feeds)["y"]
    np.testing.assert_allclose(got, np.einsum(equation, *feeds.values()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("lens", [None, np.array([3, 3], np.int64)])
def test_scan8_scans_each_batch_element(lens) -> None:
    """Scan-8: state [B, 2], scan input [B, 3, 2] read backwards; running sum and its history."""
    body = helper.make_graph(
        [helper.make_node("Add", ["s", "x"], ["s2"]), helper.make_node("Identity", ["s2"], ["out"])], "body",
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [2]) for n in ("s", "x")],
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [2]) for n in ("s2", "out")])
    feeds = {"init": f32(2, 2), "x": f32(2, 3, 2, seed=1)}
    inits = {} if lens is None else {"lens": lens}
    node = helper.make_node("Scan", ["lens" if inits else "", "init", "x"], ["y", "z"], body=body,
                            num_scan_inputs=1, directions=[1])
    check_session_against_reference(make_model([node], feeds, ["y", "z"], inits, opset=8), feeds,
                                    oracle="onnxruntime")


@pytest.mark.parametrize("round_mode", ["up", "down", "nearest"])
@pytest.mark.parametrize("saturate", [0, 1])
def test_cast_to_e8m0_rounds_like_onnx(round_mode: str, saturate: int) -> None:
    values = [0.0, 1.0, 1.5, 3.0, 0.75, 1.25, 5e-39, -2.5, np.inf, np.nan, 3.3e38, 2.0 ** -127, 1.75]
    feeds = {"x": np.array(values, np.float32)}
    node = helper.make_node("Cast", ["x"], ["y"], to=onnx.TensorProto.FLOAT8E8M0, round_mode=round_mode,
                            saturate=saturate)
    got = wc.load(make_model([node], feeds, ["y"], opset=24)).run(feeds)["y"]
    expected = numpy_helper.to_float8e8m0(feeds["x"], bool(saturate), round_mode)
    np.testing.assert_array_equal(got.view(np.uint8), expected.view(np.uint8))
