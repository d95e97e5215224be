"""ONNX's own backend node tests, run through `WalleBackend` as ONNX Runtime runs them.

Only the cases listed in PASSING are collected: an explicit list of the node tests that pass
today, by op type. A listed case that breaks fails the suite (nothing here is skipped or
marked xfail); a case joins the list once it passes. The whole corpus, with counts per op,
is `make conformance`.
"""

from __future__ import annotations

import re

import numpy as np
import onnx.backend.test

from walle_core.testing.onnx_backend import WalleBackend

#: op type -> whitespace-separated regexes, each matching whole case names without the
#: "test_" prefix and the "_cpu" suffix
PASSING: dict[str, str] = {
    "Abs": "abs",
    "Acos": "acos acos_example",
    "Acosh": "acosh.*",
    "Add": "add.*",
    "And": "and.*",
    "ArgMax": "argmax_.*",
    "ArgMin": "argmin_.*",
    "Asin": "asin asin_example",
    "Asinh": "asinh.*",
    "Atan": "atan atan_example",
    "Atanh": "atanh.*",
    "Attention": "attention_.*",
    "AveragePool": "averagepool_2d_.* averagepool_1d_default",
    "BatchNormalization": "batchnorm_epsilon batchnorm_example",
    "BitCast": "bitcast_.*",
    "BitShift": "bitshift_.*",
    "BitwiseAnd": "bitwise_and_.*",
    "BitwiseNot": "bitwise_not_.*",
    "BitwiseOr": "bitwise_or_.*",
    "BitwiseXor": "bitwise_xor_.*",
    "BlackmanWindow": "blackmanwindow.*",
    "Cast": (
        "cast_no_.* cast_INT4_.* cast_INT2_.* cast_UINT2_.* cast_UINT4_.* cast_FLOAT_.* "
        "cast_FLOAT16_.* cast_BFLOAT16_to_FLOAT cast_DOUBLE_to_FLOAT cast_DOUBLE_to_FLOAT16 "
        "cast_FLOAT4E2M1_to_FLOAT cast_FLOAT4E2M1_to_FLOAT16 cast_FLOAT8E4M3FNUZ_to_FLOAT "
        "cast_FLOAT8E4M3FNUZ_to_FLOAT16 cast_FLOAT8E4M3FN_to_FLOAT "
        "cast_FLOAT8E4M3FN_to_FLOAT16 cast_FLOAT8E5M2FNUZ_to_FLOAT "
        "cast_FLOAT8E5M2FNUZ_to_FLOAT16 cast_FLOAT8E5M2_to_FLOAT cast_FLOAT8E5M2_to_FLOAT16 "
        "cast_e8m0_FLOAT8E8M0_to_FLOAT cast_e8m0_FLOAT8E8M0_to_FLOAT16 cast_e8m0_FLOAT_to_FLOAT8E8M0 "
        "cast_e8m0_FLOAT16_to_FLOAT8E8M0"
    ),
    "CastLike": "castlike_.*",
    "CausalConvWithState": "causal_conv_with_state_.*",
    "Ceil": "ceil.*",
    "Celu": "celu.*",
    "CenterCropPad": "center_crop_pad_.*",
    "Clip": "clip.*",
    "Compress": "compress_.*",
    "Concat": "concat_.*",
    "Constant": "constant",
    "ConstantOfShape": "constantofshape_.*",
    "Conv": "conv_.* basic_conv_with_padding basic_conv_without_padding",
    "ConvInteger": "convinteger_with.*",
    "ConvTranspose": (
        "convtranspose convtranspose_1d convtranspose_3d convtranspose_autopad_same convtranspose_dilations "
        "convtranspose_group_2 convtranspose_group_2_image_3 convtranspose_kernel_shape "
        "convtranspose_output_shape convtranspose_pad convtranspose_pads"
    ),
    "Cos": "cos cos_example",
    "Cosh": "cosh.*",
    "CumProd": "cumprod_.*",
    "CumSum": "cumsum_.*",
    "DepthToSpace": "depthtospace_.*",
    "DequantizeLinear": "dequantizelinear.*",
    "DeformConv": "basic_deform_conv_.* deform_conv_.*",
    "Det": "det_.*",
    "Div": "div.*",
    "Dropout": "dropout_.*",
    "DynamicQuantizeLinear": "dynamicquantizelinear.*",
    "Einsum": (
        "einsum_batch_diagonal einsum_batch_matmul einsum_batch_matmul_bfloat16 einsum_inner_prod einsum_scalar "
        "einsum_sum einsum_sum_bfloat16 einsum_transpose einsum_transpose_bfloat16"
    ),
    "Elu": "elu.*",
    "Equal": (
        "equal equal_bcast equal_int16 equal_int8 equal_uint16 equal_uint32 equal_uint64 "
        "equal_uint8 equal_string equal_string_broadcast"
    ),
    "Erf": "erf",
    "Exp": "exp exp_example",
    "Expand": "expand_dim_.*",
    "EyeLike": "eyelike_.*",
    "Flatten": "flatten_.*",
    "Floor": "floor.*",
    "Gather": "gather_0 gather_1 gather_2d_indices gather_negative_indices",
    "GatherElements": "gather_elements_.*",
    "GatherND": "gathernd_example_.*",
    "Gelu": "gelu_.*",
    "Gemm": "gemm_.*",
    "GlobalAveragePool": "globalaveragepool.*",
    "GlobalMaxPool": "globalmaxpool.*",
    "Greater": (
        "greater greater_bcast greater_int16 greater_int8 greater_uint16 greater_uint32 "
        "greater_uint64 greater_uint8"
    ),
    "GreaterOrEqual": "greater_equal.*",
    "GroupNormalization": "group_normalization_e.*",
    "HammingWindow": "hammingwindow.*",
    "HannWindow": "hannwindow.*",
    "HardSigmoid": "hardsigmoid.*",
    "HardSwish": "hardswish.*",
    "Hardmax": "hardmax_.*",
    "Identity": "identity identity_opt identity_sequence",
    "If": "if if_opt if_seq",
    "InstanceNormalization": "instancenorm_e.*",
    "IsInf": "isinf.*",
    "IsNaN": "isnan.*",
    "LRN": "lrn.*",
    "LayerNormalization": "layer_normalization_.*",
    "LeakyRelu": "leakyrelu.*",
    "Loop": "loop11 loop13_seq",
    "Less": "less less_bcast less_int16 less_int8 less_uint16 less_uint32 less_uint64 less_uint8",
    "LessOrEqual": "less_equal.*",
    "Log": "log log_example",
    "LogSoftmax": "logsoftmax_.*",
    "LpNormalization": (
        "l1normalization_.* l2normalization_axis_0 l2normalization_axis_1 "
        "lpnormalization_default"
    ),
    "MatMul": "matmul_.*",
    "MatMulInteger": "matmulinteger",
    "Max": "max_.*",
    "MaxPool": "maxpool_2d_.* maxpool_1d_default maxpool_with_argmax_.*",
    "MelWeightMatrix": "melweightmatrix",
    "Mean": "mean_.*",
    "MeanVarianceNormalization": "mvn.*",
    "Min": "min_.*",
    "Mish": "mish.*",
    "Mod": "mod_.*",
    "Mul": "mul.*",
    "Neg": "neg.*",
    "NegativeLogLikelihoodLoss": "nllloss_NC.*",
    "NonZero": "nonzero_example",
    "Not": "not_.*",
    "OneHot": "onehot_.*",
    "OptionalGetElement": "optional_get_element_.*",
    "OptionalHasElement": "optional_has_element_.*",
    "Or": "or.*",
    "PRelu": "prelu_.*",
    "Pad": "constant_.* edge_pad reflect_pad wrap_pad",
    "Pow": "pow.*",
    "QLinearConv": "qlinearconv",
    "QLinearMatMul": "qlinearmatmul_.*",
    "QuantizeLinear": "quantizelinear.*",
    "RMSNormalization": "rms_normalization_.*",
    "Range": (
        "range_bfloat16_type_positive_delta range_float16_type_positive_delta "
        "range_float_type_positive_delta range_int32_type_negative_delta"
    ),
    "Reciprocal": "reciprocal.*",
    "ReduceL1": "reduce_l1_.*",
    "ReduceL2": "reduce_l2_.*",
    "ReduceLogSum": (
        "reduce_log_sum_asc_axes reduce_log_sum_asc_axes_expanded reduce_log_sum_default "
        "reduce_log_sum_default_expanded reduce_log_sum_desc_axes "
        "reduce_log_sum_desc_axes_expanded reduce_log_sum_empty_set "
        "reduce_log_sum_empty_set_expanded reduce_log_sum_negative_axes "
        "reduce_log_sum_negative_axes_expanded"
    ),
    "ReduceLogSumExp": "reduce_log_sum_exp_.*",
    "ReduceMax": "reduce_max_.*",
    "ReduceMean": "reduce_mean_.*",
    "ReduceMin": "reduce_min_.*",
    "ReduceProd": "reduce_prod_.*",
    "ReduceSum": (
        "reduce_sum_empty_.* reduce_sum_default_axes_keepdims_example "
        "reduce_sum_default_axes_keepdims_random reduce_sum_do_not_keepdims_example "
        "reduce_sum_do_not_keepdims_random reduce_sum_keepdims_example "
        "reduce_sum_keepdims_random reduce_sum_negative_axes_keepdims_example "
        "reduce_sum_negative_axes_keepdims_random"
    ),
    "ReduceSumSquare": "reduce_sum_square_.*",
    "Relu": "relu.*",
    "Reshape": "reshape_.*",
    "Resize": "resize_.*",
    "ReverseSequence": "reversesequence_.*",
    "RotaryEmbedding": "rotary_embedding.*",
    "Round": "round",
    "Scan": "scan_sum scan9_.*",
    "RoiAlign": "roialign_.*",
    "Scatter": "scatter_with.*",
    "ScatterElements": "scatter_elements_with.*",
    "ScatterND": "scatternd.*",
    "Selu": "selu.*",
    "SequenceInsert": "sequence_insert_.*",
    "SequenceMap": "sequence_map_.*",
    "Shape": "shape.*",
    "Shrink": "shrink_.*",
    "Sigmoid": "sigmoid.*",
    "Sign": "sign",
    "Sin": "sin sin_example",
    "Sinh": "sinh.*",
    "Size": "size.*",
    "Slice": "slice.*",
    "Softmax": "softmax_.*",
    "SoftmaxCrossEntropyLoss": "sce_.*",
    "Softplus": "softplus.*",
    "Softsign": "softsign.*",
    "SpaceToDepth": "spacetodepth.*",
    "Split": (
        "split_equal_.* split_variable_.* split_1d_uneven_split_opset18 "
        "split_2d_uneven_split_opset18 split_zero_size_splits_opset13 "
        "split_zero_size_splits_opset18"
    ),
    "SplitToSequence": "split_to_sequence_.*",
    "Sqrt": "sqrt.*",
    "Squeeze": "squeeze.*",
    "StringConcat": "string_concat.*",
    "StringNormalizer": "strnormalizer_nostopwords_nochangecase",
    "Sub": "sub.*",
    "Sum": "sum_.*",
    "SwiGLU": "swiglu.*",
    "Swish": "swish.*",
    "Tan": "tan tan_example",
    "Tanh": "tanh.*",
    "TensorScatter": "tensorscatter.*",
    "TfIdfVectorizer": "tfidfvectorizer_.*",
    "ThresholdedRelu": "thresholdedrelu.*",
    "Tile": "tile.*",
    "TopK": "top_k.*",
    "Transpose": "transpose_.*",
    "Trilu": "tri.*",
    "Unique": "unique_.*",
    "Unsqueeze": "unsqueeze_.*",
    "Upsample": "upsample_nearest",
    "Where": "where_.*",
    "Xor": "xor.*",
    "ai.onnx.ml.LabelEncoder": "ai_onnx_ml_label_encoder_.*",
    "ai.onnx.ml.TreeEnsemble": "ai_onnx_ml_tree_ensemble_.*",
    "ai.onnx.preview.FlexAttention": "flexattention.*",
}

PATTERNS = [pattern for patterns in PASSING.values() for pattern in patterns.split()]
LISTED = re.compile(r"^test_(?:" + "|".join(PATTERNS) + r")_cpu$")

# The node cases draw their data from NumPy's global generator while the suite is built.
np.random.seed(0)
OnnxBackendNodeModelTest = onnx.backend.test.BackendTest(WalleBackend, __name__).test_cases[
    "OnnxBackendNodeModelTest"]
# Keep only the listed CPU cases: unlisted ones are not collected at all rather than skipped.
for _name in [n for n in vars(OnnxBackendNodeModelTest) if n.startswith("test_") and not LISTED.match(n)]:
    delattr(OnnxBackendNodeModelTest, _name)


def test_every_listed_pattern_matches_a_collected_case():
    """Guards the list itself: a pattern that matches nothing is a typo, not a pass."""
    names = [name for name in vars(OnnxBackendNodeModelTest) if name.startswith("test_")]
    for pattern in PATTERNS:
        regex = re.compile(rf"^test_(?:{pattern})_cpu$")
        assert any(regex.match(name) for name in names), f"no node test matches {pattern!r}"
