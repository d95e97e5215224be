"""NonMaxSuppression. Its output length depends on the box and score values, which a static
IR cannot express, so the selection is computed while lowering from constant (or
value-specialised) inputs, and the node becomes a constant of the selected indices."""

from __future__ import annotations

import numpy as np
import onnx

from walle_core.decompose.context import LoweringContext, Rule


def _corners(boxes: np.ndarray, center: bool) -> np.ndarray:
    """[n, 4] boxes as (x_min, y_min, x_max, y_max) in float64."""
    b = boxes.astype(np.float64)
    if center:
        half_w, half_h = b[:, 2] / 2, b[:, 3] / 2
        return np.stack([b[:, 0] - half_w, b[:, 1] - half_h, b[:, 0] + half_w, b[:, 1] + half_h], axis=1)
    return np.stack([np.minimum(b[:, 1], b[:, 3]), np.minimum(b[:, 0], b[:, 2]),
                     np.maximum(b[:, 1], b[:, 3]), np.maximum(b[:, 0], b[:, 2])], axis=1)


def _overlaps(box: np.ndarray, others: np.ndarray, threshold: float) -> np.ndarray:
    """Whether the IoU of ``box`` with each of ``others`` exceeds ``threshold``; degenerate
    (empty) intersections and areas never suppress."""
    w = np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0])
    h = np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1])
    inter = np.where((w > 0) & (h > 0), w * h, 0.0)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    union = area + areas - inter
    ok = (inter > 0) & (area > 0) & (areas > 0) & (union > 0)
    return ok & (inter / np.where(union > 0, union, 1.0) > threshold)


def _nms(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    boxes, scores = ctx.const_input(node, 0, "boxes"), ctx.const_input(node, 1, "scores")
    limit = ctx.const_input(node, 2, "max_output_boxes_per_class")
    iou = ctx.const_input(node, 3, "iou_threshold")
    floor = ctx.const_input(node, 4, "score_threshold")
    if boxes.ndim != 3 or boxes.shape[2] != 4 or scores.ndim != 3 or scores.shape[0] != boxes.shape[0] \
            or scores.shape[2] != boxes.shape[1]:
        raise ctx.invalid(f"boxes {boxes.shape} / scores {scores.shape} are not [B, N, 4] / [B, C, N]")
    limit = 0 if limit is None or limit.size == 0 else int(limit.reshape(-1)[0])
    iou = 0.0 if iou is None or iou.size == 0 else float(iou.reshape(-1)[0])
    floor = None if floor is None or floor.size == 0 else float(floor.reshape(-1)[0])
    center = bool(ctx.attr(node, "center_point_box", 0))
    picked: list[tuple[int, int, int]] = []
    for b in range(boxes.shape[0]):
        corners = _corners(boxes[b], center)
        for c in range(scores.shape[1]):
            s = scores[b, c]
            candidates = np.arange(s.size) if floor is None else np.nonzero(s > floor)[0]
            order = candidates[np.lexsort((candidates, -s[candidates]))]  # score desc, index asc
            kept: list[int] = []
            for i in order:
                if len(kept) >= limit:
                    break
                if not kept or not _overlaps(corners[i], corners[kept], iou).any():
                    kept.append(int(i))
            picked.extend((b, c, i) for i in kept)
    return [ctx.constant(np.array(picked, dtype=np.int64).reshape(-1, 3))]


RULES: dict[str, Rule] = {"NonMaxSuppression": _nms}
