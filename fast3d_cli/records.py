"""Comparing recorded identities (store attributes, run records): which fields differ, by dotted name."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def changed_fields(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted names of the leaves that differ between ``old`` and ``new`` (``prefix`` for the top level):
    ``changed_fields({"a": {"seed": 1}}, {"a": {"seed": 2}})`` is ``["a.seed"]``."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        found = []
        for key in sorted(set(old) | set(new), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            found += changed_fields(old.get(key), new.get(key), name)
        return found
    return [] if old == new else [prefix or "value"]


def describe_change(old: Any, new: Any, field: str) -> str:
    """``field (OLD recorded, NEW now)`` for the value at dotted ``field`` of two records."""
    return f"{field} ({_at(old, field)!r} recorded, {_at(new, field)!r} now)"


def _at(record: Any, field: str) -> Any:
    for part in field.split("."):
        if not isinstance(record, Mapping):
            return None
        record = record.get(part)
    return record
