"""Training targets of the GAP network: the target model's attention maps, read from "attention" stores.

Stores are joined by annotation index: row i of a task/split group is annotation i of that task/split's JSON
(the store writes ``sample_index`` = i, which is checked). Several stores may be given (e.g. one per task);
each task/split must then come from exactly one of them, and all must share the target model, the features
and the object count.
"""

from __future__ import annotations

import hashlib
import itertools
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fast3d_cli.data import DataConfig, Sample, load_samples
from fast3d_cli.data.formats import require_file
from fast3d_cli.data.tasks import TASKS
from fast3d_cli.errors import UserError, article
from fast3d_cli.stores import MapStore, StoreError, StoreLocation, open_store

TARGET_ARRAYS = ("object_scores", "prompt_scores")


@dataclass
class TargetGroup:
    """One task/split: its samples (annotation order) and their target maps [n, n_objects] float32."""

    task: str
    split: str
    store: StoreLocation
    samples: list[Sample]
    targets: np.ndarray
    annotation: str

    @property
    def key(self) -> str:
        return f"{self.task}/{self.split}"


@dataclass
class TargetSet:
    """The joined stores: every requested task/split group plus the shared provenance."""

    stores: list[MapStore]
    groups: dict[str, TargetGroup] = field(default_factory=dict)
    tasks: tuple[str, ...] = ()
    target: str = "object_scores"

    @property
    def model(self) -> str:
        return self.stores[0].attrs.get("model")

    @property
    def data(self) -> str:
        return self.stores[0].attrs.get("data")

    @property
    def n_objects(self) -> int:
        return int(self.stores[0].attrs["n_objects"])

    def has(self, task: str, split: str) -> bool:
        return f"{task}/{split}" in self.groups

    def targets_fingerprint(self) -> str:
        """sha256 (16 hex) over every group's name, annotation fingerprint and target bytes."""
        digest = hashlib.sha256(self.target.encode())
        for key in sorted(self.groups):
            group = self.groups[key]
            digest.update(key.encode())
            digest.update(str(group.annotation).encode())
            digest.update(np.ascontiguousarray(group.targets, dtype=np.float32).tobytes())
        return digest.hexdigest()[:16]

    def provenance(self) -> list[dict[str, Any]]:
        """What each store is: path, fingerprints and attributes, and which groups were used from it."""
        out = []
        for store in self.stores:
            attrs = store.attrs
            used = sorted(k for k, g in self.groups.items() if g.store == store.path)
            out.append(
                {
                    "path": store.path.resolved(),
                    "kind": attrs.get("kind"),
                    "model": attrs.get("model"),
                    "data": attrs.get("data"),
                    "aggregation": attrs.get("aggregation"),
                    "n_objects": attrs.get("n_objects"),
                    "n_visual": attrs.get("n_visual"),
                    "n_layers": attrs.get("n_layers"),
                    "command": attrs.get("command"),
                    "version": attrs.get("version"),
                    "groups": used,
                }
            )
        return out


def open_attention_stores(paths: Sequence[Path]) -> list[MapStore]:
    """Open every store, refusing non-stores, prediction stores and stores of different models or data."""
    if not paths:
        raise UserError("give at least one attention store (from fast3d extract)")
    stores = []
    for path in paths:
        store = open_store(path)
        kind = store.attrs.get("kind")
        if kind != "attention":
            raise StoreError(
                f"{path} is {article(str(kind))} {kind!r} store; train-gap needs the target model's "
                "attention maps (an 'attention' store written by fast3d extract)"
            )
        stores.append(store)
    for key in ("model", "data", "n_objects"):
        values = {str(s.attrs.get(key)) for s in stores}
        if len(values) > 1:
            listed = ", ".join(f"{s.path}: {s.attrs.get(key)}" for s in stores)
            raise StoreError(f"the stores disagree on {key} ({listed}); train on stores of one extraction")
    return stores


