"""Multi-stage pruning: the engine's drop points, pyramiddrop and adatoken3d (hand-checked selections,
attention = the eager model's, removal = official masking, batch = rows, keep-all = dense, KV lengths)."""

from __future__ import annotations

from itertools import pairwise

import pytest
import torch

from fast3d_cli.generation import GenerationConfig, HFCausalLMDecoder, generate
from fast3d_cli.generation.decoder import position_ids_from_mask
from fast3d_cli.pruning.budgets import (
    default_drop_layers,
    geometric_keep_counts,
    multistage_layer_averaged_ratio,
    ratio_keep_counts,
    stage_keep_counts,
)
from fast3d_cli.pruning.engine import (
    DropPoint,
    MaskedDecoder,
    PrunedDecoder,
    PruningPlan,
    attention_group_scores,
    next_layer_attention,
    select_groups,
)
from tests.test_generation_llama import BOS, EOS
from tests.test_pruning_engine import GROUP, N_GROUPS, PREFIX, batch, run_steps, tiny_llama

pytestmark = pytest.mark.usefixtures("one_thread")
N_VISUAL = N_GROUPS * GROUP
PYRAMID = {"query": "last", "attention": "next"}
ADATOKEN = {"query": "instruction", "attention": "previous"}


def rows(values: list[int] | list[float], dtype=torch.long) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype)


def multistage_plan(visual_start, layers, keeps=None, thresholds=None, group=GROUP, **scoring) -> PruningPlan:
    """A plan dropping at ``layers``; ``keeps[i]`` (per row) or ``thresholds[i]`` is drop i's budget."""
    drops = []
    for i, layer in enumerate(layers):
        budget = (
            {"keep": rows(keeps[i])}
            if keeps is not None
            else {"threshold": rows(thresholds[i], torch.float32)}
        )
        drops.append(DropPoint(layer, **budget, **scoring))
    first = drops[0]
    return PruningPlan(
        first.layer,
        visual_start,
        N_VISUAL // group,
        group,
        keep=first.keep,
        threshold=first.threshold,
        query=first.query,
        attention=first.attention,
        later=tuple(drops[1:]),
    )


def keep_masks(decoder: PrunedDecoder) -> list[torch.Tensor]:
    masks = []
    for kept in decoder.report.stages:
        mask = torch.zeros(kept.shape[0], N_VISUAL, dtype=torch.bool)
        for row in range(kept.shape[0]):
            mask[row, kept[row][kept[row] >= 0]] = True
        masks.append(mask)
    return masks


# --- hand-checked selections on tiny attention patterns ---------------------------------------------


def test_pyramiddrop_selection_by_hand() -> None:
    # one row: [pad, prefix, v0..v5, text, last]; the last prompt token's attention (one query row)
    index = torch.tensor([[-1, 0, 1, 2, 3, 4, 5, 6, 7, 8]])
    attention = torch.tensor([[[0.0, 0.1, 0.05, 0.2, 0.05, 0.3, 0.1, 0.1, 0.05, 0.05]]])
    scores = attention_group_scores(attention, index, torch.tensor([1]), n_visual=6, group=1)
    assert torch.equal(scores, torch.tensor([[0.05, 0.2, 0.05, 0.3, 0.1, 0.1]]))
    alive = torch.ones(1, 6, dtype=torch.bool)
    # lambda 0.5 of 6 tokens: int(6 * 0.5) = 3 -> v3 (0.3), v1 (0.2), then v4 before v5 (tie: lower index)
    kept = select_groups(DropPoint(1, keep=rows([3]), **PYRAMID), scores, alive)
    assert kept.nonzero()[:, 1].tolist() == [1, 3, 4]
    # the next drop ranks only the survivors: int(6 * 0.25) = 1 -> v3; dropped tokens never come back
    later = torch.tensor([[0.0, 0.0, 0.0, 0.1, 0.2, 9.0]])  # v5 scores best but is gone
    assert select_groups(DropPoint(2, keep=rows([1]), **PYRAMID), later, kept).nonzero()[:, 1].tolist() == [4]
    # object granularity sums the object's tokens: objects (v0-v2)=0.3, (v3-v5)=0.5
    objects = attention_group_scores(attention, index, torch.tensor([1]), n_visual=6, group=3)
    assert torch.allclose(objects, torch.tensor([[0.3, 0.5]]))


