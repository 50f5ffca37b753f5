"""The spec §3 aggregation: from captured attention to per-object maps.

Ā = mean over layers (and heads) of the attention probabilities; rows = the text after the object list;
columns = the visual tokens, summed per object (identifier + 3D + 2D) ->
``a_map`` (object_scores) = mean over all text rows, ``a_map_ori`` (prompt_scores) = mean over the first m'
rows, m' = the token count of " {prompt} ". No normalisation: values are raw attention mass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fast3d_cli.attention.capture import CaptureResult


@dataclass
class SampleMaps:
    object_scores: Tensor  # [B, n_obj] float32
    prompt_scores: Tensor  # [B, n_obj] float32
    token_scores: Tensor | None = None  # [B, n_visual]
    layer_scores: Tensor | None = None  # [B, n_layers, n_obj]


def _row_mean(values: Tensor, first: Tensor, count: Tensor) -> Tensor:
    """Mean of ``values`` [B, R, X] over rows first[b] .. first[b]+count[b]-1 (row indices relative to R)."""
    rows = torch.arange(values.shape[1], device=values.device)[None, :]
    keep = (rows >= first[:, None]) & (rows < (first + count)[:, None])
    weights = keep.to(values.dtype) / count.clamp(min=1)[:, None].to(values.dtype)
    return torch.einsum("br,brx->bx", weights, values)


def aggregate_maps(
    result: CaptureResult,
    text_start: Tensor,
    text_len: Tensor,
    prompt_len: Tensor,
    tokens_per_object: int = 3,
) -> SampleMaps:
    """Per-sample maps from a capture.

    ``text_start`` [B]: padded position of the first text token; ``text_len`` [B]: its number of text
    tokens; ``prompt_len`` [B]: the token count of " {prompt} " (the a_map_ori rows).
    """
    device = result.layer_sum.device
    first = text_start.to(device) - result.row_start
    text_len, prompt_len = text_len.to(device), prompt_len.to(device)
    mean_attention = result.layer_sum / result.n_layers  # [B, R, V]
    batch, rows, n_visual = mean_attention.shape
    per_object = mean_attention.reshape(batch, rows, n_visual // tokens_per_object, tokens_per_object).sum(-1)
    maps = SampleMaps(
        object_scores=_row_mean(per_object, first, text_len),
        prompt_scores=_row_mean(per_object, first, torch.minimum(prompt_len, text_len)),
    )
    if result.per_layer is not None:
        maps.token_scores = _row_mean(mean_attention, first, text_len)
        layers = result.per_layer.reshape(result.n_layers, batch, rows, -1, tokens_per_object).sum(-1)
        maps.layer_scores = torch.stack([_row_mean(layer, first, text_len) for layer in layers], dim=1)
    return maps


def adapter_maps(adapter: Any, inputs: Any, text_len: Tensor, prompt_len: Tensor) -> SampleMaps:
    """The maps of one teacher-forced prefill of a target adapter's ``inputs`` (``AdapterInputs``): every
    layer's attention captured for the rows after the visual tokens, then :func:`aggregate_maps`."""
    from fast3d_cli.attention.capture import AttentionCapture, capturing
    from fast3d_cli.generation import position_ids_from_mask

    llm = adapter.language_model
    mask = inputs.attention_mask
    capture = AttentionCapture(int(inputs.text_start.min()), inputs.visual_start, inputs.n_visual)
    with capturing(llm, capture):
        llm.model(
            inputs_embeds=inputs.inputs_embeds,
            attention_mask=mask,
            position_ids=position_ids_from_mask(mask),
            use_cache=False,
        )
    return aggregate_maps(capture.result(), inputs.text_start, text_len, prompt_len, inputs.group)
