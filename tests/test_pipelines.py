"""Stages compose in a real shell: each prints its output path on stdout and reads "-" from stdin."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from fast3d_cli.stores import open_store
from tests.conftest import REPO
from tests.test_cli_streams import assert_no_library_warnings
from tests.test_gap_train import TINY_GAP


def fast3d_exe() -> str:
    """The installed console script next to this interpreter (CI and dev venvs), else ``python -m``."""
    script = Path(sys.executable).with_name("fast3d")
    return shlex.quote(str(script)) if script.is_file() else f"{shlex.quote(sys.executable)} -m fast3d_cli"


def readme_pipeline() -> str:
    """The pipeline block of the README (the one marked for this test), as written."""
    text = (REPO / "README.md").read_text()
    block = text.split("<!-- pipeline: tests/test_pipelines.py runs this block as written -->", 1)[1]
    return block.split("```bash\n", 1)[1].split("```", 1)[0]


def test_the_readme_pipeline_runs_and_is_consistent(model_dir, data_config, tmp_path) -> None:
    """The README's pipeline, as written, on the small test world and model (named in fast3d.toml, with
    test-speed GAP and decoding settings): every stage on one task, alpha found on the maps eval uses."""
    tiny = tmp_path / "tiny.json"
    tiny.write_text(json.dumps(TINY_GAP))
    (tmp_path / "fast3d.toml").write_text(
        f'[data]\nroot = "{data_config.root}"\n\n[model]\nmodel = "{model_dir}"\n\n'
        f'[defaults.train-gap]\ntokenizer = "{model_dir}"\ngap-config = "{tiny}"\nbatch-size = 8\n\n'
        "[defaults.eval]\nmax-new-tokens = 3\n"
    )
    pipeline = readme_pipeline()
    assert "fast3d extract --tasks scanqa" in pipeline and "--limit" in pipeline
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "100", "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    proc = subprocess.run(["bash", "-c", pipeline], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "runs/eval-gap+sap/metrics.json"
    assert_no_library_warnings(proc.stderr)  # every stage, in a normal run
    result = json.loads((tmp_path / "runs/eval-gap+sap/metrics.json").read_text())
    store = open_store(tmp_path / "p.zarr")
    assert [g.path for g in store.groups()] == ["scanqa/val"]  # search-alpha saw the task eval runs
    assert list(result["samples"]) == ["scanqa"] and result["pruning"]["method"] == "gap+sap"
    assert result["pruning"]["alpha"] == store.attrs["sap"]["alpha"]
    assert store.attrs["sap"]["tasks"] == ["scanqa"]
    assert result["score_ratio"]["value"] is not None or result["score_ratio"]["reason"]


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
