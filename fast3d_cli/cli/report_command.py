"""``fast3d report RESULT... -o report/``: PNG pictures of evaluation results."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from fast3d_cli.cli.common import (
    ConfigOption,
    DataRootOption,
    JsonOption,
    check_output_location,
    data_config,
    emit,
    store_argument,
)
from fast3d_cli.errors import UserError


def report_command(
    results: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Output directories of fast3d eval (dense and pruned runs), or fast3d compare folders (or "
            "their leaderboard.json) for the Pareto pictures.",
            show_default=False,
        ),
    ] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the PNG pictures.")] = Path(
        "report"
    ),
    true_maps: Annotated[
        str | None,
        typer.Option("--true-maps", help="Attention store (fast3d extract) for the scene top view."),
    ] = None,
    pred_maps: Annotated[
        str | None,
        typer.Option("--pred-maps", help="Prediction store (fast3d predict) for the scene top view."),
    ] = None,
    sample: Annotated[
        str | None,
        typer.Option(
            "--sample",
            help="TASK:INDEX of the top view (default: the first sample of the first pruned result that "
            "records its kept objects).",
        ),
    ] = None,
    split: Annotated[str, typer.Option("--split", help="Annotation split of the top-view sample.")] = "val",
    config: ConfigOption = None,
    data_root: DataRootOption = None,
    as_json: JsonOption = False,
) -> None:
    """Draw PNG pictures of evaluation results: score ratio vs pruning ratio, SAP budgets, a scene top view;
    for a compare folder, the Pareto pictures (score ratio vs FLOPs and vs measured prefill time).

    Example: [bold]fast3d report runs/eval-* --true-maps maps.zarr --pred-maps pred.zarr -o report/[/bold]
    """
    from fast3d_cli.data.tasks import parse_splits
    from fast3d_cli.report import load_results, make_report

    splits = parse_splits(split)
    if len(splits) != 1:
        raise UserError(f"--split takes one split, got {split!r}")
    split_name = splits[0]
    check_output_location(output)

    def note(message: str) -> None:
        print(message, file=sys.stderr)

    from fast3d_cli.report.pareto import is_leaderboard, leaderboard_report

    boards = [path for path in results or [] if is_leaderboard(path)]
    runs = [path for path in results or [] if not is_leaderboard(path)]
    files = leaderboard_report(boards, output, note)
    if boards and not runs:
        emit(output, {"output": str(output), "files": [str(f) for f in files]}, as_json)
        return
    loaded = load_results(runs, note=note)
    files += make_report(
        loaded,
        output,
        true_maps=None if true_maps is None else store_argument(true_maps, "--true-maps"),
        pred_maps=None if pred_maps is None else store_argument(pred_maps, "--pred-maps"),
        sample=sample,
        split=split_name,
        data=data_config(config, data_root),
        note=note,
    )
    emit(output, {"output": str(output), "files": [str(f) for f in files]}, as_json)
