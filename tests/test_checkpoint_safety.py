"""Checkpoints never run pickled code unless ``--trust-checkpoint``: every object of every format goes through
the restricted unpickler (plain pickle, torch's legacy format, torch's zip format; the payload at the top
level, nested in a dict, or as Chat-Scene's pickled ``config`` object)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from fast3d_cli.checkpoints import load_checkpoint
from fast3d_cli.errors import CheckpointError

from .conftest import fast3d


class RunsACommand:
    """Unpickling it runs ``touch PATH`` (how a malicious checkpoint executes code)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _plain(obj, path: Path) -> None:
    with open(path, "wb") as handle:
        pickle.dump(obj, handle)


def _legacy(obj, path: Path) -> None:
    torch.save(obj, path, _use_new_zipfile_serialization=False)


def _zip(obj, path: Path) -> None:
    torch.save(obj, path)


FORMATS = {"plain-pickle": _plain, "torch-legacy": _legacy, "torch-zip": _zip}
PLACES = {
    "top-level": lambda payload: payload,
    "nested": lambda payload: {"model": {"layer": [0.0, 1.0]}, "extra": {"deep": [1, (payload,)]}},
    "config": lambda payload: {"model": {"layer": [0.0, 1.0]}, "config": payload},
}


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_no_format_runs_code(tmp_path: Path, fmt: str, place: str) -> None:
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pth"
    FORMATS[fmt](PLACES[place](RunsACommand(marker)), path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert not marker.exists()
    assert "system" in str(err.value) and "--trust-checkpoint" in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("fmt", FORMATS)
def test_trusted_load_runs_the_payload(tmp_path: Path, fmt: str) -> None:
    """The control: the same files do run code with full pickle, so the refusals above are real."""
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pth"
    FORMATS[fmt](PLACES["nested"](RunsACommand(marker)), path)
    if fmt == "plain-pickle":  # not a torch file: torch reads the payload, then finds no magic number
        with pytest.raises(CheckpointError):
            load_checkpoint(path, trust=True)
    else:
        load_checkpoint(path, trust=True)
    assert marker.exists()


def test_plain_pickle_without_calls_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "plain.pth"
    _plain({"model": {}, "lr": 1e-4}, path)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_eval_and_extract_refuse_a_hostile_checkpoint(capsys, data_config, tmp_path: Path, fmt: str) -> None:
    """The issue's reproduction: ``fast3d eval --checkpoint evil.pth --base-llm ...`` with a plain pickle."""
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pth"
    FORMATS[fmt]({"model": {}, "x": RunsACommand(marker)}, evil)
    base_llm = tmp_path / "vicuna"
    base_llm.mkdir()
    common = ["--checkpoint", str(evil), "--base-llm", str(base_llm), "--data-root", str(data_config.root)]
    for command, out in (("eval", tmp_path / "e"), ("extract", tmp_path / "m.zarr")):
        code, stdout, stderr = fast3d(capsys, command, *common, "--tasks", "scanqa", "-o", str(out))
        assert code == 2 and stdout == "" and not marker.exists(), stderr
        lines = stderr.strip().splitlines()
        assert lines[-1].startswith("fast3d: error:") and "posix.system" in lines[-1], stderr
        assert sum(line.startswith("fast3d: error:") for line in lines) == 1 and "Traceback" not in stderr


# ---------------------------------------------------------------------------------------------------------
# train-gap's resume reads accelerate's state files: a damaged or hostile one is refused in one line


@pytest.fixture(scope="module")
def interrupted_gap_run(tiny_model, data_config, tmp_path_factory) -> tuple[list[str], Path]:
    """A tiny train-gap run whose record says unfinished: a rerun resumes from its last checkpoint."""
    import json

    from fast3d_cli.cli.app import run

    from .test_gap_train import build_gap_inputs, train_args

    inputs = build_gap_inputs(tiny_model, data_config, tmp_path_factory)
    out = tmp_path_factory.mktemp("resume") / "gap"
    args = train_args(inputs, data_config, out, "--epochs", "1", "--limit", "8", "--no-val")
    assert run(args) == 0
    record = json.loads((out / "training.json").read_text())
    (out / "training.json").write_text(json.dumps({**record, "complete": False}))
    return args, out


def _hostile(marker: Path):
    return lambda path: torch.save({"state": {}, "param_groups": [RunsACommand(marker)]}, path)


DAMAGES = {
    "random bytes": lambda path: path.write_bytes(os.urandom(4096)),
    "truncated": lambda path: path.write_bytes(path.read_bytes()[:200]),
    "empty": lambda path: path.write_bytes(b""),
}


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        ("optimizer.bin", "random bytes"),
        ("optimizer.bin", "calls code"),
        ("scheduler.bin", "truncated"),
        ("random_states_0.pkl", "calls code"),
        ("random_states_0.pkl", "empty"),
        ("model.safetensors", "random bytes"),
    ],
)
def test_resume_refuses_a_damaged_training_state(capsys, interrupted_gap_run, tmp_path, name, damage) -> None:
    import shutil

    args, template = interrupted_gap_run
    out = tmp_path / "gap"
    shutil.copytree(template, out)
    (checkpoint,) = (out / "checkpoints").glob("step-*")
    marker = tmp_path / "PWNED"
    (_hostile(marker) if damage == "calls code" else DAMAGES[damage])(checkpoint / name)
    before = sorted(p.name for p in out.rglob("*"))
    code, stdout, stderr = fast3d(capsys, *[str(out) if a == str(template) else a for a in args])
    assert code == 2 and stdout == "" and stderr.count("fast3d: error:") == 1, stderr
    line = stderr.splitlines()[-1]
    assert line.startswith("fast3d: error: cannot resume: ") and str(checkpoint / name) in line, line
    assert "--overwrite" in line and f"delete {checkpoint}" in line, line
    assert "Traceback" not in stderr and not marker.exists()
    if damage == "calls code":
        assert "system, which could run arbitrary code" in line, line
    assert sorted(p.name for p in out.rglob("*")) == before  # nothing removed or written


def test_overwrite_starts_over_from_a_damaged_checkpoint(capsys, interrupted_gap_run, tmp_path) -> None:
    import json
    import shutil

    args, template = interrupted_gap_run
    out = tmp_path / "gap"
    shutil.copytree(template, out)
    (checkpoint,) = (out / "checkpoints").glob("step-*")
    (checkpoint / "optimizer.bin").write_bytes(os.urandom(512))
    run_args = [str(out) if a == str(template) else a for a in args]
    code, stdout, stderr = fast3d(capsys, *run_args, "--overwrite", "--json")
    assert code == 0, stderr
    result = json.loads(stdout)
    assert result["complete"] and result["resumed_from_step"] is None and result["trained_steps"] > 0
