"""Train the tiny sample model: a small Llama + Chat-Scene projections on the sample train split.

Reproducible: fixed seed, fixed number of steps, single-threaded data order. Run it with
``fast3d sample train-model`` (about 20 minutes on 2 idle CPU cores; faster on a GPU).
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from fast3d_cli.data import DataConfig, SceneBank, load_samples
from fast3d_cli.data.tasks import AUXILIARY_TASKS, TASKS


@dataclass(frozen=True)
class TrainSpec:
    seed: int = 0
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 512
    # With head_dim 32 and RoPE base 1e4 only ~4 of 16 rotary frequencies are slow enough for content
    # matching across the 300-token object list (a question word finding its object); base 1e6 keeps ~8.
    rope_theta: float = 1e6
    batch_size: int = 8
    steps: int = 3000
    lr: float = 2e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 100
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    log_every: int = 50
    eval_every: int = 500
    eval_samples: int = 48


def _vocabulary_texts(samples, config) -> list[str]:
    from fast3d_cli.sample_world.vocabulary import CLASSES, COLOURS, NUMBER_WORDS

    texts = [config.system_prompt, config.instruction.replace("<REPLACE>", " "), " ".join(config.roles)]
    texts += [" ".join(c.name for c in CLASSES), " ".join(c.plural for c in CLASSES), " ".join(COLOURS)]
    texts += [" ".join(NUMBER_WORDS), "yes no Yes No"]
    for s in samples:
        texts.append(s.prompt)
        if s.caption:
            texts.append(s.caption)
    return texts


def _teacher_forced_accuracy(model, bank, samples) -> dict[str, float]:
    """First-answer-token and whole-answer accuracy of teacher-forced predictions (a cheap learning probe)."""
    import torch

    feats = [bank.object_features(s.scene_id) for s in samples]
    answers = [_probe_answer(s) for s in samples]
    with torch.no_grad():
        inputs = model.build_inputs(
            [s.prompt for s in samples],
            torch.stack([f[0] for f in feats]),
            torch.stack([f[1] for f in feats]),
            answers=answers,
        )
        predicted = model(inputs).logits[:, :-1].argmax(-1)
    labels = inputs.labels[:, 1:]
    answer_mask = labels != -100
    correct = (predicted == labels) | ~answer_mask
    first = [int(correct[i, int(inputs.answer_start[i]) - 1]) for i in range(len(samples))]
    return {"first_token": sum(first) / len(first), "whole_answer": correct.all(1).float().mean().item()}


def _probe_answer(sample) -> str:
    reference = sample.ref_captions[0]
    return reference if reference.endswith(".") else reference.capitalize() + "."


def _lr_lambda(spec: TrainSpec):
    def factor(step: int) -> float:
        if step < spec.warmup_steps:
            return (step + 1) / spec.warmup_steps
        progress = (step - spec.warmup_steps) / max(1, spec.steps - spec.warmup_steps)
        return spec.min_lr_ratio + (1 - spec.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def train_sample_model(out_dir: Path, data: DataConfig | None = None, spec: TrainSpec | None = None) -> Path:
    import torch

    from fast3d_cli.models.chat_scene import ChatSceneConfig, ChatSceneModel
    from fast3d_cli.models.chat_scene.io import save_pretrained
    from fast3d_cli.sample_model.tokenizer import build_tokenizer

    data = data or DataConfig()
    spec = spec or TrainSpec()
    torch.manual_seed(spec.seed)
    samples = [s for task in [*TASKS, *AUXILIARY_TASKS] for s in load_samples(data, task, "train")]
    bank = SceneBank(data, "train")
    val_bank = SceneBank(data, "val")
    probes = {  # multi3dref val answers are GT ids, not text: it has no teacher-forced probe
        task: load_samples(data, task, "val")[: spec.eval_samples] for task in TASKS if task != "multi3dref"
    }
    d3, d2 = bank.feature_dims
    base = ChatSceneConfig(text_config={}, feat_dim_3d=d3, feat_dim_2d=d2)
    tokenizer = build_tokenizer(_vocabulary_texts(samples, base), base.obj_tokens())
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_heads,
        "max_position_embeddings": 1024,
        "rms_norm_eps": 1e-5,
        "rope_theta": spec.rope_theta,
        "tie_word_embeddings": True,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    config = ChatSceneConfig(text_config=text_config, feat_dim_3d=d3, feat_dim_2d=d2)
    model = ChatSceneModel(config, tokenizer)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "embed" in n]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": spec.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=spec.lr,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(spec))
    generator = torch.Generator().manual_seed(spec.seed)
    order: list[int] = []
    log = []
    start = time.time()
    for step in range(spec.steps):
        if len(order) < spec.batch_size:
            order += torch.randperm(len(samples), generator=generator).tolist()
        batch = [samples[i] for i in order[: spec.batch_size]]
        del order[: spec.batch_size]
        feats = [bank.object_features(s.scene_id) for s in batch]
        inputs = model.build_inputs(
            [s.prompt for s in batch],
            torch.stack([f[0] for f in feats]),
            torch.stack([f[1] for f in feats]),
            answers=[s.caption for s in batch],
        )
        loss = model(inputs).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec.max_grad_norm)
        optimizer.step()
        scheduler.step()
        if step % spec.log_every == 0 or step == spec.steps - 1:
            entry = {
                "step": step,
                "loss": round(loss.item(), 4),
                "lr": scheduler.get_last_lr()[0],
                "elapsed_s": round(time.time() - start, 1),
            }
            if step % spec.eval_every == 0 or step == spec.steps - 1:
                model.eval()
                entry["val_accuracy"] = {
                    t: _teacher_forced_accuracy(model, val_bank, s) for t, s in probes.items()
                }
                model.train()
            log.append(entry)
            print(json.dumps(entry), file=sys.stderr, flush=True)
    model.eval()
    save_pretrained(model, out_dir)
    summary = {
        "spec": asdict(spec),
        "train_samples": len(samples),
        "seconds": round(time.time() - start, 1),
        "log": log,
        "torch": torch.__version__,
    }
    (out_dir / "training.json").write_text(json.dumps(summary, indent=1) + "\n")
    return out_dir
