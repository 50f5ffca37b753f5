"""The score ratio's paired-bootstrap 95% interval (docs/bootstrap.md) where a score ratio is shown: eval's
metrics.json and summary, units.json, the demo table, fast3d report's error bars and the sample_pruning
benchmark table. The end-to-end eval runs are in tests/test_pruning_eval.py."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from fast3d_cli.cli.tables import print_comparison_table, summary_lines
from fast3d_cli.demo import table_row
from fast3d_cli.errors import UserError
from fast3d_cli.evaluation.confidence import (
    UNITS_FILE,
    BootstrapSettings,
    add_score_ratio_interval,
    read_units,
    write_units,
)
from fast3d_cli.evaluation.runner import add_score_ratio
from fast3d_cli.metrics import BOOTSTRAP_METHOD, TaskUnits, paired_bootstrap_score_ratio

from .conftest import fast3d
from .test_benchmarks_smoke import load_benchmark
from .test_report import write_result

N_UNITS = 80
TASKS = ("scanrefer", "sqa3d")


def _runs(seed: int = 0, zero_dense: str | None = None) -> tuple[dict, dict]:
    """Units of a dense run (hits) and of a method that changes about 15% of its answers."""
    rng = np.random.default_rng(seed)
    keys = tuple(str(i) for i in range(N_UNITS))
    dense, method = {}, {}
    for task in TASKS:
        hits = np.zeros(N_UNITS) if task == zero_dense else rng.integers(0, 2, N_UNITS).astype(float)
        flipped = np.where(rng.random(N_UNITS) < 0.15, 1 - hits, hits)
        dense[task] = TaskUnits(task, "mean", keys, hits)
        method[task] = TaskUnits(task, "mean", keys, flipped)
    return method, dense


def _result(units: dict[str, TaskUnits], method: str = "gap") -> dict:
    pruning = {"method": method, "layer": 0, "keep": 10, "layer_averaged_ratio": 90.0, "input_ratio": 90.0,
               "mean_kept_tokens": 30.0, "flops_ratio": 0.1}  # fmt: skip
    headline = {task: item.headline() for task, item in units.items()}
    return {"headline": headline, "samples": dict.fromkeys(units, N_UNITS), "pruning": pruning, "speed": {}}


def _scored(method: dict, dense: dict, settings: BootstrapSettings | None = None) -> dict:
    result = add_score_ratio(_result(method), _result(dense, "none"), Path("runs/eval-none"))
    return add_score_ratio_interval(result, method, dense, settings or BootstrapSettings())


def test_interval_is_a_direct_paired_bootstrap_of_the_two_runs() -> None:
    method, dense = _runs()
    entry = _scored(method, dense, BootstrapSettings(n_resamples=400, seed=7))["score_ratio"]
    direct = paired_bootstrap_score_ratio(method, dense, n_resamples=400, seed=7).to_dict()
    assert entry["value"] == pytest.approx(direct["value"], abs=1e-4)
    assert entry["ci95"] == pytest.approx(direct["ci95"], abs=1e-4)
    for task in TASKS:
        assert entry["per_task"][task] == pytest.approx(direct["per_task"][task]["value"], abs=1e-4)
        assert entry["per_task_ci95"][task] == pytest.approx(direct["per_task"][task]["ci95"], abs=1e-4)
    assert (entry["n_resamples"], entry["seed"], entry["confidence"]) == (400, 7, 0.95)
    assert entry["method"] == BOOTSTRAP_METHOD and entry["n_undefined"] == 0
    assert entry["baseline"] == "runs/eval-none" and set(entry["baseline_headline"]) == set(TASKS)
    low, high = entry["ci95"]
    assert low < entry["value"] < high and high - low > 1  # 80 samples: a real spread
    other_seed = _scored(method, dense, BootstrapSettings(n_resamples=400, seed=8))["score_ratio"]
    assert other_seed["ci95"] != entry["ci95"] and other_seed["value"] == entry["value"]


def test_undefined_ratio_gets_no_interval_and_defined_tasks_keep_theirs() -> None:
    method, dense = _runs(zero_dense="scanrefer")
    entry = _scored(method, dense)["score_ratio"]
    assert entry["value"] is None and "the dense [scanrefer] Acc@0.50 is 0" in entry["reason"]
    assert entry["ci95"] is None and entry["per_task_ci95"]["scanrefer"] is None
    assert entry["per_task_ci95"]["sqa3d"] is not None and entry["n_undefined"] == 1000
    line = next(line for line in summary_lines({"score_ratio": entry}) if line.startswith("score ratio"))
    assert line.startswith("score ratio n/a (undefined for scanrefer") and "scanrefer n/a" in line, line


def test_bootstrap_0_leaves_the_interval_out() -> None:
    method, dense = _runs()
    entry = _scored(method, dense, BootstrapSettings(n_resamples=0))["score_ratio"]
    assert "ci95" not in entry and "per_task_ci95" not in entry and "method" not in entry
    lines = summary_lines({"score_ratio": entry})
    assert len(lines) == 1 and "[" not in lines[0], lines


def test_runs_over_other_samples_get_a_reason_instead_of_an_interval() -> None:
    method, dense = _runs()
    dense = {
        task: TaskUnits(task, "mean", tuple(f"x{i}" for i in range(N_UNITS)), item.values)
        for task, item in dense.items()
    }
    entry = _scored(method, dense)["score_ratio"]
    assert entry["value"] is not None and entry["ci95"] is None
    assert "units differ" in entry["ci_reason"]
    lines = summary_lines({"score_ratio": entry})
    assert any("no confidence interval: paired bootstrap" in line for line in lines), lines


def test_summary_prints_each_ratio_with_its_interval() -> None:
    method, dense = _runs()
    entry = _scored(method, dense)["score_ratio"]
    lines = summary_lines({"score_ratio": entry})
    low, high = entry["ci95"]
    assert lines[0].startswith(f"score ratio {entry['value']:.2f}% [{low:.2f}, {high:.2f}] against"), lines
    task_low, task_high = entry["per_task_ci95"]["sqa3d"]
    assert f"sqa3d {entry['per_task']['sqa3d']:.2f}% [{task_low:.2f}, {task_high:.2f}]" in lines[0]
    note = "  [low, high]: 95% paired-bootstrap interval over 1000 resamples of the samples (seed 0)"
    assert lines[1] == note


def test_demo_table_has_the_interval_beside_the_ratio() -> None:
    method, dense = _runs()
    result = _scored(method, dense)
    rows = [table_row("dense", _result(dense, "none")), table_row("GAP", result)]
    assert rows[0]["score_ratio_ci"] is None and rows[1]["score_ratio_ci"] == result["score_ratio"]["ci95"]
    out = io.StringIO()
    print_comparison_table(rows, out, "demo")
    lines = out.getvalue().splitlines()
    header = next(line for line in lines if "ratio %" in line)
    assert header.index("ratio %") < header.index("95% CI") < header.index("pruned %"), header
    low, high = result["score_ratio"]["ci95"]
    gap = next(line for line in lines if line.startswith("│ GAP"))
    assert f"{result['score_ratio']['value']:.2f} │ [{low:.2f}, {high:.2f}] │" in gap, gap
    dense_row = next(line for line in lines if line.startswith("│ dense"))
    assert "100.00 │               - │" in dense_row, dense_row
    assert not any("resamples" in line for line in lines)

    sparse = {**rows[1], "score_ratio_resamples_undefined": 434}  # e.g. a dense hit rate of 1 in 40
    out = io.StringIO()
    print_comparison_table([sparse], out, "demo")
    assert "GAP: 95% CI from 566 of 1000 resamples (434 drew a dense score of 0" in out.getvalue()


def test_units_file_round_trip_and_bad_files(tmp_path: Path) -> None:
    method, _ = _runs()
    write_units(tmp_path, method)
    back = read_units(tmp_path)
    assert set(back) == set(TASKS)
    for task in TASKS:
        assert back[task].keys == method[task].keys and np.array_equal(back[task].values, method[task].values)
    with pytest.raises(UserError, match=r"units\.json not found"):
        read_units(tmp_path / "older-run")
    bad = tmp_path / "bad"
    bad.mkdir()
    for text, message in [
        ("{", "cannot read JSON file"),
        ('{"tasks": {}}', "not a units file"),
        (json.dumps({"format": 1, "tasks": {"sqa3d": {"task": "sqa3d", "keys": "a"}}}), "malformed"),
        (json.dumps({"format": 1, "tasks": {"sqa3d": method["scanrefer"].to_dict()}}), "another task"),
    ]:
        (bad / UNITS_FILE).write_text(text)
        with pytest.raises(UserError, match=message):
            read_units(bad)


def test_bootstrap_settings_refuse_negative_values() -> None:
    with pytest.raises(UserError, match="--bootstrap must be a non-negative integer"):
        BootstrapSettings(n_resamples=-1)
    with pytest.raises(UserError, match="--bootstrap-seed must be a non-negative integer"):
        BootstrapSettings(seed=-2)
    assert not BootstrapSettings(n_resamples=0).enabled and BootstrapSettings().enabled


def _with_interval(path: Path, ci: list[float] | None, per_task: dict | None) -> Path:
    metrics = json.loads((path / "metrics.json").read_text())
    metrics["score_ratio"]["ci95"] = ci
    if per_task is not None:
        metrics["score_ratio"]["per_task_ci95"] = per_task
    (path / "metrics.json").write_text(json.dumps(metrics))
    return path


def _error_bars(ax) -> list[np.ndarray]:
    """The (low, high) ends of every error bar drawn on ``ax``: one [n, 2] array per errorbar call."""
    from matplotlib.container import ErrorbarContainer

    found = []
    for container in ax.containers:
        if isinstance(container, ErrorbarContainer):
            (bars,) = container.lines[2]
            found.append(np.array([[segment[0][1], segment[1][1]] for segment in bars.get_segments()]))
    return found


def test_report_draws_the_intervals_as_error_bars(data_config, tmp_path: Path) -> None:
    from fast3d_cli.report import load_results, plots

    paths = [
        write_result(tmp_path / "eval-none", data_config, "none"),
        _with_interval(
            write_result(tmp_path / "eval-gap", data_config, "gap", keep=10, quality=0.9),
            [84.5, 93.25],
            {"scanrefer": [80.0, 97.5], "scanqa": None},  # ScanQA: no interval (undefined)
        ),
        write_result(tmp_path / "eval-fastv", data_config, "fastv", layer=1, keep=10, quality=0.8, seed=1),
    ]  # fastv: a result of an earlier version, without intervals
    results = load_results(paths, note=lambda message: None)
    assert results[1].score_ratio_ci == (84.5, 93.25) and results[2].score_ratio_ci is None
    assert results[1].per_task["scanrefer"].score_ratio_ci == (80.0, 97.5)
    assert results[1].per_task["scanqa"].score_ratio_ci is None

    (ax,) = plots.score_ratio_vs_pruning_figure(results).axes
    (bars,) = _error_bars(ax)
    assert bars.tolist() == [[84.5, 93.25]]  # the gap run's bar; none for fastv
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert "bars: 95% CI (paired bootstrap)" in labels

    figure = plots.score_ratio_per_task_figure(results)
    by_title = {ax.get_title(): ax for ax in figure.axes if ax.get_title()}
    (bars,) = _error_bars(by_title["scanrefer"])
    assert bars.tolist() == [[80.0, 97.5]]
    assert _error_bars(by_title["scanqa"]) == []

    without = load_results([paths[0], paths[2]], note=lambda message: None)
    (ax,) = plots.score_ratio_vs_pruning_figure(without).axes
    assert _error_bars(ax) == [] and "bars: 95% CI (paired bootstrap)" not in [
        text.get_text() for text in ax.get_legend().get_texts()
    ]


def test_report_refuses_a_malformed_interval(capsys, data_config, tmp_path: Path) -> None:
    run = _with_interval(write_result(tmp_path / "gap", data_config, "gap", keep=10), ["low", 3], None)
    code, stdout, stderr = fast3d(capsys, "report", str(run), "-o", str(tmp_path / "report"))
    assert code == 2 and stdout == "" and len(stderr.strip().splitlines()) == 1, stderr
    assert "score_ratio.ci95 should be [low, high] or null" in stderr


def test_sample_pruning_rows_and_table_carry_the_interval() -> None:
    bench = load_benchmark("sample_pruning")
    method, dense = _runs()
    dense_result = {**_result(dense, "none"), "speed": {"samples_per_s": 3.0}}
    dense_result["pruning"] = {**dense_result["pruning"], "alpha": None}
    pruned = _scored(method, dense)
    pruned = {**pruned, "speed": {"samples_per_s": 3.0}, "pruning": {**pruned["pruning"], "alpha": None}}
    rows = [
        bench.table_row("dense", {"method": "none"}, dense_result),
        bench.table_row("GAP 90%", {"method": "gap", "keep": 10}, pruned),
    ]
    assert rows[0]["score_ratio"] == 100.0 and rows[0]["score_ratio_ci95"] is None
    assert rows[1]["score_ratio_ci95"] == pruned["score_ratio"]["ci95"]
    assert rows[1]["score_ratio_per_task_ci95"] == pruned["score_ratio"]["per_task_ci95"]
    json.dumps(rows)  # the results JSON
    lines = bench.markdown(rows).splitlines()
    assert "| score ratio | 95% CI |" in lines[0] and lines[1].count("---") == lines[0].count("|") - 1
    low, high = pruned["score_ratio"]["ci95"]
    assert f"| {pruned['score_ratio']['value']:.2f} | [{low:.2f}, {high:.2f}] |" in lines[3], lines[3]
    assert "| 100.00 | - |" in lines[2], lines[2]
    undefined = {**rows[1], "score_ratio": None, "score_ratio_ci95": None}
    assert "| n/a | - |" in bench.markdown([undefined]).splitlines()[2]  # this used to raise a TypeError


def _eval(capsys, model_dir: Path, data_config, out: Path, baseline: Path, *extra: str) -> tuple[dict, str]:
    args = [
        "eval", "--model", str(model_dir), "--data-root", str(data_config.root), "-o", str(out),
        "--baseline", str(baseline), "--tasks", "scanqa,sqa3d", "--limit", "12", "--num-beams", "1",
        "--max-new-tokens", "4", "--batch-size", "6", "--method", "random", "--keep", "2", "--json", *extra,
    ]  # fmt: skip
    code, stdout, stderr = fast3d(capsys, *args)
    assert code == 0, stderr
    return json.loads(stdout), stderr


def _answer_some(run: Path, every: int) -> None:
    """Give a run the reference answer on all samples but every ``every``-th: the tiny random model scores 0
    on both tasks, which leaves no ratio to put an interval on. A sample whose reference has 4 words or more
    is always answered: a BLEU-4 without one matching 4-gram is negligible, with no ratio against it."""
    for log in (run / "predictions").glob("*.jsonl"):
        records = [json.loads(line) for line in log.read_text().splitlines()]
        for record in records:
            if record["index"] % every or len(record["ref_captions"][0].split()) >= 4:
                record["pred"] = record["ref_captions"][0]
        log.write_text("".join(json.dumps(record) + "\n" for record in records))


def test_eval_pairs_the_saved_units_of_both_runs(capsys, model_dir: Path, data_config, tmp_path) -> None:
    out, baseline = tmp_path / "random", tmp_path / "dense"
    settings = ("--bootstrap", "300", "--bootstrap-seed", "5")
    _eval(capsys, model_dir, data_config, out, baseline, *settings)
    assert (out / UNITS_FILE).is_file() and (baseline / UNITS_FILE).is_file()
    _answer_some(out, every=3)
    _answer_some(baseline, every=4)
    (baseline / UNITS_FILE).unlink()  # a dense run of an earlier fast3d version: no units.json
    logs = [log for run in (out, baseline) for log in (run / "predictions").glob("*.jsonl")]
    edited = {log: log.read_text() for log in logs}

    result, stderr = _eval(capsys, model_dir, data_config, out, baseline, *settings)
    assert {log: log.read_text() for log in edited} == edited  # scored again, not generated again
    method_units, dense_units = read_units(out), read_units(baseline)
    dense = json.loads((baseline / "metrics.json").read_text())
    for run, units in ((result, method_units), (dense, dense_units)):
        assert {task: item.headline() for task, item in units.items()} == pytest.approx(run["headline"])
    direct = paired_bootstrap_score_ratio(method_units, dense_units, n_resamples=300, seed=5).to_dict()
    entry = result["score_ratio"]
    assert entry["value"] == pytest.approx(direct["value"], abs=1e-4) and entry["value"] < 100
    assert entry["ci95"] == pytest.approx(direct["ci95"], abs=1e-4)
    assert entry["per_task_ci95"] == {
        task: pytest.approx(item["ci95"], abs=1e-4) for task, item in direct["per_task"].items()
    }
    assert (entry["n_resamples"], entry["seed"]) == (300, 5)
    low, high = entry["ci95"]
    assert low < entry["value"] < high
    assert json.loads((out / "metrics.json").read_text())["score_ratio"] == entry
    flat = " ".join(stderr.split())  # rich wraps the summary at the terminal width
    assert f"score ratio {entry['value']:.2f}% [{low:.2f}, {high:.2f}] against" in flat, stderr
    assert "95% paired-bootstrap interval over 300 resamples of the samples (seed 5)" in flat, stderr
