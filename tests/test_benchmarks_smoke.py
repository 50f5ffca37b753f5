"""Smoke tests of the benchmark scripts: they run end to end on a tiny config and write their JSON."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
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
        assert goal["pass"] == (goal["measured"] >= goal["target"])
