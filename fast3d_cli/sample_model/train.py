"""Train the sample model: a small Llama + Chat-Scene projections, on an unlimited stream of fresh scenes.

The recipe (``recipe.py``): a curriculum from 2-object scenes in short object lists to Chat-Scene's exact
100-slot layout, a scaffold initialisation of three heads (``scaffold.py``), and attention-supervision losses
whose targets are the world's evidence objects (``losses.py``). Reproducible: a batch is a pure function of
(seed, step), so a run killed at any point and resumed from its last checkpoint ends with the same weights.
Run it with ``fast3d sample train-model``.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fast3d_cli.data import DataConfig
from fast3d_cli.errors import UserError
from fast3d_cli.sample_model.recipe import TrainSpec
from fast3d_cli.sample_world.generator import GENERATOR_VERSION, WorldSpec

Log = Callable[[str], None]
CHECKPOINT_DIR = "checkpoint"


def load_world_spec(data: DataConfig) -> WorldSpec:
    """The committed world's spec (``world.json`` beside the annotations); another generator version is
    refused: the stream would not match the world the model is evaluated on."""
    path = Path(data.root).parent / "world.json"
    if not path.is_file():
        raise UserError(f"no world.json beside {data.root}: train-model needs a sample world (fast3d sample build-world)")
    try:
        world = json.loads(path.read_text())
        version, spec = world["generator_version"], world["spec"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"cannot read {path}: {err}") from None
    if version != GENERATOR_VERSION:
        raise UserError(
            f"{path} was written by sample-world generator version {version}; this fast3d trains on version "
            f"{GENERATOR_VERSION} (rebuild it with fast3d sample build-world)"
        )
    return WorldSpec(**spec)


def _lr_factor(spec: TrainSpec) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < spec.warmup_steps:
            return (step + 1) / spec.warmup_steps
        progress = (step - spec.warmup_steps) / max(1, spec.steps - spec.warmup_steps)
        return spec.min_lr_ratio + (1 - spec.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def build_model(spec: TrainSpec, tokenizer: Any, feat_dims: tuple[int, int]) -> Any:
    from fast3d_cli.models.chat_scene import ChatSceneConfig, ChatSceneModel

    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_heads,
        "max_position_embeddings": 1024,
        "rms_norm_eps": 1e-5,
        "rope_theta": spec.rope_theta,
        "tie_word_embeddings": True,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    config = ChatSceneConfig(text_config=text_config, feat_dim_3d=feat_dims[0], feat_dim_2d=feat_dims[1])
    return ChatSceneModel(config, tokenizer)


MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "training.json")


def prepare_output(out_dir: Path, spec: TrainSpec, overwrite: bool) -> bool:
    """Check ``out_dir`` before training; True when it holds an interrupted run of this recipe to resume.

    A folder that holds a finished model, an interrupted run of another recipe, or anything else is refused
    (``UserError``) unless ``overwrite``; then the interrupted run is discarded (a finished model is only
    replaced when the new one is saved).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir} exists and is not a folder")
    state_path = out_dir / CHECKPOINT_DIR / "state.json"
    if state_path.is_file():
        if _checkpoint_spec(state_path) == json.loads(json.dumps(spec.to_dict())):
            return True
        if not overwrite:
            raise UserError(
                f"{out_dir} holds an interrupted training run with another recipe; pass --overwrite to discard it"
            )
        shutil.rmtree(out_dir / CHECKPOINT_DIR)
        return False
    if (out_dir / "config.json").is_file() and not overwrite:
        raise UserError(f"{out_dir} already holds a model; pass --overwrite to replace it")
    foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in {*MODEL_FILES, CHECKPOINT_DIR}) if out_dir.is_dir() else []
    if foreign and not overwrite:
        raise UserError(f"{out_dir} is not empty ({', '.join(foreign[:3])}); choose an empty folder or pass --overwrite")
    return False


def _checkpoint_spec(state_path: Path) -> Any:
    try:
        return json.loads(state_path.read_text())["spec"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def train_sample_model(
    out_dir: Path, data: DataConfig | None = None, spec: TrainSpec | None = None, log: Log | None = None,
    overwrite: bool = False,
) -> Path:  # fmt: skip
    """Train into ``out_dir``, resuming an interrupted run of the same recipe there; returns ``out_dir``."""
    from fast3d_cli.sample_model.trainer import Trainer

    data = data or DataConfig()
    spec = spec or TrainSpec()
    world = load_world_spec(data)
    prepare_output(Path(out_dir), spec, overwrite)
    Trainer(Path(out_dir), data, spec, world, log or _stderr).run()
    return Path(out_dir)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def batch_rng(world: WorldSpec, spec: TrainSpec, step: int) -> np.random.Generator:
    """The generator of step ``step``'s batch: the batch depends on (world seed, stream seed, step) alone."""
    return np.random.default_rng([world.seed, spec.stream_seed, step])


def elapsed(start: float) -> float:
    return round(time.time() - start, 1)
