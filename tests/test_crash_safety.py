"""Crash safety of ``predict`` and ``eval``: SIGKILL midway, rerun, compare with an uninterrupted run.

(``extract`` and ``train-gap`` have the same test in test_cli_extract.py and test_gap_train.py.) The child is
killed as soon as its first chunk (predict) or prediction batch (eval) is on disk, and the test checks that
the kill landed midway: something, but not everything, was written.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from fast3d_cli.stores import open_store

from .conftest import fast3d


@pytest.fixture()
def one_thread() -> Iterator[None]:
    """The in-process reference runs the same kernels as the OMP_NUM_THREADS=1 child."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def build_random_gap(model_dir: Path, data_config, out: Path) -> Path:
    """An untrained sample-size GAP network over the tiny model's tokenizer (predict needs no training)."""
    from fast3d_cli.data import SceneBank
    from fast3d_cli.gap import GAPModel, save_gap
    from fast3d_cli.gap.sample import load_sample_tokenizer, sample_gap_config

    tokenizer = load_sample_tokenizer(model_dir)
    d3, d2 = SceneBank(data_config, "train").feature_dims
    torch.manual_seed(0)
    model = GAPModel(sample_gap_config(tokenizer, d3, d2)).eval()
    return save_gap(model, tokenizer, out)


@pytest.fixture(scope="module")
def random_gap(model_dir: Path, data_config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_random_gap(model_dir, data_config, tmp_path_factory.mktemp("random_gap") / "gap")


def kill_when(cmd: list[str], cwd: Path, ready: Callable[[], bool], timeout: float = 120.0) -> None:
    """Start ``cmd`` in ``cwd`` and SIGKILL it as soon as ``ready()`` holds."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and proc.poll() is None and not ready():
            time.sleep(0.005)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path, except zarr's temporary ``*.partial`` files (a kill can
    leave one; no reader looks at them)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith(".partial")
    }


def test_predict_sigkill_midway_then_rerun_is_bit_identical(
    capsys, monkeypatch, one_thread, random_gap: Path, data_config, tmp_path: Path
) -> None:
    # the same relative -o in two directories: the recorded command lines, hence the stores, are identical
    args = ["predict", str(random_gap), "--data-root", str(data_config.root), "-o", "pred.zarr"]
    args += ["--tasks", "scanqa,scanrefer,sqa3d", "--split", "train"]
    args += ["--chunk-size", "2", "--batch-size", "2"]
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    reference.mkdir()
    killed.mkdir()
    monkeypatch.chdir(reference)
    code, _, stderr = fast3d(capsys, *args)
    assert code == 0, stderr

    store = killed / "pred.zarr"
    kill_when(
        [sys.executable, "-m", "fast3d_cli", *args],
        killed,
        lambda: any(store.glob("*/*/sample_index/c/*")),
    )
    partial = open_store(store)
    written = sum(len(g.completed_chunks()) for g in partial.groups())
    total = sum(g.n_chunks for g in partial.groups())
    assert 0 < written < total, f"the kill should land midway ({written}/{total} chunks)"
    missing = sum(g.n_samples - g.summary()["written_samples"] for g in partial.groups())

    monkeypatch.chdir(killed)
    code, stdout, stderr = fast3d(capsys, *args, "--json")
    assert code == 0, stderr
    assert json.loads(stdout)["computed"] == missing
    left, right = tree(reference / "pred.zarr"), tree(store)
    assert left.keys() == right.keys()
    assert [k for k in left if left[k] != right[k]] == []


def eval_lines(out: Path) -> int:
    return sum(len(p.read_bytes().splitlines()) for p in (out / "predictions").glob("*.jsonl"))


def test_eval_sigkill_midway_then_rerun_equals_uninterrupted(
    capsys, one_thread, model_dir: Path, data_config, tmp_path: Path
) -> None:
    tasks = ("scanrefer", "multi3dref")  # grounding metrics only: no Java caption scorer to wait for
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    for limit, max_new in ((8, 8), (12, 16), (12, 48)):  # a slower child if the kill came too late
        common = ["eval", "--model", str(model_dir), "--data-root", str(data_config.root)]
        common += ["--tasks", ",".join(tasks), "--limit", str(limit), "--num-beams", "1"]
        common += ["--max-new-tokens", str(max_new), "--batch-size", "2"]
        total = limit * len(tasks)
        shutil.rmtree(killed, ignore_errors=True)
        kill_when(
            [sys.executable, "-m", "fast3d_cli", *common, "-o", str(killed)],
            tmp_path,
            lambda: (killed / "predictions").is_dir() and eval_lines(killed) > 0,
        )
        if 0 < eval_lines(killed) < total and not (killed / "metrics.json").exists():
            break
    else:
        pytest.fail("the eval child was never killed midway")

    code, _, stderr = fast3d(capsys, *common, "-o", str(reference))
    assert code == 0, stderr
    code, _, stderr = fast3d(capsys, *common, "-o", str(killed))
    assert code == 0, stderr

    expected, resumed = (json.loads((d / "metrics.json").read_text()) for d in (reference, killed))
    assert resumed["speed"]["generated_samples"] < total  # the rerun generated only what was missing
    expected.pop("speed")
    resumed.pop("speed")
    assert resumed == expected
    for task in tasks:
        lines = (killed / "predictions" / f"{task}.jsonl").read_text().splitlines()
        indices = [json.loads(line)["index"] for line in lines]
        assert sorted(indices) == list(range(limit)), task  # each sample exactly once
        reference_lines = (reference / "predictions" / f"{task}.jsonl").read_text().splitlines()
        assert sorted(lines) == sorted(reference_lines), task
