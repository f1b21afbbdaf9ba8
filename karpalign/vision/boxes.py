"""Box geometry in numpy: IoU of every pair, IoU matches, greedy non-maximum suppression.

Boxes are ``[ymin, xmin, ymax, xmax]`` rows (normalised or in pixels, as long as both sides agree). The MRF
alignment accuracy (:mod:`karpalign.alignment.accuracy`), the Selective Search-style proposer
(:mod:`karpalign.vision.selective_search`) and proposal recall (:func:`karpalign.vision.proposers.proposal_recall`)
use these; the TF Object Detection API detectors keep ``tf.image.non_max_suppression`` in the graph.
"""

from __future__ import annotations

import numpy as np


def box_iou(boxes_a, boxes_b) -> np.ndarray:
    """IoU of every pair: (M, 4) x (K, 4) [ymin, xmin, ymax, xmax] -> (M, K); empty boxes give 0."""
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)  # (M, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)  # (K, 4)
    top = np.maximum(a[:, None, 0], b[None, :, 0])  # (M, K)
    left = np.maximum(a[:, None, 1], b[None, :, 1])
    bottom = np.minimum(a[:, None, 2], b[None, :, 2])
    right = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(bottom - top, 0, None) * np.clip(right - left, 0, None)  # (M, K)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)  # (M,)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)  # (K,)
    union = area_a[:, None] + area_b[None, :] - inter  # (M, K)
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def region_matches(region_boxes, gt_boxes, iou_threshold: float = 0.5) -> np.ndarray:
    """(M, K) bool: region r matches ground-truth box k when their IoU >= ``iou_threshold``."""
    return box_iou(region_boxes, gt_boxes) >= iou_threshold


def nms(boxes, iou_threshold: float, max_out: int) -> list[int]:
    """Greedy non-maximum suppression of ``(N, 4)`` boxes given best first -> kept indices (<= ``max_out``).

    A box is dropped when its IoU with an already kept box exceeds ``iou_threshold``.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    order = np.arange(len(boxes))
    keep: list[int] = []
    while len(order) and len(keep) < max_out:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        order = rest[box_iou(boxes[i], boxes[rest])[0] <= iou_threshold]  # IoU with the box just kept
    return keep
