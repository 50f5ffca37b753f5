"""The ``fast3d`` Typer application."""

from __future__ import annotations

import sys

import typer

from fast3d_cli.cli import (
    config_command,
    demo_command,
    eval_command,
    extract_command,
    gap_commands,
    info_command,
    report_command,
    sample_commands,
    search_alpha_command,
)
from fast3d_cli.cli.common import set_invocation
from fast3d_cli.cli.config_file import config_path, load_defaults
from fast3d_cli.errors import UserError

app = typer.Typer(
    name="fast3d",
    help="Fast visual-token pruning for 3D multimodal LLMs (Chat-Scene), following Fast3D.\n\n"
    "Stages, in pipeline order: extract (target model -> attention maps), train-gap (maps -> GAP "
    "checkpoint), predict (GAP -> predicted maps), search-alpha (maps -> SAP alpha for a target ratio), eval "
    "(target model -> task metrics, pruned or dense). Start with demo; inspect any store with info; draw "
    "results with report; settings come from flags, then fast3d.toml (see config show).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
app.command("demo", rich_help_panel="Start here")(demo_command.demo_command)
app.command("extract", rich_help_panel="Stages")(extract_command.extract_command)
app.command("train-gap", rich_help_panel="Stages")(gap_commands.train_gap_command)
app.command("predict", rich_help_panel="Stages")(gap_commands.predict_command)
app.command("search-alpha", rich_help_panel="Stages")(search_alpha_command.search_alpha_command)
app.command("eval", rich_help_panel="Stages")(eval_command.eval_command)
app.command("info", rich_help_panel="Stores")(info_command.info_command)
app.command("report", rich_help_panel="Analysis")(report_command.report_command)
app.add_typer(config_command.app, name="config", rich_help_panel="Settings")
app.add_typer(sample_commands.app, name="sample", rich_help_panel="Sample world")


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code: user errors are one line on stderr and code 2."""
    set_invocation(argv)
    try:
        command = typer.main.get_command(app)
        args = sys.argv[1:] if argv is None else argv
        if not args:  # the overview, and success: nothing went wrong
            args = ["--help"]
        defaults = load_defaults(config_path(args), command)
        command.main(args=args, prog_name="fast3d", default_map=defaults.default_map())
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except UserError as err:
        print(f"fast3d: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fast3d: interrupted", file=sys.stderr)
        return 130
    return 0


def main() -> None:
    sys.exit(run())
