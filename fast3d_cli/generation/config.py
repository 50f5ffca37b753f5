"""Generation settings (the official Chat-Scene eval call, spec §1.7)."""

from __future__ import annotations

from dataclasses import dataclass

from fast3d_cli.errors import UserError


@dataclass(frozen=True)
class GenerationConfig:
    """Deterministic decoding: greedy when ``num_beams == 1``, beam search otherwise (never sampling).

    Defaults are the official eval settings: ``num_beams=5, max_new_tokens=64, repetition_penalty=3.0,
    length_penalty=1.0, min_length=1``. ``min_length`` counts the dummy BOS like HF 4.31 does, so the
    official ``min_length=1`` never blocks EOS.
    """

    num_beams: int = 5
    max_new_tokens: int = 64
    repetition_penalty: float = 3.0
    length_penalty: float = 1.0
    min_length: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.num_beams, bool) or not isinstance(self.num_beams, int) or self.num_beams < 1:
            raise UserError(f"num_beams must be an integer >= 1, got {self.num_beams!r}")
        if (
            isinstance(self.max_new_tokens, bool)
            or not isinstance(self.max_new_tokens, int)
            or self.max_new_tokens < 1
        ):
            raise UserError(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        if not isinstance(self.repetition_penalty, (int, float)) or not self.repetition_penalty > 0:
            raise UserError(f"repetition_penalty must be > 0, got {self.repetition_penalty!r}")
        if not isinstance(self.length_penalty, (int, float)) or self.length_penalty != self.length_penalty:
            raise UserError(f"length_penalty must be a number, got {self.length_penalty!r}")
        if isinstance(self.min_length, bool) or not isinstance(self.min_length, int) or self.min_length < 0:
            raise UserError(f"min_length must be an integer >= 0, got {self.min_length!r}")
