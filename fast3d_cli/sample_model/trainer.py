"""The sample-model training loop: one step, held-out probes, checkpoints and resume."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fast3d_cli.data import DataConfig
from fast3d_cli.data.tasks import TASKS
from fast3d_cli.sample_model.attention import AttentionRecorder, recording
from fast3d_cli.sample_model.batches import (
    ALL_PADDING,
    MAX_OBJECTS,
    TrainItem,
    build_batch,
    layout_item,
    sample_items,
)
from fast3d_cli.sample_model.losses import answer_loss, attention_losses, readout_loss
from fast3d_cli.sample_model.preflight import CHECKPOINT_DIR
from fast3d_cli.sample_model.recipe import Stage, TrainSpec
from fast3d_cli.sample_model.scaffold import apply_scaffold
from fast3d_cli.sample_model.train import (
    Log,
    Progress,
    _lr_factor,
    batch_rng,
    build_model,
    elapsed,
)
from fast3d_cli.sample_world.generator import WorldSpec
from fast3d_cli.sample_world.stream import SceneStream


def probe_items(world: WorldSpec, spec: TrainSpec) -> dict[str, list[TrainItem]]:
    """Fixed held-out rows per task (a stream seed the training never draws), in Chat-Scene's layout."""
    rng = np.random.default_rng([world.seed, spec.probe_seed])
    stream = iter(SceneStream(world, seed=spec.probe_seed))
    items: dict[str, list[TrainItem]] = {task: [] for task in TASKS}
    while any(len(v) < spec.probe_samples for v in items.values()):
        scene = next(stream)
        for task, bucket in items.items():
            rows = scene.rows.get(task, [])
            for row in rows[: max(1, len(rows) // 4)]:
                if len(bucket) < spec.probe_samples:
                    bucket.append(layout_item(scene, task, row, rng, ALL_PADDING))
    return items


def object_map(recorder: AttentionRecorder, sup: Any) -> torch.Tensor:
    """Spec §3 map from recorded rows: mean over layers, heads and text rows, summed per object: [B, 100]."""
    probs = recorder.stacked().mean(dim=(0, 2))  # [B, R, T]
    rows = sup.text_rows.to(probs.dtype)
    per_key = (probs * rows[:, :, None]).sum(1) / rows.sum(1, keepdim=True)
    slots = sup.slot_of_key.clamp(min=0)
    weights = per_key * (sup.slot_of_key >= 0)
    return torch.zeros(len(slots), MAX_OBJECTS).scatter_add_(1, slots, weights)


def status_line(entry: dict[str, Any]) -> str:
    """The progress status of a logged step: stage, losses and the latest probe accuracies."""
    losses = " ".join(
        f"{k} {v:.3g}" for k, v in entry.items() if isinstance(v, float) and k not in ("lr", "elapsed_s")
    )
    text = f"{entry['stage']}: {losses}"
    if "probe" in entry:
        probe = " ".join(f"{t} {p['answer']:.2f}/{p['top10']:.2f}" for t, p in entry["probe"].items())
        text += f"; held-out answer/evidence-in-top-10: {probe}"
    return text


class Trainer:
    """``progress(name, done, total, status)`` gets every step; ``phase(message)`` announces slow phases."""

    def __init__(
        self, out_dir: Path, data: DataConfig, spec: TrainSpec, world: WorldSpec, progress: Progress,
        phase: Log,
    ) -> None:  # fmt: skip
        from fast3d_cli.data import SceneBank
        from fast3d_cli.models.chat_scene import ChatSceneConfig
        from fast3d_cli.sample_model.tokenizer import build_tokenizer, world_texts

        self.out_dir, self.spec, self.world = out_dir, spec, world
        self.progress, self.phase = progress, phase
        phase("building the tokenizer and the model")
        feat_dims = SceneBank(data, "val").feature_dims
        base = ChatSceneConfig(text_config={}, feat_dim_3d=feat_dims[0], feat_dim_2d=feat_dims[1])
        tokenizer = build_tokenizer(world_texts(data, world, base), base.obj_tokens())
        torch.manual_seed(spec.seed)
        self.model = build_model(spec, tokenizer, feat_dims)
        self.model.train()
        decay = [p for n, p in self.model.named_parameters() if p.ndim >= 2 and "embed" not in n]
        rest = [p for n, p in self.model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": spec.weight_decay}, {"params": rest, "weight_decay": 0.0}],
            lr=spec.lr,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_factor(spec))
        self.history: list[dict[str, Any]] = []
        self.start_step = self._resume()
        if self.start_step == 0 and spec.scaffold:
            apply_scaffold(self.model.llm, spec.roles, spec.seed)
        phase("drawing the held-out probe scenes")
        self.probes = probe_items(world, spec)
        self.streams: dict[str, SceneStream] = {}

    # -- checkpoints -------------------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / CHECKPOINT_DIR

    def _resume(self) -> int:
        state_path = self.checkpoint_dir / "state.json"
        if not state_path.is_file():
            return 0
        from safetensors.torch import load_model

        state = json.loads(state_path.read_text())  # prepare_output checked that the recipe is this one
        load_model(self.model, str(self.checkpoint_dir / "model.safetensors"))
        trainer_state = torch.load(self.checkpoint_dir / "optimizer.pt", weights_only=True)
        self.optimizer.load_state_dict(trainer_state["optimizer"])
        self.scheduler.load_state_dict(trainer_state["scheduler"])
        self.history = state["history"]
        self.phase(f"resuming from step {state['step']} ({self.checkpoint_dir})")
        return int(state["step"])

    def _save_checkpoint(self, step: int) -> None:
        from safetensors.torch import save_model

        tmp = self.out_dir / (CHECKPOINT_DIR + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_model(self.model, str(tmp / "model.safetensors"))
        torch.save(
            {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
            tmp / "optimizer.pt",
        )
        state = {"step": step, "spec": self.spec.to_dict(), "history": self.history}
        (tmp / "state.json").write_text(json.dumps(state))
        shutil.rmtree(self.checkpoint_dir, ignore_errors=True)
        tmp.rename(self.checkpoint_dir)

    # -- training ----------------------------------------------------------------------------------------
    def _stream(self, stage: Stage) -> SceneStream:
        key = f"{stage.min_objects}-{stage.max_objects}"
        if key not in self.streams:
            self.streams[key] = SceneStream(
                self.world, self.spec.stream_seed, stage.min_objects, stage.max_objects
            )
        return self.streams[key]

    def _forward(self, items: list[TrainItem], stage: Stage) -> dict[str, torch.Tensor]:
        inputs, sup = build_batch(self.model, items)
        recorder = AttentionRecorder(sup.rows, sup.feature_rows, inputs.attention_mask.bool())
        with recording(self.model.llm, recorder):
            out = self.model(replace(inputs, labels=None), output_hidden_states=stage.weights.readout > 0)
        losses = {"lm": answer_loss(out.logits, inputs.labels)}
        losses.update(attention_losses(recorder, sup, stage.weights, self.spec.roles))
        if stage.weights.readout:
            grounding_layer = self.spec.roles.grounding[0] % self.spec.num_layers
            hidden = out.hidden_states[grounding_layer]  # the residual stream entering that layer
            losses["readout"] = stage.weights.readout * readout_loss(hidden, self.model.llm, sup)
        return losses

    def step(self, step: int) -> dict[str, float]:
        spec, stage = self.spec, self.spec.stage_at(step)
        rng = batch_rng(self.world, spec, step)
        items = sample_items(
            self._stream(stage), rng, spec.batch_size, spec.scenes_per_batch, stage.padding, spec.task_weights
        )
        losses = self._forward(items, stage)
        total = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), spec.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        return {name: round(float(v.detach()), 4) for name, v in losses.items()}

    def run(self) -> None:
        spec = self.spec
        start = time.time()
        status = ""
        for step in range(self.start_step, spec.steps):
            losses = self.step(step)
            entry: dict[str, Any] = {"step": step, "stage": spec.stage_at(step).name, **losses}
            if step % spec.log_every == 0 or step == spec.steps - 1:
                entry.update(lr=round(self.scheduler.get_last_lr()[0], 6), elapsed_s=elapsed(start))
                if step % spec.probe_every == 0 or step == spec.steps - 1:
                    entry["probe"] = self.probe()
                self.history.append(entry)
                status = status_line(entry)
            self.progress("training", step + 1, spec.steps, status)
            if (step + 1) % spec.checkpoint_every == 0 and step + 1 < spec.steps:
                self._save_checkpoint(step + 1)
        self._finish(elapsed(start))

    def _finish(self, seconds: float) -> None:
        from fast3d_cli.models.chat_scene.io import save_pretrained

        self.model.eval()
        save_pretrained(self.model, self.out_dir)
        summary = {"spec": self.spec.to_dict(), "seconds_this_run": seconds, "log": self.history,
                   "torch": torch.__version__}  # fmt: skip
        (self.out_dir / "training.json").write_text(json.dumps(summary, indent=1) + "\n")
        shutil.rmtree(self.checkpoint_dir, ignore_errors=True)

    # -- probes ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def probe(self) -> dict[str, dict[str, float]]:
        """Held-out teacher-forced accuracy (first answer token, whole answer) and how often the evidence
        lies in the top 10 objects of the spec §3 map."""
        self.model.eval()
        result = {}
        for task, items in self.probes.items():
            first, whole, top10, n_evidence = 0, 0, 0, 0
            for i in range(0, len(items), 16):
                chunk = items[i : i + 16]
                inputs, sup = build_batch(self.model, chunk)
                recorder = AttentionRecorder(sup.rows, sup.feature_rows, inputs.attention_mask.bool())
                with recording(self.model.llm, recorder):
                    logits = self.model(inputs).logits
                labels = inputs.labels[:, 1:]
                answer = labels != -100
                correct = (logits[:, :-1].argmax(-1) == labels) | ~answer
                first_pos = answer.int().argmax(1)
                first += int(correct.gather(1, first_pos[:, None]).sum())
                whole += int(correct.all(1).sum())
                ranks = object_map(recorder, sup).topk(10, dim=1).indices
                for b, item in enumerate(chunk):
                    if item.evidence:
                        n_evidence += 1
                        top10 += set(item.evidence) <= set(ranks[b].tolist())
            result[task] = {
                "first": round(first / len(items), 3),
                "answer": round(whole / len(items), 3),
                "top10": round(top10 / max(1, n_evidence), 3),
            }
        self.model.train()
        return result
