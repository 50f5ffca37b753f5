"""Loaders for the Chat-Scene annotation, feature and attribute formats (spec §2)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from fast3d_cli.data import DataConfig, SceneBank, load_samples, parse_tasks
from fast3d_cli.data.formats import read_pt
from fast3d_cli.data.tasks import TASKS, parse_splits
from fast3d_cli.errors import DataFileError, UserError


def test_every_task_and_split_loads_with_its_fields(data_config: DataConfig) -> None:
    for task in TASKS:
        for split in ("train", "val"):
            samples = load_samples(data_config, task, split)
            assert samples, (task, split)
            assert [s.index for s in samples] == list(range(len(samples)))
            if split == "train":
                assert all(s.caption for s in samples)
            else:
                assert all(s.ref_captions for s in samples if task != "multi3dref")
    refer = load_samples(data_config, "multi3dref", "val")
    assert {s.type_info for s in refer} <= {"zt_w_d", "zt_wo_d", "st_w_d", "st_wo_d", "mt"}
    assert all(isinstance(x, int) for s in refer for x in s.ref_captions)
    assert all(s.type_info in range(6) for s in load_samples(data_config, "sqa3d", "val"))
    assert all(s.iou is not None for s in load_samples(data_config, "scan2cap", "val"))


def test_scene_features_are_padded_with_zeros_to_max_obj_num(data_config: DataConfig) -> None:
    bank = SceneBank(data_config, "val")
    scene = load_samples(data_config, "scanqa", "val")[0].scene_id
    f3d, f2d = bank.object_features(scene)
    n = bank.proposal_locs(scene).shape[0]
    assert f3d.shape == (100, 64) and f2d.shape == (100, 64)
    assert f3d.dtype == torch.float32 and f2d.dtype == torch.float32  # 2D feats are stored as fp16
    assert f3d[:n].abs().sum(1).gt(0).all() and f3d[n:].abs().sum() == 0 and f2d[n:].abs().sum() == 0
    assert torch.equal(f3d[0], bank.feats_3d[f"{scene}_00"])


def test_attribute_files_hold_center_size_boxes(data_config: DataConfig) -> None:
    bank = SceneBank(data_config, "val")
    for attrs in (bank.proposal_attributes, bank.gt_attributes):
        for scene in attrs.values():
            assert scene["locs"].ndim == 2 and scene["locs"].shape[1] == 6
            assert len(scene["objects"]) == scene["locs"].shape[0] <= 100
            assert (scene["locs"][:, 3:] > 0).all()


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    config = DataConfig(root=tmp_path)
    with pytest.raises(DataFileError, match=str(tmp_path / "scanqa_val.json")):
        load_samples(config, "scanqa", "val")
    with pytest.raises(DataFileError, match=r"scannet_mask3d_uni3d_feats\.pt"):
        SceneBank(config, "val").feats_3d  # noqa: B018


class NotAllowed:
    """A class weights_only loading must refuse."""


def test_pt_files_load_weights_only(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"x": NotAllowed()}, path)
    with pytest.raises(DataFileError, match="weights_only"):
        read_pt(path)
    path.write_bytes(pickle.dumps([1, 2])[:3])
    with pytest.raises(DataFileError):
        read_pt(path)


def test_annotation_json_must_be_a_list(tmp_path: Path) -> None:
    (tmp_path / "scanqa_val.json").write_text(json.dumps({"not": "a list"}))
    with pytest.raises(DataFileError, match="JSON list"):
        load_samples(DataConfig(root=tmp_path), "scanqa", "val")
    (tmp_path / "scanqa_val.json").write_text(json.dumps([{"scene_id": "s"}]))
    with pytest.raises(DataFileError, match="'prompt'"):
        load_samples(DataConfig(root=tmp_path), "scanqa", "val")


def test_task_and_split_parsing() -> None:
    assert parse_tasks("all") == list(TASKS)
    assert parse_tasks("scanqa, scanrefer,scanqa") == ["scanqa", "scanrefer"]
    with pytest.raises(UserError, match="valid tasks: scanrefer, multi3dref, scan2cap, scanqa, sqa3d"):
        parse_tasks("scanqa,nope")
    with pytest.raises(UserError, match="unknown task 'obj_align'"):
        parse_tasks("obj_align")  # training-only data: no metric to evaluate
    assert parse_splits("train,val") == ["train", "val"]
    with pytest.raises(UserError, match="unknown split 'test'"):
        parse_splits("test")


def test_toml_then_flags_override_defaults(tmp_path: Path) -> None:
    (tmp_path / "fast3d.toml").write_text('[data]\nroot = "anno"\nfeats_3d = "my3d.pt"\n')
    config = DataConfig.from_toml(tmp_path / "fast3d.toml")
    assert config.root == (tmp_path / "anno").resolve() and config.feats_3d == "my3d.pt"
    assert config.feats_2d == DataConfig().feats_2d
    flagged = DataConfig.from_toml(tmp_path / "fast3d.toml", root=tmp_path / "other")
    assert flagged.root == tmp_path / "other" and flagged.feats_3d == "my3d.pt"
    with pytest.raises(UserError, match="unknown data setting"):
        DataConfig().with_overrides(nonsense=1)
    with pytest.raises(UserError, match="config file not found"):
        DataConfig.from_toml(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("[data\n")
    with pytest.raises(UserError, match="invalid TOML"):
        DataConfig.from_toml(tmp_path / "bad.toml")


def test_default_data_points_at_sample_data() -> None:
    assert DataConfig().root.parts[-2:] == ("sample_data", "annotations")
