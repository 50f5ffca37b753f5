"""Pruned generation and attention-map extraction for any :class:`~fast3d_cli.models.adapter.TargetAdapter`.

The methods are those of :data:`fast3d_cli.pruning.methods.METHODS`, ``fastervlm`` included (the vision
tower's [CLS] attention, for adapters that offer ``cls_attention_scores``). Scores are per pruning unit
(``AdapterInputs.group`` tokens); the budget is ``keep`` units per sample or, for the ``+sap`` methods, the
SAP mass ``alpha``. Pruning runs in :class:`~fast3d_cli.pruning.engine.PrunedDecoder` (real removal at
layer ``layer``), dense generation in :class:`~fast3d_cli.generation.HFCausalLMDecoder`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fast3d_cli.generation import GenerationConfig, HFCausalLMDecoder, generate
from fast3d_cli.models.adapter import AdapterInputs, ClsAttentionAdapter, TargetAdapter
from fast3d_cli.pruning.engine import PrunedDecoder, PruningPlan
from fast3d_cli.pruning.methods import METHODS, MethodSpec
from fast3d_cli.pruning.scorers import divprune_scores, random_scores, to_granularity

GENERIC_METHODS: dict[str, MethodSpec] = {
    name: spec for name, spec in METHODS.items() if spec.budget != "anchored"  # needs Chat-Scene prompts
}

PerSample = int | float | Sequence[int] | Sequence[float] | Tensor | None  # one value, or one per sample


@dataclass
class ScoreContext:
    """What a scorer may look at for one batch. ``keep`` [B] units (fixed budgets) or None."""

    adapter: TargetAdapter[Any]
    batch: Any
    inputs: AdapterInputs
    keep: Tensor | None
    seed: int
    maps: Tensor | None


def _random(ctx: ScoreContext) -> Tensor:
    return random_scores(ctx.adapter.sample_keys(ctx.batch), ctx.inputs.n_units, ctx.seed)  # type: ignore[arg-type]


def _fastv(ctx: ScoreContext) -> None:
    return None  # the engine scores from layer K-1 attention during prefill


def _divprune(ctx: ScoreContext) -> Tensor:
    steps = ctx.inputs.n_units if ctx.keep is None else int(ctx.keep.max())  # greedy picks are prefixes
    return divprune_scores(ctx.adapter.visual_embeddings(ctx.inputs), steps)


def _maps(ctx: ScoreContext) -> Tensor:
    expected = (ctx.inputs.inputs_embeds.shape[0], ctx.inputs.n_units)
    if ctx.maps is None or tuple(ctx.maps.shape) != expected:
        got = None if ctx.maps is None else tuple(ctx.maps.shape)
        raise ValueError(f"this method needs maps of shape [B, n_units] = {list(expected)}, got {got}")
    return ctx.maps.float()


def _cls(ctx: ScoreContext) -> Tensor:
    if not isinstance(ctx.adapter, ClsAttentionAdapter):
        raise ValueError(f"{type(ctx.adapter).__name__} has no vision-tower [CLS] attention: no fastervlm")
    return to_granularity(ctx.adapter.cls_attention_scores(ctx.batch, ctx.keep), 1, ctx.inputs.group)


def _cdpruner(ctx: ScoreContext) -> Tensor:
    """CDPruner over the adapter's units (docs/methods-before-llm.md): similarity of ``visual_embeddings``,
    relevance of each unit's mean token embedding to the mean embedding of the text after the visual
    tokens (the question, with the adapter's role markers)."""
    from fast3d_cli.pruning.selection import cdpruner_scores

    features = ctx.adapter.visual_embeddings(ctx.inputs)
    embeds, mask = ctx.inputs.inputs_embeds, ctx.inputs.attention_mask.to(ctx.inputs.inputs_embeds.device)
    batch, units, hidden = features.shape[0], features.shape[1], embeds.shape[-1]
    after = (
        torch.arange(embeds.shape[1], device=embeds.device)[None]
        >= ctx.inputs.text_start.to(embeds.device)[:, None]
    )
    weight = (after & mask.bool()).float()[..., None]
    text = ((embeds.float() * weight).sum(1) / weight.sum(1).clamp(min=1))[:, None]
    steps = ctx.inputs.n_units if ctx.keep is None else int(ctx.keep.max())
    return cdpruner_scores(features, features.reshape(batch, units, -1, hidden).mean(2), text, steps)


def _coverage(ctx: ScoreContext) -> Tensor:
    raise ValueError("coverage needs the objects' 3D boxes: run it through fast3d eval (Chat-Scene data)")


SCORERS: dict[str, Callable[[ScoreContext], Tensor | None]] = {
    "random": _random,
    "fastv": _fastv,
    "divprune": _divprune,
    "maps": _maps,
    "cls": _cls,
    "cdpruner": _cdpruner,
    "coverage": _coverage,
}


@dataclass
class GenerationResult:
    """Generated ids (EOS excluded) and texts per sample, with the units and tokens each one kept."""

    ids: list[list[int]]
    texts: list[str]
    kept_units: list[int]
    kept_tokens: list[int]


def get_generic_method(name: str) -> MethodSpec:
    if name not in GENERIC_METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(GENERIC_METHODS)}")
    return GENERIC_METHODS[name]


