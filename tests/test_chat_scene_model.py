"""The Chat-Scene sequence layout (spec §1.4) and our model directory format."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from fast3d_cli.data import DataConfig, SceneBank, load_samples
from fast3d_cli.errors import CheckpointError, UserError
from fast3d_cli.models.chat_scene.io import from_pretrained, save_pretrained


def _batch(data_config: DataConfig, n: int):
    samples = load_samples(data_config, "scanqa", "val")[:n]
    bank = SceneBank(data_config, "val")
    feats = [bank.object_features(s.scene_id) for s in samples]
    return samples, torch.stack([f[0] for f in feats]), torch.stack([f[1] for f in feats])


def test_prefix_length_is_measured_from_the_tokenizer(tiny_model) -> None:
    layout = tiny_model.layout
    text = layout.prefix_text[0]
    assert text.endswith("Object information: [") and layout.prefix_text[1] == "]. USER: "
    expected = 1 + len(tiny_model.tokenizer(text, add_special_tokens=False)["input_ids"])
    assert layout.n_prefix == expected
    assert layout.prefix_ids[0] == tiny_model.tokenizer.bos_token_id
    assert layout.visual_span == (expected, expected + 300)
    assert layout.user_text("Where?") == " Where? ASSISTANT: "


def test_sequence_layout_and_left_padding(tiny_model, data_config: DataConfig) -> None:
    samples, f3d, f2d = _batch(data_config, 3)
    samples = [samples[0], samples[1], samples[2]]
    prompts = [samples[0].prompt, "Short?", samples[2].prompt + " And more words here."]
    with torch.no_grad():
        inputs = tiny_model.build_inputs(prompts, f3d, f2d)
        single = tiny_model.build_inputs(prompts[1:2], f3d[1:2], f2d[1:2])
    lengths = inputs.attention_mask.sum(1)
    assert inputs.attention_mask.shape[1] == lengths.max()
    for i in range(3):
        pad = inputs.attention_mask.shape[1] - lengths[i]
        assert inputs.attention_mask[i, :pad].sum() == 0 and inputs.attention_mask[i, pad:].all()
        assert inputs.visual_start[i] == pad + tiny_model.layout.n_prefix
        assert inputs.position_ids[i, pad] == 0 and inputs.position_ids[i, -1] == lengths[i] - 1
    # identifier embeddings sit at every third visual position, in order
    embed = tiny_model.embed_tokens.weight
    start = int(inputs.visual_start[1])
    for j in (0, 7, 99):
        assert torch.equal(inputs.inputs_embeds[1, start + 3 * j], embed[tiny_model.obj_token_ids[j]])
    # the 3D token is object_proj of the L2-normalised feature; padded objects give the bias path
    proj = tiny_model.object_proj(torch.nn.functional.normalize(f3d[1], dim=-1))
    assert torch.allclose(inputs.inputs_embeds[1, start + 1 : start + 300 : 3], proj)
    # a padded row equals the same sample alone
    pad = inputs.attention_mask.shape[1] - lengths[1]
    assert torch.equal(inputs.inputs_embeds[1, pad:], single.inputs_embeds[0])
    assert inputs.text_start[1] - inputs.visual_start[1] == 300 + len(tiny_model.layout.suffix_ids)


def test_labels_cover_only_the_answer_and_eos(tiny_model, data_config: DataConfig) -> None:
    samples, f3d, f2d = _batch(data_config, 2)
    answers = ["Red.", "Two chairs."]
    inputs = tiny_model.build_inputs([s.prompt for s in samples], f3d, f2d, answers=answers)
    for i, answer in enumerate(answers):
        ids = tiny_model.layout.answer_ids(answer)
        labelled = inputs.labels[i][inputs.labels[i] != -100].tolist()
        assert labelled == ids and ids[-1] == tiny_model.tokenizer.eos_token_id
        assert inputs.answer_start[i] == inputs.labels.shape[1] - len(ids)
    loss = tiny_model(inputs).loss
    assert torch.isfinite(loss)


def test_save_and_load_roundtrip_gives_identical_logits(
    tiny_model, data_config: DataConfig, tmp_path: Path
) -> None:
    samples, f3d, f2d = _batch(data_config, 2)
    save_pretrained(tiny_model, tmp_path / "m")
    assert {p.name for p in (tmp_path / "m").iterdir()} >= {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    }
    loaded = from_pretrained(tmp_path / "m")
    with torch.no_grad():
        a = tiny_model(tiny_model.build_inputs([s.prompt for s in samples], f3d, f2d)).logits
        b = loaded(loaded.build_inputs([s.prompt for s in samples], f3d, f2d)).logits
    assert torch.equal(a, b)


def test_shape_mismatch_names_the_first_key(tiny_model, tmp_path: Path) -> None:
    save_pretrained(tiny_model, tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    state = load_file(str(weights))
    state["object_proj.0.weight"] = torch.zeros(3, 3)
    save_file(state, str(weights))
    with pytest.raises(CheckpointError, match=r"shape mismatch for object_proj\.0\.weight"):
        from_pretrained(tmp_path / "m")
    del state["object_proj.0.weight"]
    save_file(state, str(weights))
    with pytest.raises(CheckpointError, match=r"missing keys: object_proj\.0\.weight"):
        from_pretrained(tmp_path / "m")


def test_not_a_model_directory(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"no config\.json"):
        from_pretrained(tmp_path)
