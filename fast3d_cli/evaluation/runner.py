"""Dense evaluation of a Chat-Scene model: batched generation, resumable predictions, official metrics."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fast3d_cli import __version__
from fast3d_cli.data import DataConfig, Sample, SceneBank, load_samples
from fast3d_cli.data.formats import read_json, write_json
from fast3d_cli.errors import UserError
from fast3d_cli.evaluation.fingerprint import files_fingerprint
from fast3d_cli.evaluation.predictions import PredictionLog
from fast3d_cli.generation import GenerationConfig

ProgressCallback = Callable[[str, int, int], None]  # (task, done, total)


@dataclass(frozen=True)
class EvalSettings:
    tasks: tuple[str, ...]
    split: str = "val"
    batch_size: int = 16
    limit: int | None = None  # first N samples of each task (quick runs)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    scanqa_clean_references: bool = False
    scan2cap_sos_eos: str = "official"

    def identity(self) -> dict[str, Any]:
        """What must match for a rerun to reuse earlier predictions (tasks may grow)."""
        return {"split": self.split, "limit": self.limit, "generation": asdict(self.generation)}


def data_files(data: DataConfig, tasks: Sequence[str], split: str) -> list[Path]:
    files = [data.annotation_path(t, split) for t in tasks]
    files += [data.path(data.feats_3d), data.path(data.feats_2d)]
    files += [data.path(data.proposal_attributes, split), data.path(data.gt_attributes, split)]
    if "scan2cap" in tasks:
        files.append(data.path(data.scan2cap_corpus))
    if "scanrefer" in tasks and data.path(data.scanrefer_lookup).is_file():
        files.append(data.path(data.scanrefer_lookup))
    for path in files:
        if not path.is_file() and path.name != data.scanrefer_lookup:
            raise UserError(f"data file not found: {path}")
    return files


def _prepare_output(out_dir: Path, manifest: dict[str, Any], overwrite: bool) -> None:
    path = out_dir / "run.json"
    if path.is_file() and not overwrite:
        old = read_json(path)
        for key in ("model", "data", "settings"):
            if old.get(key) != manifest[key]:
                raise UserError(
                    f"{out_dir} holds an evaluation with a different {key}; use --overwrite to replace it or "
                    "choose another --output"
                )
    elif out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise UserError(f"{out_dir} exists and is not an evaluation directory; choose another --output")
        shutil.rmtree(out_dir / "predictions", ignore_errors=True)
    write_json(path, manifest, indent=2)


def prediction_record(sample: Sample, text: str) -> dict[str, Any]:
    return {
        "index": sample.index,
        "scene_id": sample.scene_id,
        "gt_id": sample.obj_id,
        "pred_id": sample.pred_id,
        "qid": 0,
        "prompt": sample.prompt,
        "pred": text,
        "ref_captions": list(sample.ref_captions),
        "type_info": sample.type_info,
    }


def generate_answers(
    model: Any, bank: SceneBank, samples: Sequence[Sample], config: GenerationConfig
) -> list[str]:
    """Dense generation for one batch of samples (greedy or beam search as configured)."""
    import torch

    from fast3d_cli.generation import HFCausalLMDecoder, decode_batch, generate

    feats = [bank.object_features(s.scene_id) for s in samples]
    with torch.inference_mode():
        inputs = model.build_inputs(
            [s.prompt for s in samples],
            torch.stack([f[0] for f in feats]),
            torch.stack([f[1] for f in feats]),
        )
        ids = generate(
            HFCausalLMDecoder(model.llm),
            inputs.inputs_embeds,
            inputs.attention_mask,
            config,
            eos_token_id=model.tokenizer.eos_token_id,
            bos_token_id=model.tokenizer.bos_token_id,
        )
    return decode_batch(model.tokenizer, ids)


def _metric_context(data: DataConfig, bank: SceneBank, tasks: Sequence[str]):
    from fast3d_cli.metrics import MetricContext

    lookup_path = data.path(data.scanrefer_lookup)
    return MetricContext(
        proposal_attributes=bank.proposal_attributes,
        gt_attributes=bank.gt_attributes,
        scan2cap_corpus=read_json(data.path(data.scan2cap_corpus)) if "scan2cap" in tasks else None,
        scanrefer_lookup=read_json(lookup_path) if "scanrefer" in tasks and lookup_path.is_file() else None,
    )


def score(out_dir: Path, data: DataConfig, bank: SceneBank, settings: EvalSettings) -> dict[str, Any]:
    from fast3d_cli.metrics import CaptionScorer, MetricOptions, compute_metrics, headline_scores

    options = MetricOptions(settings.scanqa_clean_references, settings.scan2cap_sos_eos)
    context = _metric_context(data, bank, settings.tasks)
    metrics: dict[str, Any] = {}
    with CaptionScorer() as scorer:
        context.caption_scorer = scorer
        for task in settings.tasks:
            records = sorted(
                PredictionLog(out_dir / "predictions" / f"{task}.jsonl").read().values(),
                key=lambda r: r["index"],
            )
            metrics[task] = compute_metrics(task, records, context, options)
    flat = {key: value for task_metrics in metrics.values() for key, value in task_metrics.items()}
    return {"metrics": metrics, "headline": headline_scores(flat)}


def run_eval(
    model: Any,
    model_fingerprint: str,
    data: DataConfig,
    settings: EvalSettings,
    out_dir: Path,
    *,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` on ``settings.tasks``; returns the metrics document also written to metrics.json."""
    out_dir = Path(out_dir)
    files = data_files(data, settings.tasks, settings.split)
    samples = {t: load_samples(data, t, settings.split)[: settings.limit] for t in settings.tasks}
    manifest = {
        "fast3d_version": __version__,
        "model": model_fingerprint,
        "data": files_fingerprint(files),
        "settings": settings.identity(),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    _prepare_output(out_dir, manifest, overwrite)
    bank = SceneBank(data, settings.split)
    started, generated = time.perf_counter(), 0
    for task, task_samples in samples.items():
        log = PredictionLog(out_dir / "predictions" / f"{task}.jsonl")
        log.repair()
        done = log.read()
        todo = [s for s in task_samples if s.index not in done]
        if progress:
            progress(task, len(task_samples) - len(todo), len(task_samples))
        for start in range(0, len(todo), settings.batch_size):
            batch = todo[start : start + settings.batch_size]
            texts = generate_answers(model, bank, batch, settings.generation)
            log.append(prediction_record(s, t) for s, t in zip(batch, texts, strict=True))
            generated += len(batch)
            if progress:
                progress(task, len(task_samples) - len(todo) + start + len(batch), len(task_samples))
    seconds = time.perf_counter() - started
    result = {
        **score(out_dir, data, bank, settings),
        "samples": {t: len(s) for t, s in samples.items()},
        "speed": {
            "generated_samples": generated,
            "seconds": round(seconds, 3),
            "samples_per_s": round(generated / seconds, 3) if generated else None,
        },
        "run": manifest,
    }
    write_json(out_dir / "metrics.json", result, indent=2)
    return result


def load_metrics(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
