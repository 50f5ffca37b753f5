"""Wall-clock of generation, split into the method's token selection (outside the LLM), prefill and decode
steps, and peak accelerator memory."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


@dataclass
class SpeedTimer:
    """Wraps decoders so every prefill and decode step is timed (device-synchronised)."""

    device: Any
    prefill_seconds: float = 0.0
    prefills: int = 0
    prefill_rows: int = 0
    decode_seconds: float = 0.0
    decode_steps: int = 0
    selection_seconds: float = 0.0
    selection_rows: int = 0

    def __post_init__(self) -> None:
        import torch

        self.cuda = getattr(self.device, "type", str(self.device)).startswith("cuda")
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize(self.device)

    def wrap(self, decoder: Any) -> _TimedDecoder:
        return _TimedDecoder(decoder, self)

    @contextmanager
    def selection(self, rows: int) -> Iterator[None]:
        """Time the pruning method choosing the tokens of a batch of ``rows`` samples before the LLM runs
        (its scores: a maps store read, the GAP network, DivPrune's greedy pass ...)."""
        self.sync()
        start = time.perf_counter()
        yield
        self.sync()
        self.selection_seconds += time.perf_counter() - start
        self.selection_rows += rows

    def counters(self) -> dict[str, Any]:
        """This timer's sums and its peak memory in MiB (None off CUDA), for gathering across ranks."""
        peak = None
        if self.cuda:
            import torch

            peak = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
        names = ("prefill_seconds", "prefills", "prefill_rows", "decode_seconds", "decode_steps")
        names += ("selection_seconds", "selection_rows")
        return {**{name: getattr(self, name) for name in names}, "peak_memory_mib": peak}

    def absorb(self, counters: dict[str, Any]) -> None:
        """Add another rank's :meth:`counters` to this timer's sums."""
        for name, value in counters.items():
            if name != "peak_memory_mib":
                setattr(self, name, getattr(self, name) + value)

    def summary(
        self, generated: int, seconds: float, peaks: list[float | None] | None = None
    ) -> dict[str, Any]:
        """The speed section; ``peaks``: every rank's peak memory (the largest is reported)."""
        known = [p for p in (peaks or [self.counters()["peak_memory_mib"]]) if p is not None]
        peak = max(known) if known else None
        return {
            "generated_samples": generated,
            "seconds": round(seconds, 3),
            "samples_per_s": round(generated / seconds, 3) if generated else None,
            "prefill_ms_per_batch": round(1e3 * self.prefill_seconds / self.prefills, 3)
            if self.prefills
            else None,
            "prefill_ms_per_sample": round(1e3 * self.prefill_seconds / self.prefill_rows, 3)
            if self.prefill_rows
            else None,
            "selection_ms_per_sample": round(1e3 * self.selection_seconds / self.selection_rows, 3)
            if self.selection_rows
            else None,
            "decode_ms_per_token": round(1e3 * self.decode_seconds / self.decode_steps, 3)
            if self.decode_steps
            else None,
            "peak_memory_mib": peak,
        }


class _TimedDecoder:
    def __init__(self, inner: Any, timer: SpeedTimer) -> None:
        self.inner = inner
        self.timer = timer

    def __getattr__(self, name: str) -> Any:  # report, plan ... of the wrapped decoder
        return getattr(self.inner, name)

    def prefill(self, inputs_embeds: Any, attention_mask: Any) -> Any:
        self.timer.sync()
        start = time.perf_counter()
        out = self.inner.prefill(inputs_embeds, attention_mask)
        self.timer.sync()
        self.timer.prefill_seconds += time.perf_counter() - start
        self.timer.prefills += 1
        self.timer.prefill_rows += inputs_embeds.shape[0]
        return out

    def step(self, token_ids: Any, state: Any) -> Any:
        start = time.perf_counter()
        out = self.inner.step(token_ids, state)
        self.timer.sync()
        self.timer.decode_seconds += time.perf_counter() - start
        self.timer.decode_steps += 1
        return out

    def select(self, state: Any, row_index: Any) -> Any:
        return self.inner.select(state, row_index)
