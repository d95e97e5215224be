"""Elementwise ONNX ops: unary math and activations, binary arithmetic and comparisons,
variadic reductions (Sum/Mean/Max/Min), Clip, Cast, Where and the composite activations."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import onnx

from walle_core.decompose.context import LoweringContext, Rule
from walle_core.onnx.dtypes import onnx_to_numpy
from walle_core.ops import BinaryAttrs, BinaryFn, CastAttrs, Op, SelectAttrs, UnaryAttrs, UnaryFn
from walle_core.reference.kernels import is_float


def unary(ctx: LoweringContext, x: str, fn: UnaryFn, alpha: float = 0.0, beta: float = 0.0) -> str:
    return ctx.emit1(Op.UNARY, [x], UnaryAttrs(fn, float(alpha), float(beta)))


def binary(ctx: LoweringContext, fn: BinaryFn, a: str, b: str) -> str:
    return ctx.emit1(Op.BINARY, [a, b], BinaryAttrs(fn))


def cast(ctx: LoweringContext, x: str, dtype: np.dtype) -> str:
    if ctx.dtype(x) == np.dtype(dtype):
        return x
    return ctx.emit1(Op.CAST, [x], CastAttrs(np.dtype(dtype)))


def select(ctx: LoweringContext, cond: str, a: str, b: str) -> str:
    return ctx.emit1(Op.SELECT, [cond, a, b], SelectAttrs())


def _same_dtype(ctx: LoweringContext, a: str, b: str) -> None:
    if ctx.dtype(a) != ctx.dtype(b):
        raise ctx.invalid(f"input dtypes differ ({ctx.dtype(a)} vs {ctx.dtype(b)})")


# -- unary -------------------------------------------------------------------------------

_UNARY = {
    "Relu": UnaryFn.RELU, "Sigmoid": UnaryFn.SIGMOID, "Tanh": UnaryFn.TANH, "Exp": UnaryFn.EXP,
    "Log": UnaryFn.LOG, "Sqrt": UnaryFn.SQRT, "Neg": UnaryFn.NEG, "Abs": UnaryFn.ABS,
    "Reciprocal": UnaryFn.RECIPROCAL, "Floor": UnaryFn.FLOOR, "Ceil": UnaryFn.CEIL, "Erf": UnaryFn.ERF,
    "Sign": UnaryFn.SIGN, "Not": UnaryFn.NOT, "Round": UnaryFn.ROUND, "Sin": UnaryFn.SIN,
    "Cos": UnaryFn.COS, "Tan": UnaryFn.TAN, "Asin": UnaryFn.ASIN, "Acos": UnaryFn.ACOS,
    "Atan": UnaryFn.ATAN, "Sinh": UnaryFn.SINH, "Cosh": UnaryFn.COSH, "Asinh": UnaryFn.ASINH,
    "Acosh": UnaryFn.ACOSH, "Atanh": UnaryFn.ATANH, "Softplus": UnaryFn.SOFTPLUS,
    "HardSwish": UnaryFn.HARD_SWISH,
}

#: activations with ONNX attributes: op -> (fn, (attr, default) for alpha, (attr, default) for beta)
_PARAMETRIC = {
    "LeakyRelu": (UnaryFn.LEAKY_RELU, ("alpha", 0.01), None),
    "Elu": (UnaryFn.ELU, ("alpha", 1.0), None),
    "HardSigmoid": (UnaryFn.HARD_SIGMOID, ("alpha", 0.2), ("beta", 0.5)),
}


def _unary_rule(fn: UnaryFn) -> Rule:
    def rule(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
        return [unary(ctx, ctx.required_input(node, 0), fn)]

    return rule


def _parametric_rule(op_type: str) -> Rule:
    fn, alpha, beta = _PARAMETRIC[op_type]

    def rule(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
        a = ctx.attr(node, alpha[0], alpha[1]) if alpha else 0.0
        b = ctx.attr(node, beta[0], beta[1]) if beta else 0.0
        return [unary(ctx, ctx.required_input(node, 0), fn, a, b)]

    return rule


def _selu(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    x = ctx.required_input(node, 0)
    alpha = ctx.attr(node, "alpha", 1.67326319217681884765625)
    gamma = ctx.attr(node, "gamma", 1.05070102214813232421875)
    return [binary(ctx, BinaryFn.MUL, unary(ctx, x, UnaryFn.ELU, alpha), ctx.scalar(gamma, x))]


def _softsign(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    x = ctx.required_input(node, 0)
    denom = binary(ctx, BinaryFn.ADD, unary(ctx, x, UnaryFn.ABS), ctx.scalar(1.0, x))
    return [binary(ctx, BinaryFn.DIV, x, denom)]


def _mish(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    x = ctx.required_input(node, 0)
    return [binary(ctx, BinaryFn.MUL, x, unary(ctx, unary(ctx, x, UnaryFn.SOFTPLUS), UnaryFn.TANH))]


def _swish(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    x = ctx.required_input(node, 0)
    alpha = ctx.attr(node, "alpha", 1.0)
    scaled = x if alpha == 1.0 else binary(ctx, BinaryFn.MUL, x, ctx.scalar(alpha, x))
    return [binary(ctx, BinaryFn.MUL, x, unary(ctx, scaled, UnaryFn.SIGMOID))]


def _gelu(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    x = ctx.required_input(node, 0)
    approximate = ctx.attr(node, "approximate", "none")
    if approximate == "none":  # 0.5 x (1 + erf(x / sqrt 2))
        inner = unary(ctx, binary(ctx, BinaryFn.MUL, x, ctx.scalar(1.0 / math.sqrt(2.0), x)), UnaryFn.ERF)
    elif approximate == "tanh":  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        cube = binary(ctx, BinaryFn.MUL, binary(ctx, BinaryFn.MUL, x, x), x)
        poly = binary(ctx, BinaryFn.ADD, x, binary(ctx, BinaryFn.MUL, cube, ctx.scalar(0.044715, x)))
        inner = unary(ctx, binary(ctx, BinaryFn.MUL, poly, ctx.scalar(math.sqrt(2.0 / math.pi), x)),
                      UnaryFn.TANH)
    else:
        raise ctx.invalid(f"attribute approximate={approximate!r} is not 'none' or 'tanh'")
    half_x = binary(ctx, BinaryFn.MUL, x, ctx.scalar(0.5, x))
    return [binary(ctx, BinaryFn.MUL, half_x, binary(ctx, BinaryFn.ADD, inner, ctx.scalar(1.0, x)))]


def _prelu(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    x, slope = ctx.required_input(node, 0), ctx.required_input(node, 1)
    _same_dtype(ctx, x, slope)
    negative = binary(ctx, BinaryFn.LT, x, ctx.scalar(0, x))
    return [select(ctx, negative, binary(ctx, BinaryFn.MUL, x, slope), x)]


def _clip(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    x = ctx.required_input(node, 0)
    if ctx.opset < 11:
        lo, hi = ctx.attr(node, "min", -math.inf), ctx.attr(node, "max", math.inf)
        return [unary(ctx, x, UnaryFn.CLIP, lo, hi)]
    lo_name, hi_name = ctx.input(node, 1), ctx.input(node, 2)
    bounds = [ctx.known_value(n) if n else None for n in (lo_name, hi_name)]
    if all(n == "" or v is not None for n, v in zip((lo_name, hi_name), bounds)):
        lo = -math.inf if bounds[0] is None else bounds[0].item()
        hi = math.inf if bounds[1] is None else bounds[1].item()
        return [unary(ctx, x, UnaryFn.CLIP, lo, hi)]
    # bounds computed at run time: max then min, which is what Clip means
    if lo_name:
        _same_dtype(ctx, x, lo_name)
        x = binary(ctx, BinaryFn.MAX, x, lo_name)
    if hi_name:
        _same_dtype(ctx, x, hi_name)
        x = binary(ctx, BinaryFn.MIN, x, hi_name)
    return [x]


# -- binary ------------------------------------------------------------------------------

_BINARY = {
    "Add": BinaryFn.ADD, "Sub": BinaryFn.SUB, "Mul": BinaryFn.MUL, "Div": BinaryFn.DIV,
    "Equal": BinaryFn.EQ, "Less": BinaryFn.LT, "Greater": BinaryFn.GT, "LessOrEqual": BinaryFn.LE,
    "GreaterOrEqual": BinaryFn.GE, "And": BinaryFn.AND, "Or": BinaryFn.OR, "Xor": BinaryFn.XOR,
    "BitwiseAnd": BinaryFn.BIT_AND, "BitwiseOr": BinaryFn.BIT_OR, "BitwiseXor": BinaryFn.BIT_XOR,
}


def _binary_rule(fn: BinaryFn) -> Rule:
    def rule(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
        a, b = ctx.required_input(node, 0), ctx.required_input(node, 1)
        _same_dtype(ctx, a, b)
        return [binary(ctx, fn, a, b)]

    return rule


def _pow(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    x, y = ctx.required_input(node, 0), ctx.required_input(node, 1)
    dtype = ctx.dtype(x)
    if dtype == ctx.dtype(y) or np.issubdtype(dtype, np.floating):
        return [binary(ctx, BinaryFn.POW, x, cast(ctx, y, dtype))]
    # integer base, float exponent: compute in the exponent's type, then back (as ONNX does)
    return [cast(ctx, binary(ctx, BinaryFn.POW, cast(ctx, x, ctx.dtype(y)), y), dtype)]


def _mod(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    a, b = ctx.required_input(node, 0), ctx.required_input(node, 1)
    _same_dtype(ctx, a, b)
    fmod = ctx.attr(node, "fmod", 0)  # fmod=0 on floats: the divisor's sign, like numpy.mod
    return [binary(ctx, BinaryFn.FMOD if fmod else BinaryFn.MOD, a, b)]


def _bit_shift(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    a, b = ctx.required_input(node, 0), ctx.required_input(node, 1)
    _same_dtype(ctx, a, b)
    direction = ctx.attr(node, "direction", "")
    if direction not in ("LEFT", "RIGHT"):
        raise ctx.invalid(f"attribute direction={direction!r} is not LEFT or RIGHT")
    return [binary(ctx, BinaryFn.SHL if direction == "LEFT" else BinaryFn.SHR, a, b)]


def _variadic_rule(fn: BinaryFn, mean: bool = False) -> Rule:
    def rule(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
        xs = [ctx.required_input(node, i) for i in range(len(node.input))]
        if not xs:
            raise ctx.invalid("needs at least one input")
        acc = xs[0]
        for x in xs[1:]:
            _same_dtype(ctx, acc, x)
            acc = binary(ctx, fn, acc, x)
        if mean and len(xs) > 1:
            acc = binary(ctx, BinaryFn.DIV, acc, ctx.scalar(len(xs), acc))
        return [acc]

    return rule


def _is_nan(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    x = ctx.required_input(node, 0)
    return [binary(ctx, BinaryFn.NE, x, x)]


def _is_inf(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    x = ctx.required_input(node, 0)
    found = ctx.constant(np.zeros(ctx.shape(x), dtype=bool))
    for attr, sign in (("detect_positive", 1.0), ("detect_negative", -1.0)):
        if ctx.attr(node, attr, 1):
            found = binary(ctx, BinaryFn.OR, found, binary(ctx, BinaryFn.EQ, x, ctx.scalar(sign * math.inf, x)))
    return [found]


def _bitwise_not(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    x = ctx.required_input(node, 0)
    if not np.issubdtype(ctx.dtype(x), np.integer):
        raise ctx.invalid(f"input must be an integer tensor, got {ctx.dtype(x)}")
    ones = np.array(-1).astype(ctx.dtype(x)) if np.issubdtype(ctx.dtype(x), np.signedinteger) \
        else np.array(np.iinfo(ctx.dtype(x)).max, dtype=ctx.dtype(x))
    return [binary(ctx, BinaryFn.BIT_XOR, x, ctx.constant(ones))]


def _shrink(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    x = ctx.required_input(node, 0)
    lambd, bias = ctx.attr(node, "lambd", 0.5), ctx.attr(node, "bias", 0.0)
    low = select(ctx, binary(ctx, BinaryFn.LT, x, ctx.scalar(-lambd, x)),
                 binary(ctx, BinaryFn.ADD, x, ctx.scalar(bias, x)), ctx.scalar(0, x))
    return [select(ctx, binary(ctx, BinaryFn.GT, x, ctx.scalar(lambd, x)),
                   binary(ctx, BinaryFn.SUB, x, ctx.scalar(bias, x)), low)]


def _thresholded_relu(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    x = ctx.required_input(node, 0)
    above = binary(ctx, BinaryFn.GT, x, ctx.scalar(ctx.attr(node, "alpha", 1.0), x))
    return [select(ctx, above, x, ctx.scalar(0, x))]


def _celu(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    """alpha * elu(x / alpha)."""
    x = ctx.required_input(node, 0)
    alpha = ctx.attr(node, "alpha", 1.0)
    inner = unary(ctx, binary(ctx, BinaryFn.DIV, x, ctx.scalar(alpha, x)), UnaryFn.ELU, 1.0)
    return [binary(ctx, BinaryFn.MUL, inner, ctx.scalar(alpha, x))]


# -- types and selection -------------------------------------------------------------------

#: float8 types that ONNX Cast saturates to their largest finite value (attribute saturate=1)
_SATURATING = frozenset({"float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz"})


def cast_saturating(ctx: LoweringContext, x: str, dtype: np.dtype, saturate: bool = True) -> str:
    """Cast, clipping to the target's finite range first when ONNX asks to saturate."""
    dtype = np.dtype(dtype)
    if saturate and dtype.name in _SATURATING and is_float(ctx.dtype(x)) and ctx.dtype(x) != dtype:
        info = ml_dtypes.finfo(dtype)
        x = unary(ctx, x, UnaryFn.CLIP, float(info.min), float(info.max))
    return cast(ctx, x, dtype)


