"""``fast3d train-gap``: fit the GAP network to a target model's attention maps (spec §4.3-§4.5).

- Targets: ``object_scores`` (``a_map``, or ``prompt_scores`` = ``a_map_ori``) of "attention" stores, joined
  by annotation index; training uses the ``train`` groups.
- Loss (§4.3): ``kl_distribution_loss``. AdamW (§4.4) with four parameter groups: the text encoder gets its
  own learning rate, and weight decay applies to every parameter except 1-D ones and biases. Linear warmup,
  then a half cosine; the multiplier is floored at ``min_lr_multi`` (during warmup too). Gradient norm
  clipped at 5. bf16 autocast on CUDA only.
- Model selection (§8.12): by default on a held-out part of the *train* split (samples chosen by a seeded
  hash of (task, index)), so the val split stays unseen until evaluation; ``select_on="val"`` selects on val
  as the official code does. Every epoch the selection set (and val, when present) is evaluated: KL, top-k F1
  and the target mass captured by the predicted top-k, per task; one JSON line per evaluation in
  ``metrics.jsonl`` (epoch 0 = before training).
- Resumable: a checkpoint every ``checkpoint_every`` steps and at every epoch end, made by accelerate's own
  ``save_state`` (model, optimizer, scheduler, every rank's RNG states) plus the position in the epoch and
  the running loss (:mod:`fast3d_cli.gap.checkpointing`). The data order is a pure function of (seed,
  epoch), so a rerun after a kill continues exactly where the checkpoint was taken: on CPU the final
  weights equal those of an uninterrupted run bit for bit.
- Several processes through accelerate (DDP; gloo on CPU). Each step takes a global batch of
  ``batch_size x world`` samples; rank r gets its r-th slice. Only rank 0 writes files.

Output directory::

    gap/
      config.json model.safetensors tokenizer*   the selected (best) network, ``save_gap`` format
      training.json                              provenance: stores, fingerprints, settings, best epoch
      metrics.jsonl                              one JSON object per evaluation
      checkpoints/step-XXXXXXXX/                 the latest training checkpoint (accelerate's save_state)

The code follows the run in order: data (:func:`load_training_data`), model (:func:`build_training_model`),
one epoch (:func:`train_epoch`, :func:`train_step`), validation (:mod:`fast3d_cli.gap.evaluation`) and
selection (:func:`finish_epoch`) and checkpointing (:class:`~fast3d_cli.gap.checkpointing.Checkpoints`),
put together by :func:`train_gap`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fast3d_cli import __version__
from fast3d_cli.data import DataConfig, SceneBank
from fast3d_cli.data.formats import write_text_atomic
from fast3d_cli.errors import UserError, naming_os_errors
from fast3d_cli.gap.checkpointing import CHECKPOINT_DIR, Checkpoints, TrainingState
from fast3d_cli.gap.configuration import GAPConfig
from fast3d_cli.gap.evaluation import Split, evaluate
from fast3d_cli.gap.sources import TRAINING_RECORD, apply_overrides
from fast3d_cli.gap.targets import TargetSet, load_targets, model_dir_from_provenance
from fast3d_cli.records import changed_fields, describe_change

METRICS_NAME = "metrics.jsonl"
SELECT_METRICS = {  # name -> True when larger is better
    "kd_loss": False,
    "topk_5_f1_score": True,
    "topk_10_f1_score": True,
    "topk_20_f1_score": True,
    "topk_5_mass": True,
    "topk_10_mass": True,
    "topk_20_mass": True,
}
SELECT_SETS = ("holdout", "val")
MIXED_PRECISION = ("auto", "no", "bf16")


@dataclass(frozen=True)
class TrainSettings:
    """Everything that shapes the trained weights. Defaults are scaled for the sample world (5 epochs of the
    ~11k held-in train samples: ~1.8k steps of 32, about 0.3 s each on one CPU core with the sample config);
    the official values (§4.4) are 50 epochs, batch 64 per GPU x 4, lr 8e-4, RoBERTa lr 8e-5, warmup
    0.1 epoch."""

    tasks: tuple[str, ...] | None = None  # None: every task with train maps in the stores
    epochs: int = 5
    batch_size: int = 32  # per process
    lr: float = 8e-4
    # None: lr for a text encoder trained from scratch, lr / 10 for a pretrained one
    text_lr: float | None = None
    weight_decay: float = 0.01
    warmup_epochs: float = 0.5
    min_lr_multi: float = 0.001
    max_grad_norm: float = 5.0
    seed: int = 42
    holdout: float = 0.1  # share of train samples held out for model selection (select_on="holdout")
    select_on: str = "holdout"
    select_metric: str = "kd_loss"
    evaluate_val: bool | None = None  # None: when every task has val maps
    target: str = "object_scores"
    mixed_precision: str = "auto"  # auto: bf16 autocast on CUDA, none on CPU
    eval_batch_size: int = 64
    limit: int | None = None  # only the first N samples of each task/split in the stores (quick runs)
    # start the word embeddings and the object projector from the target model (gap/target_init.py)
    init_from_target: bool = False

    def __post_init__(self) -> None:
        problems = []
        if self.limit is not None and self.limit < 1:
            problems.append("--limit must be >= 1")
        if self.epochs < 1:
            problems.append("--epochs must be >= 1")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            problems.append("--batch-size and --eval-batch-size must be >= 1")
        if self.lr <= 0 or (self.text_lr is not None and self.text_lr < 0):
            problems.append("--lr must be > 0 and --text-lr >= 0")
        if self.warmup_epochs < 0:
            problems.append("--warmup-epochs must be >= 0")
        if not 0.0 <= self.min_lr_multi <= 1.0:
            problems.append("min_lr_multi must be in [0, 1]")
        if self.select_on not in SELECT_SETS:
            problems.append(f"--select-on must be one of {', '.join(SELECT_SETS)}, not {self.select_on!r}")
        if self.select_metric not in SELECT_METRICS:
            problems.append(
                f"--select-metric must be one of {', '.join(SELECT_METRICS)}, not {self.select_metric!r}"
            )
        if self.select_on == "holdout" and not 0.0 < self.holdout < 1.0:
            problems.append(f"--holdout must be in (0, 1) when selecting on it, not {self.holdout}")
        if self.select_on == "val" and self.evaluate_val is False:
            problems.append("--select-on val needs the val evaluation (not --no-val)")
        if self.mixed_precision not in MIXED_PRECISION:
            choices = ", ".join(MIXED_PRECISION)
            problems.append(f"--mixed-precision must be one of {choices}, not {self.mixed_precision!r}")
        if problems:
            raise UserError("invalid training settings: " + "; ".join(problems))

    def identity(self) -> dict[str, Any]:
        """The settings part of the run identity (``limit`` only when given: earlier runs stay resumable)."""
        data = asdict(self)
        for optional in ("limit", "init_from_target"):
            if not data[optional]:
                data.pop(optional)
        return data

    def resolved_text_lr(self, pretrained: bool) -> float:
        if self.text_lr is not None:
            return self.text_lr
        return self.lr / 10 if pretrained else self.lr


@dataclass(frozen=True)
class TrainProgress:
    """What the progress callback gets after every step and around evaluations."""

    phase: str  # "train", "evaluate", "done"
    step: int
    total_steps: int
    epoch: int  # 1-based epoch being trained (0: before training)
    epochs: int
    loss: float | None = None
    lr: float | None = None


ProgressCallback = Callable[[TrainProgress], None]


# ---------------------------------------------------------------------------------------------------------
# Pure helpers (data order, holdout, schedule, parameter groups)


def _hash_int(*parts: object) -> int:
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:15], 16)


def in_holdout(seed: int, task: str, index: int, fraction: float) -> bool:
    """Whether train sample (task, index) is held out for model selection (seeded hash, not the RNG)."""
    return _hash_int("holdout", seed, task, index) / 16**15 < fraction


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The order of the ``n`` training samples in ``epoch``: a pure function of (seed, epoch)."""
    import torch

    generator = torch.Generator().manual_seed(_hash_int("order", seed, epoch))
    return torch.randperm(n, generator=generator).tolist()