def test_adatoken3d_selection_by_hand() -> None:
    # [v0..v3, q0, q1]: two instruction rows attend; their mean is the contribution
    index = torch.tensor([[0, 1, 2, 3, 4, 5]])
    attention = torch.tensor(
        [[[0.40, 0.02, 0.30, 0.08, 0.20, 0.0], [0.20, 0.00, 0.50, 0.02, 0.18, 0.10]]]
    )  # rows of q0 and q1
    scores = attention_group_scores(attention, index, torch.tensor([0]), n_visual=4, group=1)
    assert torch.allclose(scores, torch.tensor([[0.30, 0.01, 0.40, 0.05]]))
    alive = torch.ones(1, 4, dtype=torch.bool)
    # threshold 0.2 of the best (0.40): keep >= 0.08 -> v0, v2; 0.1 -> >= 0.04 also v3
    gate = select_groups(DropPoint(1, threshold=rows([0.2], torch.float32), **ADATOKEN), scores, alive)
    assert gate.nonzero()[:, 1].tolist() == [0, 2]
    gate = select_groups(DropPoint(1, threshold=rows([0.1], torch.float32), **ADATOKEN), scores, alive)
    assert gate.nonzero()[:, 1].tolist() == [0, 2, 3]
    # a query row inside the visual span (v3 here, when the window starts earlier) is not an instruction
    wide = torch.cat([torch.zeros(1, 1, 6), attention], dim=1)
    wide[0, 0, 0] = 1.0
    assert torch.allclose(attention_group_scores(wide, index, torch.tensor([0]), 4, 1), scores)


def test_excluded_and_dead_groups_rank_last() -> None:
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0]])
    alive = torch.tensor([[False, True, True, True]])
    excluded = torch.tensor([[False, True, False, False]])
    kept = select_groups(DropPoint(1, keep=rows([3])), scores, alive, excluded)
    assert kept.tolist() == [[False, True, True, True]]  # excluded kept only once the others are in
    kept = select_groups(DropPoint(1, keep=rows([9])), scores, alive, excluded)
    assert kept.tolist() == [[False, True, True, True]]  # a dead group never comes back


# --- the attention the engine ranks with is the model's ---------------------------------------------


def eager_attentions(model, embeds, mask):
    positions = position_ids_from_mask(mask).masked_fill(mask == 0, 0)
    out = model.model(
        inputs_embeds=embeds,
        attention_mask=mask,
        position_ids=positions,
        output_attentions=True,
        output_hidden_states=True,
    )
    return out.attentions, out.hidden_states, positions


