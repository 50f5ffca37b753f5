"""Synthetic ScanNet-like scenes: ground-truth objects, noisy detector proposals and object features."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fast3d_cli.sample_world.vocabulary import CLASSES, COLOURS, REGIONS

NEAR_WALL = 0.22  # an object whose centre lies within this share of the room's width of a wall is "at" it


def box_corners_min_max(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    centers, sizes = boxes[..., :3], boxes[..., 3:]
    return centers - sizes / 2, centers + sizes / 2


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Axis-aligned 3D IoU of every box in ``a`` [n,6] with every box in ``b`` [m,6] (center, size)."""
    a_min, a_max = box_corners_min_max(a[:, None])
    b_min, b_max = box_corners_min_max(b[None])
    inter = np.clip(np.minimum(a_max, b_max) - np.maximum(a_min, b_min), 0, None).prod(-1)
    vol_a, vol_b = a[:, None, 3:].prod(-1), b[None, :, 3:].prod(-1)
    return inter / (vol_a + vol_b - inter + 1e-8)


@dataclass
class SceneObject:
    gt_id: int
    cls: int
    colour: int
    center: np.ndarray
    size: np.ndarray

    @property
    def box(self) -> np.ndarray:
        return np.concatenate([self.center, self.size]).astype(np.float32)

    @property
    def name(self) -> str:
        return CLASSES[self.cls].name

    @property
    def colour_name(self) -> str:
        return COLOURS[self.colour]

    @property
    def size_word(self) -> str:
        ratio = float(np.prod(self.size / np.array(CLASSES[self.cls].size))) ** (1 / 3)
        return "small" if ratio < 0.92 else "big" if ratio > 1.1 else "medium-sized"


@dataclass
class Proposal:
    box: np.ndarray
    source: int  # gt_id it was detected from, -1 for a spurious detection
    cls: int
    colour: int
    quality: float  # feature reliability in (0, 1]


@dataclass
class Scene:
    scene_id: str
    room: np.ndarray  # (width, depth, height)
    objects: list[SceneObject]
    proposals: list[Proposal] = field(default_factory=list)
    _cache: dict[str, object] = field(default_factory=dict, repr=False, compare=False)

    @property
    def gt_boxes(self) -> np.ndarray:
        return np.stack([o.box for o in self.objects])

    @property
    def proposal_boxes(self) -> np.ndarray:
        return np.stack([p.box for p in self.proposals]).astype(np.float32)

    def iou_matrix(self) -> np.ndarray:
        """IoU [n_proposals, n_gt] (computed once; proposals are fixed once detected)."""
        if "iou" not in self._cache:
            self._cache["iou"] = pairwise_iou(self.proposal_boxes, self.gt_boxes)
        return self._cache["iou"]

    def best_proposal(self, gt_id: int) -> tuple[int, float]:
        column = self.iou_matrix()[:, gt_id]
        best = int(column.argmax())
        return best, float(column[best])

    def nearest_neighbour(self, obj: SceneObject) -> SceneObject:
        """The nearest object of another class (of any class when all share one), in the floor plane."""
        key = f"nb{obj.gt_id}"
        if key not in self._cache:
            others = [o for o in self.objects if o.gt_id != obj.gt_id and o.cls != obj.cls]
            others = others or [o for o in self.objects if o.gt_id != obj.gt_id]
            self._cache[key] = min(others, key=lambda o: float(np.hypot(*(o.center - obj.center)[:2])))
        return self._cache[key]

    def neighbour_of_box(self, box: np.ndarray) -> SceneObject:
        """The object whose centre is nearest (in the floor plane) to ``box``'s centre."""
        return min(self.objects, key=lambda o: float(np.hypot(*(o.center - box[:3])[:2])))

    def context_class(self, proposal: Proposal) -> int:
        """The class of what stands next to a proposal: its object's nearest neighbour (for a spurious box,
        the object nearest to it). Multi-view 2D features of a crop see this context."""
        if proposal.source >= 0:
            return self.nearest_neighbour(self.objects[proposal.source]).cls
        return self.neighbour_of_box(proposal.box).cls

    def region(self, obj: SceneObject) -> str:
        """Corner, wall or middle, from the object's centre relative to the room."""
        relative = obj.center[:2] / self.room[:2]
        near = int(((relative < NEAR_WALL) | (relative > 1 - NEAR_WALL)).sum())
        return REGIONS[{2: 0, 1: 1, 0: 2}[near]]

    def proposals_of(self, gt_ids: list[int] | set[int]) -> list[int]:
        """Indices of the proposals detected from the given ground-truth objects."""
        return [j for j, p in enumerate(self.proposals) if p.source in set(gt_ids)]

    def count(self, cls: int, colour: int | None = None) -> int:
        return sum(o.cls == cls and (colour is None or o.colour == colour) for o in self.objects)

    def members(self, cls: int, colour: int | None = None) -> list[SceneObject]:
        return [o for o in self.objects if o.cls == cls and (colour is None or o.colour == colour)]


