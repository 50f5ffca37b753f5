"""A thin launch layer: rank, world size, device, barriers and gathers from accelerate when launched with it.

Every stage takes a :class:`DistributedContext`. Its defaults are one process (rank 0 of 1, no-op barrier,
a gather that returns the caller's own object), so a stage has no "am I distributed?" branches: like the
``LM`` base class of lm-evaluation-harness, the rank is built in and is simply 0 of 1 until a launcher
(``accelerate launch``, ``torchrun``) says otherwise. Sharding is ``items[rank::world]`` everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


def _no_barrier() -> None:
    return None


def _gather_alone(obj: Any) -> list[Any]:
    return [obj]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands among the launched ones (one process unless launched with more)."""

    rank: int = 0
    world: int = 1
    device: str = "cpu"
    barrier: Callable[[], None] = _no_barrier
    gather: Callable[[Any], list[Any]] = _gather_alone  # every rank's object, in rank order (a sync point)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's share of ``items``: every ``world``-th item from position ``rank`` (may be empty)."""
        return list(items[self.rank :: self.world])


SINGLE_PROCESS = DistributedContext()


def _launched() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main_process() -> bool:
    """Rank 0, or a single process: known from the launcher's environment before anything initialises."""
    return int(os.environ.get("RANK", "0")) == 0


def _gather_objects(obj: Any) -> list[Any]:
    from accelerate.utils import gather_object

    return gather_object([obj])


@contextmanager
def distributed_context(device: str = "auto") -> Iterator[DistributedContext]:
    """Single process unless started by ``accelerate launch``/``torchrun`` with more than one process.

    On CPU-only machines the processes use gloo (``accelerate`` is told ``cpu=True``).
    """
    if not _launched():
        from fast3d_cli.models.loading import resolve_device

        yield DistributedContext(device=resolve_device(device))
        return
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    chosen = str(state.device) if device == "auto" else device
    try:
        yield DistributedContext(
            state.process_index, state.num_processes, chosen, state.wait_for_everyone, _gather_objects
        )
    finally:
        state.wait_for_everyone()
