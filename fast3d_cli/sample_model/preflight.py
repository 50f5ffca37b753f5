"""Checks before training the sample model, free of torch so the CLI runs them before loading it: the
sample world's generator version, and what the output folder already holds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from fast3d_cli.data import DataConfig
from fast3d_cli.errors import UserError
from fast3d_cli.sample_model.recipe import TrainSpec
from fast3d_cli.sample_world.generator import GENERATOR_VERSION, WorldSpec

CHECKPOINT_DIR = "checkpoint"


def load_world_spec(data: DataConfig) -> WorldSpec:
    """The committed world's spec (``world.json`` beside the annotations); another generator version is
    refused: the stream would not match the world the model is evaluated on."""
    path = Path(data.root).parent / "world.json"
    if not path.is_file():
        raise UserError(
            f"no world.json beside {data.root}: train-model needs a sample world (fast3d sample build-world)"
        )
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
                f"{out_dir} holds an interrupted training run with another recipe; "
                "pass --overwrite to discard it"
            )
        shutil.rmtree(out_dir / CHECKPOINT_DIR)
        return False
    if (out_dir / "config.json").is_file() and not overwrite:
        raise UserError(f"{out_dir} already holds a model; pass --overwrite to replace it")
    foreign = (
        sorted(p.name for p in out_dir.iterdir() if p.name not in {*MODEL_FILES, CHECKPOINT_DIR})
        if out_dir.is_dir()
        else []
    )
    if foreign and not overwrite:
        raise UserError(
            f"{out_dir} is not empty ({', '.join(foreign[:3])}); choose an empty folder or pass --overwrite"
        )
    return False


def _checkpoint_spec(state_path: Path) -> Any:
    try:
        return json.loads(state_path.read_text())["spec"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