def load_targets(
    paths: Sequence[Path],
    data: DataConfig,
    tasks: Sequence[str] | None,
    required_splits: Sequence[str],
    optional_splits: Sequence[str] = (),
    target: str = "object_scores",
    limit: int | None = None,
) -> TargetSet:
    """Join the stores' groups for ``tasks`` x splits and check them against ``data``.

    ``tasks`` None: every task with a group of the first required split in some store. Every requested
    task/split of ``required_splits`` must exist (the error lists all that are missing); those of
    ``optional_splits`` are loaded when present. Refused (exit 2): a prediction store, stores that disagree,
    an object count other than ``data.max_obj_num``, features other than the stores', an annotation file
    other than the group's, an incomplete group. ``limit``: only the first N samples of each group.
    """
    from fast3d_cli.attention.extract import data_fingerprints
    from fast3d_cli.evaluation.fingerprint import files_fingerprint
    from fast3d_cli.gap.predictors import DERIVED_TARGETS

    if target not in TARGET_ARRAYS and target not in DERIVED_TARGETS:
        choices = ", ".join((*TARGET_ARRAYS, *DERIVED_TARGETS))
        raise UserError(f"unknown target {target!r}; choose one of {choices}")
    stores = open_attention_stores(paths)
    n_objects = int(stores[0].attrs.get("n_objects", -1))
    if n_objects != data.max_obj_num:
        raise StoreError(
            f"{stores[0].path} holds maps over {n_objects} objects but the data has {data.max_obj_num} "
            "objects per scene"
        )
    data_fingerprint, _ = data_fingerprints(data, (), ())
    if stores[0].attrs.get("data") != data_fingerprint:
        raise StoreError(
            f"{stores[0].path} was extracted from other features (data fingerprint "
            f"{stores[0].attrs.get('data')}) than those of {data.root} ({data_fingerprint})"
        )
    where: dict[str, list[MapStore]] = {}
    for store in stores:
        for group in store.groups():
            where.setdefault(group.path, []).append(store)
    twice = {k: v for k, v in where.items() if len(v) > 1}
    if twice:
        key, found = next(iter(sorted(twice.items())))
        raise StoreError(
            f"{key} is in several stores ({', '.join(str(s.path) for s in found)}); give it once"
        )
    if tasks is None:
        first = required_splits[0]
        tasks = [t for t in TASKS if f"{t}/{first}" in where]
        if not tasks:
            have = ", ".join(sorted(where)) or "nothing"
            raise StoreError(f"the store(s) hold no {first} maps of any task (they have: {have})")
    missing = [f"{t}/{s}" for t in tasks for s in required_splits if f"{t}/{s}" not in where]
    if missing:
        have = ", ".join(sorted(where)) or "nothing"
        raise StoreError(f"the store(s) lack {', '.join(missing)} (they have: {have})")
    result = TargetSet(stores=stores, tasks=tuple(tasks), target=target)
    for split in (*required_splits, *optional_splits):
        for task in tasks:
            key = f"{task}/{split}"
            if key in where and key not in result.groups:
                path = require_file(data.annotation_path(task, split))
                fingerprint = files_fingerprint([path])
                group = _read_group(where[key][0], task, split, data, target, fingerprint)
                if limit is not None:
                    group.samples, group.targets = group.samples[:limit], group.targets[:limit]
                result.groups[key] = group
    return result


def _read_group(
    store: MapStore, task: str, split: str, data: DataConfig, target: str, annotation_fp: str
) -> TargetGroup:
    group = store.group(task, split)
    if not group.is_complete():
        summary = group.summary()
        raise StoreError(
            f"{store.path}: {group.path} is incomplete ({summary['written_samples']}/{group.n_samples} "
            "samples); rerun the same fast3d extract command to finish it"
        )
    if group.attrs.get("annotation") != annotation_fp:
        raise StoreError(
            f"{store.path}: {group.path} was extracted from another annotation file than "
            f"{data.annotation_path(task, split)}"
        )
    samples = load_samples(data, task, split)
    if group.n_samples > len(samples):
        raise StoreError(
            f"{store.path}: {group.path} has {group.n_samples} samples, the annotation file {len(samples)}"
        )
    index = group.read("sample_index")
    if not np.array_equal(index, np.arange(group.n_samples)):  # all samples, or the first N (--limit)
        raise StoreError(f"{store.path}: {group.path} rows are not in annotation order")
    samples = samples[: group.n_samples]
    values = _read_target(store, group, target)
    if values.ndim != 2 or values.shape[1] != data.max_obj_num:
        raise StoreError(f"{store.path}: {group.path}/{target} has shape {values.shape}")
    if not np.isfinite(values).all():
        row = int(np.argmin(np.isfinite(values).all(1)))
        raise StoreError(f"{store.path}: {group.path}/{target} row {row} is not finite")
    return TargetGroup(task, split, store.path, samples, values, annotation_fp)


def _read_target(store: MapStore, group: Any, target: str) -> np.ndarray:
    """[n, n_objects] float32: a stored array, or a target derived from one (gap/predictors.py)."""
    from fast3d_cli.gap.predictors import DERIVED_TARGETS

    if target not in DERIVED_TARGETS:
        return np.asarray(group.read(target), dtype=np.float32)
    source, derive = DERIVED_TARGETS[target]
    if not group.has_array(source):
        raise StoreError(
            f"{store.path}: {group.path} has no {source} (the {target} target needs them): extract the maps "
            "with fast3d extract --keep-layers"
        )
    return derive(np.asarray(group.read(source), dtype=np.float32))


def model_dir_from_provenance(stores: Sequence[MapStore]) -> Path | None:
    """The target-model directory named by ``--model`` in a store's recorded command line, if it still
    exists and its fingerprint is the store's ``model`` fingerprint (else None)."""
    from fast3d_cli.models.loading import ModelSource

    for store in stores:
        try:
            words = shlex.split(str(store.attrs.get("command") or ""))
        except ValueError:
            continue
        values = [v for f, v in itertools.pairwise(words) if f == "--model"]
        values += [w.removeprefix("--model=") for w in words if w.startswith("--model=")]
        for value in values:
            directory = Path(value)
            if not (directory / "tokenizer.json").is_file():
                continue
            try:
                if ModelSource(model_dir=directory).fingerprint() == store.attrs.get("model"):
                    return directory
            except UserError:
                continue
    return None
