"""Dense evaluation of a Chat-Scene model: batched generation, resumable predictions, official metrics."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from fast3d_cli import __version__
from fast3d_cli.data import DataConfig, Sample, SceneBank, load_samples
from fast3d_cli.data.formats import read_json, require_file, write_json
from fast3d_cli.errors import UserError
from fast3d_cli.evaluation.confidence import (
    UNITS_FILE,
    BootstrapSettings,
    add_score_ratio_interval,
    read_units,
    write_units,
)
from fast3d_cli.evaluation.fingerprint import files_fingerprint
from fast3d_cli.evaluation.output import (
    BASELINE,
    METRICS_FILE,
    OUTPUT,
    Role,
    check_baseline,
    check_unique,
    evaluation_lock,
    prediction_log,
    prepare_output,
    unfinish,
)
from fast3d_cli.evaluation.predictions import PredictionLog
from fast3d_cli.generation import GenerationConfig
from fast3d_cli.launch import SINGLE_PROCESS, DistributedContext
from fast3d_cli.pruning.methods import PruningSettings

ProgressCallback = Callable[[str, int, int], None]  # (task, done, total)
PhaseCallback = Callable[[str], None]  # a phase without a counter starts (scoring, the dense baseline)


@dataclass(frozen=True)
class EvalSettings:
    tasks: tuple[str, ...]
    split: str = "val"
    batch_size: int = 16
    limit: int | None = None  # first N samples of each task (quick runs)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    scanqa_clean_references: bool = False
    scan2cap_sos_eos: str = "official"
    pruning: PruningSettings = field(default_factory=PruningSettings)

    def identity(self) -> dict[str, Any]:
        """The settings that must match for a rerun to reuse earlier predictions (run.json ``settings``; what
        they resolve to is recorded under ``resolved``)."""
        return {
            "split": self.split,
            "limit": self.limit,
            "generation": asdict(self.generation),
            "pruning": self.pruning.identity(),
        }

    @property
    def dense(self) -> EvalSettings:
        return replace(self, pruning=PruningSettings())


def data_files(data: DataConfig, tasks: Sequence[str], split: str) -> list[Path]:
    files = [data.annotation_path(t, split) for t in tasks]
    files += [data.path(data.feats_3d), data.path(data.feats_2d)]
    files += [data.path(data.proposal_attributes, split), data.path(data.gt_attributes, split)]
    if "scan2cap" in tasks:
        files.append(data.path(data.scan2cap_corpus))
    if "scanrefer" in tasks and data.path(data.scanrefer_lookup).is_file():
        files.append(data.path(data.scanrefer_lookup))
    for path in files:
        if path.name != data.scanrefer_lookup:
            require_file(path)
    return files


def prediction_record(
    sample: Sample,
    text: str,
    kept_visual: int,
    prompt_tokens: int,
    kept_objects: list[int] | None = None,
    kept_stages: list[int] | None = None,
) -> dict[str, Any]:
    record = {
        "index": sample.index,
        "scene_id": sample.scene_id,
        "gt_id": sample.obj_id,
        "pred_id": sample.pred_id,
        "qid": 0,
        "prompt": sample.prompt,
        "pred": text,
        "ref_captions": list(sample.ref_captions),
        "type_info": sample.type_info,
        "kept_visual_tokens": kept_visual,
        "prompt_tokens": prompt_tokens,
    }
    if kept_objects is not None:
        record["kept_objects"] = kept_objects
    if kept_stages is not None:  # multi-stage pruning: visual tokens kept after each drop
        record["kept_visual_stages"] = kept_stages
    return record


@dataclass
class GeneratedBatch:
    texts: list[str]
    kept_visual: list[int]
    prompt_tokens: list[int]
    kept_objects: list[list[int] | None]
    kept_stages: list[list[int] | None] | None = None


def generate_answers(
    model: Any,
    bank: SceneBank,
    samples: Sequence[Sample],
    config: GenerationConfig,
    pruner: Any = None,
    timer: Any = None,
) -> GeneratedBatch:
    """Generate one batch, dense or with ``pruner`` (a :class:`~fast3d_cli.pruning.Pruner`)."""
    import torch

    from fast3d_cli.generation import HFCausalLMDecoder, decode_batch, generate

    feats = [bank.object_features(s.scene_id) for s in samples]
    with torch.inference_mode():
        inputs = model.build_inputs(
            [s.prompt for s in samples],
            torch.stack([f[0] for f in feats]),
            torch.stack([f[1] for f in feats]),
        )
        if pruner is None:
            decoder, plan = HFCausalLMDecoder(model.llm), None
        else:
            timed = timer is not None and not pruner.is_dense  # a dense run selects nothing
            with timer.selection(len(samples)) if timed else nullcontext():
                plan = pruner.plan(samples, inputs, bank)
            decoder = plan.decoder
        if timer is not None:
            decoder = timer.wrap(decoder)
        ids = generate(
            decoder,
            inputs.inputs_embeds,
            inputs.attention_mask,
            config,
            eos_token_id=model.tokenizer.eos_token_id,
            bos_token_id=model.tokenizer.bos_token_id,
        )
    n_visual = model.config.n_visual_tokens
    kept = plan.kept_tokens() if plan is not None else [n_visual] * len(samples)
    objects = plan.kept_objects() if plan is not None else [None] * len(samples)
    prompt_tokens = inputs.attention_mask.sum(-1).tolist()
    stages = plan.kept_stage_tokens() if plan is not None else None
    return GeneratedBatch(decode_batch(model.tokenizer, ids), kept, prompt_tokens, objects, stages)


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
    """Score the prediction logs of ``out_dir``: the metrics document's "metrics" and "headline"; the
    per-sample units of each headline go to units.json (for the score ratio's interval)."""
    from fast3d_cli.metrics import MetricOptions, evaluate_task, headline_scores

    options = MetricOptions(settings.scanqa_clean_references, settings.scan2cap_sos_eos)
    context = _metric_context(data, bank, settings.tasks)
    evaluations = {}
    context.caption_scorer = _caption_scorer()
    for task in settings.tasks:
        records = sorted(prediction_log(out_dir, task).read().values(), key=lambda r: r["index"])
        evaluations[task] = evaluate_task(task, records, context, options)
    write_units(out_dir, {task: evaluation.units for task, evaluation in evaluations.items()})
    metrics = {task: evaluation.metrics for task, evaluation in evaluations.items()}
    flat = {key: value for task_metrics in metrics.values() for key, value in task_metrics.items()}
    return {"metrics": metrics, "headline": headline_scores(flat)}


_SCORER: Any = None  # a fast3d_cli.metrics.CaptionScorer, made on first use (no JVM before scoring)


def _caption_scorer() -> Any:
    """One caption scorer per process: its METEOR JVM (about 6 s to start) serves every evaluation the
    process scores (the demo and the benchmarks score a dozen runs) and stops when the process exits (the
    scorer's finalizer). A scorer whose METEOR failed is replaced, so the next evaluation tries again."""
    from fast3d_cli.metrics import CaptionScorer

    global _SCORER
    if _SCORER is None or _SCORER.meteor_failed:
        _SCORER = CaptionScorer()
    return _SCORER


@dataclass
class _Generation:
    """What generating a rank's share of samples needs, for one evaluation."""

    model: Any
    bank: SceneBank
    settings: EvalSettings
    pruner: Any
    timer: Any
    progress: ProgressCallback | None
    world: int

    def run(self, label: str, total: int, finished: int, mine: Sequence[Sample], log: PredictionLog) -> int:
        """Generate ``mine`` (this rank's share of one task's missing samples) batch by batch, appending each
        batch to ``log``; ``finished``: the samples of the task done before this run."""
        log.repair()
        if self.progress:
            self.progress(label, finished, total)
        size = self.settings.batch_size
        for start in range(0, len(mine), size):
            batch = mine[start : start + size]
            out = generate_answers(
                self.model, self.bank, batch, self.settings.generation, self.pruner, self.timer
            )
            stages = out.kept_stages or [None] * len(batch)
            log.append(
                prediction_record(s, t, k, n, o, g)
                for s, t, k, n, o, g in zip(
                    batch,
                    out.texts,
                    out.kept_visual,
                    out.prompt_tokens,
                    out.kept_objects,
                    stages,
                    strict=True,
                )
            )
            if self.progress:  # the ranks advance about equally: this rank's count stands for each one's
                self.progress(label, min(total, finished + (start + len(batch)) * self.world), total)
        return len(mine)


def _missing(log: PredictionLog, samples: Sequence[Sample]) -> list[Sample]:
    """The samples not yet in ``log`` or in any rank log beside it."""
    done = log.read_all()
    return [s for s in samples if s.index not in done]


@dataclass
class _Plan:
    """One evaluation's samples, pruner and run.json record (its identity), known before anything is
    generated."""

    samples: dict[str, list[Sample]]
    pruner: Any
    manifest: dict[str, Any]


def _plan(
    model: Any,
    model_fingerprint: str,
    data: DataConfig,
    settings: EvalSettings,
    phase: PhaseCallback,
    dist: DistributedContext,
) -> _Plan:
    from fast3d_cli.pruning.pruner import Pruner

    files = data_files(data, settings.tasks, settings.split)
    samples = {t: load_samples(data, t, settings.split)[: settings.limit] for t in settings.tasks}
    for task, rows in samples.items():
        if not rows:
            raise UserError(f"{task}/{settings.split} has no samples")
    if settings.pruning.maps is not None or settings.pruning.gap is not None:
        phase(f"{settings.pruning.method}: reading {settings.pruning.maps or settings.pruning.gap}")
    pruner = Pruner(settings.pruning, model, model_fingerprint, data)
    everything = [s for rows in samples.values() for s in rows]
    pruner.check_samples(everything)
    manifest = {
        "fast3d_version": __version__,
        "model": model_fingerprint,
        "data": files_fingerprint(files),
        "settings": settings.identity(),
        "resolved": {
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "attention": getattr(model.llm.config, "_attn_implementation", None),
            **pruner.resolved_identity(everything),
        },
        "world_size": dist.world,  # the processes that ran (not part of the identity: any count resumes)
    }
    return _Plan(samples, pruner, manifest)


def run_eval(
    model: Any,
    model_fingerprint: str,
    data: DataConfig,
    settings: EvalSettings,
    out_dir: Path,
    *,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    phase: PhaseCallback | None = None,
    dist: DistributedContext = SINGLE_PROCESS,
) -> dict[str, Any]:
    """Evaluate ``model`` (pruned as ``settings.pruning`` says) on ``settings.tasks``; returns the metrics
    document also written to metrics.json. Samples already in the prediction logs are not generated again.
    One process writes ``out_dir`` at a time: another is refused (UserError) while this one runs.

    Under ``accelerate launch`` every rank calls this. The missing samples of each task are sharded (rank r
    of W generates every W-th, in batches of ``batch_size``; a batch of N gives the outputs of N batches of
    1, so the sharding changes no prediction), each rank appends to its own log, and the coordinator merges
    the logs, scores once and returns the metrics; the other ranks return ``{}``.
    """
    out_dir, phase = Path(out_dir), phase or (lambda message: None)
    with evaluation_lock(out_dir, OUTPUT, dist):
        plan = _plan(model, model_fingerprint, data, settings, phase, dist)
        run = _Run(model, data, settings, progress, phase, dist)
        return run.evaluate(out_dir, plan, overwrite=overwrite)


@dataclass
class _Run:
    """What evaluating one directory needs besides its plan."""

    model: Any
    data: DataConfig
    settings: EvalSettings
    progress: ProgressCallback | None
    phase: PhaseCallback
    dist: DistributedContext

    def evaluate(
        self, out_dir: Path, plan: _Plan, *, overwrite: bool = False, role: Role = OUTPUT, finish: bool = True
    ) -> dict[str, Any]:
        """Generate what ``out_dir`` lacks and score it (the caller holds its lock); ``finish``: write
        metrics.json (a pruned run writes it only once its score ratio is there)."""
        from fast3d_cli.evaluation.speed import SpeedTimer

        settings, dist, samples = self.settings, self.dist, plan.samples
        prepare_output(out_dir, plan.manifest, overwrite, dist, role)
        for task in samples:
            check_unique(prediction_log(out_dir, task), role)
        # every rank reads what is done before any rank appends, so all ranks shard the same missing samples
        missing = {task: _missing(prediction_log(out_dir, task), rows) for task, rows in samples.items()}
        if dist.is_main and any(missing.values()):
            unfinish(out_dir)  # the predictions change: metrics.json would describe others
        dist.barrier()
        bank = SceneBank(self.data, settings.split)
        timer = SpeedTimer(self.model.device)
        generation = _Generation(self.model, bank, settings, plan.pruner, timer, self.progress, dist.world)
        started, generated = time.perf_counter(), 0
        for task, task_samples in samples.items():
            log = prediction_log(out_dir, task)
            generated += generation.run(
                f"{out_dir.name} {task}",
                len(task_samples),
                len(task_samples) - len(missing[task]),
                dist.shard(missing[task]),
                log if dist.world == 1 else log.shard(dist.rank),
            )
        ranks = dist.gather({"generated": generated, "timer": timer.counters()})  # waits for every rank
        seconds = time.perf_counter() - started
        if not dist.is_main:
            return {}
        for task, rows in samples.items():
            prediction_log(out_dir, task).merge_shards([s.index for s in rows])
        predictions = files_fingerprint(prediction_log(out_dir, task).path for task in samples)
        saved = _saved_result(out_dir, plan.manifest, predictions, sum(r["generated"] for r in ranks))
        if saved is not None:
            return saved
        speed = _speed(timer, ranks, seconds, out_dir / METRICS_FILE)
        unfinish(out_dir)  # scored anew: the old metrics.json scored other predictions
        self.phase(f"scoring {', '.join(settings.tasks)} with the official metrics ({out_dir})")
        result = {
            **score(out_dir, self.data, bank, settings),
            "samples": {t: len(s) for t, s in samples.items()},
            "pruning": pruning_summary(out_dir, settings, plan.pruner, self.model.llm.config),
            "speed": speed,
            "run": plan.manifest,
            "predictions_fingerprint": predictions,  # what was scored (a rerun reuses these if unchanged)
        }
        if finish:
            write_json(out_dir / METRICS_FILE, result, indent=2)
        return result


def _saved_result(
    out_dir: Path, manifest: dict[str, Any], predictions: str, generated: int
) -> dict[str, Any] | None:
    """The result already in metrics.json when this run generated nothing and it scored these same
    predictions (same identity, same prediction files, units kept); None when they must be scored. Scoring
    takes seconds (METEOR starts a JVM), and a pruned run re-reads its dense baseline every time."""
    metrics, units = out_dir / "metrics.json", out_dir / UNITS_FILE
    if generated or not metrics.is_file() or not units.is_file():
        return None
    try:
        saved = read_json(metrics)
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict) or not isinstance(saved.get("run"), dict):
        return None
    if saved.get("predictions_fingerprint") != predictions:  # edited, or scored by an earlier fast3d
        return None
    same = {k: v for k, v in saved["run"].items() if k != "world_size"} == {
        k: v for k, v in json.loads(json.dumps(manifest)).items() if k != "world_size"
    }
    return saved if same else None


