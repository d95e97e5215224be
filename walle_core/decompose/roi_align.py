"""RoiAlign as one GATHER, a weighting MUL and a REDUCE.

Where each output cell samples the feature map depends only on the boxes (``rois``) and
their batch indices, never on the features. So once those are known while lowering (they
are constants, or value-specialised inputs) every cell's bilinear taps become a constant
table of (flat position, weight): the features of all channels are gathered at those
positions, weighted, and summed (avg mode) or maxed (max mode). The sampling follows the
ONNX reference evaluator exactly, including its max mode taking the largest *weighted tap*.
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from walle_core.decompose import raster
from walle_core.decompose.context import LoweringContext, Rule
from walle_core.decompose.elementwise import binary
from walle_core.decompose.reduce import reduce
from walle_core.ops import BinaryFn, GatherAttrs, Op, ReduceFn

#: gathered elements per channel (cells x taps) beyond which the tables are surely a mistake
MAX_TAPS = 1 << 22


def _bilinear_taps(y: float, x: float, height: int, width: int) -> list[tuple[int, float]]:
    """The four (flat position, weight) taps of a sample at (y, x); all weight 0 outside."""
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return [(0, 0.0)] * 4
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_low = y_high = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return [(y_low * width + x_low, hy * hx), (y_low * width + x_high, hy * lx),
            (y_high * width + x_low, ly * hx), (y_high * width + x_high, ly * lx)]


def roi_taps(rois: np.ndarray, batch: np.ndarray, hw: tuple[int, int], out_hw: tuple[int, int],
             scale: float, ratio: int, half_pixel: bool, average: bool) -> tuple[np.ndarray, np.ndarray]:
    """(positions into the flattened [N*H*W] map, weights), both [R, out_h, out_w, taps];
    ValueError when the boxes are not finite or would sample more than MAX_TAPS points."""
    height, width = hw
    out_h, out_w = out_hw
    offset = 0.5 if half_pixel else 0.0
    boxes = []
    # in the boxes' own precision, as the reference evaluator does: a float32 box size that
    # lands just above an integer changes the sampling grid
    for roi in rois:
        start_w, start_h, end_w, end_h = roi * rois.dtype.type(scale) - rois.dtype.type(offset)
        roi_w, roi_h = end_w - start_w, end_h - start_h
        if not half_pixel:  # malformed boxes become 1x1
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        if not np.isfinite([start_w, start_h, roi_w, roi_h]).all():
            raise ValueError(f"roi {roi.tolist()} is not finite")
        grid_h = ratio if ratio > 0 else max(math.ceil(roi_h / out_h), 0)
        grid_w = ratio if ratio > 0 else max(math.ceil(roi_w / out_w), 0)
        boxes.append((start_h, start_w, roi_h / out_h, roi_w / out_w, grid_h, grid_w))
    if sum(4 * g_h * g_w for *_, g_h, g_w in boxes) * out_h * out_w > MAX_TAPS:
        raise ValueError("the boxes sample too many points")
    cells: list[list[tuple[int, float]]] = []
    for (start_h, start_w, bin_h, bin_w, grid_h, grid_w), b in zip(boxes, batch):
        count = max(grid_h * grid_w, 1)
        base = int(b) * height * width
        for ph in range(out_h):
            for pw in range(out_w):
                taps = []
                for iy in range(grid_h):
                    y = start_h + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                    for ix in range(grid_w):
                        x = start_w + pw * bin_w + (ix + 0.5) * bin_w / grid_w
                        taps += [(base + p, w / count if average else w)
                                 for p, w in _bilinear_taps(y, x, height, width)]
                cells.append(taps or [(0, 0.0)])
    most = max((len(t) for t in cells), default=1)
    # pad by repeating a cell's first tap: adds 0 to a sum only if its weight is 0, so sums pad with
    # zero weights and maxima with a copy (a repeated candidate cannot change a maximum)
    pos = np.array([[p for p, _ in t] + [t[0][0]] * (most - len(t)) for t in cells], dtype=np.int64)
    wts = np.array([[w for _, w in t] + [0.0 if average else t[0][1]] * (most - len(t)) for t in cells])
    return pos.reshape(len(rois), out_h, out_w, most), wts.reshape(len(rois), out_h, out_w, most)


def _roi_align(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    x = ctx.required_input(node, 0)
    if ctx.rank(x) != 4:
        raise ctx.invalid(f"X must be [N, C, H, W], got {list(ctx.shape(x))}")
    rois = ctx.required_value(ctx.required_input(node, 1), "input 1 (rois)")
    batch = ctx.required_value(ctx.required_input(node, 2), "input 2 (batch_indices)")
    n, c, h, w = ctx.shape(x)
    if rois.dtype.kind != "f" or rois.ndim != 2 or rois.shape[1] != 4 or batch.shape != (rois.shape[0],):
        raise ctx.invalid(f"rois must be floating-point [R, 4] and batch_indices [R], got "
                          f"{rois.dtype}{list(rois.shape)} and {list(batch.shape)}")
    if len(batch) and (batch.min() < 0 or batch.max() >= n):
        raise ctx.invalid(f"batch_indices {batch.tolist()} are out of range for batch size {n}")
    mode = ctx.attr(node, "mode", "avg")
    if mode not in ("avg", "max"):
        raise ctx.invalid(f"mode {mode!r} must be 'avg' or 'max'")
    half_pixel = ctx.attr(node, "coordinate_transformation_mode", "half_pixel") == "half_pixel"
    out_hw = (int(ctx.attr(node, "output_height", 1)), int(ctx.attr(node, "output_width", 1)))
    ratio = int(ctx.attr(node, "sampling_ratio", 0))
    if min(out_hw) <= 0 or h == 0 or w == 0:
        raise ctx.invalid(f"output {out_hw} and feature map {h}x{w} must be non-empty")
    if len(rois) * out_hw[0] * out_hw[1] > MAX_TAPS:
        raise ctx.unsupported(f"{len(rois)} boxes of {out_hw[0]}x{out_hw[1]} cells are too many")
    try:
        pos, wts = roi_taps(rois, batch, (h, w), out_hw, float(ctx.attr(node, "spatial_scale", 1.0)),
                            ratio, half_pixel, mode == "avg")
    except ValueError as exc:
        raise ctx.unsupported(f"cannot build the sampling tables: {exc}") from None
    table = raster.reshape(ctx, raster.transpose(ctx, x, [1, 0, 2, 3]), [c, n * h * w])
    taps = ctx.emit1(Op.GATHER, [table, ctx.constant(pos)], GatherAttrs(1))  # [C, R, oh, ow, taps]
    weighted = binary(ctx, BinaryFn.MUL, taps, ctx.constant(wts.astype(ctx.dtype(x))))
    pooled = reduce(ctx, weighted, ReduceFn.SUM if mode == "avg" else ReduceFn.MAX, (4,), keepdims=False)
    return [raster.transpose(ctx, pooled, [1, 0, 2, 3])]


RULES: dict[str, Rule] = {"RoiAlign": _roi_align}
