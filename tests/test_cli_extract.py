"""``fast3d extract`` / ``fast3d info``: resumable after SIGKILL, multi-process, refusals (exit 2)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fast3d_cli.stores import open_store

from .conftest import fast3d, one_error_line


def store_arrays(path: Path) -> dict[str, np.ndarray]:
    store = open_store(path)
    return {f"{g.path}/{n}": g.read(n) for g in store.groups() for n in g.summary()["arrays"]}


def assert_same_store(a: Path, b: Path) -> None:
    left, right = store_arrays(a), store_arrays(b)
    assert left.keys() == right.keys()
    for key in left:
        assert np.array_equal(left[key], right[key], equal_nan=True), key


def base_args(model_dir: Path, data_config, out: Path) -> list[str]:
    return ["extract", "--model", str(model_dir), "--data-root", str(data_config.root), "-o", str(out)]


def test_extract_info_and_rerun(capsys, model_dir, data_config, tmp_path) -> None:
    out = tmp_path / "maps.zarr"
    args = [
        *base_args(model_dir, data_config, out),
        "--tasks",
        "scanqa,scanrefer",
        "--split",
        "val",
        "--chunk-size",
        "4",
        "--batch-size",
        "3",
        "--keep-layers",
    ]
    code, stdout, stderr = fast3d(capsys, *args)
    assert code == 0, stderr
    assert stdout == f"{out}\n"
    code, stdout, _ = fast3d(capsys, "info", str(out), "--json")
    info = json.loads(stdout)
    assert info["kind"] == "attention" and info["n_objects"] == 100 and info["n_visual"] == 300
    assert info["aggregation"]["seed"] == 42 and "extract" in info["command"]
    assert {(g["task"], g["split"], g["complete"]) for g in info["groups"]} == {
        ("scanqa", "val", True),
        ("scanrefer", "val", True),
    }
    group = open_store(out).group("scanqa", "val")
    assert list(group.read("sample_index")) == list(range(group.n_samples))
    assert group.read("layer_scores").shape == (group.n_samples, 2, 100)
    code, stdout, _ = fast3d(capsys, *args, "--json")
    assert code == 0 and json.loads(stdout)["computed"] == 0  # complete store: nothing to do
    code, stdout, stderr = fast3d(capsys, "info", str(out))
    assert code == 0 and stdout == f"{out}\n" and "scanqa/val" in stderr


def test_sigkill_midway_then_rerun_equals_uninterrupted(capsys, model_dir, data_config, tmp_path) -> None:
    common = ["--tasks", "scanqa,sqa3d", "--split", "train", "--chunk-size", "2", "--batch-size", "2"]
    reference = tmp_path / "reference.zarr"
    assert fast3d(capsys, *base_args(model_dir, data_config, reference), *common)[0] == 0

    out = tmp_path / "killed.zarr"
    cmd = [sys.executable, "-m", "fast3d_cli", *base_args(model_dir, data_config, out), *common]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        time.sleep(0.02)
        try:
            if open_store(out).group("scanqa", "train").completed_chunks():
                break
        except Exception:  # the store may not exist yet
            continue
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = open_store(out)
    written = sum(len(g.completed_chunks()) for g in partial.groups())
    total = sum(g.n_chunks for g in partial.groups())
    assert 0 < written < total, "the kill should land midway"
    missing = sum(g.n_samples - g.summary()["written_samples"] for g in partial.groups())

    code, stdout, _ = fast3d(capsys, *base_args(model_dir, data_config, out), *common, "--json")
    assert code == 0
    assert json.loads(stdout)["computed"] == missing
    assert_same_store(reference, out)


def test_two_processes_give_the_same_store(capsys, model_dir, data_config, tmp_path) -> None:
    common = ["--tasks", "scanqa", "--split", "val", "--chunk-size", "3", "--batch-size", "2"]
    single = tmp_path / "single.zarr"
    assert fast3d(capsys, *base_args(model_dir, data_config, single), *common)[0] == 0
    double = tmp_path / "double.zarr"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "fast3d_cli",
    ]
    result = subprocess.run(
        [*launch, *base_args(model_dir, data_config, double), *common],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == str(double)  # printed once, by rank 0
    assert_same_store(single, double)


def test_refusals_exit_2_and_keep_what_was_written(capsys, model_dir, data_config, tmp_path) -> None:
    out = tmp_path / "maps.zarr"
    args = [
        *base_args(model_dir, data_config, out),
        "--tasks",
        "scanqa",
        "--split",
        "val",
        "--chunk-size",
        "5",
    ]
    assert fast3d(capsys, *args)[0] == 0
    before = store_arrays(out)
    code, stdout, stderr = fast3d(capsys, *args, "--seed", "7")
    assert code == 2 and "made with another aggregation.seed (42 recorded, 7 now)" in stderr and stdout == ""
    assert one_error_line(stderr)
    after = store_arrays(out)
    assert all(np.array_equal(before[k], after[k], equal_nan=True) for k in before)
    assert fast3d(capsys, *args, "--seed", "7", "--overwrite")[0] == 0
    assert open_store(out).attrs["aggregation"]["seed"] == 7

    plain = tmp_path / "results"
    plain.mkdir()
    (plain / "keep.txt").write_text("precious")
    code, _, stderr = fast3d(
        capsys, *base_args(model_dir, data_config, plain), "--tasks", "scanqa", "--overwrite"
    )
    assert code == 2 and "exists and is not a fast3d store" in stderr
    assert (plain / "keep.txt").read_text() == "precious"
    code, _, stderr = fast3d(capsys, *args[:-4], "--tasks", "bogus")
    assert code == 2 and "unknown task 'bogus'" in stderr
    code, _, stderr = fast3d(capsys, *args[:-2], "--split", "test")
    assert code == 2 and "unknown split 'test'" in stderr
    code, _, stderr = fast3d(capsys, "info", str(plain))
    assert code == 2 and "is not a fast3d store" in stderr


def test_non_finite_maps_stop_with_the_sample_named(capsys, model_dir, data_config, tmp_path) -> None:
    import shutil

    root = tmp_path / "anno"
    shutil.copytree(data_config.root, root)
    feats = torch.load(root / "scannet_mask3d_uni3d_feats.pt")
    first = json.loads((root / "scanqa_val.json").read_text())[0]["scene_id"]
    feats[f"{first}_00"] = torch.full_like(feats[f"{first}_00"], float("nan"))
    torch.save(feats, root / "scannet_mask3d_uni3d_feats.pt")
    out = tmp_path / "maps.zarr"
    args = [
        "extract",
        "--model",
        str(model_dir),
        "--data-root",
        str(root),
        "-o",
        str(out),
        "--tasks",
        "scanqa",
        "--split",
        "val",
    ]
    code, stdout, stderr = fast3d(capsys, *args)
    assert code == 2 and "non-finite object_scores for scanqa/val sample 0" in stderr and stdout == ""


def test_a_second_writer_is_told_another_process_is_writing(capsys, model_dir, data_config, tmp_path) -> None:
    """Two extracts started together on one new store: the loser said "already exists"."""
    from fast3d_cli.stores import writer_lock

    out = tmp_path / "new.zarr"
    args = [*base_args(model_dir, data_config, out), "--tasks", "scanqa", "--split", "val", "--limit", "4"]
    with writer_lock(out):  # the first writer has just created the store directory and holds it
        code, stdout, stderr = fast3d(capsys, *args)
        assert code == 2 and stdout == "" and one_error_line(stderr), stderr
        assert f"another process is writing {out}" in stderr and "already exists" not in stderr
    code, stdout, stderr = fast3d(capsys, *args)  # once it is done, the same command completes the store
    assert code == 0 and stdout == f"{out}\n", stderr
    assert open_store(out).group("scanqa", "val").is_complete()
