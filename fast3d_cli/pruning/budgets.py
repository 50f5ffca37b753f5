"""How many visual items each sample keeps: fixed counts, the paper's ratio accounting, SAP (§5.5-§5.7).

Items are objects (Chat-Scene: 3 tokens each) or single tokens. Two pruning ratios are always reported:

* input-level: the share of visual items removed, ``100 * (1 - kept / n)``;
* layer-averaged (the paper's "x%", §5.7): the share of visual items absent per layer, averaged over the
  ``L`` layers when pruning happens before layer ``K``: ``100 * (1 - kept / n) * (L - K) / L``.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import numpy as np

from fast3d_cli.errors import UserError


def check_alpha(alpha: float) -> float:
    if not (0.0 < float(alpha) <= 1.0):
        raise UserError(f"--alpha must be in (0, 1], got {alpha}")
    return float(alpha)


def check_ratio(ratio: float) -> float:
    if not (0.0 <= float(ratio) < 100.0):
        raise UserError(f"--ratio must be in [0, 100), got {ratio}")
    return float(ratio)


def check_layer(layer: int, n_layers: int | None) -> int:
    """``layer`` in [0, n_layers) (only >= 0 while ``n_layers`` is unknown, None)."""
    if n_layers is None:
        if int(layer) < 0:
            raise UserError(f"--layer must be >= 0, got {layer}")
        return int(layer)
    if not (0 <= int(layer) < n_layers):
        raise UserError(
            f"--layer must be in [0, {n_layers - 1}] for this {n_layers}-layer model, got {layer}"
        )
    return int(layer)


def keep_for_ratio(ratio: float, layer: int, n_layers: int, n_items: int) -> int:
    """Items to keep so that the layer-averaged pruning ratio is closest to ``ratio`` percent."""
    check_ratio(ratio)
    check_layer(layer, n_layers)
    reachable = 100.0 * (n_layers - layer) / n_layers
    if ratio > reachable:
        raise UserError(
            f"--ratio {ratio:g} cannot be reached when pruning at layer {layer} of {n_layers}: at most "
            f"{reachable:.2f}% of the visual tokens are absent on average; lower --layer"
        )
    keep_fraction = 1.0 - ratio / reachable
    return int(min(n_items, max(0, round(n_items * keep_fraction))))


def input_level_ratio(kept: Any, n_items: int) -> float:
    """Percent of visual items removed, averaged over samples."""
    kept = np.asarray(kept, dtype=np.float64)
    return float(100.0 * (1.0 - kept.mean() / n_items)) if kept.size else 0.0


def layer_averaged_ratio(kept: Any, n_items: int, layer: int, n_layers: int) -> float:
    """The paper's ratio (§5.7): input-level ratio x (L - K) / L."""
    return input_level_ratio(kept, n_items) * (n_layers - layer) / n_layers


def sap_keep_counts(logits: Any, alpha: Any) -> np.ndarray:
    """SAP (§5.5): per row, the fewest items whose softmax mass reaches ``alpha`` (all items if never).

    ``logits`` [B, M] (numpy or torch, any float dtype; computed in float32 like the official code),
    ``alpha`` a scalar or [B]. Returns int64 [B].
    """
    import torch

    scores = torch.as_tensor(np.asarray(logits, dtype=np.float32) if not torch.is_tensor(logits) else logits)
    scores = scores.detach().float().cpu()
    if scores.ndim != 2 or scores.shape[1] == 0:
        raise ValueError(f"logits must be [B, M] with M > 0, got {tuple(scores.shape)}")
    mass = scores.softmax(-1).sort(dim=-1, descending=True).values.cumsum(-1)
    limit = torch.as_tensor(alpha, dtype=torch.float32).reshape(-1, 1).expand(scores.shape[0], 1)
    reached = mass >= limit
    counts = torch.where(reached.any(-1), reached.float().argmax(-1) + 1, scores.shape[1])
    return counts.numpy().astype(np.int64)


def reference_alpha(logits: Any, top: int = 10) -> float:
    """Mean softmax mass of the ``top`` largest items (what the official search_alpha prints, §5.6)."""
    import torch

    scores = torch.as_tensor(np.asarray(logits, dtype=np.float32)).float()
    return float(scores.softmax(-1).topk(min(top, scores.shape[1]), dim=-1).values.sum(-1).mean())


