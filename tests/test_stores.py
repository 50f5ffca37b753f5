"""The attention-map store: layout, chunk commit semantics, completeness, refusal of foreign paths."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fast3d_cli.stores import SCHEMA_VERSION, StoreError, create_store, open_store

ATTRS = {
    "kind": "attention",
    "model": "m1",
    "data": "d1",
    "aggregation": {"layers": "all"},
    "n_objects": 4,
    "n_visual": 12,
    "n_layers": 2,
    "chunk_size": 3,
}


def make(path: Path, n: int = 7, optional: bool = False):
    store = create_store(path, ATTRS)
    return store, store.create_group("scanqa", "val", n, {"annotation": "a1"}, optional=optional)


def test_layout_and_unwritten_rows_are_detectable(tmp_path: Path) -> None:
    _, group = make(tmp_path / "maps.zarr", optional=True)
    meta = json.loads((tmp_path / "maps.zarr" / "zarr.json").read_text())
    assert meta["zarr_format"] == 3 and meta["attributes"]["fast3d"]["schema_version"] == SCHEMA_VERSION
    assert group.n_chunks == 3 and group.completed_chunks() == set()
    assert np.isnan(group.read("object_scores")).all() and (group.read("sample_index") == -1).all()
    assert group.array("object_scores").chunks == (3, 4)
    assert group.array("layer_scores").shape == (7, 2, 4) and group.array("token_scores").dtype == np.float16
    assert sorted(group.summary()["arrays"]) == [
        "layer_scores",
        "object_scores",
        "prompt_scores",
        "sample_index",
        "token_scores",
    ]


def test_chunks_commit_with_their_sample_index(tmp_path: Path) -> None:
    _, group = make(tmp_path / "maps.zarr")
    rows = np.arange(12, dtype=np.float32).reshape(3, 4)
    group.write_chunk(1, np.array([3, 4, 5]), {"object_scores": rows, "prompt_scores": rows / 2})
    assert group.completed_chunks() == {1}
    group.write_chunk(2, np.array([6]), {"object_scores": rows[:1], "prompt_scores": rows[:1]})
    assert group.completed_chunks() == {1, 2} and not group.is_complete()
    # a chunk whose score arrays were written but whose marker was not (a crash in between) is not done
    group.array("object_scores", writable=True)[0:3] = rows
    assert group.completed_chunks() == {1, 2}
    reopened = open_store(tmp_path / "maps.zarr").group("scanqa", "val")
    assert [i for i, _ in reopened.iter_samples()] == [3, 4, 5, 6]
    assert np.array_equal(dict(reopened.iter_samples())[4]["object_scores"], rows[1])
    summary = reopened.summary()
    assert summary["written_samples"] == 4 and summary["chunks"] == "2/3" and not summary["complete"]
    with pytest.raises(ValueError, match="needs 3 rows"):
        group.write_chunk(0, np.array([0]), {"object_scores": rows[:1]})


def test_open_refuses_what_is_not_a_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="store not found"):
        open_store(tmp_path / "nope.zarr")
    (tmp_path / "dir").mkdir()
    with pytest.raises(StoreError, match="is not a fast3d store"):
        open_store(tmp_path / "dir")
    (tmp_path / "file.zarr").write_text("x")
    with pytest.raises(StoreError, match="is not a fast3d store"):
        open_store(tmp_path / "file.zarr")
    store, _ = make(tmp_path / "maps.zarr")
    with pytest.raises(StoreError, match="is an 'attention' store, expected a 'prediction' one"):
        open_store(tmp_path / "maps.zarr", kind="prediction")
    with pytest.raises(StoreError, match="has no scanrefer/val maps"):
        store.group("scanrefer", "val")
    with pytest.raises(StoreError, match="already exists"):
        create_store(tmp_path / "maps.zarr", ATTRS)


def test_schema_version_is_checked(tmp_path: Path) -> None:
    store, _ = make(tmp_path / "maps.zarr")
    store.update_attrs(schema_version=99)
    with pytest.raises(StoreError, match="schema version 99"):
        open_store(tmp_path / "maps.zarr")


def test_read_only_store_refuses_writes(tmp_path: Path) -> None:
    make(tmp_path / "maps.zarr")
    group = open_store(tmp_path / "maps.zarr").group("scanqa", "val")
    with pytest.raises(Exception):  # noqa: B017 - zarr's own read-only error
        group.write_chunk(0, np.array([0, 1, 2]), {"object_scores": np.zeros((3, 4), np.float32)})
