"""An undefined score ratio reads "n/a (reason)" everywhere it is shown (eval's summary, the demo table,
fast3d report), never 100%; a ratio of 0 reads 0."""

from __future__ import annotations

import io
import json
from pathlib import Path

from fast3d_cli.cli.tables import print_comparison_table, summary_lines
from fast3d_cli.demo import table_row
from fast3d_cli.evaluation.runner import add_score_ratio
from fast3d_cli.metrics import format_score_ratio, score_ratio_entry

from .conftest import fast3d
from .test_report import write_result

DENSE = {"scanrefer": 0.0, "sqa3d": 0.6}  # the demo's case: the dense ScanRefer score is 0
PRUNED = {"scanrefer": 0.0, "sqa3d": 0.3}  # FastV halves SQA3D


def _result(headline: dict[str, float], method: str = "fastv") -> dict:
    pruning = {"method": method, "layer": 1, "keep": 10, "layer_averaged_ratio": 67.5, "input_ratio": 90.0,
               "mean_kept_tokens": 30.0, "flops_ratio": 0.4}  # fmt: skip
    samples = dict.fromkeys(headline, 8)
    return {"headline": dict(headline), "samples": samples, "pruning": pruning, "speed": {}}


def test_entry_is_undefined_with_its_reason_and_zero_is_zero() -> None:
    entry = score_ratio_entry(PRUNED, DENSE)
    assert entry["value"] is None and entry["per_task"] == {"scanrefer": None, "sqa3d": 50.0}
    assert "scanrefer" in entry["reason"] and "is 0" in entry["reason"]
    assert "is 0" in entry["per_task_reasons"]["scanrefer"]
    zero = score_ratio_entry({"sqa3d": 0.0}, {"sqa3d": 0.6})
    assert zero["value"] == 0.0 and "reason" not in zero
    assert format_score_ratio(zero["value"]) == "0.00%"
    assert format_score_ratio(None, "why") == "n/a (why)"
    missing = score_ratio_entry({"sqa3d": 0.3}, {"sqa3d": 0.6, "scanqa": 0.1})
    assert missing["value"] is None and "this run has no [scanqa] Bleu_4" in missing["reason"]


def test_eval_summary_shows_na_with_the_reason() -> None:
    result = add_score_ratio(_result(PRUNED), _result(DENSE, "none"), Path("runs/eval-none"))
    assert result["score_ratio"]["value"] is None
    line = next(line for line in summary_lines(result) if line.startswith("score ratio"))
    assert "n/a (undefined for scanrefer" in line and "100" not in line, line
    zero = add_score_ratio(_result({"sqa3d": 0.0}), _result({"sqa3d": 0.6}, "none"), Path("dense"))
    line = next(line for line in summary_lines(zero) if line.startswith("score ratio"))
    assert line.startswith("score ratio 0.00% "), line


def test_demo_table_shows_na_not_100() -> None:
    result = add_score_ratio(_result(PRUNED), _result(DENSE, "none"), Path("dense"))
    zero = add_score_ratio(_result({"sqa3d": 0.0}), _result({"sqa3d": 0.6}, "none"), Path("dense"))
    rows = [table_row("dense", _result(DENSE, "none")), table_row("FastV", result), table_row("GAP", zero)]
    assert [row["score_ratio"] for row in rows] == [None, None, 0.0]  # the dense row too: its scanrefer is 0
    out = io.StringIO()
    print_comparison_table(rows, out, "demo")
    text = out.getvalue()
    fastv = next(line for line in text.splitlines() if "FastV" in line and "│" in line)
    gap = next(line for line in text.splitlines() if "GAP" in line and "│" in line)
    assert "n/a" in fastv and "100.00" not in fastv, text
    assert " 0.00 " in gap, text
    assert "dense, FastV: score ratio n/a (undefined for scanrefer" in text, text  # one note for both


def test_report_gives_the_real_reason(capsys, data_config, tmp_path: Path) -> None:
    dense = write_result(tmp_path / "dense", data_config, "none")
    run = write_result(tmp_path / "fastv", data_config, "fastv", layer=1, keep=10)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["score_ratio"] = {"baseline": str(dense), **score_ratio_entry(PRUNED, DENSE)}
    (run / "metrics.json").write_text(json.dumps(metrics))
    code, _, stderr = fast3d(capsys, "report", str(dense), str(run), "-o", str(tmp_path / "report"))
    assert code == 0, stderr
    assert "fastv: score ratio n/a (undefined for scanrefer (the dense [scanrefer] Acc@0.50 is 0))" in stderr
    assert "without a dense baseline" not in stderr