# Multi-stage pruning (PyramidDrop, AdaToken-3D): visual items leave at several layers.


def default_drop_layers(n_layers: int) -> tuple[int, ...]:
    """PyramidDrop's layer list scaled to the depth: the quarters (8, 16, 24 of 32; 1, 2, 3 of 4)."""
    layers = sorted({round(n_layers * i / 4) for i in (1, 2, 3)})
    return tuple(layer for layer in layers if 1 <= layer < n_layers)


def check_drop_layers(layers: Any, n_layers: int | None) -> tuple[int, ...]:
    layers = tuple(int(x) for x in layers)
    if not layers or any(b <= a for a, b in pairwise(layers)):
        shown = ",".join(map(str, layers))
        raise UserError(f"--layers must be a strictly increasing list of layers, got {shown!r}")
    for layer in layers:
        check_layer(layer, n_layers)
    return layers


def stage_keep_counts(n_items: int, stage_ratio: float, n_drops: int) -> tuple[int, ...]:
    """Items kept after each drop with PyramidDrop's per-stage ratio lambda: ``int(n * lambda**i)`` of the
    original count after drop ``i`` (the official ``image_token_ratio_list`` [lambda, lambda^2, ...],
    truncated like ``int()`` there)."""
    if not 0.0 < float(stage_ratio) <= 1.0:
        raise UserError(f"--stage-ratio must be in (0, 1], got {stage_ratio}")
    return tuple(int(n_items * stage_ratio**i) for i in range(1, n_drops + 1))


def geometric_keep_counts(n_items: int, keep: int, n_drops: int) -> tuple[int, ...]:
    """A PyramidDrop schedule ending at exactly ``keep`` items: lambda = (keep / n)^(1 / drops), earlier
    drops keep ``round(n * lambda**i)``."""
    if not 0 <= keep <= n_items:
        raise UserError(f"--keep must be in [0, {n_items}], got {keep}")
    lam = (keep / n_items) ** (1.0 / n_drops) if n_items else 0.0
    counts = [max(keep, min(n_items, round(n_items * lam**i))) for i in range(1, n_drops)]
    return (*counts, keep)


def multistage_layer_averaged_ratio(
    stage_kept: Any, n_items: int, layers: tuple[int, ...], n_layers: int
) -> float:
    """The paper's ratio (§5.7) for several drops: the percent of visual items absent, averaged over the
    ``L`` layers; ``stage_kept`` [samples, drops] items kept after each drop."""
    kept = np.asarray(stage_kept, dtype=np.float64).reshape(-1, len(layers))
    if not kept.size or not n_items:
        return 0.0
    spans = np.diff([*layers, n_layers]) / n_layers
    return float(100.0 * ((1.0 - kept.mean(0) / n_items) * spans).sum())


def ratio_keep_counts(ratio: float, n_items: int, layers: tuple[int, ...], n_layers: int) -> tuple[int, ...]:
    """The geometric schedule whose layer-averaged ratio is closest to ``ratio`` percent (bisection on
    lambda, then rounding)."""
    check_ratio(ratio)
    reachable = multistage_layer_averaged_ratio([0] * len(layers), n_items, layers, n_layers)
    if ratio > reachable:
        raise UserError(
            f"--ratio {ratio:g} cannot be reached when the first drop is at layer {layers[0]} of {n_layers}: "
            f"at most {reachable:.2f}% of the visual tokens are absent on average"
        )

    def schedule(lam: float) -> tuple[int, ...]:
        return tuple(round(n_items * lam**i) for i in range(1, len(layers) + 1))

    low, high = 0.0, 1.0  # the ratio decreases as lambda grows
    for _ in range(60):
        mid = (low + high) / 2
        spans = np.diff([*layers, n_layers]) / n_layers
        value = 100.0 * float(((1.0 - mid ** np.arange(1, len(layers) + 1)) * spans).sum())
        low, high = (mid, high) if value > ratio else (low, mid)
    candidates = {schedule(low), schedule(high)}
    return min(
        candidates,
        key=lambda c: abs(multistage_layer_averaged_ratio(list(c), n_items, layers, n_layers) - ratio),
    )
