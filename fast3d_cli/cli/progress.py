"""Progress on stderr, for a terminal and for logs.

On a terminal: rich bars with done/total, rate, elapsed time and ETA. Anywhere else (a pipeline, a batch
job, a cluster log): plain timestamped lines, one per bar at least every 10 s or every 5% (whichever comes
first) with done/total, rate and ETA, and a line when a phase starts (loading a model, scoring). A
heartbeat repeats the current phase every 10 s while nothing else is printed, so no stage is silent for
longer than that once it starts working.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import IO, Any

INTERVAL_S = 10.0  # plain lines: at least this often
STEP_PERCENT = 5.0  # plain lines: at every step of this many percent


def _duration(seconds: float) -> str:
    return str(timedelta(seconds=max(0, round(seconds))))


@dataclass
class _Bar:
    """One counter (a task, a store group, the training steps) and what its rate and ETA derive from."""

    name: str
    total: int
    started: float
    first_done: int
    done: int = 0
    status: str = ""
    unit: str = ""  # what done counts ("samples", "steps"): this bar's own, else the reporter's
    printed_at: float = field(default=float("-inf"))
    printed_percent: float = -1.0

    def rate(self, now: float) -> float | None:
        elapsed, counted = now - self.started, self.done - self.first_done
        return counted / elapsed if elapsed > 0 and counted > 0 else None

    def line(self, now: float, unit: str) -> str:
        percent = 100.0 * self.done / self.total if self.total else 100.0
        rate = self.rate(now)
        speed = "rate ?" if rate is None else f"{rate:.3g} {self.unit or unit}/s"
        if self.done >= self.total:
            eta = f"done in {_duration(now - self.started)}"
        else:
            eta = "ETA ?" if rate is None else f"ETA {_duration((self.total - self.done) / rate)}"
        status = f", {self.status}" if self.status else ""
        return f"{self.name} {self.done}/{self.total} ({percent:.0f}%), {speed}, {eta}{status}"


class ProgressReporter:
    """The progress of one command (``stage``, e.g. "extract") on ``stream`` (default stderr).

    ``update(name, done, total, status)`` moves a bar (the library's progress callbacks call it); ``phase``
    announces a phase that has no counter. Use as a context manager: it starts the heartbeat (plain mode) and
    stops the display at the end. ``enabled=False`` (ranks other than 0) prints nothing.
    """

    def __init__(
        self,
        stage: str,
        *,
        unit: str = "samples",
        enabled: bool = True,
        stream: IO[str] | None = None,
        terminal: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        interval: float = INTERVAL_S,
    ) -> None:
        self.stage = stage
        self.unit = unit
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.terminal = _is_terminal(self.stream) if terminal is None else terminal
        self.clock = clock
        self.interval = interval
        self._bars: dict[str, _Bar] = {}
        self._phase = ""
        self._phase_started = clock()
        self._printed_at = clock()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rich: Any = None
        self._rich_ids: dict[str, Any] = {}

    # ------------------------------------------------------------------ context
    def __enter__(self) -> ProgressReporter:
        if self.enabled and not self.terminal:
            self._thread = threading.Thread(target=self._beat, name="fast3d-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._rich is not None:
            self._rich.stop()

    # ------------------------------------------------------------------ API
    def phase(self, message: str) -> None:
        """A phase starts (e.g. "loading the target model"): one line now; the heartbeat repeats it."""
        if not self.enabled:
            return
        with self._lock:
            self._phase, self._phase_started = message, self.clock()
            if self.terminal:
                self._rich_progress().console.print(f"{self.stage}: {message}", markup=False, highlight=False)
            else:
                self._print(message)

    def update(self, name: str, done: int, total: int, status: str = "", unit: str = "") -> None:
        """Bar ``name`` is at ``done`` of ``total`` (``status``: extra text such as the loss; ``unit``: what
        it counts when not the reporter's unit, e.g. the demo's training steps among its samples)."""
        if not self.enabled:
            return
        with self._lock:
            now = self.clock()
            bar = self._bars.get(name)
            if bar is None or done < bar.done:  # a new counter, or one that starts over
                bar = self._bars[name] = _Bar(name, total, now, done)
            bar.done, bar.total, bar.status, bar.unit = done, total, status, unit
            self._phase = ""
            if self.terminal:
                self._rich_update(bar, now)
            elif self._due(bar, now):
                self._print(bar.line(now, self.unit))
                bar.printed_at = now
                bar.printed_percent = self._percent(bar)

    # ------------------------------------------------------------------ plain lines
    def _percent(self, bar: _Bar) -> float:
        return 100.0 * bar.done / bar.total if bar.total else 100.0

    def _due(self, bar: _Bar, now: float) -> bool:
        percent = self._percent(bar)
        if bar.printed_percent < 0 or bar.done >= bar.total:
            return bar.printed_percent < 100.0
        stepped = int(percent // STEP_PERCENT) > int(bar.printed_percent // STEP_PERCENT)
        return stepped or now - bar.printed_at >= self.interval

    def _print(self, text: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        self.stream.write(f"{stamp} fast3d {self.stage}: {text}\n")
        self.stream.flush()
        self._printed_at = self.clock()

    def heartbeat(self) -> None:
        """Print the current state if nothing was printed for ``interval`` seconds (plain mode)."""
        with self._lock:
            now = self.clock()
            if now - self._printed_at < self.interval:
                return
            if self._phase:
                self._print(f"{self._phase} ({_duration(now - self._phase_started)} so far)")
                return
            running = [b for b in self._bars.values() if b.done < b.total] or list(self._bars.values())[-1:]
            for bar in running:
                self._print(bar.line(now, self.unit))
                bar.printed_at, bar.printed_percent = now, self._percent(bar)
            if not running:
                self._print(f"working ({_duration(now - self._phase_started)} so far)")

    def _beat(self) -> None:
        while not self._stop.wait(min(1.0, self.interval / 4)):
            self.heartbeat()

    # ------------------------------------------------------------------ rich bars
    def _rich_progress(self) -> Any:
        if self._rich is None:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._rich = Progress(
                TextColumn("{task.description:>16}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[status]}"),
                console=Console(file=self.stream),
            )
            self._rich.start()
        return self._rich

    def _rich_update(self, bar: _Bar, now: float) -> None:
        progress = self._rich_progress()
        rate = bar.rate(now)
        unit = bar.unit or self.unit
        fields = {"status": bar.status, "rate": "" if rate is None else f"{rate:.3g} {unit}/s"}
        if bar.name not in self._rich_ids:
            self._rich_ids[bar.name] = progress.add_task(bar.name, total=bar.total, **fields)
        progress.update(self._rich_ids[bar.name], completed=bar.done, total=bar.total, **fields)


def _is_terminal(stream: IO[str]) -> bool:
    from rich.console import Console

    return Console(file=stream).is_terminal


def training_status(event: Any) -> str:
    """The status text of a train-gap progress event: epoch, loss and learning rate."""
    parts = [f"epoch {event.epoch}/{event.epochs}"]
    if event.loss is not None:
        parts.append(f"loss {event.loss:.4f}")
    if event.lr is not None:
        parts.append(f"lr {event.lr:.2e}")
    return ", ".join(parts)


def training_progress(reporter: ProgressReporter) -> Callable[[Any], None]:
    """train-gap's progress callback (:class:`~fast3d_cli.gap.training.TrainProgress` events) on ``reporter``:
    one bar of optimizer steps with epoch, loss and lr; a phase line while it evaluates."""

    def report(event: Any) -> None:
        if event.phase == "evaluate":
            reporter.phase(f"evaluating after step {event.step} (epoch {event.epoch}/{event.epochs})")
        else:
            reporter.update("train", event.step, event.total_steps, training_status(event), unit="steps")

    return report
