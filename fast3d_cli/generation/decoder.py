"""Swappable prefill/step/select interface used by the decoding loops, and its plain HF implementation.

A later pruning engine only has to provide another :class:`Decoder` (typically a subclass of
:class:`HFCausalLMDecoder` overriding :meth:`~HFCausalLMDecoder.prefill`) to reuse ``greedy_search`` and
``beam_search`` unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Protocol, TypeVar

import torch
from torch import Tensor
from transformers import Cache, DynamicCache, PreTrainedModel

S = TypeVar("S")


class Decoder(Protocol[S]):
    """What the search loops need from a model. Rows are independent sequences; ``state`` is opaque to them.

    States are consumed: after ``step``/``select`` the state passed in must not be used again (the KV cache
    may be updated in place).
    """

    def prefill(self, inputs_embeds: Tensor, attention_mask: Tensor) -> tuple[Tensor, S]:
        """Run the prompt. ``inputs_embeds`` [B,T,H] left-padded, ``attention_mask`` [B,T] (1 = real token).

        Returns the float32 logits of the last prompt position [B,V] and the decoding state for B rows.
        """
        ...

    def step(self, token_ids: Tensor, state: S) -> tuple[Tensor, S]:
        """Feed one token per row (``token_ids`` [N] long); return float32 next-token logits [N,V]."""
        ...

    def select(self, state: S, row_index: Tensor) -> S:
        """New state whose row ``i`` is old row ``row_index[i]`` (``row_index`` [N'] long; any length, repeats
        allowed): used to expand rows into beams, to reorder beams and to drop finished rows."""
        ...


@dataclass
class DecodeState:
    """State of :class:`HFCausalLMDecoder` for N rows.

    ``cache``: KV cache with batch size N (layers may hold different lengths, e.g. after token pruning).
    ``attention_mask``: [N, K] long, 1 = real key, where K is the cached length that transformers sizes its
    mask from (layer 0's length for a DynamicCache); one column of ones is appended per step.
    ``next_position``: [N] long, position id of the next fed token (= number of real prompt tokens + steps).
    ``extras``: any other per-row tensors (batch dim first) a custom decoder needs; ``select`` reindexes them.
    """

    cache: Cache
    attention_mask: Tensor
    next_position: Tensor
    extras: dict[str, Tensor] = field(default_factory=dict)


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """HF convention for left padding: ``cumsum(mask) - 1`` for real tokens, 1 for pads. [B,T] long."""
    mask = attention_mask.long()
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)


def check_left_padded(attention_mask: Tensor) -> None:
    """Raise ``ValueError`` unless every row is zeros then ones with at least one real (last) token."""
    if attention_mask.ndim != 2 or attention_mask.shape[1] == 0:
        raise ValueError(f"attention_mask must be [B,T] with T>0, got shape {tuple(attention_mask.shape)}")
    mask = attention_mask.long()
    if not bool((mask[:, -1] == 1).all()) or not bool((mask[:, 1:] >= mask[:, :-1]).all()):
        raise ValueError("attention_mask must be left-padded (0..0 1..1) with a real last token in every row")


def select_state(state: DecodeState, row_index: Tensor) -> DecodeState:
    """Reindex every per-row part of ``state`` (cache in place, via ``Cache.reorder_cache``)."""
    row_index = row_index.to(device=state.attention_mask.device, dtype=torch.long)
    state.cache.reorder_cache(row_index)
    return replace(
        state,
        attention_mask=state.attention_mask.index_select(0, row_index),
        next_position=state.next_position.index_select(0, row_index),
        extras={k: v.index_select(0, row_index.to(v.device)) for k, v in state.extras.items()},
    )


class HFCausalLMDecoder:
    """:class:`Decoder` for any transformers causal LM (``LlamaForCausalLM`` …) with a ``DynamicCache``.

    Passes a 2D attention mask and explicit position ids so left-padded rows decode exactly like unpadded
    ones; transformers builds the 4D mask (and drops it to ``None`` for sdpa when nothing is padded).
    """

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @torch.no_grad()
    def prefill(self, inputs_embeds: Tensor, attention_mask: Tensor) -> tuple[Tensor, DecodeState]:
        check_left_padded(attention_mask)
        weight = self.model.get_input_embeddings().weight
        embeds = inputs_embeds.to(device=weight.device, dtype=weight.dtype)
        mask = attention_mask.to(device=weight.device, dtype=torch.long)
        out = self.model(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=position_ids_from_mask(mask),
            cache=DynamicCache(config=self.model.config),
            use_cache=True,
            logits_to_keep=1,
        )
        state = DecodeState(cache=out.cache, attention_mask=mask, next_position=mask.sum(-1))
        return out.logits[:, -1].float(), state

    @torch.no_grad()
    def step(self, token_ids: Tensor, state: DecodeState) -> tuple[Tensor, DecodeState]:
        mask = state.attention_mask
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        out = self.model(
            input_ids=token_ids.to(mask.device).view(-1, 1),
            attention_mask=mask,
            position_ids=state.next_position.view(-1, 1),
            cache=state.cache,
            use_cache=True,
        )
        new_state = replace(
            state, cache=out.cache, attention_mask=mask, next_position=state.next_position + 1
        )
        return out.logits[:, -1].float(), new_state

    def select(self, state: DecodeState, row_index: Tensor) -> DecodeState:
        return select_state(state, row_index)
