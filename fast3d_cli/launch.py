"""A thin launch layer: rank, world size, device and barriers from accelerate when launched with it."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    world: int
    device: str
    barrier: Callable[[], None]

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _launched() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main_process() -> bool:
    """Rank 0, or a single process: known from the launcher's environment before anything initialises."""
    return int(os.environ.get("RANK", "0")) == 0


@contextmanager
def distributed_context(device: str = "auto") -> Iterator[DistributedContext]:
    """Single process unless started by ``accelerate launch``/``torchrun`` with more than one process.

    On CPU-only machines the processes use gloo (``accelerate`` is told ``cpu=True``).
    """
    if not _launched():
        from fast3d_cli.models.loading import resolve_device

        yield DistributedContext(0, 1, resolve_device(device), lambda: None)
        return
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    chosen = str(state.device) if device == "auto" else device
    try:
        yield DistributedContext(state.process_index, state.num_processes, chosen, state.wait_for_everyone)
    finally:
        state.wait_for_everyone()
