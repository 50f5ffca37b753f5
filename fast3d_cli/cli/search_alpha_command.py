"""``fast3d search-alpha STORE --target 90``: the SAP alpha that gives a target pruning ratio (spec §5.6)."""

from __future__ import annotations

from typing import Annotated

import typer

from fast3d_cli.cli.common import ConfigOption, DataRootOption, JsonOption, data_config, emit, store_argument
from fast3d_cli.errors import UserError


def search_alpha_command(
    store: Annotated[
        str,
        typer.Argument(
            help="A prediction store (fast3d predict) or attention store (fast3d extract), or '-' to read "
            "its path from stdin."
        ),
    ],
    target: Annotated[
        float, typer.Option("--target", help="Target pruning ratio in percent of the visual objects (0-100).")
    ] = 90.0,
    tolerance: Annotated[
        float,
        typer.Option("--tolerance", help="Accepted relative deviation, percent of the target (official: 2)."),
    ] = 2.0,
    tasks: Annotated[
        str | None,
        typer.Option("--tasks", "-t", help="Comma-separated tasks (default: every task the store has)."),
    ] = None,
    split: Annotated[str, typer.Option("--split", help="Split whose maps set alpha.")] = "val",
    weighting: Annotated[
        str,
        typer.Option(
            "--weighting", help="task: unweighted mean over tasks (official); sample: pooled over samples."
        ),
    ] = "task",
    skip_padding: Annotated[
        bool,
        typer.Option(help="Give padding objects (zero features) no mass, as eval --skip-padding does."),
    ] = False,
    config: ConfigOption = None,
    data_root: DataRootOption = None,
    as_json: JsonOption = False,
) -> None:
    """Find the SAP alpha whose pruning ratio is closest to --target and record it in the store.

    Example: [bold]fast3d search-alpha pred.zarr --target 90 --tasks scanrefer,scanqa[/bold]
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from fast3d_cli.data.tasks import parse_tasks
    from fast3d_cli.pruning.alpha_search import search_alpha

    store = store_argument(store, "STORE")
    names = None if tasks is None or tasks.strip() in ("", "all") else parse_tasks(tasks)
    padding = data_config(config, data_root) if skip_padding else None
    result = search_alpha(
        store, target, tolerance, tasks=names, split=split, weighting=weighting, skip_padding=padding
    )

    console = Console(stderr=True)
    table = Table(title=f"SAP on {escape(str(store))} ({result.kind}, {result.split}, M={result.n_objects})")
    for column in ("task", "samples", "mean kept objects", "pruned %", "reference alpha"):
        table.add_column(column, justify="left" if column == "task" else "right")
    for task, row in result.per_task.items():
        table.add_row(
            task, str(row.n_samples), f"{row.mean_kept:.2f}", f"{row.ratio:.2f}", f"{row.reference_alpha:.4f}"
        )
    console.print(table)
    low, high = result.band
    console.print(
        f"alpha [bold]{result.alpha:g}[/bold]: ratio {result.ratio:.2f}% ({result.weighting}-weighted), "
        f"target {result.target:g}% (tolerance {result.tolerance:g}% of it: [{low:.2f}, {high:.2f}])"
    )
    if result.within_tolerance:
        console.print("within tolerance: [green]yes[/green]")
    else:
        console.print(f"within tolerance: [red]no[/red] ({escape(result.reason or '')})")
    if result.split == "val":
        console.print(
            "[dim]note: alpha is chosen on the split it is evaluated on (as the official code does)[/dim]"
        )
    if result.record_error:  # the alpha is shown above, but eval --alpha auto cannot find it: a failure
        raise UserError(f"{result.record_error}; nothing was recorded (eval --alpha auto needs the record)")
    emit(store, result.to_dict(), as_json)
