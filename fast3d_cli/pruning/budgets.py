"""How many visual items each sample keeps: fixed counts, the paper's ratio accounting, SAP (§5.5-§5.7).

Items are objects (Chat-Scene: 3 tokens each) or single tokens. Two pruning ratios are always reported:

* input-level: the share of visual items removed, ``100 * (1 - kept / n)``;
* layer-averaged (the paper's "x%", §5.7): the share of visual items absent per layer, averaged over the
  ``L`` layers when pruning happens before layer ``K``: ``100 * (1 - kept / n) * (L - K) / L``.
"""

from __future__ import annotations

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
