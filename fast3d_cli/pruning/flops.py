"""Analytic prefill FLOPs of a Llama-style decoder (multiply-add = 2 FLOPs), with layer-dependent lengths."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any


def layer_flops(config: Any, tokens: int) -> float:
    """One decoder layer over ``tokens`` causal tokens: projections, MLP and causal attention."""
    hidden = config.hidden_size
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    projections = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2  # q, o, k, v
    mlp = 3 * hidden * config.intermediate_size
    attention = 2 * tokens * tokens * heads * head_dim  # QK^T and AV, halved for causality
    return 2.0 * tokens * (projections + mlp) + attention


def prefill_flops(
    config: Any, prompt_tokens: int, visual_removed: int | Sequence[int], layer: int | Sequence[int]
) -> float:
    """Prefill FLOPs of one prompt when ``visual_removed`` tokens leave the sequence before ``layer``; with
    several drops (multi-stage), ``visual_removed[i]`` tokens are gone (in all) from ``layer[i]`` on, and
    each stage is counted at its own length."""
    layers = [layer] if isinstance(layer, int) else list(layer)
    removed = [visual_removed] if isinstance(visual_removed, int) else list(visual_removed)
    bounds = [0, *layers, config.num_hidden_layers]
    lengths = [prompt_tokens, *(prompt_tokens - r for r in removed)]
    stages = sum(
        (stop - start) * layer_flops(config, length)
        for (start, stop), length in zip(pairwise(bounds), lengths, strict=True)
    )
    head = 2.0 * config.hidden_size * config.vocab_size  # LM head on the last position
    return stages + head


def mean_prefill_gflops(
    config: Any, prompt_tokens: Sequence[int], removed: Sequence[Any], layer: int | Sequence[int]
) -> float:
    flops = [prefill_flops(config, t, r, layer) for t, r in zip(prompt_tokens, removed, strict=True)]
    return sum(flops) / len(flops) / 1e9 if flops else 0.0
