"""The ``fast3d`` Typer application."""

from __future__ import annotations

import sys

import typer

from fast3d_cli.cli import eval_command, sample_commands
from fast3d_cli.errors import UserError

app = typer.Typer(
    name="fast3d",
    help="Fast visual-token pruning for 3D multimodal LLMs (Chat-Scene), following Fast3D.\n\n"
    "Stages: eval (target model -> task metrics).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
app.command("eval", rich_help_panel="Stages")(eval_command.eval_command)
app.add_typer(sample_commands.app, name="sample", rich_help_panel="Sample world")


def main() -> None:
    try:
        app()
    except UserError as err:
        print(f"fast3d: error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("fast3d: interrupted", file=sys.stderr)
        sys.exit(130)
