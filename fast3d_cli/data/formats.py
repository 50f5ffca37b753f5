"""Readers and writers for the on-disk Chat-Scene formats (spec §2.2-§2.4).

Every ``.pt`` file is read with ``torch.load(weights_only=True)``: annotation data never needs pickled code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fast3d_cli.errors import DataFileError, UserError, naming_os_errors, removed_on_error


def require_file(path: Path) -> Path:
    """``path`` if it is a file; else a :class:`DataFileError` saying it is missing or not a file."""
    path = Path(path)
    if not path.is_file():
        if path.exists():
            raise DataFileError(f"cannot read {path}: not a regular file")
        raise DataFileError(f"data file not found: {path}")
    return path


def _reason(err: BaseException) -> str:
    """The first sentence of ``err``'s message (torch's load errors run to several sentences)."""
    text = str(err).strip().splitlines()[0].split(". ")[0] if str(err).strip() else type(err).__name__
    return text if len(text) <= 100 else text[:97] + "..."


def read_json(path: Path) -> Any:
    require_file(path)
    try:
        with path.open(encoding="utf-8") as handle:
            return json.load(handle)
    except OSError as err:
        raise DataFileError(f"cannot read {path}: {err.strerror or err}") from None
    except ValueError as err:  # JSONDecodeError, or UnicodeDecodeError for bytes that are not UTF-8
        raise DataFileError(f"cannot read JSON file {path}: {str(err).splitlines()[0]}") from None


def read_pt(path: Path) -> Any:
    """Load a tensor file safely (no pickled code is executed)."""
    import pickle

    import torch

    from fast3d_cli.checkpoints import quiet_torch_load

    require_file(path)
    try:
        with quiet_torch_load():
            return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as err:
        raise DataFileError(f"cannot read {path}: {err.strerror or err}") from None
    except Exception as err:  # a damaged file makes the zip reader or the unpickler raise many types
        pickled = isinstance(err, pickle.UnpicklingError)
        what = "corrupt, or it pickles more than tensors" if pickled else "corrupt"
        raise DataFileError(f"cannot load {path} with weights_only=True: {what} ({_reason(err)})") from None


def write_json(path: Path, data: Any, indent: int | None = None) -> None:
    """Write JSON atomically (temporary file + rename), so a crash never leaves half a file."""
    write_text_atomic(path, json.dumps(data, indent=indent))


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` atomically (temporary file, fsync, rename): a crash leaves the old file or the new."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    with naming_os_errors(path), removed_on_error(tmp):
        with tmp.open("w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)


def write_pt(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    with naming_os_errors(path), removed_on_error(tmp):
        torch_save(data, tmp)
        os.replace(tmp, path)


def torch_save(data: Any, path: Path) -> None:
    """``torch.save``; its C++ writer reports a failed write (a full disk) as a RuntimeError, which becomes
    a :class:`UserError` naming ``path``."""
    import torch

    try:
        torch.save(data, path)
    except RuntimeError as err:
        if "write" not in str(err).lower():
            raise
        reason = str(err).strip().splitlines()[0]
        raise UserError(f"cannot write {path} (is the disk full?): {reason}") from None


def feature_key(scene_id: str, obj_idx: int) -> str:
    """Key of one object's feature in the 3D/2D feature dicts, e.g. ``scene0000_00_07``."""
    return f"{scene_id}_{obj_idx:02}"
