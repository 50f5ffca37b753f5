"""The model-family registry: which target models ``--model-family`` names, and which methods fit each.

A family is a kind of target model with its own loader, data format and adapter
(:mod:`fast3d_cli.models.adapter`): ``chatscene`` (the reference, object features of 3D scenes) and
``llava`` (Hugging Face ``LlavaForConditionalGeneration`` / ``VideoLlavaForConditionalGeneration``
checkpoints on image/video QA, docs/llava.md). The methods a family accepts are those whose
:class:`~fast3d_cli.pruning.methods.MethodSpec` lists it in ``families``.

This module imports neither torch nor transformers: the CLI checks ``--model-family`` and ``--method``
here before any model loads. A family's commands are named as ``"module:function"`` and imported on use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fast3d_cli.errors import UserError
from fast3d_cli.pruning.methods import METHODS, MethodSpec

DEFAULT_FAMILY = "chatscene"


@dataclass(frozen=True)
class ModelFamily:
    """A target-model family. ``eval_command``/``extract_command``: ``"module:function"`` of the CLI
    handlers of ``fast3d eval``/``fast3d extract`` for it (None: the commands' built-in Chat-Scene path)."""

    name: str
    help: str
    eval_command: str | None = None
    extract_command: str | None = None

    def methods(self) -> list[str]:
        return [name for name, spec in METHODS.items() if self.name in spec.families]

    def handler(self, command: str) -> Callable[..., Any] | None:
        target = {"eval": self.eval_command, "extract": self.extract_command}[command]
        if target is None:
            return None
        module, function = target.split(":")
        return getattr(importlib.import_module(module), function)


FAMILIES: dict[str, ModelFamily] = {
    family.name: family
    for family in (
        ModelFamily("chatscene", "Chat-Scene (Vicuna reading 3D object features), the reference family"),
        ModelFamily(
            "llava",
            "Hugging Face LLaVA / Video-LLaVA checkpoints on image or video QA (docs/llava.md)",
            eval_command="fast3d_cli.cli.llava_commands:llava_eval",
            extract_command="fast3d_cli.cli.llava_commands:llava_extract",
        ),
    )
}


def get_family(name: str) -> ModelFamily:
    if name not in FAMILIES:
        raise UserError(f"unknown --model-family {name!r}; choose one of {', '.join(FAMILIES)}")
    return FAMILIES[name]


def check_method(family: ModelFamily, method: str) -> MethodSpec:
    """The method's spec, if it exists and fits ``family`` (else one clear :class:`UserError` line)."""
    if method not in METHODS:
        raise UserError(f"unknown --method {method!r}; choose one of {', '.join(METHODS)}")
    spec = METHODS[method]
    if family.name not in spec.families:
        fits = ", ".join(family.methods())
        raise UserError(
            f"--method {method} does not fit --model-family {family.name} (it fits "
            f"{', '.join(spec.families)}); methods for {family.name}: {fits}"
        )
    return spec


def family_and_method(family: str, method: str) -> ModelFamily:
    """Check ``--model-family`` and ``--method`` together (before torch is imported)."""
    found = get_family(family)
    check_method(found, method)
    return found
