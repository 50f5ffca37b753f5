"""The paper's headline metrics (README table, spec §7) and the Score Ratio."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

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


def score_ratio_entry(method: Mapping[str, float], baseline: Mapping[str, float]) -> dict[str, Any]:
    """The score ratio as reported (metrics.json ``score_ratio``, the tables, ``fast3d report``): ``value``
    (percent) and ``per_task``, each None where the ratio is undefined, with the reason in ``reason`` and
    ``per_task_reasons`` (a dense headline of 0, a headline one run lacks). A ratio of 0 is 0, not missing."""
    per_task: dict[str, float | None] = {}
    reasons: dict[str, str] = {}
    for task in sorted(set(method) | set(baseline), key=list(HEADLINE_METRICS).index):
        if task not in baseline:
            reasons[task] = f"the dense run has no {HEADLINE_METRICS[task]}"
        elif task not in method:
            reasons[task] = f"this run has no {HEADLINE_METRICS[task]}"
        elif baseline[task] == 0:
            reasons[task] = f"the dense {HEADLINE_METRICS[task]} is 0"
        else:
            per_task[task] = round(100 * method[task] / baseline[task], 4)
            continue
        per_task[task] = None
    entry: dict[str, Any] = {"value": None, "per_task": per_task}
    if reasons:
        entry["reason"] = "undefined for " + "; ".join(f"{t} ({why})" for t, why in reasons.items())
        entry["per_task_reasons"] = reasons
    elif per_task:
        entry["value"] = round(score_ratio(method, baseline), 4)
    else:
        entry["reason"] = "the run and the dense run have no task in common"
    return entry


def format_score_ratio(
    value: float | None, reason: str | None = None, ci: Sequence[float] | None = None
) -> str:
    """``"95.61%"``, ``"0.00%"`` or ``"n/a (REASON)"``: an undefined ratio is never shown as a number. With
    its confidence interval ``ci`` (low, high): ``"95.61% [93.20, 97.85]"``."""
    if value is None:
        return f"n/a ({reason})" if reason else "n/a"
    return f"{value:.2f}%" if ci is None else f"{value:.2f}% {format_interval(ci)}"


def format_interval(ci: Sequence[float] | None) -> str:
    """``"[93.20, 97.85]"``, or ``"-"`` without an interval."""
    return "-" if ci is None else f"[{ci[0]:.2f}, {ci[1]:.2f}]"
