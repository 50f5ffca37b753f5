"""``fast3d eval`` end to end: stdout/stderr contract, resume, user errors (exit 2, one line)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import fast3d


def test_help_is_fast_and_lists_the_stages() -> None:
    code = "import sys, fast3d_cli.cli.app; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0  # no torch import for --help
    result = subprocess.run([sys.executable, "-m", "fast3d_cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert all(stage in result.stdout for stage in ("extract", "eval", "info", "sample"))
    assert result.stdout.index("extract") < result.stdout.index("eval")  # pipeline order


def test_eval_writes_predictions_and_metrics_and_resumes(
    capsys, model_dir: Path, data_config, tmp_path
) -> None:
    out = tmp_path / "run"
    common = [
        "eval",
        "--model",
        str(model_dir),
        "--data-root",
        str(data_config.root),
        "-o",
        str(out),
        "--limit",
        "3",
        "--num-beams",
        "2",
        "--max-new-tokens",
        "6",
        "--batch-size",
        "2",
    ]
    code, stdout, stderr = fast3d(capsys, *common)
    assert code == 0, stderr
    assert stdout == f"{out / 'metrics.json'}\n"  # stdout carries only the path; the table goes to stderr
    assert "scanrefer" in stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["metrics"]) == {"scanrefer", "multi3dref", "scan2cap", "scanqa", "sqa3d"}
    assert "[scanrefer] Acc@0.50" in metrics["metrics"]["scanrefer"]
    assert "[scan2cap] CIDEr@0.50" in metrics["metrics"]["scan2cap"]
    assert set(metrics["headline"]) == set(metrics["metrics"])  # the paper's five headline numbers
    assert metrics["headline"]["scanrefer"] == metrics["metrics"]["scanrefer"]["[scanrefer] Acc@0.50"]
    assert metrics["speed"]["generated_samples"] == 15
    records = (out / "predictions" / "scanqa.jsonl").read_text().splitlines()
    assert [json.loads(r)["index"] for r in records] == [0, 1, 2]
    fields = {"index", "scene_id", "gt_id", "pred_id", "qid", "prompt", "pred", "ref_captions", "type_info"}
    assert fields <= set(json.loads(records[0]))

    # a crash mid-write leaves a torn line: the rerun drops it and regenerates only what is missing
    (out / "predictions" / "scanqa.jsonl").write_text(records[0] + "\n" + records[1][:10])
    code, stdout, _ = fast3d(capsys, *common, "--json")
    assert code == 0
    payload = json.loads(stdout)
    assert payload["speed"]["generated_samples"] == 2
    assert payload["metrics"] == metrics["metrics"]
    assert (out / "predictions" / "scanqa.jsonl").read_text().splitlines() == records


def test_changed_settings_are_refused_without_overwrite(
    capsys, model_dir: Path, data_config, tmp_path
) -> None:
    out = tmp_path / "run"
    common = [
        "eval",
        "--model",
        str(model_dir),
        "--data-root",
        str(data_config.root),
        "-o",
        str(out),
        "--tasks",
        "scanrefer",
        "--limit",
        "1",
        "--num-beams",
        "1",
        "--max-new-tokens",
        "4",
    ]
    assert fast3d(capsys, *common)[0] == 0
    code, stdout, stderr = fast3d(capsys, *common[:-1], "5")
    assert code == 2 and stdout == ""
    assert "another settings.generation.max_new_tokens (4 recorded, 5 now)" in stderr
    code, _, _ = fast3d(capsys, *common, "--json")
    assert code == 0  # same settings: reused
    assert fast3d(capsys, *common[:-1], "5", "--overwrite")[0] == 0
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("keep me")
    code, _, stderr = fast3d(capsys, *common[:6], str(tmp_path / "plain"), *common[7:])
    assert code == 2 and "not an evaluation directory" in stderr
    assert (tmp_path / "plain" / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tasks", "scanqa,nope"], "unknown task 'nope'; valid tasks: scanrefer, multi3dref, scan2cap"),
        (["--split", "test"], "unknown split 'test'"),
        (["--data-root", "/nonexistent/anno"], "data file not found: /nonexistent/anno/"),
        (["--model", "/nonexistent/model"], "model path not found: /nonexistent/model"),
        (["--checkpoint", "x.pth"], "--checkpoint needs --base-llm"),
        (["--checkpoint", "/dev/zero", "--base-llm", "/"], "/dev/zero is a character device, not a"),
        (["--checkpoint", "/", "--base-llm", "/"], "--checkpoint / is a folder, not a checkpoint file"),
        (["--model", "/dev/null"], "--model /dev/null is a character device, not a folder"),
        (["--scan2cap-sos-eos", "bogus"], "unknown scan2cap_sos_eos 'bogus'"),
        (["--dtype", "float8"], "unknown --dtype 'float8'"),
    ],
)
def test_user_errors_exit_2_with_one_line(
    capsys, args: list[str], message: str, model_dir: Path, tmp_path
) -> None:
    extra = [] if "--model" in args or "--checkpoint" in args else ["--model", str(model_dir)]
    code, stdout, stderr = fast3d(capsys, "eval", "-o", str(tmp_path / "o"), *extra, *args)
    assert code == 2, stderr
    assert message in stderr and "Traceback" not in stderr
    assert stderr.strip().count("\n") == 0 and stdout == ""


def test_bad_option_values_exit_2(capsys) -> None:
    code, _, stderr = fast3d(capsys, "eval", "--batch-size", "0")
    assert code == 2 and "batch-size" in stderr
