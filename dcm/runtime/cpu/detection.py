"""NonMaxSuppression and RoiAlign, the ops of a detection model past its backbone (SSD, YOLO and
torchvision exports that keep them in the graph).

NonMaxSuppression: the box selection at the end.

Per batch and class, the boxes above ``score_threshold`` are taken best score first (equal scores
in index order); each one kept removes the remaining boxes whose intersection over union with it is
above ``iou_threshold``, until ``max_output_boxes_per_class`` are kept. That is the greedy rule of
onnx's reference (a box is kept unless a box kept before it overlaps it), one vectorized IoU pass per
kept box instead of one Python step per pair. Degenerate boxes (no area) and boxes that only touch
never suppress, as in the reference.
"""
from __future__ import annotations

import numpy as np

from dcm.runtime.cpu.registry import register
from dcm.runtime.kernel import Kernel


def _corners(boxes: np.ndarray, center_point_box: int) -> np.ndarray:
    """[N, 4] boxes as [x_min, y_min, x_max, y_max]: from [y1, x1, y2, x2] (either pair of opposite
    corners) or from [x_center, y_center, width, height]."""
    if center_point_box:
        half = boxes[:, 2:] / 2
        return np.concatenate([boxes[:, :2] - half, boxes[:, :2] + half], axis=1)
    y1, x1, y2, x2 = boxes.T
    return np.stack([np.minimum(x1, x2), np.minimum(y1, y2), np.maximum(x1, x2), np.maximum(y1, y2)], axis=1)


def _overlapping(box: np.ndarray, others: np.ndarray, threshold: float) -> np.ndarray:
    """Which of ``others`` (corners) overlap ``box`` with an IoU above ``threshold``."""
    width = np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0])
    height = np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1])
    inter = width * height
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    union = area + areas - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union
    return (width > 0) & (height > 0) & (area > 0) & (areas > 0) & (union > 0) & (iou > threshold)


def _keep(corners: np.ndarray, scores: np.ndarray, limit: int, iou: float, threshold: float | None) -> list[int]:
    """The kept box indices of one batch and class, in the order they were kept."""
    order = np.flatnonzero(scores > threshold) if threshold is not None else np.arange(scores.size)
    order = order[np.argsort(-scores[order], kind="stable")]  # best first, equal scores in index order
    kept: list[int] = []
    while order.size and len(kept) < limit:
        best, order = order[0], order[1:]
        kept.append(int(best))
        order = order[~_overlapping(corners[best], corners[order], iou)]
    return kept


def _scalar(value, kind, default):
    if value is None or np.asarray(value).size == 0:
        return default
    return kind(np.asarray(value).reshape(-1)[0])


@register("NonMaxSuppression")
class NonMaxSuppression(Kernel):
    def __call__(self, boxes, scores, max_output=None, iou_threshold=None, score_threshold=None):
        if boxes.ndim != 3 or boxes.shape[2] != 4:
            raise ValueError(f"boxes of shape {list(boxes.shape)}: [batches, boxes, 4] expected")
        if scores.ndim != 3 or scores.shape[0] != boxes.shape[0] or scores.shape[2] != boxes.shape[1]:
            raise ValueError(f"scores of shape {list(scores.shape)} for boxes {list(boxes.shape)}: "
                             "[batches, classes, boxes] expected")
        limit = max(_scalar(max_output, int, 0), 0)
        iou = _scalar(iou_threshold, float, 0.0)
        threshold = _scalar(score_threshold, float, None)
        center = int(self.attrs.get("center_point_box", 0))
        selected = []
        for b in range(boxes.shape[0]):
            corners = _corners(boxes[b], center)
            for c in range(scores.shape[1]):
                selected += [(b, c, i) for i in _keep(corners, scores[b, c], limit, iou, threshold)]
        return (np.array(selected, dtype=np.int64).reshape(-1, 3),)


