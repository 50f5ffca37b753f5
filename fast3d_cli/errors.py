"""Errors a user can cause. The CLI turns them into one line on stderr and exit code 2."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path


class UserError(Exception):
    """A problem with the user's input (missing file, wrong store, bad option): never a traceback."""


class DataFileError(UserError):
    """A data file is missing or unreadable."""


class CheckpointError(UserError):
    """A checkpoint does not match the model it is loaded into."""


@contextlib.contextmanager
def naming_os_errors(path: Path | str) -> Iterator[None]:
    """An OS error raised inside without a file name (a failed ``write()``, ``fsync()`` or ``close()`` on a
    full disk) gets ``path`` as its file name, so the user's one error line says which file it was."""
    try:
        yield
    except OSError as err:
        if err.filename is None:
            err.filename = str(path)
        raise


@contextlib.contextmanager
def removed_on_error(tmp: Path) -> Iterator[None]:
    """Delete the temporary file of an atomic write when the write fails (the target stays as it was)."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError):
            Path(tmp).unlink(missing_ok=True)
        raise


def article(word: str) -> str:
    """ "an" before a vowel sound, else "a" ("an 'attention' store", "a 'prediction' store")."""
    return "an" if str(word)[:1].lower() in "aeiou" else "a"
