"""Progress when stderr is not a terminal (pipelines, batch jobs, cluster logs): timestamped lines with
done/total, rate and ETA every 10 s or 5%, a line per phase, a heartbeat, the loss of train-gap."""

from __future__ import annotations

import io
import itertools
import re
from datetime import datetime
from pathlib import Path

import pytest

from fast3d_cli.cli.progress import ProgressReporter
from tests.test_gap_train import build_gap_inputs, train_args

from .conftest import fast3d
from .test_cli_streams import assert_no_library_warnings, run_cli

STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
BAR = re.compile(
    rf"^{STAMP} fast3d (\S+): (.+) (\d+)/(\d+) \((\d+)%\), (rate \?|[\d.e+-]+ \w+/s), (ETA \S+|done in \S+)"
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def reporter(clock: Clock) -> tuple[ProgressReporter, io.StringIO]:
    stream = io.StringIO()
    return ProgressReporter("extract", stream=stream, terminal=False, clock=clock), stream


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_plain_lines_every_five_percent_or_ten_seconds() -> None:
    clock = Clock()
    progress, stream = reporter(clock)
    progress.update("scanqa/val", 0, 200)
    assert len(lines(stream)) == 1 and "0/200 (0%), rate ?, ETA ?" in lines(stream)[0]
    clock.now += 1
    progress.update("scanqa/val", 4, 200)  # 2%: not yet
    assert len(lines(stream)) == 1
    clock.now += 1
    progress.update("scanqa/val", 10, 200)  # 5%
    assert len(lines(stream)) == 2
    assert "10/200 (5%), 5 samples/s, ETA 0:00:38" in lines(stream)[-1], lines(stream)[-1]
    clock.now += 10
    progress.update("scanqa/val", 12, 200)  # 6%, but 10 s since the last line
    assert len(lines(stream)) == 3 and "12/200 (6%)" in lines(stream)[-1]
    clock.now += 1
    progress.update("scanqa/val", 200, 200)
    assert "200/200 (100%)" in lines(stream)[-1] and "done in 0:00:13" in lines(stream)[-1]
    assert all(BAR.match(line) for line in lines(stream)), lines(stream)


def test_phases_and_heartbeat() -> None:
    clock = Clock()
    progress, stream = reporter(clock)
    progress.phase("loading the target model (m)")
    assert re.match(rf"^{STAMP} fast3d extract: loading the target model \(m\)$", lines(stream)[0])
    clock.now += 9
    progress.heartbeat()
    assert len(lines(stream)) == 1
    clock.now += 1
    progress.heartbeat()  # 10 s without a line: the phase again, with its duration
    assert lines(stream)[-1].endswith("loading the target model (m) (0:00:10 so far)")
    progress.update("scanqa/val", 3, 50)
    clock.now += 12
    progress.heartbeat()  # a slow batch: the bar again, with its rate so far
    assert BAR.match(lines(stream)[-1]) and "3/50" in lines(stream)[-1]


def test_the_demo_counts_training_in_steps_among_samples() -> None:
    """The demo's reporter counts samples; its train-gap bar counts optimizer steps and says so."""
    from types import SimpleNamespace

    from fast3d_cli.cli.progress import training_progress

    clock = Clock()
    stream = io.StringIO()
    progress = ProgressReporter("demo", stream=stream, terminal=False, clock=clock)
    progress.update("scanqa/val", 0, 10)
    clock.now += 2
    progress.update("scanqa/val", 10, 10)
    event = SimpleNamespace(phase="train", step=0, total_steps=40, epoch=1, epochs=2, loss=None, lr=None)
    training_progress(progress)(event)
    clock.now += 4
    training_progress(progress)(SimpleNamespace(**{**vars(event), "step": 20}))
    assert "10/10 (100%), 5 samples/s" in lines(stream)[1], lines(stream)
    assert "train 20/40 (50%), 5 steps/s" in lines(stream)[-1], lines(stream)


def test_disabled_reporter_prints_nothing() -> None:
    stream = io.StringIO()
    with ProgressReporter("extract", stream=stream, terminal=False, enabled=False) as progress:
        progress.phase("x")
        progress.update("a", 1, 2)
    assert stream.getvalue() == ""


def _times(stderr: str) -> list[datetime]:
    stamps = re.findall(rf"^({STAMP}) fast3d ", stderr, flags=re.MULTILINE)
    return [datetime.strptime(s, "%Y-%m-%d %H:%M:%S") for s in stamps]


def test_extract_progress_in_a_log(model_dir: Path, data_config, tmp_path: Path) -> None:
    """The issue's case: ``fast3d extract ... 2> log`` left the log empty for the whole run."""
    args = ["extract", "--model", str(model_dir), "--data-root", str(data_config.root), "--tasks", "scanqa"]
    done = run_cli(*args, "--chunk-size", "4", "-o", str(tmp_path / "maps.zarr"))
    assert done.returncode == 0, done.stderr
    log = done.stderr
    assert re.search(rf"^{STAMP} fast3d extract: loading the target model", log, re.MULTILINE), log
    bars = [m for m in map(BAR.match, log.splitlines()) if m]
    assert {m.group(2) for m in bars} == {"scanqa/train", "scanqa/val"}, log
    assert any(re.match(r"[\d.e+-]+ samples/s", m.group(6)) for m in bars), log
    assert all(int(m.group(3)) <= int(m.group(4)) for m in bars)
    times = _times(log)
    assert times and max((b - a).total_seconds() for a, b in itertools.pairwise(times)) <= 15
    assert_no_library_warnings(log)


@pytest.mark.usefixtures("one_thread")
def test_train_gap_reports_steps_and_loss(capsys, tiny_model, data_config, tmp_path_factory) -> None:
    inputs = build_gap_inputs(tiny_model, data_config, tmp_path_factory)
    out = tmp_path_factory.mktemp("progress") / "gap"
    code, _, stderr = fast3d(capsys, *train_args(inputs, data_config, out, "--epochs", "1"))
    assert code == 0, stderr
    steps = [line for line in stderr.splitlines() if BAR.match(line) and " train " in f" {line} "]
    assert steps and all(re.search(r"epoch 1/1, loss \d+\.\d{4}, lr ", line) for line in steps), stderr
    assert re.search(rf"^{STAMP} fast3d train-gap: reading the attention maps", stderr, re.MULTILINE)
    assert re.search(rf"^{STAMP} fast3d train-gap: evaluating after step", stderr, re.MULTILINE)
