"""``--model-family`` (and the llava family's ``--qa-file``) of ``fast3d eval`` and ``fast3d extract``.

:func:`family_handler` checks the family and the method together, before anything imports torch, and
returns the family's own command handler (None for the built-in Chat-Scene path).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

ModelFamilyOption = Annotated[
    str,
    typer.Option(
        "--model-family",
        help="Target model family: chatscene (3D scenes) or llava (HF LLaVA/Video-LLaVA, docs/llava.md).",
    ),
]
QAFileOption = Annotated[
    Path | None,
    typer.Option("--qa-file", help="llava family: image/video QA JSON Lines file (docs/llava.md)."),
]

RenumberPositionsOption = Annotated[
    bool,
    typer.Option(
        help="llava family, --method fastervlm: drop the pruned image tokens before the language model and "
        "renumber positions, as the official FasterVLM does (default: pruned inside it, positions kept).",
        rich_help_panel="Pruning",
    ),
]
LLAVA_ONLY = {"qa_file": "--qa-file", "renumber_positions": "--renumber-positions"}


def family_handler(command: str, options: dict[str, Any]) -> Callable[[dict[str, Any]], None] | None:
    """The handler of ``command`` ("eval" or "extract") for ``options["model_family"]``, after checking
    that ``options["method"]`` (``none`` when the command has none) fits that family."""
    from fast3d_cli.errors import UserError
    from fast3d_cli.models.families import family_and_method

    family = family_and_method(options["model_family"], options.get("method", "none"))
    handler = family.handler(command)
    if handler is None:
        for name, option in LLAVA_ONLY.items():
            if options.get(name) not in (None, False):
                raise UserError(f"{option} does not apply to --model-family {family.name}")
    return handler
