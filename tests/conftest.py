"""Shared fixtures: a small sample world and a tiny random Chat-Scene model built on it."""

from __future__ import annotations

import os

# Without an NVIDIA driver, Triton kernels run in the interpreter. The switch must be set before anything
# imports triton: importing transformers' Llama does, long before tests/test_kernels.py runs.
if not os.path.exists("/proc/driver/nvidia/version"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

from pathlib import Path

import pytest

from fast3d_cli.cli.app import run
from fast3d_cli.data import DataConfig
from fast3d_cli.sample_world import WorldSpec, generate_world

SMALL_WORLD = WorldSpec(n_train_scenes=4, n_val_scenes=3, val_samples_per_task=12, train_samples_per_task=40)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matmuls: one intra-op thread is ~100x faster than two on a shared 2-core box
    (modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world")
    generate_world(out, SMALL_WORLD)
    return out


@pytest.fixture(scope="session")
def data_config(world_dir: Path) -> DataConfig:
    return DataConfig(root=world_dir / "annotations")


def vocabulary_texts(samples, config) -> list[str]:
    """The texts a tiny model's tokenizer is built from: the prompt template, the sample world's words and
    the samples' prompts and captions (the sample model's trainer no longer exports its own helper)."""
    from fast3d_cli.sample_world.vocabulary import CLASSES, COLOURS, NUMBER_WORDS

    texts = [config.system_prompt, config.instruction.replace("<REPLACE>", " "), " ".join(config.roles)]
    texts += [" ".join(c.name for c in CLASSES), " ".join(c.plural for c in CLASSES), " ".join(COLOURS)]
    texts += [" ".join(NUMBER_WORDS), "yes no Yes No"]
    for s in samples:
        texts.append(s.prompt)
        if s.caption:
            texts.append(s.caption)
    return texts


def build_tiny_model(data: DataConfig, seed: int = 0, hidden: int = 32, layers: int = 2):
    import torch

    from fast3d_cli.data import SceneBank, load_samples
    from fast3d_cli.data.tasks import TASKS
    from fast3d_cli.models.chat_scene import ChatSceneConfig, ChatSceneModel
    from fast3d_cli.sample_model.tokenizer import build_tokenizer

    torch.manual_seed(seed)
    samples = [s for t in TASKS for split in ("train", "val") for s in load_samples(data, t, split)]
    d3, d2 = SceneBank(data, "train").feature_dims
    base = ChatSceneConfig(text_config={}, feat_dim_3d=d3, feat_dim_2d=d2)
    tokenizer = build_tokenizer(vocabulary_texts(samples, base), base.obj_tokens())
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    config = ChatSceneConfig(text_config=text_config, feat_dim_3d=d3, feat_dim_2d=d2)
    return ChatSceneModel(config, tokenizer).eval()


@pytest.fixture(scope="session")
def tiny_model(data_config: DataConfig):
    return build_tiny_model(data_config)


@pytest.fixture(scope="session")
def model_dir(tiny_model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model saved in our directory format, for CLI tests."""
    from fast3d_cli.models.chat_scene.io import save_pretrained

    out = tmp_path_factory.mktemp("model")
    save_pretrained(tiny_model, out)
    return out


def fast3d(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the CLI in-process: (exit code, stdout, stderr)."""
    code = run(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error_line(stderr: str) -> bool:
    """The run ended in exactly one ``fast3d: error:`` line, the last one (progress lines may precede it)."""
    lines = stderr.splitlines()
    return [line for line in lines if line.startswith("fast3d: error:")] == lines[-1:] and bool(lines)
