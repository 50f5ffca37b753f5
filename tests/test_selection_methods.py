"""cdpruner and coverage: the selection algorithms on hand-checked cases, and through the evaluation
(budget honoured, keep-all equals dense, a batch of N equals N batches of 1)."""

from __future__ import annotations

import pytest
import torch

from fast3d_cli.data import SceneBank, load_samples
from fast3d_cli.evaluation.runner import generate_answers
from fast3d_cli.generation import GenerationConfig
from fast3d_cli.pruning.methods import PruningSettings
from fast3d_cli.pruning.pruner import Pruner, object_centers
from fast3d_cli.pruning.selection import (
    cdpruner_scores,
    conditional_kernel,
    coverage_scores,
    dpp_greedy_scores,
    expand_to_tokens,
    instruction_relevance,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def picks(scores: torch.Tensor, k: int) -> list[int]:
    return scores[0].topk(k).indices.tolist()


# --- CDPruner ---------------------------------------------------------------------------------------


def test_relevance_is_negative_cosine_min_max_normalised() -> None:
    items = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]])
    text = torch.tensor([[[1.0, 0.0]]])
    # -cos = [-1, 0, 1]; min -1, max 1: (r + 1 + 1e-6) / 2
    expected = torch.tensor([[1e-6 / 2, (1 + 1e-6) / 2, (2 + 1e-6) / 2]])
    torch.testing.assert_close(instruction_relevance(items, text), expected)
    flat = instruction_relevance(torch.ones(1, 3, 2), text)
    assert torch.equal(flat, torch.ones(1, 3))


def test_dpp_greedy_hand_checked() -> None:
    """Three items: a and b nearly parallel, c orthogonal. L = diag(r) S diag(r) with r = (1, 0.9, 0.5).
    d² = diag L = (1, 0.81, 0.25): pick a. After a: d²_b = 0.81 (1 - 0.99²) = 0.016, d²_c = 0.25: pick c,
    then b."""
    s = torch.tensor([[1.0, 0.99, 0.0], [0.99, 1.0, 0.0], [0.0, 0.0, 1.0]])
    r = torch.tensor([1.0, 0.9, 0.5])
    kernel = (r[:, None] * s * r[None, :])[None]
    scores = dpp_greedy_scores(kernel, 3)
    assert scores.tolist() == [[3.0, 1.0, 2.0]]
    assert picks(scores, 2) == [0, 2]


def brute_force_greedy(kernel: torch.Tensor, steps: int) -> list[int]:
    """Greedy log-det maximisation by explicit determinants (float64)."""
    chosen: list[int] = []
    for _ in range(steps):
        best, best_det = None, -float("inf")
        for j in range(kernel.shape[0]):
            if j in chosen:
                continue
            idx = torch.tensor([*chosen, j])
            det = torch.linalg.det(kernel[idx][:, idx]).item()
            if det > best_det:
                best, best_det = j, det
        chosen.append(best)
    return chosen


def test_dpp_greedy_matches_brute_force_log_det() -> None:
    gen = torch.Generator().manual_seed(3)
    for trial in range(5):
        features = torch.randn(2, 9, 6, generator=gen)
        relevance = torch.rand(2, 9, generator=gen) + 0.1
        kernel = conditional_kernel(features, relevance)
        scores = dpp_greedy_scores(kernel, 6)
        for row in range(2):
            order = scores[row].argsort(descending=True)[:6].tolist()
            assert order == brute_force_greedy(kernel[row].double(), 6), trial


def test_dpp_stops_when_the_kernel_is_exhausted_and_falls_back_to_relevance() -> None:
    # rank-2 kernel over 4 items: two picks, then the rest in fallback (relevance) order
    features = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]])
    relevance = torch.tensor([[1.0, 0.9, 0.2, 0.5]])
    scores = dpp_greedy_scores(conditional_kernel(features, relevance), 4, fallback=relevance)
    assert scores.argsort(descending=True)[0].tolist() == [0, 1, 3, 2]
    assert torch.isfinite(scores).all()


