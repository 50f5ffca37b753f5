"""ChatSceneAdapter through the generic path = the existing Chat-Scene evaluation and extraction."""

from __future__ import annotations

import pytest
import torch

from fast3d_cli.attention.extract import ExtractSettings, extract_chunk, teacher_caption
from fast3d_cli.data import SceneBank, load_samples
from fast3d_cli.evaluation.runner import generate_answers
from fast3d_cli.generation import GenerationConfig
from fast3d_cli.models.adapter import ChatSceneAdapter, ChatSceneBatch, SampleKey, TargetAdapter
from fast3d_cli.pruning.generic import extract_maps, prune_generate
from fast3d_cli.pruning.methods import PruningSettings
from fast3d_cli.pruning.pruner import Pruner

CONFIG = GenerationConfig(num_beams=2, max_new_tokens=4)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def samples(data_config):
    return load_samples(data_config, "scanqa", "val")[:3]


def chat_scene_batch(samples, bank: SceneBank) -> ChatSceneBatch:
    feats = [bank.object_features(s.scene_id) for s in samples]
    return ChatSceneBatch(
        [s.prompt for s in samples],
        torch.stack([f[0] for f in feats]),
        torch.stack([f[1] for f in feats]),
        keys=[SampleKey(s.task, s.index) for s in samples],
    )


@pytest.mark.parametrize(
    ("method", "options", "granularity"),
    [
        ("none", {}, "object"),
        ("random", {"keep": 5, "layer": 1}, "object"),
        ("divprune", {"keep": 7}, "token"),
        ("fastv", {"keep": 4, "layer": 1}, "object"),
    ],
)
def test_generic_generation_equals_the_evaluation(
    tiny_model, data_config, samples, method, options, granularity
) -> None:
    bank = SceneBank(data_config, "val")
    pruner = Pruner(
        PruningSettings(method=method, granularity=granularity, **options), tiny_model, "tiny", data_config
    )
    expected = generate_answers(tiny_model, bank, samples, CONFIG, pruner)
    adapter = ChatSceneAdapter(tiny_model, group=3 if granularity == "object" else 1)
    assert isinstance(adapter, TargetAdapter)
    got = prune_generate(adapter, chat_scene_batch(samples, bank), method, gen=CONFIG, **options)
    assert got.texts == expected.texts
    assert got.kept_tokens == expected.kept_visual


def test_generic_maps_equal_fast3d_extract(tiny_model, data_config, samples) -> None:
    bank = SceneBank(data_config, "val")
    settings = ExtractSettings(tasks=("scanqa",), batch_size=len(samples))
    expected = extract_chunk(tiny_model, bank, samples, settings)["object_scores"]
    captions = [teacher_caption(s, settings.seed) for s in samples]
    got = extract_maps(ChatSceneAdapter(tiny_model), chat_scene_batch(samples, bank), captions)
    torch.testing.assert_close(got, torch.from_numpy(expected), rtol=1e-6, atol=1e-7)
