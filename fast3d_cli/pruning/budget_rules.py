"""Per-sample budget rules over object scores: which objects each sample keeps, and how many.

Every rule maps object scores (GAP logits or extracted maps, ``[B, M]``) to a boolean kept mask ``[B, M]``;
the pruning engine then keeps exactly those objects (the scores it receives are the mask itself and the
count is the mask's row sum). The rules (``RULES``) are the ones ``benchmarks/sap_budget_rules.py`` compares
at matched pruning ratio:

* ``fixed``: the ``keep`` highest-scoring objects of every sample;
* ``sap``: SAP (spec §5.5): the fewest objects whose softmax mass reaches ``alpha``;
* ``sap_floor``: SAP, but never fewer than ``floor`` (nor more than ``cap``) objects;
* ``anchored``: our method (docs/our-method.md): the ``sap_floor`` budget, filled first with the objects the
  prompt names (``<OBJnnn>``) and their ``neighbours`` nearest proposals, then by score.

All rules are row-independent (a batch of N gives the same masks as N batches of one) and never keep more
objects than a row has candidates; ``excluded`` objects (e.g. zero-feature padding) are ranked last.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from fast3d_cli.pruning.budgets import sap_keep_counts

OBJECT_REFERENCE = re.compile(r"<OBJ(\d{3})>")


@dataclass(frozen=True)
class RuleInputs:
    """What a rule may read: ``scores`` [B, M] (higher keeps first), optionally ``prompts`` (B strings),
    ``centres`` [B, M, 3] (proposal box centres) and ``excluded`` [B, M] (never kept before the others)."""

    scores: np.ndarray
    prompts: Sequence[str] | None = None
    centres: np.ndarray | None = None
    excluded: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.scores.shape  # type: ignore[return-value]


def _ranked_mask(priority: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """[B, M] True for the ``counts[b]`` highest-priority objects of each row (stable: ties by index)."""
    order = np.argsort(-priority, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(priority.shape[1])[None].repeat(len(priority), 0), axis=1)
    return ranks < counts[:, None]


def _priority(inputs: RuleInputs) -> np.ndarray:
    """Scores as float64 with excluded objects pushed below every candidate."""
    priority = np.asarray(inputs.scores, dtype=np.float64).copy()
    if inputs.excluded is not None:
        priority[np.asarray(inputs.excluded, dtype=bool)] = -np.inf
    return priority


def _sap_counts(inputs: RuleInputs, alpha: float) -> np.ndarray:
    scores = np.asarray(inputs.scores, dtype=np.float32)
    if inputs.excluded is not None:  # excluded objects carry no SAP mass
        scores = np.where(np.asarray(inputs.excluded, dtype=bool), -np.inf, scores)
    return sap_keep_counts(scores, alpha)


def fixed_rule(inputs: RuleInputs, keep: int) -> np.ndarray:
    counts = np.full(inputs.shape[0], min(int(keep), inputs.shape[1]), dtype=np.int64)
    return _ranked_mask(_priority(inputs), counts)


def sap_rule(inputs: RuleInputs, alpha: float) -> np.ndarray:
    return _ranked_mask(_priority(inputs), _sap_counts(inputs, alpha))


def floored_counts(inputs: RuleInputs, alpha: float, floor: int = 0, cap: int | None = None) -> np.ndarray:
    """SAP counts clipped to ``[floor, cap]`` (and to the row's object count)."""
    counts = np.maximum(_sap_counts(inputs, alpha), int(floor))
    if cap is not None:
        counts = np.minimum(counts, int(cap))
    return np.minimum(counts, inputs.shape[1])


def sap_floor_rule(inputs: RuleInputs, alpha: float, floor: int = 0, cap: int | None = None) -> np.ndarray:
    return _ranked_mask(_priority(inputs), floored_counts(inputs, alpha, floor, cap))


def prompt_anchors(prompt: str, n_objects: int) -> list[int]:
    """The object indices a prompt names (``<OBJnnn>``), in order, without duplicates or out-of-range ids."""
    found = (int(m) for m in OBJECT_REFERENCE.findall(prompt))
    return list(dict.fromkeys(i for i in found if i < n_objects))


def anchor_boost(inputs: RuleInputs, neighbours: int) -> np.ndarray:
    """[B, M] priority tiers: 2 for a named object, 1 for one of the ``neighbours`` candidates nearest a named
    object's centre (excluded objects never), 0 otherwise."""
    batch, m = inputs.shape
    tiers = np.zeros((batch, m), dtype=np.float64)
    if inputs.prompts is None:
        return tiers
    excluded = np.zeros((batch, m), bool) if inputs.excluded is None else np.asarray(inputs.excluded, bool)
    for row, prompt in enumerate(inputs.prompts):
        anchors = prompt_anchors(prompt, m)
        if not anchors:
            continue
        if neighbours > 0 and inputs.centres is not None:
            centres = np.asarray(inputs.centres[row], dtype=np.float64)
            for anchor in anchors:
                distance = np.linalg.norm(centres - centres[anchor], axis=1)
                distance[anchor] = np.inf
                distance[excluded[row]] = np.inf
                near = np.argsort(distance, kind="stable")[:neighbours]
                tiers[row, near[np.isfinite(distance[near])]] = 1.0
        tiers[row, anchors] = 2.0
    return tiers


def anchored_rule(
    inputs: RuleInputs, alpha: float, floor: int = 0, cap: int | None = None, neighbours: int = 2
) -> np.ndarray:
    """Our method: the floored SAP budget, filled with the prompt's named objects, then their nearest
    proposals, then by score. The budget grows (never shrinks) to hold every named object."""
    counts = floored_counts(inputs, alpha, floor, cap)
    tiers = anchor_boost(inputs, neighbours)
    counts = np.maximum(counts, (tiers == 2.0).sum(1))
    scores = _priority(inputs)
    finite = np.isfinite(scores)
    span = np.where(finite, scores, 0.0)
    shift = (np.abs(span).max(axis=1, keepdims=True) + 1.0) * 4.0  # tiers dominate any score difference
    priority = np.where(finite, scores + tiers * shift, -np.inf)
    priority = np.where(tiers == 2.0, np.inf, priority)  # a named object is kept even if excluded
    return _ranked_mask(priority, counts)


Rule = Callable[..., np.ndarray]
RULES: dict[str, Rule] = {
    "fixed": fixed_rule,
    "sap": sap_rule,
    "sap_floor": sap_floor_rule,
    "anchored": anchored_rule,
}
