"""Answer normalisation and matching (LEO rules, as used by Chat-Scene/Fast3D) and object-id parsing."""

from __future__ import annotations

import re
from collections.abc import Sequence

OBJECT_ID_PATTERN = re.compile(r"<OBJ(\d{3})>")

# (pattern, replacement) pairs applied in order after lowercasing; each is one official rule.
_WHITESPACE_RULES: tuple[tuple[str, str], ...] = (
    (r"[ ]+$", ""),
    (r"^[ ]+", ""),
    (r" {2,}", " "),
    (r"\.[ ]{2,}", ". "),
    (r"[^a-zA-Z0-9,'\s\-:]+", ""),  # after this the official ç->c and ’->' rules cannot fire
)
_TYPO_FIXES: tuple[tuple[str, str], ...] = (
    ("letf", "left"),
    ("let", "left"),
    ("tehre", "there"),
    ("rigth", "right"),
    ("rght", "right"),
    ("behine", "behind"),
    ("tv", "TV"),
    ("chai", "chair"),
    ("wasing", "washing"),
    ("waslked", "walked"),
    ("oclock", "o'clock"),
)
_NUMBER_WORDS: tuple[tuple[str, str], ...] = (
    ("0", "zero"),
    ("none", "zero"),
    ("1", "one"),
    ("2", "two"),
    ("3", "three"),
    ("4", "four"),
    ("5", "five"),
    ("6", "six"),
    ("7", "seven"),
    ("8", "eight"),
    ("9", "nine"),
    ("10", "ten"),
    ("11", "eleven"),
    ("12", "twelve"),
    ("13", "thirteen"),
    ("14", "fourteen"),
    ("15", "fifteen"),
    ("16", "sixteen"),
    ("17", "seventeen"),
    ("18", "eighteen"),
    ("19", "nineteen"),
    ("20", "twenty"),
    ("23", "twenty-three"),
)
_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), repl)
    for pattern, repl in (
        *_WHITESPACE_RULES,
        *((rf"\b{word}\b", fixed) for word, fixed in _TYPO_FIXES),
        (r"\bo'[ ]+clock\b", "o'clock"),
        *((rf"\b{word}\b", spelled) for word, spelled in _NUMBER_WORDS),
        (r"\b([a-zA-Z]+)([0-9])\b", r"\g<1>"),  # glued trailing digit: mat2 -> mat
        (r"\ba\b ([a-zA-Z]+)", r"\g<1>"),
        (r"\ban\b ([a-zA-Z]+)", r"\g<1>"),
        (r"\bthe\b ([a-zA-Z]+)", r"\g<1>"),
        (r"\bbackwards\b", "backward"),
    )
)


def clean_answer(text: str) -> str:
    """Normalise a QA answer with the LEO rules (spec §6.7), in the official order."""
    text = text.lower()
    for pattern, repl in _RULES:
        text = pattern.sub(repl, text)
    return text


def normalize_prediction(pred: str) -> str:
    """QA prediction preprocessing (§6.5): if len > 1 drop one trailing "." and lowercase the first
    character; then `clean_answer`."""
    if len(pred) > 1:
        if pred.endswith("."):
            pred = pred[:-1]
        pred = pred[:1].lower() + pred[1:]
    return clean_answer(pred)


def answer_match(pred: str, refs: Sequence[str]) -> tuple[int, int]:
    """(EM, refined EM): empty pred -> (0, 0); exact member of refs -> (1, 1); whitespace-free
    substring either way with some ref -> (0, 1); else (0, 0)."""
    if not pred:
        return 0, 0
    if pred in refs:
        return 1, 1
    squashed = "".join(pred.split())
    for ref in refs:
        ref_squashed = "".join(ref.split())
        if squashed in ref_squashed or ref_squashed in squashed:
            return 0, 1
    return 0, 0


def parse_object_ids(text: str) -> list[int]:
    """All `<OBJxyz>` ids in the text, in order, duplicates kept."""
    return [int(match.group(1)) for match in OBJECT_ID_PATTERN.finditer(text)]


def valid_object_ids(text: str, num_objects: int) -> list[int]:
    """The ids of `parse_object_ids` that index an existing proposal (id < num_objects)."""
    return [obj_id for obj_id in parse_object_ids(text) if obj_id < num_objects]
