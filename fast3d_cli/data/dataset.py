"""Samples of a task/split and the per-scene object tensors they refer to (spec §2.2-§2.5)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from fast3d_cli.data.config import DataConfig
from fast3d_cli.data.formats import feature_key, read_json, read_pt
from fast3d_cli.data.tasks import get_task
from fast3d_cli.errors import DataFileError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Sample:
    """One annotation row. ``index`` is its position in the annotation JSON (the key every store uses)."""

    task: str
    split: str
    index: int
    scene_id: str
    obj_id: int
    prompt: str
    ref_captions: tuple[Any, ...] = ()
    caption: str | None = None  # training target (train split only)
    pred_id: int = 0  # scan2cap: the proposal being captioned
    type_info: Any = None  # sqa_type (sqa3d) or eval_type (multi3dref)
    iou: float | None = None
    evidence: tuple[int, ...] | None = None  # proposals the answer depends on (sample world only)


def _sample_from_row(task: str, split: str, index: int, row: dict[str, Any]) -> Sample:
    spec = get_task(task)
    try:
        return Sample(
            task=task,
            split=split,
            index=index,
            scene_id=row["scene_id"],
            obj_id=int(row.get("obj_id", 0)),
            prompt=row["prompt"],
            ref_captions=tuple(row.get("ref_captions", ())),
            caption=row.get("caption"),
            pred_id=int(row.get("pred_id", 0)),
            type_info=row.get(spec.type_field) if spec.type_field else None,
            iou=row.get("iou"),
            evidence=tuple(int(j) for j in row["evidence"]) if "evidence" in row else None,
        )
    except KeyError as err:
        raise DataFileError(f"{task} {split} annotation {index} lacks field {err.args[0]!r}") from None


def load_samples(config: DataConfig, task: str, split: str) -> list[Sample]:
    """Read the annotation JSON of ``task``/``split`` into samples, in file order."""
    path = config.annotation_path(task, split)
    rows = read_json(path)
    if not isinstance(rows, list):
        raise DataFileError(f"{path} should hold a JSON list of annotations")
    return [_sample_from_row(task, split, i, row) for i, row in enumerate(rows)]


class SceneBank:
    """Object features and boxes of one split, built per scene as Chat-Scene does (zeros if missing)."""

    def __init__(self, config: DataConfig, split: str) -> None:
        self.config = config
        self.split = split
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @cached_property
    def feats_3d(self) -> dict[str, torch.Tensor]:
        return self._load_feature_dict(self.config.feats_3d)

    @cached_property
    def feats_2d(self) -> dict[str, torch.Tensor]:
        return self._load_feature_dict(self.config.feats_2d)

    @cached_property
    def proposal_attributes(self) -> dict[str, dict[str, Any]]:
        return read_pt(self.config.path(self.config.proposal_attributes, self.split))

    @cached_property
    def gt_attributes(self) -> dict[str, dict[str, Any]]:
        return read_pt(self.config.path(self.config.gt_attributes, self.split))

    def _load_feature_dict(self, name: str) -> dict[str, torch.Tensor]:
        data = read_pt(self.config.path(name))
        if not isinstance(data, dict) or not data:
            raise DataFileError(f"{self.config.path(name)} should hold a non-empty dict of feature tensors")
        return data

    @cached_property
    def feature_dims(self) -> tuple[int, int]:
        return next(iter(self.feats_3d.values())).numel(), next(iter(self.feats_2d.values())).numel()

    def object_features(self, scene_id: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Float32 [max_obj_num, D3] and [max_obj_num, D2] features; absent objects are zero vectors."""
        if scene_id not in self._cache:
            import torch

            n = self.config.max_obj_num
            d3, d2 = self.feature_dims
            f3d, f2d = torch.zeros(n, d3), torch.zeros(n, d2)
            for j in range(n):
                key = feature_key(scene_id, j)
                if key in self.feats_3d:
                    f3d[j] = self.feats_3d[key].float().reshape(-1)
                if key in self.feats_2d:
                    f2d[j] = self.feats_2d[key].float().reshape(-1)
            self._cache[scene_id] = (f3d, f2d)
        return self._cache[scene_id]

    def proposal_locs(self, scene_id: str) -> torch.Tensor:
        """Proposal boxes [min(N,100), 6] (center xyz, size xyz)."""
        try:
            return self.proposal_attributes[scene_id]["locs"]
        except KeyError:
            raise DataFileError(
                f"scene {scene_id} missing from the {self.split} proposal attributes"
            ) from None
