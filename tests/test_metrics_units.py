"""Headline units (spec §7): units that reproduce every task's headline metric from the same per-sample
pass as the metric values, on the sample world's real boxes and captions; TaskUnits serialisation."""

import json

import numpy as np
import pytest

from fast3d_cli.data import SceneBank, load_samples
from fast3d_cli.data.formats import read_json
from fast3d_cli.metrics import (
    HEADLINE_METRICS,
    CaptionScorer,
    MetricContext,
    MetricOptions,
    MetricsError,
    TaskUnits,
    compute_metrics,
    evaluate_task,
    list_tasks,
    pairwise_box_iou,
)

# ------------------------------------------------------------------ prediction records on the sample world


def _best_proposals(context, scene_id, gt_ids):
    iou = pairwise_box_iou(context.proposal_boxes(scene_id), context.gt_boxes(scene_id)[list(gt_ids)])
    return [int(i) for i in iou.argmax(axis=0)]


def _damaged_caption(text, rng):
    """A worse caption: empty, fewer than 4 words, shuffled words, or another object's words."""
    words = text.split()
    choice = rng.integers(4)
    if choice == 0:
        return ""
    if choice == 1:
        return " ".join(words[: rng.integers(1, 4)])
    if choice == 2:
        return " ".join(rng.permutation(words))
    return "a brown wooden chair next to the door ."


def _prediction(task, sample, context, rng, skill):
    good = rng.random() < skill
    num_proposals = len(context.proposal_boxes(sample.scene_id))
    pred_id = sample.pred_id
    if task == "scanrefer":
        pred = sample.ref_captions[0] if good else f"<OBJ{rng.integers(num_proposals):03d}>"
    elif task == "multi3dref":
        if good:
            ids = _best_proposals(context, sample.scene_id, sample.ref_captions)
        else:
            ids = [int(i) for i in rng.integers(num_proposals, size=rng.integers(3))]
        pred = "The objects are " + ", ".join(f"<OBJ{i:03d}>" for i in ids) + "."
    elif task == "scan2cap":
        pred = sample.ref_captions[0] if good else _damaged_caption(sample.ref_captions[-1], rng)
        pred_id = pred_id if good or rng.random() < 0.5 else int(rng.integers(num_proposals))
    else:
        pred = sample.ref_captions[0].capitalize() + "." if good else rng.choice(["two", "red", "", "left"])
    return {
        "index": sample.index, "scene_id": sample.scene_id, "gt_id": sample.obj_id, "pred_id": pred_id,
        "qid": 0, "prompt": sample.prompt, "pred": pred, "ref_captions": list(sample.ref_captions),
        "type_info": sample.type_info,
    }  # fmt: skip


def world_records(data_config, task, context, seed, skill):
    """Prediction records (runner format) for the world's val samples: right with probability ``skill``."""
    rng = np.random.default_rng(seed)
    return [_prediction(task, s, context, rng, skill) for s in load_samples(data_config, task, "val")]


@pytest.fixture(scope="module")
def scorer():
    with CaptionScorer(use_java=False) as caption_scorer:
        yield caption_scorer


def build_world_context(data_config, scorer):
    """The metric context of the world's val split, as the evaluation runner builds it."""
    bank = SceneBank(data_config, "val")
    return MetricContext(
        proposal_attributes=bank.proposal_attributes,
        gt_attributes=bank.gt_attributes,
        scan2cap_corpus=read_json(data_config.path(data_config.scan2cap_corpus)),
        scanrefer_lookup=read_json(data_config.path(data_config.scanrefer_lookup)),
        caption_scorer=scorer,
    )


@pytest.fixture(scope="module")
def world_context(data_config, scorer):
    return build_world_context(data_config, scorer)


# ------------------------------------------------------------------------------- units of every task


