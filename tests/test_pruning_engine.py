"""The pruning engine on a tiny random Llama: keep-all = dense, removal = official masking, batch = rows."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, LlamaForCausalLM

from fast3d_cli.generation import GenerationConfig, HFCausalLMDecoder, generate
from fast3d_cli.pruning.engine import MaskedDecoder, PrunedDecoder, PruningPlan
from tests.test_generation_llama import BOS, EOS, HIDDEN
from tests.test_generation_llama import tiny_llama as seeded_llama

LAYERS = 4
N_GROUPS, GROUP = 6, 3  # 18 visual tokens
PREFIX, MAX_TEXT = 3, 6


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_llama(impl: str = "sdpa", seed: int = 0) -> LlamaForCausalLM:
    return seeded_llama(impl, seed=seed, layers=LAYERS)


def batch(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded [prefix | visual | text] prompts of different text lengths: embeds, mask, visual_start."""
    gen = torch.Generator().manual_seed(seed)
    lengths = [
        PREFIX + N_GROUPS * GROUP + int(torch.randint(1, MAX_TEXT + 1, (1,), generator=gen)) for _ in range(n)
    ]
    width = max(lengths)
    embeds = torch.zeros(n, width, HIDDEN)
    mask = torch.zeros(n, width, dtype=torch.long)
    for i, length in enumerate(lengths):
        embeds[i, width - length :] = torch.randn(length, HIDDEN, generator=gen)
        mask[i, width - length :] = 1
    visual_start = torch.tensor([width - length + PREFIX for length in lengths])
    return embeds, mask, visual_start


def plan(
    visual_start: torch.Tensor, layer: int, keep: list[int], seed: int, fastv: bool = False
) -> PruningPlan:
    gen = torch.Generator().manual_seed(seed)
    scores = None if fastv else torch.randn(len(keep), N_GROUPS, generator=gen)
    return PruningPlan(layer, visual_start, N_GROUPS, GROUP, scores=scores, keep=torch.tensor(keep))


def keep_mask_from(decoder: PrunedDecoder) -> torch.Tensor:
    kept = decoder.report.kept_visual
    mask = torch.zeros(kept.shape[0], N_GROUPS * GROUP, dtype=torch.bool)
    for row in range(kept.shape[0]):
        mask[row, kept[row][kept[row] >= 0]] = True
    return mask


def run_steps(decoder, embeds, mask, tokens: list[int]) -> list[torch.Tensor]:
    logits, state = decoder.prefill(embeds, mask)
    out = [logits]
    for token in tokens:
        logits, state = decoder.step(torch.full((embeds.shape[0],), token), state)
        out.append(logits)
    return out


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("layer", [0, 2])
def test_keep_all_equals_dense(impl: str, layer: int) -> None:
    model = tiny_llama(impl)
    embeds, mask, visual_start = batch(3, seed=1)
    dense = run_steps(HFCausalLMDecoder(model), embeds, mask, [5, 7, 9])
    pruned = run_steps(
        PrunedDecoder(model, plan(visual_start, layer, [N_GROUPS] * 3, 0)), embeds, mask, [5, 7, 9]
    )
    for a, b in zip(dense, pruned, strict=True):
        assert (a - b).abs().max() <= 1e-5
    config = GenerationConfig(num_beams=3, max_new_tokens=6)
    expect = generate(HFCausalLMDecoder(model), embeds, mask, config, EOS, BOS)
    got = generate(
        PrunedDecoder(model, plan(visual_start, layer, [N_GROUPS] * 3, 0)), embeds, mask, config, EOS, BOS
    )
    assert got == expect


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize(("layer", "fastv"), [(0, False), (1, False), (3, False), (2, True)])
def test_removal_equals_official_masking(impl: str, layer: int, fastv: bool) -> None:
    model = tiny_llama(impl, seed=3)
    embeds, mask, visual_start = batch(4, seed=2)
    pruned = PrunedDecoder(model, plan(visual_start, layer, [2, 0, 5, 3], seed=4, fastv=fastv))
    got = run_steps(pruned, embeds, mask, [5, 11, 3, 8])
    masked = MaskedDecoder(model, layer, visual_start, keep_mask_from(pruned))
    expect = run_steps(masked, embeds, mask, [5, 11, 3, 8])
    assert pruned.report.kept_groups.tolist() == [2, 0, 5, 3]
    for a, b in zip(expect, got, strict=True):
        assert (a - b).abs().max() <= 1e-4
    config = GenerationConfig(num_beams=3, max_new_tokens=6)
    fresh = PrunedDecoder(model, plan(visual_start, layer, [2, 0, 5, 3], seed=4, fastv=fastv))
    assert generate(fresh, embeds, mask, config, EOS, BOS) == generate(
        MaskedDecoder(model, layer, visual_start, keep_mask_from(pruned)), embeds, mask, config, EOS, BOS
    )


