"""Options are checked before torch or transformers load, and every refusal (fast3d's own, Typer's, a bad
value from fast3d.toml) is one ``fast3d: error:`` line with exit code 2."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fast3d_cli import __version__

from .conftest import fast3d

# Runs each invocation in one fresh process and reports, after each, whether torch/transformers were imported.
PROBE = """
import json, sys
from fast3d_cli.cli.app import run
for args in json.loads(sys.argv[1]):
    code = run(args)
    loaded = sorted(m for m in ("torch", "transformers") if m in sys.modules)
    print(json.dumps({"args": args, "code": code, "loaded": loaded}), flush=True)
"""

BAD_INVOCATIONS = [
    ["eval", "--method", "random", "--ratio", "150"],
    ["eval", "--method", "gap+sap", "--maps", "p.zarr"],
    ["eval", "--device", "gpu7"],
    ["eval", "--dtype", "int8"],
    ["eval", "--num-beams", "0"],
    ["eval", "--repetition-penalty", "0"],
    ["eval", "--scan2cap-sos-eos", "both"],
    ["eval", "-o", "/dev/null/x"],
    ["eval", "-o", "/proc/x"],
    ["eval", "--tasks", "scanqa,nope"],
    ["eval", "--bootstrap", "-1"],
    ["eval", "--bootstrap-seed", "-2"],
    ["extract", "--tasks", "bogus"],
    ["extract", "--dtype", "int8"],
    ["extract", "--device", "tpu"],
    ["extract", "-o", "/dev/null/m.zarr"],
    ["extract", "-o", "/proc/x.zarr"],
    ["predict", "gap", "-o", "/proc/p.zarr"],
    ["train-gap", "maps.zarr", "-o", "/sys/gap"],
    ["train-gap", "maps.zarr", "--select-on", "bogus"],
    ["train-gap", "maps.zarr", "--mixed-precision", "fp8"],
    ["train-gap", "maps.zarr", "--limit", "0"],
    ["train-gap", "maps.zarr", "-o", "/dev/null/gap"],
    ["predict", "gap", "--dtype", "int8"],
    ["predict", "gap", "--limit", "0"],
    ["predict", "gap", "--split", "test"],
    ["search-alpha", "p.zarr", "--weighting", "z"],
    ["compare", "-o", "c", "-m", "random,nosuch"],
    ["compare", "-o", "c", "-m", "random", "--ratios", "0.5"],
    ["compare", "-o", "c", "-m", "random", "--device", "gpu"],
    ["compare", "-o", "/dev/null/c", "-m", "random"],
    ["compare", "-o", "c", "-m", "gap+sap", "--maps", "nope.zarr"],
    ["demo", "--target", "150"],
    ["demo", "--device", "gpu"],
    ["demo", "--gap-lr", "0"],
    ["report", "r", "--split", "zz"],
    ["report", "r", "-o", "/dev/null/report"],
    ["info", "nope.zarr"],
    ["sample", "build-world", "-o", "/dev/null/world"],
    ["sample", "build-world", "--objects", "60-20"],
    ["sample", "train-model", "--steps", "0"],
    ["eval", "--bogus"],
]


def test_bad_options_are_refused_before_torch_loads(tmp_path: Path) -> None:
    (tmp_path / "fast3d.toml").write_text("[defaults.eval]\nbatch-size = 0\n")
    cases = [*BAD_INVOCATIONS, ["eval", "--method", "none"]]  # the last: a bad value from fast3d.toml
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(cases)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    reports = [json.loads(line) for line in done.stdout.splitlines()]
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(reports) == len(cases) and len(errors) == len(cases), done.stderr
    for report, error in zip(reports, errors, strict=True):
        assert report["code"] == 2 and report["loaded"] == [], (report, error)
        assert error.startswith("fast3d: error: "), (report["args"], error)
    assert "Traceback" not in done.stderr and "╭" not in done.stderr
    assert "fast3d.toml [defaults.eval] batch-size = 0" in errors[-1], errors[-1]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["eval", "--limit", "0"], "eval: invalid value for '--limit'"),
        (["eval", "--num-beams", "0"], "eval: invalid value for '--num-beams'"),
        (["eval", "--bogus"], "eval: no such option: --bogus"),
        (["info"], "info: missing argument 'store'"),
        (["bogus"], "no such command 'bogus'"),
    ],
)
def test_typer_errors_are_one_line(capsys, args: list[str], expected: str) -> None:
    code, stdout, stderr = fast3d(capsys, *args)
    assert code == 2 and stdout == "", stderr
    assert stderr.count("\n") == 1 and stderr.startswith("fast3d: error: "), stderr
    assert expected in stderr and "--help" in stderr, stderr


def test_values_from_fast3d_toml_name_their_source(capsys, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("fast3d.toml").write_text('[defaults.eval]\nlimit = 0\nmethod = "bogus"\n')
    code, _, stderr = fast3d(capsys, "eval")
    assert code == 2 and stderr.count("\n") == 1, stderr
    assert "--limit" in stderr and "fast3d.toml [defaults.eval] limit = 0" in stderr, stderr
    # the whole file is checked before any command runs: a flag does not hide a bad value in it
    code, _, stderr = fast3d(capsys, "info", "x.zarr")
    assert code == 2 and "fast3d.toml [defaults.eval] limit = 0" in stderr, stderr
    Path("fast3d.toml").write_text('[defaults.eval]\nmethod = "bogus"\n')
    code, _, stderr = fast3d(capsys, "eval", "--limit", "3")
    assert code == 2 and stderr.count("\n") == 1, stderr
    assert "unknown --method 'bogus'" in stderr and "[defaults.eval] method = 'bogus'" in stderr, stderr
    Path("fast3d.toml").write_text('[defaults.eval]\nmethod = "random"\n')
    code, _, stderr = fast3d(capsys, "eval", "--limit", "3", "--method", "nonsense")  # the flag: no file note
    assert code == 2 and "unknown --method 'nonsense'" in stderr and "fast3d.toml" not in stderr, stderr


def test_version(capsys) -> None:
    code, stdout, _ = fast3d(capsys, "--version")
    assert code == 0 and stdout == f"fast3d {__version__}\n"


def test_config_help_shows_its_tables(capsys) -> None:
    code, stdout, _ = fast3d(capsys, "eval", "--help")
    text = " ".join(stdout.replace("│", " ").split())
    assert code == 0 and "[data]" in text and "[defaults.*]" in text, stdout


@pytest.mark.parametrize("command", ["info", "search-alpha"])
def test_empty_stdin_says_no_path(capsys, monkeypatch, command: str) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n"))
    code, stdout, stderr = fast3d(capsys, command, "-")
    assert code == 2 and stdout == "" and "no path on stdin" in stderr, stderr


HEAVY_MODULES = ("torch", "transformers", "scipy", "zarr", "matplotlib", "numpy", "accelerate",
                 "pycocoevalcap")


def test_help_and_version_import_no_heavy_module() -> None:
    """--help (of fast3d and of every command) and --version are instant: none of the heavy libraries load."""
    probe = (
        "import json, sys, typer\n"
        "from fast3d_cli.cli.app import app, run\n"
        "from fast3d_cli.cli.config_file import commands_of\n"
        "runs = [['--help'], ['--version']]\n"
        "runs += [[*name, '--help'] for name in commands_of(typer.main.get_command(app))]\n"
        "codes = [run(args) for args in runs]\n"
        f"print(json.dumps([codes, sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules)]))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    codes, loaded = json.loads(done.stdout.splitlines()[-1])
    assert set(codes) == {0} and loaded == [], (codes, loaded)
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "fast3d_cli", "--help"], capture_output=True, text=True
    )
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert done.returncode == 0 and not imported & set(HEAVY_MODULES), sorted(imported & set(HEAVY_MODULES))
