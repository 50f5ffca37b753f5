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


def sample_texts(samples: Iterable[Any], config: Any) -> list[str]:
    """The prompt layout, the world's vocabulary lists and the prompts, answers and references of
    ``samples``."""
    from fast3d_cli.sample_world.vocabulary import CLASSES, COLOURS, NUMBER_WORDS, REGIONS

    texts = [config.system_prompt, config.instruction.replace("<REPLACE>", " "), " ".join(config.roles)]
    texts += [" ".join(c.name for c in CLASSES), " ".join(c.plural for c in CLASSES), " ".join(COLOURS)]
    texts += [" ".join(NUMBER_WORDS), " ".join(REGIONS), "yes no Yes No"]
    texts += [w.capitalize() for w in (*COLOURS, *NUMBER_WORDS, *(c.name for c in CLASSES))]
    for s in samples:
        texts += [s.prompt, s.caption or ""]
        texts += [c for c in s.ref_captions if isinstance(c, str)]
    return texts


def world_texts(data: Any, world: Any, config: Any, stream_scenes: int = 100) -> list[str]:
    """Every text the sample world can produce: :func:`sample_texts` of the committed annotations and the
    prompts and answers of a deterministic sample of the training stream."""
    from fast3d_cli.data import load_samples
    from fast3d_cli.data.tasks import AUXILIARY_TASKS, TASKS
    from fast3d_cli.sample_world.stream import SceneStream

    splits = {task: ("train", "val") for task in TASKS} | {task: ("train",) for task in AUXILIARY_TASKS}
    samples = [
        s for task, names in splits.items() for split in names for s in load_samples(data, task, split)
    ]
    texts = sample_texts(samples, config)
    stream = iter(SceneStream(world, seed=0))
    for _ in range(stream_scenes):
        for rows in next(stream).rows.values():
            texts += [text for r in rows for text in (r["prompt"], r["caption"])]
    return texts
