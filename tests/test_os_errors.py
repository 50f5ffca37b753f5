"""Unwritable outputs: a read-only file system and a full disk (real ones: tmpfs mounts in a private mount
namespace, ``unshare -rm``) end in one ``fast3d: error:`` line naming the path and exit 2, for every command
that writes, and what was already written stays readable and unchanged. (A path through a file,
``-o /dev/null/x``, is in tests/test_cli_options.py.)"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.test_crash_safety import build_random_gap

pytestmark = pytest.mark.usefixtures("one_thread")

RUNNER = textwrap.dedent(
    """
    import contextlib, io, json, os, shutil, subprocess, sys
    from pathlib import Path
    from fast3d_cli.cli.app import run

    root, model, data = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    gap = sys.argv[4]
    full, ro, saved = root / "full", root / "ro", root / "saved"
    for d in (full, ro, saved):
        d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(full)], check=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(ro)], check=True)
    results = []

    def cli(name, *args):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = run([str(a) for a in args])
        results.append({"name": name, "code": code, "stderr": err.getvalue()})

    common = ["--model", model, "--data-root", data]
    small = ["--tasks", "scanqa", "--num-beams", "1", "--max-new-tokens", "2"]
    # what is already there before the disk fills or the mount turns read-only
    extract = ["--split", "train,val", "--limit", "8", "--chunk-size", "4"]
    for where in (full, ro):
        cli("setup extract", "extract", *common, *extract, "--tasks", "scanqa", "-o", where / "maps.zarr")
        cli("setup dense", "eval", *common, *small, "--limit", "4", "-o", where / "eval-none")
        cli("setup random", "eval", *common, *small, "--limit", "4", "--method", "random", "--keep", "5",
            "-o", where / "eval-random")
    cli("setup predict", "predict", gap, "--data-root", data, "--tasks", "scanqa", "-o", ro / "pred.zarr")
    shutil.copytree(full, saved / "full")
    subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
    with open(full / "filler", "wb") as handle:  # fill the disk
        with contextlib.suppress(OSError):
            while True:
                handle.write(b"x" * 65536)
                handle.flush()

    for where, label in ((full, "full"), (ro, "read-only")):
        cli(f"{label} extract more", "extract", *common, *extract, "--tasks", "scanqa,sqa3d",
            "-o", where / "maps.zarr")
        # a rerun rewrites run.json and metrics.json (atomically: the old ones must survive)
        cli(f"{label} eval rerun", "eval", *common, *small, "--limit", "4", "-o", where / "eval-none")
        # the top view is drawn whatever the score ratio (n/a here: the dense BLEU-4 of 2-token answers is
        # smoothing residue, a negligible dense score)
        cli(f"{label} report", "report", where / "eval-none", where / "eval-random", "--true-maps",
            where / "maps.zarr", "-o", where / "report")
        cli(f"{label} train-gap", "train-gap", where / "maps.zarr", "--data-root", data, "--tokenizer", model,
            "--epochs", "1", "--batch-size", "1", "--holdout", "0.5", "-o", where / "gap")
        cli(f"{label} predict", "predict", gap, "--data-root", data, "--tasks", "scanqa", "-o",
            where / "pred2.zarr")
        cli(f"{label} build-world", "sample", "build-world", "-o", where / "world")
        cli(f"{label} demo", "demo", "-o", where / "demo", "--train-limit", "8", "--limit", "2", "--epochs",
            "1", "--num-beams", "1")
    cli("read-only search-alpha", "search-alpha", ro / "pred.zarr", "--target", "80")

    # what was written before the failures is unchanged
    import numpy as np
    from fast3d_cli.stores import open_store

    def arrays(path):
        store = open_store(path)
        return {f"{g.path}/{n}": g.read(n) for g in store.groups() for n in g.array_names()}

    now, before = arrays(full / "maps.zarr"), arrays(saved / "full" / "maps.zarr")
    same_store = now.keys() == before.keys() and all(
        np.array_equal(now[k], before[k], equal_nan=True) for k in now
    )
    files = ["eval-none/run.json", "eval-none/metrics.json", "eval-none/predictions/scanqa.jsonl",
             "eval-random/metrics.json", "maps.zarr/zarr.json"]
    same_files = {f: (full / f).read_bytes() == (saved / "full" / f).read_bytes() for f in files}
    leftovers = sorted(str(p) for p in full.rglob("*.partial"))
    print(json.dumps({"results": results, "same_store": same_store, "same_files": same_files,
                      "leftovers": leftovers}))
    """
)


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = "mkdir -p /tmp/.fast3d-probe && mount -t tmpfs tmpfs /tmp/.fast3d-probe"
    done = subprocess.run(["unshare", "-rm", "sh", "-c", probe], capture_output=True)
    return done.returncode == 0


@pytest.mark.skipif(not _unshare_works(), reason="needs unshare -rm to mount a tmpfs (user namespaces)")
def test_unwritable_outputs_are_one_line_and_damage_nothing(
    model_dir: Path, data_config, tmp_path: Path
) -> None:
    gap = build_random_gap(model_dir, data_config, tmp_path / "gap")
    (tmp_path / "runner.py").write_text(RUNNER)
    root = tmp_path / "mounts"
    root.mkdir()
    done = subprocess.run(
        ["unshare", "-rm", sys.executable, str(tmp_path / "runner.py"), str(root), str(model_dir),
         str(data_config.root), str(gap)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.splitlines()[-1])
    results = report["results"]
    setups = [r for r in results if r["name"].startswith("setup")]
    assert all(r["code"] == 0 for r in setups), [(r["name"], r["stderr"][-500:]) for r in setups]
    failures = [r for r in results if not r["name"].startswith("setup")]
    assert len(failures) == 15
    for result in failures:
        stderr = result["stderr"]
        lines = [line for line in stderr.splitlines() if line.startswith("fast3d: error:")]
        assert result["code"] == 2 and "Traceback" not in stderr, (result["name"], stderr[-2000:])
        assert len(lines) == 1 and stderr.rstrip().splitlines()[-1] == lines[0], (result["name"], stderr)
        assert str(root) in lines[0], (result["name"], lines[0])
        reason = "read-only file system" if result["name"].startswith("read-only") else "no space left"
        assert reason in lines[0].lower(), (result["name"], lines[0])
    assert report["same_store"], "a failed write changed the store"
    assert all(report["same_files"].values()), report["same_files"]
    assert report["leftovers"] == [], report["leftovers"]


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc and /sys")
@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["eval", "-o", "/proc/x"], "--output /proc/x"),
        (["eval", "-m", "random", "--keep", "3", "-o", "ok", "--baseline", "/sys/b"], "--baseline /sys/b"),
        (["extract", "-o", "/proc/x.zarr"], "--output /proc/x.zarr"),
        (["predict", "gap", "-o", "/proc/new/p.zarr"], "--output /proc/new/p.zarr"),
        (["train-gap", "maps.zarr", "-o", "/sys/gap"], "--output /sys/gap"),
        (["demo", "-o", "/proc/demo"], "--output /proc/demo"),
        (["report", "r", "-o", "/sys/kernel/report"], "--output /sys/kernel/report"),
        (["sample", "build-world", "-o", "/proc/world"], "--output /proc/world"),
    ],
)
def test_outputs_where_nothing_can_be_created_are_refused_first(capsys, tmp_path, monkeypatch, args, option):
    """/proc and /sys pass a permission check (root may write there) but refuse every mkdir: the refusal is
    the first thing a command does, one line naming the option (tests/test_cli_options.py: before torch)."""
    from .conftest import fast3d

    monkeypatch.chdir(tmp_path)
    code, stdout, stderr = fast3d(capsys, *args)
    assert code == 2 and stdout == "" and stderr.count("\n") == 1, stderr
    assert stderr.startswith(f"fast3d: error: cannot create {option}: nothing can be created in "), stderr
