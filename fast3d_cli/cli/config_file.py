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
    """Read ``[model]`` and ``[defaults.<command>]`` of ``path`` into per-command option defaults.

    Every key of every table is checked here, before any command runs: ``[data]`` against
    :class:`~fast3d_cli.data.config.DataConfig`, the others against the option they set (type, range,
    allowed values). A bad one is one :class:`UserError` naming the file, the table and the key."""
    from fast3d_cli.data.config import data_table, read_toml

    found = FileDefaults(path)
    if path is None:
        return found
    table = read_toml(path)
    unknown = sorted(set(table) - {"data", "model", "defaults"})
    if unknown:
        raise UserError(f"{path}: unknown table(s) {', '.join(unknown)}; valid: data, model, defaults")
    for name in ("model", "defaults"):
        if not isinstance(table.get(name, {}), dict):
            raise UserError(f"{path} [{name}]: must be a table, got {table[name]!r}")
    data_table(path, table)
    commands = commands_of(root)
    model = table.get("model", {})
    bad = sorted(set(model) - set(MODEL_KEYS))
    if bad:
        raise UserError(f"{path}: unknown [model] key(s) {', '.join(bad)}; valid: {', '.join(MODEL_KEYS)}")
    for key, value in model.items():
        where = f"{path} [model] {key} = {value!r}"
        for name, command in commands.items():
            if key in {p.name for p in command.params}:
                checked_value(command, key, value, where)
                resolved = str((path.parent / value).resolve()) if key in PATH_KEYS else value
                found.set(name, key, resolved, where)
    for command_name, values in _command_tables(table.get("defaults", {}), commands, path):
        table_name = f"[defaults.{'.'.join(command_name)}]"
        for key, value in values.items():
            param = _param_name(commands[command_name], key)
            where = f"{path} {table_name} {key} = {value!r}"
            found.set(command_name, param, checked_value(commands[command_name], param, value, where), where)
    return found


# TOML kinds a value of each option annotation may be written as (3 is a fine float; "3" is no integer)
_TOML_KINDS: dict[Any, tuple[type, ...]] = {bool: (bool,), int: (int,), float: (int, float), str: (str,),
                                            Path: (str,)}  # fmt: skip
_KIND_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
               Path: "a path string"}  # fmt: skip


def checked_value(command: Command, param_name: str, value: Any, where: str) -> Any:
    """``value`` from ``fast3d.toml`` for option ``param_name`` of ``command``, checked as the flag would be
    (TOML kind, type and range, then the option's allowed values); :class:`UserError` naming ``where``."""
    from fast3d_cli.cli.option_values import option_value_problem

    param = next(p for p in command.params if p.name == param_name)
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    kinds = _TOML_KINDS.get(annotation)
    if not is_option(param):
        raise UserError(f"{where}: {param_name} is an argument, not an option; give it on the command line")
    problem = None
    wrong_kind = isinstance(value, bool) and annotation is not bool
    if kinds is not None and (wrong_kind or not isinstance(value, kinds)):
        problem = f"must be {_KIND_NAMES[annotation]}, got {_toml_kind(value)}"
    problem = problem or _coercion_problem(command, param, value) or option_value_problem(param_name, value)
    if problem is not None:
        option = (param.opts or [param_name])[0]
        problem = problem[:1].lower() + problem[1:]
        raise UserError(f"{where}: {problem if option in problem else f'invalid {option}: {problem}'}")
    return value


def _coercion_problem(command: Command, param: Any, value: Any) -> str | None:
    """What the option's own conversion (type and ``min``/``max``) says about ``value`` (None: fine)."""
    from fast3d_cli.cli.errors import click_exceptions

    runtime = getattr(param, "get_runtime_param", None)
    if runtime is None:  # pragma: no cover - a Typer without the runtime-parameter API
        return None
    try:
        runtime().coerce(value, param=param, ctx=command.context_class(command))
    except click_exceptions.BadParameter as err:
        return str(err).rstrip(".")
    return None


def _toml_kind(value: Any) -> str:
    kinds = {bool: "a boolean", int: "an integer", float: "a float", str: "a string", list: "an array",
             dict: "a table"}  # fmt: skip
    return next((name for kind, name in kinds.items() if isinstance(value, kind)), type(value).__name__)


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
