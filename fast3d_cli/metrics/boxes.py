"""Axis-aligned 3D box IoU, bit-for-bit as the official `box3d_iou(construct_bbox_corners(...))`.

A box is 6 numbers: center (x, y, z) and size (sx, sy, sz). The official code builds the 8 corners
``center ± size/2`` and takes their per-axis min/max, so a negative size behaves like its absolute value.
"""

from __future__ import annotations

from typing import Any

import numpy as np

IOU_EPS = 1e-8
"""Added to the union volume, as in the official code (so two identical boxes give 1 - tiny, not 1)."""


def as_box_array(boxes: Any) -> np.ndarray:
    """Boxes (numpy, torch tensor or nested lists) as a float64 array of shape [..., 6]."""
    if hasattr(boxes, "detach"):  # torch.Tensor, without importing torch
        boxes = boxes.detach().cpu().numpy()
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.shape[-1:] != (6,):
        raise ValueError(f"boxes need 6 numbers (center xyz, size xyz) in the last axis, got {arr.shape}")
    return arr


def box_min_max(boxes: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per-axis (min, max) corners of boxes [..., 6] -> two arrays [..., 3]."""
    arr = as_box_array(boxes)
    center, half = arr[..., :3], arr[..., 3:] / 2
    plus, minus = half + center, -half + center  # the official corner arithmetic
    return np.minimum(plus, minus), np.maximum(plus, minus)


def _iou_from_min_max(lo1: np.ndarray, hi1: np.ndarray, lo2: np.ndarray, hi2: np.ndarray) -> np.ndarray:
    lo, hi = np.maximum(lo1, lo2), np.minimum(hi1, hi2)
    extent = np.maximum(hi - lo, 0)
    inter = extent[..., 0] * extent[..., 1] * extent[..., 2]
    size1, size2 = hi1 - lo1, hi2 - lo2
    vol1 = size1[..., 0] * size1[..., 1] * size1[..., 2]
    vol2 = size2[..., 0] * size2[..., 1] * size2[..., 2]
    return inter / (vol1 + vol2 - inter + IOU_EPS)


def box_iou(a: Any, b: Any) -> float:
    """IoU of two boxes (center xyz, size xyz): inter / (vol1 + vol2 - inter + 1e-8)."""
    lo1, hi1 = box_min_max(a)
    lo2, hi2 = box_min_max(b)
    if lo1.shape != (3,) or lo2.shape != (3,):
        raise ValueError("box_iou takes two single boxes of 6 numbers; use pairwise_box_iou for arrays")
    return float(_iou_from_min_max(lo1, hi1, lo2, hi2))


def pairwise_box_iou(boxes_a: Any, boxes_b: Any) -> np.ndarray:
    """IoU matrix [n, m] (float64) between boxes_a [n, 6] and boxes_b [m, 6]; same numbers as `box_iou`."""
    a, b = as_box_array(boxes_a), as_box_array(boxes_b)
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"pairwise_box_iou needs two [n, 6] arrays, got {a.shape} and {b.shape}")
    lo1, hi1 = box_min_max(a)
    lo2, hi2 = box_min_max(b)
    return _iou_from_min_max(lo1[:, None], hi1[:, None], lo2[None, :], hi2[None, :])
