"""Greedy and beam search reproducing HF transformers 4.31 ``generate`` as called by the official eval (§1.7).

The official call passes only ``inputs_embeds``, so HF 4.31 starts from a dummy ``input_ids = [[BOS]]``:
the logits processors see ``BOS + generated ids`` (never the prompt), hypothesis lengths count the BOS, and
``min_length`` is compared with ``1 + generated``, so the official ``min_length=1`` never masks EOS.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from fast3d_cli.generation.config import GenerationConfig
from fast3d_cli.generation.decoder import Decoder

# HF 4.31 gives beams 1..K-1 this initial score so the first step expands beam 0 only.
_INITIAL_DUMMY_BEAM_SCORE = -1e9


def apply_repetition_penalty(scores: Tensor, history: Tensor, penalty: float) -> Tensor:
    """HF ``RepetitionPenaltyLogitsProcessor``: for every id in ``history`` [N,L] (duplicates fine), a score
    ``< 0`` is multiplied by ``penalty``, otherwise divided by it. ``scores`` [N,V]; returns a new tensor."""
    if penalty == 1.0 or history.shape[1] == 0:
        return scores
    picked = scores.gather(1, history)
    picked = torch.where(picked < 0, picked * penalty, picked / penalty)
    return scores.scatter(1, history, picked)


def apply_min_length(scores: Tensor, cur_len: int, min_length: int, eos_token_id: int) -> Tensor:
    """HF ``MinLengthLogitsProcessor``: forbid EOS while ``cur_len`` (BOS + generated) < ``min_length``."""
    if cur_len >= min_length:
        return scores
    scores = scores.clone()
    scores[:, eos_token_id] = -float("inf")
    return scores


def process_scores(scores: Tensor, history: Tensor, config: GenerationConfig, eos_token_id: int) -> Tensor:
    """The HF 4.31 processor list of the official call (repetition penalty, then min length)."""
    scores = apply_repetition_penalty(scores, history, config.repetition_penalty)
    return apply_min_length(scores, history.shape[1], config.min_length, eos_token_id)


def greedy_search(
    decoder: Decoder[Any],
    inputs_embeds: Tensor,
    attention_mask: Tensor,
    config: GenerationConfig,
    eos_token_id: int,
    bos_token_id: int,
) -> list[list[int]]:
    """Per row: argmax of the processed raw logits until EOS or ``max_new_tokens`` (EOS excluded).

    Rows that produced EOS are dropped from the batch (``decoder.select``) instead of being fed padding.
    """
    batch = inputs_embeds.shape[0]
    logits, state = decoder.prefill(inputs_embeds, attention_mask)
    history = torch.full((batch, 1), bos_token_id, dtype=torch.long, device=logits.device)
    rows = list(range(batch))  # original row of each live row
    outputs: list[list[int]] = [[] for _ in range(batch)]
    for step in range(config.max_new_tokens):
        tokens = process_scores(logits, history, config, eos_token_id).argmax(dim=-1)
        token_list = tokens.tolist()
        for row, tok in zip(rows, token_list, strict=True):
            if tok != eos_token_id:
                outputs[row].append(tok)
        live = [i for i, tok in enumerate(token_list) if tok != eos_token_id]
        if not live or step == config.max_new_tokens - 1:
            break
        if len(live) < len(rows):
            index = torch.tensor(live, dtype=torch.long, device=tokens.device)
            state = decoder.select(state, index)
            history, tokens = history[index], tokens[index]
            rows = [rows[i] for i in live]
        history = torch.cat([history, tokens[:, None]], dim=1)
        logits, state = decoder.step(tokens, state)
    return outputs


@dataclass
class BeamHypotheses:
    """HF 4.31 ``BeamHypotheses`` (early_stopping=False): the n best finished hypotheses of one row.

    ``tokens`` exclude the dummy BOS and EOS; ``length`` counts the BOS (``1 + len(tokens)``).
    """

    num_beams: int
    length_penalty: float
    beams: list[tuple[float, list[int]]] = field(default_factory=list)
    worst_score: float = 1e9

    def add(self, tokens: list[int], sum_logprobs: float) -> None:
        score = sum_logprobs / ((1 + len(tokens)) ** self.length_penalty)
        if len(self.beams) < self.num_beams or score > self.worst_score:
            self.beams.append((score, tokens))
            if len(self.beams) > self.num_beams:
                ranked = sorted((s, i) for i, (s, _) in enumerate(self.beams))
                del self.beams[ranked[0][1]]
                self.worst_score = ranked[1][0]
            else:
                self.worst_score = min(score, self.worst_score)

    def is_done(self, best_sum_logprobs: float, cur_len: int) -> bool:
        """``cur_len`` is HF 4.31's ``input_ids.shape[-1] + 1``: BOS + generated + the token being scored."""
        if len(self.beams) < self.num_beams:
            return False
        return self.worst_score >= best_sum_logprobs / cur_len**self.length_penalty

    def best(self) -> list[int]:
        """Highest score; on ties the later-added one (like HF's ``sorted(...).pop()``)."""
        best_score, best_tokens = self.beams[0]
        for score, tokens in self.beams[1:]:
            if score >= best_score:
                best_score, best_tokens = score, tokens
        return best_tokens


