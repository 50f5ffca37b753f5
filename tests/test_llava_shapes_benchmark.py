"""Smoke test of benchmarks/llava_shapes.py: it trains, saves a loadable checkpoint and QA file, and scores
them through ``fast3d eval --model-family llava`` (a few steps: the numbers mean nothing)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "llava_shapes.py"


def test_llava_shapes_runs_quick(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("benchmark_llava_shapes", BENCHMARK)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)

    image, colors = bench.draw(np.random.default_rng(0))
    assert image.shape == (84, 84, 3) and len(colors) == 3 and set(colors) <= set(bench.COLORS)
    lit = (image.max(-1) > 100).reshape(6, 14, 6, 14).any(axis=(1, 3))
    assert lit.sum() == 3  # each shape in its own 14-pixel cell: one image token holds each answer

    path = bench.main(
        ["--quick", "--work-dir", str(tmp_path / "work"), "--out-dir", str(tmp_path), "--out", "s"]
    )
    result = json.loads(path.read_text())["result"]
    assert set(result) == {"dense", "fastervlm@90", "fastervlm_renumbered@90", "random@90"}
    assert result["dense"]["mean_kept_tokens"] == 36
    assert all(result[k]["mean_kept_tokens"] == 4 for k in result if k != "dense")  # round(36 x 0.1)