def test_pruned_cache_is_shorter_after_layer_k() -> None:
    model = tiny_llama()
    embeds, mask, visual_start = batch(2, seed=5)
    decoder = PrunedDecoder(model, plan(visual_start, 2, [1, 2], seed=0))
    _, state = decoder.prefill(embeds, mask)
    assert isinstance(state.cache, DynamicCache)
    lengths = [layer.keys.shape[2] for layer in state.cache.layers]
    text = mask.shape[1] - PREFIX - N_GROUPS * GROUP
    assert lengths[:2] == [mask.shape[1]] * 2
    # both rows drop visual tokens: the longer kept row sets the pruned width
    assert (
        lengths[2:] == [max(mask[i].sum().item() - (N_GROUPS - k) * GROUP for i, k in enumerate([1, 2]))] * 2
    )
    assert lengths[2] < mask.shape[1] and text >= 1


@pytest.mark.parametrize("fastv", [False, True])
@pytest.mark.parametrize("num_beams", [1, 3])
def test_batch_equals_rows_alone_with_per_row_budgets(fastv: bool, num_beams: int) -> None:
    model = tiny_llama(seed=7)
    embeds, mask, visual_start = batch(4, seed=8)
    keep = [1, 4, 0, 6]
    config = GenerationConfig(num_beams=num_beams, max_new_tokens=5)
    full = generate(
        PrunedDecoder(model, plan(visual_start, 1, keep, 9, fastv)), embeds, mask, config, EOS, BOS
    )
    whole_plan = plan(visual_start, 1, keep, 9, fastv)
    for row in range(4):
        real = mask[row].bool()
        row_plan = PruningPlan(
            1,
            visual_start[row : row + 1] - (~real).sum(),
            N_GROUPS,
            GROUP,
            scores=None if fastv else whole_plan.scores[row : row + 1],
            keep=torch.tensor([keep[row]]),
        )
        alone = generate(
            PrunedDecoder(model, row_plan),
            embeds[row : row + 1, real],
            mask[row : row + 1, real],
            config,
            EOS,
            BOS,
        )
        assert alone == [full[row]]


def test_sap_budget_inside_the_engine() -> None:
    model = tiny_llama()
    embeds, mask, visual_start = batch(3, seed=11)
    scores = torch.tensor([[9.0, 0, 0, 0, 0, 0], [1.0, 1, 1, 1, 1, 1], [3.0, 3, 0, 0, 0, 0]])
    decoder = PrunedDecoder(
        model, PruningPlan(0, visual_start, N_GROUPS, GROUP, scores=scores, alpha=torch.full((3,), 0.5))
    )
    decoder.prefill(embeds, mask)
    assert decoder.report.kept_groups.tolist() == [1, 3, 2]
    assert decoder.report.kept_visual[0].tolist()[:3] == [0, 1, 2]


def test_plan_needs_one_budget_and_fastv_needs_a_layer() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        PruningPlan(0, torch.zeros(1), N_GROUPS, GROUP, scores=torch.zeros(1, N_GROUPS))
    with pytest.raises(ValueError, match="layer >= 1"):
        PruningPlan(0, torch.zeros(1), N_GROUPS, GROUP, keep=torch.tensor([1]))
