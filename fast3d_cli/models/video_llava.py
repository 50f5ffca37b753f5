"""Hugging Face ``VideoLlavaForConditionalGeneration`` as a fast3d target (the ``llava`` family, videos).

A video of ``T`` frames goes through the video tower frame by frame; Hugging Face's Video-LLaVA keeps every
frame's ``P + 1`` tokens (its [CLS] token first, then the ``P`` patches) and puts the ``T * (P + 1)``
projected features where the prompt's ``<video>`` placeholder is. Each token is one pruning unit.

FasterVLM on videos (official Video-LLaVA code, ``encode_videos``): per frame, the head-mean attention of
the frame's [CLS] token to its patches at the feature layer; every frame keeps the same number of tokens
(its top ones), in their original order. Here a frame's [CLS] token, which the original model never shows
the LLM, is kept first, so keeping everything equals the dense model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from fast3d_cli.models.llava import ImageBatch, LlavaAdapter, cls_attention_layer, faster_vlm_scores

FRAME_CLS_SCORE = 2.0  # above any attention probability: a frame's [CLS] token ranks first in its frame
CHOSEN_BONUS = 4.0  # above any score: a frame's picks rank above every unpicked token of the video


class VideoLlavaAdapter(LlavaAdapter):
    """:class:`LlavaAdapter` for videos: ``ImageBatch.pixel_values`` is [B, T, 3, H, W]."""

    def __init__(self, model: nn.Module, tokenizer: Any) -> None:
        super().__init__(model, tokenizer)
        self.image_token_id = int(model.config.video_token_id)

    @property
    def vision_tower(self) -> nn.Module:
        return self.model.model.video_tower

    def image_features(self, pixel_values: Tensor) -> Tensor:
        """[B, T * (P + 1), H]: the projected frame features in order, as Video-LLaVA inserts them."""
        weight = next(self.vision_tower.parameters())
        out = self.model.model.get_video_features(
            pixel_values_videos=pixel_values.to(weight.device, weight.dtype),
            vision_feature_layer=self.model.config.vision_feature_layer,
        )
        features = out.pooler_output  # [B * T, P + 1, H]
        return features.reshape(pixel_values.shape[0], -1, features.shape[-1])

    def cls_attention_layer(self) -> nn.Module:
        return cls_attention_layer(self.model, self.vision_tower)

    def cls_attention_scores(self, batch: ImageBatch, keep: Tensor | None = None) -> Tensor:
        """[B, T * (P + 1)]: per frame, [CLS] first then the patches by [CLS] attention; with ``keep``
        (a multiple of T per sample) every frame's ``keep / T`` best tokens rank above all others."""
        videos = batch.pixel_values
        rows, frames = videos.shape[:2]
        patches = faster_vlm_scores(self, videos.flatten(0, 1)).view(rows, frames, -1)
        scores = torch.cat([patches.new_full((rows, frames, 1), FRAME_CLS_SCORE), patches], dim=-1)
        return per_frame_selection(scores, keep)


def per_frame_selection(scores: Tensor, keep: Tensor | None) -> Tensor:
    """[B, T, U] scores -> [B, T * U] scores whose top ``keep[b]`` are every frame's top ``keep[b] / T``
    (FasterVLM's per-frame top-k); ``keep`` None: the scores as they are."""
    rows, frames, _ = scores.shape
    if keep is None:
        return scores.flatten(1)
    keep = keep.to(scores.device)
    if bool((keep % frames != 0).any()):
        raise ValueError(f"FasterVLM keeps the same count per frame: keep must be a multiple of {frames}")
    rank = scores.argsort(dim=-1, descending=True, stable=True).argsort(dim=-1)  # rank within its frame
    chosen = rank < (keep // frames).view(rows, 1, 1)
    return (scores + CHOSEN_BONUS * chosen).flatten(1)
