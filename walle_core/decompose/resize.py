"""Resize and Upsample, every mode, as one constant linear map per resized axis.

Resize is separable: along one axis each output sample is a fixed weighted sum of input
samples, whatever the mode (nearest, linear, cubic, antialiased or not) and coordinate
transformation. So each axis becomes a constant weight matrix W [out, in], computed here in
float64, and the data is multiplied by it along that axis (one MATMUL). When every row of W
picks exactly one input (nearest modes) the axis is a GATHER instead, which is exact for any
dtype. ``tf_crop_and_resize`` positions outside the input get ``extrapolation_value``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import onnx

from walle_core.decompose import raster
from walle_core.decompose.context import LoweringContext, Rule
from walle_core.decompose.elementwise import cast, select, unary
from walle_core.decompose.raster import numpy_shape
from walle_core.ops import GatherAttrs, MatMulAttrs, Op, UnaryFn
from walle_core.reference.kernels import is_float

Coeffs = Callable[[float, float], np.ndarray]


# -- interpolation kernels: coefficients of the neighbours of a sample at fraction r ----------

def _nearest(rounding: str) -> Coeffs:
    def coeffs(r: float, scale: float) -> np.ndarray:
        if r == 1.0 or rounding == "ceil":
            return np.array([0.0, 1.0])
        if rounding == "floor":
            return np.array([1.0, 0.0])
        up = r > 0.5 if rounding == "round_prefer_floor" else r >= 0.5
        return np.array([0.0, 1.0]) if up else np.array([1.0, 0.0])

    return coeffs


def _linear(antialias: bool) -> Coeffs:
    def coeffs(r: float, scale: float) -> np.ndarray:
        if not antialias:
            return np.array([1.0 - r, r])
        s = min(scale, 1.0)
        start = math.floor(-1.0 / s) + 1
        taps = (np.arange(start, 2 - start) - r) * s
        c = np.clip(1.0 - np.abs(taps), 0.0, 1.0)
        return c / c.sum()

    return coeffs


def _cubic_kernel(x: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel with parameter ``a``."""
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def _cubic(antialias: bool, a: float) -> Coeffs:
    def coeffs(r: float, scale: float) -> np.ndarray:
        if not antialias:
            return _cubic_kernel(np.array([r + 1, r, 1 - r, 2 - r]), a)
        s = min(scale, 1.0)
        start = math.floor(-2.0 / s) + 1
        c = _cubic_kernel(s * (np.arange(start, 2 - start) - r), a)
        return c / c.sum()

    return coeffs


# -- per-axis weights ---------------------------------------------------------------------------

def _source_coords(mode: str, out_n: int, in_n: int, scale: float, roi: tuple[float, float] | None
                   ) -> tuple[np.ndarray, np.ndarray | None]:
    """Input coordinate of each output sample, and (tf_crop_and_resize) which fall outside."""
    y = np.arange(out_n, dtype=np.float64)
    length = scale * in_n
    outside = None
    if mode == "align_corners":
        x = np.zeros(out_n) if length == 1 else y * (in_n - 1) / (length - 1)
    elif mode == "asymmetric":
        x = y / scale
    elif mode == "tf_crop_and_resize":
        lo, hi = roi if roi is not None else (0.0, 1.0)
        x = np.full(out_n, (hi - lo) * (in_n - 1) / 2) if length == 1 else y * (hi - lo) * (in_n - 1) / (length - 1)
        x = x + lo * (in_n - 1)
        outside = (x < 0) | (x > in_n - 1)
    elif mode == "pytorch_half_pixel":
        x = np.full(out_n, -0.5) if length == 1 else (y + 0.5) / scale - 0.5
    elif mode == "half_pixel":
        x = (y + 0.5) / scale - 0.5
    elif mode == "half_pixel_symmetric":
        offset = in_n / 2 * (1 - out_n / length)
        x = offset + (y + 0.5) / scale - 0.5
    else:
        raise ValueError(f"coordinate_transformation_mode={mode!r} is not known")
    return x, outside