def _samples(start: float, bin_size: float, pooled: int, grid: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """One axis of RoiAlign's sampling points (``grid`` per output bin): the two neighbouring indices of
    each point and their bilinear weights, [pooled, grid, 2] each; a point more than one pixel outside
    the map gets weights 0, one past the last pixel reads the last, as onnx's reference does."""
    pos = start + np.arange(pooled)[:, None] * bin_size + (np.arange(grid)[None, :] + 0.5) * bin_size / grid
    outside = (pos < -1.0) | (pos > length)
    pos = np.maximum(pos, 0.0)
    low = np.floor(pos).astype(np.intp)
    edge = low >= length - 1
    low = np.where(edge, length - 1, low)
    high = np.where(edge, length - 1, low + 1)
    frac = np.where(edge, 0.0, pos - low)
    weights = np.where(outside[..., None], 0.0, np.stack([1 - frac, frac], -1))
    return np.where(outside[..., None], 0, np.stack([low, high], -1)), weights


@register("RoiAlign")
class RoiAlign(Kernel):
    """Each region of interest (x1, y1, x2, y2, scaled by ``spatial_scale``) of its batch entry's map
    pooled to ``output_height`` x ``output_width`` bins, each bin the average (or the max) of bilinear
    samples on a grid of ``sampling_ratio`` (0: enough to be about a pixel apart) points a side. The
    average is separable: per region, two small matrices of summed weights and one product with the
    map; the max (onnxruntime's: the largest weighted corner of any sample) takes every sample."""

    def __call__(self, x, rois, batch_indices):
        if x.ndim != 4 or rois.ndim != 2 or rois.shape[1] != 4 or batch_indices.shape != (rois.shape[0],):
            raise ValueError(f"X {list(x.shape)}, rois {list(rois.shape)}, batch_indices {list(batch_indices.shape)}: "
                             "[N, C, H, W], [R, 4] and [R] expected")
        n, c, h, w = x.shape
        if np.any((batch_indices < 0) | (batch_indices >= n)):
            raise ValueError(f"batch_indices outside [0, {n})")
        out_h, out_w = int(self.attrs.get("output_height", 1)), int(self.attrs.get("output_width", 1))
        ratio, scale = int(self.attrs.get("sampling_ratio", 0)), float(self.attrs.get("spatial_scale", 1.0))
        half_pixel = self.attrs.get("coordinate_transformation_mode", "half_pixel") == "half_pixel"
        use_max = self.attrs.get("mode", "avg") == "max"
        y = np.zeros((rois.shape[0], c, out_h, out_w), np.float64)
        for r, (box, b) in enumerate(zip(rois.astype(np.float64) * scale - (0.5 if half_pixel else 0.0), batch_indices)):
            x1, y1, x2, y2 = box
            roi_w, roi_h = (x2 - x1, y2 - y1) if half_pixel else (max(x2 - x1, 1.0), max(y2 - y1, 1.0))
            grid_h = ratio if ratio > 0 else int(np.ceil(roi_h / out_h))
            grid_w = ratio if ratio > 0 else int(np.ceil(roi_w / out_w))
            if grid_h <= 0 or grid_w <= 0:
                continue  # no sample: zeros
            yi, yw = _samples(y1, roi_h / out_h, out_h, grid_h, h)
            xi, xw = _samples(x1, roi_w / out_w, out_w, grid_w, w)
            fmap = x[int(b)].astype(np.float64)
            if use_max:  # [C, out_h, grid_h, 2, out_w, grid_w, 2]
                v = fmap[:, yi.reshape(-1)][:, :, xi.reshape(-1)].reshape(c, *yi.shape, *xi.shape)
                v = v * yw[None, :, :, :, None, None, None] * xw[None, None, None, None]
                y[r] = v.max(axis=(2, 3, 5, 6))
            else:
                wy, wx = np.zeros((out_h, h)), np.zeros((out_w, w))
                np.add.at(wy, (np.arange(out_h)[:, None, None], yi), yw)
                np.add.at(wx, (np.arange(out_w)[:, None, None], xi), xw)
                y[r] = np.einsum("ph,chw,qw->cpq", wy, fmap, wx) / max(grid_h * grid_w, 1)
        return (y.astype(x.dtype),)
