"""Where a GAP network comes from (our directory, or an official ``checkpoint_best.pth`` + a RoBERTa folder),
and GAP config overrides given as a JSON file."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fast3d_cli.errors import UserError
from fast3d_cli.evaluation.fingerprint import files_fingerprint
from fast3d_cli.gap.configuration import CONFIG_NAME, GAPConfig

TRAINING_RECORD = "training.json"


def read_config_overrides(path: Path | None) -> dict[str, Any]:
    """A JSON object of :class:`GAPConfig` fields (``text_config`` is merged key by key); {} for None."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise UserError(f"GAP config file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {path}: {err}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} should hold a JSON object of GAP config fields")
    return data


def apply_overrides(base: GAPConfig, overrides: dict[str, Any]) -> GAPConfig:
    """``base`` with ``overrides`` applied; unknown fields and invalid values are user errors."""
    known = set(GAPConfig.__dataclass_fields__)
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise UserError(
            f"unknown GAP config field(s): {', '.join(unknown)}; valid: {', '.join(sorted(known))}"
        )
    data = base.to_dict()
    data.update({k: v for k, v in overrides.items() if k != "text_config"})
    if overrides.get("text_config"):
        data["text_config"] = {**data["text_config"], **overrides["text_config"]}
    try:
        return GAPConfig.from_dict(data)
    except (TypeError, ValueError) as err:
        raise UserError(f"invalid GAP config: {err}") from None


@dataclass(frozen=True)
class GAPSource:
    """A trained GAP network: ``gap_dir`` (``save_gap`` format) or an official ``checkpoint`` with the
    ``roberta`` folder it was trained with (and optionally a ``config_file`` of non-default dimensions).
    ``trust_checkpoint`` loads ``checkpoint`` with full pickle (``weights_only=False``): it runs the file's
    code."""

    gap_dir: Path | None = None
    checkpoint: Path | None = None
    roberta: Path | None = None
    config_file: Path | None = None
    trust_checkpoint: bool = False

    @classmethod
    def from_path(
        cls,
        path: Path,
        roberta: Path | None = None,
        config_file: Path | None = None,
        trust_checkpoint: bool = False,
    ) -> GAPSource:
        path = Path(path)
        if path.is_dir():
            if roberta is not None or config_file is not None:
                raise UserError(
                    "--roberta and --gap-config apply to an official .pth checkpoint, not a GAP dir"
                )
            if not (path / CONFIG_NAME).is_file():
                raise UserError(f"not a GAP directory (no {CONFIG_NAME}): {path}")
            return cls(gap_dir=path)
        if path.is_file():
            if roberta is None:
                raise UserError(
                    f"{path} is a checkpoint file: an official GAP checkpoint needs --roberta DIR (the local "
                    "RoBERTa folder it was trained with, e.g. roberta-base)"
                )
            if not Path(roberta).is_dir():
                raise UserError(f"RoBERTa folder not found: {roberta}")
            return cls(
                checkpoint=path,
                roberta=Path(roberta),
                config_file=config_file,
                trust_checkpoint=trust_checkpoint,
            )
        raise UserError(f"GAP network not found: {path}")

    @property
    def is_official(self) -> bool:
        return self.checkpoint is not None

    def files(self) -> list[Path]:
        if self.gap_dir is not None:
            d = Path(self.gap_dir)
            return [
                d / CONFIG_NAME,
                d / "model.safetensors",
                *[p for p in [d / "tokenizer.json"] if p.is_file()],
            ]
        roberta = Path(self.roberta)
        extra = [roberta / n for n in ("config.json", "tokenizer.json", "vocab.json", "merges.txt")]
        files = [Path(self.checkpoint), *[p for p in extra if p.is_file()]]
        return files + ([Path(self.config_file)] if self.config_file else [])

    def fingerprint(self) -> str:
        missing = [p for p in self.files() if not p.is_file()]
        if missing:
            raise UserError(f"GAP file not found: {missing[0]}")
        return files_fingerprint(self.files())

    def config(self) -> GAPConfig | None:
        """The config an official checkpoint is loaded with (None: official defaults + RoBERTa config)."""
        if self.config_file is None:
            return None
        from fast3d_cli.gap.configuration import text_config_from_dir

        overrides = read_config_overrides(self.config_file)
        base = GAPConfig(text_config=text_config_from_dir(Path(self.roberta)))
        if "text_config" in overrides:  # a complete config (e.g. a GAP config.json) replaces the text config
            base.text_config = {}
        return apply_overrides(base, {k: v for k, v in overrides.items() if k != "model_type"})

    def load(self, device: str = "cpu") -> tuple[Any, Any]:
        """(model in eval mode on ``device``, tokenizer)."""
        from fast3d_cli.gap.io import load_gap, load_official_gap_checkpoint

        if self.gap_dir is not None:
            return load_gap(Path(self.gap_dir), device=device)
        model, tokenizer = load_official_gap_checkpoint(
            Path(self.checkpoint), Path(self.roberta), self.config(), trust=self.trust_checkpoint
        )
        return model.to(device), tokenizer

    def training_record(self) -> dict[str, Any] | None:
        """The ``training.json`` written by ``fast3d train-gap`` beside the weights, if any."""
        if self.gap_dir is None:
            return None
        path = Path(self.gap_dir) / TRAINING_RECORD
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": "official" if self.is_official else "fast3d"}
        if self.gap_dir is not None:
            out["path"] = str(Path(self.gap_dir).resolve())
        else:
            out["path"] = str(Path(self.checkpoint).resolve())
            out["roberta"] = str(Path(self.roberta).resolve())
            if self.config_file is not None:
                out["config_file"] = str(Path(self.config_file).resolve())
        out["fingerprint"] = self.fingerprint()
        return out
