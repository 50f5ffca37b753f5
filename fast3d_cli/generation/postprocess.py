"""Answer text post-processing of the official eval (§1.7)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class TokenDecoder(Protocol):
    """The part of a tokenizer that :func:`decode_batch` uses."""

    def decode(self, token_ids: list[int], skip_special_tokens: bool = ...) -> str: ...


def postprocess(text: str) -> str:
    """Keep the text before the first ``</s>`` and after the last ``<s>``, replace ``"  "`` with ``" "``
    and ``" ."`` with ``"."`` (single pass each, like the original), then strip."""
    text = text.split("</s>")[0].split("<s>")[-1]
    return text.replace("  ", " ").replace(" .", ".").strip()


def decode_batch(tokenizer: TokenDecoder, ids_list: Sequence[Sequence[int]]) -> list[str]:
    """Decode each id list keeping special tokens (object identifiers such as ``<OBJ012>`` are special
    tokens and must survive), then :func:`postprocess`."""
    return [postprocess(tokenizer.decode(list(ids), skip_special_tokens=False)) for ids in ids_list]
