"""Issue 17: a negligible dense score has no ratio anywhere (eval, demo, report, bootstrap); one writer per
evaluation directory; a shared dense baseline is checked before anything is generated; the demo table's
notes are printed once."""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fast3d_cli.cli.tables import print_comparison_table
from fast3d_cli.demo import table_row
from fast3d_cli.evaluation.runner import add_score_ratio
from fast3d_cli.metrics import (
    NEGLIGIBLE_SCORE,
    MetricsError,
    paired_bootstrap_score_ratio,
    score_ratio,
    score_ratio_entry,
)
from fast3d_cli.report.results import load_result

from .conftest import fast3d, one_error_line
from .test_metrics_bootstrap import units
from .test_report import write_result

pytestmark = pytest.mark.usefixtures("one_thread")

SMOOTHED = 1.319384916377945e-08  # ScanQA BLEU-4 of 8 answers without a matching 4-gram (the run)


# --------------------------------------------------------------------------- item 2: negligible dense score


def test_a_negligible_dense_score_has_no_ratio() -> None:
    entry = score_ratio_entry({"scanqa": SMOOTHED}, {"scanqa": SMOOTHED})
    assert entry["value"] is None and entry["per_task"] == {"scanqa": None}
    assert "the dense [scanqa] Bleu_4 is negligible: 1.3e-06 (x100), below 0.1" in entry["reason"]
    with pytest.raises(MetricsError, match="negligible"):
        score_ratio({"scanqa": 0.2}, {"scanqa": SMOOTHED})
    at_floor = score_ratio_entry({"scanqa": NEGLIGIBLE_SCORE / 2}, {"scanqa": NEGLIGIBLE_SCORE})
    assert at_floor["value"] == 50.0  # the floor itself is a score
    assert score_ratio_entry({"sqa3d": 0.0}, {"sqa3d": 0.6})["value"] == 0.0  # a ratio of 0 stays 0


def _bleu_item(length: int, correct4: int) -> list[int]:
    """testlen, reflen, guesses and correct n-grams (n = 1..4) of one answer."""
    guess = [max(length - n, 0) for n in range(4)]
    correct = [min(g, c) for g, c in zip(guess, [length, length, length, correct4], strict=True)]
    return [length, length, *guess, *correct]


def test_the_bootstrap_uses_the_same_rule() -> None:
    """No dense answer matches a 4-gram: every resample's dense BLEU-4 is smoothing residue, so neither
    the point value nor any resample has a ratio (it was 100% [100.00, 100.00])."""
    dense = units("scanqa", [_bleu_item(5, 0)] * 8)
    method = units("scanqa", [_bleu_item(5, 0)] * 6 + [_bleu_item(4, 0)] * 2)
    assert 0 < dense.headline() < NEGLIGIBLE_SCORE
    result = paired_bootstrap_score_ratio({"scanqa": method}, {"scanqa": dense}, n_resamples=200)
    assert result.value is None and result.ci is None and "negligible" in result.undefined
    assert result.n_undefined == 200 and result.per_task["scanqa"].ci is None


def _result(headline: dict[str, float], method: str = "random") -> dict:
    pruning = {"method": method, "layer": 0, "keep": 10, "layer_averaged_ratio": 90.0, "input_ratio": 90.0,
               "mean_kept_tokens": 30.0, "flops_ratio": 0.24}  # fmt: skip
    samples = dict.fromkeys(headline, 8)
    return {"headline": dict(headline), "samples": samples, "pruning": pruning, "speed": {}}


def test_the_demo_table_shows_no_100_beside_na_rows_and_each_note_once() -> None:
    dense = _result({"scanqa": SMOOTHED, "sqa3d": 0.5}, "none")
    rows = [table_row("dense", dense)]
    for name in ("FastV", "GAP", "random"):
        pruned = add_score_ratio(_result({"scanqa": 0.0, "sqa3d": 0.4}), dense, Path("d"))
        rows.append(table_row(name, pruned))
    assert [row["score_ratio"] for row in rows] == [None] * 4
    out = io.StringIO()
    print_comparison_table(rows, out, "demo")
    text = out.getvalue()
    dense_line = next(line for line in text.splitlines() if line.startswith("│ dense"))
    assert "100.00" not in dense_line and "n/a" in dense_line, text
    notes = [line for line in text.splitlines() if "score ratio n/a" in line]
    assert len(notes) == 1 and notes[0].startswith("dense, FastV, GAP, random: score ratio n/a"), text
    assert "is negligible" in notes[0]


