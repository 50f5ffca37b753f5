"""One prefill measurement per pruning method of the registry (``fast3d_cli.pruning.methods.METHODS``) at a
layer-averaged pruning ratio near a target (90% on the GPU), on a batch of Chat-Scene-shaped prompts.

Per method: its **selection time** (what it computes outside the LLM: the scorer on this batch and the
engine's top-k / SAP selection of the first drop, synchronised) and its **pruned prefill time**
(``PrunedDecoder.prefill`` with those scores, synchronised), plus the dense prefill
(``HFCausalLMDecoder.prefill``) once for reference, the layer-averaged and input-level ratios the prefill
actually kept (spec §5.7) and the analytic FLOPs ratio dense / pruned (:mod:`fast3d_cli.pruning.flops`).

Where the scores come from (:data:`SCORE_SOURCES`, by the registry's scorer key):

* computed here by the project's own scorer on synthetic inputs: random (per-sample seeded draws), divprune
  (max-min diversity of the batch's visual embeddings), cdpruner (conditional DPP over the same embeddings,
  the instruction a random vector in the input space), coverage (farthest-point sampling of random box
  centres);
* synthetic score tensors for the methods whose scores come from a store or a network (oracle, gap,
  efficient3d and their SAP variants): random logits [B, 100]; their selection time is the top-k (or SAP)
  alone. The GAP network's own time is the suite's ``gap`` section;
* none outside the LLM (fastv, pyramiddrop, adatoken3d): scored from attention inside the prefill, whose
  time includes it.

A scorer missing from :data:`SCORE_SOURCES` and a method that does not fit Chat-Scene (fastervlm, LLaVA
only) are recorded as skipped with the reason, so a new registry entry shows up rather than vanishing.

Budgets go through the project's ``resolve_budget``: fixed methods ``--ratio R`` at ``--layer`` = the
method's smallest layer (0; fastv 1); the +sap methods ``--alpha`` = the mean softmax mass of the top ``k``
synthetic logits (the official search_alpha's figure), ``k`` the fixed count of ``--ratio R``, so their mean
kept count is near it; the multi-stage methods ``--ratio R`` with three drops at the sixteenths of the depth
(2, 4, 6 of 32): PyramidDrop's quarters (8, 16, 24) reach at most 75%.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from common import Timer, goal

GROUP, N_OBJECTS = 3, 100  # Chat-Scene: object granularity, 3 visual tokens per object
SPEEDUP_TARGET = 1.0  # dense prefill time / (selection + pruned prefill time)
SCENE_EXTENT_M = 8.0  # synthetic box centres: uniform in an 8 m cube


@dataclass(frozen=True)
class Batch:
    """What the scorers read for one batch, built once outside the timed runs."""

    prompts: Any  # pruned_inference.Prompts
    visual: Any  # [B, 300, H] visual token embeddings
    logits: Any  # [B, 100] synthetic object logits (store / network scores)
    instruction: Any  # [B, 1, H] synthetic instruction embedding (CDPruner)
    centers: Any  # [B, 100, 3] synthetic box centres (coverage)

    @property
    def rows(self) -> int:
        return len(self.prompts)


Scorer = Callable[[Batch, Any], Any]  # (batch, resolved Budget) -> scores [B, M]


def _random(batch: Batch, budget: Any) -> Any:
    from fast3d_cli.data import Sample
    from fast3d_cli.pruning.scorers import random_scores

    samples = [Sample("benchmark", "val", i, "scene", 0, "") for i in range(batch.rows)]
    return random_scores(samples, budget.n_groups, seed=0)


def _divprune(batch: Batch, budget: Any) -> Any:
    from fast3d_cli.pruning.scorers import divprune_features, divprune_scores

    return divprune_scores(divprune_features(batch.visual, GROUP, budget.group), budget.keep)


def _cdpruner(batch: Batch, budget: Any) -> Any:
    from fast3d_cli.pruning.pruner import relevance_features
    from fast3d_cli.pruning.scorers import divprune_features
    from fast3d_cli.pruning.selection import cdpruner_scores

    features = divprune_features(batch.visual, GROUP, budget.group)
    relevance = relevance_features(batch.visual, budget.group)
    return cdpruner_scores(features, relevance, batch.instruction, budget.keep)


def _coverage(batch: Batch, budget: Any) -> Any:
    from fast3d_cli.pruning.selection import coverage_scores

    return coverage_scores(batch.centers, budget.keep)


def _maps(batch: Batch, budget: Any) -> Any:
    from fast3d_cli.pruning.scorers import to_granularity

    return to_granularity(batch.logits, GROUP, budget.group)


# scorer key -> (the scorer on this batch, or None when it scores inside the LLM; what the scores are)
SCORE_SOURCES: dict[str, tuple[Scorer | None, str]] = {
    "random": (_random, "computed: random_scores, seeded per sample"),
    "divprune": (_divprune, "computed: divprune_scores on the batch's visual embeddings"),
    "cdpruner": (_cdpruner, "computed: cdpruner_scores on the visual embeddings, random instruction vector"),
    "coverage": (_coverage, "computed: coverage_scores on random box centres"),
    "maps": (_maps, "synthetic score tensor (random logits [B, 100]) in place of the store / network"),
    "fastv": (None, "inside the LLM: layer K-1 attention of the last prompt token"),
    "pyramiddrop": (None, "inside the LLM: each drop layer's attention of the last prompt token"),
    "adatoken3d": (None, "inside the LLM: layer l-1 attention of the instruction tokens"),
}


def early_drop_layers(n_layers: int) -> tuple[int, ...]:
    """Three drops at the sixteenths of the depth (2, 4, 6 of 32), so that ~90% is reachable."""
    return tuple(sorted({max(1, round(n_layers * i / 16)) for i in (1, 2, 3)}))


def settings_for(spec: Any, n_layers: int, ratio: float, logits: Any) -> Any:
    """The command-line settings that put ``spec`` near ``ratio`` percent (layer-averaged)."""
    from fast3d_cli.pruning.budgets import keep_for_ratio, reference_alpha
    from fast3d_cli.pruning.methods import PruningSettings

    if spec.multistage:
        return PruningSettings(spec.name, ratio=ratio, layers=early_drop_layers(n_layers))
    if spec.budget == "sap":
        keep = keep_for_ratio(ratio, spec.min_layer, n_layers, N_OBJECTS)
        alpha = reference_alpha(logits.cpu().numpy(), top=keep)
        return PruningSettings(spec.name, layer=spec.min_layer, alpha=alpha)
    return PruningSettings(spec.name, layer=spec.min_layer, ratio=ratio)


def skip_reason(spec: Any) -> str | None:
    if "chatscene" not in spec.families:
        return f"fits the {'/'.join(spec.families)} family only, not Chat-Scene"
    if spec.budget == "anchored":  # its budgets read the prompts' <OBJnnn> mentions and the scene's boxes
        return "anchored SAP needs real prompts and scenes; its prefill is gap+sap's at the same kept count"
    if spec.scorer not in SCORE_SOURCES:
        return f"no synthetic inputs for scorer {spec.scorer!r}: add it to method_prefill.SCORE_SOURCES"
    return None


def make_batch(prompts: Any, seed: int = 0) -> Batch:
    import torch

    from fast3d_cli.pruning.pruner import visual_embeddings

    device, rows, hidden = prompts.embeds.device, len(prompts), prompts.embeds.shape[-1]
    inputs = SimpleNamespace(inputs_embeds=prompts.embeds, visual_start=prompts.visual_start)
    gen = torch.Generator().manual_seed(seed)
    return Batch(
        prompts=prompts,
        visual=visual_embeddings(inputs, N_OBJECTS * GROUP),
        logits=torch.randn(rows, N_OBJECTS, generator=gen).to(device),
        instruction=(0.02 * torch.randn(rows, 1, hidden, generator=gen)).to(device),
        centers=(SCENE_EXTENT_M * torch.rand(rows, N_OBJECTS, 3, generator=gen)).to(device),
    )


def plan_for(spec: Any, budget: Any, batch: Batch, scores: Any) -> Any:
    """The engine's plan for one method, as ``Pruner.plan`` builds it."""
    import torch

    from fast3d_cli.pruning.engine import PruningPlan

    prompts, rows = batch.prompts, batch.rows
    common = {"visual_start": prompts.visual_start, "n_groups": budget.n_groups, "group": budget.group}
    if spec.multistage:
        from fast3d_cli.pruning.multistage import drop_points, plan_fields

        return PruningPlan(**common, **plan_fields(drop_points(spec.scorer, budget, rows)))  # type: ignore[arg-type]
    keep = None if budget.keep is None else torch.full((rows,), budget.keep, dtype=torch.long)
    alpha = None if budget.alpha is None else torch.full((rows,), budget.alpha, dtype=torch.float32)
    return PruningPlan(layer=budget.layer, scores=scores, keep=keep, alpha=alpha, **common)


