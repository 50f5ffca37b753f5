"""fast3d.toml: data roots, model paths and command defaults below the flags; `fast3d config show`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import fast3d


@pytest.fixture
def in_tmp(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_config_show_names_the_source_of_each_setting(capsys, in_tmp) -> None:
    (in_tmp / "fast3d.toml").write_text(
        '[data]\nroot = "ann"\n[model]\nmodel = "models/m"\n[defaults.eval]\nbatch-size = 32\nnum_beams = 3\n'
        "[defaults.sample.build-world]\nseed = 5\n"
    )
    code, stdout, _ = fast3d(capsys, "config", "show", "--json")
    assert code == 0
    rows = {r["setting"]: (r["value"], r["source"]) for r in json.loads(stdout)}
    assert rows["data.root"] == (str(in_tmp / "ann"), "fast3d.toml")
    assert rows["data.feats_3d"][1] == "built-in default"
    assert rows["eval --model"] == (str(in_tmp / "models" / "m"), "fast3d.toml")
    assert rows["extract --model"][0] == str(in_tmp / "models" / "m")
    assert rows["eval --batch-size"] == ("32", "fast3d.toml") and rows["eval --num-beams"][0] == "3"
    assert rows["sample build-world --seed"] == ("5", "fast3d.toml")
    assert "eval --max-new-tokens" not in rows
    code, stdout, _ = fast3d(capsys, "config", "show", "--all", "--data-root", "elsewhere", "--json")
    rows = {r["setting"]: (r["value"], r["source"]) for r in json.loads(stdout)}
    assert rows["eval --max-new-tokens"] == ("64", "built-in default")
    assert rows["data.root"] == ("elsewhere", "flag --data-root")


def test_file_defaults_apply_and_flags_win(capsys, in_tmp, model_dir, data_config) -> None:
    (in_tmp / "fast3d.toml").write_text(
        f'[data]\nroot = "{data_config.root}"\n[model]\nmodel = "{model_dir}"\n'
        '[defaults.eval]\nnum-beams = 1\nmax-new-tokens = 2\nlimit = 2\ntasks = "scanqa"\n'
    )
    code, stdout, stderr = fast3d(capsys, "eval", "-o", "a", "--json")
    assert code == 0, stderr
    assert json.loads(stdout)["run"]["settings"]["generation"]["num_beams"] == 1
    assert json.loads(stdout)["samples"] == {"scanqa": 2}
    code, stdout, _ = fast3d(capsys, "eval", "-o", "b", "--max-new-tokens", "3", "--json")
    assert json.loads(stdout)["run"]["settings"]["generation"]["max_new_tokens"] == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[defaults.eval]\nbogus = 1\n", "eval has no option 'bogus'"),
        ("[defaults.nothing]\nx = 1\n", "[defaults.nothing] is not a command table"),
        ("[model]\nweights = 'x'\n", "unknown [model] key(s) weights"),
        ("[extras]\n", "unknown table(s) extras"),
        ("[data\n", "invalid TOML"),
    ],
)
def test_bad_config_files_exit_2(capsys, in_tmp, text, message) -> None:
    (in_tmp / "fast3d.toml").write_text(text)
    code, stdout, stderr = fast3d(capsys, "config", "show")
    assert code == 2 and message in stderr and stdout == ""
    code, _, stderr = fast3d(capsys, "info", "--config", str(in_tmp / "missing.toml"), "x")
    assert code == 2 and "config file not found" in stderr


def test_no_arguments_shows_the_stages_in_pipeline_order(capsys) -> None:
    code, stdout, _ = fast3d(capsys)
    assert code == 0
    names = ("demo", "extract", "train-gap", "predict", "search-alpha", "eval", "report")
    order = [stdout.index(f"│ {name} ") for name in names]
    assert order == sorted(order)


def test_every_command_help_has_a_runnable_example(capsys) -> None:
    import typer

    from fast3d_cli.cli.app import app
    from fast3d_cli.cli.config_file import commands_of, is_group

    for name, command in commands_of(typer.main.get_command(app)).items():
        if is_group(command):
            continue
        code, stdout, _ = fast3d(capsys, *name, "--help")
        assert code == 0
        assert "Example" in stdout and "fast3d " + " ".join(name) in stdout, name


# Each case: a fast3d.toml, and the part of the one error line that names its file, table, key and problem.
BAD_VALUES = [
    ("[data]\nroot = 5\n", "fast3d.toml [data] root = 5: must be a non-empty path string"),
    ('[data]\nmax_obj_num = "x"\n', "fast3d.toml [data] max_obj_num = 'x': must be an integer >= 1"),
    ("[data]\nmax_obj_num = 0\n", "fast3d.toml [data] max_obj_num = 0: must be an integer >= 1"),
    ("[data]\ntasks = 5\n", "fast3d.toml [data] tasks = 5: unknown key; valid: root,"),
    ('[data]\nfeats_3d = "f{x}.pt"\n', "feats_3d = 'f{x}.pt': may hold no {placeholder} other than {split}"),
    ("data = 3\n", "fast3d.toml [data]: must be a table"),
    ("[model]\nmodel = 5\n", "fast3d.toml [model] model = 5: invalid --model: must be a path string"),
    ('[model]\nlora_alpha = "x"\n', "[model] lora_alpha = 'x': invalid --lora-alpha: must be a number"),
    ("[defaults.eval]\ntasks = 5\n", "tasks = 5: invalid --tasks: must be a string, got an integer"),
    ('[defaults.eval]\ntasks = "scanqa,nope"\n', "'scanqa,nope': invalid --tasks: unknown task 'nope'"),
    ('[defaults.eval]\nbatch-size = "8"\n', "'8': invalid --batch-size: must be an integer, got a"),
    ("[defaults.eval]\nbatch-size = [1]\n", "[1]: invalid --batch-size: must be an integer, got an"),
    ("[defaults.eval]\noverwrite = 1\n", "overwrite = 1: invalid --overwrite: must be true or false"),
    ("[defaults.train-gap]\nholdout = 2\n", "holdout = 2: invalid --holdout: input should be less"),
    ('[defaults.eval]\ndevice = "tpu"\n', "[defaults.eval] device = 'tpu': --device must be"),
    ('[defaults.eval]\ndtype = "int8"\n', "[defaults.eval] dtype = 'int8': unknown --dtype 'int8'"),
    ("[defaults.eval]\nratio = 300\n", "[defaults.eval] ratio = 300: --ratio must be in [0, 100)"),
    ('[defaults.eval]\ngranularity = "x"\n', "[defaults.eval] granularity = 'x': unknown --granularity"),
    ('[defaults.info]\nstore = "x"\n', "[defaults.info] store = 'x': store is an argument"),
]

# Writes each file, runs eval and extract in this one process, and reports whether torch was imported.
BAD_VALUES_PROBE = """
import json, sys
from pathlib import Path
from fast3d_cli.cli.app import run
for text in json.loads(sys.argv[1]):
    Path("fast3d.toml").write_text(text)
    for args in (["eval", "--limit", "1"], ["extract", "--limit", "1"]):
        code = run(args)
        print(json.dumps({"code": code, "torch": "torch" in sys.modules}), flush=True)
