"""ScanRefer (Acc@IoU, spec §6.1) and Multi3DRefer (F1@IoU, spec §6.2)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from fast3d_cli.metrics.answers import valid_object_ids
from fast3d_cli.metrics.boxes import box_iou, pairwise_box_iou
from fast3d_cli.metrics.context import (
    MetricContext,
    MetricOptions,
    MetricsError,
    MetricValues,
    Prediction,
    record_field,
    record_int,
    require_predictions,
    row,
)
from fast3d_cli.metrics.units import TaskEvaluation, TaskUnits, record_unit_key

IOU_THRESHOLDS: dict[str, float] = {"0.25": 0.25, "0.50": 0.5}
"""Key suffix -> IoU threshold (a match needs IoU >= threshold)."""
HEADLINE_IOU = "0.50"
"""The threshold label of the headline metrics (spec §7): Acc@0.50, F1@0.50, Bleu_4@0.50."""
ZERO_TARGET_TYPES = frozenset({"zt_w_d", "zt_wo_d"})
MULTI3DREF_TYPES: tuple[str, ...] = ("zt_w_d", "zt_wo_d", "st_w_d", "st_wo_d", "mt")


def scanrefer_pred_id(text: str, num_proposals: int) -> int:
    """First <OBJxyz> id below num_proposals in the text; 0 if there is none (spec §6.1)."""
    ids = valid_object_ids(text, num_proposals)
    return ids[0] if ids else 0


@dataclass(frozen=True)
class ScanReferSample:
    """One ScanRefer record scored: IoU of the predicted proposal with the GT box, Unique/Multiple split."""

    key: str
    iou: float
    split: str | None


def scanrefer_samples(predictions: Sequence[Prediction], context: MetricContext) -> list[ScanReferSample]:
    """Score each record (spec §6.1); the split is None without a ScanRefer lookup."""
    lookup = context.scanrefer_lookup
    samples = []
    for pos, record in enumerate(predictions):
        scene_id = str(record_field(record, "scene_id", pos))
        gt_id = record_int(record, "gt_id", pos)
        proposals = context.proposal_boxes(scene_id)
        pred_id = scanrefer_pred_id(str(record_field(record, "pred", pos)), len(proposals))
        gt_box = row(context.gt_boxes(scene_id), gt_id, "GT object id", scene_id)
        iou = box_iou(row(proposals, pred_id, "proposal id", scene_id), gt_box)
        split = None
        if lookup is not None:
            try:
                split = "Unique" if int(lookup[scene_id][str(gt_id)]) == 0 else "Multiple"
            except KeyError:
                raise MetricsError(f"object {gt_id} of {scene_id} is not in the ScanRefer lookup") from None
        samples.append(ScanReferSample(record_unit_key(record, pos), iou, split))
    return samples


def _accuracy(samples: Sequence[ScanReferSample], threshold: float) -> float:
    return sum(sample.iou >= threshold for sample in samples) / len(samples)


def scanrefer_evaluation(
    predictions: Sequence[Prediction], context: MetricContext, options: MetricOptions
) -> TaskEvaluation:
    """Acc@0.25/0.50 over all predictions, plus Unique/Multiple splits when a lookup is given; units:
    the per-record hit at IoU 0.50.

    A split with no sample has no key (the official code divides by zero there).
    """
    require_predictions("scanrefer", predictions)
    samples = scanrefer_samples(predictions, context)
    scores: MetricValues = {
        f"[scanrefer] Acc@{label}": _accuracy(samples, thr) for label, thr in IOU_THRESHOLDS.items()
    }
    for split in ("Unique", "Multiple"):
        in_split = [sample for sample in samples if sample.split == split]
        if in_split:
            for label, threshold in IOU_THRESHOLDS.items():
                scores[f"[scanrefer] {split} Acc@{label}"] = _accuracy(in_split, threshold)
    threshold = IOU_THRESHOLDS[HEADLINE_IOU]
    hits = [float(sample.iou >= threshold) for sample in samples]
    units = TaskUnits("scanrefer", "mean", tuple(sample.key for sample in samples), np.array(hits))
    return TaskEvaluation(scores, units)


def scanrefer_metrics(
    predictions: Sequence[Prediction], context: MetricContext, options: MetricOptions
) -> MetricValues:
    """The metric values of `scanrefer_evaluation`."""
    return scanrefer_evaluation(predictions, context, options).metrics


def multi3dref_f1(pred_boxes: np.ndarray, gt_boxes: np.ndarray, zero_target: bool) -> dict[str, float]:
    """F1 per threshold label for one sample (spec §6.2).

    Zero-target: 1 if nothing predicted else 0. Otherwise: Hungarian matching maximising the total IoU
    on a zero-padded square matrix (float32, as official), TP = prediction rows whose matched IoU >=
    threshold, F1 = 2 TP / (P + G); no prediction gives 0.
    """
    num_pred, num_gt = len(pred_boxes), len(gt_boxes)
    if zero_target:
        value = 1.0 if num_pred == 0 else 0.0
        return dict.fromkeys(IOU_THRESHOLDS, value)
    if num_pred == 0 or num_gt == 0:
        return dict.fromkeys(IOU_THRESHOLDS, 0.0)
    size = max(num_pred, num_gt)
    iou = np.zeros((size, size), dtype=np.float32)
    iou[:num_pred, :num_gt] = pairwise_box_iou(pred_boxes, gt_boxes)
    rows, cols = linear_sum_assignment(-iou)
    matched = iou[rows[:num_pred], cols[:num_pred]]  # rows come back sorted: 0..size-1
    return {
        label: 2 * int(np.count_nonzero(matched >= threshold)) / (num_pred + num_gt)
        for label, threshold in IOU_THRESHOLDS.items()
    }


@dataclass(frozen=True)
class Multi3DReferSample:
    """One Multi3DRefer record scored: its eval_type and F1 per threshold label."""

    key: str
    eval_type: str
    f1: dict[str, float]


def multi3dref_samples(predictions: Sequence[Prediction], context: MetricContext) -> list[Multi3DReferSample]:
    """Score each record (spec §6.2)."""
    samples = []
    for pos, record in enumerate(predictions):
        scene_id = str(record_field(record, "scene_id", pos))
        eval_type = record_field(record, "type_info", pos)
        if eval_type not in MULTI3DREF_TYPES:
            raise MetricsError(f"prediction record {pos}: unknown multi3dref type_info {eval_type!r}")
        try:
            gt_ids = [int(obj_id) for obj_id in record_field(record, "ref_captions", pos)]
        except (TypeError, ValueError):
            raise MetricsError(f"prediction record {pos}: ref_captions must be object ids") from None
        proposals = context.proposal_boxes(scene_id)
        gt_all = context.gt_boxes(scene_id)
        pred_ids = valid_object_ids(str(record_field(record, "pred", pos)), len(proposals))
        gt_boxes = np.array([row(gt_all, i, "GT object id", scene_id) for i in gt_ids]).reshape(-1, 6)
        if eval_type not in ZERO_TARGET_TYPES and not gt_ids:
            raise MetricsError(f"prediction record {pos}: {eval_type} sample without GT objects")
        f1 = multi3dref_f1(proposals[pred_ids], gt_boxes, eval_type in ZERO_TARGET_TYPES)
        samples.append(Multi3DReferSample(record_unit_key(record, pos), eval_type, f1))
    return samples


def multi3dref_evaluation(
    predictions: Sequence[Prediction], context: MetricContext, options: MetricOptions
) -> TaskEvaluation:
    """Mean F1@0.25/0.50 over all samples ("all") and per eval_type present in the predictions; units:
    the per-record F1@0.50."""
    require_predictions("multi3dref", predictions)
    samples = multi3dref_samples(predictions, context)
    f1s: dict[str, list[dict[str, float]]] = defaultdict(list)
    for sample in samples:
        f1s["all"].append(sample.f1)
        f1s[sample.eval_type].append(sample.f1)
    scores: MetricValues = {}
    for group, group_f1s in f1s.items():
        for label in IOU_THRESHOLDS:
            scores[f"[multi3dref] {group} F1@{label}"] = float(np.mean([f1[label] for f1 in group_f1s]))
    keys = tuple(sample.key for sample in samples)
    units = TaskUnits("multi3dref", "mean", keys, np.array([sample.f1[HEADLINE_IOU] for sample in samples]))
    return TaskEvaluation(scores, units)


def multi3dref_metrics(
    predictions: Sequence[Prediction], context: MetricContext, options: MetricOptions
) -> MetricValues:
    """The metric values of `multi3dref_evaluation`."""
    return multi3dref_evaluation(predictions, context, options).metrics
