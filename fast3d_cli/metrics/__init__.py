"""Evaluation metrics of Chat-Scene/Fast3D (spec §6-§7): ScanRefer, Multi3DRefer, Scan2Cap, ScanQA, SQA3D.

Usage: build a `MetricContext` (boxes, corpus, lookup, optionally one shared `CaptionScorer`) and call
``compute_metrics(task, predictions, context, MetricOptions())``. Values are fractions, like the official
code (the README table multiplies by 100).

``evaluate_task`` returns the same values together with the `TaskUnits` of the task's headline metric;
``paired_bootstrap_score_ratio(method_units_by_task, dense_units_by_task)`` turns the units of a method
and of the dense run into the Score Ratio with a paired-bootstrap confidence interval (docs/bootstrap.md).

Exports load lazily (PEP 562): importing the package loads no scipy or numpy until a metric is used."""

from fast3d_cli._lazy import lazy_exports

_EXPORTS = {
    "BLEU_STAT_FIELDS": "bleu",
    "BOOTSTRAP_METHOD": "bootstrap",
    "CAPTION_METRICS": "captions",
    "CAPTION_TASKS": "tasks",
    "CaptionScorer": "captions",
    "CaptionScoringError": "captions",
    "HEADLINE_METRICS": "ratio",
    "IOU_THRESHOLDS": "grounding",
    "MetricContext": "context",
    "MetricFunction": "context",
    "MetricOptions": "context",
    "MetricValues": "context",
    "MetricsError": "context",
    "NEGLIGIBLE_SCORE": "ratio",
    "Prediction": "context",
    "SOS_EOS_MODES": "context",
    "ScoreRatioBootstrap": "bootstrap",
    "TASK_EVALUATIONS": "tasks",
    "TASK_METRICS": "tasks",
    "TaskEvaluation": "units",
    "TaskRatioInterval": "bootstrap",
    "TaskUnits": "units",
    "UNIT_STATISTICS": "units",
    "answer_match": "answers",
    "bleu_statistics": "bleu",
    "bootstrap_counts": "bootstrap",
    "box_iou": "boxes",
    "clean_answer": "answers",
    "compute_metrics": "tasks",
    "dense_ratio_entry": "ratio",
    "corpus_bleu4": "bleu",
    "evaluate_task": "tasks",
    "fallback_tokenize": "captions",
    "format_interval": "ratio",
    "format_score_ratio": "ratio",
    "headline_scores": "ratio",
    "list_tasks": "tasks",
    "multi3dref_f1": "grounding",
    "multi3dref_metrics": "grounding",
    "negligible_dense": "ratio",
    "normalize_prediction": "answers",
    "paired_bootstrap_score_ratio": "bootstrap",
    "pairwise_box_iou": "boxes",
    "parse_object_ids": "answers",
    "scan2cap_metrics": "scan2cap",
    "scanqa_metrics": "qa",
    "scanrefer_metrics": "grounding",
    "scanrefer_pred_id": "grounding",
    "score_ratio": "ratio",
    "score_ratio_entry": "ratio",
    "sqa3d_metrics": "qa",
    "strip_sos_eos": "scan2cap",
    "valid_object_ids": "answers",
    "weighted_bleu4": "bleu",
    "weighted_mean": "units",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
