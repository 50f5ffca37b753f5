"""``fast3d compare``: pruning methods at matched average pruning on the same samples, one leaderboard.

Layout of the output folder (docs/compare.md)::

    OUT/leaderboard.json   settings identity, device, one entry per row (rewritten atomically after each row)
    OUT/leaderboard.csv    the same rows, flat
    OUT/runs/dense/        the dense evaluation every row is compared with
    OUT/runs/<row>/        one normal `fast3d eval` folder per row (run.json, predictions/, metrics.json)
    OUT/errors/<row>.txt   the traceback of a row that failed with an unexpected error

Each row is an evaluation through :func:`~fast3d_cli.evaluation.runner.run_pruned_eval`. A finished row
(``status: done``) is kept on a rerun whose settings resolve the same, so a rerun evaluates only what is
missing or failed. A row that cannot run (a missing store, an unreachable ratio, a crash) is recorded as
``status: failed`` with one line saying why, and the other rows go on; a KeyboardInterrupt still stops.
"""

from __future__ import annotations

import csv
import io
import json
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from fast3d_cli import __version__
from fast3d_cli.data import DataConfig
from fast3d_cli.data.formats import read_json, write_json, write_text_atomic
from fast3d_cli.errors import UserError
from fast3d_cli.evaluation.confidence import BootstrapSettings
from fast3d_cli.evaluation.matching import (
    DENSE,
    MatchInputs,
    PlannedRow,
    ResolvedRow,
    plan_rows,
    resolve_row,
)
from fast3d_cli.evaluation.predictions import PredictionLog
from fast3d_cli.evaluation.runner import EvalSettings, PhaseCallback, ProgressCallback

LEADERBOARD_FILE = "leaderboard.json"
CSV_FILE = "leaderboard.csv"
FORMAT = 1
TOKENS_PER_OBJECT = 3


@dataclass(frozen=True)
class CompareSettings:
    """The methods, the targets they are matched to, and the evaluation every row shares (``evaluation``:
    tasks, split, limit, generation, batch size; its pruning is ignored)."""

    methods: tuple[str, ...]
    evaluation: EvalSettings
    ratios: tuple[float, ...] = (35.0, 65.0, 90.0)
    adaptive_target: float = 90.0
    layer: int = 0  # rows prune before max(layer, the method's min_layer)
    inputs: MatchInputs = field(default_factory=MatchInputs)
    bootstrap: BootstrapSettings = field(default_factory=BootstrapSettings)

    def rows(self) -> list[PlannedRow]:
        return plan_rows(self.methods, self.ratios, self.adaptive_target)

    def identity(self, model_fingerprint: str, data_fingerprint: str) -> dict[str, Any]:
        """What every row of one leaderboard shares; a rerun with another identity is refused."""
        identity = {
            "model": model_fingerprint,
            "data": data_fingerprint,
            "tasks": list(self.evaluation.tasks),
            "evaluation": {k: v for k, v in self.evaluation.identity().items() if k != "pruning"},
            "bootstrap": asdict(self.bootstrap),
        }
        return json.loads(json.dumps(identity))  # as read back from leaderboard.json (lists, not tuples)


@dataclass
class TargetModel:
    """The model the rows evaluate, loaded on first use (a rerun with every row done loads nothing)."""

    load: Callable[[], Any]
    fingerprint: str
    n_layers: int | None  # from the config files (None where they do not say: checked once loaded)
    n_objects: int | None = None
    _model: Any = None

    def get(self) -> Any:
        if self._model is None:
            self._model = self.load()
        return self._model


