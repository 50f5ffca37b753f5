"""ScanQA (spec §6.5) and SQA3D (spec §6.6): exact match, refined exact match and caption metrics."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fast3d_cli.metrics.answers import answer_match, clean_answer, normalize_prediction
from fast3d_cli.metrics.bleu import bleu_statistics
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
from fast3d_cli.metrics.units import TaskEvaluation, TaskUnits, record_unit_key

SQA3D_TYPES: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
"""sqa_type: 0 what, 1 is, 2 how, 3 can, 4 which, 5 other."""
SQA3D_TYPE_COUNT_START = 1e-10
"""Per-type counts start here, as official, so an absent type scores 0 instead of dividing by zero."""


@dataclass(frozen=True)
class QASample:
    """One QA record scored: exact match, refined exact match, and the caption-metric item."""

    key: str
    em: int
    refined: int
    sqa_type: int | None
    item_id: str
    candidate: str
    references: list[str]


def qa_samples(predictions: Sequence[Prediction], clean_refs: bool, by_type: bool) -> list[QASample]:
    """Normalise and match each record (spec §6.5-§6.6); ``by_type`` reads the SQA3D type_info."""
    samples = []
    for pos, record in enumerate(predictions):
        raw_refs = record_field(record, "ref_captions", pos)
        if isinstance(raw_refs, str) or len(raw_refs) == 0:
            raise MetricsError(f"prediction record {pos}: ref_captions must be a non-empty list of answers")
        pred = normalize_prediction(str(record_field(record, "pred", pos)))
        refs = [clean_answer(str(ref)) if clean_refs else str(ref) for ref in raw_refs]
        em, refined = answer_match(pred, refs)
        sqa_type = None
        if by_type:
            sqa_type = record_int(record, "type_info", pos)
            if sqa_type not in SQA3D_TYPES:
                raise MetricsError(f"prediction record {pos}: sqa3d type_info must be 0..5, got {sqa_type}")
        qid = record.get("qid", 0)
        item_id = f"{record_field(record, 'scene_id', pos)}_{record_field(record, 'gt_id', pos)}_{qid}_{pos}"
        item_refs = [ref.replace("\n", " ").strip() for ref in refs]
        key = record_unit_key(record, pos)
        samples.append(QASample(key, em, refined, sqa_type, item_id, pred, item_refs))
    return samples


def _exact_match_scores(task: str, samples: Sequence[QASample], by_type: bool) -> MetricValues:
    scores: MetricValues = {
        f"[{task}] EM1": sum(s.em for s in samples) / len(samples),
        f"[{task}] EM1_refined": sum(s.refined for s in samples) / len(samples),
    }
    if by_type:
        for t in SQA3D_TYPES:
            count = SQA3D_TYPE_COUNT_START
            em = refined = 0
            for sample in samples:
                if sample.sqa_type == t:
                    count += 1
                    em += sample.em
                    refined += sample.refined
            scores[f"[{task}] EM_type{t}"] = em / count
            scores[f"[{task}] EM_refined_type{t}"] = refined / count
    return scores


def _qa_evaluation(
    task: str,
    predictions: Sequence[Prediction],
    context: MetricContext,
    clean_refs: bool,
    by_type: bool,
    headline: str,
) -> TaskEvaluation:
    """Scores of a QA task; units: per-record refined EM (``headline`` "mean") or BLEU-4 statistics
    ("bleu4") of the tokenized items that the caption metrics score."""
    require_predictions(task, predictions)
    samples = qa_samples(predictions, clean_refs, by_type)
    scores = _exact_match_scores(task, samples, by_type)
    candidates = {s.item_id: [s.candidate] for s in samples}
    references = {s.item_id: s.references for s in samples}
    with context.scorer() as scorer:
        tokenized_refs, tokenized_cands = scorer.tokenize(references), scorer.tokenize(candidates)
        values = scorer.score_tokenized(tokenized_refs, tokenized_cands)
    scores.update({f"[{task}] {name}": values[name] for name in CAPTION_METRICS})
    keys = tuple(s.key for s in samples)
    if headline == "bleu4":
        item_ids = [s.item_id for s in samples]
        unit_values = bleu_statistics(tokenized_refs, tokenized_cands, item_ids)
    else:
        unit_values = np.array([float(s.refined) for s in samples])
    return TaskEvaluation(scores, TaskUnits(task, headline, keys, unit_values))


def scanqa_evaluation(
    predictions: Sequence[Prediction], context: MetricContext, options: MetricOptions
) -> TaskEvaluation:
    """[scanqa] EM1, EM1_refined and caption metrics; references cleaned only if
    `options.scanqa_clean_references` (official: raw references). Units: BLEU-4 statistics per record."""
    clean = options.scanqa_clean_references
    return _qa_evaluation("scanqa", predictions, context, clean, by_type=False, headline="bleu4")


def sqa3d_evaluation(
    predictions: Sequence[Prediction], context: MetricContext, options: MetricOptions
) -> TaskEvaluation:
    """[sqa3d] EM1, EM1_refined, EM_type0..5, EM_refined_type0..5 (type = type_info) and caption metrics;
    references are cleaned (official). Units: refined EM per record."""
    return _qa_evaluation("sqa3d", predictions, context, clean_refs=True, by_type=True, headline="mean")


def scanqa_metrics(
    predictions: Sequence[Prediction], context: MetricContext, options: MetricOptions
) -> MetricValues:
    """The metric values of `scanqa_evaluation`."""
    return scanqa_evaluation(predictions, context, options).metrics


def sqa3d_metrics(
    predictions: Sequence[Prediction], context: MetricContext, options: MetricOptions
) -> MetricValues:
    """The metric values of `sqa3d_evaluation`."""
    return sqa3d_evaluation(predictions, context, options).metrics
