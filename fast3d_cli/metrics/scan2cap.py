"""Scan2Cap caption metrics gated by box IoU (spec §6.3)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fast3d_cli.metrics.bleu import bleu_statistics
from fast3d_cli.metrics.boxes import box_iou
from fast3d_cli.metrics.captions import CAPTION_METRICS
from fast3d_cli.metrics.context import (
    MetricContext,
    MetricOptions,
    MetricsError,
    MetricValues,
    Prediction,
    record_field,
    record_int,
    require_predictions,
    row,
)
from fast3d_cli.metrics.grounding import HEADLINE_IOU, IOU_THRESHOLDS
from fast3d_cli.metrics.units import TaskEvaluation, TaskUnits


def strip_sos_eos(text: str) -> str:
    """Remove one leading "sos" and one trailing "eos" word (any case); whitespace collapsed."""
    words = text.split()
    if words and words[0].lower() == "sos":
        words = words[1:]
    if words and words[-1].lower() == "eos":
        words = words[:-1]
    return " ".join(words)


def is_wrapped(text: str) -> bool:
    """Whether a caption starts with the word "sos" and ends with the word "eos"."""
    words = text.lower().split()
    return len(words) >= 2 and words[0] == "sos" and words[-1] == "eos"


def corpus_is_wrapped(corpus: Mapping[str, Sequence[str]]) -> bool:
    """True if every reference is sos/eos-wrapped, False if none is; MetricsError if mixed."""
    flags = {is_wrapped(ref) for refs in corpus.values() for ref in refs}
    if len(flags) > 1:
        raise MetricsError("the Scan2Cap corpus mixes sos/eos-wrapped and bare references; use 'strip'")
    return flags == {True}


def _item_key(record: Prediction, pos: int) -> str:
    return f"{record_field(record, 'scene_id', pos)}|{record_int(record, 'gt_id', pos)}"


def _scan2cap_references(
    predictions: Sequence[Prediction], context: MetricContext, mode: str
) -> tuple[dict[str, list[str]], bool]:
    """(references per corpus item, whether candidates are sos/eos-wrapped) for the sos/eos ``mode``."""
    corpus = context.scan2cap_corpus
    if corpus is None:
        corpus = {
            _item_key(record, pos): record_field(record, "ref_captions", pos)
            for pos, record in enumerate(predictions)
        }
    if not corpus:
        raise MetricsError("the Scan2Cap corpus is empty")
    for key, refs in corpus.items():
        if isinstance(refs, str) or len(refs) == 0:
            raise MetricsError(f"Scan2Cap corpus item {key!r} must be a non-empty list of captions")
    if mode == "official":
        wrap = True
    elif mode == "match-corpus":
        wrap = corpus_is_wrapped(corpus)
    else:
        wrap = False
    references = {
        key: [strip_sos_eos(ref) if mode == "strip" else ref for ref in refs] for key, refs in corpus.items()
    }
    return references, wrap


def _scan2cap_candidates(
    predictions: Sequence[Prediction],
    context: MetricContext,
    references: Mapping[str, Sequence[str]],
    mode: str,
    wrap: bool,
) -> dict[str, dict[str, str]]:
    """Threshold label -> {predicted corpus item: the caption if IoU >= threshold, else the empty one}."""
    empty = "sos eos" if wrap else ""
    candidates: dict[str, dict[str, str]] = {label: {} for label in IOU_THRESHOLDS}
    for pos, record in enumerate(predictions):
        scene_id = str(record_field(record, "scene_id", pos))
        gt_id = record_int(record, "gt_id", pos)
        pred_id = record_int(record, "pred_id", pos)
        key = _item_key(record, pos)
        if key not in references:
            raise MetricsError(f"prediction record {pos}: {key!r} is not in the Scan2Cap corpus")
        pred_box = row(context.proposal_boxes(scene_id), pred_id, "proposal id", scene_id)
        iou = box_iou(pred_box, row(context.gt_boxes(scene_id), gt_id, "GT object id", scene_id))
        text = str(record_field(record, "pred", pos))
        if mode != "official":
            text = strip_sos_eos(text)
        caption = (f"sos {text} eos" if wrap else text).replace("\n", " ")
        for label, threshold in IOU_THRESHOLDS.items():
            candidates[label][key] = caption if iou >= threshold else empty
    return candidates


def scan2cap_evaluation(
    predictions: Sequence[Prediction], context: MetricContext, options: MetricOptions
) -> TaskEvaluation:
    """Caption metrics @0.25/@0.50 over every corpus item (item key "scene_id|gt_id"); units: the corpus
    items with their BLEU-4 statistics @0.50.

    The candidate is the prediction if IoU(proposal[pred_id], GT[gt_id]) >= threshold, else the empty
    caption; corpus items without a prediction get the empty caption. Wrapping in "sos ... eos" follows
    `MetricOptions.scan2cap_sos_eos`. Without a corpus the records' ref_captions are the corpus (then
    only predicted items are scored). A later record with the same key replaces an earlier one.
    """
    require_predictions("scan2cap", predictions)
    mode = options.scan2cap_sos_eos
    references, wrap = _scan2cap_references(predictions, context, mode)
    candidates = _scan2cap_candidates(predictions, context, references, mode, wrap)
    empty = "sos eos" if wrap else ""

    with context.scorer() as scorer:
        tokenized_refs = scorer.tokenize(references)
        all_candidates = {
            f"{label}#{key}": [candidates[label].get(key, empty)]
            for label in IOU_THRESHOLDS
            for key in references
        }
        tokenized = scorer.tokenize(all_candidates)
        scores: MetricValues = {}
        for label in IOU_THRESHOLDS:
            cands = {key: tokenized[f"{label}#{key}"] for key in references}
            values = scorer.score_tokenized(tokenized_refs, cands)
            scores.update({f"[scan2cap] {name}@{label}": values[name] for name in CAPTION_METRICS})
    keys = tuple(references)
    headline_cands = {key: tokenized[f"{HEADLINE_IOU}#{key}"] for key in keys}
    units = TaskUnits("scan2cap", "bleu4", keys, bleu_statistics(tokenized_refs, headline_cands, keys))
    return TaskEvaluation(scores, units)


def scan2cap_metrics(
    predictions: Sequence[Prediction], context: MetricContext, options: MetricOptions
) -> MetricValues:
    """The metric values of `scan2cap_evaluation`."""
    return scan2cap_evaluation(predictions, context, options).metrics