def sample_scene(rng: np.random.Generator, scene_id: str, n_objects: int, max_proposals: int) -> Scene:
    room = np.array([rng.uniform(4, 8), rng.uniform(4, 8), 3.0])
    weights = np.array([c.weight for c in CLASSES])
    objects = []
    for gt_id in range(n_objects):
        cls = int(rng.choice(len(CLASSES), p=weights / weights.sum()))
        spec = CLASSES[cls]
        size = np.array(spec.size) * rng.uniform(0.75, 1.3) * rng.uniform(0.9, 1.1, 3)
        xy = rng.uniform(size[:2] / 2, room[:2] - size[:2] / 2)
        center = np.array([xy[0], xy[1], spec.elevation + size[2] / 2])
        objects.append(SceneObject(gt_id, cls, int(rng.integers(len(COLOURS))), center, size))
    scene = Scene(scene_id, room, objects)
    scene.proposals = _detect(rng, scene, max_proposals)
    return scene


DETECTION_TIERS = ((0.04, 0.06, 1.0), (0.2, 0.25, 0.8), (0.5, 0.5, 0.5))  # centre noise, size noise, quality


def _detect(rng: np.random.Generator, scene: Scene, max_proposals: int) -> list[Proposal]:
    """Noisy proposals: most objects well localised, some poorly, a few missed, plus spurious boxes."""
    proposals = []
    for obj in scene.objects:
        if rng.random() < 0.04:
            continue
        u = rng.random()
        tier = 0 if u < 0.8 else 1 if u < 0.92 else 2  # well / roughly / poorly localised
        centre_noise, size_noise, quality = DETECTION_TIERS[tier]
        center = obj.center + rng.normal(0, centre_noise, 3) * obj.size
        size = obj.size * np.exp(rng.normal(0, size_noise, 3))
        box = np.concatenate([center, size]).astype(np.float32)
        proposals.append(Proposal(box, obj.gt_id, obj.cls, obj.colour, quality))
    for _ in range(int(rng.integers(0, 4))):
        cls = int(rng.integers(len(CLASSES)))
        size = np.array(CLASSES[cls].size) * rng.uniform(0.6, 1.2, 3)
        center = np.concatenate([rng.uniform(0.5, scene.room[:2] - 0.5), [size[2] / 2]])
        box = np.concatenate([center, size]).astype(np.float32)
        proposals.append(Proposal(box, -1, cls, int(rng.integers(len(COLOURS))), 0.4))
    order = rng.permutation(len(proposals))[:max_proposals]
    return [proposals[i] for i in order]


@dataclass(frozen=True)
class FeatureModel:
    """Fixed random prototypes: 3D features carry class + geometry (+ some colour), 2D colour + class."""

    class_3d: np.ndarray
    class_2d: np.ndarray
    colour_3d: np.ndarray
    colour_2d: np.ndarray
    position: np.ndarray
    scale: np.ndarray
    noise: float
    context: float = 0.4

    @classmethod
    def create(cls, rng: np.random.Generator, dim: int, noise: float) -> FeatureModel:
        def unit(n: int) -> np.ndarray:
            x = rng.normal(size=(n, dim))
            return x / np.linalg.norm(x, axis=1, keepdims=True)

        return cls(
            class_3d=unit(len(CLASSES)),
            class_2d=unit(len(CLASSES)),
            colour_3d=unit(len(COLOURS)),
            colour_2d=unit(len(COLOURS)),
            position=rng.normal(size=(3, dim)) / np.sqrt(dim),
            scale=rng.normal(size=(3, dim)) / np.sqrt(dim),
            noise=noise,
        )

    def features(
        self, rng: np.random.Generator, proposal: Proposal, room: np.ndarray, context_cls: int
    ) -> tuple[np.ndarray, ...]:
        """3D: class + some colour + position + scale; 2D: colour + some class + some context (the class of
        the neighbouring object, as a multi-view crop sees it); both with noise that grows with poor
        localisation."""
        dim = self.class_3d.shape[1]
        geometry = (proposal.box[:3] / room) @ self.position * 0.8
        log_scale = np.log(proposal.box[3:] / np.array(CLASSES[proposal.cls].size)) @ self.scale * 0.5
        noise = self.noise / proposal.quality / np.sqrt(dim)
        f3d = self.class_3d[proposal.cls] + 0.3 * self.colour_3d[proposal.colour] + geometry + log_scale
        f2d = (
            self.colour_2d[proposal.colour]
            + 0.5 * self.class_2d[proposal.cls]
            + self.context * self.class_2d[context_cls]
        )
        f3d = f3d + rng.normal(0, noise, dim)
        f2d = f2d + rng.normal(0, noise, dim)
        return f3d.astype(np.float32), f2d.astype(np.float32)
