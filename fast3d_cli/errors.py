"""Errors a user can cause. The CLI turns them into one line on stderr and exit code 2."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (missing file, wrong store, bad option): never a traceback."""


class DataFileError(UserError):
    """A data file is missing or unreadable."""


class CheckpointError(UserError):
    """A checkpoint does not match the model it is loaded into."""
