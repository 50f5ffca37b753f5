"""The Chat-Scene input sequence layout (spec §1.4), with every segment length taken from the tokenizer.

    [p_0 (with BOS) | 3 tokens x 100 objects | p_1 | " {prompt} ASSISTANT: " | answer]

The official code hard-codes ``len(p_0) = 45`` (the Vicuna tokenizer's count); here it is measured, so any
tokenizer works (spec §8.5).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from fast3d_cli.models.chat_scene.configuration import ChatSceneConfig


@dataclass
class PromptLayout:
    config: ChatSceneConfig
    tokenizer: Any

    @cached_property
    def prefix_text(self) -> tuple[str, str]:
        user = self.config.roles[0]
        full = f"{self.config.system_prompt} {self.config.instruction} {user}: "
        before, after = full.split("<REPLACE>")
        return before, after

    @cached_property
    def prefix_ids(self) -> list[int]:
        """p_0: the text before the object list, with BOS."""
        ids = self.encode(self.prefix_text[0])
        return [self.tokenizer.bos_token_id, *ids]

    @cached_property
    def suffix_ids(self) -> list[int]:
        """p_1: "]. USER: " between the object list and the user text, no special tokens."""
        return self.encode(self.prefix_text[1])

    @property
    def n_prefix(self) -> int:
        return len(self.prefix_ids)

    @property
    def visual_span(self) -> tuple[int, int]:
        """[start, end) of the visual tokens in an unpadded sequence."""
        return self.n_prefix, self.n_prefix + self.config.n_visual_tokens

    def user_text(self, prompt: str) -> str:
        return f" {prompt} {self.config.roles[1]}: "

    def user_ids(self, prompt: str) -> list[int]:
        return self.encode(self.user_text(prompt))

    def answer_ids(self, answer: str) -> list[int]:
        """Training target: the answer followed by EOS."""
        return [*self.encode(answer), self.tokenizer.eos_token_id]

    def teacher_text(self, prompt: str, caption: str) -> str:
        """Text after the object list for attention extraction (spec §3), without EOS."""
        return f"{self.user_text(prompt)}{caption}"

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
