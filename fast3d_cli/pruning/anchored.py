"""Anchored SAP (``--method gap+asap``): our pruning method (docs/our-method.md).

SAP's budget with a floor, filled first with the objects the prompt names (``<OBJnnn>``) and the proposals
nearest to them, then by GAP score; zero-feature padding objects carry no SAP mass and are kept last. The
settings below were chosen on train-held-out samples (``benchmarks/sap_budget_rules.py``), never on val.

``--alpha auto`` calibrates alpha on the maps store itself: the alpha whose floored budgets give the pruning
ratio `search-alpha` recorded for plain SAP (its target, its tasks, its split, tasks weighted equally), so
``gap+asap`` and ``gap+sap`` are compared at the same ratio.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fast3d_cli.errors import UserError
from fast3d_cli.pruning.budget_rules import RuleInputs, anchored_rule, floored_counts

FLOOR = 5
NEIGHBOURS = 2
CAP: int | None = None
SKIP_PADDING = True


def padding_mask(bank: Any, scene_ids: Sequence[str]) -> np.ndarray:
    """[B, M] True for the zero-feature padding objects of each scene."""
    rows = []
    for scene_id in scene_ids:
        f3d, f2d = bank.object_features(scene_id)
        rows.append(((f3d.abs().sum(-1) == 0) & (f2d.abs().sum(-1) == 0)).numpy())
    return np.stack(rows)


def proposal_centres(bank: Any, scene_ids: Sequence[str], n_objects: int) -> np.ndarray:
    """[B, M, 3] proposal box centres; rows past a scene's proposals lie far away (never a neighbour)."""
    out = np.full((len(scene_ids), n_objects, 3), 1e6)
    for row, scene_id in enumerate(scene_ids):
        locs = np.asarray(bank.proposal_locs(scene_id), dtype=np.float64)[:n_objects, :3]
        out[row, : len(locs)] = locs
    return out


def rule_inputs(scores: np.ndarray, samples: Sequence[Any], bank: Any) -> RuleInputs:
    scene_ids = [s.scene_id for s in samples]
    return RuleInputs(
        scores=np.asarray(scores, dtype=np.float32),
        prompts=[s.prompt for s in samples],
        centres=proposal_centres(bank, scene_ids, scores.shape[1]),
        excluded=padding_mask(bank, scene_ids) if SKIP_PADDING else None,
    )


def kept_mask(scores: np.ndarray, samples: Sequence[Any], bank: Any, alpha: float) -> np.ndarray:
    """[B, M] the objects anchored SAP keeps for ``samples`` (row-independent)."""
    return anchored_rule(rule_inputs(scores, samples, bank), alpha, FLOOR, CAP, NEIGHBOURS)


def calibrate_alpha(
    scores_by_task: dict[str, np.ndarray], excluded_by_task: dict[str, Any], target: float
) -> float:
    """The alpha whose floored budgets give the task-averaged input-level ``target`` ratio (closest step).

    Named objects only grow a budget when a prompt names more objects than the floor, so the budget is
    computed from the scores alone."""
    n_objects = next(iter(scores_by_task.values())).shape[1]
    wanted = n_objects * (1.0 - target / 100.0)

    def mean_kept(alpha: float) -> float:
        return float(np.mean([
            floored_counts(RuleInputs(scores, excluded=excluded_by_task.get(task)), alpha, FLOOR, CAP).mean()
            for task, scores in scores_by_task.items()
        ]))  # fmt: skip

    lo, hi = 1e-9, 1.0
    if mean_kept(hi) <= wanted:
        return hi
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mean_kept(mid) < wanted else (lo, mid)
    return lo if abs(mean_kept(lo) - wanted) < abs(mean_kept(hi) - wanted) else hi


def store_alpha(maps: Any, data: Any) -> float | None:
    """``--alpha auto`` for a maps store (a :class:`~fast3d_cli.pruning.scorers.StoreMaps`): calibrated to the
    ratio search-alpha recorded; None when it was never run on the store."""
    recorded = maps.store.attrs.get("sap") or {}
    if "target" not in recorded:
        return None
    split, tasks = recorded.get("split", "val"), recorded.get("tasks") or []
    if not tasks:
        raise UserError(f"{maps.store.path}: the recorded search-alpha result names no tasks")
    return calibrated_alpha(maps.store, maps.store.path, data, float(recorded["target"]), tasks, split)


def calibrated_alpha(
    store: Any,
    where: Any,
    data: Any,
    target: float,
    tasks: Sequence[str],
    split: str,
    limit: int | None = None,
) -> float:
    """The anchored alpha whose floored budgets prune ``target`` percent of the objects (input level) on the
    maps of ``store`` for ``tasks``/``split`` (the first ``limit`` samples of each task, or all)."""
    from fast3d_cli.data import SceneBank, load_samples

    bank = SceneBank(data, split) if SKIP_PADDING else None
    scores, excluded = {}, {}
    for task in tasks:
        group = store.group(task, split)
        rows = {index: row["object_scores"] for index, row in group.iter_samples(("object_scores",))}
        by_index = {s.index: s for s in load_samples(data, task, split)}
        indices = sorted(rows)[:limit] if limit else sorted(rows)
        unknown = [i for i in indices if i not in by_index]
        if unknown:
            raise UserError(f"{where}: {task}/{split} maps annotation {unknown[0]}, absent from the data")
        scores[task] = np.stack([rows[i] for i in indices]).astype(np.float32)
        if bank is not None:
            excluded[task] = padding_mask(bank, [by_index[i].scene_id for i in indices])
    return calibrate_alpha(scores, excluded, target)
