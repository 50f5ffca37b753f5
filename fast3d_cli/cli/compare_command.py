"""``fast3d compare``: pruning methods at matched average pruning, one leaderboard (docs/compare.md)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from fast3d_cli.cli.common import (
    BaseLLMOption,
    CheckpointOption,
    ConfigOption,
    DataRootOption,
    DeviceOption,
    DtypeOption,
    JsonOption,
    LoraAlphaOption,
    ModelOption,
    TrustCheckpointOption,
    check_choice,
    check_device,
    check_output_location,
    data_config,
    emit,
    model_source,
    store_argument,
)


def compare_command(
    output: Annotated[Path, typer.Option("--output", "-o", help="Compare folder (leaderboard and runs).")],
    methods: Annotated[
        str,
        typer.Option(
            "--methods", "-m", help="Comma-separated pruning methods, e.g. random,fastv,divprune,gap,gap+sap."
        ),
    ],
    ratios: Annotated[
        str,
        typer.Option(
            "--ratios", help="Layer-averaged pruning ratios in percent for the fixed-budget methods."
        ),
    ] = "35,65,90",
    adaptive_target: Annotated[
        float,
        typer.Option(
            "--adaptive-target", help="Average pruning in percent the adaptive methods (SAP) are matched to."
        ),
    ] = 90.0,
    maps: Annotated[
        list[str] | None,
        typer.Option(
            "--maps",
            help="A maps store for the methods that read one (repeatable): an attention store (fast3d "
            "extract) for oracle*, a prediction store (fast3d predict) for gap*; routed by its kind.",
        ),
    ] = None,
    gap: Annotated[
        Path | None,
        typer.Option("--gap", help="GAP directory, run online by the gap methods without a store."),
    ] = None,
    layer: Annotated[
        int,
        typer.Option(
            "--layer", "-k", help="Prune before this layer (a method's own minimum wins, FastV: 1)."
        ),
    ] = 0,
    tasks: Annotated[str, typer.Option("--tasks", "-t", help="Comma-separated tasks, or 'all'.")] = "all",
    split: Annotated[str, typer.Option("--split", help="Annotation split to evaluate.")] = "val",
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N samples of each task.")] = None,
    bootstrap: Annotated[
        int,
        typer.Option(min=0, help="Resamples of the score ratios' paired-bootstrap 95% intervals; 0: none."),
    ] = 1000,
    bootstrap_seed: Annotated[int, typer.Option(min=0, help="Seed of the --bootstrap resamples.")] = 0,
    model: ModelOption = None,
    checkpoint: CheckpointOption = None,
    base_llm: BaseLLMOption = None,
    lora_alpha: LoraAlphaOption = None,
    trust_checkpoint: TrustCheckpointOption = False,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1)] = 16,
    num_beams: Annotated[int, typer.Option(min=1)] = 5,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 64,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    overwrite: Annotated[
        bool, typer.Option(help="Redo every row of a compare folder made with other settings.")
    ] = False,
    config: ConfigOption = None,
    data_root: DataRootOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run pruning methods at matched average pruning on the same samples and write one leaderboard.

    Fixed-budget methods run at each --ratios value, adaptive ones (SAP) at --adaptive-target; every row is a
    normal eval folder under OUTPUT/runs/, compared with one dense run. A rerun keeps finished rows.

    Example: [bold]fast3d compare -o cmp/ -m random,fastv,divprune,gap,gap+sap --maps pred.zarr[/bold]
    """
    from fast3d_cli.cli.progress import ProgressReporter
    from fast3d_cli.cli.tables import print_leaderboard
    from fast3d_cli.data.tasks import parse_splits, parse_tasks
    from fast3d_cli.evaluation.confidence import BootstrapSettings
    from fast3d_cli.evaluation.leaderboard import CompareSettings, TargetModel, run_compare
    from fast3d_cli.evaluation.matching import MatchInputs, parse_methods, parse_ratios
    from fast3d_cli.evaluation.runner import EvalSettings, data_files
    from fast3d_cli.generation.config import GenerationConfig
    from fast3d_cli.models.loading import DTYPES

    # every option is checked here, before anything imports torch or transformers
    names = parse_methods(methods)
    targets = parse_ratios(ratios)
    (adaptive,) = parse_ratios(str(adaptive_target), "--adaptive-target")
    task_names = parse_tasks(tasks)
    (split_name,) = parse_splits(split)
    check_device(device)
    check_choice("--dtype", dtype, DTYPES)
    data = data_config(config, data_root)
    evaluation = EvalSettings(
        tasks=tuple(task_names),
        split=split_name,
        batch_size=batch_size,
        limit=limit,
        generation=GenerationConfig(num_beams=num_beams, max_new_tokens=max_new_tokens),
    )
    inputs = MatchInputs(stores_by_kind(maps or []), gap, split_name, tuple(task_names), limit, data)
    settings = CompareSettings(
        names, evaluation, targets, adaptive, layer, inputs, BootstrapSettings(bootstrap, bootstrap_seed)
    )
    source = model_source(model, checkpoint, base_llm, lora_alpha, trust_checkpoint)
    output = check_output_location(output)
    data_files(data, evaluation.tasks, evaluation.split)
    n_layers, n_objects = source.shape()

    with ProgressReporter("compare") as progress:

        def load():
            progress.phase(f"loading the target model ({source.describe()})")
            return source.load(device=device, dtype=dtype)

        board = run_compare(
            output,
            settings,
            data,
            TargetModel(load, source.fingerprint(), n_layers, n_objects),
            overwrite=overwrite,
            progress=progress.update,
            phase=progress.phase,
        )
    print_leaderboard(board, file=sys.stderr)
    emit(output, board, as_json)


def stores_by_kind(values: list[str]) -> dict[str, object]:
    """The --maps stores by kind (attention, prediction); two of one kind are refused."""
    from fast3d_cli.errors import UserError
    from fast3d_cli.stores import open_store

    found: dict[str, object] = {}
    for value in values:
        location = store_argument(value, "--maps")
        kind = open_store(location).kind
        if kind in found:
            raise UserError(
                f"--maps: two {kind} stores ({found[kind]} and {location}); give one of each kind"
            )
        found[kind] = location
    return found