def axis_weights(coeffs: Coeffs, in_n: int, out_n: int, scale: float, mode: str,
                 roi: tuple[float, float] | None, exclude_outside: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """W [out_n, in_n] (float64) and the extrapolation mask of one resized axis. Neighbours past
    the border repeat the edge sample (their weight lands on it) unless ``exclude_outside``."""
    x, outside = _source_coords(mode, out_n, in_n, scale, roi)
    weights = np.zeros((out_n, in_n))
    for i, xi in enumerate(x):
        base = math.floor(xi)
        c = np.asarray(coeffs(1.0 if xi == base else xi - base, scale), dtype=np.float64)
        n = len(c)
        if n % 2 == 0:  # n taps around xi, the lower ones preferred
            first = base - n // 2 + (0 if xi == base else 1)
        else:
            first = base - (n - 1) // 2 + (0 if xi - base <= 0.5 else 1)
        taps = np.arange(first, first + n)
        if exclude_outside:
            c = np.where((taps < 0) | (taps >= in_n), 0.0, c)
            total = c.sum()
            c = c / (total if total != 0 else 1.0)
        np.add.at(weights[i], np.clip(taps, 0, in_n - 1), c)
    return weights, outside


# -- applying them --------------------------------------------------------------------------------

def _along_axis(ctx: LoweringContext, x: str, axis: int, weights: np.ndarray) -> str:
    rank = ctx.rank(x)
    picks = weights.argmax(axis=1)
    if np.array_equal(weights, np.eye(weights.shape[1])[picks]):
        return ctx.emit1(Op.GATHER, [x, ctx.constant(picks.astype(np.int64))], GatherAttrs(axis))
    perm = [d for d in range(rank) if d != axis] + [axis]
    moved = raster.transpose(ctx, x, perm)
    w = ctx.constant(np.ascontiguousarray(weights.T).astype(ctx.dtype(x)))
    y = ctx.emit1(Op.MATMUL, [moved, w], MatMulAttrs())
    return raster.transpose(ctx, y, list(np.argsort(perm)))


def _output_sizes(ctx: LoweringContext, node: onnx.NodeProto, shape: tuple[int, ...], axes: list[int],
                  scales: np.ndarray | None, sizes: np.ndarray | None) -> tuple[list[float], list[int]]:
    rank = len(shape)
    factors, out = [1.0] * rank, list(shape)
    if sizes is not None and sizes.size:
        given = numpy_shape(sizes)
        if len(given) != len(axes) or any(s < 0 for s in given):
            raise ctx.invalid(f"sizes {given} do not match axes {axes}")
        for a, s in zip(axes, given):
            out[a], factors[a] = s, s / shape[a] if shape[a] else 1.0
        policy = ctx.attr(node, "keep_aspect_ratio_policy", "stretch")
        if policy != "stretch":
            if policy not in ("not_larger", "not_smaller"):
                raise ctx.invalid(f"keep_aspect_ratio_policy={policy!r} is not known")
            pick = min if policy == "not_larger" else max
            common = pick(factors[a] for a in axes)
            for a in axes:
                factors[a], out[a] = common, int(common * shape[a] + 0.5)
        return factors, out
    if scales is None or not scales.size:
        raise ctx.invalid("one of scales and sizes is required")
    given_scales = [float(s) for s in np.asarray(scales).reshape(-1)]
    if len(given_scales) != len(axes) or any(s <= 0 for s in given_scales):
        raise ctx.invalid(f"scales {given_scales} do not match axes {axes} (or are not positive)")
    for a, s in zip(axes, given_scales):
        factors[a], out[a] = s, int(s * shape[a])
    return factors, out


def resize(ctx: LoweringContext, node: onnx.NodeProto, x: str, scales: np.ndarray | None,
           sizes: np.ndarray | None, roi: np.ndarray | None, legacy: bool) -> str:
    shape = ctx.shape(x)
    rank = len(shape)
    mode = ctx.attr(node, "mode", "nearest")
    antialias = bool(ctx.attr(node, "antialias", 0))
    axes_attr = ctx.ints_attr(node, "axes")
    axes = list(range(rank)) if axes_attr is None else [ctx.axis(a, rank) for a in axes_attr]
    if legacy:  # Upsample and Resize-10: asymmetric coordinates, nearest rounds down
        transform, rounding = "asymmetric", "floor"
    else:
        transform = ctx.attr(node, "coordinate_transformation_mode", "half_pixel")
        rounding = ctx.attr(node, "nearest_mode", "round_prefer_floor")
    if mode == "nearest":
        if rounding not in ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil"):
            raise ctx.invalid(f"nearest_mode={rounding!r} is not known")
        coeffs = _nearest(rounding)
    elif mode == "linear":
        coeffs = _linear(antialias)
    elif mode == "cubic":
        coeffs = _cubic(antialias, float(ctx.attr(node, "cubic_coeff_a", -0.75)))
    else:
        raise ctx.invalid(f"mode={mode!r} is not nearest, linear or cubic")
    factors, out = _output_sizes(ctx, node, shape, axes, scales, sizes)
    bounds = None
    if roi is not None and roi.size:
        given = [float(v) for v in roi.reshape(-1)]
        if len(given) != 2 * len(axes):
            raise ctx.invalid(f"roi {given} must hold 2 x {len(axes)} values")
        bounds = {a: (given[i], given[i + len(axes)]) for i, a in enumerate(axes)}
    dtype = ctx.dtype(x)
    work = dtype if dtype in (np.dtype(np.float32), np.dtype(np.float64)) else np.dtype(np.float32)
    y = x
    extrapolation = float(ctx.attr(node, "extrapolation_value", 0.0))
    exclude = bool(ctx.attr(node, "exclude_outside", 0))
    for a in axes:
        axis_roi = bounds.get(a) if bounds else None
        if math.isclose(factors[a], 1.0) and out[a] == shape[a] and (
                axis_roi is None or (math.isclose(axis_roi[0], 0.0) and math.isclose(axis_roi[1], 1.0))):
            continue
        if out[a] == 0 or shape[a] == 0:
            raise ctx.unsupported(f"resizing axis {a} from {shape[a]} to {out[a]} elements")
        try:
            weights, outside = axis_weights(coeffs, shape[a], out[a], factors[a], transform, axis_roi, exclude)
        except ValueError as exc:
            raise ctx.invalid(str(exc)) from None
        one_hot = np.array_equal(weights, np.eye(shape[a])[weights.argmax(axis=1)])
        if not one_hot and ctx.dtype(y) != work:
            y = cast(ctx, y, work)
        y = _along_axis(ctx, y, a, weights)
        if outside is not None and outside.any():
            view = [1] * rank
            view[a] = out[a]
            y = select(ctx, ctx.constant(outside.reshape(view)), ctx.constant(np.array(extrapolation, ctx.dtype(y))), y)
    if ctx.dtype(y) != dtype:
        if not is_float(dtype):  # as ONNX: round, then saturate to the integer range
            info = np.iinfo(dtype)
            y = unary(ctx, unary(ctx, y, UnaryFn.ROUND), UnaryFn.CLIP, float(info.min), float(info.max))
        y = cast(ctx, y, dtype)
    return y


def _resize(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    x = ctx.required_input(node, 0)
    if ctx.opset < 11:
        return [resize(ctx, node, x, ctx.const_input(node, 1, "scales"), None, None, legacy=True)]
    roi = ctx.const_input(node, 1, "roi")
    scales = ctx.const_input(node, 2, "scales")
    sizes = ctx.const_input(node, 3, "sizes")
    return [resize(ctx, node, x, scales, sizes, roi, legacy=False)]


def _upsample(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    x = ctx.required_input(node, 0)
    if ctx.opset < 9:
        scales = ctx.attr(node, "scales")
        scales = None if scales is None else np.array(scales, dtype=np.float32)
    else:
        scales = ctx.const_input(node, 1, "scales")
    return [resize(ctx, node, x, scales, None, None, legacy=True)]


RULES: dict[str, Rule] = {"Resize": _resize, "Upsample": _upsample}
