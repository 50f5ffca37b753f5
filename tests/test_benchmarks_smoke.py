"""Smoke tests of the benchmark scripts: they run end to end on a tiny config and write their JSON."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


def test_pruned_inference_runs_tiny(tmp_path: Path) -> None:
    bench = load_benchmark("pruned_inference")
    argv = ["--device", "cpu", "--config", "tiny", "--batch", "2", "--repeats", "1", "--warmup", "0"]
    argv += ["--max-new-tokens", "3", "--threads", "1", "--out-dir", str(tmp_path), "--out", "smoke"]
    path = bench.main(argv)

    assert path == tmp_path / "smoke.json"
    result = json.loads(path.read_text())
    assert result["config"]["name"] == "tiny" and result["environment"]["device"] == "cpu"
    assert "scaled-down" in result["note"]
    assert {(r["variant"], r["batch"]) for r in result["prefill"]} == {
        (v, b) for v in ("dense", "pruned") for b in (1, 2)
    }
    assert all(r["median_s"] > 0 for r in result["prefill"] + result["greedy"] + result["beam"])
    assert [r["variant"] for r in result["greedy"]] == ["dense", "pruned"]
    assert all(r["generated_tokens"] == 2 * 3 and r["decode_ms_per_step"] > 0 for r in result["greedy"])
    cases = [r["case"] for r in result["beam"]]
    assert cases == ["official_masked", "ours_pruned_b1", "dense_b1", "ours_pruned_b2"]
    assert all(r["num_beams"] == 5 and r["samples"] == 2 for r in result["beam"])
    assert result["flops"]["ratio_dense_over_pruned"] > 1
    assert result["layout"]["kept_visual_tokens"] == 30
    for goal in result["goals"].values():
        assert goal["met"] == (goal["measured"] >= goal["target"])


def test_associative_recall_runs_tiny(tmp_path: Path) -> None:
    bench = load_benchmark("associative_recall")
    argv = ["--steps", "3", "--batch", "4", "--probe-every", "1", "--threads", "1", "--hidden-size", "32"]
    path = bench.main([*argv, "--out-dir", str(tmp_path), "--out", "smoke"])

    result = json.loads(path.read_text())
    assert result["environment"]["device"] == "cpu" and result["settings"]["pairs"] == 12
    curve = result["result"]["curve"]
    assert [e["step"] for e in curve] == [0, 1, 2]
    assert [e["sequences_seen"] for e in curve] == [4, 8, 12]
    assert all(0.0 <= e["recall_accuracy"] <= 1.0 and e["loss"] > 0 for e in curve)
    assert result["result"]["chance_among_context_values"] == 1 / 12


def test_associative_recall_batch_layout() -> None:
    """Labels sit exactly on the recalled values, and each recalled value is the one bound to its key."""
    import torch

    bench = load_benchmark("associative_recall")
    args = bench.parse_args(["--prefix", "3", "--pairs", "5", "--queries", "2"])
    tokens, labels = bench._batch(args, 6, torch.Generator().manual_seed(0))
    start = 3 + 2 * 5
    assert tokens.shape == (6, start + 2 * 2)
    assert (labels[:, :start] == -100).all() and (labels[:, start::2] == -100).all()
    for row in range(6):
        bound = dict(zip(tokens[row, 3:start:2].tolist(), tokens[row, 4:start:2].tolist(), strict=True))
        for q in range(2):
            key, value = tokens[row, start + 2 * q].item(), labels[row, start + 2 * q + 1].item()
            assert bound[key] == value


# ---------------------------------------------------------------------------------------------- GPU suite

# Runs the suite the way the GPU image would: the project not installed (the editable-install finder is
# removed, the working directory is elsewhere) and the packages that image lacks made unimportable.
AS_ON_THE_GPU_IMAGE = """
import importlib.abc, importlib.util, runpy, sys

suite, blocked = sys.argv[1], set(sys.argv[2].split(","))


class NotInTheImage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in blocked:
            raise ModuleNotFoundError(f"{name} is not in the GPU image")
        return None


sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
sys.meta_path.insert(0, NotInTheImage())
assert importlib.util.find_spec("fast3d_cli") is None and importlib.util.find_spec("fast3d_kernels") is None
sys.argv = [suite, *sys.argv[3:]]
runpy.run_path(suite, run_name="__main__")
"""


def test_gpu_suite_smoke_runs_every_section(tmp_path: Path) -> None:
    """``gpu_suite.py --smoke`` (the real sections at tiny shapes on CPU) gives a number for every goal."""
    suite = load_benchmark("gpu_suite")
    results_before = sorted(p.name for p in (BENCHMARKS / "results").iterdir())
    out_dir = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRITON_INTERPRET": "1"}
    blocked = ",".join(suite.NOT_IN_GPU_IMAGE)
    argv = [str(BENCHMARKS / "gpu_suite.py"), blocked, "--smoke", "--out-dir", str(out_dir)]
    done = subprocess.run(
        [sys.executable, "-c", AS_ON_THE_GPU_IMAGE, *argv],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-6000:]
    path = Path(done.stdout.strip().splitlines()[-1])
    assert path == out_dir / "gpu_suite_smoke.json"
    assert sorted(p.name for p in (BENCHMARKS / "results").iterdir()) == results_before

    result = json.loads(path.read_text())
    assert result["profile"] == "smoke" and "not measurements" in result["note"]
    env_record = result["environment"]
    assert env_record["device"] == "cpu" and env_record["torch"] and env_record["transformers"]
    assert "git_commit" in env_record and env_record["date"]
    sections = result["sections"]
    assert list(sections) == list(suite.SECTIONS)
    assert all(s["status"] == "ok" and s["seconds"] > 0 for s in sections.values()), sections
    assert result["summary"]["sections_failed"] == [] and result["summary"]["sections_skipped"] == []

    profile = suite.PROFILES["smoke"]()
    expected = {name for section in suite.SECTIONS.values() for name in section.goals(profile)}
    method_goals = {g for g in expected if g.startswith("method_prefill_speedup_")}
    assert set(result["goals"]) == expected and len(expected - method_goals) == 13
    for name, entry in result["goals"].items():
        if "graph" in name:  # CUDA graphs need CUDA
            assert (
                entry["measured"] is None and entry["met"] is None and "CUDA graphs" in entry["not_measured"]
            )
            continue
        value = entry["measured"]
        assert isinstance(value, float) and math.isfinite(value) and value > 0, (name, entry)
        assert entry["met"] == (
            value >= entry["target"] if entry["comparison"] == ">=" else value <= entry["target"]
        )

    kernel = sections["kernel"]["result"]["rows"]
    assert [r["case"] for r in kernel] == ["sap", "topk"]
    assert all(r["check"] == {"count_mismatch_rows": 0, "gather_equal": True} for r in kernel)
    counts = sections["kept_counts"]["result"]
    assert counts["equal"] == counts["rows"] == 6 * profile.count_rows
    prefill = sections["prefill"]["result"]["rows"]
    assert {(r["variant"], r["batch"]) for r in prefill} == {
        (v, b) for v in ("dense", "pruned") for b in (1, 2)
    }
    assert [r["case"] for r in sections["beam"]["result"]["rows"]][-1] == "ours_pruned_b2"
    extraction = sections["extraction"]["result"]
    assert extraction["memory"].startswith("MemTracker")
    for row in extraction["rows"]:
        assert row["peak_activation_mib"] > 0
        if row["variant"] == "fast3d":  # eager keeps every layer's attention matrix: it must show
            assert row["memory_ratio_vs_eager"] > 1
    assert sections["model"]["result"]["config"] == "tiny"
    check_method_prefill(sections["method_prefill"]["result"], profile, method_goals)


def check_method_prefill(result: dict, profile, goal_names: set[str]) -> None:
    """Every Chat-Scene method of the registry measured near the profile's ratio, the others skipped."""
    from fast3d_cli.pruning.methods import METHODS

    pruning = {n: s for n, s in METHODS.items() if s.budget != "none"}
    chatscene = [n for n, s in pruning.items() if "chatscene" in s.families]
    measured = [n for n in chatscene if pruning[n].budget != "anchored"]  # anchored SAP needs real prompts
    assert [r["method"] for r in result["rows"]] == measured
    assert goal_names == {f"method_prefill_speedup_{n}" for n in measured}
    assert set(result["skipped"]) == set(pruning) - set(measured)
    assert "llava" in result["skipped"]["fastervlm"] and "real prompts" in result["skipped"]["gap+asap"]
    assert result["dense"]["median_s"] > 0 and result["target_ratio"] == profile.method_ratio
    for row in result["rows"]:
        spec = METHODS[row["method"]]
        tolerance = 1.0 if row["budget"]["keep"] is not None else 15.0  # SAP counts vary per sample
        assert abs(row["layer_averaged_ratio"] - profile.method_ratio) <= tolerance, row
        assert row["flops_ratio_dense_over_pruned"] > 1 and row["prefill"]["median_s"] > 0
        in_llm = spec.multistage or spec.scorer == "fastv"
        assert ("selection" in row) == (not in_llm), row
        assert ("synthetic" in row["scores"]) == (spec.scorer == "maps")
        if spec.multistage:
            assert len(row["budget"]["layers"]) == len(row["budget"]["stage_keep"]) >= 1


