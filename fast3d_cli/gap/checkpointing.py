"""train-gap's checkpoints: accelerate's own ``save_state``/``load_state`` plus where training stands.

A checkpoint is a directory ``checkpoints/step-XXXXXXXX/`` holding what
:meth:`accelerate.Accelerator.save_state` writes (the model, the optimizer, the LR scheduler and every
rank's RNG states: Python, NumPy, torch, CUDA) and ``training_state.json`` (step, epoch, position in the
epoch, best selection value, metrics lines logged, every rank's running loss, and the run identity). It is
written under ``step-XXXXXXXX.partial`` and renamed when every rank has written its part, so a kill at any
moment leaves the previous checkpoint intact; then the older ones are removed.

Before a resume every file of the checkpoint is read the way accelerate reads it (``weights_only`` pickles,
safetensors): a damaged or hostile file is refused in one line naming it, with the way out (``--overwrite``
or deleting the checkpoint), instead of an unpickling traceback half-way into the resume.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fast3d_cli.data.formats import write_text_atomic
from fast3d_cli.errors import CheckpointError

CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "training_state.json"
CHECKPOINT_FORMAT = "fast3d-gap-training/accelerate"
PICKLED_STATE_SUFFIXES = (".bin", ".pkl", ".pt", ".pth")  # what accelerate's load_state reads with torch.load


@dataclass
class TrainingState:
    """Where training stands (the same on every rank, except ``loss``: this rank's running loss of the
    epoch, [sum, count])."""

    step: int = 0
    epoch: int = 0  # epochs completed
    batch: int = 0  # batches of the current epoch completed
    best: dict[str, Any] | None = None
    metrics_lines: int = 0
    loss: list[float] = field(default_factory=lambda: [0.0, 0])


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class Checkpoints:
    """The checkpoints of one training directory ``out``."""

    def __init__(self, out: Path) -> None:
        self.directory = Path(out) / CHECKPOINT_DIR

    def complete(self) -> list[Path]:
        """Complete checkpoints, newest first."""
        if not self.directory.is_dir():
            return []
        found = [p for p in self.directory.glob("step-*") if p.is_dir() and not p.name.endswith(".partial")]
        return sorted((p for p in found if (p / STATE_FILE).is_file()), reverse=True)

    def newest_record(self) -> dict[str, Any] | None:
        """The ``training_state.json`` of the newest complete checkpoint (None: there is none)."""
        for path in self.complete():
            record = _read_json(path / STATE_FILE)
            if record is not None and record.get("format") == CHECKPOINT_FORMAT:
                return record
        return None

    def remove_partial(self) -> None:
        """Coordinator only: delete what a killed run left half-written."""
        for stale in self.directory.glob("*.partial") if self.directory.is_dir() else ():
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()

    def save(self, accelerator: Any, state: TrainingState, identity: dict[str, Any]) -> None:
        """Every rank calls this: accelerate writes its state (each rank its RNG states), the coordinator
        adds ``training_state.json`` and renames the directory into place."""
        losses = _gather(accelerator, list(state.loss))
        final = self.directory / f"step-{state.step:08d}"
        partial = final.with_name(final.name + ".partial")
        if accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(partial))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            record = {**asdict(state), "loss": None, "rank_losses": losses}
            record |= {"format": CHECKPOINT_FORMAT, "identity": identity}
            for written in partial.iterdir():
                _fsync(written)
            write_text_atomic(partial / STATE_FILE, json.dumps(record, indent=1) + "\n")
            shutil.rmtree(final, ignore_errors=True)
            os.replace(partial, final)
            _fsync(self.directory)
            for old in self.complete():
                if old != final:
                    shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()

    def resumable(self) -> Path | None:
        """The checkpoint a resume would load: the newest complete one with a fast3d training state."""
        for path in self.complete():
            record = _read_json(path / STATE_FILE)
            if record is not None and record.get("format") == CHECKPOINT_FORMAT:
                return path
        return None

    def check_resumable(self, overwrite: bool) -> bool:
        """Read every file of the checkpoint a resume would load. Damaged: True with ``overwrite`` (start the
        run over), else :class:`CheckpointError` naming the file. False: nothing to resume, or it is sound."""
        path = self.resumable()
        if path is None:
            return False
        try:
            check_state_files(path)
        except CheckpointError as err:
            if overwrite:
                return True
            raise CheckpointError(f"cannot resume: {err}; {_way_out(path)}") from None
        return False

    def restore(self, accelerator: Any) -> TrainingState | None:
        """Load the newest checkpoint that this process can resume from into the prepared objects (model,
        optimizer, scheduler, RNG states); returns where training stands, or None when there is none."""
        rank = accelerator.process_index
        for path in self.complete():
            record = _read_json(path / STATE_FILE)
            if record is None or record.get("format") != CHECKPOINT_FORMAT:
                continue
            losses = record.get("rank_losses") or []
            if rank >= len(losses) or not (path / f"random_states_{rank}.pkl").is_file():
                continue  # accelerate would skip the missing RNG states silently: the resume would differ
            try:
                check_state_files(path)
                accelerator.load_state(str(path))
            except CheckpointError as err:
                raise CheckpointError(f"cannot resume: {err}; {_way_out(path)}") from None
            except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as err:  # another run's state
                raise CheckpointError(f"cannot resume from {path}: {err}; {_way_out(path)}") from None
            fields = {k: record[k] for k in ("step", "epoch", "batch", "best", "metrics_lines")}
            return TrainingState(**fields, loss=list(losses[rank]))
        return None


def _way_out(path: Path) -> str:
    return f"pass --overwrite to start the run over, or delete {path}"


def check_state_files(path: Path) -> None:
    """Read every file of checkpoint ``path`` the way ``accelerate``'s ``load_state`` will: the pickles with
    ``weights_only`` (:func:`fast3d_cli.checkpoints.load_training_state_file`), the weights with safetensors.
    :class:`CheckpointError` naming the first file that fails."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from fast3d_cli.checkpoints import load_training_state_file

    for file in sorted(path.iterdir()):
        if file.suffix == ".safetensors":
            try:
                load_file(str(file))
            except (SafetensorError, OSError, ValueError) as err:
                raise CheckpointError(f"{file} cannot be read as safetensors weights: {err}") from None
        elif file.suffix in PICKLED_STATE_SUFFIXES:
            load_training_state_file(file)


def _gather(accelerator: Any, obj: Any) -> list[Any]:
    if accelerator.num_processes == 1:
        return [obj]
    from accelerate.utils import gather_object

    return gather_object([obj])