def _speed(timer: Any, ranks: list[dict[str, Any]], seconds: float, previous: Path) -> dict[str, Any]:
    """The speed section over every rank (``ranks``: each one's samples and timer counters, rank 0 first,
    whose own timer is ``timer``); a run that generated nothing keeps the speed measured when it did."""
    for other in ranks[1:]:
        timer.absorb(other["timer"])
    generated = sum(r["generated"] for r in ranks)
    speed = timer.summary(generated, seconds, [r["timer"]["peak_memory_mib"] for r in ranks])
    if not generated and previous.is_file():
        speed = load_metrics(previous).get("speed", speed)
    return speed


def pruning_summary(out_dir: Path, settings: EvalSettings, pruner: Any, llm_config: Any) -> dict[str, Any]:
    """The budget, both pruning ratios (overall and per task), kept tokens and analytic prefill FLOPs."""
    from fast3d_cli.pruning.flops import mean_prefill_gflops
    from fast3d_cli.pruning.methods import kept_summary

    budget = pruner.budget
    kept_all: list[int] = []
    stages_all: list[list[int]] = []
    prompts: list[int] = []
    per_task = {}
    for task in settings.tasks:
        records = prediction_log(out_dir, task).read().values()
        kept = [int(r.get("kept_visual_tokens", budget.n_visual)) for r in records]
        kept_all += kept
        prompts += [int(r.get("prompt_tokens", 0)) for r in records]
        stages = _stage_counts(records, kept, budget)
        stages_all += stages
        per_task[task] = kept_summary(kept, budget, stages if budget.layers else None)
    removed = [[budget.n_visual - k for k in row] for row in stages_all]
    pruned_gflops = mean_prefill_gflops(llm_config, prompts, removed, budget.drop_layers)
    dense = [[0] * len(budget.drop_layers)] * len(prompts)
    dense_gflops = mean_prefill_gflops(llm_config, prompts, dense, budget.drop_layers)
    return {
        **pruner.describe(),
        **kept_summary(kept_all, budget, stages_all if budget.layers else None),
        "per_task": per_task,
        "prefill_gflops_per_sample": round(pruned_gflops, 4),
        "dense_prefill_gflops_per_sample": round(dense_gflops, 4),
        "flops_ratio": round(pruned_gflops / dense_gflops, 4) if dense_gflops else None,
    }


