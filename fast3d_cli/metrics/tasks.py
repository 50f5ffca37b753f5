"""Task registry: task name -> metric function / evaluation function, `compute_metrics` and
`evaluate_task` (the metric values together with the headline units for the bootstrap)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from fast3d_cli.metrics.context import (
    MetricContext,
    MetricFunction,
    MetricOptions,
    MetricsError,
    MetricValues,
    Prediction,
)
from fast3d_cli.metrics.grounding import (
    multi3dref_evaluation,
    multi3dref_metrics,
    scanrefer_evaluation,
    scanrefer_metrics,
)
from fast3d_cli.metrics.qa import scanqa_evaluation, scanqa_metrics, sqa3d_evaluation, sqa3d_metrics
from fast3d_cli.metrics.scan2cap import scan2cap_evaluation, scan2cap_metrics
from fast3d_cli.metrics.units import TaskEvaluation

EvaluationFunction = Callable[[Sequence[Prediction], MetricContext, MetricOptions], TaskEvaluation]

TASK_METRICS: dict[str, MetricFunction] = {
    "scanrefer": scanrefer_metrics,
    "multi3dref": multi3dref_metrics,
    "scan2cap": scan2cap_metrics,
    "scanqa": scanqa_metrics,
    "sqa3d": sqa3d_metrics,
}
TASK_EVALUATIONS: dict[str, EvaluationFunction] = {
    "scanrefer": scanrefer_evaluation,
    "multi3dref": multi3dref_evaluation,
    "scan2cap": scan2cap_evaluation,
    "scanqa": scanqa_evaluation,
    "sqa3d": sqa3d_evaluation,
}
"""Task -> function returning the metric values and the headline units from one per-sample pass."""
CAPTION_TASKS = frozenset({"scan2cap", "scanqa", "sqa3d"})
"""Tasks that need a `CaptionScorer` (share one through `MetricContext.caption_scorer`)."""


def list_tasks() -> list[str]:
    """Valid task names, in the paper's column order."""
    return list(TASK_METRICS)


def compute_metrics(
    task: str,
    predictions: Sequence[Prediction],
    context: MetricContext | None = None,
    options: MetricOptions | None = None,
) -> MetricValues:
    """Score one task's predictions; MetricsError for an unknown task or unusable input."""
    if task not in TASK_METRICS:
        raise MetricsError(f"unknown task {task!r}; valid tasks: {', '.join(TASK_METRICS)}")
    return TASK_METRICS[task](predictions, context or MetricContext(), options or MetricOptions())


def evaluate_task(
    task: str,
    predictions: Sequence[Prediction],
    context: MetricContext | None = None,
    options: MetricOptions | None = None,
) -> TaskEvaluation:
    """`compute_metrics` plus the units of the task's headline metric (for the paired bootstrap)."""
    if task not in TASK_EVALUATIONS:
        raise MetricsError(f"unknown task {task!r}; valid tasks: {', '.join(TASK_EVALUATIONS)}")
    return TASK_EVALUATIONS[task](predictions, context or MetricContext(), options or MetricOptions())