def lr_multiplier(step: int, warmup_steps: int, total_steps: int, min_lr_multi: float) -> float:
    """Linear warmup over ``warmup_steps`` then a half cosine to 0 at ``total_steps``, floored (§4.4)."""
    if step < warmup_steps:
        value = step / warmup_steps
    else:
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        value = 0.5 * (1.0 + math.cos(math.pi * progress))
    return max(min_lr_multi, value)


def parameter_groups(model: Any, lr: float, text_lr: float, weight_decay: float) -> list[dict[str, Any]]:
    """§4.4: the text encoder at ``text_lr``, the rest at ``lr``; no weight decay on 1-D params and biases."""
    groups: dict[tuple[bool, bool], list[Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        text = name.startswith("text_encoder.")
        decay = param.ndim >= 2 and not name.endswith(".bias")
        groups.setdefault((text, decay), []).append(param)
    out = []
    for (text, decay), params in sorted(groups.items()):
        out.append(
            {
                "params": params,
                "lr": text_lr if text else lr,
                "weight_decay": weight_decay if decay else 0.0,
                "name": f"{'text_encoder' if text else 'gap'}/{'decay' if decay else 'no_decay'}",
            }
        )
    return out


# ---------------------------------------------------------------------------------------------------------
# Data


def _split_train(tset: TargetSet, settings: TrainSettings) -> tuple[Split, Split | None]:
    import torch

    train_s, train_t, hold_s, hold_t = [], [], [], []
    for task in tset.tasks:
        group = tset.groups[f"{task}/train"]
        for sample, row in zip(group.samples, group.targets, strict=True):
            held = settings.select_on == "holdout" and in_holdout(
                settings.seed, task, sample.index, settings.holdout
            )
            (hold_s if held else train_s).append(sample)
            (hold_t if held else train_t).append(row)
    if settings.select_on == "holdout" and not hold_s:
        raise UserError(f"no train sample falls in the {settings.holdout:.0%} holdout; raise --holdout")
    train = Split("train", train_s, torch.from_numpy(np.stack(train_t)))
    hold = Split("train", hold_s, torch.from_numpy(np.stack(hold_t))) if hold_s else None
    return train, hold


def _val_split(tset: TargetSet) -> Split:
    import torch

    samples, rows = [], []
    for task in tset.tasks:
        group = tset.groups[f"{task}/val"]
        samples += group.samples
        rows.append(group.targets)
    return Split("val", samples, torch.from_numpy(np.concatenate(rows)))


# ---------------------------------------------------------------------------------------------------------
# Network, tokenizer


@dataclass
class NetworkSpec:
    config: GAPConfig
    tokenizer: Any
    text_encoder: Path | None
    tokenizer_source: dict[str, Any] = field(default_factory=dict)
    init_target: Path | None = None  # a target model directory to start from (``--init-from-target``)

    def build(self) -> Any:
        from fast3d_cli.gap.modeling import GAPModel

        if self.text_encoder is not None:
            return GAPModel.from_text_encoder_dir(self.config, self.text_encoder)
        return GAPModel(self.config)


def resolve_network(
    tset: TargetSet,
    feature_dims: tuple[int, int],
    overrides: dict[str, Any],
    text_encoder: Path | None,
    tokenizer_dir: Path | None,
    init_from_target: bool = False,
) -> NetworkSpec:
    """The GAP config and tokenizer: a pretrained RoBERTa folder (``text_encoder``), else the sample-world
    config (tiny RoBERTa trained from scratch) over the target model's tokenizer; ``init_from_target``
    (sample-world config only) starts it from that target model (:mod:`fast3d_cli.gap.target_init`)."""
    from fast3d_cli.data.config import sample_data_dir
    from fast3d_cli.evaluation.fingerprint import files_fingerprint
    from fast3d_cli.gap.configuration import text_config_from_dir
    from fast3d_cli.gap.io import load_tokenizer
    from fast3d_cli.gap.sample import load_sample_tokenizer, sample_gap_config

    d3, d2 = feature_dims
    if text_encoder is not None:
        text_encoder = Path(text_encoder)
        if not text_encoder.is_dir():
            raise UserError(f"text encoder folder not found: {text_encoder}")
        base = GAPConfig(feat_dim_3d=d3, feat_dim_2d=d2, text_config=text_config_from_dir(text_encoder))
        config = apply_overrides(base, overrides)
        tokenizer = load_tokenizer(tokenizer_dir or text_encoder)
        source = {"tokenizer": str((tokenizer_dir or text_encoder).resolve()), "how": "text encoder folder"}
    else:
        how = "--tokenizer"
        directory = tokenizer_dir
        if directory is None:
            directory, how = model_dir_from_provenance(tset.stores), "target model named in the store"
        if directory is None:
            directory, how = sample_data_dir() / "model", "default sample model"
            if not (directory / "tokenizer.json").is_file():
                raise UserError(
                    "no tokenizer for the GAP text encoder: pass --tokenizer DIR (the target model "
                    "directory) or --text-encoder DIR (a RoBERTa folder)"
                )
        directory = Path(directory)
        if not directory.is_dir():
            raise UserError(f"tokenizer folder not found: {directory}")
        # a target-model directory: its config.json is not a tokenizer's, so read tokenizer.json directly
        has_json = (directory / "tokenizer.json").is_file()
        tokenizer = load_sample_tokenizer(directory) if has_json else load_tokenizer(directory)
        base = sample_gap_config(tokenizer, feat_dim_3d=d3, feat_dim_2d=d2)
        config = apply_overrides(base, overrides)
        files = [
            p for p in (directory / "tokenizer.json", directory / "tokenizer_config.json") if p.is_file()
        ]
        source = {
            "tokenizer": str(directory.resolve()),
            "how": how,
            "fingerprint": files_fingerprint(files) if files else None,
            "is_store_model": _is_model_of(directory, tset.model),
        }
    if config.max_obj_num != tset.n_objects:
        raise UserError(
            f"the GAP config has max_obj_num {config.max_obj_num} but the store maps are over "
            f"{tset.n_objects} objects"
        )
    if len(tokenizer) > int(config.text_config.get("vocab_size", 0)):
        raise UserError(
            f"the tokenizer has {len(tokenizer)} tokens, the text encoder "
            f"{config.text_config.get('vocab_size')}"
        )
    init_target = _init_target(init_from_target, text_encoder, tokenizer_dir, source, config)
    return NetworkSpec(config, tokenizer, text_encoder, source, init_target)


def _init_target(
    wanted: bool, text_encoder: Path | None, tokenizer_dir: Path | None, source: dict[str, Any], config: Any
) -> Path | None:
    """The target model directory ``--init-from-target`` starts from: the one the tokenizer came from."""
    if not wanted:
        return None
    from fast3d_cli.gap.target_init import check_target_width

    if text_encoder is not None:
        raise UserError("--init-from-target is for a text encoder trained from scratch, not --text-encoder")
    directory = Path(source["tokenizer"])
    if not (directory / "model.safetensors").is_file():
        raise UserError(
            f"--init-from-target needs a target model directory as the tokenizer source; {directory} holds "
            "no model (pass --tokenizer MODEL_DIR)"
        )
    check_target_width(directory, config)
    return directory


def _is_model_of(directory: Path, fingerprint: str | None) -> bool | None:
    """Whether ``directory`` is the target model the stores were extracted with (None: not a model dir)."""
    from fast3d_cli.models.loading import ModelSource

    if not (directory / "model.safetensors").is_file():
        return None
    try:
        return ModelSource(model_dir=directory).fingerprint() == fingerprint
    except UserError:
        return None


# ---------------------------------------------------------------------------------------------------------
# Data: the target maps, split into training, selection and validation sets, and the step counts


@dataclass
class TrainingData:
    """What one training run reads: the joined target maps, the training split, the evaluation sets
    (``holdout`` and/or ``val``), the scene banks, and the step counts for ``world`` processes."""

    targets: TargetSet
    train: Split
    eval_sets: dict[str, Split]
    banks: dict[str, SceneBank]
    seed: int
    batch_size: int  # per process
    world: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int

    def epoch_batches(self, epoch: int, rank: int) -> list[list[int]]:
        """This rank's sample ids for every step of ``epoch``: step b takes the b-th global batch of the
        epoch's order (a pure function of (seed, epoch)) and rank r its r-th slice."""
        order = epoch_order(len(self.train), self.seed, epoch)
        size, global_batch = self.batch_size, self.batch_size * self.world
        return [
            order[b * global_batch : (b + 1) * global_batch][rank * size : (rank + 1) * size]
            for b in range(self.steps_per_epoch)
        ]


def load_training_data(
    stores: Sequence[Any], data: DataConfig, settings: TrainSettings, world: int
) -> TrainingData:
    """Read the target maps of ``stores`` (paths or URLs) and split them (refusing what cannot train)."""
    tasks_hint = list(settings.tasks) if settings.tasks else None
    optional = () if settings.evaluate_val is False else ("val",)
    required = ("train", "val") if settings.select_on == "val" or settings.evaluate_val else ("train",)
    tset = load_targets(stores, data, tasks_hint, required, optional, settings.target, settings.limit)
    use_val = settings.evaluate_val is not False and all(tset.has(t, "val") for t in tset.tasks)
    train, holdout = _split_train(tset, settings)
    eval_sets = {"holdout": holdout} if holdout is not None else {}
    if use_val:
        eval_sets["val"] = _val_split(tset)
    steps_per_epoch = len(train) // (settings.batch_size * world)
    if steps_per_epoch == 0:
        raise UserError(
            f"{len(train)} training samples are fewer than one global batch ({settings.batch_size} x {world} "
            "processes); lower --batch-size"
        )
    return TrainingData(
        targets=tset,
        train=train,
        eval_sets=eval_sets,
        banks={"train": SceneBank(data, "train"), "val": SceneBank(data, "val")},
        seed=settings.seed,
        batch_size=settings.batch_size,
        world=world,
        steps_per_epoch=steps_per_epoch,
        total_steps=steps_per_epoch * settings.epochs,
        warmup_steps=round(settings.warmup_epochs * steps_per_epoch),
    )


# ---------------------------------------------------------------------------------------------------------
# Model: the network, its optimizer and schedule, prepared by accelerate


@dataclass
class TrainingModel:
    """The prepared network (DDP when launched with several processes), optimizer and LR scheduler."""

    model: Any
    optimizer: Any
    scheduler: Any
    raw: Any  # the network itself (unwrapped), for evaluation and saving

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[-1]["lr"]


def _make_accelerator(settings: TrainSettings, device: str) -> Any:
    import torch
    from accelerate import Accelerator

    cuda = torch.cuda.is_available() and device != "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device} requested but CUDA is not available")
    precision = settings.mixed_precision
    if precision == "bf16" and not cuda:
        raise UserError("bf16 mixed precision is for CUDA only; use --mixed-precision no on CPU")
    if precision == "auto":
        precision = "bf16" if cuda else "no"
    # one scheduler step per optimizer step, whatever the number of processes (the schedule counts steps)
    return Accelerator(cpu=not cuda, mixed_precision=precision, step_scheduler_with_optimizer=False)


def build_training_model(
    network: NetworkSpec, settings: TrainSettings, text_lr: float, data: TrainingData, accelerator: Any
) -> TrainingModel:
    """The network initialised from ``settings.seed``, AdamW with the §4.4 parameter groups, warmup then a
    floored half cosine; each rank's dropout stream seeded from (seed, rank); all prepared by accelerate."""
    import torch

    torch.manual_seed(settings.seed)
    model = network.build()
    if network.init_target is not None:
        from fast3d_cli.gap.target_init import init_from_target
        from fast3d_cli.models.loading import ModelSource

        target = ModelSource(model_dir=network.init_target).load(device="cpu", dtype="float32")
        network.tokenizer_source["init_from_target"] = {
            "model": str(network.init_target),
            **init_from_target(model, target, data.banks["train"]),
        }
    pooler = getattr(model.text_encoder, "pooler", None)
    if pooler is not None:  # unused, as official (they pass find_unused_parameters=True instead)
        pooler.requires_grad_(False)
    model.to(accelerator.device)
    optimizer = torch.optim.AdamW(
        parameter_groups(model, settings.lr, text_lr, settings.weight_decay),
        betas=(0.9, 0.999),
        fused=(accelerator.device.type == "cuda") or None,
    )
    warmup, total, floor = data.warmup_steps, data.total_steps, settings.min_lr_multi
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_multiplier(s, warmup, total, floor))
    torch.manual_seed(_hash_int("dropout", settings.seed, accelerator.process_index))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    return TrainingModel(model, optimizer, scheduler, accelerator.unwrap_model(model))


