"""GAP checkpoints (our directory format, official ``checkpoint_best.pth``), sample config, batch builder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fast3d_cli.errors import CheckpointError, UserError
from fast3d_cli.gap import GAPConfig, GAPModel, load_gap, load_official_gap_checkpoint, save_gap
from tests.test_gap_model import TEXT, _inputs, official_state_dict, tiny_config

WORDS = "the red chair is near a table what color lamp left of sofa how many <OBJ000> <OBJ001> ."


@pytest.fixture(scope="module")
def tokenizer():
    from fast3d_cli.sample_model.tokenizer import build_tokenizer

    tok = build_tokenizer([WORDS], obj_tokens=[f"<OBJ{i:03}>" for i in range(3)])
    assert len(tok) <= TEXT["vocab_size"]
    return tok


@pytest.fixture()
def roberta_dir(tmp_path: Path, tokenizer) -> Path:
    """A local 'RoBERTa folder': its config.json and tokenizer files, as official ``roberta_path``."""
    from transformers import RobertaConfig

    out = tmp_path / "roberta"
    RobertaConfig(**TEXT).save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


def _logits(model: GAPModel, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(*inputs)


def test_save_load_roundtrip(tmp_path: Path, tokenizer):
    from fast3d_cli.gap.sample import sample_gap_config

    config = sample_gap_config(tokenizer, feat_dim_3d=8, feat_dim_2d=8)
    torch.manual_seed(0)
    model = GAPModel(config).eval()
    f3, f2, locs, _, _ = _inputs()
    enc = tokenizer(
        ["what color is the chair", "the lamp left of <OBJ001> ."], padding=True, return_tensors="pt"
    )
    inputs = (f3, f2, locs, enc["input_ids"], enc["attention_mask"])
    out = save_gap(model, tokenizer, tmp_path / "gap")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    assert not list(out.glob("*.partial"))
    assert json.loads((out / "config.json").read_text())["model_type"] == "fast3d_gap"
    loaded, tok2 = load_gap(out)
    assert loaded.config == config
    assert not loaded.training
    assert torch.equal(_logits(loaded, inputs), _logits(model, inputs))
    assert (
        tok2("the lamp left of <OBJ001> .")["input_ids"]
        == tokenizer("the lamp left of <OBJ001> .")["input_ids"]
    )
    assert tok2.pad_token_id == tokenizer.pad_token_id


def test_load_gap_refuses_bad_directories(tmp_path: Path, tokenizer):
    with pytest.raises(UserError, match=r"no config\.json"):
        load_gap(tmp_path)
    model = GAPModel(tiny_config())
    out = save_gap(model, tokenizer, tmp_path / "gap")
    # a config that no longer matches the weights: the error names the keys
    data = json.loads((out / "config.json").read_text())
    data["num_layers"] = 3
    (out / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"missing keys: mm_encoder\.layers\.2\."):
        load_gap(out)


def _save_official(path: Path, state: dict) -> Path:
    torch.save({"step": 3, "optimizer_state_dict": {}, "model_state_dict": state}, path)
    return path


def test_official_checkpoint_loads_and_gives_the_same_logits(tmp_path: Path, roberta_dir: Path):
    config = tiny_config()
    state = official_state_dict(config, seed=5)
    path = _save_official(tmp_path / "checkpoint_best.pth", state)
    model, tok = load_official_gap_checkpoint(path, roberta_dir, config=config)
    assert not model.training
    reference = GAPModel(config)
    reference.load_state_dict(state, strict=True)
    inputs = _inputs()
    assert torch.equal(_logits(model, inputs), _logits(reference, inputs))
    assert tok("the red chair")["input_ids"] == [
        tok.convert_tokens_to_ids(t) for t in ("▁the", "▁red", "▁chair")
    ]
    # transformers < 4.31 also saved RoBERTa's constant position_ids buffer: tolerated
    legacy = dict(state)
    legacy["text_encoder.embeddings.position_ids"] = torch.arange(TEXT["max_position_embeddings"])[None]
    model, _ = load_official_gap_checkpoint(
        _save_official(tmp_path / "legacy.pth", legacy), roberta_dir, config
    )
    assert torch.equal(_logits(model, inputs), _logits(reference, inputs))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("missing", r"1 missing key: out_head_attn\.4\.bias"),
        ("unexpected", r"1 unexpected key: mm_encoder\.layers\.0\.self_attn\.pairwise_loc_fc\.weight"),
        (
            "shape",
            r"1 shape mismatch: obj_id_embedding\.weight \(checkpoint \(99, 32\) vs model \(100, 32\)\)",
        ),
    ],
)
def test_official_checkpoint_mismatches_are_named(
    tmp_path: Path, roberta_dir: Path, change: str, message: str
):
    config = tiny_config()
    state = official_state_dict(config)
    if change == "missing":
        del state["out_head_attn.4.bias"]
    elif change == "unexpected":
        state["mm_encoder.layers.0.self_attn.pairwise_loc_fc.weight"] = torch.zeros(2, 5)
    else:
        state["obj_id_embedding.weight"] = torch.zeros(99, 32)
    path = _save_official(tmp_path / "bad.pth", state)
    with pytest.raises(CheckpointError, match=message):
        load_official_gap_checkpoint(path, roberta_dir, config=config)


def test_official_checkpoint_with_default_config_and_bad_files(tmp_path: Path, roberta_dir: Path):
    # config=None: the official architecture (hidden 768, 4 layers) around the RoBERTa of roberta_dir
    path = _save_official(tmp_path / "tiny.pth", official_state_dict(tiny_config()))
    with pytest.raises(CheckpointError, match=r"missing keys: mm_encoder\.layers\.2\..*shape mismatch"):
        load_official_gap_checkpoint(path, roberta_dir)
    torch.save({"step": 1}, tmp_path / "empty.pth")
    with pytest.raises(CheckpointError, match="no model_state_dict"):
        load_official_gap_checkpoint(tmp_path / "empty.pth", roberta_dir)
    with pytest.raises(CheckpointError, match="not found"):
        load_official_gap_checkpoint(tmp_path / "absent.pth", roberta_dir)


def test_sample_config_and_batch_builder(data_config, tokenizer):
    from fast3d_cli.data import SceneBank, load_samples
    from fast3d_cli.gap.inputs import build_batch
    from fast3d_cli.gap.sample import sample_gap_config
    from fast3d_cli.models.chat_scene import ChatSceneConfig
    from fast3d_cli.sample_model.tokenizer import build_tokenizer

    from .conftest import vocabulary_texts

    bank = SceneBank(data_config, "val")
    samples = (
        load_samples(data_config, "scanrefer", "val")[:2] + load_samples(data_config, "scanqa", "val")[:1]
    )
    d3, d2 = bank.feature_dims
    base = ChatSceneConfig(text_config={}, feat_dim_3d=d3, feat_dim_2d=d2)
    tok = build_tokenizer(vocabulary_texts(samples, base), base.obj_tokens())
    config = sample_gap_config(tok, feat_dim_3d=d3, feat_dim_2d=d2)
    assert config.text_config["vocab_size"] == len(tok)
    assert config.text_config["pad_token_id"] == tok.pad_token_id
    assert config.text_capacity == 128
    GAPConfig.from_dict(json.loads(json.dumps(config.to_dict())))  # JSON-serialisable

    batch = build_batch(samples, bank, tok, config)
    assert batch.feats_3d.shape == (3, 100, d3) and batch.feats_2d.shape == (3, 100, d2)
    assert batch.feats_3d.dtype == torch.float32
    assert torch.equal(batch.feats_3d[0], bank.object_features(samples[0].scene_id)[0])
    for row, s in enumerate(samples):
        locs = torch.as_tensor(bank.proposal_locs(s.scene_id), dtype=torch.float32)
        n = min(len(locs), 100)
        assert torch.equal(batch.locs[row, :n], locs[:n])
        assert not batch.locs[row, n:].any()
        ids = tok(s.prompt)["input_ids"]
        assert batch.input_ids[row, : len(ids)].tolist() == ids
        assert batch.attention_mask[row].tolist() == [1] * len(ids) + [0] * (
            batch.input_ids.shape[1] - len(ids)
        )
    assert batch.attention_mask[:, 0].all()  # right padding: the first token is always real

    model = GAPModel(config).eval()
    with torch.no_grad():
        logits = model(**batch.model_inputs())
    assert logits.shape == (3, 100) and torch.isfinite(logits).all()
    with pytest.raises(ValueError, match="scene bank"):
        build_batch(load_samples(data_config, "scanqa", "train")[:1], bank, tok, config)
