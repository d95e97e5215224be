"""The atomic op set: the only ops a backend ever has to implement.

Every ONNX (or other front-end) op is lowered onto these by decomposition rules in
``walle_core.decompose``. The set is deliberately small; see ``docs/atomic-ops.md`` for
why each member cannot be expressed by the others. Each op carries a frozen attribute
dataclass, so a node is fully described by ``(op, attrs, input types)``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np


class Op(enum.Enum):
    # --- data movement ---------------------------------------------------
    RASTER = "raster"  # strided multi-region copy: transpose, slice, concat, pad, broadcast, reshape
    # --- elementwise -----------------------------------------------------
    UNARY = "unary"
    BINARY = "binary"  # NumPy broadcasting
    SELECT = "select"  # where(cond, a, b), NumPy broadcasting
    CAST = "cast"
    # --- reductions and scans --------------------------------------------
    REDUCE = "reduce"
    ARG_REDUCE = "arg_reduce"
    CUMULATIVE = "cumulative"
    TOPK = "topk"
    # --- dense linear algebra --------------------------------------------
    MATMUL = "matmul"  # batched, broadcasting, optional bias + fused activation
    CONV2D = "conv2d"  # NCHW, groups, optional bias + fused activation
    POOL2D = "pool2d"
    # --- indexing --------------------------------------------------------
    GATHER = "gather"
    SCATTER = "scatter"


class GroupOp:
    """Membership sets so passes test a property instead of listing ops."""

    Elementwise = frozenset({Op.UNARY, Op.BINARY, Op.SELECT, Op.CAST})
    Movement = frozenset({Op.RASTER})
    Reduction = frozenset({Op.REDUCE, Op.ARG_REDUCE, Op.CUMULATIVE, Op.TOPK})
    Dense = frozenset({Op.MATMUL, Op.CONV2D, Op.POOL2D})
    Indexing = frozenset({Op.GATHER, Op.SCATTER})


class UnaryFn(enum.Enum):
    """Unary functions. ``alpha``/``beta`` of :class:`UnaryAttrs` parametrise some of them."""

    IDENTITY = "identity"
    NEG = "neg"
    ABS = "abs"
    SIGN = "sign"
    EXP = "exp"
    LOG = "log"
    SQRT = "sqrt"
    RSQRT = "rsqrt"
    RECIPROCAL = "reciprocal"
    FLOOR = "floor"
    CEIL = "ceil"
    ROUND = "round"  # half to even, as ONNX Round
    SIN = "sin"
    COS = "cos"
    TAN = "tan"
    ASIN = "asin"
    ACOS = "acos"
    ATAN = "atan"
    SINH = "sinh"
    COSH = "cosh"
    ASINH = "asinh"
    ACOSH = "acosh"
    ATANH = "atanh"
    TANH = "tanh"
    ERF = "erf"
    NOT = "not"  # bool only
    # activations (also usable as the fused activation of MATMUL / CONV2D)
    RELU = "relu"
    LEAKY_RELU = "leaky_relu"  # x if x >= 0 else alpha * x
    CLIP = "clip"  # min(max(x, alpha), beta)
    SIGMOID = "sigmoid"
    HARD_SIGMOID = "hard_sigmoid"  # clip(alpha * x + beta, 0, 1)
    HARD_SWISH = "hard_swish"  # x * clip(x / 6 + 0.5, 0, 1)
    ELU = "elu"  # x if x > 0 else alpha * (exp(x) - 1)
    SOFTPLUS = "softplus"  # log(1 + exp(x))


class BinaryFn(enum.Enum):
    ADD = "add"
    SUB = "sub"
    MUL = "mul"
    DIV = "div"  # true division for floats, truncation toward zero for integers
    POW = "pow"
    MAX = "max"
    MIN = "min"
    MOD = "mod"  # sign of the divisor (Python / ONNX fmod=0)
    FMOD = "fmod"  # sign of the dividend (C fmod / ONNX fmod=1)
    # comparisons and logic: output dtype is bool
    EQ = "eq"
    NE = "ne"
    LT = "lt"
    LE = "le"
    GT = "gt"
    GE = "ge"
    AND = "and"
    OR = "or"
    XOR = "xor"
    # integer bit ops
    BIT_AND = "bit_and"
    BIT_OR = "bit_or"
    BIT_XOR = "bit_xor"
    SHL = "shl"
    SHR = "shr"


COMPARISON_FNS = frozenset(
    {BinaryFn.EQ, BinaryFn.NE, BinaryFn.LT, BinaryFn.LE, BinaryFn.GT, BinaryFn.GE,
     BinaryFn.AND, BinaryFn.OR, BinaryFn.XOR}
)


class ReduceFn(enum.Enum):
    SUM = "sum"
    MEAN = "mean"
    MAX = "max"
    MIN = "min"
    PROD = "prod"


class PoolKind(enum.Enum):
    MAX = "max"
    AVG = "avg"


# --- attribute records -----------------------------------------------------
# Shapes and strides are in elements, over the flat row-major buffer of each tensor.


@dataclass(frozen=True)
class Region:
    """Copy ``size`` elements from input ``input`` to the output.

    Element ``i`` (a multi-index over ``size``) goes from
    ``src_offset + sum(i[d] * src_strides[d])`` in the input's flat buffer to
    ``dst_offset + sum(i[d] * dst_strides[d])`` in the output's flat buffer.
    A stride of 0 on the source side broadcasts.
    """

    input: int
    size: tuple[int, ...]
    src_offset: int
    src_strides: tuple[int, ...]
    dst_offset: int
    dst_strides: tuple[int, ...]


@dataclass(frozen=True)
class RasterAttrs:
    """Output of ``shape`` filled with ``fill`` (if not None) then written by ``regions`` in order."""

    shape: tuple[int, ...]
    regions: tuple[Region, ...]
    fill: float | None = None


@dataclass(frozen=True)
class Activation:
    """A fused unary applied to the result of MATMUL / CONV2D (IDENTITY means none)."""

    fn: UnaryFn = UnaryFn.IDENTITY
    alpha: float = 0.0
    beta: float = 0.0


@dataclass(frozen=True)
class UnaryAttrs:
    fn: UnaryFn
    alpha: float = 0.0
    beta: float = 0.0


@dataclass(frozen=True)
class BinaryAttrs:
    fn: BinaryFn


@dataclass(frozen=True)
class SelectAttrs:
    """Inputs: (cond: bool, a, b). Output: a where cond else b, broadcast."""


@dataclass(frozen=True)
class CastAttrs:
    """Convert to ``to``. With ``bitcast`` the bytes are reinterpreted instead (ONNX BitCast):
    ``to`` must have the input's element size and the shape is unchanged."""

    to: np.dtype
    bitcast: bool = False