class Leaderboard:
    """``OUT/leaderboard.json`` and ``.csv``: the rows by slug, written after every change."""

    def __init__(self, out_dir: Path, identity: dict[str, Any], rows: dict[str, dict[str, Any]]) -> None:
        self.out_dir = Path(out_dir)
        self.identity = identity
        self.rows = rows
        self.device: str | None = None

    @classmethod
    def open(cls, out_dir: Path, identity: dict[str, Any], overwrite: bool = False) -> Leaderboard:
        """The leaderboard in ``out_dir``, or a new one; one made with another identity is refused (one
        line) unless ``overwrite``, which starts afresh."""
        out_dir = Path(out_dir)
        path = out_dir / LEADERBOARD_FILE
        if not path.is_file():
            if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
                raise UserError(f"{out_dir} exists and is not a compare folder; choose another --output")
            return cls(out_dir, identity, {})
        saved = read_json(path)
        if not isinstance(saved, dict) or not isinstance(saved.get("rows"), list):
            raise UserError(f"{path} is not a leaderboard of fast3d compare")
        if overwrite:
            return cls(out_dir, identity, {})
        change = _first_change(saved.get("identity") or {}, identity)
        if change is not None:
            raise UserError(
                f"{out_dir} holds a comparison made with another {change}; use --overwrite to redo it or "
                "choose another --output"
            )
        board = cls(out_dir, identity, {row["slug"]: row for row in saved["rows"]})
        board.device = saved.get("device")
        return board

    def changed(self, resolved: ResolvedRow) -> bool:
        """Whether the row was recorded with other settings (a new store, another alpha): its folder is
        then redone."""
        recorded = self.rows.get(resolved.row.slug, {}).get("settings")
        return recorded is not None and recorded != resolved.pruning.identity()

    def finished(self, resolved: ResolvedRow) -> bool:
        row = self.rows.get(resolved.row.slug)
        return bool(row) and row["status"] == "done" and row.get("settings") == resolved.pruning.identity()

    def put(self, row: dict[str, Any], order: Sequence[str]) -> None:
        """Record ``row`` and rewrite both files; rows of ``order`` first, earlier rows after them."""
        self.rows[row["slug"]] = row
        ranked = {slug: self.rows[slug] for slug in order if slug in self.rows}
        self.rows = {**ranked, **self.rows}
        self.write()

    def document(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "fast3d_version": __version__,
            "identity": self.identity,
            "device": self.device,
            "rows": list(self.rows.values()),
        }

    def write(self) -> None:
        write_json(self.out_dir / LEADERBOARD_FILE, self.document(), indent=2)
        write_text_atomic(
            self.out_dir / CSV_FILE, leaderboard_csv(list(self.rows.values()), self.identity["tasks"])
        )