def test_method_prefill_budgets_reach_90_percent_on_the_7b_depth() -> None:
    """On 32 layers every Chat-Scene method's settings resolve (none is out of reach) near 90%."""
    import torch

    from fast3d_cli.pruning.budgets import multistage_layer_averaged_ratio, sap_keep_counts
    from fast3d_cli.pruning.methods import METHODS, resolve_budget

    load_benchmark("pruned_inference")  # puts benchmarks/ on the path, as the suite does
    bench = load_benchmark("method_prefill")
    logits = torch.randn(16, 100, generator=torch.Generator().manual_seed(0))
    assert bench.early_drop_layers(32) == (2, 4, 6) and bench.early_drop_layers(4) == (1,)
    for name, spec in METHODS.items():
        if spec.budget == "none" or bench.skip_reason(spec):
            continue
        budget = resolve_budget(spec, bench.settings_for(spec, 32, 90.0, logits), 32, 100, None)
        if budget.alpha is not None:  # SAP: the mean count lands near the fixed count of 90%, 10
            assert abs(sap_keep_counts(logits.numpy(), budget.alpha).mean() - 10) <= 3, name
            continue
        kept = [budget.stage_keep] if budget.layers else [[budget.keep]]
        ratio = multistage_layer_averaged_ratio(kept, 100, budget.drop_layers, 32)
        assert abs(ratio - 90.0) <= 1.0, (name, ratio)


def test_method_prefill_records_a_method_it_cannot_score(monkeypatch) -> None:
    """A registry entry whose scorer the benchmark has no synthetic inputs for is skipped with the reason,
    and its goal is recorded as not measured; a method of another family gets no goal."""
    import torch

    from fast3d_cli.pruning import methods

    pi = load_benchmark("pruned_inference")  # puts benchmarks/ on the path, as the suite does
    bench = load_benchmark("method_prefill")
    keep = ("none", "random", "fastervlm")
    registry = {n: methods.METHODS[n] for n in keep}
    registry["future"] = methods.MethodSpec("future", "future_scorer", "fixed")
    monkeypatch.setattr(methods, "METHODS", registry)
    torch.set_num_threads(1)
    llm = pi.build_model("tiny", "cpu", torch.float32)
    prompts = pi.Prompts(2, llm.config.hidden_size, "cpu", torch.float32, keep_objects=10)
    with torch.inference_mode():
        result = bench.method_cases(llm, prompts, lambda cases: pi.Timer("cpu", 1, 0), 60.0)
    goals = bench.goals(result, 2)

    assert [r["method"] for r in result["rows"]] == ["random"]
    assert result["rows"][0]["layer_averaged_ratio"] == 60.0 and result["rows"][0]["budget"]["keep"] == 40
    assert "future_scorer" in result["skipped"]["future"] and "fastervlm" in result["skipped"]
    assert set(goals) == {"method_prefill_speedup_random", "method_prefill_speedup_future"}
    future = goals["method_prefill_speedup_future"]
    assert future["met"] is None and "SCORE_SOURCES" in future["not_measured"]
    assert goals["method_prefill_speedup_random"]["measured"] == result["rows"][0]["speedup_with_selection"]


