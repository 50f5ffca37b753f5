"""Fingerprints that tie an output to the model and data that produced it."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from fast3d_cli.errors import UserError


def file_digest(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    try:
        with Path(path).open("rb") as handle:
            while block := handle.read(chunk):
                digest.update(block)
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror or err}") from None
    return digest.hexdigest()


def files_fingerprint(paths: Iterable[Path]) -> str:
    """sha256 over the names and contents of ``paths`` (16 hex chars)."""
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        digest.update(path.name.encode())
        digest.update(file_digest(path).encode())
    return digest.hexdigest()[:16]
