"""An evaluation directory (``--output``, or the dense run of ``--baseline``): one writer at a time, the
evaluation it holds (run.json), and prediction logs each sample is in once.

- One writer: the coordinating process holds an exclusive lock on the directory for the whole evaluation
  (`evaluation_lock`). A second ``fast3d eval`` on the same ``--output`` is refused (exit 2); a pruned run
  whose dense ``--baseline`` another run is completing waits for it, then reuses it.
- Identity: a rerun resumes only the evaluation recorded in run.json (`check_output`); the dense baseline,
  shared by every run beside it, is checked before anything is generated (`check_baseline`).
- Integrity: a prediction log holding a sample twice (two writers before this lock existed) is refused on
  resume, naming the samples (`check_unique`).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fast3d_cli.data.formats import read_json, write_json
from fast3d_cli.errors import UserError
from fast3d_cli.evaluation.confidence import UNITS_FILE
from fast3d_cli.evaluation.predictions import PredictionLog
from fast3d_cli.launch import SINGLE_PROCESS, DistributedContext
from fast3d_cli.records import changed_fields, describe_change
from fast3d_cli.stores.lock import directory_lock

METRICS_FILE = "metrics.json"
RUN_FILE = "run.json"
_RECORDED_KEYS = ("model", "data", "settings")
_RESOLVED_KEYS = ("dtype", "attention", "maps", "gap")


@dataclass(frozen=True)
class Role:
    """Which option named the directory, for the messages: what it is and what the user can do."""

    option: str
    what: str
    remedy: str


OUTPUT = Role("--output", "", "use --overwrite to replace them or choose another --output")
BASELINE = Role(
    "--baseline",
    "the dense baseline ",
    "choose another --baseline, or delete that folder to compute it again",
)


def evaluation_lock(
    out_dir: Path, role: Role = OUTPUT, dist: DistributedContext = SINGLE_PROCESS, wait: Any = None
) -> AbstractContextManager[None]:
    """The exclusive writer lock of ``out_dir`` (the coordinating process takes it). Held by another process:
    UserError, or with ``wait`` (a phase callback) a note and a wait until it is free."""
    if not dist.is_main:
        return contextlib.nullcontext()
    busy = (
        f"another fast3d eval is writing {role.what}{out_dir}; wait for it to finish, then rerun this "
        "command to reuse or complete it"
    )
    waiting = None if wait is None else (lambda: wait(f"waiting for another fast3d eval writing {out_dir}"))
    return directory_lock(Path(out_dir), busy, _not_an_evaluation(out_dir, role), wait=waiting)


def _not_an_evaluation(out_dir: Path, role: Role) -> str:
    return f"{role.what}{out_dir} exists and is not an evaluation directory; choose another {role.option}"


def identity_change(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """The first field in which the evaluation recorded in run.json (``old``) differs from this one
    (``new``), described for the user; None when this run may resume it."""
    for key in _RECORDED_KEYS:
        changed = changed_fields(old.get(key), new[key], key)
        if changed:
            return describe_change(old, new, changed[0])
    was, now = old.get("resolved"), new["resolved"]
    if was is None:  # written before fast3d recorded what the settings resolved to
        if now.get("maps") or now.get("gap"):
            return "fast3d version, which did not record the maps store, GAP network and alpha it resolved"
        return None
    for key in _RESOLVED_KEYS:
        if was.get(key) != now.get(key):
            return describe_change(was, now, key)
    old_tasks, new_tasks = was.get("tasks") or {}, now.get("tasks") or {}
    for task in sorted(set(old_tasks) & set(new_tasks)):
        changed = changed_fields(old_tasks[task], new_tasks[task])
        if changed:
            return f"{describe_change(old_tasks[task], new_tasks[task], changed[0])} for {task}"
    return None


def check_output(out_dir: Path, manifest: dict[str, Any], overwrite: bool, role: Role = OUTPUT) -> bool:
    """Check that ``out_dir`` holds nothing, or this same evaluation (resolved identity included); another
    evaluation is refused, naming the first field that differs, unless ``overwrite``. Returns whether earlier
    predictions must be cleared."""
    path = Path(out_dir) / RUN_FILE
    if path.is_file() and not overwrite:
        change = identity_change(read_json(path), manifest)
        if change is not None:
            raise UserError(
                f"{role.what}{out_dir} holds predictions made with another {change}; {role.remedy}"
            )
        return False
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite and not path.is_file():
            raise UserError(_not_an_evaluation(out_dir, role))
        return True
    return False


def check_baseline(baseline_dir: Path, manifest: dict[str, Any], tasks: Iterable[str]) -> None:
    """Refuse, before a pruned run generates anything, a ``--baseline`` that holds another evaluation than
    the dense run of these settings, or a prediction log of ``tasks`` with a sample twice (the baseline is
    never overwritten: every run beside it shares it)."""
    baseline_dir = Path(baseline_dir)
    if not baseline_dir.is_dir():
        if baseline_dir.exists():
            raise UserError(_not_an_evaluation(baseline_dir, BASELINE))
        return
    check_output(baseline_dir, manifest, overwrite=False, role=BASELINE)
    for task in tasks:
        check_unique(prediction_log(baseline_dir, task), BASELINE)


def prediction_log(out_dir: Path, task: str) -> PredictionLog:
    return PredictionLog(Path(out_dir) / "predictions" / f"{task}.jsonl")


def prepare_output(
    out_dir: Path,
    manifest: dict[str, Any],
    overwrite: bool,
    dist: DistributedContext = SINGLE_PROCESS,
    role: Role = OUTPUT,
) -> None:
    """Every rank checks ``out_dir`` (:func:`check_output`); then the coordinator clears it if needed and
    writes run.json."""
    clear = check_output(out_dir, manifest, overwrite, role)
    dist.barrier()  # every rank has checked before the coordinator changes anything
    if dist.is_main:
        if clear:
            shutil.rmtree(out_dir / "predictions", ignore_errors=True)
            unfinish(out_dir)
        write_json(out_dir / RUN_FILE, manifest, indent=2)
    dist.barrier()


def unfinish(out_dir: Path) -> None:
    """Remove the files that mark ``out_dir`` as scored (metrics.json, units.json): done before its
    predictions change, so a run that stops midway never looks finished."""
    (Path(out_dir) / METRICS_FILE).unlink(missing_ok=True)
    (Path(out_dir) / UNITS_FILE).unlink(missing_ok=True)


def check_unique(log: PredictionLog, role: Role = OUTPUT) -> None:
    """Refuse a prediction log (or a rank log beside it) that holds a sample more than once, naming the
    samples: two evaluations appended to it at once, and resuming would score each twice."""
    for each in (*log.shards(), log):
        duplicates = each.duplicates()
        if duplicates:
            shown = ", ".join(map(str, duplicates[:10])) + (
                f" and {len(duplicates) - 10} more" if len(duplicates) > 10 else ""
            )
            remedy = (
                "rerun with --overwrite to generate them again"
                if role is OUTPUT
                else "delete that folder or choose another --baseline"
            )
            raise UserError(
                f"{each.path} holds samples {shown} more than once (two evaluations wrote it at once); "
                + remedy
            )
