"""Hugging Face LLaVA-style models (``LlavaForConditionalGeneration``) as a fast3d target family.

The image goes through the vision tower and the projector (``get_image_features``); its ``n_visual``
features replace the image placeholder tokens of the prompt, exactly where HF's ``masked_scatter`` puts
them. Each image token is one pruning unit (``group = 1``). The language model is the shared
``model.language_model`` + ``lm_head`` seen as a Llama-style causal LM, so every fast3d method runs on it.

:func:`faster_vlm_scores` is the FasterVLM scorer: the attention of the vision tower's [CLS] token to the
patch tokens, head-mean, at the layer LLaVA takes its features from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from fast3d_cli.models.adapter import (
    AdapterInputs,
    CausalLMView,
    SampleKey,
    content_keys,
    left_pad,
    span_embeddings,
)


@dataclass
class ImageBatch:
    """Prompts with the image token (once, or already expanded to one per image feature) and their
    preprocessed images ``pixel_values`` [B, 3, H, W] (e.g. ``processor.image_processor(...)``).

    ``feature_index`` [B, k] (optional): the image features each prompt gets, in this order; the others are
    dropped before the language model, which then sees ``k`` image tokens at contiguous positions (how the
    official FasterVLM prunes, see :func:`select_before_llm`)."""

    prompts: Sequence[str]
    pixel_values: Tensor
    keys: Sequence[SampleKey] | None = None
    feature_index: Tensor | None = None


class LlavaAdapter:
    """:class:`~fast3d_cli.models.adapter.TargetAdapter` for ``LlavaForConditionalGeneration``.

    ``tokenizer``: the model's tokenizer (``processor.tokenizer``). Teacher-forced inputs (attention maps)
    are ``prompt + " " + answer`` tokenised as one string, no EOS; map rows are the tokens after the image.
    """

    group = 1

    def __init__(self, model: nn.Module, tokenizer: Any) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.image_token_id = int(model.config.image_token_id)
        self._language_model = CausalLMView(model.model.language_model, model.lm_head)

    @property
    def language_model(self) -> nn.Module:
        return self._language_model

    @property
    def eos_token_id(self) -> int:
        return _first_id(self.tokenizer.eos_token_id, self.model.config.text_config.eos_token_id)

    @property
    def bos_token_id(self) -> int:
        return _first_id(self.tokenizer.bos_token_id, self.model.config.text_config.bos_token_id)

    @property
    def vision_tower(self) -> nn.Module:
        return self.model.model.vision_tower

    def image_features(self, pixel_values: Tensor) -> Tensor:
        """[B, n_visual, H]: projected image features, as LLaVA inserts them."""
        tower = self.vision_tower
        weight = next(tower.parameters())
        out = self.model.model.get_image_features(
            pixel_values=pixel_values.to(weight.device, weight.dtype), return_dict=True
        )
        return torch.stack(list(out.pooler_output))

    def token_ids(self, prompt: str, answer: str | None, n_visual: int) -> tuple[list[int], int]:
        """Prompt (+ answer) ids with the image placeholder expanded to ``n_visual`` tokens; its start."""
        text = prompt if answer is None else f"{prompt} {answer}"
        ids = list(self.tokenizer(text).input_ids)
        where = [i for i, token in enumerate(ids) if token == self.image_token_id]
        if len(where) == 1:
            ids[where[0] : where[0] + 1] = [self.image_token_id] * n_visual
        elif len(where) != n_visual or where[-1] - where[0] != n_visual - 1:
            raise ValueError(
                f"a prompt needs the image token once or {n_visual} times in a row, found {len(where)}: "
                f"{prompt!r}"
            )
        return ids, where[0]

    def build_inputs(self, batch: ImageBatch, answers: Sequence[str] | None = None) -> AdapterInputs:
        features = self.image_features(batch.pixel_values)
        if batch.feature_index is not None:
            index = batch.feature_index.to(features.device)
            features = features.gather(1, index[..., None].expand(-1, -1, features.shape[-1]))
        n_visual = features.shape[1]
        embed = self.language_model.get_input_embeddings()
        rows = [
            self.token_ids(prompt, None if answers is None else answers[i], n_visual)
            for i, prompt in enumerate(batch.prompts)
        ]
        sequences = []
        for (ids, start), image in zip(rows, features, strict=True):
            sequence = embed(torch.tensor(ids, device=embed.weight.device)).clone()
            sequence[start : start + n_visual] = image.to(sequence.dtype)
            sequences.append(sequence)
        embeds, mask, pad = left_pad(sequences)
        visual_start = pad + torch.tensor([start for _, start in rows])
        return AdapterInputs(embeds, mask, visual_start, n_visual, self.group, visual_start + n_visual)

    def visual_embeddings(self, inputs: AdapterInputs) -> Tensor:
        return span_embeddings(inputs)

    def sample_keys(self, batch: ImageBatch) -> list[SampleKey]:
        return list(batch.keys) if batch.keys is not None else content_keys(batch.prompts, batch.pixel_values)

    def decode(self, ids: Sequence[Sequence[int]]) -> list[str]:
        return [self.tokenizer.decode(list(row), skip_special_tokens=True).strip() for row in ids]

    def cls_attention_layer(self) -> nn.Module:
        """The vision-tower layer FasterVLM reads (see :func:`cls_attention_layer`)."""
        return cls_attention_layer(self.model)

    def cls_attention_scores(self, batch: ImageBatch, keep: Tensor | None = None) -> Tensor:
        """FasterVLM scores; ``keep`` is not needed: an image keeps its top tokens (official LLaVA code)."""
        return faster_vlm_scores(self, batch.pixel_values)


def _first_id(*candidates: Any) -> int:
    for candidate in candidates:
        if isinstance(candidate, int):
            return candidate
        if isinstance(candidate, list) and candidate:
            return int(candidate[0])
    raise ValueError("the tokenizer and the text config define no such special token")


def cls_attention_layer(model: nn.Module, tower: nn.Module | None = None) -> nn.Module:
    """The vision-tower encoder layer whose output LLaVA takes as image features, checked to expose the
    [CLS] attention FasterVLM needs (raises ``ValueError`` otherwise). ``tower``: another tower than
    ``model.model.vision_tower`` (Video-LLaVA's video tower, whose features always keep the [CLS] token)."""
    config = model.config
    if tower is None and config.vision_feature_select_strategy != "default":
        raise ValueError(
            "FasterVLM scores need vision_feature_select_strategy='default' (a [CLS] token dropped from the "
            f"image features); this model uses {config.vision_feature_select_strategy!r}"
        )
    if not isinstance(config.vision_feature_layer, int):
        raise ValueError("FasterVLM scores need a single vision_feature_layer, not a list of layers")
    tower = model.model.vision_tower if tower is None else tower
    tower = getattr(tower, "vision_model", tower)  # towers that wrap their transformer
    if not hasattr(getattr(tower, "embeddings", None), "class_embedding"):
        raise ValueError(
            f"the vision tower {type(tower).__name__} has no [CLS] token: FasterVLM does not apply"
        )
    layers = tower.encoder.layers
    selected = config.vision_feature_layer % (len(layers) + 1)  # index into hidden_states (0 = embeddings)
    if selected == 0:
        raise ValueError("vision_feature_layer selects the embeddings: no attention produced those features")
    layer = layers[selected - 1]
    attention = getattr(layer, "self_attn", None)
    if not all(hasattr(attention, name) for name in ("q_proj", "k_proj", "num_heads", "head_dim", "scale")):
        raise ValueError(
            f"cannot recompute the attention of {type(attention).__name__}: FasterVLM unsupported"
        )
    return layer


def cls_attention(attention: nn.Module, hidden: Tensor) -> Tensor:
    """Head-mean softmax attention of token 0 ([CLS]) to tokens 1.. from the layer's q/k projections.
    ``hidden`` [B, T, D] is the attention module's input; returns [B, T - 1] float32."""
    batch, length, _ = hidden.shape
    heads, dim = attention.num_heads, attention.head_dim
    query = attention.q_proj(hidden[:, :1]).view(batch, 1, heads, dim).transpose(1, 2)
    key = attention.k_proj(hidden).view(batch, length, heads, dim).transpose(1, 2)
    probs = ((query.float() @ key.float().transpose(-1, -2)) * attention.scale).softmax(-1)  # [B, H, 1, T]
    return probs[:, :, 0, 1:].mean(1)


def faster_vlm_scores(adapter: LlavaAdapter, pixel_values: Tensor) -> Tensor:
    """FasterVLM [CLS] attention ([B, n_image_tokens], float32).

    The attention of the [CLS] token to every patch token, averaged over heads, in the vision-tower layer
    that produces ``hidden_states[vision_feature_layer]`` (for the usual negative index this is
    ``attentions[vision_feature_layer]``, FasterVLM's choice). The row is recomputed from that layer's
    q/k projections during one normal forward of the tower, whatever its attention implementation.
    """
    layer = adapter.cls_attention_layer()
    captured: dict[str, Tensor] = {}

    def keep_input(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        captured["hidden"] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]

    weight = next(adapter.vision_tower.parameters())
    handle = layer.self_attn.register_forward_pre_hook(keep_input, with_kwargs=True)
    try:
        with torch.no_grad():
            adapter.vision_tower(pixel_values.to(weight.device, weight.dtype))
            return cls_attention(layer.self_attn, captured["hidden"])
    finally:
        handle.remove()


def select_before_llm(adapter: LlavaAdapter, batch: ImageBatch, keep: int) -> ImageBatch:
    """``batch`` pruned the official FasterVLM way: each sample's ``keep`` image features with the highest
    [CLS] attention (per frame for videos), in their original order, are the only ones the language model
    sees (contiguous positions, as if the image had ``keep`` tokens)."""
    rows = batch.pixel_values.shape[0]
    scores = adapter.cls_attention_scores(batch, torch.full((rows,), keep, dtype=torch.long))
    index = scores.topk(keep, dim=1).indices.sort(dim=1).values
    return replace(batch, feature_index=index)
