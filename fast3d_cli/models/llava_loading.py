"""Load a Hugging Face LLaVA-family checkpoint folder (the ``llava`` model family, docs/llava.md).

The folder is what ``save_pretrained`` writes: ``config.json``, ``*.safetensors`` and the processor
(tokenizer + image processor). The architecture comes from ``config.json`` (``model_type`` "llava" or
"video_llava", or ``architectures``), read without importing torch, so every option is checked before the
model loads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from fast3d_cli.errors import UserError
from fast3d_cli.evaluation.fingerprint import files_fingerprint

ARCHITECTURES = {  # model_type -> transformers class
    "llava": "LlavaForConditionalGeneration",
    "video_llava": "VideoLlavaForConditionalGeneration",
}


@dataclass(frozen=True)
class LlavaTarget:
    """A loaded checkpoint: the model, its tokenizer and image processor, and whether it reads videos."""

    model: Any
    tokenizer: Any
    image_processor: Any
    is_video: bool
    image_token: str


@dataclass(frozen=True)
class LlavaSource:
    """A checkpoint folder, checked on creation (exists, has a LLaVA-family config.json)."""

    model_dir: Path

    def __post_init__(self) -> None:
        if not Path(self.model_dir).is_dir():
            raise UserError(f"model folder not found: {self.model_dir}")
        self.architecture  # noqa: B018 - validates config.json now

    @cached_property
    def config(self) -> dict[str, Any]:
        path = Path(self.model_dir) / "config.json"
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"{self.model_dir} has no config.json: not a Hugging Face checkpoint") from None
        except (OSError, ValueError) as err:
            raise UserError(f"cannot read {path}: {err}") from None
        if not isinstance(config, dict):
            raise UserError(f"{path} is not a JSON object")
        return config

    @property
    def architecture(self) -> str:
        config = self.config
        named = [a for a in config.get("architectures") or [] if a in ARCHITECTURES.values()]
        if named:
            return named[0]
        model_type = config.get("model_type")
        if model_type in ARCHITECTURES:
            return ARCHITECTURES[model_type]
        raise UserError(
            f"{self.model_dir} holds a {model_type!r} model; --model-family llava reads "
            f"{' or '.join(ARCHITECTURES.values())} checkpoints"
        )

    @property
    def is_video(self) -> bool:
        return self.architecture == ARCHITECTURES["video_llava"]

    def n_layers(self) -> int | None:
        text = self.config.get("text_config")
        layers = text.get("num_hidden_layers") if isinstance(text, dict) else None
        return layers if isinstance(layers, int) and not isinstance(layers, bool) and layers > 0 else None

    def patches_per_frame(self) -> int | None:
        """Visual tokens per image/frame, from the vision config (None where it does not say)."""
        vision = self.config.get("vision_config")
        if not isinstance(vision, dict):
            return None
        size, patch = vision.get("image_size"), vision.get("patch_size")
        if not all(isinstance(v, int) and v > 0 for v in (size, patch)):
            return None
        # Video-LLaVA's video features keep every frame's [CLS] token; images drop it unless "full"
        keeps_cls = self.is_video or self.config.get("vision_feature_select_strategy", "default") == "full"
        return (size // patch) ** 2 + int(keeps_cls)

    def files(self) -> list[Path]:
        directory = Path(self.model_dir)
        return [directory / "config.json", *sorted(directory.glob("*.safetensors"))]

    def fingerprint(self) -> str:
        files = self.files()
        if len(files) == 1:
            raise UserError(f"{self.model_dir} has no *.safetensors weights")
        return files_fingerprint(files)

    def describe(self) -> str:
        return f"{self.model_dir} ({self.architecture})"

    def load(self, device: str = "auto", dtype: str = "auto") -> LlavaTarget:
        import transformers

        from fast3d_cli.models.loading import preferred_attention, resolve_device, resolve_dtype

        resolved = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, resolved)
        model_class = getattr(transformers, self.architecture)
        model = model_class.from_pretrained(self.model_dir, dtype=torch_dtype)
        model.set_attn_implementation(preferred_attention(resolved, torch_dtype))
        tokenizer, image_processor, image_token = _processor_parts(Path(self.model_dir), self.is_video)
        return LlavaTarget(model.to(resolved).eval(), tokenizer, image_processor, self.is_video, image_token)


def _processor_parts(directory: Path, is_video: bool) -> tuple[Any, Any, str]:
    """Tokenizer, image processor and the image/video placeholder text, from the folder's processor files."""
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    try:
        processor = AutoProcessor.from_pretrained(directory)
    except (OSError, ValueError, TypeError, AttributeError, ImportError):
        processor = None  # e.g. Video-LLaVA's video processor needs torchvision: read the parts alone
    tokenizer = getattr(processor, "tokenizer", None) or AutoTokenizer.from_pretrained(directory)
    image_processor = getattr(processor, "image_processor", None) or AutoImageProcessor.from_pretrained(
        directory
    )
    token = getattr(processor, "video_token" if is_video else "image_token", None)
    return tokenizer, image_processor, token or ("<video>" if is_video else "<image>")
