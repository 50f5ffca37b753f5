"""Configuration of a GAP (Global Attention Prediction) network: ``config.json`` of a GAP directory.

Field defaults are the official Fast3D values (``Fast3dNetConfig`` + ``CMTConfig`` + ``config/train.yaml``,
spec §4.2/§4.4). Official name → ours:

==============================  ===========================================================
``intput_feat_dim`` (2048)      ``feat_dim_3d + feat_dim_2d`` (1024 + 1024), see ``input_feat_dim``
``roberta_hidden_size`` (768)   ``text_config["hidden_size"]``
``dropout`` (0.3, head)         ``head_dropout``
``CMTConfig.hidden_size`` …     ``hidden_size``, ``num_attention_heads``, ``num_layers``, ``spatial_*``,
                                ``obj_loc_encoding``, ``pairwise_rel_type``, ``dim_loc``
CMT layer constants             ``dim_feedforward`` (2048), ``dropout`` (0.1), ``activation`` ("gelu")
``train_text_encoder``          True (the dataclass default is False, both yaml configs set True)
``roberta_path``                not stored: the text encoder is part of the weights; its architecture is
                                ``text_config`` (a ``transformers.RobertaConfig`` as a dict)
==============================  ===========================================================
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fast3d_cli.errors import UserError

CONFIG_NAME = "config.json"
MODEL_TYPE = "fast3d_gap"

SPATIAL_ATTN_FUSIONS = ("cond",)
SPATIAL_DIMS = (1, 4, 5)
OBJ_LOC_ENCODINGS = ("same_0", "same_all", "diff_all")
PAIRWISE_REL_TYPES = ("center",)
ACTIVATIONS = ("gelu", "relu")

# Keys of RobertaConfig.to_dict() that describe the saving environment, not the architecture.
_VOLATILE_TEXT_KEYS = ("_name_or_path", "transformers_version", "architectures", "_commit_hash")


def roberta_base_text_config() -> dict[str, Any]:
    """The architecture of ``roberta-base`` (the official text encoder), as ``RobertaConfig`` kwargs."""
    return {
        "vocab_size": 50265,
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": 514,
        "type_vocab_size": 1,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-5,
        "pad_token_id": 1,
        "bos_token_id": 0,
        "eos_token_id": 2,
    }


def text_config_from_dir(directory: Path) -> dict[str, Any]:
    """The ``RobertaConfig`` of a local Hugging Face folder, as a JSON-serialisable dict."""
    from transformers import RobertaConfig

    try:
        config = RobertaConfig.from_pretrained(str(directory))
    except (OSError, ValueError) as err:
        message = str(err).splitlines()[0]
        raise UserError(f"cannot read a RoBERTa config from {directory}: {message}") from None
    return clean_text_config(config.to_dict())


def clean_text_config(data: dict[str, Any]) -> dict[str, Any]:
    data = {k: v for k, v in data.items() if k not in _VOLATILE_TEXT_KEYS}
    return json.loads(json.dumps(data, default=str))


@dataclass
class GAPConfig:
    """Everything besides weights that defines a GAP network (spec §4.2)."""

    feat_dim_3d: int = 1024
    feat_dim_2d: int = 1024
    hidden_size: int = 768
    num_attention_heads: int = 12
    num_layers: int = 4
    dim_feedforward: int = 2048
    dropout: float = 0.1
    activation: str = "gelu"
    head_dropout: float = 0.3
    spatial_dim: int = 5
    spatial_dist_norm: bool = True
    spatial_attn_fusion: str = "cond"
    spatial_multihead: bool = True
    obj_loc_encoding: str = "same_all"
    pairwise_rel_type: str = "center"
    dim_loc: int = 6
    max_obj_num: int = 100
    text_config: dict[str, Any] = field(default_factory=roberta_base_text_config)
    train_text_encoder: bool = True
    # Prompts longer than this are truncated (None: no truncation, as official, up to the text encoder's
    # position capacity, beyond which the official code crashes).
    max_text_len: int | None = None
    # Efficient3D's DVTIE predictor (fast3d_cli/gap/predictors.py): a learnable bias on the cross-attention
    # of the last ``dhct_last_n_layers`` CMT layers (its ``DHCT``, weak-guidance form). Off: the Fast3D GAP.
    use_dhct: bool = False
    dhct_dim: int = 64
    dhct_strength: float = 0.07
    dhct_temp: float = 1.2
    dhct_last_n_layers: int = 4
    dhct_gate_bias: float = -6.0
    model_type: str = MODEL_TYPE

    def __post_init__(self) -> None:
        problems = []
        if self.hidden_size % self.num_attention_heads:
            problems.append(f"hidden_size {self.hidden_size} not divisible by {self.num_attention_heads}")
        for name, value, allowed in (
            ("spatial_attn_fusion", self.spatial_attn_fusion, SPATIAL_ATTN_FUSIONS),
            ("spatial_dim", self.spatial_dim, SPATIAL_DIMS),
            ("obj_loc_encoding", self.obj_loc_encoding, OBJ_LOC_ENCODINGS),
            ("pairwise_rel_type", self.pairwise_rel_type, PAIRWISE_REL_TYPES),
            ("activation", self.activation, ACTIVATIONS),
        ):
            if value not in allowed:
                supported = ", ".join(map(str, allowed))
                problems.append(f"{name}={value!r} is not supported (supported: {supported})")
        if self.use_dhct and (self.dhct_dim < 1 or self.dhct_temp <= 0):
            problems.append(f"dhct_dim={self.dhct_dim} must be >= 1 and dhct_temp={self.dhct_temp} > 0")
        if self.dim_loc < 3:
            problems.append(f"dim_loc={self.dim_loc}: locations need at least the 3 center coordinates")
        if self.max_text_len is not None and self.max_text_len > self.text_capacity:
            problems.append(f"max_text_len={self.max_text_len} > text encoder capacity {self.text_capacity}")
        if problems:
            raise ValueError("invalid GAP config: " + "; ".join(problems))

    @property
    def input_feat_dim(self) -> int:
        """The official ``intput_feat_dim``: 3D and 2D features are concatenated per object."""
        return self.feat_dim_3d + self.feat_dim_2d

    @property
    def text_hidden_size(self) -> int:
        return int(self.text_config.get("hidden_size", 768))

    @property
    def pad_token_id(self) -> int:
        return int(self.text_config.get("pad_token_id", 1))

    @property
    def text_capacity(self) -> int:
        """Longest prompt (tokens) the text encoder can embed: RoBERTa positions start after the pad id."""
        return int(self.text_config.get("max_position_embeddings", 512)) - self.pad_token_id - 1

    @property
    def text_max_length(self) -> int:
        """Prompts are truncated to this many tokens (``max_text_len``, else the position capacity)."""
        return self.max_text_len if self.max_text_len is not None else self.text_capacity

    def roberta_config(self):
        from transformers import RobertaConfig

        return RobertaConfig(**self.text_config)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_NAME).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GAPConfig:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def load(cls, directory: Path) -> GAPConfig:
        path = Path(directory) / CONFIG_NAME
        if not path.is_file():
            raise UserError(f"not a GAP directory (no {CONFIG_NAME}): {directory}")
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise UserError(f"cannot read {path}: {err}") from None
        if not isinstance(data, dict) or data.get("model_type") != MODEL_TYPE:
            found = data.get("model_type") if isinstance(data, dict) else None
            raise UserError(f"{path} is not a GAP config (model_type={found!r}, expected {MODEL_TYPE!r})")
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as err:
            raise UserError(f"{path}: {err}") from None
