"""GAP checkpoints: our directory format and the official Fast3D ``checkpoint_best.pth``.

Our format is a directory::

    gap/
      config.json            GAPConfig (model_type "fast3d_gap")
      model.safetensors      the state dict, official key names
      tokenizer.json …       the text tokenizer (``tokenizer.save_pretrained``)

Official checkpoints are ``{"step", "optimizer_state_dict", "model_state_dict"}`` files written by
``torch.save``; they are read without running pickled code (:func:`fast3d_cli.checkpoints.load_checkpoint`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from fast3d_cli.errors import CheckpointError, UserError, naming_os_errors, removed_on_error
from fast3d_cli.gap.configuration import CONFIG_NAME, GAPConfig, text_config_from_dir
from fast3d_cli.gap.modeling import GAPModel

WEIGHTS_NAME = "model.safetensors"
MAX_LISTED = 5

# Buffers that transformers < 4.31 saved with RoBERTa and later versions no longer persist: an official
# checkpoint may carry them. They are constants (arange / zeros), so dropping them loses nothing.
_LEGACY_BUFFERS = ("text_encoder.embeddings.position_ids", "text_encoder.embeddings.token_type_ids")


def save_gap(model: GAPModel, tokenizer: Any, directory: Path) -> Path:
    """Write ``model`` (and ``tokenizer`` unless None) to ``directory``; ``config.json`` is written last."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    _atomic(directory / WEIGHTS_NAME, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))
    text = json.dumps(model.config.to_dict(), indent=2) + "\n"
    _atomic(directory / CONFIG_NAME, lambda tmp: tmp.write_text(text))
    return directory


def load_gap(directory: Path, device: str | torch.device = "cpu") -> tuple[GAPModel, Any]:
    """Load a directory written by :func:`save_gap`: (model in eval mode, tokenizer)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    config = GAPConfig.load(directory)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise UserError(f"no {WEIGHTS_NAME} in GAP directory {directory}")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"cannot read {weights}: {err}") from None
    model = GAPModel(config)
    load_state_strict(model, state, str(weights))
    tokenizer = load_tokenizer(directory, config)
    return model.to(device).eval(), tokenizer


def load_official_gap_checkpoint(
    path: Path, roberta_dir: Path, config: GAPConfig | None = None, trust: bool = False
) -> tuple[GAPModel, Any]:
    """Load an official Fast3D GAP checkpoint (``checkpoint_best.pth``): (model in eval mode, tokenizer).

    ``roberta_dir`` is the local RoBERTa folder the checkpoint was trained with: its tokenizer is used and,
    when ``config`` is None, its ``config.json`` gives the text-encoder architecture (the rest of the config
    is the official default). The whole ``model_state_dict`` must fit exactly: missing or unexpected keys and
    shape mismatches raise :class:`CheckpointError` naming them.
    """
    from fast3d_cli.checkpoints import load_checkpoint

    path = Path(path)
    checkpoint = load_checkpoint(path, trust=trust)
    state = checkpoint.get("model_state_dict") if isinstance(checkpoint, Mapping) else None
    if state is None and isinstance(checkpoint, Mapping) and _is_state_dict(checkpoint):
        state = checkpoint  # a bare state dict
    if not isinstance(state, Mapping) or not _is_state_dict(state):
        raise CheckpointError(f"{path} is not a Fast3D GAP checkpoint (no model_state_dict of tensors)")
    if config is None:
        config = GAPConfig(text_config=text_config_from_dir(Path(roberta_dir)))
    model = GAPModel(config)
    expected = model.state_dict()
    state = {k: v for k, v in state.items() if k in expected or k not in _LEGACY_BUFFERS}
    load_state_strict(model, state, f"official GAP checkpoint {path}")
    tokenizer = load_tokenizer(Path(roberta_dir))
    vocab = int(config.text_config.get("vocab_size", 0))
    if len(tokenizer) > vocab:
        raise UserError(f"the tokenizer in {roberta_dir} has {len(tokenizer)} tokens, the encoder {vocab}")
    return model.eval(), tokenizer


def load_tokenizer(directory: Path, config: GAPConfig | None = None) -> Any:
    """The text tokenizer saved in ``directory`` (a Hugging Face tokenizer folder).

    With ``config``, its text-encoder config stands for the folder's ``config.json`` (in a GAP directory that
    file is the GAP config, which ``AutoTokenizer`` would otherwise misread as a model config).
    """
    from transformers import AutoTokenizer

    kwargs = {"config": config.roberta_config()} if config is not None else {}
    try:
        return AutoTokenizer.from_pretrained(str(directory), **kwargs)
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"cannot load a tokenizer from {directory}: {str(err).splitlines()[0]}") from None


def state_dict_problems(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> list[str]:
    """Human-readable differences between ``state`` and ``model``'s state dict (empty: it fits exactly)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} (checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)})"
        for k, v in state.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    problems = []
    for what, names in (
        ("missing key", missing),
        ("unexpected key", unexpected),
        ("shape mismatch", mismatched),
    ):
        if names:
            label = f"{len(names)} {what}" + ("es" if what.endswith("h") else "s") * (len(names) > 1)
            more = f", … ({len(names) - MAX_LISTED} more)" if len(names) > MAX_LISTED else ""
            problems.append(f"{label}: {', '.join(names[:MAX_LISTED])}{more}")
    return problems


def load_state_strict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` that reports every kind of mismatch as a :class:`CheckpointError`."""
    problems = state_dict_problems(model, state)
    if problems:
        raise CheckpointError(f"{source} does not fit the GAP network: {'; '.join(problems)}")
    model.load_state_dict(dict(state), strict=True)


def _is_state_dict(obj: Mapping[Any, Any]) -> bool:
    return bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".partial")
    with naming_os_errors(path), removed_on_error(tmp):
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
