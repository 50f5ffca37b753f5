"""Resolve where a target model comes from (our directory format or an official checkpoint) and load it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fast3d_cli.errors import UserError
from fast3d_cli.evaluation.fingerprint import files_fingerprint

DTYPES = ("auto", "float32", "bfloat16", "float16")


def path_kind(path: Path) -> str:
    """What ``path`` is, in words ("a folder", "a character device" ...), for error lines."""
    import stat

    mode = path.stat().st_mode
    kinds = (
        (stat.S_ISDIR, "a folder"), (stat.S_ISREG, "a regular file"), (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"),
    )  # fmt: skip
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def check_model_path(option: str, path: Path, folder: bool) -> None:
    """``path`` given as ``option`` exists and is a folder (``folder``) or a regular file, else one line."""
    if not path.exists():
        raise UserError(f"model path not found: {path}")
    if folder and not path.is_dir():
        raise UserError(f"{option} {path} is {path_kind(path)}, not a folder (one with config.json)")
    if not folder and not path.is_file():
        raise UserError(f"{option} {path} is {path_kind(path)}, not a checkpoint file (.pth)")


@dataclass(frozen=True)
class ModelSource:
    """Either ``model_dir`` (config.json + model.safetensors + tokenizer) or ``checkpoint`` + ``base_llm``.

    ``trust_checkpoint`` loads ``checkpoint`` with full pickle (``weights_only=False``), running its code.
    """

    model_dir: Path | None = None
    checkpoint: Path | None = None
    base_llm: Path | None = None
    lora_alpha: float | None = None
    trust_checkpoint: bool = False

    def __post_init__(self) -> None:
        if self.checkpoint is not None and self.base_llm is None:
            raise UserError("--checkpoint needs --base-llm (the local Hugging Face folder of the base LLM)")
        if self.checkpoint is None and self.model_dir is None:
            raise UserError("give --model DIR or --checkpoint FILE --base-llm DIR")
        for option, path, folder in (
            ("--model", self.model_dir, True), ("--checkpoint", self.checkpoint, False),
            ("--base-llm", self.base_llm, True),
        ):  # fmt: skip
            if path is not None:
                check_model_path(option, Path(path), folder)

    def files(self) -> list[Path]:
        if self.checkpoint is not None:
            base = Path(self.base_llm)
            return [Path(self.checkpoint), *sorted(base.glob("*.json")), *sorted(base.glob("*.safetensors"))]
        directory = Path(self.model_dir)
        return [directory / "config.json", directory / "model.safetensors"]

    def shape(self) -> tuple[int | None, int | None]:
        """(decoder layers, objects per scene) read from the config files without loading anything, so
        options that depend on them are checked before the model loads; None where a file does not say."""
        import json

        directory = Path(self.base_llm) if self.checkpoint is not None else Path(self.model_dir)
        try:
            config = json.loads((directory / "config.json").read_text())
        except (OSError, ValueError):
            return None, None
        text = config.get("text_config", config) if isinstance(config, dict) else {}
        layers = text.get("num_hidden_layers") if isinstance(text, dict) else None
        objects = config.get("max_obj_num", 100) if self.checkpoint is None else 100
        valid = [_positive_int(v) for v in (layers, objects)]
        return valid[0], valid[1]

    def describe(self) -> str:
        """Where the model comes from, for progress lines."""
        if self.checkpoint is not None:
            return f"{self.checkpoint} on {self.base_llm}"
        return str(self.model_dir)

    def fingerprint(self) -> str:
        for path in self.files():
            if not path.exists():
                raise UserError(f"model file not found: {path}")
            if not path.is_file():
                raise UserError(f"model file {path} is {path_kind(path)}, not a regular file")
        return files_fingerprint(self.files()) + (f"-alpha{self.lora_alpha}" if self.lora_alpha else "")

    def load(self, device: str = "auto", dtype: str = "auto") -> Any:

        resolved_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, resolved_device)
        if self.checkpoint is not None:
            from fast3d_cli.models.chat_scene.official import load_official_checkpoint

            model = load_official_checkpoint(
                self.checkpoint,
                self.base_llm,
                lora_alpha=self.lora_alpha,
                dtype=torch_dtype,
                trust=self.trust_checkpoint,
            )
        else:
            from fast3d_cli.models.chat_scene.io import from_pretrained

            model = from_pretrained(self.model_dir, dtype=torch_dtype)
        model.llm.set_attn_implementation(preferred_attention(resolved_device, torch_dtype))  # both loaders
        return model.to(resolved_device)


def _positive_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def preferred_attention(device: str, dtype: Any) -> str:
    """flash_attention_2 on CUDA in bf16/fp16 when flash-attn is installed, else sdpa."""
    import torch
    from transformers.utils import is_flash_attn_2_available

    usable = device.startswith("cuda") and dtype in (torch.bfloat16, torch.float16)
    return "flash_attention_2" if usable and is_flash_attn_2_available() else "sdpa"


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device} requested but CUDA is not available")
    return device


def resolve_dtype(dtype: str, device: str) -> Any:
    import torch

    if dtype not in DTYPES:
        raise UserError(f"unknown --dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)
