"""The pruning methods: one registry entry per method = a scorer + a budget rule (spec §5).

============  ======================================================  ===========================
method        scores                                                  budget
============  ======================================================  ===========================
none          -                                                       keep everything (dense)
random        uniform, seeded per sample                              --keep / --ratio
fastv         layer K-1 head-mean attention of the last prompt token  --keep / --ratio (K >= 1)
divprune      max-min diversity of the visual embeddings              --keep / --ratio
oracle        extracted attention maps (an ``attention`` store)       --keep / --ratio
oracle+sap    the same                                                --alpha (SAP)
gap           GAP logits (a ``prediction`` store, or --gap online)    --keep / --ratio
gap+sap       the same                                                --alpha (SAP, §5.5)
cdpruner      conditional DPP: diversity x instruction relevance      --keep / --ratio
coverage      farthest-point sampling over the object box centres     --keep / --ratio
efficient3d   Efficient3D predictor maps (a ``prediction`` store)     --keep / --ratio, or --alpha
                                                                      (ATR, the adaptive ratio)
fastervlm     the vision tower's [CLS] attention (LLaVA family only)  --keep / --ratio
pyramiddrop   at each of --layers, layer l's attention of the last    --keep / --ratio (final) or
              prompt token (PyramidDrop, several drops)               --stage-ratio (lambda)
adatoken3d    at each of --layers, layer l-1 attention of every       --threshold (adaptive), or
              instruction token (AdaToken-3D, several drops)          --keep / --ratio / --stage-ratio
gap+asap      GAP maps, prompt-named objects and neighbours first  --alpha (SAP with a floor, ours)
============  ======================================================  ===========================

docs/methods-before-llm.md describes cdpruner, coverage and efficient3d and the choices made for them.
The multi-stage methods drop at ``--layers`` (default: the quarters of the depth, PyramidDrop's 8,16,24 of
32); see :mod:`fast3d_cli.pruning.multistage` and docs/methods-multistage.md.
Each method declares the model families it fits (``families``, see :mod:`fast3d_cli.models.families`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fast3d_cli.errors import UserError
from fast3d_cli.pruning.budgets import check_alpha, check_layer, check_ratio, keep_for_ratio

if TYPE_CHECKING:
    from fast3d_cli.stores.location import StoreLocation

GRANULARITIES = {"object": 3, "token": 1}
ALPHA_BUDGETS = ("sap", "anchored")  # budgets set per sample by an SAP mass threshold


@dataclass(frozen=True)
class MethodSpec:
    name: str
    scorer: str  # key of SCORERS, or "none"
    budget: str  # "none", "fixed", "sap" or "anchored" (SAP with a floor and prompt anchors, ours)
    map_kinds: tuple[str, ...] = ()  # store kinds the scorer reads (empty: no store)
    min_layer: int = 0
    help: str = ""
    adaptive: bool = False  # a "fixed" method that also takes --alpha: its adaptive (SAP-style) budget
    families: tuple[str, ...] = ("chatscene",)  # the model families (fast3d_cli.models.families) it fits
    multistage: bool = False  # drops at several layers (--layers, --stage-ratio)
    threshold: bool = False  # takes the adaptive --threshold budget

    @property
    def fixed_budget(self) -> bool:
        """Whether ``--keep``/``--ratio`` size the budget (the same count for every sample)."""
        return self.budget == "fixed"

    @property
    def adaptive_option(self) -> str | None:
        """The :class:`PruningSettings` field that sizes this method's per-sample adaptive budget: ``alpha``
        (SAP, or a fixed method that also takes ``--alpha``), ``threshold`` (multi-stage gating); None
        without one. ``fast3d compare`` matches that field to a target ratio."""
        if self.budget in ALPHA_BUDGETS or self.adaptive:
            return "alpha"
        return "threshold" if self.threshold else None


ANY_FAMILY = ("chatscene", "llava")


ANCHORED_HELP = (
    "anchored SAP: GAP maps, floored SAP budgets, prompt-named objects and their nearest proposals first "
    "(ours, docs/our-method.md)"
)
METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec("none", "none", "none", help="dense: no pruning", families=ANY_FAMILY),
        MethodSpec(
            "random", "random", "fixed", help="random visual tokens, seeded per sample", families=ANY_FAMILY
        ),
        MethodSpec(
            "fastv",
            "fastv",
            "fixed",
            min_layer=1,
            help="FastV: attention of the last prompt token",
            families=ANY_FAMILY,
        ),
        MethodSpec(
            "divprune",
            "divprune",
            "fixed",
            help="DivPrune: max-min diversity of the embeddings",
            families=ANY_FAMILY,
        ),
        MethodSpec(
            "oracle",
            "maps",
            "fixed",
            ("attention",),
            help="extracted attention maps (upper bound)",
            families=ANY_FAMILY,
        ),
        MethodSpec(
            "oracle+sap",
            "maps",
            "sap",
            ("attention",),
            help="extracted maps with SAP budgets",
            families=ANY_FAMILY,
        ),
        MethodSpec("gap", "maps", "fixed", ("prediction",), help="GAP-predicted maps"),
        MethodSpec("gap+sap", "maps", "sap", ("prediction",), help="GAP maps with SAP budgets (Fast3D)"),
        MethodSpec(
            "cdpruner",
            "cdpruner",
            "fixed",
            help="CDPruner: conditional DPP over the visual embeddings",
            families=ANY_FAMILY,
        ),
        MethodSpec(
            "coverage", "coverage", "fixed", help="spatial coverage: farthest-point sampling of boxes"
        ),
        MethodSpec(
            "efficient3d",
            "maps",
            "fixed",
            ("prediction",),
            help="Efficient3D predictor maps; --alpha: its adaptive token ratio (ATR)",
            adaptive=True,
        ),
        MethodSpec(
            "fastervlm",
            "cls",
            "fixed",
            help="FasterVLM: [CLS] attention of the vision tower",
            families=("llava",),
        ),
        MethodSpec(
            "pyramiddrop",
            "pyramiddrop",
            "fixed",
            multistage=True,
            help="PyramidDrop: drops at several layers",
        ),
        MethodSpec(
            "adatoken3d",
            "adatoken3d",
            "fixed",
            min_layer=1,
            multistage=True,
            threshold=True,
            help="AdaToken-3D: attention-contribution gating at several layers",
        ),
        MethodSpec("gap+asap", "maps", "anchored", ("prediction",), help=ANCHORED_HELP),
    )
}


def budget_kind(spec: MethodSpec, settings: PruningSettings) -> str:
    """The budget a run uses: the method's, or "sap" for an adaptive method given --alpha."""
    if spec.adaptive and settings.alpha is not None:
        return "sap"
    return spec.budget


