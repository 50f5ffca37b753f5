"""ScanQA (spec §6.5) and SQA3D (spec §6.6): exact match, refined exact match and caption metrics."""

from __future__ import annotations

from collections.abc import Sequence

from fast3d_cli.metrics.answers import answer_match, clean_answer, normalize_prediction
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
)

SQA3D_TYPES: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
"""sqa_type: 0 what, 1 is, 2 how, 3 can, 4 which, 5 other."""
SQA3D_TYPE_COUNT_START = 1e-10
"""Per-type counts start here, as official, so an absent type scores 0 instead of dividing by zero."""


def _qa_metrics(
    task: str, predictions: Sequence[Prediction], context: MetricContext, clean_refs: bool, by_type: bool
) -> MetricValues:
    require_predictions(task, predictions)
    em_total = refined_total = 0
    em_type = dict.fromkeys(SQA3D_TYPES, 0)
    refined_type = dict.fromkeys(SQA3D_TYPES, 0)
    type_count = dict.fromkeys(SQA3D_TYPES, SQA3D_TYPE_COUNT_START)
    candidates: dict[str, list[str]] = {}
    references: dict[str, list[str]] = {}
    for pos, record in enumerate(predictions):
        raw_refs = record_field(record, "ref_captions", pos)
        if isinstance(raw_refs, str) or len(raw_refs) == 0:
            raise MetricsError(f"prediction record {pos}: ref_captions must be a non-empty list of answers")
        pred = normalize_prediction(str(record_field(record, "pred", pos)))
        refs = [clean_answer(str(ref)) if clean_refs else str(ref) for ref in raw_refs]
        em, refined = answer_match(pred, refs)
        em_total += em
        refined_total += refined
        if by_type:
            sqa_type = record_int(record, "type_info", pos)
            if sqa_type not in type_count:
                raise MetricsError(f"prediction record {pos}: sqa3d type_info must be 0..5, got {sqa_type}")
            em_type[sqa_type] += em
            refined_type[sqa_type] += refined
            type_count[sqa_type] += 1
        qid = record.get("qid", 0)
        item_id = f"{record_field(record, 'scene_id', pos)}_{record_field(record, 'gt_id', pos)}_{qid}_{pos}"
        candidates[item_id] = [pred]
        references[item_id] = [ref.replace("\n", " ").strip() for ref in refs]

    scores: MetricValues = {
        f"[{task}] EM1": em_total / len(predictions),
        f"[{task}] EM1_refined": refined_total / len(predictions),
    }
    if by_type:
        for t in SQA3D_TYPES:
            scores[f"[{task}] EM_type{t}"] = em_type[t] / type_count[t]
            scores[f"[{task}] EM_refined_type{t}"] = refined_type[t] / type_count[t]
    with context.scorer() as scorer:
        values = scorer.score_tokenized(scorer.tokenize(references), scorer.tokenize(candidates))
    scores.update({f"[{task}] {name}": values[name] for name in CAPTION_METRICS})
    return scores


def scanqa_metrics(
    predictions: Sequence[Prediction], context: MetricContext, options: MetricOptions
) -> MetricValues:
    """[scanqa] EM1, EM1_refined and caption metrics; references cleaned only if
    `options.scanqa_clean_references` (official: raw references)."""
    return _qa_metrics("scanqa", predictions, context, options.scanqa_clean_references, by_type=False)


def sqa3d_metrics(
    predictions: Sequence[Prediction], context: MetricContext, options: MetricOptions
) -> MetricValues:
    """[sqa3d] EM1, EM1_refined, EM_type0..5, EM_refined_type0..5 (type = type_info) and caption metrics;
    references are cleaned (official)."""
    return _qa_metrics("sqa3d", predictions, context, clean_refs=True, by_type=True)
