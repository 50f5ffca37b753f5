"""Our model directory format: ``config.json`` + ``model.safetensors`` + tokenizer files."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from fast3d_cli.errors import CheckpointError, UserError
from fast3d_cli.models.chat_scene.configuration import ChatSceneConfig

if TYPE_CHECKING:
    import torch

    from fast3d_cli.models.chat_scene.modeling import ChatSceneModel

WEIGHTS_NAME = "model.safetensors"


def save_pretrained(model: ChatSceneModel, directory: Path) -> None:
    from safetensors.torch import save_model

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.config.save(directory)
    save_model(model, str(directory / WEIGHTS_NAME))
    model.tokenizer.save_pretrained(directory)


def check_state_dict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Refuse a state dict that does not fit ``module`` exactly, naming the first offending key.

    The official loader silently drops keys whose shapes mismatch; a silently half-loaded model is worse than
    an error, so we stop instead.
    """
    expected = module.state_dict()
    for key, tensor in state.items():
        if key in expected and tuple(expected[key].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{source}: shape mismatch for {key}: checkpoint {tuple(tensor.shape)} vs model "
                f"{tuple(expected[key].shape)}"
            )
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise CheckpointError(f"{source}: unexpected keys: {', '.join(unexpected[:10])}")


def from_pretrained(
    directory: Path,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    attn_implementation: str = "sdpa",
) -> ChatSceneModel:
    """Load a model saved by :func:`save_pretrained` (tied weights are restored)."""
    import torch
    from safetensors.torch import load_file
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    from fast3d_cli.models.chat_scene.modeling import ChatSceneModel

    directory = Path(directory)
    config = ChatSceneConfig.load(directory)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise UserError(f"no {WEIGHTS_NAME} in model directory {directory}")
    tokenizer = PreTrainedTokenizerFast.from_pretrained(directory)
    llm = LlamaForCausalLM._from_config(config.llama_config(), attn_implementation=attn_implementation)
    model = ChatSceneModel(config, tokenizer, llm=llm)
    state = load_file(str(weights))
    check_state_dict(model, state, str(weights))
    missing = set(model.state_dict()) - set(state)
    if model.llm.config.tie_word_embeddings:
        missing.discard("llm.lm_head.weight")
        missing.discard("llm.model.embed_tokens.weight")
    if missing:
        raise CheckpointError(f"{weights}: missing keys: {', '.join(sorted(missing)[:10])}")
    model.load_state_dict(state, strict=False)
    if model.llm.config.tie_word_embeddings:
        model.llm.tie_weights()
    model.to(device=device, dtype=dtype or torch.float32)
    model.eval()
    return model
