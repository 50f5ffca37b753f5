"""Smoke tests of the benchmark scripts: they run end to end on a tiny config and write their JSON."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

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
