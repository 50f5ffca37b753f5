"""Paired-bootstrap confidence intervals for the Score Ratio (spec §7) and for each task's ratio.

The Score Ratio compares a method with the dense run on the SAME evaluation samples, so both are
resampled together: in each replicate every task draws n of its n units with replacement (counts
~ Multinomial(n, 1/n)), the same draw weights the method's and the dense run's units, the task's
headline metric is recomputed for both from the units' sufficient statistics (`TaskUnits.weighted`:
weighted means, or corpus BLEU-4 of weighted count sums), and the replicate's Score Ratio is the mean
over tasks of method / dense x 100. The interval is the percentile interval of the replicates.

Each task draws from its own generator, seeded by (seed, task name), so a task's resamples do not
depend on which other tasks are present; the same seed gives the same result.

A replicate in which some dense headline is 0 or negligible (below `NEGLIGIBLE_SCORE`: 0.1 on the
0-100 scale) has no ratio for that task (nor a Score Ratio):
it is left out of the percentiles and counted in ``n_undefined``. If a dense headline over all units is 0
or negligible, the point estimate is undefined like `score_ratio` (whose MetricsError message is reported
in "undefined").

Result (``ScoreRatioBootstrap.to_dict()``, JSON-serialisable; ratios in percent, headlines as fractions;
the interval key is "ci" followed by the confidence in percent, "ci95" by default)::

    {
      "value": 97.31,                # = score_ratio(method headlines, dense headlines); null if undefined
      "ci95": [95.02, 99.47],        # percentile interval; null if undefined
      "confidence": 0.95,
      "n_resamples": 1000,
      "seed": 0,
      "n_undefined": 0,              # replicates without a Score Ratio (a dense value of 0 or negligible)
      "undefined": null,             # why "value" is null: "score_ratio: the dense ... is 0; ..."
      "method": "paired bootstrap over samples (percentile)",
      "per_task": {
        "scanrefer": {"value": 99.2, "ci95": [96.1, 102.3], "method_value": 0.412, "dense_value": 0.415,
                      "n_units": 450, "n_undefined": 0, "undefined": null},
        ...
      }
    }
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fast3d_cli.metrics.context import MetricsError
from fast3d_cli.metrics.ratio import HEADLINE_METRICS, NEGLIGIBLE_SCORE, score_ratio
from fast3d_cli.metrics.units import TaskUnits

BOOTSTRAP_METHOD = "paired bootstrap over samples (percentile)"
_MAX_COUNTS_PER_CHUNK = 1 << 22
"""Replicates are drawn in chunks of at most this many unit counts (32 MiB of int64)."""


@dataclass(frozen=True)
class TaskRatioInterval:
    """One task: method / dense headline x 100 over all units, and its bootstrap interval."""

    value: float | None
    ci: tuple[float, float] | None
    method_value: float
    dense_value: float
    n_units: int
    n_undefined: int
    undefined: str | None = None


@dataclass(frozen=True)
class ScoreRatioBootstrap:
    """The Score Ratio with its paired-bootstrap interval and the per-task intervals (see module doc)."""

    value: float | None
    ci: tuple[float, float] | None
    per_task: dict[str, TaskRatioInterval]
    n_resamples: int
    seed: int
    confidence: float
    n_undefined: int
    undefined: str | None = None
    method: str = field(default=BOOTSTRAP_METHOD)

    @property
    def ci_key(self) -> str:
        """The interval's key in `to_dict`: "ci95" for confidence 0.95."""
        return f"ci{100 * self.confidence:g}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (module docstring)."""
        per_task = {
            task: {
                "value": item.value,
                self.ci_key: _interval_list(item.ci),
                "method_value": item.method_value,
                "dense_value": item.dense_value,
                "n_units": item.n_units,
                "n_undefined": item.n_undefined,
                "undefined": item.undefined,
            }
            for task, item in self.per_task.items()
        }
        return {
            "value": self.value,
            self.ci_key: _interval_list(self.ci),
            "confidence": self.confidence,
            "n_resamples": self.n_resamples,
            "seed": self.seed,
            "n_undefined": self.n_undefined,
            "undefined": self.undefined,
            "method": self.method,
            "per_task": per_task,
        }


