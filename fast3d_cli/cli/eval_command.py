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
    data_config,
    emit,
    model_source,
)


def eval_command(
    tasks: Annotated[str, typer.Option("--tasks", "-t", help="Comma-separated tasks, or 'all'.")] = "all",
    split: Annotated[str, typer.Option("--split", help="Annotation split to evaluate.")] = "val",
    output: Annotated[Path, typer.Option("--output", "-o", help="Output directory.")] = Path(
        "runs/eval-dense"
    ),
    model: ModelOption = None,
    checkpoint: CheckpointOption = None,
    base_llm: BaseLLMOption = None,
    lora_alpha: LoraAlphaOption = None,
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
    """Evaluate the target model (dense) on Chat-Scene tasks; resumable per sample.

    Example: [bold]fast3d eval --tasks scanrefer,scanqa --split val --limit 50[/bold]
    """
    from fast3d_cli.cli.progress import TaskProgress, print_metrics_table
    from fast3d_cli.data.tasks import parse_splits, parse_tasks
    from fast3d_cli.evaluation import EvalSettings, run_eval
    from fast3d_cli.generation import GenerationConfig
    from fast3d_cli.metrics import MetricOptions

    task_names = parse_tasks(tasks)
    (split_name,) = parse_splits(split)
    MetricOptions(scanqa_clean_refs, scan2cap_sos_eos)  # validates the choice before any work
    data = data_config(config, data_root)
    source = model_source(model, checkpoint, base_llm, lora_alpha)
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
    )
    fingerprint = source.fingerprint()
    target = source.load(device=device, dtype=dtype)
    with TaskProgress() as progress:
        result = run_eval(
            target, fingerprint, data, settings, output, overwrite=overwrite, progress=progress.update
        )
    print_metrics_table(result, file=sys.stderr)
    emit(output / "metrics.json", result, as_json)