def test_cdpruner_rows_are_independent_and_skip_excluded() -> None:
    gen = torch.Generator().manual_seed(0)
    features, rel = torch.randn(3, 10, 8, generator=gen), torch.randn(3, 10, 4, generator=gen)
    text = torch.randn(3, 1, 4, generator=gen)
    excluded = torch.zeros(3, 10, dtype=torch.bool)
    excluded[1, 6:] = True
    together = cdpruner_scores(features, rel, text, 7, excluded)
    for row in range(3):
        alone = cdpruner_scores(
            features[row : row + 1], rel[row : row + 1], text[row : row + 1], 7, excluded[row : row + 1]
        )
        assert torch.equal(alone, together[row : row + 1])
    assert not torch.isfinite(together[1, 6:]).any()
    assert torch.isfinite(together[0]).all()


# --- coverage -----------------------------------------------------------------------------------------


def test_coverage_farthest_point_sampling_hand_checked() -> None:
    # 2D points (z = 0): centroid (1, 1) -> nearest is p4 (1, 1); then the farthest from it, ...
    points = torch.tensor([[[0.0, 0, 0], [2, 0, 0], [0, 2, 0], [3, 3, 0], [1, 1, 0]]])
    scores = coverage_scores(points, 5)
    # from p4 (1,1): distances p0 1.41, p1 1.41, p2 1.41, p3 2.83 -> p3; then min-dist: p0 1.41 (to p4),
    # p1 1.41, p2 1.41 -> first index p0; then p1 (min 1.41 vs p2 1.41: p1 to p0 = 2, to p4 1.41) -> p1; p2
    assert scores.argsort(descending=True)[0].tolist() == [4, 3, 0, 1, 2]


def test_coverage_never_picks_padding_until_real_objects_run_out() -> None:
    points = torch.tensor([[[0.0, 0, 0], [5, 0, 0], [0, 0, 0], [1, 0, 0], [0, 0, 0]]])
    padding = torch.tensor([[False, False, True, False, True]])
    scores = coverage_scores(points, 5, padding)
    order = scores.argsort(descending=True)[0].tolist()
    # real centroid (2, 0, 0): nearest p3; farthest from p3 is p1; then p0; padding last, in slot order
    assert order == [3, 1, 0, 2, 4]
    # 3D, explicit start
    cube = torch.tensor([[[0.0, 0, 0], [1, 1, 1], [0, 0, 1], [1, 0, 0]]])
    scores = coverage_scores(cube, 4, start=torch.tensor([0]))
    assert scores.argsort(descending=True)[0].tolist() == [0, 1, 2, 3]


def test_token_ranking_keeps_objects_whole() -> None:
    objects = torch.tensor([[1.0, 3.0, float("-inf"), 2.0]])
    tokens = expand_to_tokens(objects, 3)
    assert tokens.topk(7).indices.tolist() == [[3, 4, 5, 9, 10, 11, 0]]
    assert not torch.isfinite(tokens[0, 6:9]).any()


def test_object_centers_mark_padding(data_config) -> None:
    bank = SceneBank(data_config, "val")
    samples = load_samples(data_config, "scanqa", "val")[:2]
    centers, padding = object_centers(samples, bank, 100)
    for i, sample in enumerate(samples):
        n = len(bank.proposal_locs(sample.scene_id))
        assert not padding[i, :n].any() and padding[i, n:].all()
        assert torch.equal(
            centers[i, :n], torch.as_tensor(bank.proposal_locs(sample.scene_id))[:, :3].float()
        )


# --- through the evaluation ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def target(model_dir):
    from fast3d_cli.models.loading import ModelSource

    source = ModelSource(model_dir=model_dir)
    return source.load(device="cpu", dtype="float32"), source.fingerprint()


