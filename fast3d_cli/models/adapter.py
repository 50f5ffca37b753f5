"""The target-model adapter protocol: what a model family must provide for fast3d's pruning and maps.

fast3d prunes *inside* a Llama-style language model (:mod:`fast3d_cli.pruning.engine`), so a model family
only has to say three things:

* **where the visual tokens are**: every built prompt holds ``n_visual`` contiguous visual tokens starting
  at ``visual_start[b]`` of the left-padded sequence, cut into ``n_visual // group`` pruning units of
  ``group`` consecutive tokens (Chat-Scene: an object = identifier + 3D + 2D = 3 tokens; LLaVA: 1 patch);
* **how inputs are built**: ``build_inputs(batch)`` -> :class:`AdapterInputs` (``inputs_embeds`` with the
  visual embeddings already in place, and the key mask), optionally followed by teacher-forced answers
  (the attention-map extraction input);
* **how generation runs**: ``language_model``, a Llama-style causal LM view (``model.embed_tokens``,
  ``model.layers``, ``model.norm``, ``model.rotary_emb``, ``lm_head``, ``config``,
  ``set_attn_implementation`` and a ``forward`` taking ``inputs_embeds``/``input_ids``) that
  :class:`~fast3d_cli.pruning.engine.PrunedDecoder`, :class:`~fast3d_cli.generation.HFCausalLMDecoder` and
  :func:`~fast3d_cli.attention.capture.capturing` run, plus ``eos_token_id``/``bos_token_id`` and ``decode``.

Two more methods feed the scorers: ``visual_embeddings`` (one feature vector per unit, what DivPrune
compares) and ``sample_keys`` (stable per-sample identities that seed the random scorer, so a sample gets
the same draw in any batch). An adapter may also offer ``cls_attention_scores(batch)`` (the FasterVLM
scorer, see :class:`ClsAttentionAdapter`).

:class:`ChatSceneAdapter` wraps the reference family; :class:`fast3d_cli.models.llava.LlavaAdapter` is the
Hugging Face LLaVA one.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch
from torch import Tensor, nn

BatchT = TypeVar("BatchT", contravariant=True)


@dataclass(frozen=True)
class SampleKey:
    """A sample's identity for seeded scorers (same fields as :class:`~fast3d_cli.data.Sample` uses)."""

    task: str
    index: int


@dataclass
class AdapterInputs:
    """A built, left-padded batch and where its visual tokens are.

    ``inputs_embeds`` [B, T, H]; ``attention_mask`` [B, T] (1 = real token, zeros first); ``visual_start``
    [B]: first visual token of each row, ``n_visual`` visual tokens follow it; ``group``: tokens per pruning
    unit; ``text_start`` [B]: first query row of the attention maps (the text after the visual tokens).
    """

    inputs_embeds: Tensor
    attention_mask: Tensor
    visual_start: Tensor
    n_visual: int
    group: int
    text_start: Tensor

    def __post_init__(self) -> None:
        if self.n_visual % self.group:
            raise ValueError(f"{self.n_visual} visual tokens do not split into units of {self.group}")

    @property
    def n_units(self) -> int:
        return self.n_visual // self.group


@runtime_checkable
class TargetAdapter(Protocol[BatchT]):
    """What fast3d needs from a target model family (see the module docstring)."""

    @property
    def language_model(self) -> nn.Module:
        """Llama-style causal LM view (``model.{embed_tokens,layers,norm,rotary_emb}``, ``lm_head``)."""
        ...

    @property
    def eos_token_id(self) -> int: ...

    @property
    def bos_token_id(self) -> int: ...

    def build_inputs(self, batch: BatchT, answers: Sequence[str] | None = None) -> AdapterInputs:
        """The prompts of ``batch`` (with ``answers``: each followed by its teacher-forced answer)."""
        ...

    def visual_embeddings(self, inputs: AdapterInputs) -> Tensor:
        """[B, n_units, F]: one feature vector per pruning unit (what DivPrune compares)."""
        ...

    def sample_keys(self, batch: BatchT) -> list[SampleKey]:
        """Per-sample identities that seed the random scorer."""
        ...

    def decode(self, ids: Sequence[Sequence[int]]) -> list[str]:
        """Generated ids (EOS excluded) -> answer texts."""
        ...


@runtime_checkable
class ClsAttentionAdapter(Protocol[BatchT]):
    """Optional: an adapter whose vision tower exposes a [CLS] token (FasterVLM)."""

    def cls_attention_scores(self, batch: BatchT, keep: Tensor | None = None) -> Tensor:
        """[B, n_visual]: attention of the vision tower's [CLS] token to each visual token. ``keep`` [B]: the
        units each sample will keep, for adapters whose selection is not one global top-k (Video-LLaVA keeps
        the same count per frame: its scores then rank every frame's picks first)."""
        ...


