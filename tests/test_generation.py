"""Generation settings, logits processors, search rules (on small table decoders) and post-processing."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from fast3d_cli.errors import UserError
from fast3d_cli.generation import (
    BeamHypotheses,
    GenerationConfig,
    apply_min_length,
    apply_repetition_penalty,
    beam_search,
    decode_batch,
    generate,
    greedy_search,
    postprocess,
)

BOS, EOS = 1, 2


class HashDecoder:
    """Decoder protocol over token prefixes: logits are a seeded-random function of (prompt id, fed tokens).

    The prompt id is read from ``inputs_embeds[:, -1, 0]``; the state is the [N, L] tensor of fed ids.
    ``rows_seen`` records N for each call.
    """

    def __init__(self, vocab: int, seed: int, scale: float = 2.0) -> None:
        self.vocab, self.seed, self.scale = vocab, seed, scale
        self.rows_seen: list[int] = []

    def logits_for(self, prefix: tuple[int, ...]) -> torch.Tensor:
        gen = torch.Generator().manual_seed(hash((self.seed, *prefix)) & 0x7FFFFFFF)
        return torch.randn(self.vocab, generator=gen) * self.scale

    def _logits(self, state: torch.Tensor) -> torch.Tensor:
        self.rows_seen.append(state.shape[0])
        return torch.stack([self.logits_for(tuple(row)) for row in state.tolist()])

    def prefill(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        state = inputs_embeds[:, -1, :1].long()
        return self._logits(state), state

    def step(self, token_ids: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        state = torch.cat([state, token_ids[:, None]], dim=1)
        return self._logits(state), state

    def select(self, state: torch.Tensor, row_index: torch.Tensor) -> torch.Tensor:
        return state[row_index]


class ScriptDecoder(HashDecoder):
    """Row with prompt id p strongly prefers ``scripts[p][t]`` at step t, then EOS."""

    def __init__(self, vocab: int, scripts: dict[int, list[int]]) -> None:
        super().__init__(vocab, seed=0)
        self.scripts = scripts

    def logits_for(self, prefix: tuple[int, ...]) -> torch.Tensor:
        script = [*self.scripts[prefix[0]], EOS]
        logits = torch.zeros(self.vocab)
        logits[script[min(len(prefix) - 1, len(script) - 1)]] = 10.0
        return logits


def prompt_batch(prompt_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    embeds = torch.tensor(prompt_ids, dtype=torch.float32).view(-1, 1, 1)
    return embeds, torch.ones(len(prompt_ids), 1, dtype=torch.long)


# ---------------------------------------------------------------- config


def test_config_defaults_are_the_official_settings() -> None:
    config = GenerationConfig()
    assert (config.num_beams, config.max_new_tokens, config.repetition_penalty) == (5, 64, 3.0)
    assert (config.length_penalty, config.min_length) == (1.0, 1)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"num_beams": 0}, "num_beams"),
        ({"num_beams": 2.0}, "num_beams"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"repetition_penalty": -1.0}, "repetition_penalty"),
        ({"min_length": -1}, "min_length"),
        ({"length_penalty": float("nan")}, "length_penalty"),
    ],
)
def test_config_rejects_bad_values_with_one_line_user_error(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(UserError, match=field) as info:
        GenerationConfig(**kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- processors


def test_repetition_penalty_by_hand() -> None:
    scores = torch.tensor([[-1.0, 2.0, 0.5, -3.0, 0.0, 4.0]])
    history = torch.tensor([[1, 3, 1, 4]])  # duplicates count once
    out = apply_repetition_penalty(scores, history, 3.0)
    assert out.tolist() == [[-1.0, pytest.approx(2.0 / 3.0), 0.5, -9.0, 0.0, 4.0]]
    assert scores[0, 3] == -3.0  # input untouched
    assert apply_repetition_penalty(scores, history, 1.0) is scores


def test_min_length_counts_the_dummy_bos() -> None:
    scores = torch.zeros(1, 4)
    assert apply_min_length(scores, cur_len=1, min_length=1, eos_token_id=EOS) is scores  # official: no-op
    blocked = apply_min_length(scores, cur_len=2, min_length=3, eos_token_id=EOS)
    assert blocked[0, EOS] == -math.inf and blocked[0, 0] == 0.0


def test_beam_hypotheses_keep_the_best_n_and_stop_like_hf() -> None:
    hyps = BeamHypotheses(num_beams=2, length_penalty=1.0)
    hyps.add([5], -4.0)  # len 2 -> -2.0
    hyps.add([5, 6, 7], -4.0)  # len 4 -> -1.0
    assert hyps.worst_score == -2.0 and hyps.is_done(best_sum_logprobs=-100.0, cur_len=3)
    hyps.add([], -3.0)  # len 1 -> -3.0: worse than worst, full -> ignored
    hyps.add([6], -3.0)  # len 2 -> -1.5: evicts -2.0
    assert sorted(s for s, _ in hyps.beams) == [-1.5, -1.0] and hyps.worst_score == -1.5
    assert hyps.is_done(best_sum_logprobs=-6.0, cur_len=4)  # -1.5 >= -1.5
    assert not hyps.is_done(best_sum_logprobs=-5.9, cur_len=4)
    assert hyps.best() == [5, 6, 7]


# ---------------------------------------------------------------- search on scripted decoders


@pytest.mark.parametrize("num_beams", [1, 3])
def test_rows_stop_at_eos_which_is_excluded(num_beams: int) -> None:
    scripts = {7: [3, 4, 5], 8: [], 9: [6, 3, 4, 5, 10, 11, 12, 13], 10: [4]}
    decoder = ScriptDecoder(vocab=16, scripts=scripts)
    config = GenerationConfig(num_beams=num_beams, max_new_tokens=5)
    out = generate(decoder, *prompt_batch([7, 8, 9, 10]), config, EOS, BOS)
    assert out == [[3, 4, 5], [], [6, 3, 4, 5, 10], [4]]
    # finished rows are dropped instead of being fed padding; never more than max_new_tokens model calls
    assert len(decoder.rows_seen) == 5
    if num_beams == 1:
        assert decoder.rows_seen == [4, 3, 2, 2, 1]


def test_max_new_tokens_one() -> None:
    decoder = ScriptDecoder(vocab=8, scripts={3: [4, 5], 4: []})
    for beams in (1, 2):
        out = generate(
            decoder, *prompt_batch([3, 4]), GenerationConfig(num_beams=beams, max_new_tokens=1), EOS, BOS
        )
        assert out == [[4], []]


# ---------------------------------------------------------------- search vs brute force


def _penalised(logits: torch.Tensor, history: list[int], penalty: float, log: bool) -> list[float]:
    values = (torch.log_softmax(logits, -1) if log else logits).tolist()
    for tok in set(history):
        values[tok] = values[tok] * penalty if values[tok] < 0 else values[tok] / penalty
    return values


def _greedy_reference(decoder: HashDecoder, prompt: int, max_new: int, penalty: float) -> list[int]:
    out: list[int] = []
    for _ in range(max_new):
        values = _penalised(decoder.logits_for((prompt, *out)), [BOS, *out], penalty, log=False)
        tok = max(range(len(values)), key=values.__getitem__)
        if tok == EOS:
            break
        out.append(tok)
    return out


def _exhaustive_reference(
    decoder: HashDecoder, prompt: int, max_new: int, penalty: float, lp: float
) -> dict[tuple[int, ...], float]:
    """Official score of every candidate: sum of penalised log-probs / (BOS + tokens before EOS) ** lp."""
    others = [t for t in range(decoder.vocab) if t != EOS]
    candidates = [(*body, EOS) for k in range(max_new) for body in itertools.product(others, repeat=k)]
    candidates += list(itertools.product(others, repeat=max_new))
    scores = {}
    for cand in candidates:
        total = 0.0
        for i, tok in enumerate(cand):
            prefix = list(cand[:i])
            total += _penalised(decoder.logits_for((prompt, *prefix)), [BOS, *prefix], penalty, log=True)[tok]
        length = len(cand) if cand[-1] == EOS else 1 + max_new
        scores[tuple(t for t in cand if t != EOS)] = total / length**lp
    return scores


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 10_000),
    penalty=st.sampled_from([1.0, 3.0]),
    lp=st.sampled_from([0.5, 1.0, 2.0]),
    vocab=st.sampled_from([3, 4]),
)
def test_search_matches_brute_force(seed: int, penalty: float, lp: float, vocab: int) -> None:
    max_new, prompts = 3, [3, 4, 5]
    decoder = HashDecoder(vocab=vocab, seed=seed)
    # wide enough that no real candidate is ever pruned: vocab * (vocab-1)**(max_new-1) beams
    beams = vocab * (vocab - 1) ** (max_new - 1)
    wide = GenerationConfig(
        num_beams=beams, max_new_tokens=max_new, repetition_penalty=penalty, length_penalty=lp
    )
    found = beam_search(decoder, *prompt_batch(prompts), wide, EOS, BOS)
    assert found == [beam_search(decoder, *prompt_batch([p]), wide, EOS, BOS)[0] for p in prompts]
    for prompt, got in zip(prompts, found, strict=True):
        scores = _exhaustive_reference(decoder, prompt, max_new, penalty, lp)
        best = max(scores, key=scores.__getitem__)
        assert tuple(got) == best or scores[tuple(got)] == pytest.approx(scores[best], abs=1e-5)
    greedy = GenerationConfig(num_beams=1, max_new_tokens=max_new, repetition_penalty=penalty)
    got_greedy = greedy_search(decoder, *prompt_batch(prompts), greedy, EOS, BOS)
    assert got_greedy == [_greedy_reference(decoder, p, max_new, penalty) for p in prompts]


# ---------------------------------------------------------------- post-processing


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("<s> the chair .</s> junk", "the chair."),
        ("a <s> b <s>  the  table  . </s></s>", "the table."),
        ("no markers", "no markers"),
        ("  spaced   out  ", "spaced  out"),  # one replacement pass, like the original
        ("</s>", ""),
        ("it is <OBJ012> .", "it is <OBJ012>."),
    ],
)
def test_postprocess(raw: str, clean: str) -> None:
    assert postprocess(raw) == clean


def test_decode_batch_keeps_identifier_tokens() -> None:
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "the": 3, "chair": 4, ".": 5, "<OBJ012>": 6, "is": 7}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_special_tokens=["<OBJ012>"],
    )
    assert "<OBJ012>" in tokenizer.all_special_tokens
    assert decode_batch(tokenizer, [[3, 4, 7, 6, 5], [1, 3, 2, 4], []]) == [
        "the chair is <OBJ012>.",
        "the",
        "",
    ]
