"""Load an official Chat-Scene checkpoint (``ckpt["model"]``, peft key names, spec §1.5-§1.6).

The base LLM comes from a local Hugging Face folder (Vicuna-7B v1.5 for the released model). LoRA pairs
are merged into the base weights at load time (``W += B @ A * alpha / r``), so inference runs on a plain
``LlamaForCausalLM`` with no peft dependency.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from fast3d_cli.checkpoints import load_checkpoint
from fast3d_cli.errors import CheckpointError, UserError
from fast3d_cli.models.chat_scene.configuration import ChatSceneConfig
from fast3d_cli.models.chat_scene.io import check_state_dict

if TYPE_CHECKING:
    import torch

    from fast3d_cli.models.chat_scene.modeling import ChatSceneModel

PEFT_PREFIX = "llama_model.base_model.model."
LORA_RE = re.compile(r"^(?P<module>.+)\.lora_(?P<half>[AB])(?:\.default)?\.weight$")
UNUSED_PREFIXES = ("pos_proj.", "pos_embedding.")  # add_pos_emb=False in every released config
REQUIRED_KEYS = ("object_proj.0.weight", "object_img_proj.0.weight")


def _split_state(state: dict[str, torch.Tensor]):
    """Separate LoRA halves from full tensors and rename peft keys to our module names."""
    lora: dict[str, dict[str, torch.Tensor]] = {}
    full: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key.startswith(UNUSED_PREFIXES):
            continue
        name = "llm." + key[len(PEFT_PREFIX) :] if key.startswith(PEFT_PREFIX) else key
        match = LORA_RE.match(name)
        if match:
            lora.setdefault(match["module"], {})[match["half"]] = tensor
        else:
            full[name.replace(".base_layer.", ".")] = tensor
    return lora, full


def _merge_lora(
    full_state: dict[str, torch.Tensor],
    lora: dict[str, dict[str, torch.Tensor]],
    alpha: float | None,
    source: str,
) -> dict[str, torch.Tensor]:
    """Return merged weights ``W + B @ A * alpha / r`` for every LoRA-wrapped linear layer."""
    merged = {}
    for module, halves in sorted(lora.items()):
        if set(halves) != {"A", "B"}:
            raise CheckpointError(f"{source}: LoRA pair incomplete for {module} (have {sorted(halves)})")
        key = f"{module}.weight"
        if key not in full_state:
            raise CheckpointError(f"{source}: LoRA targets {key}, which the base model does not have")
        a, b, base = halves["A"].float(), halves["B"].float(), full_state[key]
        rank = a.shape[0]
        if b.shape[1] != rank or (b.shape[0], a.shape[1]) != tuple(base.shape):
            raise CheckpointError(
                f"{source}: shape mismatch for {module}: lora_A {tuple(a.shape)}, "
                f"lora_B {tuple(b.shape)}, base {tuple(base.shape)}"
            )
        scaling = (alpha if alpha is not None else rank) / rank
        merged[key] = (base.float() + (b @ a) * scaling).to(base.dtype)
    return merged


def load_official_checkpoint(
    checkpoint: Path,
    base_llm: Path,
    *,
    lora_alpha: float | None = None,
    dtype: torch.dtype | None = None,
    max_obj_num: int = 100,
    attn_implementation: str = "sdpa",
    trust: bool = False,
) -> ChatSceneModel:
    """Build a :class:`ChatSceneModel` from a Chat-Scene ``.pth`` and its base LLM folder.

    ``lora_alpha`` defaults to the LoRA rank (scaling 1.0), which is what every released Chat-Scene/Fast3D
    script uses (r=16, alpha=16).
    """
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    from fast3d_cli.models.chat_scene.modeling import ChatSceneModel

    source = str(checkpoint)
    if not Path(base_llm).is_dir():
        raise UserError(f"base LLM folder not found: {base_llm}")
    ckpt = load_checkpoint(Path(checkpoint), trust=trust)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(f"{source}: not a Chat-Scene checkpoint (no 'model' entry)")
    state: dict[str, torch.Tensor] = ckpt["model"]
    missing_required = [k for k in REQUIRED_KEYS if k not in state]
    if missing_required:
        raise CheckpointError(f"{source}: missing keys: {', '.join(missing_required)}")

    llm = LlamaForCausalLM.from_pretrained(
        base_llm, dtype=dtype or torch.float32, attn_implementation=attn_implementation
    )
    tokenizer = AutoTokenizer.from_pretrained(base_llm, use_fast=True)
    config = ChatSceneConfig(
        text_config={},
        feat_dim_3d=state["object_proj.0.weight"].shape[1],
        feat_dim_2d=state["object_img_proj.0.weight"].shape[1],
        max_obj_num=max_obj_num,
    )
    tokenizer.add_tokens(config.obj_tokens(), special_tokens=True)
    llm.resize_token_embeddings(len(tokenizer))
    llm.config.vocab_size = len(tokenizer)
    config.text_config = llm.config.to_dict()
    model = ChatSceneModel(config, tokenizer, llm=llm)

    lora, full = _split_state(state)
    check_state_dict(model, full, source)
    model_state = model.state_dict()
    merged = _merge_lora({**model_state, **full}, lora, lora_alpha, source)
    model.load_state_dict({**full, **merged}, strict=False)
    model.to(dtype=dtype or torch.float32)
    model.eval()
    return model