def test_the_resample_note_is_printed_once_for_the_rows_it_concerns() -> None:
    """The issue's demo: "882 of 1000 resamples ..." under each of the 11 rows."""
    rows = [table_row("dense", _result({"sqa3d": 0.5}, "none"))]
    for name in ("FastV", "GAP", "random"):
        row = table_row(name, _result({"sqa3d": 0.4}))
        row.update(score_ratio=80.0, score_ratio_ci=[70.0, 90.0], score_ratio_resamples=1000)
        row["score_ratio_resamples_undefined"] = 118
        rows.append(row)
    out = io.StringIO()
    print_comparison_table(rows, out, "demo")
    notes = [line for line in out.getvalue().splitlines() if "882 of 1000 resamples" in line]
    assert len(notes) == 1 and notes[0].startswith("FastV, GAP, random: 95% CI from 882 of 1000"), notes


def test_the_report_applies_the_rule_to_results_scored_before_it(data_config, tmp_path: Path) -> None:
    dense = write_result(tmp_path / "dense", data_config, "none")
    run = write_result(tmp_path / "random", data_config, "random", keep=10)
    for path in (dense, run):
        metrics = json.loads((path / "metrics.json").read_text())
        metrics["headline"]["scanqa"] = SMOOTHED
        if path == run:  # what an earlier fast3d recorded: 100% [100.00, 100.00]
            metrics["score_ratio"]["baseline_headline"]["scanqa"] = SMOOTHED
            metrics["score_ratio"].update(value=100.0, ci95=[100.0, 100.0])
            metrics["score_ratio"]["per_task"]["scanqa"] = 100.0
        (path / "metrics.json").write_text(json.dumps(metrics))
    for result in (load_result(dense), load_result(run)):
        assert result.score_ratio is None and result.score_ratio_ci is None
        assert "the dense [scanqa] Bleu_4 is negligible" in result.score_ratio_reason
        assert result.per_task["scanqa"].score_ratio is None
        assert result.per_task["scanrefer"].score_ratio is not None


def _eval_args(model_dir: Path, data_config, out: Path, *extra: str) -> list[str]:
    return [
        "eval", "--model", str(model_dir), "--data-root", str(data_config.root), "-o", str(out),
        "--tasks", "scanqa", "--limit", "3", "--num-beams", "1", "--max-new-tokens", "2", "--batch-size", "3",
        "--bootstrap", "50", *extra,
    ]  # fmt: skip


PRUNED = ("--method", "random", "--keep", "10")


def test_eval_prints_na_against_a_smoothed_dense_bleu(capsys, model_dir: Path, data_config, tmp_path) -> None:
    """The issue's command: answers of at most 2 tokens hold no 4-gram, so both BLEU-4 are residue."""
    code, _, stderr = fast3d(capsys, *_eval_args(model_dir, data_config, tmp_path / "r", *PRUNED))
    assert code == 0, stderr
    entry = json.loads((tmp_path / "r" / "metrics.json").read_text())["score_ratio"]
    assert 0 < entry["baseline_headline"]["scanqa"] < NEGLIGIBLE_SCORE
    assert entry["value"] is None and entry["ci95"] is None and entry["per_task"] == {"scanqa": None}
    flat = " ".join(stderr.split())
    assert "score ratio n/a (undefined for scanqa (the dense [scanqa] Bleu_4 is negligible" in flat, stderr
    assert "100.00" not in flat, stderr


# --------------------------------------------------------------------------- item 5: one writer per folder


@contextlib.contextmanager
def held(path: Path) -> Iterator[int]:
    """Another process's writer lock on the evaluation directory ``path`` (flock is per open file)."""
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield fd
    finally:
        os.close(fd)


