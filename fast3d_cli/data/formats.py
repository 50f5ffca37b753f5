"""Readers and writers for the on-disk Chat-Scene formats (spec §2.2-§2.4).

Every ``.pt`` file is read with ``torch.load(weights_only=True)``: annotation data never needs pickled code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fast3d_cli.errors import DataFileError


def _require(path: Path) -> Path:
    if not path.is_file():
        raise DataFileError(f"data file not found: {path}")
    return path


def read_json(path: Path) -> Any:
    _require(path)
    try:
        with path.open(encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, json.JSONDecodeError) as err:
        raise DataFileError(f"cannot read JSON file {path}: {err}") from None


def read_pt(path: Path) -> Any:
    """Load a tensor file safely (no pickled code is executed)."""
    import pickle

    import torch

    _require(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataFileError(f"cannot load {path} with weights_only=True: {first_line}") from None


def write_json(path: Path, data: Any, indent: int | None = None) -> None:
    """Write JSON atomically (temporary file + rename), so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    with tmp.open("w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=indent)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_pt(path: Path, data: Any) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    torch.save(data, tmp)
    os.replace(tmp, path)


def feature_key(scene_id: str, obj_idx: int) -> str:
    """Key of one object's feature in the 3D/2D feature dicts, e.g. ``scene0000_00_07``."""
    return f"{scene_id}_{obj_idx:02}"
