"""Stores at URLs (zarr's store layer): ``file://`` is the local store, also across processes under
``accelerate launch``; ``memory://`` works within one process through every stage that reads or writes a
store; resume, completeness, checksums and refusals behave as on a local path; a bad URL is one line, exit 2.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest

from fast3d_cli.stores import StoreLocation, open_store
from tests.conftest import one_error_line
from tests.test_distributed_eval import launch_command, launch_env
from tests.test_gap_predict import predict_args
from tests.test_gap_train import build_gap_inputs, build_trained_gap, fast3d, train_args

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def inputs(tiny_model, data_config, tmp_path_factory) -> dict[str, Path]:
    found = build_gap_inputs(tiny_model, data_config, tmp_path_factory)
    return {**found, "gap": build_trained_gap(found, data_config)}


@pytest.fixture()
def memory_root():
    """A fresh memory:// prefix, emptied afterwards (the memory file system lives as long as the process)."""
    name = uuid.uuid4().hex
    yield f"memory://{name}"
    with contextlib.suppress(FileNotFoundError):
        fsspec.filesystem("memory").rm(f"/{name}", recursive=True)


def test_a_file_url_is_the_local_path() -> None:
    location = StoreLocation.parse("file:///data/runs/maps%20v1.zarr")
    assert location.local == Path("/data/runs/maps v1.zarr") and location.url is None
    assert StoreLocation.parse("file://localhost/x.zarr").local == Path("/x.zarr")
    assert location.resolved() == str(Path("/data/runs/maps v1.zarr").resolve())
    assert str(location) == "file:///data/runs/maps%20v1.zarr"  # what the user gave, printed on stdout
    memory = StoreLocation.parse("memory://a/b.zarr/")
    assert memory.local is None and memory.url == "memory://a/b.zarr" and memory.name == "b.zarr"


