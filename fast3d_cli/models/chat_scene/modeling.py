"""Chat-Scene on a stock ``LlamaForCausalLM``: object projections + identifier tokens (spec §1.2-§1.4)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fast3d_cli.models.chat_scene.configuration import ChatSceneConfig
from fast3d_cli.models.chat_scene.prompt import PromptLayout


def object_projector(in_dim: int, hidden: int) -> nn.Sequential:
    """Linear -> GELU -> Linear; indices 0 and 2 match the official ``object_proj.{0,2}`` keys."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))


@dataclass
class ModelInputs:
    """A left-padded batch. Positions are indices into the padded sequence of length T."""

    inputs_embeds: torch.Tensor  # [B, T, H]
    attention_mask: torch.Tensor  # [B, T] 1 = real token
    position_ids: torch.Tensor  # [B, T] 0-based positions of real tokens (pads: 0)
    visual_start: torch.Tensor  # [B] first visual token
    text_start: torch.Tensor  # [B] first token after p_1 (the user text)
    answer_start: torch.Tensor  # [B] first answer token (== T when there is no answer)
    labels: torch.Tensor | None = None  # [B, T] answer token ids, -100 elsewhere

    def to(self, device: torch.device | str) -> ModelInputs:
        def move(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x.to(device)

        return ModelInputs(*(move(getattr(self, f)) for f in self.__dataclass_fields__))


class ChatSceneModel(nn.Module):
    """The Chat-Scene model: ``llm`` + ``object_proj`` (3D) + ``object_img_proj`` (2D)."""

    def __init__(self, config: ChatSceneConfig, tokenizer: Any, llm: nn.Module | None = None) -> None:
        super().__init__()
        from transformers import LlamaForCausalLM

        self.config = config
        self.tokenizer = tokenizer
        self.llm = llm if llm is not None else LlamaForCausalLM._from_config(config.llama_config())
        hidden = self.llm.config.hidden_size
        self.object_proj = object_projector(config.feat_dim_3d, hidden)
        self.object_img_proj = object_projector(config.feat_dim_2d, hidden)
        self.layout = PromptLayout(config, tokenizer)

    @cached_property
    def _obj_token_id_list(self) -> list[int]:
        ids = self.tokenizer.convert_tokens_to_ids(self.config.obj_tokens())
        unk = self.tokenizer.unk_token_id
        if any(i is None or (unk is not None and i == unk) for i in ids):
            raise ValueError("the tokenizer lacks the object identifier tokens <OBJ000>..")
        return list(ids)

    @property
    def obj_token_ids(self) -> torch.Tensor:
        # A fresh tensor per call: one cached under torch.inference_mode() would poison later training.
        return torch.tensor(self._obj_token_id_list, dtype=torch.long)

    @property
    def embed_tokens(self) -> nn.Embedding:
        return self.llm.get_input_embeddings()

    @property
    def device(self) -> torch.device:
        return self.object_proj[0].weight.device

    def object_embeddings(
        self, feats_3d: torch.Tensor, feats_2d: torch.Tensor, object_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """[B, N, D3], [B, N, D2] -> [B, 3N, H]: per object (identifier, 3D, 2D) (spec §1.4).

        Slot j carries identifier <OBJj> (Chat-Scene's layout, N = 100). ``object_ids`` [B, N] names another
        identifier per slot instead; the sample model's training curriculum uses it for short object lists.
        """
        batch, n_obj = feats_3d.shape[:2]
        dtype = self.object_proj[0].weight.dtype
        if object_ids is None:
            ids = self.embed_tokens(self.obj_token_ids[:n_obj].to(self.device)).expand(batch, -1, -1)
        else:
            ids = self.embed_tokens(self.obj_token_ids.to(self.device)[object_ids.to(self.device)])
        p3 = self.object_proj(F.normalize(feats_3d.to(self.device, dtype), dim=-1))
        p2 = self.object_img_proj(F.normalize(feats_2d.to(self.device, dtype), dim=-1))
        triplets = torch.stack([ids.to(p3.dtype), p3, p2], dim=2)
        return triplets.reshape(batch, n_obj * 3, -1)

    def build_inputs(
        self,
        prompts: Sequence[str],
        feats_3d: torch.Tensor,
        feats_2d: torch.Tensor,
        answers: Sequence[str] | None = None,
        object_ids: torch.Tensor | None = None,
    ) -> ModelInputs:
        """Embed a batch into the Chat-Scene layout, left-padded (with ``answers``: labels too)."""
        user_ids = [self.layout.user_ids(p) for p in prompts]
        answer_ids = (
            [self.layout.answer_ids(a) for a in answers] if answers is not None else [[] for _ in prompts]
        )
        inputs = self.assemble(
            [u + a for u, a in zip(user_ids, answer_ids, strict=True)],
            feats_3d,
            feats_2d,
            [len(a) for a in answer_ids],
            object_ids,
        )
        if answers is None:
            inputs.labels = None
        return inputs

    def build_teacher_forced(
        self, prompts: Sequence[str], captions: Sequence[str], feats_3d: torch.Tensor, feats_2d: torch.Tensor
    ) -> tuple[ModelInputs, torch.Tensor, torch.Tensor]:
        """The attention-extraction input (spec §3): text = " {prompt} ASSISTANT: {caption}" tokenised as one
        string, no EOS. Also returns each sample's text length and the token count of " {prompt} "."""
        texts = [self.layout.teacher_text(p, c) for p, c in zip(prompts, captions, strict=True)]
        text_ids = [self.layout.encode(t) for t in texts]
        prompt_len = torch.tensor([len(self.layout.encode(f" {p} ")) for p in prompts])
        inputs = self.assemble(text_ids, feats_3d, feats_2d, [0] * len(texts))
        inputs.labels = None
        return inputs, torch.tensor([len(t) for t in text_ids]), prompt_len

    def assemble(
        self,
        text_ids: Sequence[list[int]],
        feats_3d: torch.Tensor,
        feats_2d: torch.Tensor,
        n_labels: Sequence[int],
        object_ids: torch.Tensor | None = None,
    ) -> ModelInputs:
        """[p_0 | objects | p_1 | text] per sample, left-padded; the last n_labels[i] tokens are labels."""
        layout = self.layout
        objects = self.object_embeddings(feats_3d, feats_2d, object_ids)
        head, tail = self._embed(layout.prefix_ids), self._embed(layout.suffix_ids)
        sequences = [torch.cat([head, objects[i], tail, self._embed(ids)]) for i, ids in enumerate(text_ids)]
        batch, length = len(sequences), max(s.shape[0] for s in sequences)
        embeds = sequences[0].new_zeros(batch, length, sequences[0].shape[-1])
        mask = torch.zeros(batch, length, dtype=torch.long, device=self.device)
        labels = torch.full((batch, length), -100, dtype=torch.long, device=self.device)
        pad = torch.tensor([length - s.shape[0] for s in sequences])
        for i, seq in enumerate(sequences):
            embeds[i, pad[i] :] = seq
            mask[i, pad[i] :] = 1
            if n_labels[i]:
                labels[i, length - n_labels[i] :] = torch.tensor(text_ids[i][-n_labels[i] :])
        text_offset = layout.n_prefix + objects.shape[1] + len(layout.suffix_ids)
        return ModelInputs(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
            visual_start=pad + layout.n_prefix,
            text_start=pad + text_offset,
            answer_start=torch.tensor([length - n for n in n_labels]),
            labels=labels,
        )

    def _embed(self, ids: list[int]) -> torch.Tensor:
        return self.embed_tokens(torch.tensor(ids, dtype=torch.long, device=self.device))

    def forward(self, inputs: ModelInputs, **kwargs: Any) -> Any:
        """Teacher-forced forward of the backbone on a built batch (loss when ``inputs.labels`` is set)."""
        return self.llm(
            inputs_embeds=inputs.inputs_embeds,
            attention_mask=inputs.attention_mask,
            position_ids=inputs.position_ids,
            labels=inputs.labels,
            **kwargs,
        )