# ---------------------------------------------------------------------------------------------------------
# The run: one epoch, validation and selection, checkpoints, the metrics log


@dataclass
class TrainingRun:
    """One training run in progress (every rank holds one; only the coordinator writes files)."""

    accelerator: Any
    settings: TrainSettings
    data: TrainingData
    network: NetworkSpec
    parts: TrainingModel
    out: Path
    identity: dict[str, Any]
    checkpoint_every: int
    progress: ProgressCallback | None
    state: TrainingState = field(default_factory=TrainingState)

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def gather(self, obj: Any) -> list[Any]:
        return _gather(self.accelerator, obj)

    def report(self, phase: str, loss: float | None = None) -> None:
        if self.progress is None or not self.main:
            return
        epochs = self.settings.epochs
        epoch = min(self.state.epoch + 1, epochs) if phase != "done" else epochs
        step, total = self.state.step, self.data.total_steps
        self.progress(TrainProgress(phase, step, total, epoch, epochs, loss, self.parts.lr))

    def log(self, line: dict[str, Any]) -> None:
        """Append one evaluation line to metrics.jsonl (durably; the count is part of the checkpoint)."""
        self.state.metrics_lines += 1
        if self.main:
            path = self.out / METRICS_NAME
            with naming_os_errors(path), open(path, "a") as handle:
                handle.write(json.dumps(line) + "\n")
                handle.flush()
                os.fsync(handle.fileno())

    def checkpoint(self) -> None:
        Checkpoints(self.out).save(self.accelerator, self.state, self.identity)


