"""An unlimited stream of fresh training scenes, in distribution with the committed world.

Each streamed scene is drawn like a committed one (``sample_scene``), its features come from the committed
world's feature prototypes (``feature_model(spec)``), and its rows are the train-split rows of every task,
with ``evidence`` (the proposals each answer depends on) and ``keywords`` (the prompt words that name them).
Training the sample model on this stream instead of the fixed 72 train scenes removes memorisation as a way
to lower the loss. Different seeds give disjoint streams, so a held-out stream serves for model selection
without touching the val split.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fast3d_cli.sample_world import tasks as rows
from fast3d_cli.sample_world.generator import WorldSpec, feature_model, scene_features
from fast3d_cli.sample_world.scene import Scene, sample_scene

TRAIN_ROW_BUILDERS = ("scanrefer", "multi3dref", "scan2cap", "scanqa", "sqa3d", "obj_align")


@dataclass
class StreamedScene:
    """One fresh scene: its objects, features [n_proposals, D] and train rows per task."""

    scene: Scene
    feats_3d: np.ndarray  # float32
    feats_2d: np.ndarray  # float32 values of float16 features, as the committed 2D features are stored
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def n_proposals(self) -> int:
        return len(self.scene.proposals)


def scene_rows(
    rng: np.random.Generator, scene: Scene, obj_align_rows: int = 4
) -> dict[str, list[dict[str, Any]]]:
    """Train-split rows of every task for one scene (the committed world's builders)."""
    descs = rows.scene_descriptions(rng, scene)
    return {
        "scanrefer": rows.scanrefer_rows(rng, scene, descs, "train"),
        "multi3dref": rows.multi3dref_rows(rng, scene, "train"),
        "scan2cap": rows.scan2cap_rows(rng, scene, descs, "train"),
        "scanqa": rows.scanqa_rows(rng, scene, "train"),
        "sqa3d": rows.sqa3d_rows(rng, scene, "train"),
        "obj_align": rows.obj_align_rows(rng, scene, obj_align_rows),
    }


class SceneStream:
    """``for s in SceneStream(spec, seed=1): ...`` yields fresh scenes forever (deterministic per seed).

    ``min_objects``/``max_objects`` narrow the object count (default: the world's own range) for curricula;
    at least 2 objects are drawn, since neighbour relations need two, and scenes in which the detector found
    nothing are skipped.
    """

    def __init__(
        self, spec: WorldSpec | None = None, seed: int = 1, min_objects: int | None = None,
        max_objects: int | None = None,
    ) -> None:  # fmt: skip
        self.spec = spec or WorldSpec()
        self.seed = seed
        self.min_objects = max(2, min_objects if min_objects is not None else self.spec.min_objects)
        self.max_objects = max(self.min_objects, max_objects or self.spec.max_objects)
        self._features = feature_model(self.spec)

    def __iter__(self) -> Iterator[StreamedScene]:
        rng = np.random.default_rng([self.spec.seed, self.seed])
        index = 0
        while True:
            scene = self.draw(rng, f"stream{self.seed}_{index:07}")
            index += 1
            if scene is not None:
                yield scene

    def draw(self, rng: np.random.Generator, scene_id: str) -> StreamedScene | None:
        n_objects = int(rng.integers(self.min_objects, self.max_objects + 1))
        scene = sample_scene(rng, scene_id, n_objects, self.spec.max_proposals)
        if not scene.proposals:
            return None
        feats_3d, feats_2d = scene_features(self._features, rng, scene)
        return StreamedScene(scene, feats_3d, feats_2d.astype(np.float32), scene_rows(rng, scene))
