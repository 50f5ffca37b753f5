"""``fast3d eval``: run the target model on the tasks and score it with the official metrics."""

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


def eval_command(
    tasks: Annotated[str, typer.Option("--tasks", "-t", help="Comma-separated tasks, or 'all'.")] = "all",
    split: Annotated[str, typer.Option("--split", help="Annotation split to evaluate.")] = "val",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Output directory (default: runs/eval-METHOD).")
    ] = None,
    method: Annotated[
        str,
        typer.Option(
            "--method",
            "-m",
            help="none, random, fastv, divprune, oracle, oracle+sap, gap, gap+sap, cdpruner, coverage, "
            "efficient3d (docs/methods-before-llm.md).",
            rich_help_panel="Pruning",
        ),
    ] = "none",
    maps: Annotated[
        str | None,
        typer.Option(
            "--maps",
            help="Maps store (a path or URL): prediction (gap) or attention (oracle); '-' reads it from "
            "stdin.",
            rich_help_panel="Pruning",
        ),
    ] = None,
    gap: Annotated[
        Path | None,
        typer.Option("--gap", help="GAP directory, run online instead of --maps.", rich_help_panel="Pruning"),
    ] = None,
    keep: Annotated[
        int | None,
        typer.Option("--keep", help="Keep N objects (or tokens) per sample.", rich_help_panel="Pruning"),
    ] = None,
    ratio: Annotated[
        float | None,
        typer.Option(
            "--ratio",
            help="Layer-averaged pruning ratio in percent: 100 (1 - kept/300) (L - K) / L.",
            rich_help_panel="Pruning",
        ),
    ] = None,
    alpha: Annotated[
        str | None,
        typer.Option(
            "--alpha", help="SAP mass in (0, 1], or 'auto' (from search-alpha).", rich_help_panel="Pruning"
        ),
    ] = None,
    layer: Annotated[
        int,
        typer.Option(
            "--layer", "-k", help="Prune before this layer (0 = before the LLM).", rich_help_panel="Pruning"
        ),
    ] = 0,
    granularity: Annotated[
        str, typer.Option(help="object (3 tokens together) or token.", rich_help_panel="Pruning")
    ] = "object",
    seed: Annotated[int, typer.Option(help="Seed of --method random.", rich_help_panel="Pruning")] = 0,
    baseline: Annotated[
        Path | None,
        typer.Option(
            help="Dense run for the score ratio (reused or computed; default: eval-none beside --output).",
            rich_help_panel="Pruning",
        ),
    ] = None,
    bootstrap: Annotated[
        int,
        typer.Option(
            min=0,
            help="Resamples of the score ratio's paired-bootstrap 95% interval (docs/bootstrap.md); 0: none.",
            rich_help_panel="Pruning",
        ),
    ] = 1000,
    bootstrap_seed: Annotated[
        int, typer.Option(min=0, help="Seed of the --bootstrap resamples.", rich_help_panel="Pruning")
    ] = 0,
    fixed_count: Annotated[
        bool,
        typer.Option(
            help="SAP: every request keeps the same object count (the SAP mean, rounded), for engines "
            "that size visual placeholders before pruning.",
            rich_help_panel="Pruning",
        ),
    ] = False,
    skip_padding: Annotated[
        bool,
        typer.Option(
            help="Never keep padding objects (zero features) while real ones are left; official: off.",
            rich_help_panel="Pruning",
        ),
    ] = False,
    force: Annotated[
        bool, typer.Option(help="Use maps made for another model or data.", rich_help_panel="Pruning")
    ] = False,
    model: ModelOption = None,
    checkpoint: CheckpointOption = None,
    base_llm: BaseLLMOption = None,
    lora_alpha: LoraAlphaOption = None,
    trust_checkpoint: TrustCheckpointOption = False,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1)] = 16,
    num_beams: Annotated[int, typer.Option(min=1)] = 5,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 64,
    repetition_penalty: Annotated[float, typer.Option(help="HF repetition penalty (> 0).")] = 3.0,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N samples of each task.")] = None,
    scanqa_clean_refs: Annotated[
        bool,
        typer.Option(help="Clean ScanQA reference answers too (corrected); default is the official bug."),
    ] = False,
    scan2cap_sos_eos: Annotated[
        str, typer.Option(help="Scan2Cap sos/eos handling: official, match-corpus or strip.")
    ] = "official",
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    overwrite: Annotated[
        bool, typer.Option(help="Replace an existing evaluation made with other settings.")
    ] = False,
    config: ConfigOption = None,
    data_root: DataRootOption = None,
    as_json: JsonOption = False,
) -> None:
    """Evaluate the target model, dense or pruned, on Chat-Scene tasks: metrics, score ratio, speed.

    Example: [bold]fast3d eval --method gap+sap --maps pred.zarr --alpha auto --tasks scanqa[/bold]
    Several processes: [bold]accelerate launch --num_processes 4 -m fast3d_cli eval ...[/bold]
    """
    from fast3d_cli.cli.progress import ProgressReporter
    from fast3d_cli.cli.tables import print_metrics_table
    from fast3d_cli.data.tasks import parse_splits, parse_tasks
    from fast3d_cli.evaluation.confidence import BootstrapSettings
    from fast3d_cli.evaluation.runner import EvalSettings, data_files
    from fast3d_cli.generation.config import GenerationConfig
    from fast3d_cli.metrics import MetricOptions
    from fast3d_cli.models.loading import DTYPES
    from fast3d_cli.pruning.methods import preflight, validate

    # every option is checked here, before anything imports torch or transformers
    task_names = parse_tasks(tasks)
    (split_name,) = parse_splits(split)
    MetricOptions(scanqa_clean_refs, scan2cap_sos_eos)
    check_device(device)
    check_choice("--dtype", dtype, DTYPES)
    data = data_config(config, data_root)
    settings = EvalSettings(
        tasks=tuple(task_names),
        split=split_name,
        batch_size=batch_size,
        limit=limit,
        generation=GenerationConfig(
            num_beams=num_beams, max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty
        ),
        scanqa_clean_references=scanqa_clean_refs,
        scan2cap_sos_eos=scan2cap_sos_eos,
        pruning=pruning_settings(
            method, maps, gap, keep, ratio, alpha, layer, granularity, seed, fixed_count, skip_padding, force
        ),
    )
    validate(settings.pruning, None)
    intervals = BootstrapSettings(n_resamples=bootstrap, seed=bootstrap_seed)
    source = model_source(model, checkpoint, base_llm, lora_alpha, trust_checkpoint)
    output = check_output_location(output or Path(f"runs/eval-{method}"))
    baseline = baseline or output.parent / "eval-none"
    if settings.pruning.method != "none":
        check_output_location(baseline, "--baseline")
    data_files(data, settings.tasks, settings.split)
    # the checks that read files (the maps store, the model's depth) also come before the model loads
    fingerprint = source.fingerprint()
    preflight(settings.pruning, fingerprint, *source.shape(), data)

    from fast3d_cli.evaluation.runner import run_pruned_eval
    from fast3d_cli.launch import distributed_context

    with (
        distributed_context(device) as dist,
        ProgressReporter("eval", enabled=dist.is_main) as progress,
    ):
        progress.phase(f"loading the target model ({source.describe()})")
        target = source.load(device=dist.device, dtype=dtype)
        result = run_pruned_eval(
            target,
            fingerprint,
            data,
            settings,
            output,
            baseline,
            overwrite=overwrite,
            progress=progress.update,
            phase=progress.phase,
            bootstrap=intervals,
            dist=dist,
        )
    if dist.is_main:  # one table and one stdout line, whatever the number of processes
        print_metrics_table(result, file=sys.stderr)
        emit(output / "metrics.json", result, as_json)


def pruning_settings(
    method: str,
    maps: str | None,
    gap: Path | None,
    keep: int | None,
    ratio: float | None,
    alpha: str | None,
    layer: int,
    granularity: str,
    seed: int,
    fixed_count: bool,
    skip_padding: bool,
    force: bool,
):
    from fast3d_cli.errors import UserError
    from fast3d_cli.pruning.methods import PruningSettings

    location = None if maps is None else store_argument(maps, "--maps")
    parsed_alpha: float | str | None = alpha
    if alpha is not None and alpha != "auto":
        try:
            parsed_alpha = float(alpha)
        except ValueError:
            raise UserError(f"--alpha must be a number in (0, 1] or 'auto', got {alpha!r}") from None
    return PruningSettings(
        method=method, layer=layer, keep=keep, ratio=ratio, alpha=parsed_alpha, granularity=granularity,
        seed=seed, maps=location, gap=gap, fixed_count=fixed_count,
        skip_padding=skip_padding, force=force,
    )  # fmt: skip
