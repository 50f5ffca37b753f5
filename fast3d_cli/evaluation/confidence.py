"""The score ratio's paired-bootstrap confidence interval in ``fast3d eval`` (docs/bootstrap.md).

Scoring a run keeps the per-sample units of each task's headline metric in ``units.json`` beside
``metrics.json`` (`write_units`), so the run can be paired later without scoring it again. A pruned run
pairs its units with those of the dense run in ``--baseline`` (`add_score_ratio_interval`): one resample of
the samples weights both runs, and the percentile interval of the resampled score ratios joins the fields
of metrics.json's ``score_ratio`` section::

    "score_ratio": {
      "baseline": ..., "baseline_headline": ..., "value": 97.31, "per_task": {...},  # as before
      "ci95": [95.8, 98.62],               # null where "value" is null
      "per_task_ci95": {"scanqa": [96.1, 102.3], "scanrefer": null},
      "confidence": 0.95, "n_resamples": 1000, "seed": 0,
      "n_undefined": 0,                    # resamples without a ratio (a dense headline of 0)
      "method": "paired bootstrap over samples (percentile)"
    }

When the two runs cannot be paired (their units cover other samples) ``ci95`` is null and ``ci_reason``
says why; ``--bootstrap 0`` leaves the interval fields out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fast3d_cli.data.formats import read_json, write_json
from fast3d_cli.errors import UserError
from fast3d_cli.metrics import MetricsError, TaskUnits, paired_bootstrap_score_ratio
from fast3d_cli.metrics.bootstrap import ScoreRatioBootstrap

UNITS_FILE = "units.json"
UNITS_FORMAT = 1
CONFIDENCE = 0.95
CI_KEY = "ci95"


@dataclass(frozen=True)
class BootstrapSettings:
    """``--bootstrap N`` (resamples; 0: no interval) and ``--bootstrap-seed``."""

    n_resamples: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        for option, value in (("--bootstrap", self.n_resamples), ("--bootstrap-seed", self.seed)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise UserError(f"{option} must be a non-negative integer, got {value!r}")

    @property
    def enabled(self) -> bool:
        return self.n_resamples > 0


def write_units(run_dir: Path, units_by_task: Mapping[str, TaskUnits]) -> Path:
    """Save each task's units (``TaskUnits.to_dict``) in ``run_dir/units.json``, atomically."""
    path = Path(run_dir) / UNITS_FILE
    tasks = {task: units.to_dict() for task, units in units_by_task.items()}
    write_json(path, {"format": UNITS_FORMAT, "tasks": tasks})
    return path


def read_units(run_dir: Path) -> dict[str, TaskUnits]:
    """The units `write_units` saved in ``run_dir``; UserError naming the file when it is missing or
    malformed."""
    path = Path(run_dir) / UNITS_FILE
    if not path.is_file():
        raise UserError(f"{path} not found: score {run_dir} with this fast3d version to pair it")
    data = read_json(path)
    tasks = data.get("tasks") if isinstance(data, dict) else None
    if not isinstance(tasks, dict) or data.get("format") != UNITS_FORMAT:
        raise UserError(f"{path} is not a units file of fast3d eval (format {UNITS_FORMAT})")
    try:
        units = {str(task): TaskUnits.from_dict(item) for task, item in tasks.items()}
    except MetricsError as exc:
        raise UserError(f"{path}: {exc}") from None
    wrong = [task for task, item in units.items() if item.task != task]
    if wrong:
        raise UserError(f"{path}: the entry {wrong[0]!r} holds the units of another task")
    return units


def add_score_ratio_interval(
    result: dict[str, Any],
    method_units: Mapping[str, TaskUnits],
    dense_units: Mapping[str, TaskUnits],
    settings: BootstrapSettings,
) -> dict[str, Any]:
    """Add the paired-bootstrap interval to ``result["score_ratio"]`` (from `add_score_ratio`), over the
    tasks of its ``per_task``; nothing when there is no score ratio or the bootstrap is off."""
    entry = result.get("score_ratio")
    if not entry or not settings.enabled:
        return result
    tasks = [task for task in entry.get("per_task", {}) if task in method_units and task in dense_units]
    try:
        bootstrap = paired_bootstrap_score_ratio(
            {task: method_units[task] for task in tasks},
            {task: dense_units[task] for task in tasks},
            n_resamples=settings.n_resamples,
            seed=settings.seed,
            confidence=CONFIDENCE,
        )
    except MetricsError as exc:
        entry.update(_unpaired_fields(entry, settings, str(exc)))
        return result
    entry.update(_interval_fields(entry, bootstrap))
    return result


def _interval_fields(entry: Mapping[str, Any], bootstrap: ScoreRatioBootstrap) -> dict[str, Any]:
    """The interval of each ratio ``entry`` defines (a null ratio gets a null interval)."""
    intervals = {task: item.ci for task, item in bootstrap.per_task.items()}
    per_task = {
        task: None if value is None else _rounded(intervals.get(task))
        for task, value in entry["per_task"].items()
    }
    return {
        CI_KEY: None if entry.get("value") is None else _rounded(bootstrap.ci),
        f"per_task_{CI_KEY}": per_task,
        "confidence": bootstrap.confidence,
        "n_resamples": bootstrap.n_resamples,
        "seed": bootstrap.seed,
        "n_undefined": bootstrap.n_undefined,
        "method": bootstrap.method,
    }


def _unpaired_fields(entry: Mapping[str, Any], settings: BootstrapSettings, reason: str) -> dict[str, Any]:
    return {
        CI_KEY: None,
        f"per_task_{CI_KEY}": dict.fromkeys(entry.get("per_task", {})),
        "confidence": CONFIDENCE,
        "n_resamples": settings.n_resamples,
        "seed": settings.seed,
        "ci_reason": reason,
    }


def _rounded(ci: tuple[float, float] | None) -> list[float] | None:
    return None if ci is None else [round(ci[0], 4), round(ci[1], 4)]
