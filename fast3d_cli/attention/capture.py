"""Record text-to-visual attention during a normal SDPA (or flash-attn) forward, without eager attention.

A registered attention function computes the layer's output with the fast kernel, then recomputes the
softmax for the *selected query rows only* (the text after the object list) against all keys, averages it
over heads and keeps the visual columns. Memory is O(B·H·R·T) for one layer at a time, never O(L·T²).
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

CAPTURE_SDPA = "fast3d_capture_sdpa"
CAPTURE_FLASH = "fast3d_capture_flash"
_active: contextvars.ContextVar[AttentionCapture | None] = contextvars.ContextVar(
    "fast3d_capture", default=None
)


@dataclass
class CaptureResult:
    """Head-mean attention of query rows [row_start, T) to each sample's visual tokens.

    ``layer_sum``: [B, R, V] float32, summed over layers; ``per_layer``: [n_layers, B, R, V] when kept.
    """

    row_start: int
    layer_sum: Tensor
    n_layers: int
    per_layer: Tensor | None


class AttentionCapture:
    """Collects the attention of rows ``row_start..T-1`` to columns ``visual_start[b] + [0, n_visual)``."""

    def __init__(
        self, row_start: int, visual_start: Tensor, n_visual: int, keep_layers: bool = False
    ) -> None:
        self.row_start = row_start
        self.visual_start = visual_start
        self.n_visual = n_visual
        self.keep_layers = keep_layers
        self.layers: dict[int, Tensor] = {}

    def record(
        self, layer: int, query: Tensor, key: Tensor, attention_mask: Tensor | None, scaling: float
    ) -> None:
        batch, heads, length, _ = query.shape
        rows = torch.arange(self.row_start, length, device=query.device)
        key = key.repeat_interleave(heads // key.shape[1], dim=1)
        scores = (query[:, :, rows].float() @ key.float().transpose(-1, -2)) * scaling  # [B, H, R, T]
        scores = scores.masked_fill(~_allowed(attention_mask, rows, key.shape[2], batch), float("-inf"))
        probs = scores.softmax(-1).mean(1)  # [B, R, T]
        columns = self.visual_start.to(query.device)[:, None] + torch.arange(
            self.n_visual, device=query.device
        )
        self.layers[layer] = probs.gather(2, columns[:, None, :].expand(-1, rows.numel(), -1))

    def result(self) -> CaptureResult:
        if not self.layers:
            raise RuntimeError("no attention was captured: is the model using the capture implementation?")
        stacked = torch.stack([self.layers[i] for i in sorted(self.layers)])
        return CaptureResult(
            self.row_start, stacked.sum(0), len(self.layers), stacked if self.keep_layers else None
        )


def _allowed(mask: Tensor | None, rows: Tensor, n_keys: int, batch: int) -> Tensor:
    """Boolean [B, 1, R, K] of allowed (query row, key) pairs from whatever mask form transformers passed."""
    keys = torch.arange(n_keys, device=rows.device)
    causal = keys[None, None, None, :] <= rows[None, None, :, None]  # prefill: query position == key position
    if mask is None:
        return causal.expand(batch, 1, -1, -1)
    if mask.ndim == 2:  # flash-attn style key padding mask [B, K]
        return causal & mask[:, None, None, :].bool()
    rows_mask = mask[:, :, rows, :n_keys]
    allowed = rows_mask if rows_mask.dtype == torch.bool else rows_mask > torch.finfo(rows_mask.dtype).min / 2
    return allowed & causal


def _capturing_attention(base: str):
    def attention(
        module: nn.Module,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attention_mask: Tensor | None,
        scaling: float | None = None,
        dropout: float = 0.0,
        **kwargs,
    ):
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        output = ALL_ATTENTION_FUNCTIONS[base](
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
        capture = _active.get()
        if capture is not None and query.shape[2] > capture.row_start:
            capture.record(module.layer_idx, query, key, attention_mask, scaling or query.shape[-1] ** -0.5)
        return output

    return attention


def register_capture_attention() -> None:
    """Register the capture implementations (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(CAPTURE_SDPA, _capturing_attention("sdpa"))
    # Without a registered mask function transformers passes attention_mask=None even with padding.
    AttentionMaskInterface.register(CAPTURE_SDPA, sdpa_mask)
    if "flash_attention_2" in ALL_MASK_ATTENTION_FUNCTIONS:
        AttentionInterface.register(CAPTURE_FLASH, _capturing_attention("flash_attention_2"))
        AttentionMaskInterface.register(CAPTURE_FLASH, ALL_MASK_ATTENTION_FUNCTIONS["flash_attention_2"])


def capture_implementation(model: nn.Module) -> str:
    """The capturing twin of the model's own kernel: flash-attn when the model runs flash-attn (models load
    with it on CUDA when it is installed), SDPA otherwise."""
    return CAPTURE_FLASH if "flash" in str(model.config._attn_implementation) else CAPTURE_SDPA


@contextmanager
def capturing(llm: nn.Module, capture: AttentionCapture) -> Iterator[AttentionCapture]:
    """Switch ``llm`` to the capture attention for the duration, then restore its implementation."""
    register_capture_attention()
    previous = llm.config._attn_implementation
    llm.set_attn_implementation(capture_implementation(llm))
    token = _active.set(capture)
    try:
        yield capture
    finally:
        _active.reset(token)
        llm.set_attn_implementation(previous)
