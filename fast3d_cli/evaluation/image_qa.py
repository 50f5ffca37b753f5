"""``fast3d eval --model-family llava``: answer image/video questions, dense or pruned, and score them.

Every question is generated (in batches of ``batch_size``; a batch gives the same answers as its questions
one by one) with :func:`fast3d_cli.pruning.generic.prune_generate`, scored with the ScanQA answer rules
(:mod:`fast3d_cli.metrics.answers`: EM and refined EM against the reference answers), and written to
``OUT/predictions.jsonl`` and ``OUT/metrics.json`` (``OUT/run.json`` holds the run's identity: a rerun with
other settings is refused unless ``overwrite``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fast3d_cli import __version__
from fast3d_cli.data.formats import read_json, write_json, write_text_atomic
from fast3d_cli.data.image_qa import ImageQASample
from fast3d_cli.errors import UserError
from fast3d_cli.generation.config import GenerationConfig
from fast3d_cli.metrics.answers import answer_match, clean_answer, normalize_prediction
from fast3d_cli.pruning.budgets import input_level_ratio, layer_averaged_ratio

ProgressCallback = Callable[[str, int, int], None]


@dataclass(frozen=True)
class ImageQAEvalSettings:
    """``keep``: visual tokens kept per sample (resolved from --keep or --ratio) or ``alpha``: the SAP mass
    (``+sap`` methods); both None for ``none``. ``maps``: where the oracle maps come from (identity only).
    ``renumber_positions`` (``fastervlm``, layer 0): prune before the language model, the official way
    (:func:`fast3d_cli.models.llava.select_before_llm`)."""

    method: str = "none"
    keep: int | None = None
    alpha: float | None = None
    maps: str | None = None
    renumber_positions: bool = False
    layer: int = 0
    seed: int = 0
    batch_size: int = 8
    generation: GenerationConfig = field(default_factory=GenerationConfig)


def score_answer(prediction: str, answers: Sequence[str]) -> tuple[int, int]:
    """(EM, refined EM) of one answer: ScanQA's normalisation of both sides, then its matching rules."""
    return answer_match(normalize_prediction(prediction), [clean_answer(a) for a in answers])


def run_image_qa_eval(
    adapter: Any,
    batcher: Callable[[Sequence[ImageQASample]], Any],
    samples: Sequence[ImageQASample],
    settings: ImageQAEvalSettings,
    identity: dict[str, Any],
    out_dir: Path,
    *,
    maps: dict[int, np.ndarray] | None = None,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Evaluate ``samples``; ``batcher`` turns samples into the adapter's batch; ``maps``: the oracle scores
    of each question (by index). Returns the metrics."""
    import torch

    from fast3d_cli.models.llava import select_before_llm
    from fast3d_cli.pruning.generic import prune_generate

    identity_settings = {k: v for k, v in asdict(settings).items() if k != "batch_size"}  # same answers
    manifest = json.loads(json.dumps({"version": __version__, **identity, "settings": identity_settings}))
    _prepare_output(out_dir, manifest, overwrite)
    records: list[dict[str, Any]] = []
    n_layers = adapter.language_model.config.num_hidden_layers
    for start in range(0, len(samples), settings.batch_size):
        chunk = samples[start : start + settings.batch_size]
        scores = None if maps is None else torch.from_numpy(np.stack([maps[s.index] for s in chunk])).float()
        batch, method, keep = batcher(chunk), settings.method, settings.keep
        if settings.renumber_positions:  # the kept features are the whole image: a dense run on them
            batch, method, keep = select_before_llm(adapter, batch, keep), "none", None
        result = prune_generate(
            adapter,
            batch,
            method,
            keep=keep,
            alpha=settings.alpha,
            layer=settings.layer,
            seed=settings.seed,
            maps=scores,
            gen=settings.generation,
        )
        for sample, text, kept in zip(chunk, result.texts, result.kept_tokens, strict=True):
            em, refined = score_answer(text, sample.answers)
            records.append(
                {"id": sample.id, "question": sample.question, "answers": list(sample.answers),
                 "pred": text, "em": em, "refined_em": refined, "kept_visual_tokens": kept}
            )  # fmt: skip
        if progress is not None:
            progress("image_qa", len(records), len(samples))
    n_visual = adapter.build_inputs(batcher(samples[:1])).n_visual
    metrics = _metrics(records, n_visual, settings.layer, n_layers)
    result = {**manifest, "n_samples": len(records), "n_visual": n_visual, "metrics": metrics}
    write_text_atomic(out_dir / "predictions.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    write_json(out_dir / "metrics.json", result, indent=2)
    return result


def _metrics(records: list[dict[str, Any]], n_visual: int, layer: int, n_layers: int) -> dict[str, float]:
    kept = [r["kept_visual_tokens"] for r in records]
    return {
        "[image_qa] EM1": sum(r["em"] for r in records) / len(records),
        "[image_qa] EM1_refined": sum(r["refined_em"] for r in records) / len(records),
        "mean_kept_tokens": sum(kept) / len(kept),
        "input_ratio": round(input_level_ratio(kept, n_visual), 4),
        "layer_averaged_ratio": round(layer_averaged_ratio(kept, n_visual, layer, n_layers), 4),
    }


def _prepare_output(out_dir: Path, manifest: dict[str, Any], overwrite: bool) -> None:
    """Refuse an output holding another evaluation (unless ``overwrite``) or foreign files; write run.json."""
    run_file = out_dir / "run.json"
    if run_file.is_file():
        old = read_json(run_file)
        if old != manifest and not overwrite:
            changed = sorted(k for k in {*old, *manifest} if old.get(k) != manifest.get(k))
            raise UserError(
                f"{out_dir} holds an evaluation made with other {', '.join(changed)}; use --overwrite to "
                "replace it or choose another --output"
            )
    elif out_dir.exists() and any(out_dir.iterdir()):
        raise UserError(f"{out_dir} exists and is not an evaluation directory; choose another --output")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").unlink(missing_ok=True)
    write_json(run_file, manifest, indent=2)
