"""Loading an official Chat-Scene checkpoint: peft key layout, LoRA merge, strict shape checks (spec §1.6)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fast3d_cli.checkpoints import InertObject, load_checkpoint
from fast3d_cli.data import DataConfig, load_samples
from fast3d_cli.errors import CheckpointError, UserError
from fast3d_cli.models.chat_scene.official import load_official_checkpoint

HIDDEN, LAYERS, RANK, FEAT = 32, 2, 4, 64
PEFT = "llama_model.base_model.model."
ATTN, MLP = ("q_proj", "k_proj", "v_proj", "o_proj"), ("gate_proj", "up_proj", "down_proj")


class ChatSceneTrainConfig(dict):
    """Stands for Chat-Scene's EasyDict-like config, pickled inside every released checkpoint."""


@pytest.fixture(scope="module")
def base_llm(tmp_path_factory: pytest.TempPathFactory, data_config: DataConfig) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    from fast3d_cli.sample_model.tokenizer import build_tokenizer

    texts = [s.prompt for s in load_samples(data_config, "scanqa", "train")]
    texts += [
        "A chat between a curious user and an artificial intelligence assistant. USER ASSISTANT : [ ] ."
    ]
    tokenizer = build_tokenizer(texts)
    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=4,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    out = tmp_path_factory.mktemp("vicuna-tiny")
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _linear_shapes() -> dict[str, tuple[int, int]]:
    shapes = {}
    for i in range(LAYERS):
        for name in ATTN:
            shapes[f"model.layers.{i}.self_attn.{name}"] = (HIDDEN, HIDDEN)
        shapes[f"model.layers.{i}.mlp.gate_proj"] = (2 * HIDDEN, HIDDEN)
        shapes[f"model.layers.{i}.mlp.up_proj"] = (2 * HIDDEN, HIDDEN)
        shapes[f"model.layers.{i}.mlp.down_proj"] = (HIDDEN, 2 * HIDDEN)
    return shapes


def official_state(vocab: int) -> dict[str, torch.Tensor]:
    """A Chat3D state dict with exactly the released key layout (frozen base weights removed)."""
    g = torch.Generator().manual_seed(7)
    state = {}
    for module, (out_dim, in_dim) in _linear_shapes().items():
        state[f"{PEFT}{module}.lora_A.default.weight"] = torch.randn(RANK, in_dim, generator=g) * 0.1
        state[f"{PEFT}{module}.lora_B.default.weight"] = torch.randn(out_dim, RANK, generator=g) * 0.1
    state[f"{PEFT}model.embed_tokens.weight"] = torch.randn(vocab + 100, HIDDEN, generator=g)
    state[f"{PEFT}lm_head.weight"] = torch.randn(vocab + 100, HIDDEN, generator=g)
    for proj in ("object_proj", "object_img_proj"):
        state[f"{proj}.0.weight"] = torch.randn(HIDDEN, FEAT, generator=g) * 0.1
        state[f"{proj}.0.bias"] = torch.randn(HIDDEN, generator=g) * 0.1
        state[f"{proj}.2.weight"] = torch.randn(HIDDEN, HIDDEN, generator=g) * 0.1
        state[f"{proj}.2.bias"] = torch.randn(HIDDEN, generator=g) * 0.1
    state["pos_proj.0.weight"] = torch.randn(HIDDEN, 128, generator=g)
    state["pos_proj.0.bias"] = torch.randn(HIDDEN, generator=g)
    state["pos_embedding.gauss_B"] = torch.randn(3, 64, generator=g)
    return state


def save_official(path: Path, state: dict[str, torch.Tensor]) -> Path:
    config = ChatSceneTrainConfig(model={"llama_model_path": "vicuna-7b-v1.5"}, lora={"lora_r": RANK})
    torch.save({"model": state, "config": config, "epoch": 1, "global_step": 3446}, path)
    return path


def _base_vocab(base_llm: Path) -> int:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(base_llm).vocab_size


