"""``fast3d.toml``: data roots, model paths and per-command defaults, below the command-line flags.

Precedence for every option: the command's built-in default < ``fast3d.toml`` < the flag. The file is
``--config FILE`` when given, else ``./fast3d.toml`` when present::

    [data]                       # where the annotations and features live (relative to this file)
    root = "/data/chat-scene/annotations"

    [model]                      # default target model of every command that takes one
    checkpoint = "/models/ckpt_01_3446.pth"
    base_llm = "/models/vicuna-7b-v1.5"

    [defaults.eval]              # any option of a command, by its long name without dashes
    batch-size = 32
    num-beams = 5

The ``[model]`` and ``[defaults.*]`` values become click ``default_map`` entries, so a flag always wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fast3d_cli.errors import UserError

CONFIG_NAME = "fast3d.toml"
MODEL_KEYS = ("model", "checkpoint", "base_llm", "lora_alpha")
PATH_KEYS = {"model", "checkpoint", "base_llm"}


def config_path(argv: Sequence[str]) -> Path | None:
    """The ``--config`` value in ``argv``, else ``./fast3d.toml`` when it exists."""
    args = list(argv)
    for i, arg in enumerate(args):
        if arg == "--config" and i + 1 < len(args):
            return Path(args[i + 1])
        if arg.startswith("--config="):
            return Path(arg.split("=", 1)[1])
    local = Path(CONFIG_NAME)
    return local if local.is_file() else None


# Typer ships its own copy of click, so commands and options are recognised by shape, not by class.
Command = Any


def is_group(command: Command) -> bool:
    return hasattr(command, "commands")


def is_option(param: Any) -> bool:
    return getattr(param, "param_type_name", "") == "option"


def commands_of(group: Command, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Command]:
    """Every command and sub-group of ``group`` by its path, e.g. ("sample", "train-model")."""
    out: dict[tuple[str, ...], Command] = {}
    for name, command in group.commands.items():
        out[(*prefix, name)] = command
        if is_group(command):
            out.update(commands_of(command, (*prefix, name)))
    return out


def _param_name(command: Command, key: str) -> str:
    names = {p.name: p for p in command.params}
    for candidate in (key, key.replace("-", "_")):
        if candidate in names:
            return candidate
    for param in command.params:
        if any(opt.lstrip("-") == key for opt in getattr(param, "opts", [])):
            return param.name
    valid = sorted(p.name.replace("_", "-") for p in command.params if is_option(p))
    raise UserError(f"fast3d.toml: {command.name} has no option {key!r}; valid: {', '.join(valid)}")


@dataclass
class FileDefaults:
    """Defaults a config file sets, per command path (e.g. ("eval",), ("sample", "train-model"))."""

    path: Path | None
    values: dict[tuple[str, ...], dict[str, Any]] = field(default_factory=dict)
    # where each value was set, for error messages: {command: {param: "fast3d.toml [defaults.eval] limit"}}
    sources: dict[tuple[str, ...], dict[str, str]] = field(default_factory=dict)

    def set(self, command: tuple[str, ...], param: str, value: Any, where: str) -> None:
        self.values.setdefault(command, {})[param] = value
        self.sources.setdefault(command, {})[param] = where

    def default_map(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for command, values in self.values.items():
            node = out
            for part in command:
                node = node.setdefault(part, {})
            node.update(values)
        return out


def load_defaults(path: Path | None, root: Command) -> FileDefaults:
    """Read ``[model]`` and ``[defaults.<command>]`` of ``path`` into per-command option defaults."""
    from fast3d_cli.data.config import read_toml

    found = FileDefaults(path)
    if path is None:
        return found
    table = read_toml(path)
    unknown = sorted(set(table) - {"data", "model", "defaults"})
    if unknown:
        raise UserError(f"{path}: unknown table(s) {', '.join(unknown)}; valid: data, model, defaults")
    commands = commands_of(root)
    model = table.get("model", {})
    bad = sorted(set(model) - set(MODEL_KEYS))
    if bad:
        raise UserError(f"{path}: unknown [model] key(s) {', '.join(bad)}; valid: {', '.join(MODEL_KEYS)}")
    for name, command in commands.items():
        params = {p.name for p in command.params}
        for key, value in model.items():
            if key in params:
                resolved = str((path.parent / value).resolve()) if key in PATH_KEYS else value
                found.set(name, key, resolved, f"{path} [model] {key} = {value!r}")
    for command_name, values in _command_tables(table.get("defaults", {}), commands, path):
        table_name = f"[defaults.{'.'.join(command_name)}]"
        for key, value in values.items():
            param = _param_name(commands[command_name], key)
            found.set(command_name, param, value, f"{path} {table_name} {key} = {value!r}")
    return found


def _command_tables(
    defaults: dict[str, Any], commands: dict[tuple[str, ...], Command], path: Path, prefix=()
):
    """(command path, option table) for ``[defaults.eval]``, ``[defaults.sample.train-model]`` ..."""
    for key, value in defaults.items():
        name = (*prefix, key)
        if name not in commands or not isinstance(value, dict):
            valid = ", ".join(".".join(c) for c in commands if not is_group(commands[c]))
            raise UserError(f"{path}: [defaults.{'.'.join(name)}] is not a command table; valid: {valid}")
        if is_group(commands[name]):
            yield from _command_tables(value, commands, path, name)
        else:
            yield name, value