def _per_sample(value: PerSample, rows: int, dtype: torch.dtype) -> Tensor | None:
    if value is None:
        return None
    tensor = torch.as_tensor(value, dtype=dtype)
    return tensor.expand(rows).clone() if tensor.ndim == 0 else tensor


def check_budget(
    spec: MethodSpec, keep: Tensor | None, alpha: Tensor | None, layer: int, n_units: int
) -> None:
    wanted = {"none": (False, False), "fixed": (True, False), "sap": (False, True)}[spec.budget]
    if (keep is not None, alpha is not None) != wanted:
        need = {"none": "neither keep nor alpha", "fixed": "keep", "sap": "alpha"}[spec.budget]
        raise ValueError(f"method {spec.name} takes {need}")
    if layer < spec.min_layer:
        raise ValueError(f"{spec.name} scores with layer K-1 attention: use layer >= {spec.min_layer}")
    if keep is not None and not bool(((keep >= 0) & (keep <= n_units)).all()):
        raise ValueError(f"keep must be in [0, {n_units}] units, got {keep.tolist()}")
    if alpha is not None and not bool(((alpha > 0) & (alpha <= 1)).all()):
        raise ValueError(f"alpha must be in (0, 1], got {alpha.tolist()}")


def pruning_plan(
    adapter: TargetAdapter[Any],
    batch: Any,
    inputs: AdapterInputs,
    method: str,
    *,
    keep: PerSample = None,
    alpha: PerSample = None,
    layer: int = 0,
    seed: int = 0,
    maps: Tensor | None = None,
    layers: Sequence[int] | None = None,
    stage_keep: Sequence[PerSample] | None = None,
    threshold: PerSample = None,
) -> PruningPlan | None:
    """The engine's plan for one built batch (None for ``none``, the dense model). Multi-stage methods
    (``pyramiddrop``, ``adatoken3d``) drop at ``layers`` and take ``stage_keep`` (units kept after each drop,
    each an int or one per sample) or, for ``adatoken3d``, the adaptive ``threshold``."""
    spec = get_generic_method(method)
    rows = inputs.inputs_embeds.shape[0]
    if spec.multistage:
        return _multistage_plan(spec, inputs, layers, stage_keep, threshold)
    keep_t, alpha_t = _per_sample(keep, rows, torch.long), _per_sample(alpha, rows, torch.float32)
    check_budget(spec, keep_t, alpha_t, layer, inputs.n_units)
    if spec.budget == "none":
        return None
    scores = SCORERS[spec.scorer](ScoreContext(adapter, batch, inputs, keep_t, seed, maps))
    return PruningPlan(
        layer=layer,
        visual_start=inputs.visual_start,
        n_groups=inputs.n_units,
        group=inputs.group,
        scores=scores,
        keep=keep_t,
        alpha=alpha_t,
    )


