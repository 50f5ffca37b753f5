"""``fast3d sample ...``: rebuild the embedded sample world and retrain the tiny sample model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fast3d_cli.cli.common import check_output_location, emit
from fast3d_cli.cli.errors import RecordingCommand
from fast3d_cli.data.config import sample_data_dir

app = typer.Typer(help="Rebuild the embedded sample world and its tiny trained model.", no_args_is_help=True)


@app.command("build-world", cls=RecordingCommand)
def build_world(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Folder (default: sample_data/).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Generator seed.")] = 0,
) -> None:
    """Write the synthetic ScanNet-like world in the Chat-Scene formats (deterministic).

    Example: [bold]fast3d sample build-world -o /tmp/world[/bold]
    """
    from fast3d_cli.sample_world import WorldSpec, generate_world

    out = check_output_location(output or sample_data_dir())
    generate_world(out, WorldSpec(seed=seed))
    emit(out, None, as_json=False)


@app.command("train-model", cls=RecordingCommand)
def train_model(
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Model directory.")] = None,
    data_root: Annotated[Path | None, typer.Option("--data-root", help="Annotation folder.")] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="Optimizer steps (default: the recipe's).")] = None,
    seed: Annotated[int, typer.Option(help="Training seed.")] = 0,
) -> None:
    """Train the tiny Chat-Scene-architecture model on the sample train split.

    Example: [bold]fast3d sample train-model -o /tmp/model[/bold]
    """
    from fast3d_cli.data import DataConfig
    from fast3d_cli.sample_model.train import TrainSpec, train_sample_model

    data = DataConfig().with_overrides(root=data_root)
    out = check_output_location(output or sample_data_dir() / "model")
    spec = TrainSpec(seed=seed) if steps is None else TrainSpec(steps=steps, seed=seed)
    train_sample_model(out, data, spec)
    emit(out, None, as_json=False)
