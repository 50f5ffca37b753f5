"""The sample world generator: deterministic, in the Chat-Scene formats, with what the tasks need."""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fast3d_cli.data import DataConfig, SceneBank, load_samples
from fast3d_cli.metrics import pairwise_box_iou, parse_object_ids
from fast3d_cli.sample_world import WorldSpec, generate_world
from fast3d_cli.sample_world.tasks import multi3dref_answer, sentence_case

from .conftest import REPO, SMALL_WORLD


def _same_tree(a: Path, b: Path) -> bool:
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only:
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    return not mismatch and not errors and all(_same_tree(a / d, b / d) for d in cmp.common_dirs)


def test_generation_is_deterministic(world_dir: Path, tmp_path: Path) -> None:
    generate_world(tmp_path / "again", SMALL_WORLD)
    assert _same_tree(world_dir / "annotations", tmp_path / "again" / "annotations")
    generate_world(tmp_path / "other", WorldSpec(**{**SMALL_WORLD.__dict__, "seed": 1}))
    a = json.loads((world_dir / "annotations" / "scanqa_val.json").read_text())
    b = json.loads((tmp_path / "other" / "annotations" / "scanqa_val.json").read_text())
    assert a != b


@pytest.mark.skipif(not (REPO / "sample_data" / "world.json").is_file(), reason="no committed sample world")
def test_committed_sample_world_is_reproducible(tmp_path: Path) -> None:
    committed = json.loads((REPO / "sample_data" / "world.json").read_text())
    generate_world(tmp_path, WorldSpec(**committed["spec"]))
    assert _same_tree(REPO / "sample_data" / "annotations", tmp_path / "annotations")


def test_feature_keys_dims_and_padding(data_config: DataConfig) -> None:
    bank = SceneBank(data_config, "val")
    for scene_id, attrs in bank.proposal_attributes.items():
        n = attrs["locs"].shape[0]
        assert 0 < n <= 100
        keys = [f"{scene_id}_{j:02}" for j in range(n)]
        assert all(k in bank.feats_3d and k in bank.feats_2d for k in keys)
        assert f"{scene_id}_{n:02}" not in bank.feats_3d
    assert next(iter(bank.feats_2d.values())).dtype == torch.float16
    assert bank.feature_dims == (64, 64)


def test_proposals_are_noisy_versions_of_the_gt_boxes(data_config: DataConfig) -> None:
    bank = SceneBank(data_config, "train")
    best = []
    for scene_id, gt in bank.gt_attributes.items():
        iou = pairwise_box_iou(bank.proposal_attributes[scene_id]["locs"], gt["locs"])
        best += iou.max(0).tolist()
    best = np.array(best)
    assert (best >= 0.5).mean() > 0.6  # most objects have a good proposal...
    assert ((best < 0.5) & (best > 0)).any()  # ...but IoU thresholds matter
    assert (best < 0.999).all()


def test_train_grounding_answers_point_at_good_proposals(data_config: DataConfig) -> None:
    bank = SceneBank(data_config, "train")
    for sample in load_samples(data_config, "scanrefer", "train"):
        (proposal,) = parse_object_ids(sample.caption)
        assert sample.caption == f"<OBJ{proposal:03}>." and proposal == sample.obj_id
        assert proposal < bank.proposal_locs(sample.scene_id).shape[0]


def test_val_annotations_follow_chat_scene_fields(data_config: DataConfig) -> None:
    refer = load_samples(data_config, "scanrefer", "val")
    assert all(len(s.ref_captions) == 1 and parse_object_ids(s.ref_captions[0]) for s in refer)
    assert all('"' in s.prompt and "ID" in s.prompt for s in refer)
    qa = load_samples(data_config, "scanqa", "val")
    assert all(s.prompt.endswith(" Answer the question using a single word or phrase.") for s in qa)
    sqa = load_samples(data_config, "sqa3d", "val")
    assert all(s.prompt.startswith("I ") for s in sqa)
    caps = load_samples(data_config, "scan2cap", "val")
    assert all(f"<OBJ{s.pred_id:03}>" in s.prompt for s in caps)
    corpus = json.loads((data_config.root / "scan2cap_val_corpus.json").read_text())
    assert {f"{s.scene_id}|{s.obj_id}" for s in caps} <= set(corpus)
    assert all(c.startswith("sos ") and c.endswith(" eos") for refs in corpus.values() for c in refs)
    m3d = load_samples(data_config, "multi3dref", "train") + load_samples(data_config, "multi3dref", "val")
    assert {s.type_info for s in m3d} == {"zt_w_d", "zt_wo_d", "st_w_d", "st_wo_d", "mt"}


def test_answer_formats() -> None:
    assert multi3dref_answer([]) == "No."
    assert multi3dref_answer([7]) == "Yes. <OBJ007>."
    assert multi3dref_answer([9, 3]) == "Yes. <OBJ003> and <OBJ009>."
    assert multi3dref_answer([1, 2, 30]) == "Yes. <OBJ001>, <OBJ002>, and <OBJ030>."
    assert sentence_case("this is a chair. it is red.") == "This is a chair. It is red."


def test_obj_align_training_data_names_good_proposals(data_config: DataConfig) -> None:
    bank = SceneBank(data_config, "train")
    rows = load_samples(data_config, "obj_align", "train")
    assert rows
    for sample in rows[:50]:
        ids = parse_object_ids(sample.prompt)
        assert parse_object_ids(sample.caption) == ids
        iou = pairwise_box_iou(
            bank.proposal_locs(sample.scene_id)[ids], bank.gt_attributes[sample.scene_id]["locs"]
        )
        assert (iou.max(1) >= 0.5).all()


def test_rows_record_the_evidence_proposals(data_config: DataConfig) -> None:
    bank = SceneBank(data_config, "val")
    for task in ("scanrefer", "multi3dref", "scan2cap", "scanqa", "sqa3d"):
        rows = json.loads(data_config.annotation_path(task, "val").read_text())
        for row in rows:
            n = bank.proposal_locs(row["scene_id"]).shape[0]
            assert "keywords" not in row and all(0 <= j < n for j in row["evidence"]), (task, row)
    m3d = json.loads((data_config.root / "multi3dref_mask3d_val.json").read_text())
    assert all(not r["evidence"] for r in m3d if r["eval_type"].startswith("zt"))
    caps = json.loads((data_config.root / "scan2cap_mask3d_val.json").read_text())
    assert all(r["pred_id"] in r["evidence"] for r in caps)


def test_scanqa_answers_are_short_phrases_some_long_enough_for_bleu4(data_config: DataConfig) -> None:
    answers = [a for s in load_samples(data_config, "scanqa", "val") for a in s.ref_captions]
    lengths = [len(a.split()) for a in answers]
    assert max(lengths) <= 5 and min(lengths) >= 1
    assert sum(n >= 4 for n in lengths) >= 0.05 * len(lengths)


@pytest.mark.skipif(not (REPO / "sample_data" / "world.json").is_file(), reason="no committed sample world")
def test_committed_world_has_400_val_samples_per_task() -> None:
    committed = json.loads((REPO / "sample_data" / "world.json").read_text())
    assert committed["generator_version"] == 3
    assert all(counts["val"] >= 400 for task, counts in committed["samples"].items() if "val" in counts)
