"""Evaluation metrics of Chat-Scene/Fast3D (spec §6-§7): ScanRefer, Multi3DRefer, Scan2Cap, ScanQA, SQA3D.

Usage: build a `MetricContext` (boxes, corpus, lookup, optionally one shared `CaptionScorer`) and call
``compute_metrics(task, predictions, context, MetricOptions())``. Values are fractions, like the official
code (the README table multiplies by 100).
"""

from fast3d_cli.metrics.answers import (
    answer_match,
    clean_answer,
    normalize_prediction,
    parse_object_ids,
    valid_object_ids,
)
from fast3d_cli.metrics.boxes import box_iou, pairwise_box_iou
from fast3d_cli.metrics.captions import (
    CAPTION_METRICS,
    CaptionScorer,
    CaptionScoringError,
    fallback_tokenize,
)
from fast3d_cli.metrics.context import (
    SOS_EOS_MODES,
    MetricContext,
    MetricFunction,
    MetricOptions,
    MetricsError,
    MetricValues,
    Prediction,
)
from fast3d_cli.metrics.grounding import (
    IOU_THRESHOLDS,
    multi3dref_f1,
    multi3dref_metrics,
    scanrefer_metrics,
    scanrefer_pred_id,
)
from fast3d_cli.metrics.qa import scanqa_metrics, sqa3d_metrics
from fast3d_cli.metrics.ratio import (
    HEADLINE_METRICS,
    format_score_ratio,
    headline_scores,
    score_ratio,
    score_ratio_entry,
)
from fast3d_cli.metrics.scan2cap import scan2cap_metrics, strip_sos_eos
from fast3d_cli.metrics.tasks import CAPTION_TASKS, TASK_METRICS, compute_metrics, list_tasks

__all__ = [
    "CAPTION_METRICS",
    "CAPTION_TASKS",
    "HEADLINE_METRICS",
    "IOU_THRESHOLDS",
    "SOS_EOS_MODES",
    "TASK_METRICS",
    "CaptionScorer",
    "CaptionScoringError",
    "MetricContext",
    "MetricFunction",
    "MetricOptions",
    "MetricValues",
    "MetricsError",
    "Prediction",
    "answer_match",
    "box_iou",
    "clean_answer",
    "compute_metrics",
    "fallback_tokenize",
    "format_score_ratio",
    "headline_scores",
    "list_tasks",
    "multi3dref_f1",
    "multi3dref_metrics",
    "normalize_prediction",
    "pairwise_box_iou",
    "parse_object_ids",
    "scan2cap_metrics",
    "scanqa_metrics",
    "scanrefer_metrics",
    "scanrefer_pred_id",
    "score_ratio",
    "score_ratio_entry",
    "sqa3d_metrics",
    "strip_sos_eos",
    "valid_object_ids",
]
