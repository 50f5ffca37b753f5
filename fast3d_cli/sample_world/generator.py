"""Write the whole sample world to disk in the Chat-Scene file layout (spec §2.1-§2.4).

Deterministic: the same ``WorldSpec`` always gives byte-identical JSON and identical tensors.
``seed`` fixes the feature prototypes (what the sample model learned to read); ``scene_seed`` (default:
``seed``) fixes the scenes, so a world with the committed ``seed`` and another ``scene_seed`` is a fresh
test world that the committed model understands.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fast3d_cli.data.formats import feature_key, write_json, write_pt
from fast3d_cli.data.tasks import AUXILIARY_TASKS, TASKS
from fast3d_cli.errors import UserError
from fast3d_cli.sample_world import tasks as rows
from fast3d_cli.sample_world.scene import FeatureModel, Scene, sample_scene
from fast3d_cli.sample_world.vocabulary import CLASSES, COLOURS

GENERATOR_VERSION = 3


@dataclass(frozen=True)
class WorldSpec:
    seed: int = 0
    scene_seed: int | None = None  # None: draw the scenes from ``seed`` (the committed world)
    n_train_scenes: int = 72
    n_val_scenes: int = 24
    min_objects: int = 8
    max_objects: int = 40
    max_proposals: int = 100
    feat_dim: int = 64
    feature_noise: float = 0.35
    val_samples_per_task: int = 440
    train_samples_per_task: int = 4000
    obj_align_per_scene: int = 60


MIN_OBJECTS = 2  # neighbour relations ("next to the ...") need two objects


def parse_object_range(text: str, max_objects: int = WorldSpec.max_proposals) -> tuple[int, int]:
    """``"20-60"`` -> (20, 60), ``"30"`` -> (30, 30): how many objects a world's scenes hold.

    Raises ``UserError`` for a non-integer, a reversed range, fewer than 2 objects or more than
    ``max_objects`` (the model's ``max_obj_num``: every proposal needs an object slot).
    """
    parts = text.strip().split("-")
    if len(parts) not in (1, 2) or not all(p.strip().isdigit() for p in parts):
        raise UserError(f"--objects must be N or MIN-MAX with integers (e.g. 20-60), got {text!r}")
    low, high = int(parts[0]), int(parts[-1])
    if low > high:
        raise UserError(f"--objects range {text!r} is reversed: write MIN-MAX with MIN <= MAX")
    if low < MIN_OBJECTS or high > max_objects:
        raise UserError(
            f"--objects {text!r} is out of range: scenes hold {MIN_OBJECTS} to {max_objects} objects "
            f"(max_obj_num)"
        )
    return low, high


def file_row(row: dict[str, Any]) -> dict[str, Any]:
    """An annotation row as written: the Chat-Scene fields plus ``evidence`` (the proposals the answer
    depends on; readers of the official format ignore it). ``keywords`` stay in memory (training only)."""
    return {k: v for k, v in row.items() if k != "keywords"}


def _scenes(spec: WorldSpec, rng: np.random.Generator) -> dict[str, list[Scene]]:
    counts = {"train": spec.n_train_scenes, "val": spec.n_val_scenes}
    scenes: dict[str, list[Scene]] = {}
    index = 0
    for split, n in counts.items():
        scenes[split] = []
        for _ in range(n):
            n_objects = int(rng.integers(spec.min_objects, spec.max_objects + 1))
            scenes[split].append(sample_scene(rng, f"scene{index:04}_00", n_objects, spec.max_proposals))
            index += 1
    return scenes


def _subsample(rng: np.random.Generator, items: list[Any], limit: int) -> list[Any]:
    if len(items) <= limit:
        return items
    keep = np.sort(rng.choice(len(items), size=limit, replace=False))
    return [items[i] for i in keep]


def _task_rows(
    rng: np.random.Generator, scenes: list[Scene], split: str, descs: dict[str, dict[int, list[str]]]
):
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in TASKS}
    for scene in scenes:
        d = descs[scene.scene_id]
        out["scanrefer"] += rows.scanrefer_rows(rng, scene, d, split)
        out["multi3dref"] += rows.multi3dref_rows(rng, scene, split)
        out["scan2cap"] += rows.scan2cap_rows(rng, scene, d, split)
        out["scanqa"] += rows.scanqa_rows(rng, scene, split)
        out["sqa3d"] += rows.sqa3d_rows(rng, scene, split)
    return out


def _attributes(scenes: list[Scene], proposals: bool) -> dict[str, dict[str, Any]]:
    import torch

    attrs = {}
    for scene in scenes:
        if proposals:
            labels = [CLASSES[p.cls].name for p in scene.proposals]
            locs = scene.proposal_boxes
        else:
            labels = [o.name for o in scene.objects]
            locs = scene.gt_boxes
        attrs[scene.scene_id] = {
            "objects": labels,
            "locs": torch.from_numpy(np.asarray(locs, dtype=np.float32)),
        }
    return attrs


def feature_model(spec: WorldSpec) -> FeatureModel:
    """The world's fixed feature prototypes (shared by the committed scenes and the training stream)."""
    return FeatureModel.create(np.random.default_rng(spec.seed + 1), spec.feat_dim, spec.feature_noise)


def scene_features(
    model: FeatureModel, rng: np.random.Generator, scene: Scene
) -> tuple[np.ndarray, np.ndarray]:
    """[n_proposals, D] 3D features (float32) and 2D features (float16, as Chat-Scene stores them)."""
    pairs = [model.features(rng, p, scene.room, scene.context_class(p)) for p in scene.proposals]
    return np.stack([a for a, _ in pairs]), np.stack([b for _, b in pairs]).astype(np.float16)


def _features(spec: WorldSpec, rng: np.random.Generator, scenes: list[Scene]):
    import torch

    model = feature_model(spec)
    f3d, f2d = {}, {}
    for scene in scenes:
        a, b = scene_features(model, rng, scene)
        for j in range(len(scene.proposals)):
            f3d[feature_key(scene.scene_id, j)] = torch.from_numpy(a[j])
            f2d[feature_key(scene.scene_id, j)] = torch.from_numpy(b[j])
    return f3d, f2d


def _unique_multiple_lookup(
    scenes: list[Scene], descs: dict[str, dict[int, list[str]]]
) -> dict[str, dict[str, int]]:
    """ScanRefer's lookup: 0 if the object's class occurs once among the scene's described objects, else 1."""
    lookup = {}
    for scene in scenes:
        described = [scene.objects[g] for g in descs[scene.scene_id]]
        lookup[scene.scene_id] = {
            str(o.gt_id): int(sum(x.cls == o.cls for x in described) > 1) for o in described
        }
    return lookup


def generate_world(out_dir: Path, spec: WorldSpec | None = None) -> dict[str, Any]:
    """Generate the sample world into ``out_dir/annotations`` and return its summary."""
    spec = spec or WorldSpec()
    rng = np.random.default_rng(spec.seed if spec.scene_seed is None else spec.scene_seed)
    root = Path(out_dir) / "annotations"
    scenes = _scenes(spec, rng)
    all_scenes = scenes["train"] + scenes["val"]
    descs = {s.scene_id: rows.scene_descriptions(rng, s) for s in all_scenes}
    counts: dict[str, dict[str, int]] = {}
    for split, split_scenes in scenes.items():
        limit = spec.train_samples_per_task if split == "train" else spec.val_samples_per_task
        for task, task_rows in _task_rows(rng, split_scenes, split, descs).items():
            if not (split == "val" and task == "scan2cap"):  # scan2cap val keeps every matched object
                task_rows = _subsample(rng, task_rows, limit)
            write_json(root / TASKS[task].annotation_file(split), [file_row(r) for r in task_rows], indent=1)
            counts.setdefault(task, {})[split] = len(task_rows)
        if split == "train":
            align = [r for s in split_scenes for r in rows.obj_align_rows(rng, s, spec.obj_align_per_scene)]
            align = [file_row(r) for r in align]
            write_json(root / AUXILIARY_TASKS["obj_align"].annotation_file(split), align, indent=1)
            counts["obj_align"] = {"train": len(align)}
        write_pt(root / f"scannet_mask3d_{split}_attributes.pt", _attributes(split_scenes, proposals=True))
        write_pt(root / f"scannet_{split}_attributes.pt", _attributes(split_scenes, proposals=False))
    f3d, f2d = _features(spec, rng, all_scenes)
    write_pt(root / "scannet_mask3d_uni3d_feats.pt", f3d)
    write_pt(root / "scannet_mask3d_videofeats.pt", f2d)
    corpus = {
        f"{s.scene_id}|{gt_id}": [f"sos {d} eos" for d in texts]
        for s in scenes["val"]
        for gt_id, texts in descs[s.scene_id].items()
    }
    write_json(root / "scan2cap_val_corpus.json", corpus, indent=1)
    write_json(
        root / "scanrefer_unique_multiple_lookup.json", _unique_multiple_lookup(all_scenes, descs), indent=1
    )
    summary = {
        "generator_version": GENERATOR_VERSION,
        "spec": asdict(spec),
        "classes": [c.name for c in CLASSES],
        "colours": list(COLOURS),
        "scenes": {split: [s.scene_id for s in sc] for split, sc in scenes.items()},
        "samples": counts,
        "max_proposals_in_a_scene": max(len(s.proposals) for s in all_scenes),
    }
    write_json(Path(out_dir) / "world.json", summary, indent=1)
    return summary