def test_gpu_suite_records_a_failing_section_and_runs_the_rest(tmp_path: Path) -> None:
    suite = load_benchmark("gpu_suite")
    bad = {"batch": 2, "groups": 30, "group": 3, "tokens": 60, "dim": 8, "alpha": 0.3}  # 90 tokens > 60
    profile = replace(suite.PROFILES["smoke"](), kernel_cases={"sap": bad})
    out = tmp_path / "suite.json"
    payload = suite.run_suite(profile, ["kernel", "kept_counts"], out, "abc123")

    assert json.loads(out.read_text()) == json.loads(json.dumps(payload))
    assert payload["environment"]["git_commit"] == "abc123"
    kernel = payload["sections"]["kernel"]
    assert kernel["status"] == "error" and "do not fit" in kernel["error"] and kernel["traceback"]
    assert payload["sections"]["kept_counts"]["status"] == "ok"
    assert payload["summary"]["sections_failed"] == ["kernel"]
    for name in ("sap_speedup_vs_reference", "sap_speedup_graph_vs_reference"):
        assert (
            payload["goals"][name]["met"] is None and "ValueError" in payload["goals"][name]["not_measured"]
        )
    assert payload["goals"]["kept_counts_equal_fraction"]["met"] is True


def test_gpu_suite_budget() -> None:
    """Timed runs stop at a case's budget (one always runs); later sections share what is left."""
    import time

    common = load_benchmark("common")
    suite = load_benchmark("gpu_suite")
    calls: list[float] = []

    def work() -> None:
        calls.append(time.perf_counter())
        time.sleep(0.01)

    assert common.Timer("cpu", repeats=4, warmup=1)(work)["runs"] == 4
    assert common.Timer("cpu", repeats=4, warmup=1, budget_s=0.0)(work)["runs"] == 1
    assert len(calls) == 5 + 2
    profile = suite.PROFILES["gpu"]()
    assert suite.allowance(profile, ["prefill", "beam"], 1000) == profile.plans["prefill"].cap_s
    caps = profile.plans["prefill"].cap_s, profile.plans["beam"].cap_s
    assert suite.allowance(profile, ["prefill", "beam"], 95) == pytest.approx(95 * caps[0] / sum(caps))


def test_gpu_suite_usage(tmp_path: Path) -> None:
    suite = load_benchmark("gpu_suite")
    with pytest.raises(SystemExit) as refused:
        suite.parse_args(["--smoke", "--out-dir", str(BENCHMARKS / "results")])
    assert refused.value.code == 2
    assert suite.parse_args(["--sections", "beam", "kernel"]).sections == ["kernel", "beam"]
    assert (
        suite.device_slug("NVIDIA H200") == "h200"
        and suite.device_slug("NVIDIA H100 80GB HBM3") == "h100_80gb_hbm3"
    )
    shown = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu_suite.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0
    assert "python benchmarks/gpu_suite.py --out-dir DIR" in shown.stdout  # how to run it, on any GPU machine
    assert "carry" not in shown.stdout and "$OUT" not in shown.stdout


@pytest.mark.skipif(
    importlib.util.find_spec("torch") is not None and __import__("torch").cuda.is_available(),
    reason="with CUDA this would start the real suite",
)
def test_gpu_suite_without_cuda_is_one_error_line(capsys) -> None:
    suite = load_benchmark("gpu_suite")
    assert suite.main(["--out-dir", "/nonexistent"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["gpu_suite: error: no CUDA device; run it on a GPU, or with --smoke on CPU"]
