"""Train the sample model: a small Llama + Chat-Scene projections, on an unlimited stream of fresh scenes.

The recipe (``recipe.py``): a curriculum from 2-object scenes in short object lists to Chat-Scene's exact
100-slot layout, a scaffold initialisation of three heads (``scaffold.py``), and attention-supervision losses
whose targets are the world's evidence objects (``losses.py``). Reproducible: a batch is a pure function of
(seed, step), so a run killed at any point and resumed from its last checkpoint ends with the same weights.
Run it with ``fast3d sample train-model``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from fast3d_cli.data import DataConfig
from fast3d_cli.sample_model.preflight import load_world_spec, prepare_output
from fast3d_cli.sample_model.recipe import TrainSpec
from fast3d_cli.sample_world.generator import WorldSpec

Log = Callable[[str], None]
Progress = Callable[[str, int, int, str], None]  # (name, done, total, status)


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


def train_sample_model(
    out_dir: Path, data: DataConfig | None = None, spec: TrainSpec | None = None, *,
    overwrite: bool = False, progress: Progress | None = None, phase: Log | None = None,
) -> Path:  # fmt: skip
    """Train into ``out_dir``, resuming an interrupted run of the same recipe there; returns ``out_dir``.

    ``progress(name, done, total, status)`` is called after every step (status: losses, held-out probes);
    ``phase(message)`` when a slow phase starts. Both default to silence."""
    from fast3d_cli.sample_model.trainer import Trainer

    data = data or DataConfig()
    spec = spec or TrainSpec()
    world = load_world_spec(data)
    prepare_output(Path(out_dir), spec, overwrite)
    with flush_denormals():
        Trainer(Path(out_dir), data, spec, world, progress or _silent, phase or _silent).run()
    return Path(out_dir)


@contextmanager
def flush_denormals() -> Iterator[None]:
    """Denormals in the backward pass cost 5x on CPU: flush them while training, then restore the process's
    previous mode (other code, e.g. hypothesis, needs IEEE subnormals)."""
    import torch

    was_flushing = bool((torch.tensor(1e-40, dtype=torch.float32) * 1.0).item() == 0.0)
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(was_flushing)


def _silent(*_: Any) -> None:
    pass


def batch_rng(world: WorldSpec, spec: TrainSpec, step: int) -> np.random.Generator:
    """The generator of step ``step``'s batch: the batch depends on (world seed, stream seed, step) alone."""
    return np.random.default_rng([world.seed, spec.stream_seed, step])


def elapsed(start: float) -> float:
    return round(time.time() - start, 1)
