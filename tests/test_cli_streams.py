"""What a user sees on stderr when fast3d runs as a separate process (a pipeline stage, a batch job): no
library warnings, progress lines when stderr is not a terminal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600, **env: str):
    """``python -m fast3d_cli ARGS`` in a fresh process, stderr a pipe (not a terminal)."""
    environment = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS",)}
    environment.update(OMP_NUM_THREADS="1", **env)
    return subprocess.run(
        [sys.executable, "-m", "fast3d_cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=environment,
    )


def assert_no_library_warnings(stderr: str) -> None:
    lowered = stderr.lower()
    assert "warning" not in lowered and "deprecated" not in lowered, stderr


def test_eval_prints_no_library_warnings(model_dir: Path, data_config, tmp_path: Path) -> None:
    """transformers deprecated ``past_key_values`` (removed in 5.40): the decoders pass ``cache``."""
    common = ["--model", str(model_dir), "--data-root", str(data_config.root), "--tasks", "scanqa"]
    common += ["--limit", "3", "--num-beams", "2", "--max-new-tokens", "3"]
    for name, extra in (("eval-none", []), ("eval-random", ["--method", "random", "--keep", "5"])):
        done = run_cli("eval", *common, *extra, "-o", str(tmp_path / name))  # random reuses eval-none
        assert done.returncode == 0, done.stderr
        assert_no_library_warnings(done.stderr)