CASES = {
    "cdpruner": {"keep": 7},
    "cdpruner-token": {"keep": 20, "granularity": "token"},
    "coverage": {"keep": 6},
    "coverage-token": {"keep": 16, "granularity": "token"},
    "coverage-layer1": {"keep": 5, "layer": 1},
}


def settings_for(name: str, **extra) -> PruningSettings:
    method = name.split("-")[0]
    return PruningSettings(method=method, **{**CASES[name], **extra})


@pytest.mark.parametrize("name", list(CASES))
def test_batch_equals_rows_alone_and_budget_is_honoured(name, target, data_config) -> None:
    model, fingerprint = target
    pruner = Pruner(settings_for(name), model, fingerprint, data_config)
    samples = load_samples(data_config, "scanqa", "val")[:4]
    bank = SceneBank(data_config, "val")
    config = GenerationConfig(num_beams=2, max_new_tokens=4)
    together = generate_answers(model, bank, samples, config, pruner)
    budget = pruner.budget
    assert together.kept_visual == [budget.keep * budget.group] * 4
    for i, sample in enumerate(samples):
        alone = generate_answers(model, bank, [sample], config, pruner)
        assert alone.texts == [together.texts[i]]
        assert alone.kept_visual == [together.kept_visual[i]]
        assert alone.kept_objects == [together.kept_objects[i]]


@pytest.mark.parametrize("method", ["cdpruner", "coverage"])
def test_keep_all_equals_dense(method, target, data_config) -> None:
    model, fingerprint = target
    samples = load_samples(data_config, "scanqa", "val")[:3]
    bank = SceneBank(data_config, "val")
    config = GenerationConfig(num_beams=1, max_new_tokens=6)
    dense = generate_answers(
        model, bank, samples, config, Pruner(PruningSettings(), model, fingerprint, data_config)
    )
    n_objects = model.config.max_obj_num
    pruned = generate_answers(
        model,
        bank,
        samples,
        config,
        Pruner(PruningSettings(method=method, keep=n_objects), model, fingerprint, data_config),
    )
    assert pruned.texts == dense.texts
    assert pruned.kept_visual == [model.config.n_visual_tokens] * 3


def test_coverage_keeps_real_objects_spread_out(target, data_config) -> None:
    model, fingerprint = target
    bank = SceneBank(data_config, "val")
    samples = load_samples(data_config, "scanqa", "val")[:3]
    pruner = Pruner(PruningSettings(method="coverage", keep=4), model, fingerprint, data_config)
    out = generate_answers(model, bank, samples, GenerationConfig(1, 1), pruner)
    centers, padding = object_centers(samples, bank, model.config.max_obj_num)
    for row, kept in enumerate(out.kept_objects):
        assert not padding[row, kept].any()
        expected = coverage_scores(centers[row : row + 1], 4, padding[row : row + 1]).topk(4).indices
        assert sorted(kept) == sorted(expected[0].tolist())


def test_cdpruner_compares_projected_objects_with_the_question(target, data_config) -> None:
    """The kept objects are the DPP picks over the projected (3D, 2D) object embeddings conditioned on the
    question's token embeddings, and another question about the same scene changes them."""
    import torch.nn.functional as F

    model, fingerprint = target
    bank = SceneBank(data_config, "val")
    samples = load_samples(data_config, "scanqa", "val")
    pruner = Pruner(PruningSettings(method="cdpruner", keep=5), model, fingerprint, data_config)
    selections = {}
    for sample in samples[:6]:
        kept = generate_answers(model, bank, [sample], GenerationConfig(1, 1), pruner).kept_objects[0]
        f3d, f2d = bank.object_features(sample.scene_id)
        with torch.no_grad():
            p3 = model.object_proj(F.normalize(f3d, dim=-1))[None]
            p2 = model.object_img_proj(F.normalize(f2d, dim=-1))[None]
            ids = torch.tensor(model.layout.encode(f" {sample.prompt} "))
            question = model.embed_tokens(ids).mean(0)[None, None]
        expected = cdpruner_scores(torch.cat([p3, p2], -1), (p3 + p2) / 2, question, 5).topk(5).indices
        assert sorted(kept) == sorted(expected[0].tolist())
        selections.setdefault(sample.scene_id, set()).add(tuple(kept))
    assert any(len(kept_sets) > 1 for kept_sets in selections.values())