def span_embeddings(inputs: AdapterInputs) -> Tensor:
    """[B, n_visual, H]: the visual token embeddings of a built batch."""
    embeds = inputs.inputs_embeds
    columns = inputs.visual_start.to(embeds.device)[:, None] + torch.arange(
        inputs.n_visual, device=embeds.device
    )
    return embeds.gather(1, columns[..., None].expand(-1, -1, embeds.shape[-1]))


def left_pad(sequences: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """[T_i, H] sequences -> embeds [B, T, H] (zeros first), mask [B, T] long, left padding [B]."""
    length = max(s.shape[0] for s in sequences)
    first = sequences[0]
    embeds = first.new_zeros(len(sequences), length, first.shape[-1])
    mask = torch.zeros(len(sequences), length, dtype=torch.long, device=first.device)
    pad = torch.tensor([length - s.shape[0] for s in sequences])
    for row, sequence in enumerate(sequences):
        embeds[row, int(pad[row]) :] = sequence
        mask[row, int(pad[row]) :] = 1
    return embeds, mask, pad


def content_keys(prompts: Sequence[str], visual: Tensor) -> list[SampleKey]:
    """Keys from the content (prompt text and visual input bytes): batch-independent and deterministic."""
    keys = []
    for prompt, row in zip(prompts, visual, strict=True):
        digest = zlib.crc32(
            row.detach().float().cpu().contiguous().numpy().tobytes(), zlib.crc32(prompt.encode())
        )
        keys.append(SampleKey("content", digest))
    return keys


class CausalLMView(nn.Module):
    """A Llama-style causal LM made of a backbone and an LM head that another model owns (shared, not
    copied), e.g. ``LlavaForConditionalGeneration``'s ``model.language_model`` and ``lm_head``."""

    def __init__(self, backbone: nn.Module, lm_head: nn.Module) -> None:
        super().__init__()
        self.model = backbone
        self.lm_head = lm_head

    @property
    def config(self) -> Any:
        return self.model.config

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_attn_implementation(self, implementation: str) -> None:
        self.model.set_attn_implementation(implementation)

    def forward(
        self,
        input_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        logits_to_keep: int = 0,
        **kwargs: Any,
    ) -> Any:
        from transformers.modeling_outputs import CausalLMOutputWithPast

        out = self.model(input_ids=input_ids, inputs_embeds=inputs_embeds, **kwargs)
        hidden = out.last_hidden_state
        logits = self.lm_head(hidden[:, -logits_to_keep:] if logits_to_keep else hidden)
        return CausalLMOutputWithPast(logits=logits, cache=out.cache)


@dataclass
class ChatSceneBatch:
    """Chat-Scene prompts and their scenes' object features ([B, n_obj, D3], [B, n_obj, D2])."""

    prompts: Sequence[str]
    feats_3d: Tensor
    feats_2d: Tensor
    keys: Sequence[SampleKey] | None = None


class ChatSceneAdapter:
    """:class:`TargetAdapter` over :class:`~fast3d_cli.models.chat_scene.ChatSceneModel` (unchanged).

    ``group`` 3 prunes objects, 1 single tokens. Teacher-forced inputs are the extraction format of
    ``fast3d extract`` (``" {prompt} ASSISTANT: {answer}"``, no EOS; map rows start after ``p_1``).
    """

    tokens_per_object = 3

    def __init__(self, model: Any, group: int = 3) -> None:
        if group not in (1, self.tokens_per_object):
            raise ValueError(f"Chat-Scene units are objects (group 3) or tokens (group 1), got {group}")
        self.model = model
        self.group = group

    @property
    def language_model(self) -> nn.Module:
        return self.model.llm

    @property
    def eos_token_id(self) -> int:
        return self.model.tokenizer.eos_token_id

    @property
    def bos_token_id(self) -> int:
        return self.model.tokenizer.bos_token_id

    def build_inputs(self, batch: ChatSceneBatch, answers: Sequence[str] | None = None) -> AdapterInputs:
        if answers is None:
            built = self.model.build_inputs(batch.prompts, batch.feats_3d, batch.feats_2d)
        else:
            built, _, _ = self.model.build_teacher_forced(
                batch.prompts, answers, batch.feats_3d, batch.feats_2d
            )
        return AdapterInputs(
            inputs_embeds=built.inputs_embeds,
            attention_mask=built.attention_mask,
            visual_start=built.visual_start,
            n_visual=self.model.config.n_visual_tokens,
            group=self.group,
            text_start=built.text_start,
        )

    def visual_embeddings(self, inputs: AdapterInputs) -> Tensor:
        from fast3d_cli.pruning.scorers import divprune_features

        return divprune_features(span_embeddings(inputs), self.tokens_per_object, self.group)

    def sample_keys(self, batch: ChatSceneBatch) -> list[SampleKey]:
        if batch.keys is not None:
            return list(batch.keys)
        return content_keys(batch.prompts, torch.cat([batch.feats_3d, batch.feats_2d], dim=-1))

    def decode(self, ids: Sequence[Sequence[int]]) -> list[str]:
        from fast3d_cli.generation import decode_batch

        return decode_batch(self.model.tokenizer, ids)
