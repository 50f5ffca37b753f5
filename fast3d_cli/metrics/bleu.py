"""BLEU-4 sufficient statistics per caption item, and corpus BLEU-4 from (weighted) sums of them.

pycocoevalcap's ``Bleu(4).compute_score`` (option "closest") is a function of per-item integer counts:
the candidate length, the reference length closest to it, and the guessed and correct n-gram counts for
n = 1..4. The counts come from the library's own ``cook_refs`` / ``cook_test``; `corpus_bleu4` is the
library's final formula, so the statistics summed with weight 1 everywhere give ``compute_score``'s
BLEU-4, and integer weights (bootstrap multiplicities) give the BLEU-4 of the resampled corpus.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from pycocoevalcap.bleu.bleu_scorer import cook_refs, cook_test

BLEU_ORDER = 4
BLEU_STAT_FIELDS: tuple[str, ...] = (
    "testlen",
    "reflen",
    *(f"guess_{n}" for n in range(1, BLEU_ORDER + 1)),
    *(f"correct_{n}" for n in range(1, BLEU_ORDER + 1)),
)
"""Columns of a BLEU statistics row: candidate length, closest reference length, guess[n], correct[n]."""
# The constants of pycocoevalcap/bleu/bleu_scorer.py BleuScorer.compute_score (local variables there).
_SMALL = 1e-9
_TINY = 1e-15
_GUESS = slice(2, 2 + BLEU_ORDER)
_CORRECT = slice(2 + BLEU_ORDER, 2 + 2 * BLEU_ORDER)


def bleu_item_statistics(references: Sequence[str], candidate: str) -> list[int]:
    """One item's row of `BLEU_STAT_FIELDS` for tokenized references and one tokenized candidate."""
    cooked = cook_test(candidate, cook_refs(list(references), n=BLEU_ORDER), eff="closest", n=BLEU_ORDER)
    return [cooked["testlen"], cooked["reflen"], *cooked["guess"], *cooked["correct"]]


def bleu_statistics(
    references: Mapping[str, Sequence[str]], candidates: Mapping[str, Sequence[str]], keys: Sequence[str]
) -> np.ndarray:
    """Rows of `BLEU_STAT_FIELDS` (float64 [len(keys), 10], integer-valued) for the items ``keys`` of
    ``Bleu.compute_score(references, candidates)``-style inputs (each candidate list holds one caption)."""
    rows = [bleu_item_statistics(references[key], candidates[key][0]) for key in keys]
    return np.array(rows, dtype=np.float64).reshape(len(rows), len(BLEU_STAT_FIELDS))


def corpus_bleu4(totals: np.ndarray) -> np.ndarray:
    """Corpus BLEU-4 of summed statistics [..., 10] -> [...], with pycocoevalcap's formula and constants:
    (prod_n (correct_n + tiny) / (guess_n + small)) ** (1/4), times exp(1 - 1/ratio) when
    ratio = (testlen + tiny) / (reflen + small) < 1."""
    precision = (totals[..., _CORRECT] + _TINY) / (totals[..., _GUESS] + _SMALL)
    product = precision[..., 0] * precision[..., 1] * precision[..., 2] * precision[..., 3]
    bleu = product ** (1.0 / BLEU_ORDER)
    ratio = (totals[..., 0] + _TINY) / (totals[..., 1] + _SMALL)
    return np.where(ratio < 1, bleu * np.exp(1 - 1 / ratio), bleu)


def weighted_bleu4(statistics: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Corpus BLEU-4 of each weighting: statistics [n, 10], weights [R, n] (item multiplicities) -> [R]."""
    return corpus_bleu4(np.asarray(weights, dtype=np.float64) @ statistics)
