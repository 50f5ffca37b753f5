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

NEGLIGIBLE_SCORE = 1e-3
"""A dense headline below this is negligible: no ratio is taken against it (headlines are fractions, so
this is 0.1 on the tables' 0-100 scale). Corpus BLEU-4 without one matching 4-gram is not 0 but
pycocoevalcap's smoothing residue: at most (1e-15)^(1/4) = 5.6e-4 of a BLEU-4 with one match, about 1e-8
for a few short ScanQA answers, and at most 1e-3 when no 3-gram is even predicted; a method that matched
no 4-gram either then scored "100%" against it. An accuracy below it is fewer than 1 sample in 1000 right.
The same rule leaves a bootstrap resample without a ratio (metrics/bootstrap.py). docs/score-ratio.md."""


def negligible_dense(task: str, value: float) -> str | None:
    """Why no ratio can be taken against the dense headline ``value`` of ``task`` ("the dense [scanqa]
    Bleu_4 is 0", "... is negligible: 1.3e-06 (x100), below 0.1"); None when it can."""
    metric = HEADLINE_METRICS.get(task, task)
    if value == 0:
        return f"the dense {metric} is 0"
    if abs(value) < NEGLIGIBLE_SCORE:
        return f"the dense {metric} is negligible: {100 * value:.2g} (x100), below {100 * NEGLIGIBLE_SCORE:g}"
    return None


def headline_scores(metrics: Mapping[str, float | None]) -> dict[str, float]:
    """Task -> headline value, for the tasks whose headline key is present (and not None) in metrics."""
    return {
        task: float(value)
        for task, key in HEADLINE_METRICS.items()
        if (value := metrics.get(key)) is not None
    }


def score_ratio(method: Mapping[str, float], baseline: Mapping[str, float]) -> float:
    """Mean over the tasks present in both of method/baseline, in percent (100 = baseline quality).

    Both dicts map task -> headline value (a fraction). A baseline of 0 or a negligible one
    (`negligible_dense`) for a shared task, or no shared task, raises MetricsError naming it (drop that task
    explicitly to compute the rest).
    """
    tasks = [task for task in baseline if task in method]
    if not tasks:
        raise MetricsError("score_ratio: the method and the baseline have no task in common")
    zero = [task for task in tasks if baseline[task] == 0]
    small = [task for task in tasks if task not in zero and negligible_dense(task, baseline[task])]
    problems = [f"baseline is 0 for {', '.join(zero)}"] if zero else []
    if small:
        floor = f"{100 * NEGLIGIBLE_SCORE:g}"
        problems.append(f"baseline is negligible (below {floor} on the 0-100 scale) for {', '.join(small)}")
    if problems:
        raise MetricsError(f"score_ratio: {'; '.join(problems)}; leave out these tasks")
    return sum(method[task] / baseline[task] for task in tasks) / len(tasks) * 100


def score_ratio_entry(method: Mapping[str, float], baseline: Mapping[str, float]) -> dict[str, Any]:
    """The score ratio as reported (metrics.json ``score_ratio``, the tables, ``fast3d report``): ``value``
    (percent) and ``per_task``, each None where the ratio is undefined, with the reason in ``reason`` and
    ``per_task_reasons`` (a dense headline of 0 or a negligible one, a headline one run lacks). A ratio of 0
    is 0, not missing."""
    per_task: dict[str, float | None] = {}
    reasons: dict[str, str] = {}
    for task in sorted(set(method) | set(baseline), key=list(HEADLINE_METRICS).index):
        if task not in baseline:
            reasons[task] = f"the dense run has no {HEADLINE_METRICS[task]}"
        elif task not in method:
            reasons[task] = f"this run has no {HEADLINE_METRICS[task]}"
        elif (negligible := negligible_dense(task, baseline[task])) is not None:
            reasons[task] = negligible
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


def dense_ratio_entry(headline: Mapping[str, float]) -> dict[str, Any]:
    """The dense run's own score ratio (`score_ratio_entry` against itself): 100 per task, or None with the
    reason where its headline is negligible, so a dense row never reads 100% beside n/a pruned rows."""
    return score_ratio_entry(headline, headline)


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