def selection_call(scorer: Scorer, batch: Batch, budget: Any, plan: Any) -> Callable[[], Any]:
    """Scoring plus the engine's selection of the first drop, as one call."""
    import torch

    from fast3d_cli.pruning.engine import select_groups

    alive = torch.ones(batch.rows, budget.n_groups, dtype=torch.bool, device=batch.prompts.embeds.device)
    drop = plan.drops[0]
    return lambda: select_groups(drop, scorer(batch, budget), alive)


def kept_figures(llm_config: Any, decoder: Any, budget: Any, batch: Batch) -> dict[str, Any]:
    """The ratios and FLOPs of what the last prefill kept."""
    from fast3d_cli.pruning.flops import prefill_flops
    from fast3d_cli.pruning.methods import kept_summary

    report, n_visual = decoder.report, budget.n_visual
    stages = [[int(n) for n in (kept >= 0).sum(-1).tolist()] for kept in report.stages]  # [drops][B]
    per_sample = [list(column) for column in zip(*stages, strict=True)]  # [B][drops]
    summary = kept_summary([s[-1] for s in per_sample], budget, per_sample if budget.layers else None)
    lengths = batch.prompts.lengths
    layers = list(budget.drop_layers)
    dense = sum(prefill_flops(llm_config, t, 0, 0) for t in lengths)
    pruned = sum(
        prefill_flops(llm_config, t, [n_visual - k for k in s], layers)
        for t, s in zip(lengths, per_sample, strict=True)
    )
    last = [s[-1] for s in per_sample]
    return summary | {
        "kept_tokens_min_max": [min(last), max(last)],
        "flops_ratio_dense_over_pruned": dense / pruned,
    }


