"""``fast3d sample ...``: rebuild the embedded sample world and retrain the tiny sample model."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from fast3d_cli.cli.common import check_output_location, emit
from fast3d_cli.cli.errors import RecordingCommand
from fast3d_cli.data.config import DataConfig, sample_data_dir

app = typer.Typer(help="Rebuild the embedded sample world and its tiny trained model.", no_args_is_help=True)


@app.command("build-world", cls=RecordingCommand)
def build_world(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Folder (default: sample_data/).")
    ] = None,
    seed: Annotated[
        int,
        typer.Option(min=0, help="World seed: feature prototypes (and, without --scene-seed, scenes)."),
    ] = 0,
    scene_seed: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Draw other scenes and questions but keep --seed's feature prototypes, so the committed "
            "model (seed 0) can read the world."
        ),
    ] = None,
    objects: Annotated[
        str | None,
        typer.Option(help="Objects per scene, MIN-MAX or N (2 to 100; default 8-40)."),
    ] = None,
) -> None:
    """Write the synthetic ScanNet-like world in the Chat-Scene formats (deterministic).

    Example: [bold]fast3d sample build-world -o /tmp/world[/bold]
    A fresh test world for the committed model: [bold]fast3d sample build-world -o /tmp/w2 --scene-seed 7
    --objects 20-60[/bold]
    """
    from fast3d_cli.sample_world import WorldSpec, generate_world
    from fast3d_cli.sample_world.generator import parse_object_range

    spec = WorldSpec(seed=seed, scene_seed=scene_seed)
    if objects is not None:
        low, high = parse_object_range(objects, spec.max_proposals)
        spec = replace(spec, min_objects=low, max_objects=high)
    out = check_output_location(output or sample_data_dir())
    generate_world(out, spec)
    emit(out, None, as_json=False)


@app.command("train-model", cls=RecordingCommand)
def train_model(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Model directory (default: sample_data/model).")
    ] = None,
    data_root: Annotated[
        Path | None, typer.Option("--data-root", help="Annotation folder of a sample world.")
    ] = None,
    recipe: Annotated[
        Path | None,
        typer.Option(
            "--recipe",
            help="Recipe JSON: a TrainSpec, or a training.json to repeat that run (default: built in).",
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Training seed (default: the recipe's).")] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            min=1, help="CPU threads (default: torch's; 1 is faster when other jobs share the cores)."
        ),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Replace a model, or discard an interrupted run of another recipe, in --output.",
        ),
    ] = False,
) -> None:
    """Train the tiny Chat-Scene-architecture sample model on a stream of fresh sample-world scenes.

    Rerun the same command after an interruption (even kill -9) to resume from the last checkpoint.

    Example: [bold]fast3d sample train-model -o /tmp/model[/bold]
    """
    from fast3d_cli.sample_model.preflight import load_world_spec, prepare_output
    from fast3d_cli.sample_model.recipe import TrainSpec

    data = DataConfig().with_overrides(root=data_root)
    spec = TrainSpec.load(recipe) if recipe is not None else TrainSpec()
    spec = spec if seed is None else replace(spec, seed=seed)
    out = check_output_location(output or sample_data_dir() / "model")
    load_world_spec(data)  # these refuse before torch is imported
    prepare_output(out, spec, overwrite)
    from fast3d_cli.cli.progress import ProgressReporter

    with ProgressReporter("sample train-model", unit="steps") as progress:
        progress.phase("loading torch and transformers")
        import torch

        if threads is not None:
            torch.set_num_threads(threads)
        from fast3d_cli.sample_model.train import train_sample_model

        train_sample_model(
            out, data, spec, overwrite=overwrite, progress=progress.update, phase=progress.phase
        )
    emit(out, None, as_json=False)