def _split_candidates(
    top_scores: list[float],
    top_ids: list[int],
    vocab: int,
    num_beams: int,
    first_beam: int,
    eos_token_id: int,
) -> tuple[list[tuple[int, float]], list[tuple[int, int, float]]]:
    """One row's ranked top-2K candidates, split like HF 4.31 ``BeamSearchScorer.process``.

    Returns the finished ``(source beam, score)`` (EOS candidates ranked < K) and the K continuing
    ``(source beam, token, score)`` (the best non-EOS candidates). Beams are indices into the live rows.
    """
    finished: list[tuple[int, float]] = []
    continuing: list[tuple[int, int, float]] = []
    for rank, (score, flat) in enumerate(zip(top_scores, top_ids, strict=True)):
        src, tok = first_beam + flat // vocab, flat % vocab
        if tok != eos_token_id:
            continuing.append((src, tok, score))
            if len(continuing) == num_beams:
                return finished, continuing
        elif rank < num_beams:
            finished.append((src, score))
    raise RuntimeError(f"beam search needs {num_beams} non-EOS candidates per row, got {len(continuing)}")


def beam_search(
    decoder: Decoder[Any],
    inputs_embeds: Tensor,
    attention_mask: Tensor,
    config: GenerationConfig,
    eos_token_id: int,
    bos_token_id: int,
) -> list[list[int]]:
    """HF 4.31 ``beam_search`` + ``BeamSearchScorer`` (early_stopping=False) per row; best hypothesis,
    EOS excluded. Rows whose search is done are dropped from the batch instead of being fed padding."""
    batch, num_beams = inputs_embeds.shape[0], config.num_beams
    logits, state = decoder.prefill(inputs_embeds, attention_mask)
    device = logits.device
    expand = torch.arange(batch, device=device).repeat_interleave(num_beams)
    state, logits = decoder.select(state, expand), logits.index_select(0, expand)
    beam_scores = torch.zeros(batch, num_beams, device=device)
    beam_scores[:, 1:] = _INITIAL_DUMMY_BEAM_SCORE
    beam_scores = beam_scores.view(-1)
    seqs = torch.full((batch * num_beams, 1), bos_token_id, dtype=torch.long, device=device)
    hyps = [BeamHypotheses(num_beams, config.length_penalty) for _ in range(batch)]
    rows = list(range(batch))  # original row of each live row; live row j owns beams j*K .. j*K+K-1
    for step in range(config.max_new_tokens):
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        scores = process_scores(logprobs, seqs, config, eos_token_id) + beam_scores[:, None]
        vocab = scores.shape[-1]
        top_scores, top_ids = scores.view(len(rows), num_beams * vocab).topk(2 * num_beams, dim=1)
        top_scores_l, top_ids_l = top_scores.tolist(), top_ids.tolist()
        seq_list = seqs.tolist()
        cur_len = seqs.shape[1] + 1  # HF 4.31 process(): input_ids.shape[-1] + 1
        live: list[int] = []
        kept: list[tuple[int, int, float]] = []  # (source beam, token, score), K per live row
        for j, row in enumerate(rows):
            finished, continuing = _split_candidates(
                top_scores_l[j], top_ids_l[j], vocab, num_beams, j * num_beams, eos_token_id
            )
            for src, score in finished:
                hyps[row].add(seq_list[src][1:], score)
            if not hyps[row].is_done(top_scores_l[j][0], cur_len):
                live.append(row)
                kept.extend(continuing)
        if (
            step == config.max_new_tokens - 1
        ):  # HF finalize(): open beams of unfinished rows become hypotheses
            for k, (src, tok, score) in enumerate(kept):
                hyps[live[k // num_beams]].add([*seq_list[src][1:], tok], score)
            break
        if not live:
            break
        index = torch.tensor([src for src, _, _ in kept], dtype=torch.long, device=device)
        tokens = torch.tensor([tok for _, tok, _ in kept], dtype=torch.long, device=device)
        beam_scores = torch.tensor([score for _, _, score in kept], dtype=torch.float32, device=device)
        seqs = torch.cat([seqs.index_select(0, index), tokens[:, None]], dim=1)
        state = decoder.select(state, index)
        logits, state = decoder.step(tokens, state)
        rows = live
    return [h.best() for h in hyps]


def generate(
    decoder: Decoder[Any],
    inputs_embeds: Tensor,
    attention_mask: Tensor,
    config: GenerationConfig,
    eos_token_id: int,
    bos_token_id: int,
) -> list[list[int]]:
    """Generated token ids per input row (EOS excluded): greedy if ``num_beams == 1`` else beam search,
    as HF 4.31 does with ``do_sample=False``."""
    search = greedy_search if config.num_beams == 1 else beam_search
    return search(decoder, inputs_embeds, attention_mask, config, eos_token_id, bos_token_id)