def budget_record(budget: Any, settings: Any) -> dict[str, Any]:
    record = {"layer": budget.layer, "keep": budget.keep, "alpha": budget.alpha}
    if budget.layers:
        record |= {"layers": list(budget.layers), "stage_keep": list(budget.stage_keep)}
    given = {"ratio": settings.ratio, "alpha": settings.alpha, "layers": settings.layers}
    options = {k: list(v) if isinstance(v, tuple) else v for k, v in given.items() if v is not None}
    return record | {"options": options}


def measure_method(spec: Any, llm: Any, batch: Batch, timer: Timer, ratio: float) -> dict[str, Any]:
    from fast3d_cli.pruning.engine import PrunedDecoder
    from fast3d_cli.pruning.methods import resolve_budget

    n_layers = llm.config.num_hidden_layers
    settings = settings_for(spec, n_layers, ratio, batch.logits)
    budget = resolve_budget(spec, settings, n_layers, N_OBJECTS, None)
    scorer, source = SCORE_SOURCES[spec.scorer]
    scores = None if scorer is None else scorer(batch, budget)
    plan = plan_for(spec, budget, batch, scores)
    row: dict[str, Any] = {"method": spec.name, "scorer": spec.scorer, "scores": source}
    row["budget"] = budget_record(budget, settings)
    if scorer is not None:
        row["selection"] = _with_min(timer(selection_call(scorer, batch, budget, plan)))
    decoder = PrunedDecoder(llm, plan)
    row["prefill"] = _with_min(timer(lambda: decoder.prefill(batch.prompts.embeds, batch.prompts.mask)[0]))
    return row | kept_figures(llm.config, decoder, budget, batch)