def test_bad_budget_options_are_refused() -> None:
    from fast3d_cli.errors import UserError
    from fast3d_cli.pruning.methods import validate

    for settings in (
        PruningSettings(method="cdpruner"),
        PruningSettings(method="coverage", keep=3, ratio=50.0),
        PruningSettings(method="coverage", alpha=0.5),
        PruningSettings(method="cdpruner", keep=3, maps="x.zarr"),
        PruningSettings(method="efficient3d", keep=3, alpha=0.5, maps="x.zarr"),
        PruningSettings(method="efficient3d", keep=3),
    ):
        with pytest.raises(UserError):
            validate(settings, 2)
    assert validate(PruningSettings(method="efficient3d", alpha=0.5, maps="x.zarr"), 2).name == "efficient3d"
    assert validate(PruningSettings(method="efficient3d", ratio=50.0, maps="x.zarr"), 2).adaptive


def test_generic_cdpruner_on_the_chat_scene_adapter(tiny_model, data_config) -> None:
    """The adapter path (any TargetAdapter, e.g. LLaVA): the same DPP, conditioned on the text after the
    visual tokens; budget per sample, batch = rows alone; coverage (needs 3D boxes) is refused."""
    from fast3d_cli.models.adapter import ChatSceneAdapter
    from fast3d_cli.pruning.generic import prune_generate, pruning_plan
    from tests.test_adapter_chat_scene import chat_scene_batch

    bank = SceneBank(data_config, "val")
    samples = load_samples(data_config, "scanqa", "val")[:3]
    adapter, batch = ChatSceneAdapter(tiny_model), chat_scene_batch(samples, bank)
    gen = GenerationConfig(num_beams=1, max_new_tokens=3)
    together = prune_generate(adapter, batch, "cdpruner", keep=[4, 6, 5], gen=gen)
    assert together.kept_units == [4, 6, 5]
    for i, keep in enumerate([4, 6, 5]):
        alone = prune_generate(
            adapter, chat_scene_batch(samples[i : i + 1], bank), "cdpruner", keep=keep, gen=gen
        )
        assert alone.texts == [together.texts[i]]
    with torch.no_grad():
        inputs = adapter.build_inputs(batch)
        plan = pruning_plan(adapter, batch, inputs, "cdpruner", keep=6)
        row = 0
        features = adapter.visual_embeddings(inputs)[row : row + 1]
        start = int(inputs.text_start[row])
        text = inputs.inputs_embeds[row, start:].mean(0)[None, None]
        pairs = features.reshape(1, features.shape[1], 2, -1).mean(2)
        expected = cdpruner_scores(features, pairs, text, 6)
    assert torch.equal(plan.scores[row : row + 1].topk(6).indices, expected.topk(6).indices)
    with pytest.raises(ValueError, match="3D boxes"):
        pruning_plan(adapter, batch, inputs, "coverage", keep=3)


@pytest.mark.parametrize("method", ["cdpruner", "coverage"])
def test_skip_padding_keeps_only_real_objects(method, target, data_config) -> None:
    model, fingerprint = target
    bank = SceneBank(data_config, "val")
    samples = load_samples(data_config, "scanqa", "val")[:4]
    settings = PruningSettings(method=method, keep=6, skip_padding=True)
    out = generate_answers(
        model, bank, samples, GenerationConfig(1, 1), Pruner(settings, model, fingerprint, data_config)
    )
    _, padding = object_centers(samples, bank, model.config.max_obj_num)
    for row, kept in enumerate(out.kept_objects):
        assert len(kept) == 6 and not padding[row, kept].any()
