"""The GAP network of the sample world: a tiny RoBERTa sharing the sample model's tokenizer + a small CMT.

The sample world's prompts are at most ~50 tokens of its word-level tokenizer, so the text encoder gets
``max_text_len`` = 128 positions (prompts beyond are truncated). The text encoder is trained from scratch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fast3d_cli.errors import UserError
from fast3d_cli.gap.configuration import GAPConfig

SAMPLE_MAX_TEXT_LEN = 128


def load_sample_tokenizer(model_dir: Path | None = None) -> Any:
    """The tokenizer of the sample Chat-Scene model (``sample_data/model`` by default)."""
    from transformers import PreTrainedTokenizerFast

    from fast3d_cli.data.config import sample_data_dir

    model_dir = Path(model_dir) if model_dir is not None else sample_data_dir() / "model"
    if not (model_dir / "tokenizer.json").is_file():
        raise UserError(
            f"no tokenizer.json in {model_dir}; build the sample model: fast3d sample train-model"
        )
    return PreTrainedTokenizerFast.from_pretrained(str(model_dir))


def sample_text_config(tokenizer: Any, max_text_len: int = SAMPLE_MAX_TEXT_LEN) -> dict[str, Any]:
    """A tiny ``RobertaConfig`` (as a dict) over ``tokenizer``'s vocabulary.

    RoBERTa numbers positions from pad id + 1, so it needs ``max_text_len + pad id + 1`` position embeddings.
    """
    pad = tokenizer.pad_token_id
    if pad is None:
        raise ValueError("the text tokenizer needs a pad token")
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": 128,  # the sample model's width, so --init-from-target can copy its embeddings
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 256,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": max_text_len + pad + 1,
        "type_vocab_size": 1,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-5,
        "pad_token_id": pad,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }


def sample_gap_config(
    tokenizer: Any,
    feat_dim_3d: int = 64,
    feat_dim_2d: int = 64,
    max_text_len: int = SAMPLE_MAX_TEXT_LEN,
) -> GAPConfig:
    """GAP config for the sample world: hidden 128, 4 heads, 2 layers, FFN 256; the rest as official."""
    return GAPConfig(
        feat_dim_3d=feat_dim_3d,
        feat_dim_2d=feat_dim_2d,
        hidden_size=128,
        num_attention_heads=4,
        num_layers=2,
        dim_feedforward=256,
        text_config=sample_text_config(tokenizer, max_text_len),
        train_text_encoder=True,
        max_text_len=max_text_len,
    )