"""


def test_every_key_of_every_table_is_checked_before_anything_loads(tmp_path: Path) -> None:
    import subprocess
    import sys

    texts = [text for text, _ in BAD_VALUES]
    done = subprocess.run(
        [sys.executable, "-c", BAD_VALUES_PROBE, json.dumps(texts)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    reports = [json.loads(line) for line in done.stdout.splitlines()]
    errors = done.stderr.splitlines()
    assert len(reports) == len(errors) == 2 * len(BAD_VALUES), done.stderr
    for i, (report, error) in enumerate(zip(reports, errors, strict=True)):
        expected = BAD_VALUES[i // 2][1]
        assert report == {"code": 2, "torch": False} and error.startswith("fast3d: error: "), (report, error)
        assert expected in error, (expected, error)


def test_config_show_checks_the_file_too(capsys, in_tmp) -> None:
    (in_tmp / "fast3d.toml").write_text("[data]\nmax_obj_num = 0\n")
    code, stdout, stderr = fast3d(capsys, "config", "show")
    assert code == 2 and stdout == "" and stderr.count("\n") == 1, stderr
    assert "fast3d.toml [data] max_obj_num = 0: must be an integer >= 1" in stderr


def test_config_show_into_a_file_keeps_whole_values(capsys, in_tmp) -> None:
    """stdout is no terminal (capsys, a file, a pipe): values are never wrapped or cut at 80 columns."""
    root = in_tmp / ("a-long-folder-name-" * 6) / "annotations"
    (in_tmp / "fast3d.toml").write_text(f'[data]\nroot = "{root}"\n')
    code, stdout, _ = fast3d(capsys, "config", "show")
    assert code == 0
    (line,) = [line for line in stdout.splitlines() if line.startswith("data.root ")]
    assert line.split() == ["data.root", str(root), "fast3d.toml"], line