def train_step(run: TrainingRun, ids: list[int]) -> float:
    """One optimizer step on this rank's samples ``ids``; returns the loss."""
    from fast3d_cli.gap.inputs import build_batch
    from fast3d_cli.gap.modeling import kl_distribution_loss

    accelerator, parts, data = run.accelerator, run.parts, run.data
    samples = [data.train.samples[i] for i in ids]
    batch = build_batch(samples, data.banks["train"], run.network.tokenizer, run.network.config)
    batch = batch.to(accelerator.device)
    with accelerator.autocast():
        logits = parts.model(**batch.model_inputs())
    loss = kl_distribution_loss(logits, data.train.targets[ids].to(accelerator.device))
    accelerator.backward(loss)
    accelerator.clip_grad_norm_(parts.model.parameters(), run.settings.max_grad_norm)
    parts.optimizer.step()
    parts.scheduler.step()
    parts.optimizer.zero_grad(set_to_none=True)
    value = float(loss.detach())
    if not math.isfinite(value):
        raise UserError(f"the training loss became {value} at step {run.state.step + 1}; lower --lr")
    return value


def train_epoch(run: TrainingRun, epoch: int) -> int:
    """Train the rest of ``epoch`` (from the batch a resumed checkpoint stopped at), checkpointing every
    ``checkpoint_every`` steps; returns the steps trained."""
    state, steps = run.state, run.data.steps_per_epoch
    batches = run.data.epoch_batches(epoch, run.accelerator.process_index)
    trained = 0
    run.parts.model.train()
    for b in range(state.batch, steps):
        value = train_step(run, batches[b])
        state.loss[0] += value
        state.loss[1] += 1
        state.step += 1
        state.batch = b + 1
        trained += 1
        run.report("train", value)
        if run.checkpoint_every and state.step % run.checkpoint_every == 0 and b + 1 < steps:
            run.checkpoint()
    return trained


