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
each chunk file written atomically (fsync'ed on a local store; a whole-object put on an object store), so a
chunk is complete exactly when its ``sample_index`` rows are all >= 0 and every array has its chunk file
(deleting a damaged chunk file makes the stage recompute that chunk). Every chunk file ends in a CRC32C
checksum, so a corrupt or truncated chunk is an error naming the file (:class:`StoreError`), never silently
wrong numbers. Attributes are written only by the coordinating process.

Reading a damaged or foreign store raises :class:`StoreError` and nothing else: garbled metadata, root or
group attributes of the wrong type, arrays of the wrong shape, dtype or chunking, undecodable chunks.

A store is at a :class:`~fast3d_cli.stores.location.StoreLocation` (a local path, a ``file://`` URL or an
fsspec URL) and every access goes through zarr's store layer, so all of the above holds on every backend.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fast3d_cli.errors import article
from fast3d_cli.stores.location import StoreError, StoreLocation, _reason

SCHEMA_VERSION = 1
KINDS = ("attention", "prediction")
ATTR_KEY = "fast3d"
SCORE_ARRAYS = ("object_scores", "prompt_scores")
OPTIONAL_ARRAYS = ("token_scores", "layer_scores")
KNOWN_ARRAYS = ("sample_index", *SCORE_ARRAYS, *OPTIONAL_ARRAYS)
_WRITE_CONFIG = {"write_empty_chunks": True}


def _compressors() -> tuple[Any, ...]:
    from zarr.codecs import BloscCodec, Crc32cCodec

    # the checksum makes a corrupt or truncated chunk file an error (Blosc alone may decode it to garbage)
    return BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"), Crc32cCodec()


def _zarr_call(what: str, call: Callable[[], Any]) -> Any:
    """Run a zarr metadata access; zarr raises many types for garbled metadata: make them a StoreError."""
    try:
        return call()
    except StoreError:
        raise
    except Exception as err:  # untrusted metadata: JSON, schema and codec errors of several types
        raise StoreError(f"{what}: unreadable or invalid zarr metadata ({_reason(err)})") from None


def _children(store: MapStore, prefix: str, node_type: str) -> list[str]:
    """Names of the zarr v3 child nodes under ``prefix`` of ``node_type`` ("group" or "array"), sorted.

    Read from the store's listing and each child's ``zarr.json`` (zarr lists members concurrently, and a
    member with garbled metadata then leaves asyncio "exception was never retrieved" tracebacks on stderr).
    A child whose ``zarr.json`` cannot be read is a :class:`StoreError`.
    """
    import json

    names = []
    for child in sorted(store.list_dir(prefix)):
        key = f"{prefix}/{child}/zarr.json" if prefix else f"{child}/zarr.json"
        try:
            raw = store.read_key(key)
            found = None if raw is None else json.loads(raw).get("node_type")
        except (OSError, ValueError, AttributeError) as err:
            where = store.path.describe(key)
            raise StoreError(f"{where}: unreadable or invalid zarr metadata ({_reason(err)})") from None
        if found == node_type:
            names.append(child)
    return names


def _count(attrs: Mapping[str, Any], key: str, minimum: int, where: str) -> int:
    value = attrs.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise StoreError(f"{where}: attribute {key} should be an integer >= {minimum}, got {value!r}")
    return value


class StoreArray:
    """One array of a store group, with the zarr array's API. Reading a chunk file that does not decode
    (corrupt, truncated, unreadable) raises :class:`StoreError` naming the file, not zarr's or a codec's
    error."""

    def __init__(self, group: MapGroup, name: str, array: Any) -> None:
        self._group = group
        self._name = name
        self._array = array

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._array, attr)

    def __len__(self) -> int:
        return len(self._array)

    def __getitem__(self, selection: Any) -> Any:
        try:
            return self._array[selection]
        except Exception:
            damaged = self._damaged_chunk()
            if damaged is None:
                raise
            raise damaged from None

    def __setitem__(self, selection: Any, value: Any) -> None:
        try:
            self._array[selection] = value
        except Exception:  # a partial-chunk write reads the old chunk first
            damaged = self._damaged_chunk()
            if damaged is None:
                raise
            raise damaged from None

    def chunk_key(self, chunk: int) -> str:
        """The store key (path inside the store) of sample chunk ``chunk`` of this array."""
        key = self._array.metadata.encode_chunk_key((chunk,) + (0,) * (self._array.ndim - 1))
        return f"{self._group.path}/{self._name}/{key}"

    def chunk_file(self, chunk: int) -> str:
        """Where sample chunk ``chunk`` of this array is, for a message: a file path or a URL."""
        return self._group.store.path.describe(self.chunk_key(chunk))

    def _damaged_chunk(self) -> StoreError | None:
        """The error naming the first chunk that does not read (None: every chunk reads, the failure was
        something else)."""
        rows = self._array.chunks[0] if self._array.ndim else 0
        if not rows:
            return None
        for chunk in range(-(-self._array.shape[0] // rows)):
            try:
                self._array[chunk * rows : (chunk + 1) * rows]
            except Exception as err:  # undecodable bytes raise codec-specific types
                what = "corrupt or truncated" if not isinstance(err, OSError) else "unreadable"
                return StoreError(
                    f"cannot read chunk {self.chunk_file(chunk)}: {what} ({_reason(err)}); delete it and "
                    f"rerun the stage that wrote {self._group.store.path} to recompute it"
                )
        return None


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
        where = f"{self.store.path}: {self.path}"
        value = _zarr_call(where, lambda: self.store.root[self.path].attrs.get(ATTR_KEY, {}))
        if not isinstance(value, dict):
            raise StoreError(f"{where}: attributes[{ATTR_KEY!r}] should be an object, got {value!r}")
        return dict(value)

    @property
    def n_samples(self) -> int:
        return _count(self.attrs, "n_samples", 0, f"{self.store.path}: {self.path}")

    @property
    def chunk_size(self) -> int:
        return _count(self.store.attrs, "chunk_size", 1, str(self.store.path))

    @property
    def n_chunks(self) -> int:
        return -(-self.n_samples // self.chunk_size)

    def array(self, name: str, writable: bool = False) -> StoreArray:
        import zarr

        mode = "r+" if writable and not self.store.read_only else "r"
        try:
            array = self.store.path.access(
                lambda: zarr.open_array(
                    self.store.zarr_store, path=f"{self.path}/{name}", mode=mode, config=_WRITE_CONFIG
                )
            )
        except Exception as err:  # zarr raises several types for a missing or unreadable array
            raise StoreError(f"{self.store.path}: cannot open {self.path}/{name}: {_reason(err)}") from None
        self._check_array(name, array)
        return StoreArray(self, name, array)

    def _expected_shape(self, name: str) -> tuple[int, ...] | None:
        meta, where = self.store.attrs, str(self.store.path)
        n, objects = self.n_samples, _count(meta, "n_objects", 1, where)
        return {
            "sample_index": (n,),
            "object_scores": (n, objects),
            "prompt_scores": (n, objects),
            "token_scores": (n, _count(meta, "n_visual", 0, where)),
            "layer_scores": (n, _count(meta, "n_layers", 0, where), objects),
        }.get(name)

    def _check_array(self, name: str, array: Any) -> None:
        """Refuse an array of the wrong shape, dtype or chunking (a damaged or foreign store)."""
        shape = self._expected_shape(name)
        if shape is None:
            return
        where = f"{self.store.path}: {self.path}/{name}"
        if tuple(array.shape) != shape:
            raise StoreError(f"{where} has shape {tuple(array.shape)}, expected {shape}")
        kind = "iu" if name == "sample_index" else "f"
        if np.dtype(array.dtype).kind not in kind:
            wanted = "an integer" if name == "sample_index" else "a floating-point"
            raise StoreError(f"{where} has dtype {array.dtype}, expected {wanted} dtype")
        chunks = (min(self.chunk_size, max(shape[0], 1)), *shape[1:])
        if tuple(array.chunks) != chunks:
            raise StoreError(f"{where} has chunks {tuple(array.chunks)}, expected {chunks}")

    def array_names(self) -> list[str]:
        return _children(self.store, self.path, "array")

    def has_array(self, name: str) -> bool:
        return name in self.array_names()

    def chunk_bounds(self, chunk: int) -> tuple[int, int]:
        start = chunk * self.chunk_size
        return start, min(start + self.chunk_size, self.n_samples)

    def completed_chunks(self) -> set[int]:
        """Chunks whose ``sample_index`` rows are all written and whose chunk files all exist."""
        index = self.array("sample_index")[:]
        arrays = [self.array(n) for n in self.array_names() if n in KNOWN_ARRAYS]
        written = set(self.store.path.list_keys(self.path))  # one listing, not a request per chunk
        done = set()
        for chunk in range(self.n_chunks):
            start, stop = self.chunk_bounds(chunk)
            if (index[start:stop] >= 0).all() and all(a.chunk_key(chunk) in written for a in arrays):
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

    def _sync_chunk(self, array: StoreArray, chunk: int) -> None:
        """fsync a local chunk file (an object store's put is durable once it returns)."""
        local = self.store.path.local
        if local is not None and (local / array.chunk_key(chunk)).is_file():
            _fsync_file(local / array.chunk_key(chunk))

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

    def verify(self, chunks: set[int] | None = None) -> int:
        """Decode every array's file of the complete chunks (or ``chunks``), checking their CRC32C checksums;
        a damaged one raises :class:`StoreError` naming the file. Returns the number of files checked."""
        return self.verify_and_count_nonfinite(chunks)[0]

    def verify_and_count_nonfinite(self, chunks: set[int] | None = None) -> tuple[int, int]:
        """:meth:`verify`, also counting the written samples with a NaN or infinite value in any score array
        (the stages refuse those maps). Returns (files checked, non-finite samples)."""
        chunks = self.completed_chunks() if chunks is None else chunks
        checked, bad_rows = 0, set()
        for name in self.array_names():
            if name not in KNOWN_ARRAYS:
                continue
            array = self.array(name)
            for chunk in sorted(chunks):
                start, stop = self.chunk_bounds(chunk)
                block = array[start:stop]
                checked += 1
                if name != "sample_index" and np.issubdtype(block.dtype, np.floating):
                    finite = np.isfinite(block.reshape(len(block), -1)).all(axis=1)
                    bad_rows.update(start + int(i) for i in np.flatnonzero(~finite))
        return checked, len(bad_rows)

    def summary(self, verify: bool = False) -> dict[str, Any]:
        done = self.completed_chunks()
        written = sum(self.chunk_bounds(c)[1] - self.chunk_bounds(c)[0] for c in done)
        checked = self.verify_and_count_nonfinite(done) if verify else None
        return {
            "task": self.task,
            "split": self.split,
            "n_samples": self.n_samples,
            "written_samples": written,
            "chunks": f"{len(done)}/{self.n_chunks}",
            "complete": len(done) == self.n_chunks,
            "arrays": self.array_names(),
            # samples with NaN/inf scores (None: not read, --no-verify)
            "nonfinite_samples": None if checked is None else checked[1],
            **({"verified_files": checked[0]} if checked is not None else {}),
        }


class MapStore:
    """An opened store: root attributes, groups, completeness."""

    def __init__(self, path: StoreLocation | Path | str, read_only: bool) -> None:
        import zarr

        self.path = StoreLocation.parse(path)
        self.read_only = read_only
        self.zarr_store = self.path.zarr_store(read_only)
        mode = "r" if read_only else "r+"
        self.root = _zarr_call(str(self.path), lambda: zarr.open_group(self.zarr_store, mode=mode))

    def list_dir(self, prefix: str) -> list[str]:
        """The names directly under ``prefix`` (zarr's ``list_dir``: keys and sub-prefixes)."""

        async def collect(store: Any) -> list[str]:
            return [name async for name in store.list_dir(prefix)]

        return self.path.run(self.zarr_store, collect)

    def read_key(self, key: str) -> bytes | None:
        """The bytes stored at ``key`` (None when there is none)."""
        return _read_key(self.path, self.zarr_store, key)

    @property
    def attrs(self) -> dict[str, Any]:
        value = _zarr_call(str(self.path), lambda: self.root.attrs.get(ATTR_KEY, {}))
        if not isinstance(value, dict):
            raise StoreError(f"{self.path}: attributes[{ATTR_KEY!r}] should be an object, got {value!r}")
        return dict(value)

    @property
    def kind(self) -> str:
        return str(self.attrs.get("kind"))

    def update_attrs(self, **values: Any) -> None:
        """Coordinator only: merge ``values`` into the root attributes."""
        self.root.attrs[ATTR_KEY] = {**self.attrs, **values}

    def groups(self) -> list[MapGroup]:
        return [
            MapGroup(self, task, split)
            for task in _children(self, "", "group")
            for split in _children(self, task, "group")
        ]

    def has_group(self, task: str, split: str) -> bool:
        import zarr

        key = f"{task}/{split}"
        return bool(
            _zarr_call(str(self.path), lambda: key in self.root and isinstance(self.root[key], zarr.Group))
        )

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
                compressors=_compressors(),
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

    def summary(self, verify: bool = False) -> dict[str, Any]:
        """Attributes and per-group completeness; ``verify``: also decode every written chunk file
        (checksums), raising :class:`StoreError` naming a damaged one."""
        groups = [g.summary(verify) for g in self.groups()]
        return {"path": str(self.path), **self.attrs, "groups": groups, "checksums_verified": verify}


def _read_key(location: StoreLocation, store: Any, key: str) -> bytes | None:
    from zarr.core.buffer import default_buffer_prototype

    value = location.run(store, lambda st: st.get(key, prototype=default_buffer_prototype()))
    return None if value is None else value.to_bytes()


def _is_store(location: StoreLocation) -> bool:
    import json

    if location.local is not None:  # no zarr store object for a directory that may not exist
        meta = location.local / "zarr.json"
        try:
            raw = meta.read_bytes() if meta.is_file() else None
        except OSError:
            return False
    else:
        raw = _read_key(location, location.zarr_store(read_only=True), "zarr.json")
    if raw is None:
        return False
    try:
        metadata = json.loads(raw)
    except ValueError:
        return False
    attributes = metadata.get("attributes") if isinstance(metadata, dict) else None
    return isinstance(attributes, dict) and ATTR_KEY in attributes


def open_store(path: StoreLocation | Path | str, kind: str | None = None, read_only: bool = True) -> MapStore:
    """Open an existing store (a path or URL), checking that it is one (and of ``kind`` if given)."""
    path = StoreLocation.parse(path)
    if not path.exists():
        raise StoreError(f"store not found: {path}")
    if not _is_store(path):
        raise StoreError(f"{path} is not a fast3d store")
    store = MapStore(path, read_only=read_only)
    attrs = store.attrs
    version = attrs.get("schema_version")
    if version != SCHEMA_VERSION:
        raise StoreError(
            f"{path} has store schema version {version!r}; this fast3d reads version {SCHEMA_VERSION}"
        )
    if attrs.get("kind") not in KINDS:
        kind = attrs.get("kind")
        what = f"{article(str(kind))} {kind!r} store"
        raise StoreError(f"{path} is {what}; fast3d stores are {' or '.join(KINDS)}")
    for key, minimum in (("chunk_size", 1), ("n_objects", 1), ("n_visual", 0), ("n_layers", 0)):
        _count(attrs, key, minimum, str(path))
    if kind is not None and store.kind != kind:
        what = f"{article(store.kind)} {store.kind!r} store"
        raise StoreError(f"{path} is {what}, expected {article(kind)} {kind!r} one")
    return store


def create_store(path: StoreLocation | Path | str, attrs: Mapping[str, Any]) -> MapStore:
    """Coordinator only: create a new, empty store. Refuses an existing path (an empty directory is fine:
    the writer lock creates it)."""
    import zarr

    path = StoreLocation.parse(path)
    if not path.is_empty_or_absent():
        raise StoreError(f"{path} already exists")
    if attrs.get("kind") not in KINDS:
        raise ValueError(f"store kind must be one of {KINDS}")
    root = path.access(lambda: zarr.open_group(path.zarr_store(read_only=False), mode="w-"))
    root.attrs[ATTR_KEY] = {"schema_version": SCHEMA_VERSION, **attrs}
    return MapStore(path, read_only=False)


def is_store(path: StoreLocation | Path | str) -> bool:
    return _is_store(StoreLocation.parse(path))
