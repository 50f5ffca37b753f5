"""Validation of a GAP network during training: per-task means of per-sample metrics (spec §4.5).

Besides the official KL and top-k metrics (:func:`fast3d_cli.gap.modeling.validation_metrics`), samples that
carry ``evidence`` (the sample world's annotation of the proposals an answer depends on) get
``evidence_top10``: whether all of them are among the GAP's 10 highest-scored objects. It is what SAP needs
at ~90% pruning (about 10 objects kept) and is reported only where samples have evidence.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fast3d_cli.data import Sample, SceneBank
from fast3d_cli.gap.configuration import GAPConfig

METRIC_NAMES = ("kd_loss", *(f"topk_{k}_{m}" for k in (5, 10, 20) for m in ("f1_score", "mass")))
EVIDENCE_METRIC = "evidence_top10"
EVIDENCE_K = 10


@dataclass
class Split:
    """A list of samples of one split with their target maps [n, n_objects] (float32 tensor)."""

    split: str
    samples: list[Sample]
    targets: Any

    def __len__(self) -> int:
        return len(self.samples)


def evidence_hits(scores: np.ndarray, samples: Sequence[Sample], k: int = EVIDENCE_K) -> np.ndarray:
    """Per sample: 1.0 when all its evidence objects are among the ``k`` highest ``scores`` [B, N] (stable
    order, as :func:`fast3d_cli.attention.analysis.evidence_in_top_k`), 0.0 when not, NaN without evidence."""
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    out = np.full(len(samples), np.nan)
    for i, sample in enumerate(samples):
        if sample.evidence:
            out[i] = float(set(sample.evidence) <= set(top[i].tolist()))
    return out


def _means(values: dict[str, np.ndarray], select: np.ndarray | slice) -> dict[str, float]:
    out = {k: float(values[k][select].mean()) for k in METRIC_NAMES}
    hits = values[EVIDENCE_METRIC][select]
    if not np.isnan(hits).all():
        out[EVIDENCE_METRIC] = float(np.nanmean(hits))
    return out


def evaluate(
    model: Any,
    split: Split,
    bank: SceneBank,
    tokenizer: Any,
    config: GAPConfig,
    batch_size: int,
    device: Any,
    autocast: Callable[[], Any],
    rank: int = 0,
    world: int = 1,
    gather: Callable[[Any], list[Any]] = lambda x: [x],
) -> dict[str, dict[str, float]]:
    """Mean validation metrics per task and over all samples ("all"), rank-sharded then gathered."""
    import torch

    from fast3d_cli.gap.inputs import build_batch
    from fast3d_cli.gap.modeling import validation_metrics

    mine = list(range(rank, len(split), world))
    rows: dict[str, list[np.ndarray]] = {}
    tasks: list[str] = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(mine), batch_size):
            ids = mine[start : start + batch_size]
            samples = [split.samples[i] for i in ids]
            batch = build_batch(samples, bank, tokenizer, config).to(device)
            with autocast():
                logits = model(**batch.model_inputs())
            values = validation_metrics(logits.float(), split.targets[ids].to(device))
            for name, value in values.items():
                rows.setdefault(name, []).append(value.cpu().numpy().astype(np.float64))
            hits = evidence_hits(logits.float().cpu().numpy(), samples)
            rows.setdefault(EVIDENCE_METRIC, []).append(hits)
            tasks += [s.task for s in samples]
    model.train(was_training)
    names = (*METRIC_NAMES, EVIDENCE_METRIC)
    local = {"tasks": tasks, **{k: np.concatenate(rows[k]) if rows.get(k) else np.zeros(0) for k in names}}
    parts = gather(local)
    all_tasks = np.array([task for p in parts for task in p["tasks"]])
    merged = {k: np.concatenate([p[k] for p in parts]) for k in names}
    out: dict[str, dict[str, float]] = {}
    for task in dict.fromkeys(s.task for s in split.samples):
        sel = all_tasks == task
        out[task] = _means(merged, sel) | {"n": int(sel.sum())}
    out["all"] = _means(merged, slice(None)) | {"n": len(all_tasks)}
    return out