def _first_change(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    from fast3d_cli.records import changed_fields, describe_change

    for key in new:
        changed = changed_fields(old.get(key), new[key], key)
        if changed:
            return describe_change(old, new, changed[0])
    return None


def run_compare(
    out_dir: Path,
    settings: CompareSettings,
    data: DataConfig,
    target: TargetModel,
    *,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    phase: PhaseCallback | None = None,
) -> dict[str, Any]:
    """Evaluate every row of ``settings`` into ``out_dir`` (rows already finished are kept) and return the
    leaderboard document also written to leaderboard.json. Options and stores are checked for every row
    before the model loads; a row that fails is recorded as failed and the others go on."""
    from fast3d_cli.evaluation.fingerprint import files_fingerprint
    from fast3d_cli.evaluation.runner import data_files

    phase = phase or (lambda message: None)
    out_dir = Path(out_dir)
    files = data_files(data, settings.evaluation.tasks, settings.evaluation.split)
    identity = settings.identity(target.fingerprint, files_fingerprint(files))
    board = Leaderboard.open(out_dir, identity, overwrite)
    board.write()  # from now on the folder is a compare folder: an interrupted first row resumes
    planned = settings.rows()
    order = [row.slug for row in planned]
    resolved = _resolve_all(board, planned, settings, data, target, order, phase)
    pending = [r for r in resolved if not board.finished(r)]
    for r in resolved:
        if board.finished(r):
            phase(f"{r.row.label}: finished earlier ({out_dir / 'runs' / r.row.slug})")
    if pending:
        runner = _RowRunner(out_dir, settings, data, target, overwrite, progress, phase)
        for number, row in enumerate(pending, 1):
            phase(
                f"row {number}/{len(pending)}: {row.row.label}" + (f" ({row.matched})" if row.matched else "")
            )
            entry = runner.run(row, replace_run=board.changed(row))
            board.device = runner.device or board.device
            board.put(entry, order)
    board.write()
    return board.document()


def _resolve_all(
    board: Leaderboard,
    planned: Sequence[PlannedRow],
    settings: CompareSettings,
    data: DataConfig,
    target: TargetModel,
    order: Sequence[str],
    phase: PhaseCallback,
) -> list[ResolvedRow]:
    """Resolve each row's settings and run every check ``fast3d eval`` runs before its model loads (the
    maps store's kind, model, data and object count); a row that cannot run is recorded as failed (a
    finished row is kept as it is, with a note)."""
    from fast3d_cli.pruning.methods import preflight

    resolved = []
    for row in planned:
        try:
            found = resolve_row(row, settings.inputs, settings.layer, target.n_layers)
            preflight(found.pruning, target.fingerprint, target.n_layers, target.n_objects, data)
            resolved.append(found)
        except Exception as err:  # a bad row (UserError) or a crash while resolving it: this row only
            line = str(err) if isinstance(err, UserError) else error_line(err)
            if board.rows.get(row.slug, {}).get("status") == "done":
                phase(f"{row.label}: kept the finished row ({line})")
                continue
            phase(f"{row.label}: failed ({line})")
            board.put(failed_row(row, line), order)
    return resolved


def error_line(err: BaseException) -> str:
    """``Type: first line of the message`` of an unexpected error."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


class _RowRunner:
    """Evaluates rows with one loaded model: the dense run first (every row is compared with it)."""

    def __init__(
        self,
        out_dir: Path,
        settings: CompareSettings,
        data: DataConfig,
        target: TargetModel,
        overwrite: bool,
        progress: ProgressCallback | None,
        phase: PhaseCallback,
    ) -> None:
        self.out_dir, self.settings, self.data, self.target = out_dir, settings, data, target
        self.overwrite, self.progress, self.phase = overwrite, progress, phase
        self.device: str | None = None
        self.warm = False

    @property
    def dense_dir(self) -> Path:
        return self.out_dir / "runs" / DENSE

    def run(self, resolved: ResolvedRow, replace_run: bool = False) -> dict[str, Any]:
        """The finished row, or its failure: a UserError or any other Exception ends only this row (one
        loading the model ends the command: no row could run)."""
        model = self._model()
        try:
            if replace_run:
                self.phase(f"{resolved.row.label}: the settings changed since it was recorded; redoing it")
            result = self._evaluate(model, resolved, replace_run)
            return done_row(
                resolved, result, self.out_dir / "runs" / resolved.row.slug, self.dense_dir, self.device
            )
        except UserError as err:
            self.phase(f"{resolved.row.label}: failed ({err})")
            return failed_row(resolved.row, str(err), resolved)
        except Exception as err:  # any crash ends this row only (a KeyboardInterrupt still stops)
            log = self.out_dir / "errors" / f"{resolved.row.slug}.txt"
            write_text_atomic(log, traceback.format_exc())
            line = error_line(err)
            self.phase(f"{resolved.row.label}: failed ({line}; traceback in {log})")
            return failed_row(resolved.row, line, resolved)

    def _model(self) -> Any:
        model = self.target.get()
        if self.device is None:
            self.device = describe_device(model.device)
        if not self.warm:  # the first generation pays one-time costs (kernels, caches): keep it off the rows
            self.warm = True
            warm_up(model, self.data, self.settings.evaluation)
        return model

    def _evaluate(self, model: Any, resolved: ResolvedRow, replace_run: bool) -> dict[str, Any]:
        from fast3d_cli.evaluation.runner import run_eval, run_pruned_eval

        evaluation = replace(self.settings.evaluation, pruning=resolved.pruning)
        run_dir = self.out_dir / "runs" / resolved.row.slug
        common = {"overwrite": self.overwrite or replace_run, "progress": self.progress, "phase": self.phase}
        if resolved.row.kind == DENSE:
            return run_eval(model, self.target.fingerprint, self.data, evaluation, run_dir, **common)
        return run_pruned_eval(
            model, self.target.fingerprint, self.data, evaluation, run_dir, self.dense_dir,
            bootstrap=self.settings.bootstrap, **common,
        )  # fmt: skip


def warm_up(model: Any, data: DataConfig, evaluation: EvalSettings) -> None:
    """One short dense generation of the first batch, untimed."""
    from fast3d_cli.data import SceneBank, load_samples
    from fast3d_cli.evaluation.runner import generate_answers

    samples = load_samples(data, evaluation.tasks[0], evaluation.split)[: evaluation.batch_size]
    short = replace(evaluation.generation, max_new_tokens=min(2, evaluation.generation.max_new_tokens))
    generate_answers(model, SceneBank(data, evaluation.split), samples, short)


def describe_device(device: Any) -> str:
    """``cpu``, or ``cuda:0 (NVIDIA H100 80GB HBM3)``: where the rows' times were measured."""
    if getattr(device, "type", str(device)).startswith("cuda"):
        import torch

        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def agreement(run_dir: Path, dense_dir: Path, tasks: Sequence[str]) -> dict[str, Any]:
    """The share of samples whose answer (after the answer post-processing) equals the dense run's, over
    the samples both runs answered: overall and per task."""
    same = total = 0
    per_task: dict[str, float | None] = {}
    for task in tasks:
        mine = PredictionLog(Path(run_dir) / "predictions" / f"{task}.jsonl").read()
        dense = PredictionLog(Path(dense_dir) / "predictions" / f"{task}.jsonl").read()
        shared = sorted(set(mine) & set(dense))
        equal = sum(mine[i]["pred"] == dense[i]["pred"] for i in shared)
        per_task[task] = round(equal / len(shared), 4) if shared else None
        same, total = same + equal, total + len(shared)
    return {"value": round(same / total, 4) if total else None, "per_task": per_task, "samples": total}


def done_row(
    resolved: ResolvedRow, result: dict[str, Any], run_dir: Path, dense_dir: Path, device: str | None
) -> dict[str, Any]:
    """A finished row from its metrics document (``result``)."""
    dense = resolved.row.kind == DENSE
    pruning, speed = result["pruning"], result.get("speed") or {}
    ratio = result.get("score_ratio") or {}
    agree = agreement(run_dir, dense_dir, list(result["samples"]))
    intervals = ratio.get("per_task_ci95") or {}
    per_task = {
        task: {
            "headline": result["headline"].get(task),
            "score_ratio": 100.0 if dense else (ratio.get("per_task") or {}).get(task),
            "score_ratio_ci95": None if dense else intervals.get(task),
            "agreement": agree["per_task"].get(task),
        }
        for task in result["samples"]
    }
    return {
        **_row_head(resolved.row, "done", None, resolved),
        "run": str(run_dir),
        "samples": result["samples"],
        "score_ratio": 100.0 if dense else ratio.get("value"),
        "score_ratio_ci95": None if dense else ratio.get("ci95"),
        "score_ratio_reason": None if dense else (ratio.get("reason") or ratio.get("error")),
        "per_task": per_task,
        "layer": pruning["layer"],
        "keep": pruning["keep"],
        "alpha": pruning["alpha"],
        "layer_averaged_ratio": pruning["layer_averaged_ratio"],
        "input_ratio": pruning["input_ratio"],
        "mean_kept_objects": round(pruning["mean_kept_tokens"] / TOKENS_PER_OBJECT, 4),
        "flops_ratio": pruning["flops_ratio"],
        "prefill_ms_per_sample": speed.get("prefill_ms_per_sample"),
        "selection_ms_per_sample": speed.get("selection_ms_per_sample"),
        "agreement": agree["value"],
        "device": device,
    }


def failed_row(row: PlannedRow, error: str, resolved: ResolvedRow | None = None) -> dict[str, Any]:
    return _row_head(row, "failed", error, resolved)


def _row_head(
    row: PlannedRow, status: str, error: str | None, resolved: ResolvedRow | None
) -> dict[str, Any]:
    return {
        "slug": row.slug,
        "label": row.label,
        "method": row.method,
        "kind": row.kind,
        "target_ratio": row.target,
        "status": status,
        "error": error,
        "matched": None if resolved is None else resolved.matched,
        "settings": None if resolved is None else resolved.pruning.identity(),
    }


CSV_COLUMNS = (
    "slug", "label", "method", "kind", "target_ratio", "status", "score_ratio", "ci_low", "ci_high",
    "layer_averaged_ratio", "input_ratio", "mean_kept_objects", "flops_ratio", "prefill_ms_per_sample",
    "selection_ms_per_sample", "agreement", "layer", "keep", "alpha", "device", "error",
)  # fmt: skip


def leaderboard_csv(rows: Sequence[dict[str, Any]], tasks: Sequence[str]) -> str:
    """The rows as CSV: the columns of :data:`CSV_COLUMNS`, then per task its score ratio, interval and
    agreement."""
    per_task = [f"{t}_{c}" for t in tasks for c in ("score_ratio", "ci_low", "ci_high", "agreement")]
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer, fieldnames=[*CSV_COLUMNS, *per_task], extrasaction="ignore", lineterminator="\n"
    )
    writer.writeheader()
    for row in rows:
        flat = {**row, **_interval_columns("", row.get("score_ratio_ci95"))}
        for task, entry in (row.get("per_task") or {}).items():
            flat[f"{task}_score_ratio"] = entry.get("score_ratio")
            flat[f"{task}_agreement"] = entry.get("agreement")
            flat.update(_interval_columns(f"{task}_", entry.get("score_ratio_ci95")))
        writer.writerow({key: "" if value is None else value for key, value in flat.items()})
    return buffer.getvalue()


def _interval_columns(prefix: str, ci: Sequence[float] | None) -> dict[str, float | None]:
    low, high = ci if ci else (None, None)
    return {f"{prefix}ci_low": low, f"{prefix}ci_high": high}


def load_leaderboard(path: Path) -> dict[str, Any]:
    """A leaderboard document from a compare folder or its leaderboard.json (UserError if it is neither)."""
    path = Path(path)
    file = path / LEADERBOARD_FILE if path.is_dir() else path
    if not file.is_file():
        raise UserError(f"{path} holds no {LEADERBOARD_FILE} (run fast3d compare into it first)")
    document = read_json(file)
    if not isinstance(document, dict) or not isinstance(document.get("rows"), list):
        raise UserError(f"{file} is not a leaderboard of fast3d compare")
    return document
