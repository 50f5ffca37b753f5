"""``fast3d train-gap`` (attention stores -> GAP network) and ``fast3d predict`` (GAP -> prediction store)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fast3d_cli.cli.common import (
    ConfigOption,
    DataRootOption,
    DeviceOption,
    JsonOption,
    TrustCheckpointOption,
    check_device,
    check_output_location,
    command_line,
    data_config,
    emit,
    path_or_stdin,
    store_argument,
    store_output,
)
from fast3d_cli.errors import UserError


def train_gap_command(
    stores: Annotated[
        list[str],
        typer.Argument(
            help="Attention stores from fast3d extract (train maps; val maps optional), paths or URLs; '-' "
            "reads one from stdin."
        ),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="GAP directory to create or resume.")] = Path(
        "gap"
    ),
    tasks: Annotated[
        str | None, typer.Option("--tasks", "-t", help="Comma-separated tasks (default: all in the stores).")
    ] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs (official: 50).")] = 5,
    batch_size: Annotated[
        int, typer.Option("--batch-size", "-b", min=1, help="Samples per step and process (official: 64).")
    ] = 32,
    lr: Annotated[float, typer.Option("--lr", min=0.0, help="Learning rate (official 8e-4).")] = 8e-4,
    text_lr: Annotated[
        float | None,
        typer.Option(
            "--text-lr",
            min=0.0,
            help="Text-encoder lr (default: --lr from scratch, --lr/10 with --text-encoder).",
        ),
    ] = None,
    warmup_epochs: Annotated[
        float, typer.Option("--warmup-epochs", min=0.0, help="Linear warmup length in epochs (official 0.1).")
    ] = 0.5,
    seed: Annotated[int, typer.Option(help="Seed of init, dropout, data order and holdout.")] = 42,
    holdout: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of train samples held out for model selection.")
    ] = 0.1,
    select_on: Annotated[
        str,
        typer.Option("--select-on", help="Model selection on 'holdout' (train split) or 'val' (official)."),
    ] = "holdout",
    select_metric: Annotated[
        str,
        typer.Option(
            "--select-metric", help="kd_loss (min), or topk_{5,10,20}_f1_score / topk_{5,10,20}_mass (max)."
        ),
    ] = "kd_loss",
    val: Annotated[
        bool | None,
        typer.Option(
            "--val/--no-val", help="Also evaluate on val every epoch (default: when the stores have it)."
        ),
    ] = None,
    target: Annotated[
        str | None,
        typer.Option(
            help="object_scores (a_map, official), prompt_scores (a_map_ori) or debiased_object_scores "
            "(layers >= 2; needs extract --keep-layers). Default: the --predictor's.",
        ),
    ] = None,
    predictor: Annotated[
        str,
        typer.Option(
            "--predictor",
            help="gap (Fast3D) or efficient3d (Efficient3D's DVTIE: DHCT network, debiased target); "
            "docs/methods-before-llm.md.",
        ),
    ] = "gap",
    checkpoint_every: Annotated[
        int, typer.Option("--checkpoint-every", min=0, help="Checkpoint every N steps (and every epoch end).")
    ] = 200,
    eval_batch_size: Annotated[int, typer.Option("--eval-batch-size", min=1)] = 64,
    text_encoder: Annotated[
        Path | None,
        typer.Option("--text-encoder", help="Local RoBERTa folder to start from (official: roberta-base)."),
    ] = None,
    tokenizer: Annotated[
        Path | None,
        typer.Option(
            "--tokenizer",
            help="Tokenizer folder for a text encoder trained from scratch (default: the target model's).",
        ),
    ] = None,
    gap_config: Annotated[
        Path | None,
        typer.Option("--gap-config", help="JSON object of GAP config fields overriding the defaults."),
    ] = None,
    init_from_target: Annotated[
        bool,
        typer.Option(
            "--init-from-target",
            help="Start the word embeddings and object projector from the target model (the tokenizer's "
            "folder): the stand-in for a pretrained text encoder when training from scratch.",
        ),
    ] = False,
    mixed_precision: Annotated[
        str, typer.Option("--mixed-precision", help="auto (bf16 on CUDA), no, bf16.")
    ] = "auto",
    limit: Annotated[
        int | None,
        typer.Option(min=1, help="Only the first N samples of each task and split in the stores."),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace a training run made with other stores, data or settings.")
    ] = False,
    device: DeviceOption = "auto",
    config: ConfigOption = None,
    data_root: DataRootOption = None,
    as_json: JsonOption = False,
) -> None:
    """Train the GAP network on a target model's attention maps (resumable; selection on a train holdout).

    Example: [bold]fast3d train-gap maps.zarr -o gap/[/bold]
    Several processes: [bold]accelerate launch --num_processes 4 -m fast3d_cli train-gap maps.zarr[/bold]
    """
    from fast3d_cli.data.tasks import parse_tasks
    from fast3d_cli.gap.predictors import get_predictor
    from fast3d_cli.gap.sources import read_config_overrides
    from fast3d_cli.gap.training import TrainSettings

    spec = get_predictor(predictor)

    # every option is checked here, before anything imports torch or transformers
    settings = TrainSettings(
        tasks=tuple(parse_tasks(tasks)) if tasks else None,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        text_lr=text_lr,
        warmup_epochs=warmup_epochs,
        seed=seed,
        holdout=holdout,
        select_on=select_on,
        select_metric=select_metric,
        evaluate_val=val,
        target=target or spec.target,
        mixed_precision=mixed_precision,
        eval_batch_size=eval_batch_size,
        limit=limit,
        init_from_target=init_from_target,
    )
    check_device(device)
    check_output_location(output)
    for folder, option in ((text_encoder, "--text-encoder"), (tokenizer, "--tokenizer")):
        if folder is not None and not folder.is_dir():
            raise UserError(f"{option} folder not found: {folder}")
    locations = [store_argument(store, "STORE") for store in stores]
    data = data_config(config, data_root)
    overrides = {**spec.config, **read_config_overrides(gap_config)}

    from fast3d_cli.cli.progress import ProgressReporter, training_progress
    from fast3d_cli.gap.training import train_gap
    from fast3d_cli.launch import is_main_process

    main = is_main_process()  # under accelerate launch, only rank 0 reports and prints
    with ProgressReporter("train-gap", unit="steps", enabled=main) as progress:
        result = train_gap(
            locations,
            output,
            settings,
            data,
            gap_overrides=overrides,
            text_encoder=text_encoder,
            tokenizer_dir=tokenizer,
            checkpoint_every=checkpoint_every,
            overwrite=overwrite,
            device=device,
            command=command_line(),
            progress=training_progress(progress),
            phase=progress.phase,
        )
    if main:
        emit(output, result, as_json)


def predict_command(
    gap: Annotated[
        Path,
        typer.Argument(
            help="GAP directory (from train-gap) or an official checkpoint_best.pth; '-' reads it from stdin."
        ),
    ],
    tasks: Annotated[str, typer.Option("--tasks", "-t", help="Comma-separated tasks, or 'all'.")] = "all",
    split: Annotated[str, typer.Option("--split", help="Comma-separated splits.")] = "val",
    output: Annotated[
        str, typer.Option("--output", "-o", help="Prediction store to create or complete: a path or URL.")
    ] = "pred.zarr",
    roberta: Annotated[
        Path | None,
        typer.Option("--roberta", help="RoBERTa folder of an official checkpoint (roberta-base)."),
    ] = None,
    gap_config: Annotated[
        Path | None,
        typer.Option("--gap-config", help="Official checkpoint only: JSON of non-default GAP config fields."),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1)] = 64,
    chunk_size: Annotated[int, typer.Option("--chunk-size", min=1, help="Samples per store chunk.")] = 64,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Only the first N samples of each task and split.")
    ] = None,
    dtype: Annotated[
        str, typer.Option("--dtype", help="auto (bf16 autocast on CUDA), float32, bfloat16.")
    ] = "auto",
    overwrite: Annotated[
        bool, typer.Option(help="Replace a store made with another GAP network, data or settings.")
    ] = False,
    trust_checkpoint: TrustCheckpointOption = False,
    device: DeviceOption = "auto",
    config: ConfigOption = None,
    data_root: DataRootOption = None,
    as_json: JsonOption = False,
) -> None:
    """Predict attention maps with a GAP network into a resumable "prediction" store.

    Example: [bold]fast3d predict gap/ --tasks scanqa,scanrefer --split val -o pred.zarr[/bold]
    Official checkpoint: [bold]fast3d predict checkpoint_best.pth --roberta roberta-base/ -o pred.zarr[/bold]
    """
    from fast3d_cli.cli.progress import ProgressReporter
    from fast3d_cli.data.tasks import parse_splits, parse_tasks
    from fast3d_cli.gap.predict import PredictSettings
    from fast3d_cli.gap.sources import GAPSource

    # every option is checked here, before anything imports torch or transformers
    settings = PredictSettings(
        tasks=tuple(parse_tasks(tasks)),
        splits=tuple(parse_splits(split)),
        batch_size=batch_size,
        chunk_size=chunk_size,
        dtype=dtype,
        limit=limit,
    )
    check_device(device)
    output = store_output(output)
    data = data_config(config, data_root)
    source = GAPSource.from_path(
        path_or_stdin(gap, "GAP"), roberta=roberta, config_file=gap_config, trust_checkpoint=trust_checkpoint
    )

    from fast3d_cli.gap.predict import predict
    from fast3d_cli.launch import distributed_context

    with (
        distributed_context(device) as dist,
        ProgressReporter("predict", enabled=dist.is_main) as progress,
    ):
        result = predict(
            source,
            data,
            settings,
            output,
            device=dist.device,
            command=command_line(),
            overwrite=overwrite,
            dist=dist,
            progress=progress.update,
            phase=progress.phase,
        )
    if dist.is_main:
        emit(output, result, as_json)
