"""The sample model's training recipe: architecture, curriculum stages, optimiser and loss weights.

Every field is recorded in ``training.json`` and in the checkpoint, so a run is reproducible from it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class HeadRoles:
    """(layer, head) of the three scaffolded heads; ``-1`` as a layer means the last one."""

    binding: tuple[int, int] = (0, 0)
    gather: tuple[int, int] = (1, 1)
    grounding: tuple[int, int] = (2, 0)
    first_grounded_layer: int = 2  # answer_grounding supervises the layers from here on (after the gather)


@dataclass(frozen=True)
class LossWeights:
    binding: float = 1.0
    gather: float = 1.0
    grounding: float = 1.0
    answer_grounding: float = 1.0
    focus: float = 0.0
    readout: float = 1.0


TASK_WEIGHTS = {
    "scanrefer": 1.0,
    "multi3dref": 1.0,
    "scan2cap": 1.0,
    "scanqa": 1.0,
    "sqa3d": 1.0,
    "obj_align": 0.5,
}


@dataclass(frozen=True)
class Stage:
    """A stretch of training on one kind of scene and layout."""

    name: str
    steps: int
    min_objects: int
    max_objects: int
    padding: int  # padding slots kept per sequence, at most (-1: all of them, Chat-Scene's exact layout)
    weights: LossWeights = field(default_factory=LossWeights)


DEFAULT_STAGES: tuple[Stage, ...] = (
    Stage("tiny scenes", 150, 2, 3, 8),
    Stage("small scenes", 350, 2, 8, 8),
    Stage("world-sized scenes", 700, 8, 40, 8, LossWeights(focus=1.0)),
    Stage("Chat-Scene layout", 300, 8, 40, -1, LossWeights(focus=1.0)),
)


@dataclass(frozen=True)
class TrainSpec:
    seed: int = 0
    stream_seed: int = 1  # the training stream; held-out probes use another seed
    probe_seed: int = 1_000_003
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 512
    # With head_dim 32 and RoPE base 1e4 only ~4 of 16 rotary frequencies are slow enough for content
    # matching across the 300-token object list; base 1e6 keeps ~8, the ones the grounding head matches on.
    rope_theta: float = 1e6
    batch_size: int = 32
    scenes_per_batch: int = 8
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    stages: tuple[Stage, ...] = DEFAULT_STAGES
    task_weights: dict[str, float] = field(default_factory=lambda: dict(TASK_WEIGHTS))
    roles: HeadRoles = field(default_factory=HeadRoles)
    scaffold: bool = True
    log_every: int = 25
    probe_every: int = 250
    probe_samples: int = 48
    checkpoint_every: int = 100

    @property
    def steps(self) -> int:
        return sum(s.steps for s in self.stages)

    def stage_at(self, step: int) -> Stage:
        for stage in self.stages:
            if step < stage.steps:
                return stage
            step -= stage.steps
        return self.stages[-1]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def load(cls, path: Path) -> TrainSpec:
        """A recipe from a JSON file: a TrainSpec as ``to_dict`` writes it, or a ``training.json`` (its
        ``spec``); a missing or malformed file is a ``UserError`` naming it."""
        import json

        from fast3d_cli.errors import UserError

        try:
            data = json.loads(Path(path).read_text())
            return cls.from_dict(data.get("spec", data))
        except OSError as err:
            raise UserError(f"cannot read recipe {path}: {err.strerror or err}") from None
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            raise UserError(f"{path} is not a sample-model recipe: {err}") from None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainSpec:
        data = dict(data)
        data["stages"] = (
            tuple(
                Stage(**{**s, "weights": LossWeights(**s.get("weights", {}))}) for s in data.get("stages", ())
            )
            or DEFAULT_STAGES
        )
        data["roles"] = HeadRoles(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in data.get("roles", {}).items()}
        )
        return cls(**data)
