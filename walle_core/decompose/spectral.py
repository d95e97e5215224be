"""DFT and STFT as matrix products with constant Fourier matrices.

A DFT of static length is linear in the real and imaginary parts of its input, so along the
signal axis it is two MATMULs per output part with cos / sin matrices built here in float64:
forward, inverse, one-sided (rfft) and inverse one-sided (irfft, which weighs the interior
bins twice) all differ only in those matrices. STFT frames the signal with one strided RASTER
view, applies the window and runs the same DFT over each frame.
"""

from __future__ import annotations

import numpy as np
import onnx

from walle_core.decompose import raster
from walle_core.decompose.context import LoweringContext, Rule
from walle_core.decompose.elementwise import binary
from walle_core.onnx.dtypes import onnx_to_numpy
from walle_core.ops import BinaryFn, MatMulAttrs, Op

#: a mel filter bank is a weight table; past this many entries the inputs are surely wrong
MAX_MEL_ELEMENTS = 1 << 24


def fourier_matrices(length: int, n: int, inverse: bool, onesided: bool) -> tuple[np.ndarray, np.ndarray, bool]:
    """(C, S, real_output): y_re = x_re C - x_im S, y_im = x_re S + x_im C over ``length``
    input samples (zero-padded or truncated to ``n``)."""
    if inverse and onesided:  # irfft: bins 0..n/2 of a Hermitian spectrum -> n real samples
        bins = np.arange(length).reshape(-1, 1)
        t = np.arange(n).reshape(1, -1)
        weight = np.where((bins == 0) | ((n % 2 == 0) & (bins == n // 2)), 1.0, 2.0)
        weight = np.where(bins <= n // 2, weight, 0.0)
        angle = 2 * np.pi * bins * t / n
        return weight * np.cos(angle) / n, weight * np.sin(angle) / n, True
    k = np.arange(n // 2 + 1 if onesided else n).reshape(1, -1)
    samples = np.arange(length).reshape(-1, 1)
    angle = 2 * np.pi * samples * k / n * (1.0 if inverse else -1.0)
    keep = samples < n
    scale = 1.0 / n if inverse else 1.0
    return np.where(keep, np.cos(angle), 0.0) * scale, np.where(keep, np.sin(angle), 0.0) * scale, False


def dft(ctx: LoweringContext, x: str, axis: int, n: int, inverse: bool, onesided: bool) -> str:
    """DFT of ``x`` ([..., 1 or 2], last dim real/imag) along ``axis``."""
    shape = ctx.shape(x)
    rank = len(shape)
    parts = shape[-1]
    if parts not in (1, 2) or not 0 <= axis < rank - 1:
        raise ctx.invalid(f"input {shape} must end in 1 (real) or 2 (complex) and axis {axis} be a signal axis")
    c, s, real_out = fourier_matrices(shape[axis], n, inverse, onesided)
    perm = [d for d in range(rank - 1) if d != axis] + [axis]
    dtype = ctx.dtype(x)

    def part(i: int) -> str:
        sliced = raster.squeeze(ctx, raster.slice_axes(ctx, x, [i], [i + 1], [rank - 1]), [rank - 1])
        return raster.transpose(ctx, sliced, perm)

    def times(a: str, m: np.ndarray) -> str:
        return ctx.emit1(Op.MATMUL, [a, ctx.constant(m.astype(dtype))], MatMulAttrs())

    re = part(0)
    im = part(1) if parts == 2 else None
    y_re, y_im = times(re, c), times(re, s)
    if im is not None:
        y_re = binary(ctx, BinaryFn.SUB, y_re, times(im, s))
        y_im = binary(ctx, BinaryFn.ADD, y_im, times(im, c))
    outs = [y_re] if real_out else [y_re, y_im]
    back = list(np.argsort(perm))
    stacked = [raster.unsqueeze(ctx, raster.transpose(ctx, o, back), [rank - 1]) for o in outs]
    return raster.concat(ctx, stacked, rank - 1)


def _scalar(ctx: LoweringContext, node: onnx.NodeProto, i: int, what: str) -> int | None:
    value = ctx.const_input(node, i, what)
    return None if value is None or value.size == 0 else int(np.asarray(value).reshape(-1)[0])


def _dft(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    x = ctx.required_input(node, 0)
    rank = ctx.rank(x)
    if ctx.opset >= 20:
        axis = _scalar(ctx, node, 2, "axis")
        axis = -2 if axis is None else axis
    else:
        axis = int(ctx.attr(node, "axis", 1))
    axis = ctx.axis(axis, rank)
    inverse, onesided = bool(ctx.attr(node, "inverse", 0)), bool(ctx.attr(node, "onesided", 0))
    n = _scalar(ctx, node, 1, "dft_length")
    if n is None:
        n = 2 * (ctx.shape(x)[axis] - 1) if inverse and onesided else ctx.shape(x)[axis]
    if n <= 0:
        raise ctx.invalid(f"dft_length {n} must be positive")
    return [dft(ctx, x, axis, n, inverse, onesided)]


def _stft(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    x = ctx.required_input(node, 0)
    shape = ctx.shape(x)
    if len(shape) != 3:
        raise ctx.invalid(f"signal must be [batch, length, 1 or 2], got {shape}")
    step = _scalar(ctx, node, 1, "frame_step")
    window = ctx.input(node, 2)
    length = _scalar(ctx, node, 3, "frame_length")
    if length is None:
        if not window:
            raise ctx.invalid("one of window and frame_length is required")
        length = ctx.shape(window)[0]
    if step is None or step <= 0 or not 0 < length <= shape[1]:
        raise ctx.invalid(f"frame_step {step} / frame_length {length} do not fit a signal of {shape[1]}")
    batch, total, parts = shape
    frames = 1 + (total - length) // step
    strides = raster.contiguous_strides(shape)
    framed = raster.view_copy(ctx, x, [batch, frames, length, parts], 0,
                              [strides[0], step * strides[1], strides[1], strides[2]])
    if window:
        framed = binary(ctx, BinaryFn.MUL, framed, raster.reshape(ctx, window, [length, 1]))
    return [dft(ctx, framed, 2, length, False, bool(ctx.attr(node, "onesided", 1)))]


def mel_weight_matrix(num_mel_bins: int, dft_length: int, sample_rate: float, lower_hz: float,
                      upper_hz: float) -> np.ndarray:
    """Triangular mel filters, [dft_length // 2 + 1, num_mel_bins], in float64.

    Follows the ONNX reference evaluator bin for bin, including its choice of dividing the mel
    range into ``num_mel_bins + 2`` steps and flooring each band edge to a spectrogram bin.
    """
    edges_mel = np.arange(num_mel_bins + 2)
    # the same float expressions as the reference, so band edges floor to the same bins
    low_mel = 2595 * np.log1p(lower_hz / 700) / np.log(10)
    high_mel = 2595 * np.log1p(upper_hz / 700) / np.log(10)
    step = (high_mel - low_mel) / (num_mel_bins + 2)
    edges_hz = 700 * np.expm1((edges_mel * step + low_mel) / 2595 * np.log(10))
    edges = (((dft_length + 1) * edges_hz) // sample_rate).astype(np.int64)
    n_bins = dft_length // 2 + 1
    if edges.min() < 0 or edges.max() >= n_bins:
        raise ValueError(f"band edges {edges.min()}..{edges.max()} fall outside the {n_bins} spectrogram bins")
    out = np.zeros((n_bins, num_mel_bins))
    for i in range(num_mel_bins):
        left, center, right = edges[i], edges[i + 1], edges[i + 2]
        if center == left:
            out[center, i] = 1.0
        else:
            out[left:center + 1, i] = (np.arange(left, center + 1) - left) / (center - left)
        if right > center:
            out[center:right, i] = (right - np.arange(center, right)) / (right - center)
    return out


def _mel_weight_matrix(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    """The matrix depends only on its five scalar inputs (its shape too), so it is a constant
    of the plan: built here once those values are known (value-specialised if fed as inputs)."""
    names = ("num_mel_bins", "dft_length", "sample_rate", "lower_edge_hertz", "upper_edge_hertz")
    values = []
    for i, what in enumerate(names):
        value = ctx.const_input(node, i, what)
        if value is None or value.size != 1:
            raise ctx.invalid(f"input {i} ({what}) must be a scalar")
        values.append(value.reshape(-1)[0])
    mel_bins, dft_length, sample_rate = int(values[0]), int(values[1]), values[2]
    if mel_bins <= 0 or dft_length <= 0 or sample_rate <= 0:
        raise ctx.invalid(f"num_mel_bins={mel_bins}, dft_length={dft_length} and sample_rate={sample_rate} "
                          "must be positive")
    if mel_bins * (dft_length // 2 + 1) > MAX_MEL_ELEMENTS:
        raise ctx.unsupported(f"a {dft_length // 2 + 1}x{mel_bins} mel matrix is too large")
    try:
        table = mel_weight_matrix(mel_bins, dft_length, sample_rate, values[3], values[4])
    except ValueError as exc:
        raise ctx.invalid(str(exc)) from None
    to = ctx.attr(node, "output_datatype", onnx.TensorProto.FLOAT)
    return [ctx.constant(table, onnx_to_numpy(int(to), f"MelWeightMatrix node {ctx.node_label!r}"))]


RULES: dict[str, Rule] = {"DFT": _dft, "STFT": _stft, "MelWeightMatrix": _mel_weight_matrix}