def get_method(name: str) -> MethodSpec:
    if name not in METHODS:
        raise UserError(f"unknown --method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


@dataclass(frozen=True)
class PruningSettings:
    """A pruning configuration as given on the command line (``alpha`` may be "auto")."""

    method: str = "none"
    layer: int = 0
    keep: int | None = None
    ratio: float | None = None
    alpha: float | str | None = None
    granularity: str = "object"
    seed: int = 0
    maps: StoreLocation | Path | None = None  # a path or a parsed path or URL
    gap: Path | None = None
    fixed_count: bool = False
    skip_padding: bool = False
    force: bool = False
    layers: tuple[int, ...] | None = None  # multi-stage drop layers (None: the method's default)
    stage_ratio: float | None = None
    threshold: float | None = None

    def identity(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("force")
        for option in ("layers", "stage_ratio", "threshold"):  # multi-stage options: only when given
            if data[option] is None:
                data.pop(option)
        if "layers" in data:
            data["layers"] = list(data["layers"])
        for flag in ("fixed_count", "skip_padding"):  # recorded only when on: earlier runs stay resumable
            if not data[flag]:
                data.pop(flag)
        data["maps"] = None if self.maps is None else str(self.maps)
        data["gap"] = None if self.gap is None else str(self.gap)
        return data


@dataclass(frozen=True)
class Budget:
    """A resolved budget: ``keep`` groups per sample (fixed) or SAP ``alpha``; both None = dense."""

    layer: int
    group: int
    n_groups: int
    n_layers: int
    keep: int | None = None
    alpha: float | None = None
    notes: list[str] = field(default_factory=list)
    layers: tuple[int, ...] = ()  # multi-stage: every drop layer (``layer`` is the first)
    stage_keep: tuple[int, ...] = ()  # multi-stage fixed budgets: groups kept after each drop
    threshold: float | None = None  # multi-stage adaptive gating

    @property
    def n_visual(self) -> int:
        return self.group * self.n_groups

    @property
    def drop_layers(self) -> tuple[int, ...]:
        return self.layers or (self.layer,)


def validate(settings: PruningSettings, n_layers: int | None) -> MethodSpec:
    """Check the options that do not need any file (exit 2 on a bad value). ``n_layers`` None (the model is
    not loaded yet): every check but the upper bound of ``--layer``."""
    spec = get_method(settings.method)
    if "chatscene" not in spec.families:  # this module's budgets and scorers are Chat-Scene's
        fits = ", ".join(n for n, s in METHODS.items() if "chatscene" in s.families)
        raise UserError(f"--method {spec.name} does not fit Chat-Scene models; methods for chatscene: {fits}")
    if settings.granularity not in GRANULARITIES:
        raise UserError(f"--granularity must be object or token, got {settings.granularity!r}")
    if spec.multistage:
        from fast3d_cli.pruning.multistage import validate_multistage

        return validate_multistage(spec, settings, n_layers)
    if settings.layers is not None or settings.stage_ratio is not None or settings.threshold is not None:
        raise UserError(
            f"--layers/--stage-ratio/--threshold apply to the multi-stage methods, not {spec.name}"
        )
    check_layer(settings.layer, n_layers)
    if settings.layer < spec.min_layer:
        raise UserError(
            f"{spec.name} scores tokens with layer K-1 attention: use --layer >= {spec.min_layer}"
        )
    if settings.ratio is not None:
        check_ratio(settings.ratio)
    if settings.alpha is not None and settings.alpha != "auto":
        check_alpha(float(settings.alpha))
    if settings.keep is not None and settings.keep < 0:
        raise UserError(f"--keep must be >= 0, got {settings.keep}")
    kind = budget_kind(spec, settings)
    if spec.adaptive and kind == "sap" and (settings.keep is not None or settings.ratio is not None):
        raise UserError(f"--method {spec.name} takes one of --keep, --ratio or --alpha")
    if kind == "fixed" and (settings.keep is None) == (settings.ratio is None):
        alpha = " (or --alpha, its adaptive budget)" if spec.adaptive else ""
        raise UserError(f"--method {spec.name} needs exactly one of --keep or --ratio{alpha}")
    if kind in ALPHA_BUDGETS:
        if settings.alpha is None:
            raise UserError(f"--method {spec.name} needs --alpha (a number in (0, 1], or auto)")
        if settings.granularity != "object":
            raise UserError("SAP budgets are computed over objects: use --granularity object")
    if spec.budget == "anchored" and settings.skip_padding:
        raise UserError(f"--method {spec.name} always ranks padding objects last: drop --skip-padding")
    if settings.fixed_count and (kind != "sap" or settings.maps is None):
        raise UserError("--fixed-count applies to the +sap methods with --maps (budgets are set per request)")
    if kind not in ALPHA_BUDGETS and settings.alpha is not None:
        raise UserError(f"--alpha applies to the +sap methods, not {spec.name}")
    if kind != "fixed" and (settings.keep is not None or settings.ratio is not None):
        raise UserError(f"--keep/--ratio do not apply to --method {spec.name}")
    if spec.scorer == "maps":
        online = "prediction" in spec.map_kinds
        if settings.gap is not None and not online:
            raise UserError(f"--gap applies to the gap methods, not {spec.name}")
        if (settings.maps is None) == (settings.gap is None):
            wanted = (
                "--maps (a prediction store) or --gap (a GAP network)"
                if online
                else ("--maps (an attention store from fast3d extract)")
            )
            raise UserError(f"--method {spec.name} needs exactly one of {wanted}")
    elif settings.maps is not None or settings.gap is not None:
        raise UserError(f"--maps/--gap do not apply to --method {spec.name}")
    return spec


def resolve_budget(
    spec: MethodSpec, settings: PruningSettings, n_layers: int, n_objects: int, store_alpha: float | None
) -> Budget:
    group = GRANULARITIES[settings.granularity]
    n_groups = n_objects * 3 // group
    if spec.multistage:
        from fast3d_cli.pruning.multistage import resolve_multistage_budget

        return resolve_multistage_budget(spec, settings, n_layers, group, n_groups)
    budget = Budget(settings.layer, group, n_groups, n_layers)
    kind = budget_kind(spec, settings)
    if kind == "fixed":
        keep = (
            settings.keep
            if settings.keep is not None
            else keep_for_ratio(settings.ratio, settings.layer, n_layers, n_groups)
        )
        if keep > n_groups:
            raise UserError(f"--keep {keep} exceeds the {n_groups} {settings.granularity}s per sample")
        return Budget(settings.layer, group, n_groups, n_layers, keep=keep)
    if kind in ALPHA_BUDGETS:
        alpha = settings.alpha
        if alpha == "auto":
            if store_alpha is None:
                padding = " --skip-padding" if settings.skip_padding else ""
                raise UserError(
                    f"--alpha auto needs a maps store on which `fast3d search-alpha{padding}` was run; "
                    "run it or give --alpha"
                )
            alpha = store_alpha
        return Budget(settings.layer, group, n_groups, n_layers, alpha=check_alpha(float(alpha)))
    return budget


def kept_summary(
    kept_tokens: Sequence[int], budget: Budget, stage_tokens: Sequence[Sequence[int]] | None = None
) -> dict[str, float]:
    """Both ratio definitions (§5.7) for a set of per-sample kept visual-token counts (after the last drop;
    ``stage_tokens``: per sample, the tokens kept after each drop, for multi-stage budgets)."""
    from fast3d_cli.pruning.budgets import (
        input_level_ratio,
        layer_averaged_ratio,
        multistage_layer_averaged_ratio,
    )

    n_visual = budget.n_visual
    if budget.keep is None and budget.alpha is None and not budget.layers:
        return {"input_ratio": 0.0, "layer_averaged_ratio": 0.0, "mean_kept_tokens": float(n_visual)}
    mean_kept = sum(kept_tokens) / len(kept_tokens) if kept_tokens else float("nan")
    if budget.layers:
        fixed = [s * budget.group for s in budget.stage_keep[:-1]]  # records without per-drop counts
        stages = stage_tokens if stage_tokens is not None else [[*fixed, k] for k in kept_tokens]
        averaged = multistage_layer_averaged_ratio(stages, n_visual, budget.layers, budget.n_layers)
    else:
        averaged = layer_averaged_ratio(kept_tokens, n_visual, budget.layer, budget.n_layers)
    return {
        "input_ratio": round(input_level_ratio(kept_tokens, n_visual), 4),
        "layer_averaged_ratio": round(averaged, 4),
        "mean_kept_tokens": round(mean_kept, 4),
    }


def preflight(
    settings: PruningSettings, model_fingerprint: str, n_layers: int | None, n_objects: int | None, data: Any
) -> None:
    """Every check of the pruning options that needs files but not the model, run before it loads: the
    depth (``--layer``, ``--ratio``), and with ``--maps`` the store's kind, model, data, object count and
    recorded alpha. ``n_layers``/``n_objects`` None: those checks wait for the loaded model."""
    from fast3d_cli.pruning.pruner import store_data_problems
    from fast3d_cli.pruning.scorers import StoreMaps

    spec = validate(settings, n_layers)
    store_alpha = None
    if settings.maps is not None:
        problems = store_data_problems(data)
        maps = StoreMaps(settings.maps, spec.map_kinds, model_fingerprint, problems, settings.force)
        if n_objects is not None:
            maps.check_objects(n_objects)
        store_alpha = method_store_alpha(spec, settings, maps, data)
    if settings.gap is not None and not Path(settings.gap).exists():
        raise UserError(f"GAP network not found: {settings.gap}")
    if n_layers is not None and n_objects is not None:
        resolve_budget(spec, settings, n_layers, n_objects, store_alpha)


def method_store_alpha(spec: MethodSpec, settings: PruningSettings, maps: Any, data: Any) -> float | None:
    """What ``--alpha auto`` resolves to for a maps store: the alpha search-alpha recorded (SAP), or for
    anchored SAP the alpha that gives the ratio search-alpha targeted (fast3d_cli.pruning.anchored)."""
    if spec.budget == "anchored" and settings.alpha == "auto":
        from fast3d_cli.pruning.anchored import store_alpha

        return store_alpha(maps, data)
    return maps.alpha(settings.skip_padding)
