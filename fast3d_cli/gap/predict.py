"""``fast3d predict``: a trained GAP network -> a "prediction" store (spec §4.6).

The store has the schema of ``fast3d extract``'s (one group per task/split, rows in annotation order,
``sample_index`` as the chunk commit marker), with:

- ``object_scores`` = the GAP logits (raw, not softmaxed, as the official ``infer_attn_maps_val_{task}.pt``);
- ``prompt_scores`` = the same logits: the GAP has a single output, and later stages that read either array
  get the prediction;
- root attributes naming the GAP network (path, format, fingerprint of its files) and the stores it was
  trained on (from its ``training.json``); ``model`` is the *target* model's fingerprint copied from those
  stores, so later stages can check that the predictions belong to the model they prune; ``data`` is the
  fingerprint of the features used here.

Resumable exactly like extract: fixed chunks, rank r of W processes computes chunks r, r+W, …, each written
whole; a rerun computes only the missing chunks. Store creation and validation reuse extract's
``prepare_store``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fast3d_cli import __version__
from fast3d_cli.data import DataConfig, Sample, SceneBank, load_samples
from fast3d_cli.errors import UserError
from fast3d_cli.gap.sources import GAPSource
from fast3d_cli.launch import SINGLE_PROCESS, DistributedContext
from fast3d_cli.stores import StoreError, StoreLocation, fill_missing_chunks, open_store, writer_lock
from fast3d_cli.stores.chunks import ProgressCallback
from fast3d_cli.stores.store import is_store


@dataclass(frozen=True)
class PredictSettings:
    tasks: tuple[str, ...]
    splits: tuple[str, ...] = ("val",)
    batch_size: int = 64
    chunk_size: int = 64
    dtype: str = "auto"  # auto: bf16 autocast on CUDA, float32 on CPU
    limit: int | None = None  # first N samples of each task/split (quick runs)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise UserError(f"unknown --dtype {self.dtype!r} for predict; choose {', '.join(DTYPES)}")
        if self.limit is not None and self.limit < 1:
            raise UserError(f"--limit must be >= 1, got {self.limit}")

    def aggregation(self, gap_fingerprint: str, precision: str) -> dict[str, Any]:
        """What the scores mean; part of the store identity (a rerun with other values is refused)."""
        return {
            "object_scores": "GAP logits (not softmaxed), spec §4.6",
            "prompt_scores": "the same GAP logits (the GAP network has one output)",
            "gap": gap_fingerprint,
            "precision": precision,
            "chunk_size": self.chunk_size,
        }


DTYPES = ("auto", "float32", "bfloat16")


def _precision(dtype: str, device: str) -> str:
    if dtype == "bfloat16" and not device.startswith("cuda"):
        raise UserError("bfloat16 (autocast) prediction is for CUDA only")
    if dtype == "auto":
        return "bfloat16-autocast" if device.startswith("cuda") else "float32"
    return "bfloat16-autocast" if dtype == "bfloat16" else "float32"


def predict_chunk(
    model: Any, tokenizer: Any, bank: SceneBank, samples: Sequence[Sample], batch_size: int, precision: str
) -> dict[str, np.ndarray]:
    """GAP logits of one chunk as store arrays (object_scores = prompt_scores = logits, float32)."""
    import torch

    from fast3d_cli.attention.extract import check_finite
    from fast3d_cli.gap.inputs import build_batch

    device = next(model.parameters()).device
    parts = []
    for start in range(0, len(samples), batch_size):
        batch = samples[start : start + batch_size]
        inputs = build_batch(batch, bank, tokenizer, model.config).to(device)
        with (
            torch.inference_mode(),
            torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16-autocast"),
        ):
            logits = model(**inputs.model_inputs()).float().cpu().numpy()
        check_finite({"object_scores": logits}, batch)
        parts.append(logits)
    logits = np.concatenate(parts).astype(np.float32)
    return {"object_scores": logits, "prompt_scores": logits.copy()}


def training_provenance(source: GAPSource) -> dict[str, Any]:
    """Target model, stores and layer/token counts recorded by ``train-gap`` (empty for official ones)."""
    record = source.training_record() or {}
    stores = record.get("stores") or []
    first = stores[0] if stores else {}
    return {
        "model": record.get("model"),
        "training_data": record.get("data"),
        "stores": [
            {k: s.get(k) for k in ("path", "model", "data", "aggregation", "command", "groups")}
            for s in stores
        ],
        "n_layers": first.get("n_layers"),
        "n_visual": first.get("n_visual"),
        "complete": record.get("complete"),
        "best": record.get("best"),
    }


def _prepare_prediction_store(
    out: StoreLocation, root_attrs: dict[str, Any], groups: dict[str, tuple[int, str]], overwrite: bool
) -> None:
    """Coordinator only: create or validate the store; one made with another GAP network is named first."""
    from fast3d_cli.attention.extract import prepare_store

    if is_store(out) and not overwrite:
        old = (open_store(out).attrs.get("gap") or {}) if open_store(out).kind == "prediction" else None
        if old is not None and old.get("fingerprint") != root_attrs["gap"]["fingerprint"]:
            raise StoreError(
                f"{out} was made with another GAP network ({old.get('path')}); use --overwrite to replace it "
                "or choose another output"
            )
    prepare_store(out, root_attrs, groups, False, overwrite)


def predict(
    gap: GAPSource | Path,
    data: DataConfig,
    settings: PredictSettings,
    out: StoreLocation | Path | str,
    *,
    device: str = "cpu",
    command: str = "",
    overwrite: bool = False,
    dist: DistributedContext = SINGLE_PROCESS,
    progress: ProgressCallback | None = None,
    phase: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Fill the prediction store ``out`` (a path or URL) for every task/split; returns {"computed": n,
    "store": summary, ...}.

    ``gap`` is a :class:`GAPSource` or a GAP directory. A store made with another GAP network, other data or
    other settings is refused unless ``overwrite``.
    """
    from fast3d_cli.attention.extract import data_fingerprints

    source = gap if isinstance(gap, GAPSource) else GAPSource.from_path(Path(gap))
    description = source.describe()
    precision = _precision(settings.dtype, device)
    data_fp, annotation_fps = data_fingerprints(data, settings.tasks, settings.splits)
    keys = [(t, s) for t in settings.tasks for s in settings.splits]
    samples = {f"{t}/{s}": load_samples(data, t, s)[: settings.limit] for t, s in keys}
    for key, rows in samples.items():
        if not rows:
            raise UserError(f"{key} has no samples")
    if phase is not None:
        phase(f"loading the GAP network ({description['path']})")
    model, tokenizer = source.load(device=device)
    if model.config.max_obj_num != data.max_obj_num:
        raise UserError(
            f"the GAP network predicts over {model.config.max_obj_num} objects but the data has "
            f"{data.max_obj_num} objects per scene"
        )
    trained = training_provenance(source)
    n_objects = model.config.max_obj_num
    root_attrs = {
        "kind": "prediction",
        "model": trained["model"],
        "data": data_fp,
        "aggregation": settings.aggregation(description["fingerprint"], precision),
        "command": command,
        "version": __version__,
        "n_objects": n_objects,
        "n_visual": trained["n_visual"] or 3 * n_objects,
        "n_layers": trained["n_layers"] or 0,
        "chunk_size": settings.chunk_size,
        "gap": description,
        "training": {k: v for k, v in trained.items() if k not in ("model", "n_layers", "n_visual")},
    }
    out = StoreLocation.parse(out)
    with writer_lock(out) if dist.is_main else contextlib.nullcontext():
        if dist.is_main:
            groups = {k: (len(v), annotation_fps[k]) for k, v in samples.items()}
            _prepare_prediction_store(out, root_attrs, groups, overwrite)
        dist.barrier()
        store = open_store(out, kind="prediction", read_only=False)
        banks = {split: SceneBank(data, split) for split in settings.splits}
        computed = 0
        for key, rows in samples.items():
            task, split = key.split("/")
            bank = banks[split]
            computed += fill_missing_chunks(
                store.group(task, split),
                rows,
                lambda chunk, bank=bank: predict_chunk(
                    model, tokenizer, bank, chunk, settings.batch_size, precision
                ),
                dist.rank,
                dist.world,
                progress,
            )
        dist.barrier()
    return {
        "computed": computed,
        "store": store.summary(),
        "gap": description,
        "settings": asdict(settings),
        "world_size": dist.world,
    }
