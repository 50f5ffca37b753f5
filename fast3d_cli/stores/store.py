"""The attention-map store: a zarr v3 directory with one group per task/split.

Layout::

    maps.zarr/                 root attributes["fast3d"]: schema_version, kind, model, data, aggregation,
                               command, version, n_objects, n_visual, n_layers, chunk_size
      scanqa/val/              group attributes["fast3d"]: task, split, n_samples, annotation fingerprint
        sample_index   int64   [n]                     fill -1   (written last: the chunk's commit marker)
        object_scores  float32 [n, n_objects]          fill NaN  (spec §3 a_map; GAP logits in "prediction")
        prompt_scores  float32 [n, n_objects]          fill NaN  (spec §3 a_map_ori)
        token_scores   float16 [n, n_visual]           fill NaN  (optional, --keep-layers)
        layer_scores   float16 [n, n_layers, n_objects] fill NaN (optional, --keep-layers)

Arrays are chunked along samples. A writer fills whole chunks: the score arrays first, ``sample_index`` last,
each chunk file written atomically and fsync'ed, so a chunk is complete exactly when its ``sample_index`` rows
are all >= 0. Attributes are written only by the coordinating process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fast3d_cli.errors import UserError

SCHEMA_VERSION = 1
KINDS = ("attention", "prediction")
ATTR_KEY = "fast3d"
SCORE_ARRAYS = ("object_scores", "prompt_scores")
OPTIONAL_ARRAYS = ("token_scores", "layer_scores")
_WRITE_CONFIG = {"write_empty_chunks": True}


class StoreError(UserError):
    """A store that cannot be used as asked (wrong kind, other model, corrupt, missing group...)."""


def _compressor():
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class MapGroup:
    """One task/split of a store."""

    store: MapStore
    task: str
    split: str

    @property
    def path(self) -> str:
        return f"{self.task}/{self.split}"

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.store.root[self.path].attrs.get(ATTR_KEY, {}))

    @property
    def n_samples(self) -> int:
        return int(self.attrs["n_samples"])

    @property
    def chunk_size(self) -> int:
        return int(self.store.attrs["chunk_size"])

    @property
    def n_chunks(self) -> int:
        return -(-self.n_samples // self.chunk_size)

    def array(self, name: str, writable: bool = False):
        import zarr

        mode = "r+" if writable and not self.store.read_only else "r"
        try:
            return zarr.open_array(
                self.store.path, path=f"{self.path}/{name}", mode=mode, config=_WRITE_CONFIG
            )
        except Exception as err:  # zarr raises several types for a missing or unreadable array
            raise StoreError(f"{self.store.path}: cannot open {self.path}/{name}: {err}") from None

    def has_array(self, name: str) -> bool:
        return name in self.store.root[self.path]

    def chunk_bounds(self, chunk: int) -> tuple[int, int]:
        start = chunk * self.chunk_size
        return start, min(start + self.chunk_size, self.n_samples)

    def completed_chunks(self) -> set[int]:
        index = self.array("sample_index")[:]
        done = set()
        for chunk in range(self.n_chunks):
            start, stop = self.chunk_bounds(chunk)
            if (index[start:stop] >= 0).all():
                done.add(chunk)
        return done

    def is_complete(self) -> bool:
        return len(self.completed_chunks()) == self.n_chunks

    def write_chunk(self, chunk: int, sample_index: np.ndarray, arrays: Mapping[str, np.ndarray]) -> None:
        """Write one whole chunk durably: score arrays first, then ``sample_index`` (the commit marker)."""
        start, stop = self.chunk_bounds(chunk)
        if len(sample_index) != stop - start:
            raise ValueError(
                f"chunk {chunk} of {self.path} needs {stop - start} rows, got {len(sample_index)}"
            )
        for name, values in arrays.items():
            target = self.array(name, writable=True)
            target[start:stop] = values
            self._sync_chunk(target, chunk)
        marker = self.array("sample_index", writable=True)
        marker[start:stop] = np.asarray(sample_index, dtype=np.int64)
        self._sync_chunk(marker, chunk)

    def _sync_chunk(self, array, chunk: int) -> None:
        key = array.metadata.encode_chunk_key((chunk,) + (0,) * (array.ndim - 1))
        path = Path(self.store.path) / self.path / array.basename / key
        if path.is_file():
            _fsync_file(path)

    def read(self, name: str = "object_scores") -> np.ndarray:
        return self.array(name)[:]

    def iter_samples(
        self, names: tuple[str, ...] = SCORE_ARRAYS
    ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """(annotation index, {array: row}) for every written sample, chunk by chunk."""
        index = self.array("sample_index")[:]
        arrays = {n: self.array(n) for n in names}
        for chunk in sorted(self.completed_chunks()):
            start, stop = self.chunk_bounds(chunk)
            block = {n: a[start:stop] for n, a in arrays.items()}
            for row, sample in enumerate(index[start:stop]):
                yield int(sample), {n: v[row] for n, v in block.items()}

    def summary(self) -> dict[str, Any]:
        done = self.completed_chunks()
        written = sum(self.chunk_bounds(c)[1] - self.chunk_bounds(c)[0] for c in done)
        return {
            "task": self.task,
            "split": self.split,
            "n_samples": self.n_samples,
            "written_samples": written,
            "chunks": f"{len(done)}/{self.n_chunks}",
            "complete": len(done) == self.n_chunks,
            "arrays": sorted(self.store.root[self.path].array_keys()),
        }


class MapStore:
    """An opened store: root attributes, groups, completeness."""

    def __init__(self, path: Path, read_only: bool) -> None:
        import zarr

        self.path = Path(path)
        self.read_only = read_only
        self.root = zarr.open_group(self.path, mode="r" if read_only else "r+")

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.root.attrs.get(ATTR_KEY, {}))

    @property
    def kind(self) -> str:
        return self.attrs["kind"]

    def update_attrs(self, **values: Any) -> None:
        """Coordinator only: merge ``values`` into the root attributes."""
        self.root.attrs[ATTR_KEY] = {**self.attrs, **values}

    def groups(self) -> list[MapGroup]:
        out = []
        for task, task_group in sorted(self.root.groups()):
            for split, _ in sorted(task_group.groups()):
                out.append(MapGroup(self, task, split))
        return out

    def has_group(self, task: str, split: str) -> bool:
        return f"{task}/{split}" in self.root

    def group(self, task: str, split: str) -> MapGroup:
        if not self.has_group(task, split):
            have = ", ".join(g.path for g in self.groups()) or "none"
            raise StoreError(f"{self.path} has no {task}/{split} maps (it has: {have})")
        return MapGroup(self, task, split)

    def create_group(
        self, task: str, split: str, n_samples: int, attrs: Mapping[str, Any], optional: bool
    ) -> MapGroup:
        """Coordinator only: create a task/split group with its arrays (all rows unwritten)."""
        meta = self.attrs
        chunk, n_obj, n_vis, n_layers = (
            meta["chunk_size"],
            meta["n_objects"],
            meta["n_visual"],
            meta["n_layers"],
        )
        group = self.root.require_group(task).create_group(split)
        group.attrs[ATTR_KEY] = {"task": task, "split": split, "n_samples": n_samples, **attrs}
        rows = max(n_samples, 1)

        def add(name: str, shape: tuple[int, ...], dtype: str, fill: Any, dims: list[str]) -> None:
            group.create_array(
                name,
                shape=(n_samples, *shape),
                chunks=(min(chunk, rows), *shape),
                dtype=dtype,
                fill_value=fill,
                compressors=_compressor(),
                dimension_names=["sample", *dims],
                config=_WRITE_CONFIG,
            )

        add("sample_index", (), "int64", -1, [])
        add("object_scores", (n_obj,), "float32", np.nan, ["object"])
        add("prompt_scores", (n_obj,), "float32", np.nan, ["object"])
        if optional:
            add("token_scores", (n_vis,), "float16", np.nan, ["visual_token"])
            add("layer_scores", (n_layers, n_obj), "float16", np.nan, ["layer", "object"])
        return MapGroup(self, task, split)

    def summary(self) -> dict[str, Any]:
        return {"path": str(self.path), **self.attrs, "groups": [g.summary() for g in self.groups()]}


def _is_store(path: Path) -> bool:
    import json

    meta = path / "zarr.json"
    if not meta.is_file():
        return False
    try:
        return ATTR_KEY in json.loads(meta.read_text()).get("attributes", {})
    except (OSError, ValueError):
        return False


def open_store(path: Path, kind: str | None = None, read_only: bool = True) -> MapStore:
    """Open an existing store, checking that it is one (and of ``kind`` if given)."""
    path = Path(path)
    if not path.exists():
        raise StoreError(f"store not found: {path}")
    if not _is_store(path):
        raise StoreError(f"{path} is not a fast3d store")
    store = MapStore(path, read_only=read_only)
    version = store.attrs.get("schema_version")
    if version != SCHEMA_VERSION:
        raise StoreError(
            f"{path} has store schema version {version}; this fast3d reads version {SCHEMA_VERSION}"
        )
    if kind is not None and store.kind != kind:
        raise StoreError(f"{path} is a {store.kind!r} store, expected {kind!r}")
    return store


def create_store(path: Path, attrs: Mapping[str, Any]) -> MapStore:
    """Coordinator only: create a new, empty store. Refuses an existing path."""
    import zarr

    path = Path(path)
    if path.exists():
        raise StoreError(f"{path} already exists")
    if attrs.get("kind") not in KINDS:
        raise ValueError(f"store kind must be one of {KINDS}")
    root = zarr.open_group(path, mode="w-")
    root.attrs[ATTR_KEY] = {"schema_version": SCHEMA_VERSION, **attrs}
    return MapStore(path, read_only=False)


def is_store(path: Path) -> bool:
    return _is_store(Path(path))
