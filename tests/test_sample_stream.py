"""The training stream of the sample world: fresh scenes in distribution with the committed world."""

from __future__ import annotations

import itertools

import numpy as np

from fast3d_cli.sample_world import WorldSpec
from fast3d_cli.sample_world.generator import feature_model
from fast3d_cli.sample_world.stream import SceneStream
from fast3d_cli.sample_world.vocabulary import CLASSES, COLOURS

from .conftest import SMALL_WORLD


def _scenes(seed: int, n: int, **kwargs) -> list:
    return list(itertools.islice(SceneStream(SMALL_WORLD, seed=seed, **kwargs), n))


def test_stream_is_deterministic_per_seed_and_fresh_across_seeds() -> None:
    a, b, c = _scenes(3, 4), _scenes(3, 4), _scenes(4, 4)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.feats_3d, y.feats_3d) and x.rows == y.rows
    assert not any(
        np.array_equal(x.feats_3d, z.feats_3d) for x in a for z in c if x.feats_3d.shape == z.feats_3d.shape
    )


def test_streamed_features_come_from_the_worlds_prototypes() -> None:
    prototypes = feature_model(SMALL_WORLD)
    scene = _scenes(5, 1)[0]
    real = [j for j, p in enumerate(scene.scene.proposals) if p.source >= 0 and p.quality == 1.0]
    unit = scene.feats_3d[real] / np.linalg.norm(scene.feats_3d[real], axis=1, keepdims=True)
    recovered = (unit @ prototypes.class_3d.T).argmax(1)
    assert (recovered == [scene.scene.proposals[j].cls for j in real]).mean() > 0.9
    assert scene.feats_2d.dtype == np.float32 and np.array_equal(
        scene.feats_2d, scene.feats_2d.astype(np.float16)
    )


def test_object_range_for_curricula_and_never_an_empty_scene() -> None:
    for scene in _scenes(6, 30, min_objects=1, max_objects=3):
        assert 2 <= len(scene.scene.objects) <= 3 and scene.n_proposals >= 1
    assert SceneStream(WorldSpec(), seed=0).min_objects == WorldSpec().min_objects


def test_rows_carry_evidence_and_keywords_that_name_it() -> None:
    vocabulary = {c.name for c in CLASSES} | {c.plural for c in CLASSES} | set(COLOURS)
    for scene in _scenes(7, 3):
        n = scene.n_proposals
        for task, rows in scene.rows.items():
            assert rows, task
            for row in rows:
                assert all(0 <= j < n for j in row["evidence"]), (task, row)
                assert row["keywords"] and all(k in row["prompt"] for k in row["keywords"]), (task, row)
                assert all(k in vocabulary or k.startswith("<OBJ") for k in row["keywords"]), (task, row)
        for row in scene.rows["scanrefer"]:
            assert int(row["caption"][4:7]) in row["evidence"]
        for row in scene.rows["scan2cap"]:
            assert row["pred_id"] in row["evidence"]
