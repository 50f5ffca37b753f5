"""Per-sample visual-token scores for the pruning methods (higher = keep first).

Each scorer returns scores at its native granularity: per object ([B, 100]) for maps, per token
([B, 300]) for embedding- or attention-based methods; :func:`to_granularity` converts.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fast3d_cli.data import Sample
from fast3d_cli.errors import UserError, article


def to_granularity(scores: Tensor, native_group: int, group: int) -> Tensor:
    """Convert scores between granularities. Object -> token repeats each object's value over its tokens
    (as the official oracle does, §5.4); token -> object sums the object's tokens."""
    if native_group == group:
        return scores
    if group == 1:
        return scores.repeat_interleave(native_group, dim=1)
    if native_group == 1:
        return scores.reshape(scores.shape[0], -1, group).sum(-1)
    raise ValueError(f"cannot convert scores from groups of {native_group} to groups of {group}")


def random_scores(samples: Sequence[Sample], n_items: int, seed: int) -> Tensor:
    """Uniform scores seeded by (seed, task, annotation index): the same sample always gets the same draw,
    whatever the batch or process layout."""
    rows = []
    for sample in samples:
        generator = torch.Generator().manual_seed(zlib.crc32(f"{seed}/{sample.task}/{sample.index}".encode()))
        rows.append(torch.rand(n_items, generator=generator))
    return torch.stack(rows)


def divprune_scores(features: Tensor, steps: int, excluded: Tensor | None = None) -> Tensor:
    """DivPrune (max-min diversity) as a ranking: the first ``steps`` greedy picks get scores
    ``steps, steps-1, ..., 1`` (the rest ``-inf``), so the top-k of the scores is the greedy k-subset.

    ``features`` [B, N, F]. Distance = 1 - cosine similarity. The first pick is the item whose nearest
    neighbour is farthest (as the official DivPrune); each next pick maximises its minimum distance to the
    picked set. ``excluded`` [B, N] items are never picked. Batched over rows and items; the only loop is
    over the ``steps`` picks.
    """
    batch, n_items = features.shape[:2]
    steps = min(steps, n_items)
    unit = F.normalize(features.float(), dim=-1)
    distance = 1.0 - unit @ unit.transpose(1, 2)  # [B, N, N]
    rows = torch.arange(batch, device=features.device)
    scores = torch.full((batch, n_items), float("-inf"), device=features.device)
    if steps == 0:
        return scores
    eye = torch.eye(n_items, dtype=torch.bool, device=features.device)
    blocked = torch.zeros(batch, n_items, dtype=torch.bool, device=features.device)
    if excluded is not None:
        blocked = excluded.to(features.device).bool()
    others = eye[None] | blocked[:, None, :]
    nearest = distance.masked_fill(others, float("inf")).min(dim=2).values
    nearest = torch.where(torch.isinf(nearest), 0.0, nearest)  # a lone candidate: no neighbour
    pick = nearest.masked_fill(blocked, float("-inf")).argmax(dim=1)
    min_distance = distance[rows, pick]
    picked = blocked.clone()
    for step in range(steps):
        if step:
            pick = min_distance.masked_fill(picked, float("-inf")).argmax(dim=1)
        live = ~picked[rows, pick]  # False once a row has no candidate left
        if not bool(live.any()):
            break
        r, p = rows[live], pick[live]
        min_distance[r] = torch.minimum(min_distance[r], distance[r, p])
        picked[r, p] = True
        scores[r, p] = float(steps - step)
    return scores


def divprune_features(object_embeddings: Tensor, tokens_per_object: int, group: int) -> Tensor:
    """The visual embeddings DivPrune compares. Objects: the concatenated 3D and 2D projections (the
    identifier token embedding is the same in every scene and would only add index noise); tokens: each
    visual token embedding."""
    if group == 1:
        return object_embeddings
    batch, n_tokens, hidden = object_embeddings.shape
    triplets = object_embeddings.reshape(batch, n_tokens // tokens_per_object, tokens_per_object, hidden)
    return triplets[:, :, 1:].reshape(batch, n_tokens // tokens_per_object, -1)


class StoreMaps:
    """Object scores of one task/split group of a maps store, by annotation index."""

    def __init__(
        self, path: Path, kinds: tuple[str, ...], model_fingerprint: str, data_check: Any, force: bool = False
    ) -> None:
        from fast3d_cli.stores import open_store

        self.store = open_store(path)
        if self.store.kind not in kinds:
            raise UserError(
                f"{path} is {article(self.store.kind)} {self.store.kind!r} store; this method needs "
                f"{' or '.join(f'{article(k)} {k!r}' for k in kinds)} store"
            )
        if not force:
            problems = data_check(self.store)
            if self.store.attrs.get("model") != model_fingerprint:
                problems.insert(0, "model")
            if problems:
                raise UserError(
                    f"{path} was made for another {' and '.join(problems)} than this evaluation; "
                    "use --force to use it anyway"
                )
        self._rows: dict[tuple[str, str], dict[int, np.ndarray]] = {}

    def alpha(self, skip_padding: bool = False) -> float | None:
        """The alpha ``search-alpha`` recorded (searched with the same padding rule), if any."""
        sap = self.store.attrs.get("sap_skip_padding" if skip_padding else "sap") or {}
        return sap.get("alpha")

    def rows(self, task: str, split: str) -> dict[int, np.ndarray]:
        if (task, split) not in self._rows:
            group = self.store.group(task, split)
            self._rows[task, split] = {
                index: row["object_scores"] for index, row in group.iter_samples(("object_scores",))
            }
        return self._rows[task, split]

    def rows_fingerprint(self, task: str, split: str, samples: Sequence[Sample]) -> str:
        """sha256 (16 hex) of the object_scores the evaluation of ``samples`` reads: the maps' content, as far
        as the predictions depend on it."""
        import hashlib

        have = self.rows(task, split)
        digest = hashlib.sha256()
        for sample in samples:
            digest.update(np.ascontiguousarray(have[sample.index], dtype=np.float32).tobytes())
        return digest.hexdigest()[:16]

    def check_covers(self, task: str, split: str, samples: Sequence[Sample]) -> None:
        have = self.rows(task, split)
        missing = [s.index for s in samples if s.index not in have]
        if missing:
            raise UserError(
                f"{self.store.path}: {task}/{split} lacks maps for {len(missing)} of the {len(samples)} "
                f"samples to evaluate (first missing index {missing[0]}); finish the store or use --limit"
            )
        bad = [s.index for s in samples if not np.isfinite(have[s.index]).all()]
        if bad:
            raise UserError(
                f"{self.store.path}: {task}/{split} has NaN or infinite object_scores for {len(bad)} of the "
                f"samples to evaluate (first: index {bad[0]}); recompute the store"
            )

    def check_objects(self, n_objects: int) -> None:
        """Refuse maps over another object count than the model's (they cannot rank its visual tokens)."""
        have = int(self.store.attrs["n_objects"])
        if have != n_objects:
            raise UserError(
                f"{self.store.path} holds maps over {have} objects but the model reads {n_objects} objects "
                "per scene"
            )

    def scores(self, samples: Sequence[Sample]) -> Tensor:
        return torch.from_numpy(np.stack([self.rows(s.task, s.split)[s.index] for s in samples])).float()
