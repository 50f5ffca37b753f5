"""Allowed values of the string options that have a fixed vocabulary, by option name.

``fast3d.toml`` values are checked with these when the file is read, before any command runs, so a bad value
there is named with its file, table and key; the commands check their flags with the same functions. Each
check imports what it needs when it runs (never torch).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fast3d_cli.errors import UserError


def _tasks(value: str) -> None:
    from fast3d_cli.data.tasks import parse_tasks

    parse_tasks(value)


def _splits(value: str) -> None:
    from fast3d_cli.data.tasks import parse_splits

    parse_splits(value)


def _device(value: str) -> None:
    from fast3d_cli.cli.common import check_device

    check_device(value)


def _dtype(value: str) -> None:
    from fast3d_cli.cli.common import check_choice
    from fast3d_cli.models.loading import DTYPES

    check_choice("--dtype", value, DTYPES)


def _method(value: str) -> None:
    from fast3d_cli.pruning.methods import get_method

    get_method(value)


def _granularity(value: str) -> None:
    from fast3d_cli.cli.common import check_choice
    from fast3d_cli.pruning.methods import GRANULARITIES

    check_choice("--granularity", value, tuple(GRANULARITIES))


def _ratio(value: float) -> None:
    from fast3d_cli.pruning.budgets import check_ratio

    check_ratio(value)


def _alpha(value: str) -> None:
    from fast3d_cli.pruning.budgets import check_alpha

    if value != "auto":
        try:
            check_alpha(float(value))
        except ValueError:
            raise UserError(f"--alpha must be a number in (0, 1] or 'auto', got {value!r}") from None


OPTION_VALUE_CHECKS: dict[str, Callable[[Any], None]] = {
    "tasks": _tasks,
    "split": _splits,
    "device": _device,
    "dtype": _dtype,
    "method": _method,
    "granularity": _granularity,
    "ratio": _ratio,
    "alpha": _alpha,
}
"""Option (parameter name) -> check that raises :class:`UserError` for a value outside its vocabulary."""


def option_value_problem(name: str, value: Any) -> str | None:
    """Why ``value`` is not allowed for option ``name`` (None: allowed, or the option has no vocabulary)."""
    check = OPTION_VALUE_CHECKS.get(name)
    if check is None:
        return None
    try:
        check(value)
    except UserError as err:
        return str(err)
    return None