def cast_to_e8m0(ctx: LoweringContext, x: str, saturate: bool, round_mode: str) -> str:
    """float -> float8_e8m0fnu (a bare power-of-two exponent) with ONNX's rounding modes.

    The e8m0 byte is float32's biased exponent field, so the cast works on float32's bits:
    the exponent is bumped when the fraction rounds up ("up": any fraction; "nearest": guard
    bit set and round/sticky/lsb set), never past the largest finite value when saturating;
    NaN and infinity keep the all-ones exponent, which is e8m0's NaN.
    """
    if round_mode not in ("up", "down", "nearest"):
        raise ctx.invalid(f"round_mode {round_mode!r} must be 'up', 'down' or 'nearest'")
    i32 = np.dtype(np.int32)
    bits = ctx.emit1(Op.CAST, [cast(ctx, x, np.dtype(np.float32))], CastAttrs(i32, bitcast=True))

    def masked(mask: int) -> str:
        return binary(ctx, BinaryFn.BIT_AND, bits, ctx.constant(np.array(mask, i32)))

    def nonzero(v: str) -> str:
        return binary(ctx, BinaryFn.NE, v, ctx.constant(np.array(0, i32)))

    exponent = binary(ctx, BinaryFn.BIT_AND, binary(ctx, BinaryFn.SHR, bits, ctx.constant(np.array(23, i32))),
                      ctx.constant(np.array(0xFF, i32)))
    if round_mode != "down":
        if round_mode == "up":
            up = nonzero(masked(0x7FFFFF))
        else:
            tail = binary(ctx, BinaryFn.OR, nonzero(masked(0x200000)), nonzero(masked(0x1FFFFF)))
            tail = binary(ctx, BinaryFn.OR, tail, binary(ctx, BinaryFn.GT, exponent, ctx.constant(np.array(0, i32))))
            up = binary(ctx, BinaryFn.AND, nonzero(masked(0x400000)), tail)
        # never round NaN/infinity, nor (when saturating) the largest exponent past itself
        ceiling = 0xFE if saturate else 0xFF
        up = binary(ctx, BinaryFn.AND, up, binary(ctx, BinaryFn.LT, exponent, ctx.constant(np.array(ceiling, i32))))
        exponent = binary(ctx, BinaryFn.ADD, exponent, cast(ctx, up, i32))
    byte = cast(ctx, exponent, np.dtype(np.uint8))
    return ctx.emit1(Op.CAST, [byte], CastAttrs(np.dtype(ml_dtypes.float8_e8m0fnu), bitcast=True))