def test_loads_and_merges_lora_exactly(base_llm: Path, tmp_path: Path) -> None:
    from transformers import LlamaForCausalLM

    vocab = _base_vocab(base_llm)
    state = official_state(vocab)
    model = load_official_checkpoint(save_official(tmp_path / "ckpt_01_3446.pth", state), base_llm)

    reference = LlamaForCausalLM.from_pretrained(base_llm)
    reference.resize_token_embeddings(vocab + 100)
    with torch.no_grad():
        reference.model.embed_tokens.weight.copy_(state[f"{PEFT}model.embed_tokens.weight"])
        reference.lm_head.weight.copy_(state[f"{PEFT}lm_head.weight"])
        for module in _linear_shapes():
            layer = reference.get_submodule(module)
            a = state[f"{PEFT}{module}.lora_A.default.weight"]
            b = state[f"{PEFT}{module}.lora_B.default.weight"]
            layer.weight += b @ a  # alpha = r -> scaling 1.0
    ours = dict(model.llm.named_parameters())
    for name, param in reference.named_parameters():
        assert torch.allclose(ours[name], param, atol=1e-6), name
    assert torch.equal(model.object_proj[2].bias, state["object_proj.2.bias"])
    assert model.tokenizer.convert_tokens_to_ids("<OBJ000>") == vocab
    ids = torch.tensor([[1, 5, 9, vocab + 3, 7]])
    with torch.no_grad():
        assert torch.allclose(model.llm(ids).logits, reference(ids).logits, atol=1e-5)


def test_lora_alpha_sets_the_scaling(base_llm: Path, tmp_path: Path) -> None:
    vocab = _base_vocab(base_llm)
    state = official_state(vocab)
    path = save_official(tmp_path / "ckpt.pth", state)
    one = load_official_checkpoint(path, base_llm)
    two = load_official_checkpoint(path, base_llm, lora_alpha=2 * RANK)
    key = "model.layers.0.self_attn.q_proj"
    delta = state[f"{PEFT}{key}.lora_B.default.weight"] @ state[f"{PEFT}{key}.lora_A.default.weight"]
    diff = two.llm.get_submodule(key).weight - one.llm.get_submodule(key).weight
    assert torch.allclose(diff, delta, atol=1e-6)


def test_shape_mismatch_names_the_first_mismatching_key(base_llm: Path, tmp_path: Path) -> None:
    state = official_state(_base_vocab(base_llm))
    state["object_img_proj.2.weight"] = torch.zeros(HIDDEN, HIDDEN + 1)
    with pytest.raises(CheckpointError, match=r"shape mismatch for object_img_proj\.2\.weight"):
        load_official_checkpoint(save_official(tmp_path / "c.pth", state), base_llm)
    state = official_state(_base_vocab(base_llm))
    key = f"{PEFT}model.layers.1.mlp.up_proj.lora_B.default.weight"
    state[key] = torch.zeros(HIDDEN, RANK)
    with pytest.raises(CheckpointError, match=r"shape mismatch for llm\.model\.layers\.1\.mlp\.up_proj"):
        load_official_checkpoint(save_official(tmp_path / "c.pth", state), base_llm)


def test_missing_and_unexpected_keys_are_refused(base_llm: Path, tmp_path: Path) -> None:
    state = official_state(_base_vocab(base_llm))
    del state["object_proj.0.weight"]
    with pytest.raises(CheckpointError, match=r"missing keys: object_proj\.0\.weight"):
        load_official_checkpoint(save_official(tmp_path / "c.pth", state), base_llm)
    state = official_state(_base_vocab(base_llm))
    state["scene_proj.weight"] = torch.zeros(2)
    with pytest.raises(CheckpointError, match=r"unexpected keys: scene_proj\.weight"):
        load_official_checkpoint(save_official(tmp_path / "c.pth", state), base_llm)
    with pytest.raises(UserError, match="base LLM folder not found"):
        load_official_checkpoint(tmp_path / "c.pth", tmp_path / "nope")


def test_foreign_pickled_objects_become_inert(tmp_path: Path) -> None:
    import os

    class_path = tmp_path / "x.pth"
    torch.save({"model": {"w": torch.ones(1)}, "config": ChatSceneTrainConfig(a=1)}, class_path)
    loaded = load_checkpoint(class_path)
    assert isinstance(loaded["config"], InertObject) and loaded["config"]["a"] == 1
    # a pickled call of anything beyond torch's allow-list is refused, and nothing runs
    torch.save({"model": {"w": torch.ones(1)}, "call": Exploit()}, tmp_path / "call.pth")
    with pytest.raises(CheckpointError, match=r"calls tests\.test_official_checkpoint\.os_system.*--trust"):
        load_checkpoint(tmp_path / "call.pth")
    assert os.environ.get("FAST3D_PWNED") is None
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "bad.pth")


class Exploit:
    def __reduce__(self):
        return (os_system, ("touch pwned",))


def os_system(command: str) -> None:  # pragma: no cover - must never run
    import os

    os.environ["FAST3D_PWNED"] = command
