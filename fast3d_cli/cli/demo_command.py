"""``fast3d demo``: the whole chain on the embedded sample world."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from fast3d_cli.cli.common import DeviceOption, JsonOption, check_device, check_output_location, emit
from fast3d_cli.demo import DemoSettings

_DEFAULTS = DemoSettings()


def demo_command(
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder for everything the demo writes.")
    ] = Path("runs/demo"),
    train_limit: Annotated[
        int, typer.Option(min=1, help="Train samples per task the GAP network learns from.")
    ] = _DEFAULTS.train_limit,
    epochs: Annotated[int, typer.Option(min=1, help="GAP training epochs.")] = _DEFAULTS.epochs,
    gap_lr: Annotated[float, typer.Option(help="GAP learning rate (> 0).")] = _DEFAULTS.gap_lr,
    target: Annotated[float, typer.Option(help="Target pruning ratio (%) for search-alpha.")] = 90.0,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Only the first N val samples per task (default: the demo's).")
    ] = _DEFAULTS.eval_limit,
    num_beams: Annotated[int, typer.Option(min=1)] = _DEFAULTS.num_beams,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = _DEFAULTS.max_new_tokens,
    device: DeviceOption = "auto",
    as_json: JsonOption = False,
) -> None:
    """Run extract -> train-gap -> predict -> search-alpha -> eval on the embedded sample and show the table.

    Example: [bold]fast3d demo -o runs/demo[/bold]  (about 12 minutes on 2 CPU cores; reruns resume)
    """
    from fast3d_cli.cli.progress import ProgressReporter, training_progress
    from fast3d_cli.cli.tables import print_comparison_table
    from fast3d_cli.demo import run_demo
    from fast3d_cli.errors import UserError

    if not 0 < target < 100:
        raise UserError(f"--target must be in (0, 100), got {target}")
    if not gap_lr > 0:
        raise UserError(f"--gap-lr must be > 0, got {gap_lr}")
    check_device(device)
    check_output_location(output)
    settings = DemoSettings(
        train_limit=train_limit,
        epochs=epochs,
        gap_lr=gap_lr,
        target_ratio=target,
        eval_limit=limit,
        num_beams=num_beams,
        max_new_tokens=max_new_tokens,
        device=device,
    )

    with ProgressReporter("demo") as progress:
        result = run_demo(output, settings, progress.phase, progress.update, training_progress(progress))
    print_comparison_table(result["rows"], sys.stderr, "fast3d demo: the sample model pruned (values x100)")
    width = max(len(name) for name in result["paths"])
    for name, path in result["paths"].items():
        print(f"{name:>{width}}: {path}", file=sys.stderr)
    emit(output, result, as_json)
