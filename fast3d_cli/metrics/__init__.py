"""Evaluation metrics of Chat-Scene/Fast3D (spec §6-§7): ScanRefer, Multi3DRefer, Scan2Cap, ScanQA, SQA3D.

Usage: build a `MetricContext` (boxes, corpus, lookup, optionally one shared `CaptionScorer`) and call
``compute_metrics(task, predictions, context, MetricOptions())``. Values are fractions, like the official
code (the README table multiplies by 100).

``evaluate_task`` returns the same values together with the `TaskUnits` of the task's headline metric;
``paired_bootstrap_score_ratio(method_units_by_task, dense_units_by_task)`` turns the units of a method
and of the dense run into the Score Ratio with a paired-bootstrap confidence interval (docs/bootstrap.md).
"""

from fast3d_cli.metrics.answers import (
    answer_match,
    clean_answer,
    normalize_prediction,
    parse_object_ids,
    valid_object_ids,
)
from fast3d_cli.metrics.bleu import BLEU_STAT_FIELDS, bleu_statistics, corpus_bleu4, weighted_bleu4
from fast3d_cli.metrics.bootstrap import (
    BOOTSTRAP_METHOD,
    ScoreRatioBootstrap,
    TaskRatioInterval,
    bootstrap_counts,
    paired_bootstrap_score_ratio,
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
    NEGLIGIBLE_SCORE,
    dense_ratio_entry,
    format_interval,
    format_score_ratio,
    headline_scores,
    negligible_dense,
    score_ratio,
    score_ratio_entry,
)
from fast3d_cli.metrics.scan2cap import scan2cap_metrics, strip_sos_eos
from fast3d_cli.metrics.tasks import (
    CAPTION_TASKS,
    TASK_EVALUATIONS,
    TASK_METRICS,
    compute_metrics,
    evaluate_task,
    list_tasks,
)
from fast3d_cli.metrics.units import UNIT_STATISTICS, TaskEvaluation, TaskUnits, weighted_mean

__all__ = [
    "BLEU_STAT_FIELDS",
    "BOOTSTRAP_METHOD",
    "CAPTION_METRICS",
    "CAPTION_TASKS",
    "HEADLINE_METRICS",
    "IOU_THRESHOLDS",
    "NEGLIGIBLE_SCORE",
    "SOS_EOS_MODES",
    "TASK_EVALUATIONS",
    "TASK_METRICS",
    "UNIT_STATISTICS",
    "CaptionScorer",
    "CaptionScoringError",
    "MetricContext",
    "MetricFunction",
    "MetricOptions",
    "MetricValues",
    "MetricsError",
    "Prediction",
    "ScoreRatioBootstrap",
    "TaskEvaluation",
    "TaskRatioInterval",
    "TaskUnits",
    "answer_match",
    "bleu_statistics",
    "bootstrap_counts",
    "box_iou",
    "clean_answer",
    "compute_metrics",
    "corpus_bleu4",
    "dense_ratio_entry",
    "evaluate_task",
    "fallback_tokenize",
    "format_interval",
    "format_score_ratio",
    "headline_scores",
    "list_tasks",
    "multi3dref_f1",
    "multi3dref_metrics",
    "negligible_dense",
    "normalize_prediction",
    "paired_bootstrap_score_ratio",
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
    "weighted_bleu4",
    "weighted_mean",
]