def evaluate_all(run: TrainingRun) -> dict[str, Any]:
    """Validation metrics of every evaluation set (rank-sharded, gathered)."""
    run.report("evaluate")
    accelerator, network = run.accelerator, run.network
    return {
        name: evaluate(
            run.parts.raw,
            split,
            run.data.banks[split.split],
            network.tokenizer,
            network.config,
            run.settings.eval_batch_size,
            accelerator.device,
            accelerator.autocast,
            accelerator.process_index,
            accelerator.num_processes,
            run.gather,
        )
        for name, split in run.data.eval_sets.items()
    }


def finish_epoch(run: TrainingRun, epoch: int) -> None:
    """Evaluate, select (saving the network when it improves), log, then checkpoint the epoch's end."""
    settings, state = run.settings, run.state
    results = evaluate_all(run)
    losses = run.gather(list(state.loss))
    train_loss = sum(p[0] for p in losses) / max(1, sum(p[1] for p in losses))
    chosen = results[settings.select_on]["all"][settings.select_metric]
    larger = SELECT_METRICS[settings.select_metric]
    best = state.best
    improved = best is None or (chosen > best["value"] if larger else chosen < best["value"])
    if improved:
        state.best = {"epoch": epoch + 1, "step": state.step, "value": chosen}
        if run.main:
            from fast3d_cli.gap.io import save_gap

            save_gap(run.parts.raw, run.network.tokenizer, run.out)
    selection = {"set": settings.select_on, "metric": settings.select_metric, "value": chosen}
    line = {"epoch": epoch + 1, "step": state.step, "train_loss": train_loss, "lr": run.parts.lr}
    run.log({**line, **results, "selection": {**selection, "best": improved}})
    state.epoch, state.batch, state.loss = epoch + 1, 0, [0.0, 0]
    run.checkpoint()


