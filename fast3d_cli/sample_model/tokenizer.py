"""A word-level tokenizer (``tokenizers``) for the closed vocabulary of the sample world.

Words become ``▁word`` pieces and punctuation is split off, so decoding restores the text exactly, the way a
SentencePiece Llama tokenizer does. Specials follow Llama: <unk>=0, <s>=1, </s>=2; the identifier tokens
<OBJ000>.. are added last as special tokens (as Chat-Scene adds them to Vicuna's vocabulary).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")


def build_tokenizer(texts: Iterable[str], obj_tokens: list[str] | None = None) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.trainers import WordLevelTrainer
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True),
            pre_tokenizers.Punctuation(behavior="isolated"),
        ]
    )
    core.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    core.train_from_iterator(sorted(set(texts)), WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS)))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<unk>"
    )
    if obj_tokens:
        tokenizer.add_tokens(obj_tokens, special_tokens=True)
    return tokenizer
