"""The paper's headline metrics (README table, spec §7) and the Score Ratio."""

from __future__ import annotations

from collections.abc import Mapping

from fast3d_cli.metrics.context import MetricsError

HEADLINE_METRICS: dict[str, str] = {
    "scanrefer": "[scanrefer] Acc@0.50",
    "multi3dref": "[multi3dref] all F1@0.50",
    "scan2cap": "[scan2cap] Bleu_4@0.50",
    "scanqa": "[scanqa] Bleu_4",
    "sqa3d": "[sqa3d] EM1_refined",
}
"""Task -> the metric key reported in the README table."""


def headline_scores(metrics: Mapping[str, float | None]) -> dict[str, float]:
    """Task -> headline value, for the tasks whose headline key is present (and not None) in metrics."""
    return {
        task: float(value)
        for task, key in HEADLINE_METRICS.items()
        if (value := metrics.get(key)) is not None
    }


def score_ratio(method: Mapping[str, float], baseline: Mapping[str, float]) -> float:
    """Mean over the tasks present in both of method/baseline, in percent (100 = baseline quality).

    Both dicts map task -> headline value on the same scale. A baseline of 0 for a shared task, or no
    shared task, raises MetricsError naming it (drop that task explicitly to compute the rest).
    """
    tasks = [task for task in baseline if task in method]
    if not tasks:
        raise MetricsError("score_ratio: the method and the baseline have no task in common")
    zero = [task for task in tasks if baseline[task] == 0]
    if zero:
        raise MetricsError(f"score_ratio: baseline is 0 for {', '.join(zero)}; leave out these tasks")
    return sum(method[task] / baseline[task] for task in tasks) / len(tasks) * 100
