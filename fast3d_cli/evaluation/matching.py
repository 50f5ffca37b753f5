"""The rows of ``fast3d compare``: every method at matched average pruning (docs/compare.md).

A method with a fixed budget (``MethodSpec.fixed_budget``) gets one row per target ratio, each an ``eval
--ratio R``: the kept count whose layer-averaged pruning ratio is closest to R. A method with an adaptive
budget (``MethodSpec.adaptive_option``, e.g. SAP's ``alpha``) gets one row at the adaptive target (~90%): the
matcher registered for its option finds the value whose average pruning is closest to the target, as
``fast3d search-alpha`` does. A method with both (efficient3d) gets both kinds of rows. The rows come from
the registry's properties, never from method names, so a method added to
:data:`~fast3d_cli.pruning.methods.METHODS` joins the comparison unchanged; a new kind of adaptive budget
only needs a matcher in :data:`MATCHERS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fast3d_cli.errors import UserError, article
from fast3d_cli.pruning.methods import METHODS, MethodSpec, PruningSettings

DENSE = "dense"


@dataclass(frozen=True)
class MatchInputs:
    """What the rows may read: maps stores by kind (``attention``: fast3d extract, ``prediction``: fast3d
    predict), a GAP network for online scoring, and the compared samples the adaptive matchers look at
    (split, tasks, limit)."""

    stores: Mapping[str, Any] = field(default_factory=dict)  # store kind -> its path or StoreLocation
    gap: Path | None = None
    split: str = "val"
    tasks: tuple[str, ...] = ()
    limit: int | None = None  # the first N samples of each task are compared (and matched on)
    data: Any = None  # the DataConfig of the compared samples (anchored SAP reads their scenes)


@dataclass(frozen=True)
class PlannedRow:
    """One row of the leaderboard before anything is resolved: a method and its matched setting."""

    slug: str  # folder name under runs/ and the row's key in leaderboard.json
    label: str
    method: str
    kind: str  # "dense", "fixed" or "adaptive"
    target: float | None  # layer-averaged pruning in percent (None: dense)


@dataclass(frozen=True)
class ResolvedRow:
    """A planned row with the pruning settings it is evaluated with, and how they were matched."""

    row: PlannedRow
    pruning: PruningSettings
    matched: str | None = None  # e.g. "alpha 0.42 prunes 89.90% of the objects in pred.zarr (val)"


def comparable_methods() -> list[str]:
    """The registered methods ``fast3d compare`` can place in a row (every one with a budget to match)."""
    return [name for name, spec in METHODS.items() if spec.fixed_budget or spec.adaptive_option]


def parse_methods(text: str) -> tuple[str, ...]:
    """``--methods a,b,c``: known, comparable, without repeats; one line naming the methods that fit if
    not."""
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    fits = comparable_methods()
    if not names:
        raise UserError(f"--methods is empty; choose from {', '.join(fits)}")
    for name in names:
        if name not in fits:
            what = "has no budget to match" if name in METHODS else "is not a pruning method"
            raise UserError(f"--methods: {name!r} {what}; choose from {', '.join(fits)}")
    return names


def parse_ratios(text: str, option: str = "--ratios") -> tuple[float, ...]:
    """Pruning ratios in percent, each in [1, 100)."""
    values = []
    for part in (p.strip() for p in text.split(",")):
        try:
            value = float(part)
        except ValueError:
            raise UserError(f"{option} takes percentages such as 35,65,90, got {part!r}") from None
        if not 1.0 <= value < 100.0:
            raise UserError(f"{option} values are percentages in [1, 100) (e.g. 35,65,90), got {part}")
        values.append(value)
    if not values:
        raise UserError(f"{option} is empty")
    return tuple(dict.fromkeys(values))


def plan_rows(methods: Sequence[str], ratios: Sequence[float], adaptive_target: float) -> list[PlannedRow]:
    """The dense row, then per method its fixed-budget rows (one per ratio) and its adaptive row."""
    rows = [PlannedRow(DENSE, "dense", "none", DENSE, None)]
    for name in methods:
        spec = METHODS[name]
        if spec.fixed_budget:
            rows += [PlannedRow(f"{name}-{r:g}", f"{name} {r:g}%", name, "fixed", r) for r in ratios]
        if spec.adaptive_option:  # a method may have both (efficient3d: --ratio, or --alpha for its ATR)
            slug, label = f"{name}-adaptive{adaptive_target:g}", f"{name} ~{adaptive_target:g}%"
            rows.append(PlannedRow(slug, label, name, "adaptive", adaptive_target))
    return rows


def method_inputs(spec: MethodSpec, inputs: MatchInputs) -> dict[str, Any]:
    """The ``maps``/``gap`` settings of a method: the store of a kind it reads, else (for methods that read
    GAP predictions) the GAP network run online; nothing when it reads no maps."""
    for kind in spec.map_kinds:
        if inputs.stores.get(kind) is not None:
            return {"maps": inputs.stores[kind]}
    if "prediction" in spec.map_kinds and inputs.gap is not None:
        return {"gap": inputs.gap}
    return {}


def resolve_row(row: PlannedRow, inputs: MatchInputs, layer: int, n_layers: int | None) -> ResolvedRow:
    """The pruning settings of ``row`` (UserError when the method cannot run as asked: a missing store, an
    unreachable ratio at its layer, no matcher for its adaptive budget). ``n_layers`` None (unknown before
    the model loads): the depth checks wait for the evaluation."""
    from fast3d_cli.pruning.methods import validate

    if row.kind == DENSE:
        return ResolvedRow(row, PruningSettings())
    spec = METHODS[row.method]
    layer = 0 if spec.multistage else max(layer, spec.min_layer)  # multi-stage: its default drop layers
    base = PruningSettings(method=row.method, layer=layer, **method_inputs(spec, inputs))
    share = 1.0 if n_layers is None else _reachable_share(row.target, base.layer, n_layers)
    if row.kind == "fixed":
        pruning = replace(base, ratio=row.target)
        validate(pruning, n_layers)
        return ResolvedRow(row, pruning)
    option = spec.adaptive_option
    matcher = MATCHERS.get(option)
    if matcher is None:
        raise UserError(
            f"{row.method}: compare has no matcher for its adaptive --{option} (the pruning it gives is "
            f"known only once the model runs); compare its fixed-budget rows, or run fast3d eval --{option}"
        )
    validate(replace(base, **{spec.adaptive_option: _PLACEHOLDERS.get(spec.adaptive_option)}), n_layers)
    value, matched = matcher(base, row.target / share, inputs)  # the share of visual items to remove
    pruning = replace(base, **{spec.adaptive_option: value})
    validate(pruning, n_layers)
    return ResolvedRow(row, pruning, matched)


_PLACEHOLDERS = {"alpha": 1.0}  # a valid value, to check every other option before a matcher reads files


def _reachable_share(target: float, layer: int, n_layers: int) -> float:
    """The share of layers that pruning before ``layer`` reaches (layer-averaged ratio = input-level ratio x
    this); UserError when ``target`` percent cannot be reached that way."""
    share = (n_layers - layer) / n_layers
    if target >= 100.0 * share:
        raise UserError(
            f"{target:g}% cannot be reached when pruning at layer {layer} of {n_layers}: at most "
            f"{100 * share:.2f}% of the visual tokens are absent on average"
        )
    return share


Matcher = Callable[[PruningSettings, float, MatchInputs], tuple[Any, str]]


def match_sap_alpha(pruning: PruningSettings, input_target: float, inputs: MatchInputs) -> tuple[float, str]:
    """SAP: the alpha whose input-level pruning on the compared samples' maps in the method's store is
    closest to ``input_target`` (``fast3d search-alpha``, not recorded in the store)."""
    from fast3d_cli.pruning.alpha_search import search_alpha

    if pruning.maps is None:
        kinds = " or ".join(METHODS[pruning.method].map_kinds)
        raise UserError(
            f"{pruning.method}: matching its alpha to ~{input_target:g}% pruning needs {article(kinds)} "
            f"{kinds} store in --maps (--gap alone gives no maps to search)"
        )
    if METHODS[pruning.method].budget == "anchored":
        return _match_anchored_alpha(pruning, input_target, inputs)
    tasks = inputs.tasks or None
    found = search_alpha(
        pruning.maps, input_target, tasks=tasks, split=inputs.split, record=False, limit=inputs.limit
    )
    where = f"the first {inputs.limit} samples per task" if inputs.limit else "every sample"
    return (
        found.alpha,
        f"alpha {found.alpha:g} prunes {found.ratio:.2f}% of the objects ({where} of {pruning.maps})",
    )


def _match_anchored_alpha(
    pruning: PruningSettings, input_target: float, inputs: MatchInputs
) -> tuple[float, str]:
    """Anchored SAP: the alpha whose floored budgets prune ``input_target`` percent of the objects of the
    compared samples (padding ranked last), as its ``--alpha auto`` calibrates it."""
    from fast3d_cli.data.tasks import TASKS
    from fast3d_cli.pruning.anchored import calibrated_alpha
    from fast3d_cli.stores import open_store

    store = open_store(pruning.maps)
    tasks = inputs.tasks or tuple(TASKS)
    split, limit = inputs.split, inputs.limit
    alpha = calibrated_alpha(store, pruning.maps, inputs.data, input_target, tasks, split, limit)
    where = f"the first {inputs.limit} samples per task" if inputs.limit else "every sample"
    return alpha, f"anchored alpha {alpha:g} calibrated to {input_target:.2f}% ({where} of {pruning.maps})"


MATCHERS: dict[str, Matcher] = {"alpha": match_sap_alpha}
"""``MethodSpec.adaptive_option`` -> how to find its value for a target ratio."""
