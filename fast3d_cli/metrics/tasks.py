"""Task registry: task name -> metric function, and `compute_metrics`."""

from __future__ import annotations

from collections.abc import Sequence

from fast3d_cli.metrics.context import (
    MetricContext,
    MetricFunction,
    MetricOptions,
    MetricsError,
    MetricValues,
    Prediction,
)
from fast3d_cli.metrics.grounding import multi3dref_metrics, scanrefer_metrics
from fast3d_cli.metrics.qa import scanqa_metrics, sqa3d_metrics
from fast3d_cli.metrics.scan2cap import scan2cap_metrics

TASK_METRICS: dict[str, MetricFunction] = {
    "scanrefer": scanrefer_metrics,
    "multi3dref": multi3dref_metrics,
    "scan2cap": scan2cap_metrics,
    "scanqa": scanqa_metrics,
    "sqa3d": sqa3d_metrics,
}
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