@pytest.mark.parametrize("task", list_tasks())
@pytest.mark.parametrize(("seed", "skill"), [(0, 0.7), (1, 0.3)])
def test_units_reproduce_the_headline_metric(task, seed, skill, data_config, world_context):
    records = world_records(data_config, task, world_context, seed, skill)
    evaluation = evaluate_task(task, records, world_context, MetricOptions())
    assert evaluation.metrics == compute_metrics(task, records, world_context, MetricOptions())
    units = evaluation.units
    headline = evaluation.metrics[HEADLINE_METRICS[task]]
    assert units.task == task and units.metric == HEADLINE_METRICS[task]
    assert 0 < headline < 1  # the records mix right and wrong predictions
    assert abs(units.headline() - headline) < 1e-12
    assert abs(units.weighted(np.ones((1, len(units))))[0] - headline) < 1e-12
    # every unit twice: the same mean; BLEU-4 moves by ~1e-12 through pycocoevalcap's 1e-9/1e-15 constants
    assert abs(units.weighted(np.full((3, len(units)), 2))[1] - headline) < 1e-9
    if task == "scan2cap":  # every corpus item, also the one without a prediction
        assert units.keys == tuple(world_context.scan2cap_corpus)
        assert len(units) == len(records) + 1
    else:
        assert units.keys == tuple(str(r["index"]) for r in records)


@pytest.mark.parametrize("task", ["scanrefer", "multi3dref", "sqa3d"])
def test_mean_units_are_per_record_values(task, data_config, world_context):
    records = world_records(data_config, task, world_context, 2, 0.5)
    units = evaluate_task(task, records, world_context).units
    assert units.statistic == "mean"
    assert units.values.shape == (len(records),)
    if task != "multi3dref":
        assert set(units.values.tolist()) == {0.0, 1.0}
    # dropping a unit changes the metric exactly as dropping the record does
    kept = evaluate_task(task, records[1:], world_context).metrics[HEADLINE_METRICS[task]]
    weights = np.ones((1, len(units)))
    weights[0, 0] = 0
    assert abs(units.weighted(weights)[0] - kept) < 1e-12


def test_scanqa_units_follow_the_reference_option(data_config, world_context):
    records = world_records(data_config, "scanqa", world_context, 3, 0.5)
    for clean in (False, True):
        evaluation = evaluate_task(
            "scanqa", records, world_context, MetricOptions(scanqa_clean_references=clean)
        )
        assert evaluation.units.statistic == "bleu4"
        assert abs(evaluation.units.headline() - evaluation.metrics["[scanqa] Bleu_4"]) < 1e-12


def test_records_without_index_are_keyed_by_position(data_config, world_context):
    records = [
        {k: v for k, v in r.items() if k != "index"}
        for r in world_records(data_config, "sqa3d", world_context, 0, 1)
    ]
    assert evaluate_task("sqa3d", records, world_context).units.keys == tuple(
        f"#{i}" for i in range(len(records))
    )


# ------------------------------------------------------------------------------------------- TaskUnits


def test_task_units_round_trip_through_json():
    units = TaskUnits("scanqa", "bleu4", ("0", "1"), np.arange(20.0).reshape(2, 10))
    again = TaskUnits.from_dict(json.loads(json.dumps(units.to_dict())))
    assert again.to_dict() == units.to_dict()
    assert again.to_dict()["metric"] == "[scanqa] Bleu_4"
    assert np.array_equal(again.values, units.values)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"task": "sqa3d", "statistic": "median", "keys": ["0"], "values": [1.0]}, "unknown statistic"),
        ({"task": "sqa3d", "statistic": "mean", "keys": ["0", "1"], "values": [1.0]}, "shape"),
        ({"task": "scanqa", "statistic": "bleu4", "keys": ["0"], "values": [1.0]}, "shape"),
        ({"task": "sqa3d", "statistic": "mean", "keys": [], "values": []}, "no unit"),
        ({"task": "sqa3d", "statistic": "mean", "keys": ["0"], "values": [float("nan")]}, "finite"),
        ({"task": "sqa3d", "statistic": "mean", "keys": "01", "values": [1.0, 0.0]}, "malformed"),
        ({"task": "sqa3d", "statistic": "mean", "keys": [0], "values": [1.0]}, "malformed"),
        ({"task": "sqa3d", "statistic": "mean", "keys": ["0"], "values": ["x"]}, "malformed"),
        ({"task": "sqa3d", "keys": ["0"], "values": [1.0]}, "malformed"),
        ([1, 2], "malformed"),
    ],
)
def test_task_units_from_dict_refuses_malformed_data(data, message):
    with pytest.raises(MetricsError, match=message):
        TaskUnits.from_dict(data)


def test_weighted_needs_one_weight_per_unit():
    units = TaskUnits("sqa3d", "mean", ("0", "1"), np.array([1.0, 0.0]))
    assert units.weighted(np.array([[1, 3], [2, 0]])).tolist() == [0.25, 1.0]
    with pytest.raises(ValueError, match=r"shape \[R, 2\]"):
        units.weighted(np.ones((2, 3)))
