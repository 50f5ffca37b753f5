"""Configuration of a Chat-Scene model directory (``config.json``)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fast3d_cli.errors import UserError

SYSTEM_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions."
)
INSTRUCTION = "The conversation centers around an indoor scene. Object information: [<REPLACE>]."
ROLES = ("USER", "ASSISTANT")


@dataclass
class ChatSceneConfig:
    """Everything besides weights that defines a Chat-Scene model.

    ``text_config`` is the backbone's ``LlamaConfig`` as a dict (any LlamaForCausalLM-compatible config).
    """

    text_config: dict[str, Any]
    feat_dim_3d: int = 1024
    feat_dim_2d: int = 1024
    max_obj_num: int = 100
    obj_token_template: str = "<OBJ{:03}>"
    system_prompt: str = SYSTEM_PROMPT
    instruction: str = INSTRUCTION
    roles: tuple[str, str] = ROLES
    model_type: str = "chat_scene"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_per_object(self) -> int:
        return 3  # identifier token, 3D feature token, 2D feature token

    @property
    def n_visual_tokens(self) -> int:
        return self.max_obj_num * self.tokens_per_object

    def obj_tokens(self) -> list[str]:
        return [self.obj_token_template.format(i) for i in range(self.max_obj_num)]

    def llama_config(self):
        from transformers import LlamaConfig

        return LlamaConfig(**self.text_config)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["roles"] = list(self.roles)
        return data

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> ChatSceneConfig:
        path = directory / "config.json"
        if not path.is_file():
            raise UserError(f"not a fast3d model directory (no config.json): {directory}")
        data = json.loads(path.read_text())
        if data.get("model_type") != "chat_scene":
            raise UserError(f"{path} is not a Chat-Scene config (model_type={data.get('model_type')!r})")
        data["roles"] = tuple(data.get("roles", ROLES))
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})
