"""``fast3d eval`` under ``accelerate launch`` with 2 CPU processes (gloo): the predictions and metrics of one
process, dense and gap+sap; a rank killed midway, then a rerun, gives them too; a rank without samples exits
cleanly. (``predict`` under launch: test_gap_predict.py and test_url_stores.py.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.test_gap_train import build_gap_inputs, build_trained_gap, fast3d

TASKS = "scanrefer,multi3dref"  # grounding metrics only: no Java caption scorer to wait for
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1"]
LAUNCH += ["--mixed_precision", "no", "--dynamo_backend", "no"]


@pytest.fixture(scope="module")
def inputs(tiny_model, data_config, tmp_path_factory) -> dict[str, Path]:
    found = build_gap_inputs(tiny_model, data_config, tmp_path_factory)
    return {**found, "gap": build_trained_gap(found, data_config)}


def launch_command(processes: int, args: list[str]) -> list[str]:
    return [*LAUNCH, "--num_processes", str(processes), "-m", "fast3d_cli", *args]


def launch_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", **extra}


def launch(processes: int, args: list[str]) -> subprocess.CompletedProcess[str]:
    command = launch_command(processes, args)
    return subprocess.run(command, env=launch_env(), capture_output=True, text=True, timeout=600)


def eval_args(inputs, data_config, out: Path, *extra: str) -> list[str]:
    args = ["eval", "--model", str(inputs["model"]), "--data-root", str(data_config.root), "-o", str(out)]
    return [*args, "--tasks", TASKS, "--num-beams", "2", "--max-new-tokens", "6", "--batch-size", "2", *extra]


def predictions(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "predictions").iterdir())}


def comparable(out: Path) -> dict:
    """metrics.json without what differs by design: the speed, the process count, the baseline's path."""
    metrics = json.loads((out / "metrics.json").read_text())
    metrics.pop("speed")
    metrics["run"].pop("world_size")
    metrics.get("score_ratio", {}).pop("baseline", None)
    return metrics


def assert_same_evaluation(single: Path, double: Path) -> None:
    assert predictions(double) == predictions(single)  # byte for byte, rank logs merged and removed
    assert comparable(double) == comparable(single)
    assert json.loads((double / "run.json").read_text())["world_size"] == 2
    assert json.loads((single / "run.json").read_text())["world_size"] == 1


@pytest.mark.usefixtures("one_thread")
def test_two_processes_give_one_process_predictions_and_metrics(
    capsys, inputs, data_config, tmp_path
) -> None:
    pruned = ("--method", "gap+sap", "--gap", str(inputs["gap"]), "--alpha", "0.3", "--limit", "5")
    single, double = tmp_path / "single", tmp_path / "double"
    args = eval_args(inputs, data_config, single / "gap", *pruned, "--baseline", str(single / "dense"))
    code, _, stderr = fast3d(capsys, *args)
    assert code == 0, stderr

    args = eval_args(inputs, data_config, double / "gap", *pruned, "--baseline", str(double / "dense"))
    started = time.perf_counter()
    result = launch(2, args)
    print(f"2-process eval (gap+sap and dense): {time.perf_counter() - started:.1f} s")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == [str(double / "gap" / "metrics.json")]  # one stdout line
    assert result.stderr.count("against the dense run in") == stderr.count("against the dense run in") == 1
    for run in ("gap", "dense"):
        assert_same_evaluation(single / run, double / run)
    assert comparable(double / "gap")["pruning"]["method"] == "gap+sap"


def _rank_pid(marker: str, rank: int) -> int | None:
    """The pid of the launched process of ``rank`` whose environment holds ``marker``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"FAST3D_TEST_MARK={marker}".encode() in environ and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


def _lines(path: Path) -> int:
    return len(path.read_bytes().splitlines()) if path.is_file() else 0


@pytest.mark.usefixtures("one_thread")
def test_rank_killed_midway_then_rerun_equals_one_process(capsys, inputs, data_config, tmp_path) -> None:
    single, double = tmp_path / "single", tmp_path / "double"
    slow = ("--limit", "6", "--batch-size", "1", "--max-new-tokens", "16")
    code, _, stderr = fast3d(capsys, *eval_args(inputs, data_config, single), *slow)
    assert code == 0, stderr

    marker = uuid.uuid4().hex
    args = [*eval_args(inputs, data_config, double), *slow]
    proc = subprocess.Popen(
        launch_command(2, args),
        env=launch_env(FAST3D_TEST_MARK=marker),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    shard = double / "predictions" / "scanrefer.rank1.jsonl"
    deadline = time.time() + 300
    killed = False
    while time.time() < deadline and proc.poll() is None and not killed:
        pid = _rank_pid(marker, 1)
        if pid is not None and _lines(shard) > 0:
            os.kill(pid, signal.SIGKILL)
            killed = True
        time.sleep(0.01)
    proc.wait(timeout=120)
    assert killed and proc.returncode != 0
    written = sum(_lines(p) for p in (double / "predictions").glob("*.jsonl"))
    assert 0 < written < 12 and not (double / "metrics.json").exists(), "the kill should land midway"

    result = launch(2, args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_evaluation(single, double)
    resumed = json.loads((double / "metrics.json").read_text())["speed"]["generated_samples"]
    assert resumed == 12 - written  # only what was missing; each sample exactly once (same files)


@pytest.mark.usefixtures("one_thread")
def test_more_processes_than_samples(capsys, inputs, data_config, tmp_path) -> None:
    single, double = tmp_path / "single", tmp_path / "double"
    few = ("--tasks", "scanrefer", "--limit", "1")
    code, _, stderr = fast3d(capsys, *eval_args(inputs, data_config, single), *few)
    assert code == 0, stderr
    result = launch(2, [*eval_args(inputs, data_config, double), *few])
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == [str(double / "metrics.json")]
    assert_same_evaluation(single, double)
