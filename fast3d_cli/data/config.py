"""Where the data lives: an annotation root plus the Chat-Scene file names (spec §2.1).

Precedence: built-in defaults < ``[data]`` table of a ``fast3d.toml`` < explicit overrides (CLI flags).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from fast3d_cli.errors import UserError

SAMPLE_DATA_ENV = "FAST3D_SAMPLE_DATA"


def sample_data_dir() -> Path:
    """The embedded sample world: $FAST3D_SAMPLE_DATA, the checkout next to the package, or ./sample_data."""
    if os.environ.get(SAMPLE_DATA_ENV):
        return Path(os.environ[SAMPLE_DATA_ENV])
    beside_package = Path(__file__).resolve().parents[2] / "sample_data"
    if beside_package.is_dir():
        return beside_package
    return Path.cwd() / "sample_data"


@dataclass(frozen=True)
class DataConfig:
    """Annotation root and file names. ``{split}`` in a name is replaced by ``train`` or ``val``."""

    root: Path = field(default_factory=lambda: sample_data_dir() / "annotations")
    feats_3d: str = "scannet_mask3d_uni3d_feats.pt"
    feats_2d: str = "scannet_mask3d_videofeats.pt"
    proposal_attributes: str = "scannet_mask3d_{split}_attributes.pt"
    gt_attributes: str = "scannet_{split}_attributes.pt"
    scan2cap_corpus: str = "scan2cap_val_corpus.json"
    scanrefer_lookup: str = "scanrefer_unique_multiple_lookup.json"
    max_obj_num: int = 100

    def path(self, name: str, split: str | None = None) -> Path:
        return self.root / (name.format(split=split) if split else name)

    def annotation_path(self, task: str, split: str) -> Path:
        from fast3d_cli.data.tasks import get_task

        return self.root / get_task(task).annotation_file(split)

    def with_overrides(self, **overrides: Any) -> DataConfig:
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise UserError(
                f"unknown data setting(s): {', '.join(unknown)}; valid: {', '.join(sorted(known))}"
            )
        clean = {k: (Path(v) if k == "root" else v) for k, v in overrides.items() if v is not None}
        return replace(self, **clean)

    @classmethod
    def from_toml(cls, path: Path | None, **overrides: Any) -> DataConfig:
        """Defaults, then the ``[data]`` table of ``path`` (if given), then ``overrides``."""
        config = cls()
        if path is not None:
            config = config.with_overrides(**data_table(path, read_toml(path)))
        return config.with_overrides(**overrides)


def data_setting_problem(key: str, value: Any) -> str | None:
    """Why ``value`` cannot be the ``[data]`` setting ``key`` (None: it can)."""
    known = [f.name for f in fields(DataConfig)]
    if key not in known:
        return f"unknown key; valid: {', '.join(known)}"
    if key == "max_obj_num":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            return "must be an integer >= 1"
        return None
    if not isinstance(value, str) or not value.strip():
        return "must be a non-empty path string" if key == "root" else "must be a non-empty file name string"
    if key != "root":
        try:
            value.format(split="train")
        except (KeyError, IndexError, ValueError):
            return "may hold no {placeholder} other than {split}"
    return None


def data_table(path: Path, toml: dict[str, Any]) -> dict[str, Any]:
    """The checked ``[data]`` table of the config file ``path`` (read as ``toml``), ``root`` resolved
    against the file's folder. A bad value is one :class:`UserError` naming the file, table and key."""
    table = toml.get("data", {})
    if not isinstance(table, dict):
        raise UserError(f"{path} [data]: must be a table, got {table!r}")
    for key, value in table.items():
        problem = data_setting_problem(key, value)
        if problem is not None:
            raise UserError(f"{path} [data] {key} = {value!r}: {problem}")
    if "root" in table:
        table = {**table, "root": (path.parent / table["root"]).resolve()}
    return table


def read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"invalid TOML in {path}: {err}") from None
