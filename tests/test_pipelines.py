"""Stages compose in a real shell: each prints its output path on stdout and reads "-" from stdin."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from tests.test_gap_train import TINY_GAP


def fast3d_exe() -> str:
    """The installed console script next to this interpreter (CI and dev venvs), else ``python -m``."""
    script = Path(sys.executable).with_name("fast3d")
    return shlex.quote(str(script)) if script.is_file() else f"{shlex.quote(sys.executable)} -m fast3d_cli"


def test_full_chain_in_a_shell_pipeline(model_dir, data_config, tmp_path) -> None:
    tiny = tmp_path / "tiny.json"
    tiny.write_text(json.dumps(TINY_GAP))
    exe, root, model = fast3d_exe(), shlex.quote(str(data_config.root)), shlex.quote(str(model_dir))
    data = f"--data-root {root}"
    pipeline = " | ".join(
        [
            f"{exe} extract --model {model} {data} --tasks scanqa --limit 24 -o a.zarr",
            f"{exe} train-gap - -o gap {data} --tokenizer {model} --gap-config {tiny} --epochs 1 -b 8",
            f"{exe} predict - -o p.zarr {data} --tasks scanqa",
            f"{exe} search-alpha - --target 90",
            f"{exe} eval --model {model} {data} --method gap+sap --maps - --alpha auto --tasks scanqa "
            "--limit 3 --num-beams 1 --max-new-tokens 3 --baseline dense -o sap",
        ]
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "100"}
    proc = subprocess.run(
        ["bash", "-o", "pipefail", "-c", pipeline], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "sap/metrics.json"
    result = json.loads((tmp_path / "sap" / "metrics.json").read_text())
    store_alpha = json.loads((tmp_path / "p.zarr" / "zarr.json").read_text())["attributes"]["fast3d"]["sap"]
    assert result["pruning"]["method"] == "gap+sap"
    assert result["pruning"]["alpha"] == store_alpha["alpha"]
    assert "value" in result["score_ratio"]


def test_a_broken_pipe_stage_fails_with_one_line(tmp_path) -> None:
    exe = fast3d_exe()
    proc = subprocess.run(
        ["bash", "-o", "pipefail", "-c", f"echo nowhere.zarr | {exe} search-alpha - --target 90"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["fast3d: error: store not found: nowhere.zarr"]
    proc = subprocess.run(
        ["bash", "-c", f"true | {exe} train-gap - -o gap"], cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 2 and "no path on stdin" in proc.stderr
