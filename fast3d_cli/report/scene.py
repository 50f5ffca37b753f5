"""The top view's content: one sample's boxes, true and predicted attention, kept and referred objects."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fast3d_cli.data import DataConfig, Sample, SceneBank, load_samples
from fast3d_cli.errors import UserError
from fast3d_cli.report.results import EvalResult

Note = Callable[[str], None]


@dataclass(frozen=True)
class Box:
    """An object's footprint on the floor plane: center and size in x/y (metres)."""

    slot: int
    cx: float
    cy: float
    sx: float
    sy: float
    name: str = ""


@dataclass
class SceneView:
    sample: Sample
    boxes: list[Box]  # real proposals of the scene (padded slots left out)
    panels: dict[str, np.ndarray] = field(default_factory=dict)  # title -> attention share per slot
    kept: list[int] | None = None
    kept_source: str = ""
    referred: list[Box] = field(default_factory=list)
    referred_kind: str = ""  # "GT box" or "proposal"


def parse_sample_ref(text: str) -> tuple[str, int]:
    """``task:index`` -> (task, index); UserError naming --sample otherwise."""
    from fast3d_cli.data.tasks import get_task

    task, sep, index = text.partition(":")
    if not sep or not index.strip().lstrip("-").isdigit():
        raise UserError(f"--sample must be TASK:INDEX (e.g. scanrefer:0), got {text!r}")
    get_task(task.strip())
    return task.strip(), int(index)


def _pruned_with_kept(results: Sequence[EvalResult], split: str) -> list[EvalResult]:
    return [r for r in results if not r.is_dense and r.split == split and r.has_kept_objects]


def choose_sample(
    results: Sequence[EvalResult], ref: tuple[str, int] | None, split: str
) -> tuple[str, int, EvalResult | None]:
    """The sample to draw and the pruned result whose kept set outlines it (None when none recorded one)."""
    candidates = _pruned_with_kept(results, split)
    if ref is not None:
        task, index = ref
        for result in candidates:
            record = result.record(task, index)
            if record is not None and record.get("kept_objects") is not None:
                return task, index, result
        return task, index, None
    for result in candidates:
        for task in result.tasks:
            for record in result.predictions(task):
                if record.get("kept_objects") is not None:
                    return task, int(record["index"]), result
    for result in results:
        for task in result.tasks:
            rows = result.predictions(task)
            if rows:
                return task, int(rows[0]["index"]), None
    raise UserError("no prediction records in the given results to pick a sample from; use --sample")


def find_sample(data: DataConfig, task: str, index: int, split: str) -> Sample:
    samples = load_samples(data, task, split)
    if not 0 <= index < len(samples):
        raise UserError(f"--sample {task}:{index}: {task}/{split} has samples 0..{len(samples) - 1}")
    return samples[index]


def store_row(path: Path, kind: str, task: str, split: str, index: int, note: Note) -> np.ndarray | None:
    """The object_scores row of one sample, or None (with a note) when the store lacks it."""
    from fast3d_cli.stores import open_store

    store = open_store(path, kind=kind)
    if not store.has_group(task, split):
        note(f"{path} has no {task}/{split} maps; its panel is left out")
        return None
    group = store.group(task, split)
    rows = np.nonzero(group.array("sample_index")[:] == index)[0]
    if len(rows) == 0:
        note(f"{path} has no written row for {task}/{split} sample {index}; its panel is left out")
        return None
    return np.asarray(group.array("object_scores")[int(rows[0])], dtype=np.float64)


def attention_share(scores: np.ndarray) -> np.ndarray:
    """Attention mass over the object slots, normalised to sum to 1."""
    values = np.nan_to_num(np.clip(scores, 0, None), nan=0.0)
    total = values.sum()
    return values / total if total > 0 else values


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.nan_to_num(logits, nan=-np.inf) - np.nanmax(logits)
    weights = np.exp(shifted)
    return weights / weights.sum()


def _boxes(locs, names: Sequence[str] | None, slots: Sequence[int]) -> list[Box]:
    array = np.asarray(locs, dtype=np.float64).reshape(-1, 6)
    out = []
    for slot in slots:
        if 0 <= slot < len(array):
            cx, cy, _, sx, sy, _ = array[slot].tolist()
            if sx > 0 and sy > 0:  # zero-size boxes are padding
                name = str(names[slot]) if names is not None and slot < len(names) else ""
                out.append(Box(slot, cx, cy, sx, sy, name))
    return out


def _referred(sample: Sample, bank: SceneBank) -> tuple[list[Box], str]:
    if sample.task in ("scanrefer", "multi3dref"):
        scene = bank.gt_attributes.get(sample.scene_id)
        if scene is None:
            return [], ""
        if sample.task == "scanrefer":
            ids = [sample.obj_id]
        else:
            ids = [int(i) for i in sample.ref_captions if isinstance(i, int | str) and str(i).isdigit()]
        return _boxes(scene["locs"], scene.get("objects"), ids), "GT box"
    if sample.task == "scan2cap":
        scene = bank.proposal_attributes.get(sample.scene_id, {})
        return _boxes(scene.get("locs", []), scene.get("objects"), [sample.pred_id]), "proposal"
    return [], ""


def scene_view(
    data: DataConfig,
    sample: Sample,
    kept_result: EvalResult | None,
    true_maps: Path | None,
    pred_maps: Path | None,
    note: Note,
) -> SceneView | None:
    """Everything the top view draws, or None (with a note) when no panel has data."""
    bank = SceneBank(data, sample.split)
    scene = bank.proposal_attributes.get(sample.scene_id)
    if scene is None:
        note(f"scene {sample.scene_id} is not in the {sample.split} proposal attributes; no top view")
        return None
    locs = scene["locs"]
    boxes = _boxes(locs, scene.get("objects"), range(min(len(locs), data.max_obj_num)))
    view = SceneView(sample, boxes)
    if true_maps is not None:
        row = store_row(true_maps, "attention", sample.task, sample.split, sample.index, note)
        if row is not None:
            view.panels[f"true attention ({true_maps.name})"] = attention_share(row)
    if pred_maps is not None:
        row = store_row(pred_maps, "prediction", sample.task, sample.split, sample.index, note)
        if row is not None:
            view.panels[f"predicted: softmax of GAP logits ({pred_maps.name})"] = softmax(row)
    if not view.panels:
        return None
    if kept_result is not None:
        record = kept_result.record(sample.task, sample.index) or {}
        view.kept = record.get("kept_objects")
        view.kept_source = kept_result.label
    else:
        note("no pruned result recorded kept_objects for this sample; the kept set is not outlined")
    view.referred, view.referred_kind = _referred(sample, bank)
    return view
