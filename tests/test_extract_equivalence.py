"""Captured maps equal an eager output_attentions computation of the spec §3 formula."""

from __future__ import annotations

import pytest
import torch

from fast3d_cli.attention.capture import AttentionCapture, capturing
from fast3d_cli.attention.extract import ExtractSettings, extract_chunk, teacher_caption
from fast3d_cli.attention.maps import aggregate_maps
from fast3d_cli.data import SceneBank, load_samples


def eager_maps(model, inputs, text_len: torch.Tensor, prompt_len: torch.Tensor):
    """The official formula, literally: mean over layers and heads of eager attention probabilities."""
    previous = model.llm.config._attn_implementation
    model.llm.set_attn_implementation("eager")
    try:
        out = model.llm.model(
            inputs_embeds=inputs.inputs_embeds,
            attention_mask=inputs.attention_mask,
            position_ids=inputs.position_ids,
            output_attentions=True,
            use_cache=False,
        )
    finally:
        model.llm.set_attn_implementation(previous)
    mean = torch.stack(out.attentions).mean(0).mean(1)  # layers, then heads -> [B, T, T]
    object_maps, prompt_maps, layer_maps = [], [], []
    for b in range(mean.shape[0]):
        rows = slice(int(inputs.text_start[b]), int(inputs.text_start[b] + text_len[b]))
        cols = slice(int(inputs.visual_start[b]), int(inputs.visual_start[b]) + 300)
        per_object = mean[b, rows, cols].reshape(-1, 100, 3).sum(-1)
        object_maps.append(per_object.mean(0))
        prompt_maps.append(per_object[: int(prompt_len[b])].mean(0))
        layers = (
            torch.stack(out.attentions)[:, b].mean(1)[:, rows, cols].reshape(len(out.attentions), -1, 100, 3)
        )
        layer_maps.append(layers.sum(-1).mean(1))
    return torch.stack(object_maps), torch.stack(prompt_maps), torch.stack(layer_maps)


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("padded", [False, True])
def test_capture_equals_eager_formula(tiny_model, data_config, batch: int, padded: bool) -> None:
    samples = load_samples(data_config, "scanrefer", "val")[:batch]
    if padded and batch > 1:  # mix tasks so prompt lengths differ and rows are left-padded
        samples = (
            samples[:2]
            + load_samples(data_config, "sqa3d", "val")[:1]
            + load_samples(data_config, "scanqa", "val")[:1]
        )
    bank = SceneBank(data_config, "val")
    feats = [bank.object_features(s.scene_id) for s in samples]
    prompts = [s.prompt for s in samples]
    if padded and batch == 1:
        prompts = [prompts[0]]
    captions = [teacher_caption(s, 42) for s in samples]
    with torch.no_grad():
        inputs, text_len, prompt_len = tiny_model.build_teacher_forced(
            prompts, captions, torch.stack([f[0] for f in feats]), torch.stack([f[1] for f in feats])
        )
        if padded:
            assert batch == 1 or inputs.attention_mask.min() == 0
        capture = AttentionCapture(int(inputs.text_start.min()), inputs.visual_start, 300, keep_layers=True)
        with capturing(tiny_model.llm, capture):
            tiny_model.llm.model(
                inputs_embeds=inputs.inputs_embeds,
                attention_mask=inputs.attention_mask,
                position_ids=inputs.position_ids,
                use_cache=False,
            )
        maps = aggregate_maps(capture.result(), inputs.text_start, text_len, prompt_len)
        expected_object, expected_prompt, expected_layers = eager_maps(
            tiny_model, inputs, text_len, prompt_len
        )
    assert tiny_model.llm.config._attn_implementation == "sdpa"  # restored
    assert torch.allclose(maps.object_scores, expected_object, atol=1e-5, rtol=0)
    assert torch.allclose(maps.prompt_scores, expected_prompt, atol=1e-5, rtol=0)
    assert torch.allclose(maps.layer_scores, expected_layers, atol=1e-5, rtol=0)
    assert torch.allclose(maps.token_scores.reshape(batch, 100, 3).sum(-1), maps.object_scores, atol=1e-6)
    assert (maps.object_scores.sum(1) < 1).all() and (
        maps.object_scores >= 0
    ).all()  # raw mass, not normalised


def test_maps_do_not_depend_on_batch_composition(tiny_model, data_config) -> None:
    samples = load_samples(data_config, "scanqa", "val")[:5]
    bank = SceneBank(data_config, "val")
    together = extract_chunk(tiny_model, bank, samples, ExtractSettings(tasks=("scanqa",), batch_size=5))
    alone = extract_chunk(tiny_model, bank, samples, ExtractSettings(tasks=("scanqa",), batch_size=1))
    for name in ("object_scores", "prompt_scores"):
        assert abs(together[name] - alone[name]).max() <= 1e-5


def test_teacher_caption_is_deterministic_and_follows_the_official_rules(data_config) -> None:
    qa = load_samples(data_config, "scanqa", "val")[0]
    assert teacher_caption(qa, 42) == teacher_caption(qa, 42)
    assert teacher_caption(qa, 42).endswith(".") and teacher_caption(qa, 42)[0].isupper()
    refer = load_samples(data_config, "scanrefer", "val")[0]
    assert teacher_caption(refer, 1) == refer.ref_captions[0]  # the "<OBJm>." answer
    assert teacher_caption(load_samples(data_config, "multi3dref", "val")[0], 42) == ""
    train = load_samples(data_config, "scan2cap", "train")[0]
    assert teacher_caption(train, 42) == train.caption
