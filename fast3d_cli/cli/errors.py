"""Every error a user can cause becomes one line, ``fast3d: error: ...``, on stderr (exit code 2).

Three kinds reach the top of the CLI: :class:`~fast3d_cli.errors.UserError` from fast3d itself, click's usage
errors (an unknown option, a value Typer rejects) and OS errors a user causes (an unwritable, read-only or
full output location, a path through a file). A value that came from ``fast3d.toml`` is named with its file,
table and key, since the command line does not show it.
"""

from __future__ import annotations

import errno
import re
from typing import Any

import typer
from typer.core import TyperCommand

from fast3d_cli.cli.config_file import FileDefaults

try:  # Typer >= 0.20 ships its own click; earlier versions use the click package
    from typer._click import exceptions as click_exceptions
    from typer._click.core import ParameterSource
except ImportError:  # pragma: no cover - depends on the installed Typer
    from click import exceptions as click_exceptions
    from click.core import ParameterSource

ClickException = click_exceptions.ClickException
UsageError = click_exceptions.UsageError
NoArgsIsHelpError = getattr(click_exceptions, "NoArgsIsHelpError", ())
Abort = typer.Abort

# OS errors that come from what the user asked for (where to write, what to read), not from a bug
USER_ERRNOS = frozenset(
    getattr(errno, name)
    for name in ("EACCES", "EPERM", "EROFS", "ENOTDIR", "EISDIR", "ENOSPC", "EDQUOT", "EFBIG", "ENAMETOOLONG",
                 "ENOENT", "EEXIST", "ELOOP", "EXDEV")
    if hasattr(errno, name)
)  # fmt: skip

_last_context: list[Any] = []


class RecordingCommand(TyperCommand):
    """A Typer command that remembers its parsed context, so an error raised while it runs can say which of
    its option values came from ``fast3d.toml``."""

    def invoke(self, ctx: Any) -> Any:
        _last_context[:] = [ctx]
        return super().invoke(ctx)


def forget_context() -> None:
    _last_context.clear()


def _from_file_note(ctx: Any, names: set[str] | None, defaults: FileDefaults) -> str:
    """'' or " (VALUE comes from FILE [TABLE] KEY)" for the options in ``names`` (None: all) that
    ``fast3d.toml`` set in ``ctx``."""
    if ctx is None:
        return ""
    command = tuple(ctx.command_path.split()[1:])
    sources = defaults.sources.get(command, {})
    notes = []
    for param in ctx.command.params:
        if param.name not in sources or (names is not None and param.name not in names):
            continue
        if ctx.get_parameter_source(param.name) == ParameterSource.DEFAULT_MAP:
            opt = (param.opts or [param.name])[0]
            notes.append(f"{opt} comes from {sources[param.name]}")
    return f" ({'; '.join(notes)})" if notes else ""


def _mentioned_params(ctx: Any, message: str) -> set[str]:
    """Names of ``ctx``'s parameters whose option strings (e.g. ``--method``) appear in ``message``."""
    found = set()
    for param in ctx.command.params:
        for opt in getattr(param, "opts", []):
            if opt.startswith("--") and re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", message):
                found.add(param.name)
    return found


def user_error_line(err: Exception, defaults: FileDefaults) -> str:
    """A :class:`UserError` raised by a command; names ``fast3d.toml`` for the option values it set."""
    message = str(err)
    ctx = _last_context[0] if _last_context else None
    note = _from_file_note(ctx, _mentioned_params(ctx, message), defaults) if ctx is not None else ""
    return f"fast3d: error: {message}{note}"


def click_error_line(err: Any, defaults: FileDefaults) -> str:
    """A click/Typer usage error (bad option, bad value, missing argument) as one line."""
    message = err.format_message().strip().splitlines()[0] if err.format_message().strip() else str(err)
    message = (message[:1].lower() + message[1:]).rstrip(".")
    ctx = getattr(err, "ctx", None)
    param = getattr(err, "param", None)
    note = ""
    if ctx is not None and param is not None:
        note = _from_file_note(ctx, {param.name}, defaults)
    command = " ".join(ctx.command_path.split()[1:]) if ctx is not None else ""
    where = f"{command}: " if command else ""
    hint = f" (see {ctx.command_path} --help)" if ctx is not None else " (see fast3d --help)"
    return f"fast3d: error: {where}{message}{note}{hint}"


def os_error_line(err: OSError) -> str | None:
    """The one line for an OS error a user caused (None: not one of those, a bug to show in full).

    A failed ``write()`` or ``close()`` (a full disk) carries no file name: the line then names the output
    the command was given (``--output``, else its STORE), which is where it was writing.
    """
    if err.errno not in USER_ERRNOS:
        return None
    reason = err.strerror or errno.errorcode.get(err.errno or 0, "OS error")
    paths = [str(p) for p in (err.filename, err.filename2) if p is not None]
    if paths:
        return f"fast3d: error: {' -> '.join(paths)}: {reason}"
    output = _command_output()
    where = f"writing {output}" if output else "writing the output"
    return f"fast3d: error: {where}: {reason}"


def _command_output() -> str | None:
    """The output path the running command was given, if any."""
    ctx = _last_context[0] if _last_context else None
    params = getattr(ctx, "params", None) or {}
    for name in ("output", "store"):
        if params.get(name) is not None and str(params[name]) != "-":
            return str(params[name])
    return None
