"""Search the SAP threshold alpha that gives a target pruning ratio (spec §5.5-§5.7, official search_alpha).

For a store of per-sample object scores (GAP logits in a "prediction" store, or extracted maps in an
"attention" store), every sample keeps ``k_i = sap_keep_counts(scores_i, alpha)`` of its ``M`` objects.
A task's ratio is the input-level ratio ``100 - 100 * mean_i(k_i) / M``, which is the paper's ratio when
pruning happens before layer 0 (the README SAP run, K = 0). The combined ratio averages the tasks without
weighting (``weighting="task"``, the official behaviour, spec §5.6 and §8.13) or pools their samples
(``weighting="sample"``).

``k_i`` is non-decreasing in alpha, so the ratio is a non-increasing step function of alpha: a bisection finds
the step boundary around the target, the closer of the two neighbouring steps wins, and within that step the
alpha with the fewest significant digits is reported, re-evaluated so that the reported ratio is exactly what
that alpha gives. The result is recorded in the store's root attributes (``attrs["fast3d"]["sap"]``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from fast3d_cli.errors import UserError, article
from fast3d_cli.pruning.budgets import check_alpha, input_level_ratio, reference_alpha, sap_keep_counts

WEIGHTINGS = ("task", "sample")
SCORES = "object_scores"
_TINY_ALPHA = 1e-12  # below every sample's largest softmax probability: every sample keeps one object
_MAX_DIGITS = 12
_MAX_BISECTIONS = 200


@dataclass
class TaskRatio:
    """One task at the chosen alpha."""

    n_samples: int
    mean_kept: float
    ratio: float
    reference_alpha: float


@dataclass
class Neighbour:
    """An achievable (alpha, ratio) point next to the target."""

    alpha: float
    ratio: float


@dataclass
class AlphaSearch:
    """The outcome of :func:`search_alpha` (``to_dict()`` is what ``--json`` prints and the store records)."""

    store: str
    kind: str
    alpha: float
    ratio: float
    target: float
    tolerance: float
    within_tolerance: bool
    reason: str | None
    weighting: str
    split: str
    tasks: list[str]
    n_objects: int
    per_task: dict[str, TaskRatio]
    reference_alpha: dict[str, float]
    max_ratio: float
    min_ratio: float
    neighbours: dict[str, Neighbour | None] = field(default_factory=dict)
    iterations: int = 0
    evaluations: int = 0
    skip_padding: bool = False
    recorded: bool = False
    record_error: str | None = None

    @property
    def band(self) -> tuple[float, float]:
        """The ratios accepted by the official relative tolerance rule."""
        half = self.target * self.tolerance / 100.0
        return self.target - half, self.target + half

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def within_tolerance(ratio: float, target: float, tolerance: float) -> bool:
    """Official rule (§5.6): ``|ratio - target| / target <= tolerance / 100`` (1e-9 slack for float noise)."""
    return abs(ratio - target) <= target * tolerance / 100.0 + 1e-9


def _check_options(target: float, tolerance: float, weighting: str) -> None:
    if not (isinstance(target, int | float) and 0.0 < float(target) < 100.0):
        raise UserError(f"--target must be a pruning ratio in (0, 100) percent, got {target}")
    if not (float(tolerance) >= 0.0):
        raise UserError(f"--tolerance must be >= 0 (percent of the target), got {tolerance}")
    if weighting not in WEIGHTINGS:
        raise UserError(f"--weighting must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}")


def _load_scores(store: Any, tasks: Sequence[str] | None, split: str) -> dict[str, Any]:
    """task -> float32 torch tensor [n, M] of complete, NaN-free scores."""
    import torch

    from fast3d_cli.data.tasks import TASKS

    if tasks is None:
        groups = [g for g in store.groups() if g.split == split and g.task in TASKS]
        if not groups:
            have = ", ".join(g.path for g in store.groups()) or "none"
            raise UserError(f"{store.path} has no task maps for split {split!r} (it has: {have})")
    else:
        names = list(dict.fromkeys(tasks))
        if not names:
            raise UserError("no tasks given")
        groups = [store.group(task, split) for task in names]
    scores: dict[str, Any] = {}
    for group in groups:
        summary = group.summary()
        missing = summary["n_samples"] - summary["written_samples"]
        if missing:
            raise UserError(
                f"{store.path}: {group.path}: {missing} of {summary['n_samples']} samples missing "
                "(complete the store first)"
            )
        if summary["n_samples"] == 0:
            raise UserError(f"{store.path}: {group.path} has no samples")
        values = np.asarray(group.read(SCORES), dtype=np.float32)
        if values.ndim != 2 or values.shape[1] == 0:
            raise UserError(f"{store.path}: {group.path}/{SCORES} has shape {values.shape}, expected [n, M]")
        bad_rows = ~np.isfinite(values).all(axis=1)
        if bad_rows.any():
            first = np.flatnonzero(bad_rows)[:5].tolist()
            nan, inf = bool(np.isnan(values).any()), bool(np.isinf(values).any())
            what = "NaN or infinite" if nan and inf else ("NaN" if nan else "infinite")
            count = int(bad_rows.sum())
            raise UserError(f"{store.path}: {group.path}: {count} samples have {what} scores (rows {first})")
        scores[group.task] = torch.from_numpy(values)
    widths = {t: int(s.shape[1]) for t, s in scores.items()}
    if len(set(widths.values())) > 1:
        raise UserError(f"{store.path}: tasks have different object counts: {widths}")
    return scores


def exclude_padding(scores: dict[str, Any], data: Any, split: str) -> dict[str, Any]:
    """Scores with padding objects (all-zero features in ``data``) at -inf, as ``eval --skip-padding`` ranks
    them: no SAP mass. Rows are the first n annotation samples (stores are written in annotation order)."""
    import torch

    from fast3d_cli.data import SceneBank, load_samples

    bank = SceneBank(data, split)
    out = {}
    for task, values in scores.items():
        samples = load_samples(data, task, split)[: values.shape[0]]
        padded = []
        for sample in samples:
            f3d, f2d = bank.object_features(sample.scene_id)
            padded.append((f3d.abs().sum(-1) == 0) & (f2d.abs().sum(-1) == 0))
        out[task] = values.masked_fill(torch.stack(padded)[:, : values.shape[1]], float("-inf"))
    return out


def _short_decimals(value: float, digits: int) -> list[float]:
    """The two ``digits``-significant-digit numbers around ``value`` (the nearer first), within (0, 1]."""
    exponent = math.floor(math.log10(value)) - digits + 1
    scale = 10.0**exponent
    down, up = math.floor(value / scale), math.ceil(value / scale)
    out = []
    for mantissa in sorted({down, up}, key=lambda m: abs(m * scale - value)):
        # format/parse: the shortest float that prints as this decimal
        candidate = float(f"{mantissa}e{exponent}")
        if 0.0 < candidate <= 1.0:
            out.append(candidate)
    return out


class _Evaluator:
    """Combined ratio as a function of alpha, counting evaluations."""

    def __init__(self, scores: dict[str, Any], weighting: str) -> None:
        self.scores = scores
        self.weighting = weighting
        self.n_objects = int(next(iter(scores.values())).shape[1])
        self.evaluations = 0

    def per_task(self, alpha: float) -> dict[str, tuple[float, float]]:
        """task -> (mean kept objects, ratio)."""
        self.evaluations += 1
        out = {}
        for task, values in self.scores.items():
            kept = sap_keep_counts(values, alpha)
            out[task] = (float(kept.mean()), input_level_ratio(kept, self.n_objects))
        return out

    def combine(self, per_task: dict[str, tuple[float, float]]) -> float:
        ratios = [ratio for _, ratio in per_task.values()]
        if self.weighting == "task":
            return float(np.mean(ratios))
        sizes = [int(self.scores[t].shape[0]) for t in per_task]
        return float(np.average(ratios, weights=sizes))

    def __call__(self, alpha: float) -> float:
        return self.combine(self.per_task(alpha))

    def shortest_in_step(self, alpha: float, ratio: float) -> float:
        """The alpha with the fewest significant digits that gives the same ``ratio`` as ``alpha``."""
        for digits in range(1, _MAX_DIGITS + 1):
            for candidate in _short_decimals(alpha, digits):
                if self(candidate) == ratio:
                    return candidate
        return alpha


def _bisect(f: Callable[[float], float], lo: float, hi: float, f_lo: float, f_hi: float, target: float):
    """Shrink [lo, hi], f(lo) > target > f(hi), to a step boundary (float32 resolution, as SAP compares)."""
    iterations = 0
    while iterations < _MAX_BISECTIONS:
        mid = 0.5 * (lo + hi)
        if np.float32(mid) in (np.float32(lo), np.float32(hi)) or mid in (lo, hi):
            break
        iterations += 1
        f_mid = f(mid)
        if f_mid == target:
            return mid, mid, f_mid, f_mid, iterations
        if f_mid > target:
            lo, f_lo = mid, f_mid
        else:
            hi, f_hi = mid, f_mid
    return lo, hi, f_lo, f_hi, iterations


def _open(store_or_path: Any, read_only: bool = True):
    from fast3d_cli.stores import KINDS, MapStore, open_store

    store = store_or_path if isinstance(store_or_path, MapStore) else open_store(store_or_path)
    if not read_only:
        store = open_store(store.path, read_only=False)
    if store.kind not in KINDS:
        kinds = " or ".join(KINDS)
        what = f"{article(store.kind)} {store.kind!r} store"
        raise UserError(f"{store.path} is {what}; search-alpha reads {kinds} stores")
    return store


def search_alpha(
    store_path_or_store: Any,
    target: float,
    tolerance: float = 2.0,
    tasks: Sequence[str] | None = None,
    split: str = "val",
    weighting: str = "task",
    record: bool = True,
    skip_padding: Any = None,
    limit: int | None = None,
) -> AlphaSearch:
    """Find the SAP alpha whose pruning ratio on ``split`` is closest to ``target`` percent.

    ``tasks`` defaults to every evaluation task the store has for ``split``. With ``record`` the result is
    merged into the store's root attributes as ``sap`` (all other attributes are kept). ``limit``: only the
    first N samples of each task (the ones ``eval --limit N`` evaluates). Raises ``UserError``
    for a missing or foreign store, bad options, a missing task/split, an incomplete group or NaN scores.
    """
    _check_options(target, tolerance, weighting)
    target, tolerance = float(target), float(tolerance)
    store = _open(store_path_or_store)
    scores = _load_scores(store, tasks, split)
    if limit is not None:
        scores = {task: values[:limit] for task, values in scores.items()}
    if skip_padding is not None:
        scores = exclude_padding(scores, skip_padding, split)
    f = _Evaluator(scores, weighting)
    m = f.n_objects

    lo, hi = _TINY_ALPHA, 1.0
    f_max, f_min = f(lo), f(hi)
    iterations = 0
    neighbours: dict[str, Neighbour | None] = {"above": None, "below": None}
    reason: str | None = None
    if target >= f_max:
        # the largest short alpha with which every sample still keeps one object (f_max is one step)
        top, _, f_top, _, iterations = _bisect(f, lo, hi, f_max, f_min, f_max - 1e-9)
        alpha = f.shortest_in_step(top, f_top)
        reason = (
            f"target {target:g}% is above the highest reachable ratio {f_max:.4f}% "
            f"(every sample keeps 1 of {m} objects)"
        )
    elif target <= f_min:
        alpha = hi
        reason = f"target {target:g}% is below the ratio at alpha = 1 ({f_min:.4f}%), the least SAP prunes"
    else:
        lo, hi, f_lo, f_hi, iterations = _bisect(f, lo, hi, f_max, f_min, target)
        if f_lo == f_hi:  # an alpha gives the target exactly
            alpha = f.shortest_in_step(lo, f_lo)
        else:
            above = Neighbour(f.shortest_in_step(lo, f_lo), f_lo)
            below = Neighbour(f.shortest_in_step(hi, f_hi), f_hi)
            neighbours = {"above": above, "below": below}
            # the closer step; a tie goes to the higher ratio
            alpha = above.alpha if abs(f_lo - target) <= abs(f_hi - target) else below.alpha
            half = target * tolerance / 100.0
            reason = (
                f"the ratio jumps from {f_lo:.4f}% (alpha {above.alpha:g}) to {f_hi:.4f}% "
                f"(alpha {below.alpha:g}), over the tolerance band [{target - half:.4f}, {target + half:.4f}]"
            )

    alpha = check_alpha(alpha)
    per_task_raw = f.per_task(alpha)  # the reported numbers are exactly what this alpha gives
    ratio = f.combine(per_task_raw)
    ok = within_tolerance(ratio, target, tolerance)
    if ok:
        reason = None

    result = AlphaSearch(
        store=str(store.path),
        kind=store.kind,
        alpha=alpha,
        ratio=ratio,
        target=target,
        tolerance=tolerance,
        within_tolerance=ok,
        reason=reason,
        weighting=weighting,
        split=split,
        tasks=list(scores),
        n_objects=m,
        per_task={
            task: TaskRatio(
                n_samples=int(scores[task].shape[0]),
                mean_kept=kept,
                ratio=task_ratio,
                reference_alpha=reference_alpha(scores[task]),
            )
            for task, (kept, task_ratio) in per_task_raw.items()
        },
        reference_alpha={},
        max_ratio=f_max,
        min_ratio=f_min,
        neighbours=neighbours,
        iterations=iterations,
        evaluations=f.evaluations,
    )
    result.reference_alpha = {t: r.reference_alpha for t, r in result.per_task.items()}
    result.skip_padding = skip_padding is not None
    if record:
        _record(store, result)
    return result


def _record(store: Any, result: AlphaSearch) -> None:
    """Merge the result into the root attributes; a failure (a read-only store, a full disk) is reported in
    ``result.record_error`` (the CLI prints the result, then exits 2)."""
    from fast3d_cli import __version__

    payload = {k: v for k, v in result.to_dict().items() if k not in ("store", "recorded", "record_error")}
    payload["version"] = __version__
    key = "sap_skip_padding" if result.skip_padding else "sap"
    try:
        writable = _open(store, read_only=False)
        writable.update_attrs(**{key: payload})
    except (OSError, UserError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        result.record_error = f"could not record alpha in {store.path}: {reason}"
        return
    result.recorded = True