@dataclass(frozen=True)
class ReduceAttrs:
    fn: ReduceFn
    axes: tuple[int, ...]  # non-negative, sorted, unique; empty means no reduction (copy)
    keepdims: bool


@dataclass(frozen=True)
class ArgReduceAttrs:
    """Index (int64) of the max (``largest``) or min along ``axis``."""

    axis: int
    keepdims: bool
    largest: bool
    select_last_index: bool = False


@dataclass(frozen=True)
class CumulativeAttrs:
    """Running sum along ``axis``."""

    axis: int
    exclusive: bool = False
    reverse: bool = False


@dataclass(frozen=True)
class TopKAttrs:
    """Outputs: (values, indices int64) of the ``k`` largest/smallest along ``axis``.

    Ties keep the lower index first, as ONNX requires.
    """

    axis: int
    k: int
    largest: bool = True
    sorted: bool = True


@dataclass(frozen=True)
class MatMulAttrs:
    """Inputs: (a, b[, bias]). a: [..., M, K] (or [..., K, M] if trans_a), b: [..., K, N]
    (or [..., N, K] if trans_b); batch dims broadcast; bias broadcasts to the output."""

    trans_a: bool = False
    trans_b: bool = False
    activation: Activation = Activation()


@dataclass(frozen=True)
class Conv2DAttrs:
    """Inputs: (x [N, C, H, W], w [O, C/groups, KH, KW][, bias [O]]).

    ``pads`` is (top, left, bottom, right). A residual ``add`` input, when present, is the
    fourth input, added before the activation.
    """

    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilations: tuple[int, int] = (1, 1)
    groups: int = 1
    activation: Activation = Activation()
    has_bias: bool = False
    has_residual: bool = False


@dataclass(frozen=True)
class Pool2DAttrs:
    """Input [N, C, H, W]; output spatial size given by ``out_hw`` (ceil_mode is resolved by
    the front-end). Windows are clipped to the input; padded cells never win a max and are
    counted by an average only if ``count_include_pad``."""

    kind: PoolKind
    kernel: tuple[int, int]
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]  # top, left, bottom, right
    dilations: tuple[int, int]
    out_hw: tuple[int, int]
    count_include_pad: bool = False


@dataclass(frozen=True)
class GatherAttrs:
    """Inputs: (data, indices int32/int64). out = data.take(indices, axis); negative indices
    count from the end; an index out of range is a run-time error, never a read outside."""

    axis: int


@dataclass(frozen=True)
class ScatterAttrs:
    """Inputs: (data, indices int64 [n], updates [n, *inner]). Treating data as
    [outer, *inner] along axis 0, row ``indices[i]`` is combined with ``updates[i]`` by
    ``reduction`` (None means assign), in order."""

    reduction: BinaryFn | None = None


ATTRS_TYPE: dict[Op, type] = {
    Op.RASTER: RasterAttrs,
    Op.UNARY: UnaryAttrs,
    Op.BINARY: BinaryAttrs,
    Op.SELECT: SelectAttrs,
    Op.CAST: CastAttrs,
    Op.REDUCE: ReduceAttrs,
    Op.ARG_REDUCE: ArgReduceAttrs,
    Op.CUMULATIVE: CumulativeAttrs,
    Op.TOPK: TopKAttrs,
    Op.MATMUL: MatMulAttrs,
    Op.CONV2D: Conv2DAttrs,
    Op.POOL2D: Pool2DAttrs,
    Op.GATHER: GatherAttrs,
    Op.SCATTER: ScatterAttrs,
}
