"""Fill a store group chunk by chunk: the resumable, rank-sharded write loop of every stage."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fast3d_cli.stores.store import MapGroup

ProgressCallback = Callable[[str, int, int], None]  # (group path, samples done, total)


def fill_missing_chunks(
    group: MapGroup,
    samples: Sequence[Any],
    compute: Callable[[Sequence[Any]], dict[str, np.ndarray]],
    rank: int,
    world: int,
    progress: ProgressCallback | None,
) -> int:
    """Compute and write this rank's missing chunks of ``group`` (chunk c belongs to rank c mod world)."""
    done = group.completed_chunks()
    mine = [c for c in range(group.n_chunks) if c % world == rank and c not in done]
    finished = sum(group.chunk_bounds(c)[1] - group.chunk_bounds(c)[0] for c in done)
    if progress:
        progress(group.path, finished, group.n_samples)
    computed = 0
    for chunk in mine:
        start, stop = group.chunk_bounds(chunk)
        rows = samples[start:stop]
        group.write_chunk(chunk, np.array([s.index for s in rows]), compute(rows))
        computed += stop - start
        if progress:
            progress(group.path, min(group.n_samples, finished + computed * world), group.n_samples)
    return computed
