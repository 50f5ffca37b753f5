"""Subset-selection scorers that prune before the LLM: CDPruner's conditional DPP and spatial coverage.

Both return *ranking* scores [B, N] like :func:`~fast3d_cli.pruning.scorers.divprune_scores`: the greedy
picks get ``steps, steps-1, ..., 1`` in pick order, so the engine's top-k of a row is the greedy k-subset for
every ``k <= steps`` (per-sample budgets in one batch). Items the greedy never reached score below every
pick (in a documented fallback order); ``excluded`` items score ``-inf``. Everything is batched over rows;
the only loop is over the picks, and each row's result depends on that row alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# fast-map-dpp (Chen et al. 2018, the reference CDPruner credits) stops once the best remaining marginal
# gain d_j^2 falls below this: the kernel's rank is exhausted and 1/sqrt(d_j^2) would only amplify noise.
DPP_EPSILON = 1e-10


def instruction_relevance(items: Tensor, text: Tensor, excluded: Tensor | None = None) -> Tensor:
    """CDPruner's relevance of each item to the instruction, min-max normalised per row.

    ``items`` [B, N, E], ``text`` [B, M, E] (M instruction embeddings). As the official ``encode_images``:
    r = mean_m(-cos(item, text_m)), then ``(r - min + 1e-6) / (max - min)``. The official code takes min and
    max over the whole tensor (one sample per call in its evaluation); here they run per row, over the
    non-excluded items, so a row's relevance does not depend on its batch. A row whose items all have the
    same relevance (max == min) gets relevance 1 everywhere instead of the official division by zero.
    """
    unit_items = F.normalize(items.float(), dim=-1)
    unit_text = F.normalize(text.float(), dim=-1)
    relevance = (-(unit_items @ unit_text.transpose(1, 2))).mean(dim=-1)  # [B, N]
    live = torch.ones_like(relevance, dtype=torch.bool) if excluded is None else ~excluded.bool()
    low = relevance.masked_fill(~live, float("inf")).amin(dim=1, keepdim=True)
    high = relevance.masked_fill(~live, float("-inf")).amax(dim=1, keepdim=True)
    spread = high - low
    flat = ~torch.isfinite(spread) | (spread <= 0)
    normalised = (relevance - low + 1e-6) / torch.where(flat, torch.ones_like(spread), spread)
    return torch.where(flat, torch.ones_like(relevance), normalised)


def conditional_kernel(features: Tensor, relevance: Tensor) -> Tensor:
    """CDPruner's conditional DPP kernel ``L = diag(r) S diag(r)`` [B, N, N], with S the cosine similarity
    of the (projected) features [B, N, F] and r [B, N] the relevance. The official ``theta``/``exp(alpha r)``
    reweighting is commented out in its code and is not applied."""
    unit = F.normalize(features.float(), dim=-1)
    similarity = unit @ unit.transpose(1, 2)
    return relevance[:, :, None] * similarity * relevance[:, None, :]


def dpp_greedy_scores(
    kernel: Tensor, steps: int, excluded: Tensor | None = None, fallback: Tensor | None = None
) -> Tensor:
    """Greedy MAP inference of a DPP (Chen et al. 2018, incremental Cholesky) as a ranking.

    The update is CDPruner's: d² = diag(L); each step picks j = argmax d² (first index on ties, as
    ``torch.argmax``), e = (L[j] - c[:, j]ᵀ c) / sqrt(d²_j), appends e to c, d² -= e², d²_j = -inf. A row
    stops early when its best d² <= :data:`DPP_EPSILON` (or it has no candidate left); its unpicked items
    then rank below the picks by ``fallback`` [B, N] (higher first; default: index order).
    """
    batch, n_items = kernel.shape[:2]
    steps = min(steps, n_items)
    device = kernel.device
    rows = torch.arange(batch, device=device)
    blocked = torch.zeros(batch, n_items, dtype=torch.bool, device=device)
    if excluded is not None:
        blocked = excluded.to(device).bool().clone()
    gains = torch.diagonal(kernel, dim1=1, dim2=2).clone().masked_fill(blocked, float("-inf"))
    vectors = kernel.new_zeros(steps, batch, n_items)
    order = torch.full((batch, n_items), -1, dtype=torch.long, device=device)
    active = torch.ones(batch, dtype=torch.bool, device=device)
    for step in range(steps):
        pick = gains.argmax(dim=1)
        best = gains[rows, pick]
        active &= best > DPP_EPSILON
        if not bool(active.any()):
            break
        done = torch.einsum("tb,tbn->bn", vectors[:step, rows, pick], vectors[:step])
        update = (kernel[rows, pick] - done) / torch.sqrt(best.clamp(min=DPP_EPSILON))[:, None]
        vectors[step] = torch.where(active[:, None], update, 0.0)
        gains = torch.where(active[:, None], gains - update.square(), gains)
        r, p = rows[active], pick[active]
        gains[r, p] = float("-inf")
        order[r, p] = step
    return _ranking(order, steps, blocked, fallback)


def _ranking(order: Tensor, steps: int, excluded: Tensor, fallback: Tensor | None) -> Tensor:
    """Picks (``order`` >= 0) score ``steps - order``; the rest score in (-2, -1] by ``fallback``; excluded
    items -inf."""
    n_items = order.shape[1]
    if fallback is None:
        fallback = -torch.arange(n_items, device=order.device, dtype=torch.float32).expand_as(order)
    fallback = fallback.float()
    low = fallback.amin(dim=1, keepdim=True)
    span = (fallback.amax(dim=1, keepdim=True) - low).clamp(min=1e-12)
    rest = -2.0 + 0.5 * (1.0 + (fallback - low) / span)  # (-2, -1], order-preserving
    scores = torch.where(order >= 0, (steps - order).float(), rest)
    return scores.masked_fill(excluded, float("-inf"))


def cdpruner_scores(
    features: Tensor,
    relevance_items: Tensor,
    instruction: Tensor,
    steps: int,
    excluded: Tensor | None = None,
) -> Tensor:
    """CDPruner (Zhang et al. 2025, github.com/Theia-4869/CDPruner) as a ranking over N items.

    ``features`` [B, N, F]: what the similarity compares (the projected visual embeddings, the official
    ``image_features`` after ``mm_projector``); ``relevance_items`` [B, N, E] and ``instruction`` [B, M, E]:
    what the relevance compares (the official CLIP image and text embeddings). Greedy DPP MAP picks
    ``steps`` items; rows that exhaust the kernel fall back to relevance order.
    """
    relevance = instruction_relevance(relevance_items, instruction, excluded)
    kernel = conditional_kernel(features, relevance)
    return dpp_greedy_scores(kernel, steps, excluded, fallback=relevance)


def coverage_scores(
    centers: Tensor, steps: int, excluded: Tensor | None = None, start: Tensor | None = None
) -> Tensor:
    """Spatial coverage: farthest-point sampling over item positions ``centers`` [B, N, D] as a ranking.

    The first pick is ``start`` [B] (default: the non-excluded item nearest to the centroid of the
    non-excluded items); each next pick maximises its Euclidean distance to the nearest picked item (first
    index on ties). Once a row's candidates are exhausted, the excluded items (e.g. padding objects, which
    have no position) follow in index order, so a budget above the real item count stays honoured.
    """
    batch, n_items = centers.shape[:2]
    device = centers.device
    steps = min(steps, n_items)
    rows = torch.arange(batch, device=device)
    blocked = torch.zeros(batch, n_items, dtype=torch.bool, device=device)
    if excluded is not None:
        blocked = excluded.to(device).bool()
    points = centers.double()
    if start is None:
        live = (~blocked).double()[..., None]
        centroid = (points * live).sum(1, keepdim=True) / live.sum(1, keepdim=True).clamp(min=1)
        start = (points - centroid).norm(dim=-1).masked_fill(blocked, float("inf")).argmin(dim=1)
    nearest = torch.full((batch, n_items), float("inf"), dtype=torch.float64, device=device)
    order = torch.full((batch, n_items), -1, dtype=torch.long, device=device)
    picked = blocked.clone()
    pick = start.to(device)
    for step in range(steps):
        if step:
            pick = nearest.masked_fill(picked, float("-inf")).argmax(dim=1)
        live_rows = ~picked[rows, pick]
        if not bool(live_rows.any()):
            break
        r, p = rows[live_rows], pick[live_rows]
        nearest[r] = torch.minimum(nearest[r], (points[r] - points[r, p][:, None]).norm(dim=-1))
        picked[r, p] = True
        order[r, p] = step
    scores = torch.where(order >= 0, (steps - order).double(), float("-inf"))
    unpicked = order < 0
    tail = -1.0 - torch.arange(n_items, device=device, dtype=torch.float64) / n_items  # (-2, -1]
    scores = torch.where(unpicked & ~blocked, tail, scores)
    scores = torch.where(unpicked & blocked, tail - 2.0, scores)  # padding last, in index order
    return scores.float()


def expand_to_tokens(object_scores: Tensor, tokens_per_object: int) -> Tensor:
    """Object ranking [B, N] -> token ranking [B, N * T] that keeps an object's T tokens together and in
    slot order: the object of rank q (0 = best) gives its token t the score (N - q) * T - t, so the top-k
    tokens are the best whole objects plus the leading tokens of the next one. -inf objects stay -inf."""
    finite = torch.isfinite(object_scores)
    ranks = object_scores.argsort(dim=1, descending=True, stable=True).argsort(dim=1, stable=True)
    base = (object_scores.shape[1] - ranks).float() * tokens_per_object  # rank 0 -> highest
    offsets = torch.arange(tokens_per_object, device=object_scores.device, dtype=torch.float32)
    tokens = base[:, :, None] - offsets
    tokens = torch.where(finite[:, :, None], tokens, float("-inf"))
    return tokens.reshape(object_scores.shape[0], -1)
