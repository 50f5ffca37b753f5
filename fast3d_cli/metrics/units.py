"""Per-unit sufficient statistics of a task's headline metric (spec §7), for paired resampling.

A unit is what the headline metric aggregates over: one prediction record for ScanRefer, Multi3DRefer,
ScanQA and SQA3D (key: the record's "index" as a string, or "#<position>" for a record without one), one
corpus item for Scan2Cap (key "scene_id|gt_id"). The task metric functions produce the units from the
same per-sample computation as their metric values (see `TaskEvaluation`). Statistic kinds:

- "mean": one value per unit (a hit, an F1, a refined exact match); the headline is their mean, and a
  weighting w gives sum(w * x) / sum(w).
- "bleu4": one row of `BLEU_STAT_FIELDS` per unit; the headline is corpus BLEU-4 of the summed rows,
  and a weighting gives corpus BLEU-4 of the weighted sums (`weighted_bleu4`).

``TaskUnits.to_dict()`` is JSON-serialisable and ``TaskUnits.from_dict`` reads it back (validated), so
units can be stored next to the metrics and resampled later.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fast3d_cli.metrics.bleu import BLEU_STAT_FIELDS, corpus_bleu4, weighted_bleu4
from fast3d_cli.metrics.context import MetricsError, MetricValues, Prediction
from fast3d_cli.metrics.ratio import HEADLINE_METRICS


def weighted_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted mean of each weighting: values [n], weights [R, n] (non-negative, rows not all 0) -> [R]."""
    weights = np.asarray(weights, dtype=np.float64)
    return (weights @ values) / weights.sum(axis=1)


@dataclass(frozen=True)
class UnitStatistic:
    """How one statistic kind turns unit values into the headline, unweighted and per weighting."""

    value_shape: tuple[int, ...]
    total: Callable[[np.ndarray], float]
    weighted: Callable[[np.ndarray, np.ndarray], np.ndarray]


UNIT_STATISTICS: dict[str, UnitStatistic] = {
    "mean": UnitStatistic((), lambda values: float(np.mean(values)), weighted_mean),
    "bleu4": UnitStatistic(
        (len(BLEU_STAT_FIELDS),), lambda values: float(corpus_bleu4(values.sum(axis=0))), weighted_bleu4
    ),
}
"""Statistic kind -> its `UnitStatistic`."""


def record_unit_key(record: Prediction, position: int) -> str:
    """A prediction record's unit key: its "index" field as a string, else "#<position>"."""
    index = record.get("index")
    return f"#{position}" if index is None else str(index)


@dataclass(frozen=True, eq=False)
class TaskUnits:
    """One task's units: ``keys[i]`` names ``values[i]`` (shape [n] for "mean", [n, 10] for "bleu4")."""

    task: str
    statistic: str
    keys: tuple[str, ...]
    values: np.ndarray

    def __post_init__(self) -> None:
        if self.statistic not in UNIT_STATISTICS:
            raise MetricsError(f"{self.task} units: unknown statistic {self.statistic!r}")
        values = np.asarray(self.values, dtype=np.float64)
        expected = (len(self.keys), *UNIT_STATISTICS[self.statistic].value_shape)
        if values.shape != expected:
            raise MetricsError(f"{self.task} units: values of shape {values.shape}, expected {expected}")
        if not self.keys:
            raise MetricsError(f"{self.task} units: no unit")
        if not np.isfinite(values).all():
            raise MetricsError(f"{self.task} units: values must be finite")
        object.__setattr__(self, "keys", tuple(self.keys))
        object.__setattr__(self, "values", values)

    @property
    def metric(self) -> str | None:
        """The headline metric key these units reproduce (None for a task outside HEADLINE_METRICS)."""
        return HEADLINE_METRICS.get(self.task)

    def __len__(self) -> int:
        return len(self.keys)

    def headline(self) -> float:
        """The headline metric over all units (the value the task's metric function reports)."""
        return UNIT_STATISTICS[self.statistic].total(self.values)

    def weighted(self, weights: np.ndarray) -> np.ndarray:
        """The headline metric under each weighting: weights [R, n] (e.g. bootstrap counts) -> [R]."""
        weights = np.asarray(weights)
        if weights.ndim != 2 or weights.shape[1] != len(self.keys):
            raise ValueError(f"weights must have shape [R, {len(self.keys)}], got {weights.shape}")
        return UNIT_STATISTICS[self.statistic].weighted(self.values, weights)

    def reordered(self, keys: Sequence[str]) -> TaskUnits:
        """The same units in the order of ``keys`` (a permutation of this object's keys)."""
        position = {key: i for i, key in enumerate(self.keys)}
        order = [position[key] for key in keys]
        return TaskUnits(self.task, self.statistic, tuple(keys), self.values[order])

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form: task, metric, statistic, keys and values (nested lists)."""
        return {
            "task": self.task,
            "metric": self.metric,
            "statistic": self.statistic,
            "keys": list(self.keys),
            "values": self.values.tolist(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskUnits:
        """Read `to_dict` output back; MetricsError for anything malformed."""
        try:
            task, statistic, keys = str(data["task"]), str(data["statistic"]), data["keys"]
            if isinstance(keys, str) or not all(isinstance(key, str) for key in keys):
                raise TypeError("keys must be a list of strings")
            values = np.asarray(data["values"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise MetricsError(f"malformed task units: {exc}") from None
        return cls(task, statistic, tuple(keys), values)


@dataclass(frozen=True)
class TaskEvaluation:
    """A task's metric values and the units of its headline metric, from one per-sample pass."""

    metrics: MetricValues
    units: TaskUnits
