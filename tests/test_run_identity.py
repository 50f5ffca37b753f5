"""A resumed evaluation must resolve to what its run.json recorded: the alpha `--alpha auto` found, the maps
store (location and the rows read), the GAP network, the dtype. Otherwise two settings would land in one
predictions file; it is refused, naming the field, unless --overwrite."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from fast3d_cli.stores import open_store
from tests.test_crash_safety import build_random_gap
from tests.test_gap_train import build_gap_inputs, build_trained_gap

from .conftest import fast3d, run

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def inputs(tiny_model, data_config, tmp_path_factory) -> dict[str, Path]:
    """The tiny model, a trained GAP network and its prediction store (shared with test_pruning_eval)."""
    found = build_gap_inputs(tiny_model, data_config, tmp_path_factory)
    gap = build_trained_gap(found, data_config)
    pred = found["root"] / "pruning-pred.zarr"
    if not pred.exists():
        args = ["predict", str(gap), "--data-root", str(data_config.root), "-o", str(pred)]
        assert run([*args, "--tasks", "scanqa,scanrefer", "--split", "val"]) == 0
    return {**found, "gap": gap, "pred": pred}


def eval_args(inputs, data_config, out: Path, *extra: str) -> list[str]:
    return [
        "eval", "--model", str(inputs["model"]), "--data-root", str(data_config.root), "-o", str(out),
        "--tasks", "scanrefer", "--limit", "6", "--num-beams", "1", "--max-new-tokens", "2",
        "--batch-size", "3", "--baseline", str(out.parent / "dense"), *extra,
    ]  # fmt: skip


def interrupt(out: Path, keep: int = 3) -> None:
    """What a crash midway leaves: the first ``keep`` records, no metrics.json."""
    log = out / "predictions" / "scanrefer.jsonl"
    log.write_text("".join(log.read_text().splitlines(keepends=True)[:keep]))
    (out / "metrics.json").unlink()


def refused(capsys, args: list[str], *needles: str) -> str:
    code, stdout, stderr = fast3d(capsys, *args)
    errors = [line for line in stderr.splitlines() if line.startswith("fast3d: error:")]
    assert code == 2 and stdout == "" and errors == stderr.splitlines()[-1:], stderr
    assert all(needle in stderr for needle in needles), stderr
    return stderr


def test_a_resume_at_another_alpha_is_refused(capsys, inputs, data_config, tmp_path: Path) -> None:
    """The issue's case: search-alpha rewrote the store's alpha between an interrupted eval and its rerun."""
    pred = shutil.copytree(inputs["pred"], tmp_path / "pred.zarr")
    assert fast3d(capsys, "search-alpha", str(pred), "--target", "80")[0] == 0
    first = open_store(pred).attrs["sap"]["alpha"]
    out = tmp_path / "sap"
    args = eval_args(inputs, data_config, out, "--method", "gap+sap", "--maps", str(pred), "--alpha", "auto")
    code, _, stderr = fast3d(capsys, *args)
    assert code == 0, stderr
    recorded = json.loads((out / "run.json").read_text())["resolved"]
    assert recorded["maps"] == str(pred.resolve()) and recorded["tasks"]["scanrefer"]["alpha"] == first

    interrupt(out)
    assert fast3d(capsys, "search-alpha", str(pred), "--target", "60")[0] == 0
    second = open_store(pred).attrs["sap"]["alpha"]
    assert second != first
    refused(capsys, args, f"another alpha ({first!r} recorded, {second!r} now) for scanrefer", "--overwrite")
    assert len((out / "predictions" / "scanrefer.jsonl").read_text().splitlines()) == 3  # nothing written

    code, stdout, stderr = fast3d(capsys, *args, "--overwrite", "--json")
    assert code == 0, stderr
    assert json.loads(stdout)["pruning"]["alpha"] == second
    assert len((out / "predictions" / "scanrefer.jsonl").read_text().splitlines()) == 6
    assert json.loads((out / "run.json").read_text())["resolved"]["tasks"]["scanrefer"]["alpha"] == second


def test_another_maps_store_or_other_rows_are_refused(
    capsys,
    monkeypatch,
    inputs,
    data_config,
    tmp_path: Path,
) -> None:
    pred = shutil.copytree(inputs["pred"], tmp_path / "a" / "pred.zarr")
    moved = shutil.copytree(pred, tmp_path / "b" / "pred.zarr")  # the same rows in another store
    out = tmp_path / "gap"
    args = eval_args(inputs, data_config, out, "--method", "gap", "--keep", "4", "--maps", "pred.zarr")
    monkeypatch.chdir(tmp_path / "a")
    assert fast3d(capsys, *args)[0] == 0
    interrupt(out)
    monkeypatch.chdir(tmp_path / "b")  # the same command line, another directory: another store
    refused(capsys, args, "another maps (", str(moved.resolve()))
    monkeypatch.chdir(tmp_path / "a")

    group = open_store(pred, read_only=False).group("scanrefer", "val")  # the rows change in place
    start, stop = group.chunk_bounds(0)
    rows = {n: group.read(n)[start:stop][:, ::-1].copy() for n in ("object_scores", "prompt_scores")}
    group.write_chunk(0, np.arange(start, stop), rows)
    refused(capsys, args, "another maps_rows (", "for scanrefer")

    code, _, stderr = fast3d(capsys, *args, "--overwrite")
    assert code == 0, stderr


def test_another_gap_network_or_dtype_is_refused(
    capsys,
    inputs,
    model_dir,
    data_config,
    tmp_path: Path,
) -> None:
    gap = shutil.copytree(inputs["gap"], tmp_path / "gap")
    out = tmp_path / "online"
    args = eval_args(inputs, data_config, out, "--method", "gap", "--keep", "4", "--gap", str(gap))
    assert fast3d(capsys, *args)[0] == 0
    interrupt(out)
    shutil.rmtree(gap)
    build_random_gap(model_dir, data_config, gap)  # other weights at the same path
    refused(capsys, [*args, "--force"], "another gap (")

    dense = tmp_path / "dense-run"
    args = eval_args(inputs, data_config, dense)
    assert fast3d(capsys, *args)[0] == 0
    interrupt(dense)
    refused(capsys, [*args, "--dtype", "bfloat16"], "another dtype ('float32' recorded, 'bfloat16' now)")
    code, _, stderr = fast3d(capsys, *args)  # the same settings resume
    assert code == 0, stderr


def test_run_json_of_earlier_versions(capsys, inputs, data_config, tmp_path: Path) -> None:
    """Without a recorded resolution: a dense run resumes; a run that read a maps store cannot be checked."""
    dense = tmp_path / "dense-run"
    args = eval_args(inputs, data_config, dense)
    assert fast3d(capsys, *args)[0] == 0
    interrupt(dense)
    record = json.loads((dense / "run.json").read_text())
    record.pop("resolved")
    (dense / "run.json").write_text(json.dumps(record))
    code, _, stderr = fast3d(capsys, *args)
    assert code == 0, stderr
    assert "resolved" in json.loads((dense / "run.json").read_text())

    out = tmp_path / "sap"
    sap = ["--method", "gap+sap", "--maps", str(inputs["pred"]), "--alpha", "0.3"]
    sap = eval_args(inputs, data_config, out, *sap)
    assert fast3d(capsys, *sap)[0] == 0
    record = json.loads((out / "run.json").read_text())
    record.pop("resolved")
    (out / "run.json").write_text(json.dumps(record))
    refused(capsys, sap, "did not record the maps store")


def test_a_different_setting_is_named(capsys, inputs, data_config, tmp_path: Path) -> None:
    out = tmp_path / "dense-run"
    args = eval_args(inputs, data_config, out)
    assert fast3d(capsys, *args)[0] == 0
    beams = [*args, "--num-beams", "2"]
    refused(capsys, beams, "another settings.generation.num_beams (1 recorded, 2 now)")


def test_a_finished_run_is_not_scored_again(capsys, inputs, data_config, tmp_path, monkeypatch) -> None:
    """A rerun that generates nothing returns the saved metrics (scoring starts METEOR's JVM, and every pruned
    run re-reads its dense baseline); a run whose predictions changed is scored again."""
    import fast3d_cli.evaluation.runner as runner

    out = tmp_path / "dense"
    args = eval_args(inputs, data_config, out)
    assert fast3d(capsys, *args)[0] == 0
    first = json.loads((out / "metrics.json").read_text())
    calls = []
    original = runner.score
    monkeypatch.setattr(runner, "score", lambda *a, **k: calls.append(1) or original(*a, **k))
    code, _, _ = fast3d(capsys, *args)
    assert code == 0 and calls == [] and json.loads((out / "metrics.json").read_text()) == first
    log = out / "predictions" / "scanrefer.jsonl"
    log.write_text(log.read_text().replace('"pred": "', '"pred": "x', 1))  # an edited prediction is rescored
    assert fast3d(capsys, *args)[0] == 0 and calls == [1]
    calls.clear()
    interrupt(out)  # a crash before scoring: no metrics.json, so the rerun generates and scores
    assert fast3d(capsys, *args)[0] == 0 and calls == [1]
    assert json.loads((out / "metrics.json").read_text())["metrics"] == first["metrics"]
