"""QA samples -> adapter batches for the ``llava`` family: the prompt template and image preprocessing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fast3d_cli.data.image_qa import ImageQASample, read_frames
from fast3d_cli.errors import UserError
from fast3d_cli.models.adapter import SampleKey
from fast3d_cli.models.llava import ImageBatch, LlavaAdapter
from fast3d_cli.models.llava_loading import LlavaTarget

PROMPT_TEMPLATE = "USER: {visual}\n{question} ASSISTANT:"
"""LLaVA-1.5 / Video-LLaVA conversation format; ``{visual}`` is the image (or video) placeholder token."""
SAMPLE_TASK = "image_qa"  # the task of every SampleKey (seeds the random scorer per question)


def prompt_for(sample: ImageQASample, visual_token: str) -> str:
    return PROMPT_TEMPLATE.format(visual=visual_token, question=sample.question.strip())


def make_adapter(target: LlavaTarget) -> LlavaAdapter:
    if target.is_video:
        from fast3d_cli.models.video_llava import VideoLlavaAdapter

        return VideoLlavaAdapter(target.model, target.tokenizer)
    return LlavaAdapter(target.model, target.tokenizer)


def qa_batch(target: LlavaTarget, samples: Sequence[ImageQASample]) -> ImageBatch:
    """The prompts and preprocessed pixels of ``samples`` (images [B, 3, H, W]; videos [B, T, 3, H, W])."""
    import torch

    if any(sample.is_video != target.is_video for sample in samples):
        raise UserError(f"this model reads {'videos' if target.is_video else 'images'} only")
    pixels = []
    for sample in samples:
        frames = read_frames(sample)
        values = _preprocess(target.image_processor, frames)
        pixels.append(values if target.is_video else values[0])
    lengths = {tuple(p.shape) for p in pixels}
    if len(lengths) != 1:
        raise UserError(f"the samples of one batch need the same frame count and size, got {sorted(lengths)}")
    prompts = [prompt_for(sample, target.image_token) for sample in samples]
    keys = [SampleKey(SAMPLE_TASK, sample.index) for sample in samples]
    return ImageBatch(prompts, torch.stack(pixels), keys)


def _preprocess(image_processor: Any, frames: list[Any]) -> Any:
    return image_processor(images=frames, return_tensors="pt").pixel_values
