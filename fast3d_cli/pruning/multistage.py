"""Multi-stage pruning methods: visual tokens leave at several layers (the engine's drop points).

``pyramiddrop``
    PyramidDrop (Xing et al., "PyramidDrop: Accelerating Your Large Vision-Language Models via Pyramid
    Visual Redundancy Reduction", CVPR 2025; code github.com/Cooperx521/PyramidDrop, ``pdrop_rank_drop`` in
    ``llava/model/modeling_llama_pdrop.py``). At each layer ``l`` of the layer list (official: 8, 16, 24 of
    32; here by default the quarters of the depth) the visual tokens are ranked by the attention that layer
    ``l``'s own self-attention gives from the LAST prompt token (the last instruction token) to them: its
    input norm and query/key projections (with RoPE) applied to the hidden states entering layer ``l``,
    float32 softmax over the causal, valid keys, cast to the model dtype, mean over heads. The top
    ``int(n * lambda**i)`` of the ORIGINAL count ``n`` stay after drop ``i`` (official
    ``image_token_ratio_list`` [lambda, lambda^2, lambda^3], lambda = 0.5); kept tokens keep their order.
    Ties: the lower token index first (the official ``topk`` leaves them unspecified).
``adatoken3d``
    AdaToken-3D (Zhang et al., "AdaToken-3D: Dynamic Spatial Gating for Efficient 3D Large
    Multimodal-Models Reasoning", arXiv 2505.12782; no public code). Spatial contribution = the head-mean
    attention that the instruction tokens (every prompt token after the visual span) pay to each visual
    token at layer ``l - 1``, averaged over those tokens; at every drop layer the tokens whose contribution
    is below ``threshold`` times the strongest surviving token's are gated out (adaptive, per sample; the
    paper reports most spatial tokens contribute < 5%, hence the default 0.05). With --keep / --ratio /
    --stage-ratio the same scores follow a fixed PyramidDrop-style schedule instead.

Budgets (both methods): ``--keep N`` = groups kept after the LAST drop, earlier drops keep the geometric
schedule ``round(n * lambda**i)`` with ``lambda = (N / n)^(1 / drops)``; ``--ratio R`` = the layer-averaged
pruning ratio in percent (the same definition as for every method, §5.7, counting each stage's length),
met by the geometric schedule closest to it; ``--stage-ratio lambda`` = PyramidDrop's own
parameterisation. At object granularity the scores of an object's tokens are summed and whole objects are
kept or dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from fast3d_cli.errors import UserError
from fast3d_cli.pruning.budgets import (
    check_drop_layers,
    check_ratio,
    default_drop_layers,
    geometric_keep_counts,
    ratio_keep_counts,
    stage_keep_counts,
)

if TYPE_CHECKING:
    from fast3d_cli.pruning.engine import DropPoint
    from fast3d_cli.pruning.methods import Budget, MethodSpec, PruningSettings

DEFAULT_THRESHOLD = 0.05


@dataclass(frozen=True)
class StageScoring:
    """How a multi-stage method scores at a drop point (see :class:`~fast3d_cli.pruning.engine.DropPoint`)."""

    query: str  # "last" or "instruction"
    attention: str  # "previous" (layer l-1) or "next" (layer l's projections on its input)


STAGE_SCORING: dict[str, StageScoring] = {
    "pyramiddrop": StageScoring("last", "next"),
    "adatoken3d": StageScoring("instruction", "previous"),
}


def validate_multistage(spec: MethodSpec, settings: PruningSettings, n_layers: int | None) -> MethodSpec:
    """The option checks of a multi-stage method (exit 2 on a bad value)."""
    given = {
        "--keep": settings.keep,
        "--ratio": settings.ratio,
        "--stage-ratio": settings.stage_ratio,
        "--threshold": settings.threshold,
    }
    allowed = ["--keep", "--ratio", "--stage-ratio"] + (["--threshold"] if spec.threshold else [])
    chosen = [name for name, value in given.items() if value is not None]
    if len(chosen) != 1 or chosen[0] not in allowed:
        raise UserError(f"--method {spec.name} needs exactly one of {', '.join(allowed)}")
    if settings.layer != 0:
        raise UserError(f"--method {spec.name} drops at several layers: give them with --layers, not --layer")
    if settings.alpha is not None or settings.maps is not None or settings.gap is not None:
        raise UserError(f"--alpha/--maps/--gap do not apply to --method {spec.name}")
    if settings.fixed_count:
        raise UserError("--fixed-count applies to the +sap methods with --maps")
    if settings.keep is not None and settings.keep < 0:
        raise UserError(f"--keep must be >= 0, got {settings.keep}")
    if settings.ratio is not None:
        check_ratio(settings.ratio)
    if settings.stage_ratio is not None:
        stage_keep_counts(1, settings.stage_ratio, 1)  # range check
    if settings.threshold is not None and not 0.0 <= settings.threshold <= 1.0:
        raise UserError(f"--threshold must be in [0, 1], got {settings.threshold}")
    if settings.layers is not None:
        layers = check_drop_layers(settings.layers, n_layers)
        if layers[0] < spec.min_layer:
            raise UserError(f"{spec.name} scores with layer l-1 attention: every --layers entry must be >= 1")
    elif n_layers is not None and not default_drop_layers(n_layers):
        raise UserError(f"a {n_layers}-layer model has no layer to drop at; give --layers")
    return spec


def resolve_multistage_budget(
    spec: MethodSpec, settings: PruningSettings, n_layers: int, group: int, n_groups: int
) -> Budget:
    from fast3d_cli.pruning.methods import Budget

    layers = tuple(settings.layers) if settings.layers is not None else default_drop_layers(n_layers)
    layers = check_drop_layers(layers, n_layers)
    base = {"layer": layers[0], "group": group, "n_groups": n_groups, "n_layers": n_layers, "layers": layers}
    if settings.threshold is not None:
        return Budget(**base, threshold=float(settings.threshold))
    if settings.keep is not None:
        if settings.keep > n_groups:
            raise UserError(
                f"--keep {settings.keep} exceeds the {n_groups} {settings.granularity}s per sample"
            )
        counts = geometric_keep_counts(n_groups, settings.keep, len(layers))
    elif settings.ratio is not None:
        counts = ratio_keep_counts(settings.ratio, n_groups, layers, n_layers)
    else:
        counts = stage_keep_counts(n_groups, float(settings.stage_ratio), len(layers))
    return Budget(**base, keep=counts[-1], stage_keep=counts)


def drop_points(method: str, budget: Budget, rows: int) -> list[DropPoint]:
    """The engine's drop points for a batch of ``rows`` samples under a resolved multi-stage budget."""
    from fast3d_cli.pruning.engine import DropPoint

    scoring = STAGE_SCORING[method]
    points = []
    for i, layer in enumerate(budget.layers):
        if budget.threshold is not None:
            rule = {"threshold": torch.full((rows,), budget.threshold, dtype=torch.float32)}
        else:
            rule = {"keep": torch.full((rows,), budget.stage_keep[i], dtype=torch.long)}
        points.append(DropPoint(layer, query=scoring.query, attention=scoring.attention, **rule))
    return points


def plan_fields(points: list[DropPoint]) -> dict[str, object]:
    """:class:`~fast3d_cli.pruning.engine.PruningPlan` keyword arguments for ``points`` (first + later)."""
    first = points[0]
    return {
        "layer": first.layer,
        "keep": first.keep,
        "threshold": first.threshold,
        "query": first.query,
        "attention": first.attention,
        "later": tuple(points[1:]),
    }


def per_sample(value: Tensor | int | float, rows: int, dtype: torch.dtype) -> Tensor:
    tensor = torch.as_tensor(value, dtype=dtype)
    return tensor.expand(rows).clone() if tensor.ndim == 0 else tensor
