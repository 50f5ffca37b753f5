"""Differentiable attention probabilities for the training losses, without eager attention.

A registered attention function computes each layer's output with SDPA, then recomputes the softmax (with
autograd) only for the rows the losses read: the text rows of every head, and the object-feature rows of
layer 0 (binding). That is a few percent of eager attention's work and memory.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

TRAIN_SDPA = "fast3d_train_sdpa"
_active: contextvars.ContextVar[AttentionRecorder | None] = contextvars.ContextVar(
    "fast3d_train_recorder", default=None
)


def _row_probs(query: Tensor, key: Tensor, rows: Tensor, key_valid: Tensor, scaling: float) -> Tensor:
    """Softmax of ``query`` rows ``rows`` [B, R] against all keys: [B, H, R, T] (causal, padding masked)."""
    batch, heads, _, dim = query.shape
    picked = query.gather(2, rows[:, None, :, None].expand(batch, heads, -1, dim))
    scores = (picked @ key.transpose(-1, -2)) * scaling
    keys = torch.arange(key.shape[2], device=query.device)
    allowed = (keys[None, None, :] <= rows[:, :, None]) & key_valid[:, None, :]
    allowed |= keys[None, None, :] == rows[:, :, None]  # a padding row sees itself: no all -inf softmax
    return scores.masked_fill(~allowed[:, None], float("-inf")).softmax(-1)


@dataclass
class AttentionRecorder:
    """What one forward records: ``text[layer]`` [B, H, R, T] and ``binding`` [B, F, T] (layer 0, head 0)."""

    rows: Tensor  # [B, R]
    feature_rows: Tensor  # [B, F]
    key_valid: Tensor  # [B, T]
    binding_head: int = 0
    text: dict[int, Tensor] = field(default_factory=dict)
    binding: Tensor | None = None

    def record(self, layer: int, query: Tensor, key: Tensor, scaling: float) -> None:
        key = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1)
        self.text[layer] = _row_probs(query, key, self.rows, self.key_valid, scaling)
        if layer == 0:
            head = slice(self.binding_head, self.binding_head + 1)
            probs = _row_probs(query[:, head], key[:, head], self.feature_rows, self.key_valid, scaling)
            self.binding = probs[:, 0]

    def stacked(self) -> Tensor:
        """[L, B, H, R, T]."""
        return torch.stack([self.text[i] for i in sorted(self.text)])


def _recording_attention(
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

    output = ALL_ATTENTION_FUNCTIONS["sdpa"](
        module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
    )
    recorder = _active.get()
    if recorder is not None:
        recorder.record(module.layer_idx, query, key, scaling or query.shape[-1] ** -0.5)
    return output


def register_training_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(TRAIN_SDPA, _recording_attention)
    AttentionMaskInterface.register(TRAIN_SDPA, sdpa_mask)


@contextmanager
def recording(llm: nn.Module, recorder: AttentionRecorder) -> Iterator[AttentionRecorder]:
    """Run ``llm`` with the recording attention for the duration."""
    register_training_attention()
    previous = llm.config._attn_implementation
    llm.set_attn_implementation(TRAIN_SDPA)
    token = _active.set(recorder)
    try:
        yield recorder
    finally:
        _active.reset(token)
        llm.set_attn_implementation(previous)