def _cast_node(ctx: LoweringContext, node: onnx.NodeProto, dtype: np.dtype) -> str:
    x, saturate = ctx.required_input(node, 0), bool(ctx.attr(node, "saturate", 1))
    if dtype == np.dtype(ml_dtypes.float8_e8m0fnu) and is_float(ctx.dtype(x)):
        return cast_to_e8m0(ctx, x, saturate, ctx.attr(node, "round_mode", "up"))
    return cast_saturating(ctx, x, dtype, saturate)


def _cast(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    to = ctx.attr(node, "to")
    if to is None:
        raise ctx.invalid("attribute 'to' is missing")
    return [_cast_node(ctx, node, onnx_to_numpy(int(to), f"Cast node {ctx.node_label!r}"))]


def _cast_like(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    return [_cast_node(ctx, node, ctx.dtype(ctx.required_input(node, 1)))]


def _bit_cast(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    """BitCast reinterprets bytes, so it is a CAST flagged ``bitcast`` (same element size only)."""
    to = ctx.attr(node, "to")
    if to is None:
        raise ctx.invalid("attribute 'to' is missing")
    x = ctx.required_input(node, 0)
    dtype = onnx_to_numpy(int(to), f"BitCast node {ctx.node_label!r}")
    if dtype.itemsize != ctx.dtype(x).itemsize:
        raise ctx.invalid(f"cannot reinterpret {ctx.dtype(x)} ({ctx.dtype(x).itemsize} bytes) as {dtype} "
                          f"({dtype.itemsize} bytes)")
    return [ctx.emit1(Op.CAST, [x], CastAttrs(dtype, bitcast=True))]


def _where(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    cond, a, b = (ctx.required_input(node, i) for i in range(3))
    if ctx.dtype(cond) != np.dtype(bool):
        raise ctx.invalid(f"condition must be bool, got {ctx.dtype(cond)}")
    _same_dtype(ctx, a, b)
    return [select(ctx, cond, a, b)]


RULES: dict[str, Rule] = {
    **{op: _unary_rule(fn) for op, fn in _UNARY.items()},
    **{op: _parametric_rule(op) for op in _PARAMETRIC},
    **{op: _binary_rule(fn) for op, fn in _BINARY.items()},
    "Selu": _selu, "Softsign": _softsign, "Mish": _mish, "Swish": _swish, "Gelu": _gelu,
    "PRelu": _prelu, "Clip": _clip, "Pow": _pow, "Mod": _mod, "BitShift": _bit_shift,
    "Sum": _variadic_rule(BinaryFn.ADD), "Mean": _variadic_rule(BinaryFn.ADD, mean=True),
    "Max": _variadic_rule(BinaryFn.MAX), "Min": _variadic_rule(BinaryFn.MIN),
    "IsNaN": _is_nan, "IsInf": _is_inf, "BitwiseNot": _bitwise_not, "Shrink": _shrink,
    "ThresholdedRelu": _thresholded_relu, "Celu": _celu, "Cast": _cast, "CastLike": _cast_like, "Where": _where,
    "BitCast": _bit_cast,
}