def test_file_url_across_processes_and_ranks_without_work(capsys, inputs, data_config, tmp_path) -> None:
    few = ("--limit", "3")  # one chunk of 5 per group: rank 1 of 2 has nothing to do
    single = tmp_path / "single.zarr"
    code, _, stderr = fast3d(capsys, *predict_args(inputs["gap"], data_config, single, *few))
    assert code == 0, stderr
    url = f"file://{tmp_path}/double.zarr"
    result = subprocess.run(
        launch_command(2, [*predict_args(inputs["gap"], data_config, url, *few)]),
        cwd=tmp_path,
        env=launch_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == [url]
    assert not (tmp_path / "file:").exists()  # no local folder named after the scheme
    double = open_store(tmp_path / "double.zarr")  # the same store, by its path
    for group in open_store(single).groups():
        other = double.group(group.task, group.split)
        assert other.is_complete() and other.n_samples == 3
        assert np.array_equal(group.read("object_scores"), other.read("object_scores"))
    code, stdout, stderr = fast3d(capsys, "info", url, "--json")
    assert code == 0, stderr
    assert json.loads(stdout)["path"] == url and all(g["complete"] for g in json.loads(stdout)["groups"])


def test_memory_stores_through_every_stage(capsys, inputs, data_config, tmp_path, memory_root) -> None:
    capsys_err: list[str] = []

    def ok(*args: str) -> str:
        code, stdout, stderr = fast3d(capsys, *args)
        assert code == 0, stderr
        capsys_err.append(stderr)
        return stdout

    maps, pred = f"{memory_root}/maps.zarr", f"{memory_root}/pred.zarr"
    data = ("--data-root", str(data_config.root))
    ok("extract", "--model", str(inputs["model"]), *data, "-o", maps, "--tasks", "scanrefer")
    warning = f"fast3d: warning: --output {maps} is held in this process's memory and is gone when it exits"
    assert [line for line in capsys_err[-1].splitlines() if "warning" in line] == [
        warning + "; give a path or a persistent URL to keep it"
    ], capsys_err[-1]
    ok("extract", "--model", str(inputs["model"]), *data, "-o", maps, "--tasks", "scanrefer")  # resumes
    summary = json.loads(ok("info", maps, "--json"))
    assert summary["path"] == maps and [g["complete"] for g in summary["groups"]] == [True, True]

    args = train_args({**inputs, "store": maps}, data_config, tmp_path / "gap", "--epochs", "1", "--json")
    record = json.loads(ok(*args))
    assert record["stores"][0]["path"] == maps and record["complete"]

    ok("predict", str(tmp_path / "gap"), *data, "-o", pred, "--tasks", "scanrefer", "--limit", "6")
    assert f"fast3d: warning: --output {pred} is held in this process's memory" in capsys_err[-1]
    ok("search-alpha", pred, "--target", "50", "--tasks", "scanrefer")
    alpha = open_store(pred).attrs["sap"]["alpha"]
    common = ["eval", "--model", str(inputs["model"]), *data, "--tasks", "scanrefer", "--limit", "6"]
    common += ["--num-beams", "1", "--max-new-tokens", "4"]
    out = tmp_path / "eval"
    ok(*common, "--method", "gap+sap", "--maps", pred, "--alpha", "auto", "-o", str(out))
    run = json.loads((out / "run.json").read_text())
    assert run["resolved"]["maps"] == pred and run["resolved"]["tasks"]["scanrefer"]["alpha"] == alpha
    report = json.loads(
        ok("report", str(out), "--true-maps", maps, "--pred-maps", pred, "-o", str(tmp_path / "r"), "--json")
    )
    assert any(Path(f).name == "scene_topview.png" for f in report["files"])


def test_memory_store_resume_checksums_and_refusals(capsys, inputs, data_config, memory_root) -> None:
    store = f"{memory_root}/pred.zarr"
    args = predict_args(inputs["gap"], data_config, store, "--tasks", "scanrefer", "--limit", "12")
    assert fast3d(capsys, *args)[0] == 0
    group = open_store(store).group("scanrefer", "val")
    before = group.read("object_scores")
    memory = fsspec.filesystem("memory")
    chunk = f"/{memory_root.removeprefix('memory://')}/pred.zarr/scanrefer/val/object_scores/c/1/0"
    memory.rm(chunk)  # as if the writer had died before this chunk's put
    assert group.completed_chunks() == {0, 2} and not group.is_complete()
    code, stdout, _ = fast3d(capsys, *args, "--json")
    assert code == 0 and json.loads(stdout)["computed"] == 5  # only the missing chunk
    assert np.array_equal(open_store(store).group("scanrefer", "val").read("object_scores"), before)

    memory.pipe(chunk, b"\x00garbage")  # a corrupt object: the checksum names it
    code, stdout, stderr = fast3d(capsys, "info", store)
    assert code == 2 and stdout == "" and one_error_line(stderr)
    assert f"cannot read chunk {store}/scanrefer/val/object_scores/c/1/0" in stderr

    import zarr

    zarr.open_group(f"{memory_root}/plain.zarr", mode="w").attrs["other"] = 1
    for command in (["info", f"{memory_root}/plain.zarr"], ["search-alpha", f"{memory_root}/none.zarr"]):
        code, stdout, stderr = fast3d(capsys, *command)
        assert code == 2 and one_error_line(stderr)
    assert "is not a fast3d store" in fast3d(capsys, "info", f"{memory_root}/plain.zarr")[2]
    extract = ["extract", "--model", str(inputs["model"]), "--data-root", str(data_config.root)]
    code, _, stderr = fast3d(capsys, *extract, "--tasks", "scanrefer", "-o", store)
    assert code == 2 and "this stage writes 'attention' maps" in stderr and one_error_line(stderr)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("foo://bucket/maps.zarr", "unknown URL scheme 'foo'"),
        ("ftp://127.0.0.1:9/maps.zarr", "cannot access the store ftp://127.0.0.1:9/maps.zarr"),
        ("file://relative/maps.zarr", "a file:// URL needs an absolute path"),
    ],
)
def test_bad_urls_are_one_line_before_any_work(capsys, data_config, url, message) -> None:
    for args in (["info", url], ["extract", "--data-root", str(data_config.root), "-o", url]):
        code, stdout, stderr = fast3d(capsys, *args)
        assert code == 2 and stdout == "" and one_error_line(stderr), stderr
        assert message in stderr and "loading the target model" not in stderr


def test_a_missing_backend_names_the_package_to_install(capsys) -> None:
    import importlib.util

    for url, package, extra in (
        ("s3://bucket/maps.zarr", "s3fs", "s3"),
        ("gs://b/maps.zarr", "gcsfs", "gcs"),
    ):
        if importlib.util.find_spec(package) is not None:
            continue  # installed: the URL is a real store
        code, _, stderr = fast3d(capsys, "info", url)
        assert code == 2 and one_error_line(stderr)
        assert f"need the {package} package: pip install 'fast3d[{extra}]'" in stderr