def test_a_second_eval_on_the_same_output_is_refused(capsys, model_dir: Path, data_config, tmp_path) -> None:
    out = tmp_path / "cc"
    with held(out):
        code, stdout, stderr = fast3d(capsys, *_eval_args(model_dir, data_config, out))
    assert code == 2 and stdout == "" and one_error_line(stderr), stderr
    assert f"another fast3d eval is writing {out}" in stderr
    assert list(out.iterdir()) == []  # nothing written


def test_a_prediction_log_with_duplicates_is_refused_on_resume(
    capsys, model_dir: Path, data_config, tmp_path
) -> None:
    out = tmp_path / "cc"
    args = _eval_args(model_dir, data_config, out)
    assert fast3d(capsys, *args)[0] == 0
    log = out / "predictions" / "scanqa.jsonl"
    log.write_text(log.read_text() * 2)  # what two runs started together left
    doubled = log.read_text()
    code, _, stderr = fast3d(capsys, *args)
    assert code == 2 and one_error_line(stderr), stderr
    assert f"{log} holds samples 0, 1, 2 more than once" in stderr and "--overwrite" in stderr
    assert log.read_text() == doubled
    assert fast3d(capsys, *args, "--overwrite")[0] == 0
    assert [json.loads(line)["index"] for line in log.read_text().splitlines()] == [0, 1, 2]


def test_a_pruned_run_waits_for_the_shared_baseline(
    capsys, monkeypatch, model_dir: Path, data_config, tmp_path
) -> None:
    """Two pruned runs beside one eval-none: the second to need it waits, then reuses it."""
    import fast3d_cli.evaluation.output as output

    baseline, waiting = tmp_path / "eval-none", threading.Event()
    original = output.directory_lock

    def noting_the_wait(*args, wait=None, **kwargs):
        return original(*args, wait=wait and (lambda: (wait(), waiting.set())), **kwargs)

    monkeypatch.setattr(output, "directory_lock", noting_the_wait)
    with held(baseline) as fd:
        release = threading.Thread(target=lambda: waiting.wait(60) and fcntl.flock(fd, fcntl.LOCK_UN))
        release.start()
        code, _, stderr = fast3d(capsys, *_eval_args(model_dir, data_config, tmp_path / "r", *PRUNED))
        release.join()
    assert code == 0, stderr
    assert waiting.is_set() and f"waiting for another fast3d eval writing {baseline}" in stderr
    assert (baseline / "metrics.json").is_file()


# ----------------------------------------------------------------- item 7: the baseline is checked up front


def test_a_baseline_of_other_settings_is_refused_before_generating(
    capsys, monkeypatch, model_dir: Path, data_config, tmp_path
) -> None:
    import fast3d_cli.evaluation.runner as runner

    baseline = tmp_path / "eval-none"
    assert fast3d(capsys, *_eval_args(model_dir, data_config, baseline))[0] == 0
    calls = []
    original = runner.generate_answers
    monkeypatch.setattr(runner, "generate_answers", lambda *a, **k: calls.append(1) or original(*a, **k))
    args = _eval_args(model_dir, data_config, tmp_path / "r", *PRUNED)
    args[args.index("--limit") + 1] = "2"
    code, stdout, stderr = fast3d(capsys, *args)
    assert code == 2 and stdout == "" and one_error_line(stderr), stderr
    assert f"the dense baseline {baseline} holds predictions made with another settings.limit" in stderr
    assert "--baseline" in stderr and "--output" not in stderr
    assert calls == [] and not (tmp_path / "r").exists()  # nothing generated, nothing left behind


def test_a_run_whose_baseline_fails_does_not_look_finished(
    capsys, model_dir: Path, data_config, tmp_path
) -> None:
    baseline = tmp_path / "eval-none"
    assert fast3d(capsys, *_eval_args(model_dir, data_config, baseline))[0] == 0
    (baseline / "units.json").write_text("{}")  # found only once the pruned run has generated and scored
    out = tmp_path / "r"
    code, _, stderr = fast3d(capsys, *_eval_args(model_dir, data_config, out, *PRUNED))
    assert code == 2 and one_error_line(stderr) and "units.json" in stderr, stderr
    assert (out / "predictions" / "scanqa.jsonl").is_file()  # kept: a rerun resumes them
    assert not (out / "metrics.json").exists()
