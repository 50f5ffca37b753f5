"""``fast3d extract``: target model -> attention-map store."""

from __future__ import annotations

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
    command_line,
    data_config,
    emit,
    model_source,
    store_output,
)
from fast3d_cli.cli.family_options import ModelFamilyOption, QAFileOption, family_handler


def extract_command(
    tasks: Annotated[str, typer.Option("--tasks", "-t", help="Comma-separated tasks, or 'all'.")] = "all",
    split: Annotated[str, typer.Option("--split", help="Comma-separated splits.")] = "train,val",
    output: Annotated[
        str, typer.Option("--output", "-o", help="Store to create or complete: a path or URL (s3://...).")
    ] = "maps.zarr",
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1)] = 8,
    chunk_size: Annotated[int, typer.Option("--chunk-size", min=1, help="Samples per store chunk.")] = 64,
    seed: Annotated[int, typer.Option(help="Seed of the teacher-caption choice on val.")] = 42,
    keep_layers: Annotated[bool, typer.Option(help="Also store per-layer and per-token scores.")] = False,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Only the first N samples of each task and split.")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace a store made with another model, data or settings.")
    ] = False,
    model: ModelOption = None,
    checkpoint: CheckpointOption = None,
    base_llm: BaseLLMOption = None,
    lora_alpha: LoraAlphaOption = None,
    trust_checkpoint: TrustCheckpointOption = False,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    config: ConfigOption = None,
    data_root: DataRootOption = None,
    as_json: JsonOption = False,
    model_family: ModelFamilyOption = "chatscene",
    qa_file: QAFileOption = None,
) -> None:
    """Extract the target model's global attention maps into a resumable zarr store.

    Example: [bold]fast3d extract --tasks scanqa,scanrefer --split train,val -o maps.zarr[/bold]
    Several processes: [bold]accelerate launch --num_processes 4 -m fast3d_cli extract ...[/bold]
    """
    options = dict(locals())  # every parsed option, for another family's handler
    handler = family_handler("extract", options)  # checks --model-family and --method before torch loads
    if handler is not None:
        return handler(options)
    from fast3d_cli.attention.extract import ExtractSettings
    from fast3d_cli.cli.progress import ProgressReporter
    from fast3d_cli.data.tasks import parse_splits, parse_tasks
    from fast3d_cli.models.loading import DTYPES

    # every option is checked here, before anything imports torch or transformers
    settings = ExtractSettings(
        tasks=tuple(parse_tasks(tasks)),
        splits=tuple(parse_splits(split)),
        batch_size=batch_size,
        chunk_size=chunk_size,
        seed=seed,
        keep_layers=keep_layers,
        limit=limit,
    )
    check_device(device)
    check_choice("--dtype", dtype, DTYPES)
    output = store_output(output)
    data = data_config(config, data_root)
    source = model_source(model, checkpoint, base_llm, lora_alpha, trust_checkpoint)

    from fast3d_cli.attention.extract import extract
    from fast3d_cli.launch import distributed_context

    with (
        distributed_context(device) as dist,
        ProgressReporter("extract", enabled=dist.is_main) as progress,
    ):
        progress.phase(f"loading the target model ({source.describe()})")
        fingerprint = source.fingerprint()
        target = source.load(device=dist.device, dtype=dtype)
        result = extract(
            target,
            fingerprint,
            data,
            settings,
            output,
            command=command_line(),
            overwrite=overwrite,
            dist=dist,
            progress=progress.update,
            phase=progress.phase,
        )
    if dist.is_main:
        emit(output, result, as_json)