def resume_or_start(run: TrainingRun) -> int | None:
    """Restore the newest checkpoint (returning its step), or start: metrics.jsonl anew with the epoch-0
    evaluation (returning None)."""
    restored = Checkpoints(run.out).restore(run.accelerator)
    if restored is not None:
        run.state = restored
        if run.main:
            _truncate_lines(run.out / METRICS_NAME, restored.metrics_lines)
        return restored.step
    if run.main:
        (run.out / METRICS_NAME).unlink(missing_ok=True)
    run.log({"epoch": 0, "step": 0, **evaluate_all(run)})
    return None


# ---------------------------------------------------------------------------------------------------------
# Output directory and run record


def _atomic_write_text(path: Path, text: str) -> None:
    write_text_atomic(path, text)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_training_dir(out: Path) -> bool:
    return any((out / n).exists() for n in (TRAINING_RECORD, CHECKPOINT_DIR, METRICS_NAME))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _prepare_out_dir(out: Path, identity: dict[str, Any], overwrite: bool) -> dict[str, Any] | None:
    """Check ``out`` (all ranks, read-only); returns a finished run's record when there is nothing to do."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a directory; choose another output path")
    if out.is_dir() and any(out.iterdir()) and not _is_training_dir(out):
        raise UserError(f"{out} exists and is not a GAP training directory; choose another output path")
    record = _read_json(out / TRAINING_RECORD) if out.is_dir() else None
    checkpoint_identity = None
    if record is None and out.is_dir():
        newest = Checkpoints(out).newest_record()
        checkpoint_identity = newest.get("identity") if newest else None
    found = record.get("identity") if record else checkpoint_identity
    if found is not None and found != identity:
        if not overwrite:
            changed = changed_fields(found, identity) or ["settings"]
            raise UserError(
                f"{out} holds a training run with another {describe_change(found, identity, changed[0])}; "
                "use --overwrite to replace it or choose another output"
            )
        return {"overwrite": True}
    if record is not None and record.get("complete") and found == identity:
        return record
    if Checkpoints(out).check_resumable(overwrite):  # damaged: refused, or --overwrite starts over
        return {"overwrite": True}
    return None


def _reset_out_dir(out: Path, found: dict[str, Any] | None) -> None:
    """Coordinator only: replace a run made with other settings (--overwrite), and drop half-written files."""
    if found is not None and found.get("overwrite"):
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.partial"):
        stale.unlink(missing_ok=True)
    Checkpoints(out).remove_partial()


def run_identity(
    data: TrainingData, settings: TrainSettings, network: NetworkSpec, text_encoder: Path | None
) -> dict[str, Any]:
    """What must match for a rerun to resume (or to be done already) in the same output directory."""
    tset = data.targets
    identity = {
        "targets": tset.targets_fingerprint(),
        "model": tset.model,
        "data": tset.data,
        "tasks": list(tset.tasks),
        "settings": settings.identity(),
        "gap_config": network.config.to_dict(),
        "text_encoder": _dir_fingerprint(text_encoder) if text_encoder else None,
        "tokenizer": network.tokenizer_source.get("fingerprint"),
        "processes": data.world,  # the global batch and each rank's dropout stream depend on it
    }
    return json.loads(json.dumps(identity, default=str))


def training_record(
    run: TrainingRun, text_encoder: Path | None, text_lr: float, command: str
) -> dict[str, Any]:
    """training.json: provenance, settings and sizes (``complete`` and the best epoch come at the end)."""
    data, settings, config = run.data, run.settings, run.network.config
    return {
        "complete": False,
        "identity": run.identity,
        "stores": data.targets.provenance(),
        "model": data.targets.model,
        "data": data.targets.data,
        "n_objects": data.targets.n_objects,
        "tasks": list(data.targets.tasks),
        "target": settings.target,
        "settings": asdict(settings),
        "text_lr": text_lr,
        "text_encoder": {
            "init": "pretrained" if text_encoder else "target" if run.network.init_target else "scratch",
            "path": str(Path(text_encoder).resolve()) if text_encoder else None,
            **run.network.tokenizer_source,
        },
        "gap_config": config.to_dict(),
        "samples": {"train": len(data.train), **{name: len(s) for name, s in data.eval_sets.items()}},
        "selection": {"set": settings.select_on, "metric": settings.select_metric},
        "steps_per_epoch": data.steps_per_epoch,
        "total_steps": data.total_steps,
        "warmup_steps": data.warmup_steps,
        "processes": data.world,
        "mixed_precision": run.accelerator.mixed_precision,
        "device": str(run.accelerator.device),
        "checkpoint_every": run.checkpoint_every,
        "version": __version__,
        "command": command,
    }


# ---------------------------------------------------------------------------------------------------------
# train_gap: the pieces above in order


def _gather(accelerator: Any, obj: Any) -> list[Any]:
    if accelerator.num_processes == 1:
        return [obj]
    from accelerate.utils import gather_object

    return gather_object([obj])


def train_gap(
    stores: Sequence[Any],
    out_dir: Path,
    settings: TrainSettings,
    data: DataConfig,
    *,
    gap_overrides: dict[str, Any] | None = None,
    text_encoder: Path | None = None,
    tokenizer_dir: Path | None = None,
    checkpoint_every: int = 200,
    overwrite: bool = False,
    device: str = "auto",
    command: str = "",
    progress: ProgressCallback | None = None,
    phase: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train a GAP network on the maps of ``stores`` (paths or URLs); returns the ``training.json`` record.

    A rerun of a finished run returns its record without training; a rerun of an interrupted one resumes from
    its newest checkpoint. A run with other stores, data or settings in ``out_dir`` is refused unless
    ``overwrite``. Under ``accelerate launch`` every process calls this; only rank 0 writes.
    """
    if checkpoint_every < 0:
        raise UserError("--checkpoint-every must be >= 0 (0: only at epoch ends)")
    started = time.time()
    out = Path(out_dir)
    accelerator = _make_accelerator(settings, device)
    main = accelerator.is_main_process
    say = phase if phase is not None and main else (lambda message: None)

    say(f"reading the attention maps of {', '.join(str(s) for s in stores)}")
    training = load_training_data(stores, data, settings, accelerator.num_processes)
    feature_dims = training.banks["train"].feature_dims
    network = resolve_network(
        training.targets, feature_dims, gap_overrides or {}, text_encoder, tokenizer_dir,
        settings.init_from_target,
    )  # fmt: skip
    identity = run_identity(training, settings, network, text_encoder)
    found = _prepare_out_dir(out, identity, overwrite)
    accelerator.wait_for_everyone()
    if found is not None and found.get("complete"):
        return {**found, "trained_steps": 0}
    if main:
        _reset_out_dir(out, found)
    accelerator.wait_for_everyone()

    say(f"building the GAP network ({len(training.train)} training samples, {training.total_steps} steps)")
    text_lr = settings.resolved_text_lr(text_encoder is not None)
    parts = build_training_model(network, settings, text_lr, training, accelerator)
    run = TrainingRun(
        accelerator, settings, training, network, parts, out, identity, checkpoint_every, progress
    )
    record = training_record(run, text_encoder, text_lr, command)
    if main:
        _atomic_write_text(out / TRAINING_RECORD, json.dumps(record, indent=2, default=str) + "\n")
    resumed_from = resume_or_start(run)

    trained = 0
    for epoch in range(run.state.epoch, settings.epochs):
        trained += train_epoch(run, epoch)
        finish_epoch(run, epoch)
    accelerator.wait_for_everyone()

    best = run.state.best
    record.update(
        {
            "complete": True,
            "best": {**(best or {}), "metric": settings.select_metric, "set": settings.select_on},
            "best_metrics": _best_line(out / METRICS_NAME, best) if main else None,
            "seconds": round(time.time() - started, 1),
        }
    )
    if main:
        _atomic_write_text(out / TRAINING_RECORD, json.dumps(record, indent=2, default=str) + "\n")
    run.report("done")
    accelerator.wait_for_everyone()
    return {**record, "trained_steps": trained, "resumed_from_step": resumed_from}


def _dir_fingerprint(directory: Path) -> str:
    from fast3d_cli.evaluation.fingerprint import files_fingerprint

    files = sorted(p for p in Path(directory).iterdir() if p.is_file() and not p.name.startswith("."))
    return files_fingerprint(files)


def _truncate_lines(path: Path, keep: int) -> None:
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    complete = [line for line in lines if line.endswith("\n")]
    _atomic_write_text(path, "".join(complete[:keep]))


def _best_line(path: Path, best: dict[str, Any] | None) -> dict[str, Any] | None:
    if best is None or not path.is_file():
        return None
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("epoch") == best["epoch"]:
            return {k: v for k, v in entry.items() if k not in ("selection",)}
    return None
