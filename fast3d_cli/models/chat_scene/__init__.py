"""Chat-Scene on stock transformers: a Llama reading 100 objects as 300 visual tokens (spec §1)."""

from fast3d_cli.models.chat_scene.configuration import ChatSceneConfig
from fast3d_cli.models.chat_scene.modeling import ChatSceneModel, ModelInputs
from fast3d_cli.models.chat_scene.prompt import PromptLayout

__all__ = ["ChatSceneConfig", "ChatSceneModel", "ModelInputs", "PromptLayout"]