def _with_min(timing: dict[str, Any]) -> dict[str, Any]:
    return timing | {"min_s": min(timing["times_s"])}


def method_cases(llm: Any, prompts: Any, timer_for: Callable[[int], Timer], ratio: float) -> dict[str, Any]:
    """The dense reference and one row per registry method (``timer_for(cases)``: a timer whose cases share
    the section's allowance)."""
    from fast3d_cli.generation import HFCausalLMDecoder
    from fast3d_cli.pruning.methods import METHODS

    batch = make_batch(prompts)
    pruned = {n: s for n, s in METHODS.items() if s.budget != "none"}
    skipped = {n: reason for n, s in pruned.items() if (reason := skip_reason(s)) is not None}
    measured = [s for n, s in pruned.items() if n not in skipped]
    cases = 1 + sum(1 + (SCORE_SOURCES[s.scorer][0] is not None) for s in measured)
    timer = timer_for(cases)
    dense = HFCausalLMDecoder(llm)
    reference = _with_min(timer(lambda: dense.prefill(prompts.embeds, prompts.mask)[0]))
    print(f"[method_prefill] dense: prefill {1000 * reference['median_s']:.3g} ms", file=sys.stderr)
    rows = []
    for spec in measured:
        row = measure_method(spec, llm, batch, timer, ratio)
        _add_speedups(row, reference["median_s"])
        rows.append(row)
        print(_line(row), file=sys.stderr)
    return {"dense": reference, "rows": rows, "skipped": skipped}


def _add_speedups(row: dict[str, Any], dense_s: float) -> None:
    selection = row.get("selection", {}).get("median_s", 0.0)
    prefill = row["prefill"]["median_s"]
    row["speedup_prefill_only"] = dense_s / prefill
    row["speedup_with_selection"] = dense_s / (selection + prefill)


def _line(row: dict[str, Any]) -> str:
    selection = row.get("selection", {}).get("median_s")
    shown = "in prefill" if selection is None else f"{1000 * selection:.3g} ms"
    return (
        f"[method_prefill] {row['method']}: ratio {row['layer_averaged_ratio']:.1f}% "
        f"selection {shown}, prefill {1000 * row['prefill']['median_s']:.3g} ms, "
        f"x{row['speedup_with_selection']:.2f} vs dense (FLOPs x{row['flops_ratio_dense_over_pruned']:.2f})"
    )


def goal_name(method: str) -> str:
    return f"method_prefill_speedup_{method}"


def goal_names() -> tuple[str, ...]:
    """One goal per registry method that prunes Chat-Scene (measured or recorded as not measured)."""
    from fast3d_cli.pruning.methods import METHODS

    return tuple(
        goal_name(n)
        for n, s in METHODS.items()
        if s.budget not in ("none", "anchored") and "chatscene" in s.families  # anchored: gap+sap's prefill
    )


def goals(result: dict[str, Any], batch: int) -> dict[str, dict[str, Any]]:
    out = {}
    for row in result["rows"]:
        definition = (
            f"{row['method']} at {row['layer_averaged_ratio']:.1f}% layer-averaged, batch {batch}: dense "
            "prefill time / (selection + pruned prefill time)"
        )
        out[goal_name(row["method"])] = goal(row["speedup_with_selection"], SPEEDUP_TARGET, definition)
    for method, reason in result["skipped"].items():
        name = goal_name(method)
        if name in goal_names():
            out[name] = goal(None, SPEEDUP_TARGET, "skipped") | {"not_measured": reason}
    return out
