"""Model inputs of the GAP network from annotation samples (spec §4.1).

Per sample: the 3D and 2D object features [max_obj_num, D] of its scene (zeros for absent objects, not
normalised, as official), the proposal boxes [max_obj_num, 6] and the tokenised annotation ``prompt``.

Boxes: the official collator ``torch.stack``s each scene's ``locs`` and so requires exactly 100 proposals per
scene (spec §2.5, §8.11). We zero-pad scenes with fewer proposals (and keep the first ``max_obj_num`` of
scenes with more), matching the zero features of the absent objects; for 100-proposal scenes it is identical.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch

from fast3d_cli.data import Sample, SceneBank
from fast3d_cli.errors import DataFileError, UserError
from fast3d_cli.gap.configuration import GAPConfig


@dataclass
class GAPBatch:
    """The inputs of :meth:`GAPModel.forward`, as tensors."""

    feats_3d: torch.Tensor  # [B, N, D3] float32
    feats_2d: torch.Tensor  # [B, N, D2] float32
    locs: torch.Tensor  # [B, N, dim_loc] float32
    input_ids: torch.Tensor  # [B, T] long, right-padded
    attention_mask: torch.Tensor  # [B, T] long

    def to(self, device: str | torch.device) -> GAPBatch:
        return GAPBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def tokenize_prompts(
    tokenizer: Any, prompts: Sequence[str], config: GAPConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids`` and ``attention_mask`` [B, T] (T = longest prompt in the batch).

    No truncation below ``config.text_max_length`` (``max_text_len``, else the text encoder's capacity).
    """
    encoded = tokenizer(
        list(prompts),
        padding=True,
        truncation=True,
        max_length=config.text_max_length,
        padding_side="right",
        return_tensors="pt",
        return_token_type_ids=False,
    )
    input_ids, mask = encoded["input_ids"], encoded["attention_mask"]
    empty = (mask.sum(-1) == 0).nonzero().flatten().tolist()
    if empty:
        raise UserError(f"prompt {empty[0]} of the batch has no tokens: {prompts[empty[0]]!r}")
    return input_ids.long(), mask.long()


def scene_locs(bank: SceneBank, scene_id: str, config: GAPConfig) -> torch.Tensor:
    """Proposal boxes of a scene, float32 [max_obj_num, dim_loc], zero-padded (see the module doc)."""
    locs = torch.as_tensor(bank.proposal_locs(scene_id), dtype=torch.float32)
    if locs.ndim != 2 or locs.shape[1] != config.dim_loc:
        raise DataFileError(
            f"scene {scene_id}: proposal locs should be [N, {config.dim_loc}], got {list(locs.shape)}"
        )
    out = torch.zeros(config.max_obj_num, config.dim_loc)
    n = min(locs.shape[0], config.max_obj_num)
    out[:n] = locs[:n]
    return out


def build_batch(samples: Sequence[Sample], bank: SceneBank, tokenizer: Any, config: GAPConfig) -> GAPBatch:
    """Stack the GAP inputs of ``samples`` (all of ``bank``'s split)."""
    if not samples:
        raise ValueError("empty batch")
    for s in samples:
        if s.split != bank.split:
            raise ValueError(f"sample {s.task}/{s.split}/{s.index} given with the {bank.split} scene bank")
    feats = [bank.object_features(s.scene_id) for s in samples]
    for s, (f3, f2) in zip(samples, feats, strict=True):
        if f3.shape != (config.max_obj_num, config.feat_dim_3d) or f2.shape != (
            config.max_obj_num,
            config.feat_dim_2d,
        ):
            raise DataFileError(
                f"scene {s.scene_id}: features {list(f3.shape)} + {list(f2.shape)} do not fit the GAP "
                f"network ({config.max_obj_num} objects, {config.feat_dim_3d} + {config.feat_dim_2d} dims)"
            )
    input_ids, attention_mask = tokenize_prompts(tokenizer, [s.prompt for s in samples], config)
    return GAPBatch(
        feats_3d=torch.stack([f[0] for f in feats]),
        feats_2d=torch.stack([f[1] for f in feats]),
        locs=torch.stack([scene_locs(bank, s.scene_id, config) for s in samples]),
        input_ids=input_ids,
        attention_mask=attention_mask,
    )
