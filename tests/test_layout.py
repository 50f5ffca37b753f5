"""The checkout's root is where a new user runs things: nothing there may hide an installed package.

transformers >= 5.25 imports the PyPI ``kernels`` package; a regular package named ``kernels`` at the
repository root (the old layout of ``fast3d_kernels``) shadowed it, and every import of transformers from
the root failed.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_kernels_folder_is_not_a_package() -> None:
    assert (REPO / "kernels").is_dir()
    assert not (REPO / "kernels" / "__init__.py").exists()
    assert (REPO / "kernels" / "fast3d_kernels" / "__init__.py").is_file()


def _run_from_root(code: str) -> subprocess.CompletedProcess[str]:
    # "-c" puts the working directory first on sys.path, as `python -m ...` from the root does.
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_kernels_from_the_root_is_never_our_folder() -> None:
    code = (
        "import importlib.util, pathlib\n"
        "spec = importlib.util.find_spec('kernels')\n"
        "origin = getattr(spec, 'origin', None)\n"
        "print(origin if origin else 'none')\n"
    )
    result = _run_from_root(code)
    assert result.returncode == 0, result.stderr
    origin = result.stdout.strip()
    assert origin == "none" or not Path(origin).resolve().is_relative_to(REPO / "kernels"), origin


def test_transformers_llama_imports_from_the_root() -> None:
    result = _run_from_root("from transformers import LlamaForCausalLM; import fast3d_kernels, fast3d_cli")
    assert result.returncode == 0, result.stderr[-2000:]


def test_fast3d_kernels_is_importable_in_process() -> None:
    assert importlib.util.find_spec("fast3d_kernels") is not None
