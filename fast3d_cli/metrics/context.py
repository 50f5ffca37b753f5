"""Inputs shared by the task metrics: the data context, the options and the prediction-record helpers."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fast3d_cli.errors import UserError
from fast3d_cli.metrics.boxes import as_box_array
from fast3d_cli.metrics.captions import CaptionScorer

Prediction = Mapping[str, Any]
"""One saved prediction: index, scene_id, gt_id, pred_id, qid, prompt, pred, ref_captions, type_info."""
MetricValues = dict[str, float | None]
"""Metric name -> value (fractions in [0, 1], CIDEr up to 10); None only for METEOR without Java."""

SOS_EOS_MODES: dict[str, str] = {
    "official": 'candidate "sos <pred> eos" (IoU >= thr) or "sos eos"; references as in the corpus file '
    "(what Chat-Scene/Fast3D do, whichever corpus version is loaded)",
    "match-corpus": "sos/eos removed from the prediction, then wrapped in sos/eos only if the corpus "
    'references are wrapped (otherwise the candidate is the bare prediction, or "" below the threshold)',
    "strip": 'sos/eos removed from both references and predictions; "" below the threshold',
}
"""Documented choices for `MetricOptions.scan2cap_sos_eos`."""


class MetricsError(UserError):
    """Predictions or evaluation data that cannot be scored (missing field, unknown scene, bad id, ...)."""


@dataclass(frozen=True)
class MetricOptions:
    """Choices where the official evaluation has a known quirk.

    scanqa_clean_references: False (official, spec §8.14) compares the cleaned prediction with the RAW
        ScanQA answers, for EM and for the caption metrics; True cleans the answers too, like SQA3D.
    scan2cap_sos_eos: how "sos"/"eos" markers are handled on both sides, one of `SOS_EOS_MODES`.
    """

    scanqa_clean_references: bool = False
    scan2cap_sos_eos: str = "official"

    def __post_init__(self) -> None:
        if self.scan2cap_sos_eos not in SOS_EOS_MODES:
            choices = ", ".join(SOS_EOS_MODES)
            raise MetricsError(f"unknown scan2cap_sos_eos {self.scan2cap_sos_eos!r}; choose one of {choices}")


@dataclass
class MetricContext:
    """Evaluation data: per-scene proposal and GT boxes, Scan2Cap corpus, ScanRefer lookup.

    proposal_attributes / gt_attributes: {scene_id: {"objects": [str], "locs": array [N, 6]}}; proposal
        rows are indexed by the <OBJxyz> id, GT rows by the ScanNet object id.
    scan2cap_corpus: {"scene_id|object_id": [reference captions]}; None = use the records' ref_captions.
    scanrefer_lookup: {scene_id: {str(object_id): 0 unique | 1 multiple}}; None = no Unique/Multiple keys.
    caption_scorer: a shared `CaptionScorer`; None = a temporary one per call (starts its own JVM).
    """

    proposal_attributes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    gt_attributes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    scan2cap_corpus: Mapping[str, Sequence[str]] | None = None
    scanrefer_lookup: Mapping[str, Mapping[str, int]] | None = None
    caption_scorer: CaptionScorer | None = None
    _boxes: dict[tuple[str, str], np.ndarray] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def proposal_boxes(self, scene_id: str) -> np.ndarray:
        """Proposal boxes [N, 6] (float64) of a scene."""
        return self._scene_boxes("proposal", self.proposal_attributes, scene_id)

    def gt_boxes(self, scene_id: str) -> np.ndarray:
        """GT boxes [N_gt, 6] (float64) of a scene, indexed by ScanNet object id."""
        return self._scene_boxes("GT", self.gt_attributes, scene_id)

    def _scene_boxes(
        self, kind: str, attributes: Mapping[str, Mapping[str, Any]], scene_id: str
    ) -> np.ndarray:
        cached = self._boxes.get((kind, scene_id))
        if cached is not None:
            return cached
        if scene_id not in attributes:
            raise MetricsError(f"scene {scene_id!r} is missing from the {kind} attributes")
        try:
            boxes = as_box_array(attributes[scene_id]["locs"]).reshape(-1, 6)
        except (KeyError, TypeError, ValueError) as exc:
            raise MetricsError(f"bad {kind} 'locs' for scene {scene_id!r}: {exc}") from exc
        self._boxes[(kind, scene_id)] = boxes
        return boxes

    @contextlib.contextmanager
    def scorer(self) -> Iterator[CaptionScorer]:
        """The shared caption scorer, or a temporary one that is closed afterwards."""
        if self.caption_scorer is not None:
            yield self.caption_scorer
            return
        with CaptionScorer() as scorer:
            yield scorer


MetricFunction = Callable[[Sequence[Prediction], MetricContext, MetricOptions], MetricValues]


def record_field(record: Prediction, key: str, position: int) -> Any:
    """record[key], or a MetricsError naming the record."""
    try:
        return record[key]
    except (KeyError, TypeError):
        raise MetricsError(f"prediction record {position} has no {key!r} field") from None


def record_int(record: Prediction, key: str, position: int) -> int:
    """record[key] as an int, or a MetricsError naming the record."""
    value = record_field(record, key, position)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise MetricsError(f"prediction record {position}: {key!r} must be an int, got {value!r}") from None


def row(boxes: np.ndarray, index: int, what: str, scene_id: str) -> np.ndarray:
    """boxes[index] with a clear error for an index outside the scene's boxes."""
    if not 0 <= index < len(boxes):
        raise MetricsError(f"{what} {index} out of range for scene {scene_id!r} ({len(boxes)} boxes)")
    return boxes[index]


def require_predictions(task: str, predictions: Sequence[Prediction]) -> None:
    """Raise MetricsError for an empty prediction list (every metric divides by the count)."""
    if len(predictions) == 0:
        raise MetricsError(f"no {task} predictions to score")
