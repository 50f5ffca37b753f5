"""``fast3d extract``: teacher-forced prefill of the target model -> attention-map store (spec §3).

Only the prefill runs (the official code also generates 64 tokens and throws them away, spec §8.8). Samples
are split into fixed chunks; rank r of W processes chunks r, r+W, ... and writes each one whole, so a rerun
(or another process count) only computes the missing chunks and gives bit-identical results.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fast3d_cli import __version__
from fast3d_cli.data import DataConfig, Sample, SceneBank, load_samples
from fast3d_cli.data.formats import require_file
from fast3d_cli.errors import UserError
from fast3d_cli.evaluation.fingerprint import files_fingerprint
from fast3d_cli.launch import SINGLE_PROCESS, DistributedContext
from fast3d_cli.records import changed_fields, describe_change
from fast3d_cli.stores import (
    MapStore,
    StoreError,
    StoreLocation,
    create_store,
    fill_missing_chunks,
    open_store,
    writer_lock,
)
from fast3d_cli.stores.chunks import ProgressCallback
from fast3d_cli.stores.store import is_store


@dataclass(frozen=True)
class ExtractSettings:
    tasks: tuple[str, ...]
    splits: tuple[str, ...] = ("train", "val")
    batch_size: int = 8
    chunk_size: int = 64
    seed: int = 42
    keep_layers: bool = False
    limit: int | None = None  # first N samples of each task/split (quick runs, the demo)

    def aggregation(self, n_layers: int, dtype: str) -> dict[str, Any]:
        """What the maps mean; part of the store identity (a rerun with other values is refused)."""
        return {
            "layers": f"mean over all {n_layers}",
            "heads": "mean",
            "query_rows": 'text after the object list: " {prompt} ASSISTANT: {caption}" (no EOS)',
            "prompt_rows": 'first len(tokenize(" {prompt} ")) text rows',
            "object_pooling": "sum over the identifier, 3D and 2D tokens",
            "teacher_caption": "train: annotation caption; val: choice seeded by (seed, task, split, index)",
            "seed": self.seed,
            "keep_layers": self.keep_layers,
            "chunk_size": self.chunk_size,
            "dtype": dtype,
        }


def teacher_caption(sample: Sample, seed: int) -> str:
    """The answer text appended for teacher forcing; deterministic in (seed, task, split, index) only.

    The official choice uses Python's global ``random`` seeded per GPU rank and DataLoader worker, so its maps
    depend on the hardware layout (spec §8.7); this one does not.
    """
    if sample.caption is not None:
        return sample.caption
    if sample.task == "multi3dref":
        return ""  # val references are GT ids, not text (as in the official code)
    choice = random.Random(f"{seed}:{sample.task}:{sample.split}:{sample.index}").choice(
        list(sample.ref_captions)
    )
    if sample.task in ("scanqa", "sqa3d"):
        return str(choice).capitalize() + "."
    return str(choice)


def data_fingerprints(
    data: DataConfig, tasks: Sequence[str], splits: Sequence[str]
) -> tuple[str, dict[str, str]]:
    features = [data.path(data.feats_3d), data.path(data.feats_2d)]
    annotations = {f"{t}/{s}": data.annotation_path(t, s) for t in tasks for s in splits}
    for path in [*features, *annotations.values()]:
        require_file(path)
    return files_fingerprint(features), {k: files_fingerprint([p]) for k, p in annotations.items()}


def prepare_store(
    path: StoreLocation | Path | str,
    root_attrs: dict[str, Any],
    groups: dict[str, tuple[int, str]],
    keep_layers: bool,
    overwrite: bool,
) -> MapStore:
    """Coordinator only: create or validate the store (a path or URL) and every task/split group."""
    path = StoreLocation.parse(path)
    empty = path.is_empty_or_absent()  # e.g. a directory just created by the writer lock
    if not empty and not is_store(path):
        raise StoreError(f"{path} exists and is not a fast3d store; choose another output path")
    if not empty:
        store = open_store(path, read_only=False)
        if store.kind != root_attrs["kind"]:  # never replaced, even with --overwrite: another stage's output
            raise StoreError(
                f"{path} is a store of {store.kind!r} maps; this stage writes {root_attrs['kind']!r} maps: "
                "choose another output path"
            )
        identity = ("model", "data", "aggregation")
        old = {k: store.attrs.get(k) for k in identity}
        changed = changed_fields(old, {k: root_attrs.get(k) for k in identity})
        if changed and not overwrite:
            change = describe_change(old, root_attrs, changed[0])
            raise StoreError(
                f"{path} was made with another {change}; use --overwrite to replace it or choose another "
                "output"
            )
        if changed:
            path.clear()  # not a local directory itself: the writer lock is on it
    if not is_store(path):
        store = create_store(path, root_attrs)
    for key, (n_samples, annotation_fp) in groups.items():
        task, split = key.split("/")
        if store.has_group(task, split):
            group = store.group(task, split)
            if group.attrs.get("annotation") != annotation_fp:
                raise StoreError(
                    f"{path}: {key} was extracted from another annotation file; use --overwrite to replace it"
                )
            if group.n_samples != n_samples:
                raise StoreError(
                    f"{path}: {key} holds {group.n_samples} samples but this run asks for {n_samples} "
                    "(another --limit?); use --overwrite to replace it"
                )
        else:
            store.create_group(task, split, n_samples, {"annotation": annotation_fp}, optional=keep_layers)
    return store


def extract_chunk(model: Any, bank: SceneBank, samples: Sequence[Sample], settings: ExtractSettings) -> dict:
    """Maps for one chunk of samples, as numpy arrays ready for the store."""
    import torch

    from fast3d_cli.attention.capture import AttentionCapture, capturing
    from fast3d_cli.attention.maps import aggregate_maps

    parts: list[dict[str, np.ndarray]] = []
    for start in range(0, len(samples), settings.batch_size):
        batch = samples[start : start + settings.batch_size]
        feats = [bank.object_features(s.scene_id) for s in batch]
        with torch.inference_mode():
            inputs, text_len, prompt_len = model.build_teacher_forced(
                [s.prompt for s in batch],
                [teacher_caption(s, settings.seed) for s in batch],
                torch.stack([f[0] for f in feats]),
                torch.stack([f[1] for f in feats]),
            )
            capture = AttentionCapture(
                int(inputs.text_start.min()),
                inputs.visual_start,
                model.config.n_visual_tokens,
                settings.keep_layers,
            )
            with capturing(model.llm, capture):
                model.llm.model(
                    inputs_embeds=inputs.inputs_embeds,
                    attention_mask=inputs.attention_mask,
                    position_ids=inputs.position_ids,
                    use_cache=False,
                )
            maps = aggregate_maps(capture.result(), inputs.text_start, text_len, prompt_len)
        arrays = {"object_scores": maps.object_scores, "prompt_scores": maps.prompt_scores}
        if settings.keep_layers:
            arrays |= {"token_scores": maps.token_scores, "layer_scores": maps.layer_scores}
        arrays = {k: v.float().cpu().numpy() for k, v in arrays.items()}
        check_finite(arrays, batch)
        parts.append(arrays)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def check_finite(arrays: dict[str, np.ndarray], batch: Sequence[Sample]) -> None:
    for name, values in arrays.items():
        finite = np.isfinite(values.reshape(len(batch), -1)).all(1)
        if not finite.all():
            bad = batch[int(np.argmin(finite))]
            raise UserError(
                f"non-finite {name} for {bad.task}/{bad.split} sample {bad.index} (scene {bad.scene_id})"
            )


def extract(
    model: Any,
    model_fingerprint: str,
    data: DataConfig,
    settings: ExtractSettings,
    out: StoreLocation | Path | str,
    *,
    command: str = "",
    overwrite: bool = False,
    dist: DistributedContext = SINGLE_PROCESS,
    progress: ProgressCallback | None = None,
    phase: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Fill the store ``out`` (a path or URL) with attention maps for every task/split; returns
    {"computed": n, "store": summary}. ``progress`` gets (group, samples done, total) after every chunk;
    ``phase`` a line when a phase starts. Under ``accelerate launch`` rank r of W computes chunks r, r+W, ...
    """
    data_fp, annotation_fps = data_fingerprints(data, settings.tasks, settings.splits)
    keys = [(t, s) for t in settings.tasks for s in settings.splits]
    samples = {f"{t}/{s}": load_samples(data, t, s)[: settings.limit] for t, s in keys}
    for key, rows in samples.items():
        if not rows:
            raise UserError(f"{key} has no samples")
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    n_layers = model.llm.config.num_hidden_layers
    root_attrs = {
        "kind": "attention",
        "model": model_fingerprint,
        "data": data_fp,
        "aggregation": settings.aggregation(n_layers, dtype),
        "command": command,
        "version": __version__,
        "n_objects": model.config.max_obj_num,
        "n_visual": model.config.n_visual_tokens,
        "n_layers": n_layers,
        "chunk_size": settings.chunk_size,
    }
    out = StoreLocation.parse(out)
    if phase is not None:
        phase(f"checking the output store {out}")
    with writer_lock(out) if dist.is_main else contextlib.nullcontext():
        if dist.is_main:
            prepare_store(
                out,
                root_attrs,
                {k: (len(v), annotation_fps[k]) for k, v in samples.items()},
                settings.keep_layers,
                overwrite,
            )
        dist.barrier()
        store = open_store(out, kind="attention", read_only=False)
        computed = 0
        banks = {split: SceneBank(data, split) for split in settings.splits}
        for key, rows in samples.items():
            task, split = key.split("/")
            bank = banks[split]
            computed += fill_missing_chunks(
                store.group(task, split),
                rows,
                lambda chunk, bank=bank: extract_chunk(model, bank, chunk, settings),
                dist.rank,
                dist.world,
                progress,
            )
        dist.barrier()
    summary = store.summary()
    return {"computed": computed, "store": summary, "settings": asdict(settings), "world_size": dist.world}