def _stage_counts(records: Any, kept: list[int], budget: Any) -> list[list[int]]:
    """Per record, the visual tokens kept after each drop (one drop: the kept count)."""
    if not budget.layers:
        return [[k] for k in kept]
    fixed = [s * budget.group for s in budget.stage_keep[:-1]]
    return [list(r.get("kept_visual_stages") or [*fixed, k]) for r, k in zip(records, kept, strict=True)]


def add_score_ratio(result: dict[str, Any], baseline: dict[str, Any], baseline_dir: Path) -> dict[str, Any]:
    """Attach the paper's score ratio (§7) of ``result`` against the dense ``baseline`` run: the value and
    the per-task values, None with a reason where undefined (a dense headline of 0)."""
    from fast3d_cli.metrics import score_ratio_entry

    method, base = result["headline"], baseline["headline"]
    shared = {t: v for t, v in base.items() if t in result.get("samples", method)}
    entry: dict[str, Any] = {"baseline": str(baseline_dir), "baseline_headline": shared}
    result["score_ratio"] = {**entry, **score_ratio_entry(method, shared)}
    return result


def run_pruned_eval(
    model: Any,
    model_fingerprint: str,
    data: DataConfig,
    settings: EvalSettings,
    out_dir: Path,
    baseline_dir: Path | None,
    *,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    phase: PhaseCallback | None = None,
    bootstrap: BootstrapSettings | None = None,
    dist: DistributedContext = SINGLE_PROCESS,
) -> dict[str, Any]:
    """:func:`run_eval`, then (for a pruning method) the dense run of the same model, data and settings in
    ``baseline_dir`` (reused when already there, completed otherwise) and the score ratio against it, with
    its paired-bootstrap interval (``bootstrap``, default `BootstrapSettings()`).

    ``baseline_dir`` is shared by every run beside it: it is checked before anything is generated (another
    evaluation there is refused, naming it and ``--baseline``), never overwritten, and completed by one run
    at a time (another waits for it). The pruned run's metrics.json is written once its score ratio is."""
    if settings.pruning.method == "none" or baseline_dir is None:
        return run_eval(
            model, model_fingerprint, data, settings, out_dir,
            overwrite=overwrite, progress=progress, phase=phase, dist=dist,
        )  # fmt: skip
    out_dir, baseline_dir, phase = Path(out_dir), Path(baseline_dir), phase or (lambda message: None)
    if baseline_dir.resolve() == out_dir.resolve():
        raise UserError(f"--baseline {baseline_dir} is this run's --output; the dense run needs its own")
    with evaluation_lock(out_dir, OUTPUT, dist):
        dense_plan = _plan(model, model_fingerprint, data, settings.dense, phase, dist)
        check_baseline(baseline_dir, dense_plan.manifest, settings.tasks)
        plan = _plan(model, model_fingerprint, data, settings, phase, dist)
        run = _Run(model, data, settings, progress, phase, dist)
        result = run.evaluate(out_dir, plan, overwrite=overwrite, finish=False)
        phase(f"the dense run for the score ratio ({baseline_dir})")
        with evaluation_lock(baseline_dir, BASELINE, dist, wait=phase):
            dense = replace(run, settings=settings.dense)
            baseline = dense.evaluate(baseline_dir, dense_plan, role=BASELINE)
        if not dist.is_main:
            return result
        add_score_ratio(result, baseline, baseline_dir)
        bootstrap = bootstrap or BootstrapSettings()
        add_score_ratio_interval(result, read_units(out_dir), read_units(baseline_dir), bootstrap)
        write_json(out_dir / METRICS_FILE, result, indent=2)
    return result


def load_metrics(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
