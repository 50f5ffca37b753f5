"""The ``fast3d`` Typer application."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from fast3d_cli import __version__
from fast3d_cli.cli import (
    compare_command,
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
from fast3d_cli.cli.config_file import FileDefaults, config_path, load_defaults
from fast3d_cli.cli.errors import (
    Abort,
    ClickException,
    NoArgsIsHelpError,
    RecordingCommand,
    click_error_line,
    forget_context,
    os_error_line,
    user_error_line,
)
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


def _print_version(value: bool) -> None:
    if value:
        sys.stdout.write(f"fast3d {__version__}\n")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool,
        typer.Option("--version", is_eager=True, callback=_print_version, help="Print the version and exit."),
    ] = False,
) -> None:
    """Fast visual-token pruning for 3D multimodal LLMs (Chat-Scene), following Fast3D."""


def _command(name: str, panel: str):
    return app.command(name, rich_help_panel=panel, cls=RecordingCommand)


_command("demo", "Start here")(demo_command.demo_command)
_command("extract", "Stages")(extract_command.extract_command)
_command("train-gap", "Stages")(gap_commands.train_gap_command)
_command("predict", "Stages")(gap_commands.predict_command)
_command("search-alpha", "Stages")(search_alpha_command.search_alpha_command)
_command("eval", "Stages")(eval_command.eval_command)
_command("compare", "Analysis")(compare_command.compare_command)
_command("info", "Stores")(info_command.info_command)
_command("report", "Analysis")(report_command.report_command)
app.add_typer(config_command.app, name="config", rich_help_panel="Settings")
app.add_typer(sample_commands.app, name="sample", rich_help_panel="Sample world")


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code: user errors are one line on stderr and code 2."""
    set_invocation(argv)
    forget_context()
    defaults = FileDefaults(None)
    try:
        command = typer.main.get_command(app)
        args = sys.argv[1:] if argv is None else argv
        if not args:  # the overview, and success: nothing went wrong
            args = ["--help"]
        defaults = load_defaults(config_path(args), command)
        code = command.main(
            args=args, prog_name="fast3d", default_map=defaults.default_map(), standalone_mode=False
        )
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except NoArgsIsHelpError as err:  # a command group without its sub-command: its help, as click does
        err.show()
        return 2
    except UserError as err:
        print(user_error_line(err, defaults), file=sys.stderr)
        return 2
    except ClickException as err:
        print(click_error_line(err, defaults), file=sys.stderr)
        return 2
    except OSError as err:
        line = os_error_line(err)
        if line is None:
            raise
        print(line, file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Abort):
        print("fast3d: interrupted", file=sys.stderr)
        return 130
    return code if isinstance(code, int) else 0


def main() -> None:
    sys.exit(run())
