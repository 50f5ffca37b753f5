"""``fast3d predict``: a complete "prediction" store with provenance, resumable by chunk, 2 processes;
official checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fast3d_cli.stores import open_store
from tests.conftest import one_error_line
from tests.test_gap_train import build_gap_inputs, build_trained_gap, fast3d


@pytest.fixture(scope="session")
def gap_inputs(tiny_model, data_config, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_gap_inputs(tiny_model, data_config, tmp_path_factory)


@pytest.fixture(scope="session")
def trained_gap(gap_inputs, data_config) -> Path:
    return build_trained_gap(gap_inputs, data_config)


def predict_args(gap: Path, data_config, out: Path, *extra: str) -> list[str]:
    args = ["predict", str(gap), "--data-root", str(data_config.root), "-o", str(out)]
    return [
        *args,
        "--tasks",
        "scanqa,scanrefer",
        "--split",
        "val",
        "--chunk-size",
        "5",
        "--batch-size",
        "4",
        *extra,
    ]


def direct_logits(gap: Path, data_config, task: str, split: str) -> np.ndarray:
    from fast3d_cli.data import SceneBank, load_samples
    from fast3d_cli.gap import load_gap
    from fast3d_cli.gap.inputs import build_batch

    model, tokenizer = load_gap(gap)
    samples = load_samples(data_config, task, split)
    rows = []
    with torch.no_grad():
        for start in range(0, len(samples), 4):
            batch = build_batch(
                samples[start : start + 4], SceneBank(data_config, split), tokenizer, model.config
            )
            rows.append(model(**batch.model_inputs()).numpy())
    return np.concatenate(rows)


def test_predict_store_schema_and_provenance(capsys, gap_inputs, trained_gap, data_config, tmp_path) -> None:
    out = tmp_path / "pred.zarr"
    code, stdout, stderr = fast3d(capsys, *predict_args(trained_gap, data_config, out))
    assert code == 0, stderr
    assert stdout == f"{out}\n"
    store = open_store(out, kind="prediction")
    source = open_store(gap_inputs["store"])
    attrs = store.attrs
    assert attrs["model"] == source.attrs["model"] and attrs["data"] == source.attrs["data"]
    assert attrs["n_objects"] == 100 and attrs["n_layers"] == source.attrs["n_layers"]
    assert attrs["gap"]["format"] == "fast3d" and attrs["gap"]["path"] == str(trained_gap.resolve())
    assert attrs["aggregation"]["gap"] == attrs["gap"]["fingerprint"]
    assert attrs["training"]["stores"][0]["path"] == str(gap_inputs["store"].resolve())
    assert attrs["training"]["complete"] is True and isinstance(attrs["command"], str)
    assert [g.path for g in store.groups()] == ["scanqa/val", "scanrefer/val"]
    for group in store.groups():
        assert group.is_complete()
        assert group.attrs["annotation"] == source.group(group.task, "val").attrs["annotation"]
        assert list(group.read("sample_index")) == list(range(group.n_samples))
        scores = group.read("object_scores")
        assert np.array_equal(scores, group.read("prompt_scores"))
        np.testing.assert_allclose(
            scores, direct_logits(trained_gap, data_config, group.task, "val"), atol=1e-5
        )


def test_predict_resumes_missing_chunks_and_refuses_other_gap(
    capsys, trained_gap, data_config, tmp_path
) -> None:
    from fast3d_cli.gap import load_gap, save_gap

    out = tmp_path / "pred.zarr"
    assert fast3d(capsys, *predict_args(trained_gap, data_config, out))[0] == 0
    group = open_store(out).group("scanqa", "val")
    before = group.read("object_scores")
    # forget chunk 1 (as if the process had been killed before writing it)
    marker = open_store(out, read_only=False).group("scanqa", "val").array("sample_index", writable=True)
    start, stop = group.chunk_bounds(1)
    marker[start:stop] = -1
    code, stdout, _ = fast3d(capsys, *predict_args(trained_gap, data_config, out, "--json"))
    assert code == 0 and json.loads(stdout)["computed"] == stop - start
    assert np.array_equal(open_store(out).group("scanqa", "val").read("object_scores"), before)
    code, stdout, _ = fast3d(capsys, *predict_args(trained_gap, data_config, out, "--json"))
    assert code == 0 and json.loads(stdout)["computed"] == 0

    model, tokenizer = load_gap(trained_gap)
    with torch.no_grad():
        model.out_head_attn[4].bias.add_(1.0)
    other = save_gap(model, tokenizer, tmp_path / "other")
    code, stdout, stderr = fast3d(capsys, *predict_args(other, data_config, out))
    assert code == 2 and "made with another GAP network" in stderr and stdout == ""
    assert fast3d(capsys, *predict_args(other, data_config, out, "--overwrite"))[0] == 0
    np.testing.assert_allclose(
        open_store(out).group("scanqa", "val").read("object_scores"), before + 1.0, atol=1e-5
    )


def test_official_checkpoint_predicts_the_same(capsys, trained_gap, data_config, tmp_path) -> None:
    from fast3d_cli.gap import load_gap

    model, tokenizer = load_gap(trained_gap)
    roberta = tmp_path / "roberta"  # a local RoBERTa folder: its config.json and tokenizer files
    model.config.roberta_config().save_pretrained(str(roberta))
    tokenizer.save_pretrained(str(roberta))
    state = model.state_dict()
    torch.save(
        {"step": 7, "optimizer_state_dict": {}, "model_state_dict": state}, tmp_path / "checkpoint_best.pth"
    )
    ours, official = tmp_path / "ours.zarr", tmp_path / "official.zarr"
    assert fast3d(capsys, *predict_args(trained_gap, data_config, ours))[0] == 0
    extra = ("--roberta", str(roberta), "--gap-config", str(trained_gap / "config.json"))
    code, _, stderr = fast3d(
        capsys, *predict_args(tmp_path / "checkpoint_best.pth", data_config, official, *extra)
    )
    assert code == 0, stderr
    attrs = open_store(official).attrs
    assert attrs["gap"]["format"] == "official" and attrs["model"] is None
    for task in ("scanqa", "scanrefer"):
        left = open_store(ours).group(task, "val").read("object_scores")
        assert np.array_equal(left, open_store(official).group(task, "val").read("object_scores"))

    bad = dict(state)
    del bad["out_head_attn.4.bias"]
    bad["mm_encoder.layers.0.self_attn.pairwise_loc_fc.weight"] = torch.zeros(2, 5)
    torch.save({"model_state_dict": bad}, tmp_path / "bad.pth")
    code, stdout, stderr = fast3d(
        capsys, *predict_args(tmp_path / "bad.pth", data_config, tmp_path / "b.zarr", *extra)
    )
    assert code == 2 and stdout == "" and one_error_line(stderr)
    assert "1 missing key: out_head_attn.4.bias" in stderr
    assert "1 unexpected key: mm_encoder.layers.0.self_attn.pairwise_loc_fc.weight" in stderr
    assert not (tmp_path / "b.zarr").exists()
    code, _, stderr = fast3d(capsys, *predict_args(tmp_path / "bad.pth", data_config, tmp_path / "b.zarr"))
    assert code == 2 and "needs --roberta DIR" in stderr


def test_two_processes_give_the_same_store(capsys, trained_gap, data_config, tmp_path) -> None:
    import os
    import subprocess
    import sys

    single, double = tmp_path / "single.zarr", tmp_path / "double.zarr"
    assert fast3d(capsys, *predict_args(trained_gap, data_config, single))[0] == 0
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "fast3d_cli"]
    result = subprocess.run(
        [*launch, *predict_args(trained_gap, data_config, double)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines() == [str(double)]  # printed once, by rank 0
    for task in ("scanqa", "scanrefer"):
        left, right = (open_store(p).group(task, "val") for p in (single, double))
        assert right.is_complete()
        assert np.array_equal(left.read("object_scores"), right.read("object_scores"))


def test_limit_writes_the_first_samples(capsys, trained_gap, data_config, tmp_path) -> None:
    out = tmp_path / "small.zarr"
    code, _, stderr = fast3d(capsys, *predict_args(trained_gap, data_config, out, "--limit", "5"))
    assert code == 0, stderr
    store = open_store(out)
    for group in store.groups():
        assert group.n_samples == 5 and group.is_complete()
        assert group.read("sample_index").tolist() == [0, 1, 2, 3, 4]