@pytest.mark.parametrize("layer", [1, 2, 3])
def test_next_layer_attention_is_the_layers_own_attention(layer: int) -> None:
    model = tiny_llama("eager", seed=5)
    embeds, mask, _ = batch(3, seed=6)
    attentions, hidden, positions = eager_attentions(model, embeds, mask)
    backbone = model.model
    got = next_layer_attention(
        backbone.layers[layer], backbone.rotary_emb, hidden[layer], positions, mask.bool(), mask.shape[1] - 1
    )
    expect = attentions[layer][:, :, -1:].mean(1)
    assert (got - expect).abs().max() < 1e-6


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_first_drops_rank_with_the_dense_models_attention(impl: str) -> None:
    model = tiny_llama(impl, seed=5)
    embeds, mask, visual_start = batch(3, seed=6)
    attentions, _, _ = eager_attentions(tiny_llama("eager", seed=5), embeds, mask)
    columns = visual_start[:, None] + torch.arange(N_VISUAL)

    def visual(rows_attention: torch.Tensor) -> torch.Tensor:  # [B, n_visual] -> per object
        return rows_attention.gather(1, columns).reshape(3, N_GROUPS, GROUP).sum(-1)

    # pyramiddrop at layer 2: layer 2's attention of the last prompt token, top 2 objects
    decoder = PrunedDecoder(model, multistage_plan(visual_start, [2], keeps=[[2, 2, 2]], **PYRAMID))
    decoder.prefill(embeds, mask)
    expect = visual(attentions[2][:, :, -1].mean(1)).topk(2).indices.sort().values
    assert decoder.report.kept_visual[:, ::GROUP][:, :2].div(GROUP).long().tolist() == expect.tolist()
    # adatoken3d at layer 2: layer 1's attention of the instruction (text) tokens, gated at 0.5 of the best
    decoder = PrunedDecoder(model, multistage_plan(visual_start, [2], thresholds=[[0.5] * 3], **ADATOKEN))
    decoder.prefill(embeds, mask)
    for row in range(3):
        text = torch.arange(int(visual_start[row]) + N_VISUAL, mask.shape[1])
        contribution = visual(attentions[1][:, :, text].mean(1).mean(1))[row]
        expect = (contribution >= 0.5 * contribution.max()).nonzero()[:, 0].tolist()
        kept = decoder.report.kept_visual[row]
        assert sorted({int(t) // GROUP for t in kept if t >= 0}) == expect


# --- engine properties ------------------------------------------------------------------------------

LAYERS = [1, 2, 3]
KEEPS = [[5, 3, 6, 2], [3, 1, 4, 2], [2, 0, 1, 2]]  # per drop, per row: budgets differ per sample
THRESHOLDS = [[0.05, 0.3, 0.0, 0.5], [0.2, 0.5, 0.1, 0.9], [0.5, 0.5, 0.5, 1.0]]


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("method", ["pyramiddrop", "adatoken3d", "adatoken3d-keep"])
def test_multistage_removal_equals_official_masking(impl: str, method: str) -> None:
    model = tiny_llama(impl, seed=3)
    embeds, mask, visual_start = batch(4, seed=2)
    budgets = {"thresholds": THRESHOLDS} if method == "adatoken3d" else {"keeps": KEEPS}
    scoring = PYRAMID if method == "pyramiddrop" else ADATOKEN

    def pruned() -> PrunedDecoder:
        return PrunedDecoder(model, multistage_plan(visual_start, LAYERS, **budgets, **scoring))

    decoder = pruned()
    got = run_steps(decoder, embeds, mask, [5, 11, 3, 8])
    masked = MaskedDecoder(model, LAYERS, visual_start, keep_masks(decoder))
    expect = run_steps(masked, embeds, mask, [5, 11, 3, 8])
    for a, b in zip(expect, got, strict=True):
        assert (a - b).abs().max() <= 1e-4
    stage_tokens = [(kept >= 0).sum(-1).tolist() for kept in decoder.report.stages]
    if "keeps" in budgets:
        assert stage_tokens == [[k * GROUP for k in keep] for keep in KEEPS]  # budgets honoured per drop
    for earlier, later in zip(keep_masks(decoder), keep_masks(decoder)[1:], strict=False):
        assert not (later & ~earlier).any()  # a dropped token never comes back
    config = GenerationConfig(num_beams=3, max_new_tokens=6)
    masked = MaskedDecoder(model, LAYERS, visual_start, keep_masks(decoder))
    assert generate(pruned(), embeds, mask, config, EOS, BOS) == generate(
        masked, embeds, mask, config, EOS, BOS
    )


@pytest.mark.parametrize("method", ["pyramiddrop", "adatoken3d"])
def test_multistage_keep_all_equals_dense(method: str) -> None:
    model = tiny_llama(seed=1)
    embeds, mask, visual_start = batch(3, seed=1)
    if method == "pyramiddrop":
        plan = multistage_plan(visual_start, LAYERS, keeps=[[N_GROUPS] * 3] * 3, **PYRAMID)
    else:
        plan = multistage_plan(visual_start, LAYERS, thresholds=[[0.0] * 3] * 3, **ADATOKEN)
    config = GenerationConfig(num_beams=3, max_new_tokens=6)
    assert generate(PrunedDecoder(model, plan), embeds, mask, config, EOS, BOS) == generate(
        HFCausalLMDecoder(model), embeds, mask, config, EOS, BOS
    )


@pytest.mark.parametrize("method", ["pyramiddrop", "adatoken3d"])
@pytest.mark.parametrize("num_beams", [1, 3])
def test_multistage_batch_equals_rows_alone(method: str, num_beams: int) -> None:
    model = tiny_llama(seed=7)
    embeds, mask, visual_start = batch(4, seed=8)
    budgets = {"thresholds": THRESHOLDS} if method == "adatoken3d" else {"keeps": KEEPS}
    scoring = PYRAMID if method == "pyramiddrop" else ADATOKEN
    config = GenerationConfig(num_beams=num_beams, max_new_tokens=5)
    whole = PrunedDecoder(model, multistage_plan(visual_start, LAYERS, **budgets, **scoring))
    together = generate(whole, embeds, mask, config, EOS, BOS)
    for row in range(4):
        real = mask[row].bool()
        one = {key: [[values[row]] for values in value] for key, value in budgets.items()}
        alone_start = visual_start[row : row + 1] - (~real).sum()
        decoder = PrunedDecoder(model, multistage_plan(alone_start, LAYERS, **one, **scoring))
        alone = generate(decoder, embeds[row : row + 1, real], mask[row : row + 1, real], config, EOS, BOS)
        assert alone == [together[row]]
        assert decoder.report.kept_visual[0].tolist() == whole.report.kept_visual[row].tolist()


def test_kv_lengths_and_key_masks_per_stage() -> None:
    model = tiny_llama()
    embeds, mask, visual_start = batch(2, seed=5)
    keeps = [[4, 5], [2, 3], [1, 0]]
    decoder = PrunedDecoder(model, multistage_plan(visual_start, LAYERS, keeps=keeps, **PYRAMID))
    _, state = decoder.prefill(embeds, mask)
    lengths = [layer.keys.shape[2] for layer in state.cache.layers]
    real = mask.sum(-1)
    expect = [mask.shape[1]] + [
        int(max(real[i] - (N_GROUPS - keep[i]) * GROUP for i in range(2))) for keep in keeps
    ]
    assert lengths == expect  # one layer per stage here: [0,1) [1,2) [2,3) [3,4)
    widths = [state.extras[stage.key].shape[1] for stage in decoder.stages]
    assert widths == expect
    _, state = decoder.step(torch.tensor([5, 6]), state)
    assert [state.extras[stage.key].shape[1] for stage in decoder.stages] == [w + 1 for w in expect]
    assert [layer.keys.shape[2] for layer in state.cache.layers] == [w + 1 for w in expect]


def test_object_granularity_keeps_whole_objects_and_token_granularity_single_tokens() -> None:
    model = tiny_llama(seed=2)
    embeds, mask, visual_start = batch(2, seed=3)
    objects = PrunedDecoder(model, multistage_plan(visual_start, [1, 3], keeps=[[4, 3], [2, 1]], **ADATOKEN))
    objects.prefill(embeds, mask)
    for kept in objects.report.stages:
        for row in kept.tolist():
            tokens = [t for t in row if t >= 0]
            assert all({3 * (t // 3), 3 * (t // 3) + 1, 3 * (t // 3) + 2} <= set(tokens) for t in tokens)
    tokens = multistage_plan(visual_start, [1, 3], keeps=[[10, 7], [5, 4]], group=1, **PYRAMID)
    decoder = PrunedDecoder(model, tokens)
    decoder.prefill(embeds, mask)
    assert (decoder.report.kept_visual >= 0).sum(-1).tolist() == [5, 4]


def test_plan_refuses_bad_drop_points() -> None:
    start = torch.tensor([PREFIX])
    with pytest.raises(ValueError, match="increase strictly"):
        multistage_plan(start, [2, 2], keeps=[[1], [1]], **PYRAMID)
    with pytest.raises(ValueError, match="exactly one"):
        DropPoint(1, keep=rows([1]), threshold=rows([0.1], torch.float32))
    with pytest.raises(ValueError, match="layer >= 1"):
        DropPoint(0, keep=rows([1]), **ADATOKEN)
    DropPoint(0, keep=rows([1]), **PYRAMID)  # layer 0's own attention on the embeddings is defined


# --- budgets and FLOPs ------------------------------------------------------------------------------


def test_multistage_budgets() -> None:
    assert default_drop_layers(32) == (8, 16, 24) and default_drop_layers(4) == (1, 2, 3)
    assert default_drop_layers(2) == (1,)
    assert stage_keep_counts(576, 0.5, 3) == (288, 144, 72)  # PyramidDrop's LLaVA-1.5 default
    assert geometric_keep_counts(100, 10, 3) == (46, 22, 10)  # lambda = 0.1^(1/3)
    assert geometric_keep_counts(100, 100, 3) == (100, 100, 100)
    # layer-averaged ratio: each stage's share of the depth times the share of items absent in it
    assert multistage_layer_averaged_ratio([[50, 25, 12]], 100, (8, 16, 24), 32) == pytest.approx(
        100 * (0.25 * 0.5 + 0.25 * 0.75 + 0.25 * 0.88)
    )
    counts = ratio_keep_counts(40.0, 100, (8, 16, 24), 32)
    assert abs(multistage_layer_averaged_ratio([counts], 100, (8, 16, 24), 32) - 40.0) < 0.5
    assert list(counts) == sorted(counts, reverse=True)


def test_prefill_flops_count_each_stage() -> None:
    from types import SimpleNamespace

    from fast3d_cli.pruning.flops import layer_flops, prefill_flops

    config = SimpleNamespace(
        hidden_size=8, num_attention_heads=2, intermediate_size=16, num_hidden_layers=4, vocab_size=10
    )
    head = 2.0 * 8 * 10
    got = prefill_flops(config, 100, [10, 30, 60], [1, 2, 3])
    expect = sum(layer_flops(config, n) for n in (100, 90, 70, 40)) + head
    assert got == pytest.approx(expect)
    assert prefill_flops(config, 100, 30, 2) == prefill_flops(config, 100, [30], [2])


# --- through the evaluation: Pruner, records, options -----------------------------------------------


@pytest.fixture(scope="module")
def four_layer_model(data_config):
    from tests.conftest import build_tiny_model

    model = build_tiny_model(data_config, seed=3, layers=4)
    with torch.no_grad():  # sharper attention than the untrained init's almost uniform one
        for layer in model.llm.model.layers:
            layer.self_attn.q_proj.weight.mul_(40.0)
            layer.self_attn.k_proj.weight.mul_(40.0)
    return model


EVAL_SETTINGS = {
    "pyramiddrop": {"keep": 10},
    "pyramiddrop-stage": {"stage_ratio": 0.5, "layers": (1, 3)},
    "adatoken3d": {"threshold": 0.3},
    "adatoken3d-token": {"ratio": 30.0, "granularity": "token"},
}


@pytest.mark.parametrize("name", list(EVAL_SETTINGS))
def test_multistage_methods_in_the_evaluation(name, four_layer_model, data_config) -> None:
    from fast3d_cli.data import SceneBank, load_samples
    from fast3d_cli.evaluation.runner import generate_answers
    from fast3d_cli.pruning.methods import PruningSettings, kept_summary
    from fast3d_cli.pruning.pruner import Pruner

    torch.set_num_threads(1)
    model = four_layer_model
    settings = PruningSettings(method=name.split("-")[0], **EVAL_SETTINGS[name])
    pruner = Pruner(settings, model, "fingerprint", data_config)
    budget = pruner.budget
    samples = load_samples(data_config, "scanqa", "val")[:3]
    bank = SceneBank(data_config, "val")
    config = GenerationConfig(num_beams=2, max_new_tokens=3)
    together = generate_answers(model, bank, samples, config, pruner)
    for i, sample in enumerate(samples):
        alone = generate_answers(model, bank, [sample], config, pruner)
        assert alone.texts == [together.texts[i]] and alone.kept_stages == [together.kept_stages[i]]
    stages = together.kept_stages
    assert all(len(row) == len(budget.layers) for row in stages)
    assert [row[-1] for row in stages] == together.kept_visual
    if budget.stage_keep:  # fixed schedules are honoured at every drop
        assert stages == [[k * budget.group for k in budget.stage_keep]] * 3
    else:
        assert all(a >= b for row in stages for a, b in pairwise(row))
    summary = kept_summary(together.kept_visual, budget, stages)
    assert 0 < summary["layer_averaged_ratio"] < summary["input_ratio"]
    if name == "pyramiddrop-stage":
        assert budget.layers == (1, 3) and budget.stage_keep == (50, 25)
    if name == "adatoken3d-token":
        assert abs(summary["layer_averaged_ratio"] - 30.0) < 0.5


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--method", "pyramiddrop"], "exactly one of --keep, --ratio, --stage-ratio"),
        (["--method", "pyramiddrop", "--threshold", "0.1"], "exactly one of --keep, --ratio, --stage-ratio"),
        (["--method", "pyramiddrop", "--keep", "5", "--layer", "1"], "--layers, not --layer"),
        (["--method", "pyramiddrop", "--keep", "5", "--layers", "2,1"], "strictly increasing"),
        (["--method", "pyramiddrop", "--keep", "5", "--layers", "a,b"], "comma-separated"),
        (["--method", "pyramiddrop", "--stage-ratio", "0"], "--stage-ratio must be in (0, 1]"),
        (["--method", "adatoken3d", "--threshold", "2"], "--threshold must be in [0, 1]"),
        (["--method", "adatoken3d", "--keep", "5", "--layers", "0,2"], "must be >= 1"),
        (["--method", "fastv", "--keep", "5", "--layer", "1", "--layers", "1,2"], "multi-stage methods"),
    ],
)
def test_bad_multistage_options_exit_2(capsys, data_config, tmp_path, extra, message) -> None:
    from tests.conftest import fast3d, one_error_line

    args = ["eval", "--data-root", str(data_config.root), "-o", str(tmp_path / "o"), "--tasks", "scanqa"]
    code, _, stderr = fast3d(capsys, *args, *extra)
    assert code == 2 and message in stderr and one_error_line(stderr), stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("name", ["pyramiddrop", "adatoken3d"])
def test_generic_path_equals_the_evaluation(name, four_layer_model, data_config) -> None:
    from fast3d_cli.data import SceneBank, load_samples
    from fast3d_cli.evaluation.runner import generate_answers
    from fast3d_cli.models.adapter import ChatSceneAdapter
    from fast3d_cli.pruning.generic import prune_generate
    from fast3d_cli.pruning.methods import PruningSettings
    from fast3d_cli.pruning.pruner import Pruner
    from tests.test_adapter_chat_scene import chat_scene_batch

    options = {"keep": 12} if name == "pyramiddrop" else {"threshold": 0.3}
    pruner = Pruner(PruningSettings(method=name, **options), four_layer_model, "tiny", data_config)
    samples = load_samples(data_config, "scanqa", "val")[:3]
    bank = SceneBank(data_config, "val")
    config = GenerationConfig(num_beams=2, max_new_tokens=3)
    expected = generate_answers(four_layer_model, bank, samples, config, pruner)
    budget = pruner.budget
    budgets = {"stage_keep": budget.stage_keep} if name == "pyramiddrop" else {"threshold": 0.3}
    adapter = ChatSceneAdapter(four_layer_model, group=3)
    got = prune_generate(
        adapter, chat_scene_batch(samples, bank), name, gen=config, layers=budget.layers, **budgets
    )
    assert got.texts == expected.texts and got.kept_tokens == expected.kept_visual
    with pytest.raises(ValueError, match="exactly one of"):
        prune_generate(adapter, chat_scene_batch(samples, bank), name, layers=budget.layers)


def test_summary_line_names_every_drop() -> None:
    from fast3d_cli.cli.tables import summary_lines

    pruning = {
        "method": "pyramiddrop",
        "keep": 12,
        "layer": 1,
        "layers": [1, 2, 3],
        "stage_keep": [50, 25, 12],
    }
    pruning |= {
        "layer_averaged_ratio": 50.0,
        "input_ratio": 88.0,
        "mean_kept_tokens": 36.0,
        "flops_ratio": 0.5,
    }
    line = summary_lines({"pruning": pruning})[0]
    assert line.startswith("pyramiddrop (keep 50/25/12, layers 1,2,3): pruned 50.00% layer-averaged")
    pruning |= {"method": "adatoken3d", "stage_keep": None, "threshold": 0.05, "keep": None}
    assert summary_lines({"pruning": pruning})[0].startswith("adatoken3d (threshold 0.05, layers 1,2,3)")


def test_resumed_runs_see_the_drop_schedule(four_layer_model, data_config) -> None:
    from fast3d_cli.data import load_samples
    from fast3d_cli.pruning.methods import PruningSettings
    from fast3d_cli.pruning.pruner import Pruner

    samples = load_samples(data_config, "scanqa", "val")[:2]

    def identity(**options):
        settings = PruningSettings(method="pyramiddrop", **options)
        pruner = Pruner(settings, four_layer_model, "tiny", data_config)
        return settings.identity(), pruner.resolved_identity(samples)

    default, default_resolved = identity(stage_ratio=0.5)
    assert "layers" not in default and default_resolved["tasks"]["scanqa"]["layers"] == [1, 2, 3]
    explicit, explicit_resolved = identity(stage_ratio=0.5, layers=(1, 3))
    assert explicit["layers"] == [1, 3] and explicit_resolved != default_resolved
    assert identity(stage_ratio=0.25)[1] != default_resolved
    assert "layers" not in PruningSettings(method="fastv", layer=1, keep=3).identity()


def test_next_layer_attention_with_per_head_query_key_norms() -> None:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, vocab_size=50,
    )  # fmt: skip
    model = Qwen3ForCausalLM._from_config(config, attn_implementation="eager").eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            param.copy_(1.0 + 0.1 * noise if name.endswith("norm.weight") else 0.3 * noise)
        embeds, mask = torch.randn(2, 9, 32, generator=gen), torch.ones(2, 9, dtype=torch.long)
        attentions, hidden, positions = eager_attentions(model, embeds, mask)
        layer, rotary = model.model.layers[2], model.model.rotary_emb
        got = next_layer_attention(layer, rotary, hidden[2], positions, mask.bool(), 8)
    assert (got - attentions[2][:, :, -1:].mean(1)).abs().max() < 1e-6
