"""``fast3d config show``: the effective settings and where each comes from."""

from __future__ import annotations

import json
import sys
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any

import typer

from fast3d_cli.cli.common import ConfigOption, DataRootOption, JsonOption
from fast3d_cli.cli.errors import RecordingCommand

app = typer.Typer(help="Inspect the configuration (fast3d.toml, defaults, flags).", no_args_is_help=True)


def effective_settings(
    config: Path | None, data_root: Path | None, all_options: bool
) -> list[dict[str, Any]]:
    """Rows (setting, value, source): data, model, and the option defaults of every command."""
    from fast3d_cli.cli.app import app as root_app
    from fast3d_cli.cli.common import data_config
    from fast3d_cli.cli.config_file import commands_of, config_path, is_group, is_option, load_defaults
    from fast3d_cli.data.config import DataConfig, read_toml

    path = config if config is not None else config_path([])
    file_data = read_toml(path).get("data", {}) if path is not None else {}
    data = data_config(path, data_root)
    rows = []
    for item in fields(DataConfig):
        source = "built-in default"
        if item.name in file_data:
            source = str(path)
        if item.name == "root" and data_root is not None:
            source = "flag --data-root"
        rows.append(
            {"setting": f"data.{item.name}", "value": str(getattr(data, item.name)), "source": source}
        )
    command = typer.main.get_command(root_app)
    defaults = load_defaults(path, command)
    for name, sub in commands_of(command).items():
        if is_group(sub):
            continue
        set_by_file = defaults.values.get(name, {})
        for param in sub.params:
            if not is_option(param) or param.name in ("help", "config", "as_json"):
                continue
            if param.name in set_by_file:
                value, source = set_by_file[param.name], str(path)
            elif all_options:
                value, source = param.default, "built-in default"
            else:
                continue
            rows.append({"setting": f"{' '.join(name)} --{param.name.replace('_', '-')}", "value": str(value),
                         "source": source})  # fmt: skip
    return rows


@app.command("show", cls=RecordingCommand)
def show_command(
    config: ConfigOption = None,
    data_root: DataRootOption = None,
    all_options: Annotated[
        bool, typer.Option("--all", help="Also list every option's built-in default.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Print the effective settings (data, model, command defaults) and where each comes from.

    Example: [bold]fast3d config show --all[/bold]
    """
    rows = effective_settings(config, data_root, all_options)
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    if not sys.stdout.isatty():  # a file or a pipe: whole values, never wrapped or cut at a console width
        sys.stdout.write(plain_table(rows, ("setting", "value", "source")))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="fast3d settings (flags given to a command override all of these)")
    for column in ("setting", "value", "source"):
        table.add_column(column)
    for row in rows:
        table.add_row(*(escape(row[k]) for k in ("setting", "value", "source")))
    Console().print(table)


def plain_table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    """``rows`` as aligned text columns, one line per row, nothing cut (for files and pipes)."""
    widths = [max([len(c), *(len(str(r[c])) for r in rows)]) for c in columns]
    lines = [list(columns), *([str(r[c]) for c in columns] for r in rows)]
    padded = ("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() for line in lines)
    return "".join(line + "\n" for line in padded)
