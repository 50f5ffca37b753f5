"""``fast3d compare``: rows at matched pruning, one leaderboard (JSON, CSV, table), resume, failing rows, and
the Pareto pictures of ``fast3d report`` (on the committed sample model and sample world)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from fast3d_cli.evaluation.matching import comparable_methods, plan_rows
from fast3d_cli.models.loading import ModelSource
from fast3d_cli.pruning.methods import METHODS, MethodSpec
from fast3d_cli.report.pareto import ParetoPoint, pareto_front

from .conftest import fast3d, one_error_line

pytestmark = pytest.mark.usefixtures("one_thread")

TASKS = "scanrefer,multi3dref"  # no caption metrics: no METEOR JVM to start
QUICK = ["--tasks", TASKS, "--limit", "2", "--num-beams", "1", "--max-new-tokens", "6", "--bootstrap", "50"]
METHODS_ARG = "random,fastv,divprune,oracle+sap,gap"


def _no_model_load(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(ModelSource, "load", refuse)


@pytest.fixture(scope="module")
def maps(tmp_path_factory) -> Path:
    """Attention maps of the sample model on the compared samples (what oracle+sap matches its alpha on)."""
    from fast3d_cli.cli.app import run

    store = tmp_path_factory.mktemp("compare") / "maps.zarr"
    assert run(["extract", "--tasks", TASKS, "--split", "val", "--limit", "2", "-o", str(store)]) == 0
    return store


@pytest.fixture(scope="module")
def compared(maps, tmp_path_factory) -> dict:
    """One compare where divprune crashes (a forced error) and gap has no prediction store, then the same
    command again, which keeps the finished rows and redoes the failed ones."""
    from fast3d_cli.cli.app import run

    out = tmp_path_factory.mktemp("compare") / "cmp"
    args = ["compare", "-o", str(out), "-m", METHODS_ARG, "--ratios", "50", "--maps", str(maps), *QUICK]
    with pytest.MonkeyPatch.context() as patch:

        def crash(*args, **kwargs):
            raise RuntimeError("forced failure\nsecond line")

        patch.setattr("fast3d_cli.pruning.pruner.divprune_scores", crash)
        first_code = run(args)
    first = json.loads((out / "leaderboard.json").read_text())
    finished = [out / "runs" / row["slug"] for row in first["rows"] if row["status"] == "done"]
    # run.json is rewritten by every eval call, also one that generates nothing (the dense baseline of a row)
    files = [p for run_dir in finished for p in run_dir.rglob("*") if p.is_file() and p.name != "run.json"]
    stamps = {p: p.stat().st_mtime_ns for p in files}
    second_code = run(args)
    return {"out": out, "args": args, "first": (first_code, first), "second": second_code, "stamps": stamps}


def test_compare_writes_one_row_per_method_and_setting(compared) -> None:
    code, board = compared["first"]
    assert code == 0
    rows = {row["slug"]: row for row in board["rows"]}
    assert list(rows) == ["dense", "random-50", "fastv-50", "divprune-50", "oracle+sap-adaptive90", "gap-50"]
    for slug in ("dense", "random-50", "fastv-50", "oracle+sap-adaptive90"):
        row = rows[slug]
        assert row["status"] == "done", row
        assert set(row["per_task"]) == {"scanrefer", "multi3dref"}
        assert row["samples"] == {"scanrefer": 2, "multi3dref": 2}
        assert 0.0 <= row["agreement"] <= 1.0
        assert row["prefill_ms_per_sample"] > 0
        assert row["device"] == "cpu"
        assert (compared["out"] / "runs" / slug / "metrics.json").is_file()
    assert rows["dense"]["agreement"] == 1.0 and rows["dense"]["flops_ratio"] == 1.0
    assert rows["dense"]["selection_ms_per_sample"] is None  # a dense run selects nothing
    assert rows["random-50"]["selection_ms_per_sample"] > 0
    # matched pruning: the fixed rows at 50% layer-averaged, fastv pruning after its minimum layer 1
    assert rows["random-50"]["layer_averaged_ratio"] == pytest.approx(50.0)
    assert rows["fastv-50"]["layer"] == 1
    assert rows["fastv-50"]["layer_averaged_ratio"] == pytest.approx(50.0, abs=1.0)
    assert rows["random-50"]["flops_ratio"] < 1.0
    assert rows["random-50"]["mean_kept_objects"] == pytest.approx(50.0)
    sap = rows["oracle+sap-adaptive90"]
    assert sap["alpha"] is not None and sap["matched"].startswith(f"alpha {sap['alpha']:g}")
    assert "(the first 2 samples per task of" in sap["matched"]  # matched on the compared samples
    assert sap["keep"] is None


def test_a_failing_method_fails_its_row_only(compared) -> None:
    _, board = compared["first"]
    rows = {row["slug"]: row for row in board["rows"]}
    crashed = rows["divprune-50"]
    assert crashed["status"] == "failed"
    assert crashed["error"] == "RuntimeError: forced failure"  # one line
    assert "Traceback" in (compared["out"] / "errors" / "divprune-50.txt").read_text()
    refused = rows["gap-50"]
    assert refused["status"] == "failed"
    assert "--method gap needs exactly one of --maps" in refused["error"]
    assert not (compared["out"] / "runs" / "gap-50").exists()  # refused before anything ran


def test_rerun_keeps_finished_rows_and_redoes_failed_ones(compared) -> None:
    assert compared["second"] == 0
    out = compared["out"]
    board = json.loads((out / "leaderboard.json").read_text())
    rows = {row["slug"]: row for row in board["rows"]}
    assert rows["divprune-50"]["status"] == "done"  # the crash is gone: the row ran again
    assert rows["gap-50"]["status"] == "failed"
    assert len(compared["stamps"]) >= 16  # metrics, units and predictions of four finished rows
    for path, stamp in compared["stamps"].items():
        assert path.stat().st_mtime_ns == stamp, f"{path} was written again"


def test_rerun_with_everything_done_loads_no_model(compared, capsys, monkeypatch) -> None:
    args = [a for a in compared["args"] if a != METHODS_ARG]
    args[args.index("-m") + 1 : args.index("-m") + 1] = ["random,divprune"]
    _no_model_load(monkeypatch)
    code, stdout, stderr = fast3d(capsys, *args, "--json")
    assert code == 0, stderr
    board = json.loads(stdout)
    assert {row["slug"] for row in board["rows"] if row["status"] == "done"} >= {"dense", "random-50"}
    assert "finished earlier" in stderr and "fast3d compare" in stderr  # the table goes to stderr


def test_csv_and_table_carry_the_columns(compared, capsys, monkeypatch) -> None:
    with (compared["out"] / "leaderboard.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["slug"] for r in rows][:3] == ["dense", "random-50", "fastv-50"]
    columns = set(rows[0])
    for name in ("score_ratio", "ci_low", "ci_high", "mean_kept_objects", "flops_ratio", "agreement",
                 "prefill_ms_per_sample", "selection_ms_per_sample", "scanrefer_score_ratio",
                 "multi3dref_ci_high", "error"):  # fmt: skip
        assert name in columns
    assert rows[0]["agreement"] == "1.0"
    _no_model_load(monkeypatch)
    code, stdout, stderr = fast3d(capsys, *compared["args"])
    assert code == 0
    assert stdout == f"{compared['out']}\n"
    for header in ("ratio %", "95% CI", "FLOPs", "prefill ms", "select ms", "agree %"):
        assert header in stderr
    assert "gap 50%: failed: --method gap needs" in stderr


def test_other_settings_in_the_same_folder_are_refused(compared, capsys, monkeypatch) -> None:
    args = list(compared["args"])
    args[args.index("--limit") + 1] = "3"
    _no_model_load(monkeypatch)
    code, _, stderr = fast3d(capsys, *args)
    assert code == 2 and one_error_line(stderr)
    assert "holds a comparison made with another evaluation.limit (2 recorded, 3 now)" in stderr


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("-m", "random,nosuch", "'nosuch' is not a pruning method; choose from random, fastv"),
        ("-m", "none", "'none' has no budget to match; choose from"),
        ("--ratios", "0.9", "percentages in [1, 100)"),
        ("--ratios", "abc", "takes percentages"),
    ],
)
def test_bad_options_are_one_line_before_any_model_loads(
    option, value, message, capsys, monkeypatch, tmp_path
) -> None:
    _no_model_load(monkeypatch)
    args = {"-m": "random", "--ratios": "90", option: value}
    code, stdout, stderr = fast3d(
        capsys, "compare", "-o", str(tmp_path / "c"), *(x for kv in args.items() for x in kv)
    )
    assert code == 2 and stdout == ""
    assert one_error_line(stderr) and len(stderr.splitlines()) == 1
    assert message in stderr
    assert not (tmp_path / "c").exists()


def test_rows_come_from_the_registry_properties(monkeypatch) -> None:
    """A method registered by someone else joins the comparison without changes to compare."""
    monkeypatch.setitem(METHODS, "newfixed", MethodSpec("newfixed", "random", "fixed"))
    monkeypatch.setitem(METHODS, "newadaptive", MethodSpec("newadaptive", "maps", "sap", ("prediction",)))
    both = MethodSpec("newboth", "maps", "fixed", ("prediction",), adaptive=True)  # --ratio, or --alpha
    monkeypatch.setitem(METHODS, "newboth", both)
    assert {"newfixed", "newadaptive", "newboth"} <= set(comparable_methods())
    assert "none" not in comparable_methods()
    rows = plan_rows(["newfixed", "newadaptive", "newboth"], [35.0, 90.0], 85.0)
    assert [(r.slug, r.kind, r.target) for r in rows] == [
        ("dense", "dense", None),
        ("newfixed-35", "fixed", 35.0),
        ("newfixed-90", "fixed", 90.0),
        ("newadaptive-adaptive85", "adaptive", 85.0),
        ("newboth-35", "fixed", 35.0),
        ("newboth-90", "fixed", 90.0),
        ("newboth-adaptive85", "adaptive", 85.0),
    ]
    assert (both.fixed_budget, both.adaptive_option) == (True, "alpha")


def test_pareto_front_keeps_the_undominated_points() -> None:
    points = [
        ParetoPoint("dense", "none", 1.0, 100.0, None),
        ParetoPoint("a", "random", 0.3, 60.0, None),
        ParetoPoint("b", "gap", 0.3, 90.0, (85.0, 95.0)),
        ParetoPoint("c", "fastv", 0.5, 85.0, None),  # costs more than b and scores less
        ParetoPoint("d", "gap+sap", 0.2, 88.0, None),
        ParetoPoint("e", "divprune", 0.6, 100.0, None),  # as good as dense and cheaper
    ]
    assert [p.label for p in pareto_front(points)] == ["d", "b", "e"]


def _row(slug: str, method: str, flops: float, prefill: float, ratio: float | None, ci=None) -> dict:
    return {"slug": slug, "label": slug, "method": method, "status": "done", "flops_ratio": flops,
            "prefill_ms_per_sample": prefill, "score_ratio": ratio, "score_ratio_ci95": ci,
            "score_ratio_reason": None if ratio is not None else "the dense score is 0"}  # fmt: skip


def test_report_draws_both_pareto_pictures(tmp_path, capsys) -> None:
    board = {
        "format": 1,
        "identity": {"tasks": ["scanqa"]},
        "device": "cpu",
        "rows": [
            _row("dense", "none", 1.0, 50.0, 100.0),
            _row("random-90", "random", 0.25, 14.0, 71.0, [60.0, 80.0]),
            _row("gap-90", "gap", 0.25, 15.0, 93.0, [90.0, 97.0]),
            _row("gap+sap-adaptive90", "gap+sap", 0.24, 16.5, 95.5, [92.0, 99.0]),
            _row("fastv-65", "fastv", 0.45, 30.0, None),
            {"slug": "x", "label": "x 90%", "method": "x", "status": "failed", "error": "boom"},
        ],
    }
    folder = tmp_path / "cmp"
    folder.mkdir()
    (folder / "leaderboard.json").write_text(json.dumps(board))
    for given in (folder, folder / "leaderboard.json"):
        out = tmp_path / f"report-{given.name}"
        code, stdout, stderr = fast3d(capsys, "report", str(given), "-o", str(out), "--json")
        assert code == 0, stderr
        files = [Path(f).name for f in json.loads(stdout)["files"]]
        assert files == ["pareto_score_vs_flops.png", "pareto_score_vs_prefill.png"]
        for name in files:
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "left out fastv-65: no score ratio" in stderr and "left out x 90%: failed (boom)" in stderr


def test_report_refuses_a_file_that_is_no_leaderboard(tmp_path, capsys) -> None:
    bad = tmp_path / "leaderboard.json"
    bad.write_text(json.dumps({"rows": "nope"}))
    code, _, stderr = fast3d(capsys, "report", str(bad), "-o", str(tmp_path / "r"))
    assert code == 2 and one_error_line(stderr)
    assert "is not a leaderboard of fast3d compare" in stderr


def test_an_interrupted_first_row_resumes(tmp_path, capsys, monkeypatch) -> None:
    """Ctrl-C inside the dense row stops the command; the folder is a compare folder that the rerun
    completes."""
    from fast3d_cli.evaluation import runner

    out = tmp_path / "cmp"
    args = ["compare", "-o", str(out), "-m", "random", "--ratios", "50", "--tasks", "scanrefer",
            "--limit", "1", "--num-beams", "1", "--max-new-tokens", "4", "--bootstrap", "0"]  # fmt: skip
    original = runner.generate_answers
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the first call is the untimed warm-up, the second the dense row
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(runner, "generate_answers", interrupted)
    code, _, stderr = fast3d(capsys, *args)
    assert code == 130, stderr
    assert json.loads((out / "leaderboard.json").read_text())["rows"] == []
    monkeypatch.setattr(runner, "generate_answers", original)
    code, stdout, stderr = fast3d(capsys, *args, "--json")
    assert code == 0, stderr
    assert [row["status"] for row in json.loads(stdout)["rows"]] == ["done", "done"]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_a_crash_while_matching_fails_that_row_and_a_model_that_cannot_load_ends_the_command(
    maps, tmp_path, capsys, monkeypatch
) -> None:
    from fast3d_cli.evaluation.matching import MATCHERS

    def crash(*args, **kwargs):
        raise ValueError("matcher broke")

    monkeypatch.setitem(MATCHERS, "alpha", crash)
    out = tmp_path / "cmp"
    args = ["compare", "-o", str(out), "-m", "oracle+sap", "--maps", str(maps), *QUICK, "--device", "cuda"]
    code, stdout, stderr = fast3d(capsys, *args)
    assert code == 2 and stdout == "" and one_error_line(stderr)
    assert "CUDA is not available" in stderr.splitlines()[-1]
    rows = json.loads((out / "leaderboard.json").read_text())["rows"]
    assert [(r["slug"], r["status"], r["error"]) for r in rows] == [
        ("oracle+sap-adaptive90", "failed", "ValueError: matcher broke")
    ]


def test_a_row_whose_settings_changed_is_redone(compared, tmp_path, capsys) -> None:
    """The same row with another store (a copy here, so another path): its folder is redone, not refused."""
    import shutil

    maps = Path(compared["args"][compared["args"].index("--maps") + 1])
    moved = shutil.copytree(maps, tmp_path / "moved.zarr")
    args = list(compared["args"])
    args[args.index("--maps") + 1] = str(moved)
    args[args.index("-m") + 1] = "oracle+sap"
    code, stdout, stderr = fast3d(capsys, *args, "--json")
    assert code == 0, stderr
    assert "oracle+sap ~90%: the settings changed since it was recorded; redoing it" in stderr
    row = next(r for r in json.loads(stdout)["rows"] if r["slug"] == "oracle+sap-adaptive90")
    assert row["status"] == "done" and row["settings"]["maps"] == str(moved)


def test_multistage_rows_use_their_drop_layers_and_a_threshold_has_no_matcher() -> None:
    from fast3d_cli.errors import UserError
    from fast3d_cli.evaluation.matching import MatchInputs, resolve_row

    spec = METHODS["adatoken3d"]  # multi-stage, min layer 1, fixed budgets or the adaptive --threshold
    assert (spec.fixed_budget, spec.adaptive_option) == (True, "threshold")
    fixed, adaptive = plan_rows(["adatoken3d"], [50.0], 90.0)[1:]
    resolved = resolve_row(fixed, MatchInputs(), layer=2, n_layers=4)
    assert (resolved.pruning.layer, resolved.pruning.ratio, resolved.pruning.layers) == (0, 50.0, None)
    with pytest.raises(UserError, match="no matcher for its adaptive --threshold"):
        resolve_row(adaptive, MatchInputs(), layer=0, n_layers=4)