def _multistage_plan(
    spec: MethodSpec,
    inputs: AdapterInputs,
    layers: Sequence[int] | None,
    stage_keep: Sequence[PerSample] | None,
    threshold: PerSample,
) -> PruningPlan:
    from fast3d_cli.pruning.engine import DropPoint
    from fast3d_cli.pruning.multistage import STAGE_SCORING, plan_fields

    rows = inputs.inputs_embeds.shape[0]
    one_budget = (stage_keep is None) != (threshold is None)
    if not layers or not one_budget or (threshold is not None and not spec.threshold):
        need = "stage_keep or threshold" if spec.threshold else "stage_keep"
        raise ValueError(f"method {spec.name} takes layers and exactly one of {need}")
    if stage_keep is not None and len(stage_keep) != len(layers):
        raise ValueError(f"stage_keep needs one budget per drop layer ({len(layers)})")
    scoring = STAGE_SCORING[spec.scorer]
    points = []
    for i, layer in enumerate(layers):
        if stage_keep is not None:
            budget = {"keep": _per_sample(stage_keep[i], rows, torch.long)}
        else:
            budget = {"threshold": _per_sample(threshold, rows, torch.float32)}
        points.append(DropPoint(layer, query=scoring.query, attention=scoring.attention, **budget))
    return PruningPlan(
        visual_start=inputs.visual_start,
        n_groups=inputs.n_units,
        group=inputs.group,
        **plan_fields(points),  # type: ignore[arg-type]
    )


def prune_generate(
    adapter: TargetAdapter[Any],
    batch: Any,
    method: str = "none",
    *,
    keep: PerSample = None,
    alpha: PerSample = None,
    layer: int = 0,
    seed: int = 0,
    maps: Tensor | None = None,
    gen: GenerationConfig | None = None,
    **multistage: Any,
) -> GenerationResult:
    """Generate for ``batch`` with ``method`` pruning ``keep`` units per sample (an int or one per sample)
    or with SAP ``alpha`` (``+sap`` methods) at layer ``layer``. ``maps`` [B, n_units]: the oracle/gap
    scores (e.g. from :func:`extract_maps`). ``gen`` defaults to the official eval settings. Multi-stage
    methods take ``layers=`` and ``stage_keep=`` or ``threshold=`` (see :func:`pruning_plan`)."""
    gen = gen or GenerationConfig()
    with torch.inference_mode():
        inputs = adapter.build_inputs(batch)
        plan = pruning_plan(
            adapter, batch, inputs, method, keep=keep, alpha=alpha, layer=layer, seed=seed, maps=maps,
            **multistage,
        )  # fmt: skip
        llm = adapter.language_model
        decoder = HFCausalLMDecoder(llm) if plan is None else PrunedDecoder(llm, plan)
        ids = generate(
            decoder,
            inputs.inputs_embeds,
            inputs.attention_mask,
            gen,
            adapter.eos_token_id,
            adapter.bos_token_id,
        )
    kept_units, kept_tokens = _kept(decoder, inputs)
    return GenerationResult(ids, adapter.decode(ids), kept_units, kept_tokens)


def _kept(decoder: Any, inputs: AdapterInputs) -> tuple[list[int], list[int]]:
    report = getattr(decoder, "report", None)
    rows = inputs.inputs_embeds.shape[0]
    if report is None:
        return [inputs.n_units] * rows, [inputs.n_visual] * rows
    return report.kept_groups.tolist(), (report.kept_visual >= 0).sum(-1).tolist()


def extract_maps(adapter: TargetAdapter[Any], batch: Any, answers: Sequence[str]) -> Tensor:
    """[B, n_units] attention maps (the ``object_scores`` of ``fast3d extract``): teacher-forced prefill of
    prompt + answer; head- and layer-mean attention of every row after the visual tokens (from
    ``text_start``) to each visual token, summed per unit, averaged over those rows."""
    from fast3d_cli.attention.maps import adapter_maps

    with torch.inference_mode():
        inputs = adapter.build_inputs(batch, answers)
        text_len = inputs.attention_mask.shape[1] - inputs.text_start
        if bool((text_len < 1).any()):
            raise ValueError("every sample needs text after its visual tokens to extract maps from")
        maps = adapter_maps(adapter, inputs, text_len, text_len)
    return maps.object_scores