def _interval_list(ci: tuple[float, float] | None) -> list[float] | None:
    return None if ci is None else [ci[0], ci[1]]


def bootstrap_counts(n_units: int, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Counts [n_resamples, n_units] (int64, rows summing to n_units) of n_units draws with replacement,
    i.e. one Multinomial(n_units, 1/n_units) resample per row."""
    draws = rng.integers(0, n_units, size=(n_resamples, n_units))
    draws += n_units * np.arange(n_resamples)[:, None]
    return np.bincount(draws.ravel(), minlength=n_resamples * n_units).reshape(n_resamples, n_units)


def task_generator(seed: int, task: str) -> np.random.Generator:
    """The random generator of one task's resamples: seeded by (seed, a stable hash of the task name)."""
    return np.random.default_rng([seed, zlib.crc32(task.encode())])


def paired_weighted_headlines(
    method: TaskUnits, dense: TaskUnits, n_resamples: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(method, dense) headline of each of n_resamples paired resamples -> two arrays [n_resamples]."""
    n_units = len(method)
    chunk = max(1, _MAX_COUNTS_PER_CHUNK // n_units)
    method_values, dense_values = [], []
    for start in range(0, n_resamples, chunk):
        counts = bootstrap_counts(n_units, min(chunk, n_resamples - start), rng)
        method_values.append(method.weighted(counts))
        dense_values.append(dense.weighted(counts))
    return np.concatenate(method_values), np.concatenate(dense_values)


def paired_bootstrap_score_ratio(
    method_units_by_task: Mapping[str, TaskUnits],
    dense_units_by_task: Mapping[str, TaskUnits],
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> ScoreRatioBootstrap:
    """Score Ratio of the method against the dense run with a paired-bootstrap percentile interval.

    Both mappings go from task name to that run's `TaskUnits` (from `evaluate_task(...).units`). The tasks
    present in both are used (as `score_ratio` does); within a task the units are paired by key and must
    be the same set on both sides (MetricsError otherwise, naming the task and the counts).
    """
    _check_settings(n_resamples, seed, confidence)
    tasks = _shared_tasks(method_units_by_task, dense_units_by_task)
    per_task: dict[str, TaskRatioInterval] = {}
    replicate_ratios = []
    for task in tasks:
        method, dense = paired_units(task, method_units_by_task[task], dense_units_by_task[task])
        method_values, dense_values = paired_weighted_headlines(
            method, dense, n_resamples, task_generator(seed, task)
        )
        ratios = _ratios(method_values, dense_values)
        replicate_ratios.append(ratios)
        per_task[task] = _task_interval(task, method, dense, ratios * 100, confidence)
    point, undefined = _score_ratio_or_reason(
        {task: item.method_value for task, item in per_task.items()},
        {task: item.dense_value for task, item in per_task.items()},
    )
    scores = np.sum(replicate_ratios, axis=0) / len(tasks) * 100  # NaN where a task ratio is undefined
    return ScoreRatioBootstrap(
        value=point,
        ci=None if point is None else _percentile_interval(scores, confidence),
        per_task=per_task,
        n_resamples=n_resamples,
        seed=seed,
        confidence=confidence,
        n_undefined=int(np.count_nonzero(np.isnan(scores))),
        undefined=undefined,
    )


def _check_settings(n_resamples: int, seed: int, confidence: float) -> None:
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 1:
        raise MetricsError(f"paired bootstrap: n_resamples must be a positive integer, got {n_resamples!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise MetricsError(f"paired bootstrap: seed must be a non-negative integer, got {seed!r}")
    if not (isinstance(confidence, float | int) and 0 < confidence < 1):
        raise MetricsError(f"paired bootstrap: confidence must be in (0, 1), got {confidence!r}")


def _shared_tasks(method: Mapping[str, TaskUnits], dense: Mapping[str, TaskUnits]) -> list[str]:
    """Tasks in both runs, in the paper's column order, then any other task by name."""
    shared = set(method) & set(dense)
    if not shared:
        raise MetricsError("paired bootstrap: the method and the dense run have no task in common")
    order = {task: i for i, task in enumerate(HEADLINE_METRICS)}
    return sorted(shared, key=lambda task: (order.get(task, len(order)), task))


def paired_units(task: str, method: TaskUnits, dense: TaskUnits) -> tuple[TaskUnits, TaskUnits]:
    """The two runs' units of ``task`` with the dense units in the method's key order; MetricsError if
    they are not the same kind of statistic over the same set of unique keys."""
    for run, units in (("method", method), ("dense run", dense)):
        if not isinstance(units, TaskUnits) or units.task != task:
            raise MetricsError(f"paired bootstrap: the {run}'s {task!r} entry is not the units of {task}")
        duplicates = [key for key, count in Counter(units.keys).items() if count > 1]
        if duplicates:
            raise MetricsError(
                f"paired bootstrap: {task}: {len(duplicates)} duplicate unit keys in the {run} "
                f"(first: {duplicates[0]!r})"
            )
    if method.statistic != dense.statistic:
        raise MetricsError(
            f"paired bootstrap: {task}: {method.statistic} units in the method, "
            f"{dense.statistic} units in the dense run"
        )
    only_method = set(method.keys) - set(dense.keys)
    only_dense = set(dense.keys) - set(method.keys)
    if only_method or only_dense:
        raise MetricsError(
            f"paired bootstrap: the {task} units differ: {len(only_method)} of the method's "
            f"{len(method)} are not in the dense run, {len(only_dense)} of the dense run's {len(dense)} "
            "are not in the method's"
        )
    return method, dense.reordered(method.keys)


def _ratios(method_values: np.ndarray, dense_values: np.ndarray) -> np.ndarray:
    """method / dense per replicate, NaN where the dense value is 0 or negligible (below
    `NEGLIGIBLE_SCORE`, the rule of every score ratio). Corpus BLEU-4 of a resample without one matching
    4-gram is not 0 but pycocoevalcap's smoothing residue, and dividing by it gave intervals reaching
    10^9 % on small tasks."""
    ratios = np.full(method_values.shape, np.nan)
    np.divide(method_values, dense_values, out=ratios, where=np.abs(dense_values) >= NEGLIGIBLE_SCORE)
    return ratios


def _score_ratio_or_reason(
    method: Mapping[str, float], dense: Mapping[str, float]
) -> tuple[float | None, str | None]:
    try:
        return score_ratio(method, dense), None
    except MetricsError as exc:
        return None, str(exc)


def _task_interval(
    task: str, method: TaskUnits, dense: TaskUnits, ratios: np.ndarray, confidence: float
) -> TaskRatioInterval:
    method_value, dense_value = method.headline(), dense.headline()
    value, undefined = _score_ratio_or_reason({task: method_value}, {task: dense_value})
    return TaskRatioInterval(
        value=value,
        ci=None if value is None else _percentile_interval(ratios, confidence),
        method_value=method_value,
        dense_value=dense_value,
        n_units=len(method),
        n_undefined=int(np.count_nonzero(np.isnan(ratios))),
        undefined=undefined,
    )


def _percentile_interval(values: np.ndarray, confidence: float) -> tuple[float, float] | None:
    """The central ``confidence`` percentile interval of the defined (non-NaN) values; None if none is."""
    defined = values[~np.isnan(values)]
    if defined.size == 0:
        return None
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(defined, [tail, 100 - tail])
    return float(low), float(high)
