"""Evaluation directories of ``fast3d eval`` (run.json, metrics.json, predictions/) as small records."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from fast3d_cli.errors import UserError

TOKENS_PER_OBJECT = 3  # identifier + 3D + 2D token of each object (as in fast3d_cli.pruning.pruner)


@dataclass(frozen=True)
class TaskPoint:
    """One task of one result: its score ratio against the dense run and both pruning ratios (percent)."""

    score_ratio: float | None
    layer_averaged_ratio: float
    input_ratio: float
    mean_kept_tokens: float
    score_ratio_ci: tuple[float, float] | None = None  # its 95% interval, when metrics.json has one


@dataclass
class EvalResult:
    """One finished evaluation: settings, headline scores, pruning ratios and score ratio."""

    path: Path
    split: str
    tasks: list[str]
    method: str
    layer: int
    granularity: str
    keep: int | None
    alpha: float | None
    n_visual: int
    n_layers: int
    input_ratio: float
    layer_averaged_ratio: float
    mean_kept_tokens: float
    score_ratio: float | None  # percent; 100 for the dense run; None when undefined (see the reason)
    per_task: dict[str, TaskPoint] = field(default_factory=dict)
    score_ratio_reason: str | None = None  # why score_ratio is None
    score_ratio_ci: tuple[float, float] | None = None  # its paired-bootstrap 95% interval, when recorded
    headline: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def is_dense(self) -> bool:
        return self.method == "none"

    @property
    def is_sap(self) -> bool:
        return self.method.endswith("+sap")

    @property
    def label(self) -> str:
        """Short description for legends: method, layer K and the budget."""
        if self.is_dense:
            return "dense"
        budget = f"α={self.alpha:.3g}" if self.alpha is not None else f"keep {self.keep}"
        return f"{self.method} (K={self.layer}, {budget})"

    def predictions(self, task: str) -> list[dict[str, Any]]:
        """The prediction records of ``task``, by annotation index (the last record of an index wins)."""
        return list(self._predictions.get(task, {}).values())

    def record(self, task: str, index: int) -> dict[str, Any] | None:
        return self._predictions.get(task, {}).get(index)

    @cached_property
    def _predictions(self) -> dict[str, dict[int, dict[str, Any]]]:
        out: dict[str, dict[int, dict[str, Any]]] = {}
        for task in self.tasks:
            path = self.path / "predictions" / f"{task}.jsonl"
            records: dict[int, dict[str, Any]] = {}
            if path.is_file():
                for line in path.read_text().splitlines():
                    try:
                        row = json.loads(line)
                    except ValueError:  # a torn last line of an interrupted run
                        continue
                    if isinstance(row, dict) and "index" in row:
                        records[int(row["index"])] = row
            out[task] = dict(sorted(records.items()))
        return out

    def kept_objects(self, task: str) -> list[float]:
        """Kept objects per sample of ``task``: ``kept_objects`` when recorded, else kept tokens / 3."""
        counts = []
        for row in self.predictions(task):
            if row.get("kept_objects") is not None:
                counts.append(float(len(row["kept_objects"])))
            elif "kept_visual_tokens" in row:
                counts.append(float(math.ceil(int(row["kept_visual_tokens"]) / TOKENS_PER_OBJECT)))
        return counts

    @property
    def has_kept_objects(self) -> bool:
        return any(row.get("kept_objects") is not None for t in self.tasks for row in self.predictions(t))


class UnfinishedResult(UserError):
    """An evaluation directory without metrics.json (still running or interrupted)."""


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {path}: {err}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} should hold a JSON object")
    return data


def _float(value: Any, default: float = 0.0) -> float:
    return default if value is None else float(value)


def _interval(value: Any, where: str) -> tuple[float, float] | None:
    """A recorded confidence interval [low, high] as a tuple; None when there is none (a dense run, a result
    of an earlier version, ``--bootstrap 0``); UserError when it is something else."""
    if value is None:
        return None
    try:
        low, high = (float(bound) for bound in value)
    except (TypeError, ValueError):
        raise UserError(f"{where} should be [low, high] or null, got {value!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and low <= high):
        raise UserError(f"{where} should be [low, high] or null, got {value!r}")
    return low, high


def _task_intervals(value: Any, where: str) -> dict[str, tuple[float, float] | None]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"{where} should map each task to [low, high] or null, got {value!r}")
    return {str(task): _interval(ci, f"{where}.{task}") for task, ci in value.items()}


def _score_ratio(metrics: dict[str, Any], dense: bool) -> dict[str, Any]:
    """metrics.json's ``score_ratio`` section under the negligible-dense rule of this version
    (`fast3d_cli.metrics.ratio`): a dense run's own ratio (100, or n/a where its headline is negligible);
    a pruned run's as recorded, but n/a, without interval, for the tasks whose recorded
    ``baseline_headline`` is negligible (a result scored before the rule read 100% against a BLEU-4 of
    1e-8)."""
    from fast3d_cli.metrics.ratio import dense_ratio_entry, negligible_dense

    if dense:
        return dense_ratio_entry(metrics["headline"])
    ratio = dict(metrics.get("score_ratio") or {})
    baseline = ratio.get("baseline_headline")
    if not isinstance(baseline, dict):
        return ratio
    reasons = {
        str(task): why
        for task, value in baseline.items()
        if isinstance(value, int | float) and (why := negligible_dense(str(task), float(value)))
    }
    if not reasons:
        return ratio
    ratio["per_task"] = {**(ratio.get("per_task") or {}), **dict.fromkeys(reasons)}
    if isinstance(ratio.get("per_task_ci95"), dict):
        ratio["per_task_ci95"] = {**ratio["per_task_ci95"], **dict.fromkeys(reasons)}
    if ratio.get("value") is not None or not ratio.get("reason"):
        ratio["reason"] = "undefined for " + "; ".join(f"{t} ({why})" for t, why in reasons.items())
    ratio.update(value=None, ci95=None)
    return ratio


def load_result(path: Path) -> EvalResult:
    """Read one ``fast3d eval`` output directory; UserError when it is none, UnfinishedResult when the
    evaluation has not written its metrics yet."""
    path = Path(path)
    if not path.is_dir() or not (path / "run.json").is_file():
        raise UserError(f"{path} is not an evaluation directory of fast3d eval (no run.json)")
    run = _read_json(path / "run.json")
    if not (path / "metrics.json").is_file():
        raise UnfinishedResult(f"{path}: evaluation not finished (no metrics.json)")
    metrics = _read_json(path / "metrics.json")
    pruning = metrics.get("pruning")
    if not isinstance(pruning, dict) or "headline" not in metrics:
        raise UserError(f"{path}/metrics.json lacks the pruning summary or headline scores of fast3d eval")
    method = str(pruning.get("method", "none"))
    tasks = list(metrics.get("samples") or metrics["headline"])
    where = f"{path / 'metrics.json'}: score_ratio"
    ratio = _score_ratio(metrics, method == "none")
    total = None if ratio.get("value") is None else float(ratio["value"])
    task_scores = {t: None if v is None else float(v) for t, v in (ratio.get("per_task") or {}).items()}
    task_intervals = _task_intervals(ratio.get("per_task_ci95"), f"{where}.per_task_ci95")
    reason = None
    if total is None:
        reason = ratio.get("reason") or ratio.get("error") or "run without a dense baseline"
    per_task = {}
    for task, row in (pruning.get("per_task") or {}).items():
        per_task[task] = TaskPoint(
            score_ratio=task_scores.get(task),
            layer_averaged_ratio=_float(row.get("layer_averaged_ratio")),
            input_ratio=_float(row.get("input_ratio")),
            mean_kept_tokens=_float(row.get("mean_kept_tokens"), float(pruning.get("n_visual", 0))),
            score_ratio_ci=task_intervals.get(task),
        )
    alpha = pruning.get("alpha")
    return EvalResult(
        path=path,
        split=str(run.get("settings", {}).get("split", "val")),
        tasks=tasks,
        method=method,
        layer=int(pruning.get("layer", 0)),
        granularity=str(pruning.get("granularity", "object")),
        keep=pruning.get("keep"),
        alpha=None if alpha is None else float(alpha),
        n_visual=int(pruning.get("n_visual", 0)),
        n_layers=int(pruning.get("n_layers", 0)),
        input_ratio=_float(pruning.get("input_ratio")),
        layer_averaged_ratio=_float(pruning.get("layer_averaged_ratio")),
        mean_kept_tokens=_float(pruning.get("mean_kept_tokens")),
        score_ratio=total,
        score_ratio_reason=reason,
        score_ratio_ci=None if total is None else _interval(ratio.get("ci95"), f"{where}.ci95"),
        per_task=per_task,
        headline={t: float(v) for t, v in metrics["headline"].items()},
    )
