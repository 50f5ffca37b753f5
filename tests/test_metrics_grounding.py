"""ScanRefer (spec §6.1) and Multi3DRefer (spec §6.2) on a hand-built scene."""

import numpy as np
import pytest
import torch

from fast3d_cli.metrics import (
    MetricContext,
    MetricOptions,
    MetricsError,
    compute_metrics,
    multi3dref_f1,
    scanrefer_pred_id,
)

# GT boxes (ScanNet ids 0..2) and proposals (<OBJ000>..<OBJ003>), float32 tensors like the real files.
GT = [
    [0, 0, 0, 2, 2, 2],  # GT0
    [10, 0, 0, 2, 2, 2],  # GT1
    [20, 0, 0, 2, 1, 1],  # GT2: x in [19, 21]
]
PROPOSALS = [
    [0, 0, 0, 2, 2, 2],  # P0 = GT0
    [10, 0, 0, 2, 2, 2],  # P1 = GT1
    [11, 0, 0, 2, 2, 2],  # P2: IoU with GT1 = 4 / 12 = 1/3 (>= 0.25, < 0.5)
    [19.5, 0, 0, 1, 1, 1],  # P3: inside GT2, IoU = 1 / 2 geometrically
]
# Scene s1 (1-D intervals on x): greedy matching is wrong, Hungarian is right.
GT_S1 = [[5, 0, 0, 10, 1, 1], [3, 0, 0, 6, 1, 1]]  # g0 = [0, 10], g1 = [0, 6]
PROPOSALS_S1 = [[4, 0, 0, 8, 1, 1], [6, 0, 0, 8, 1, 1]]  # p0 = [0, 8], p1 = [2, 10]


def make_context(lookup=None):
    def attrs(s0, s1):
        return {
            "s0": {"objects": ["obj"] * len(s0), "locs": torch.tensor(s0, dtype=torch.float32)},
            "s1": {"objects": ["obj"] * len(s1), "locs": torch.tensor(s1, dtype=torch.float32)},
        }

    return MetricContext(
        proposal_attributes=attrs(PROPOSALS, PROPOSALS_S1),
        gt_attributes=attrs(GT, GT_S1),
        scanrefer_lookup=lookup,
    )


def rec(gt_id, pred, scene="s0", ref_captions=(), type_info=None):
    return {
        "index": 0, "scene_id": scene, "gt_id": gt_id, "pred_id": 0, "qid": 0, "prompt": "p",
        "pred": pred, "ref_captions": list(ref_captions), "type_info": type_info,
    }  # fmt: skip


# ----------------------------------------------------------------------------------------- ScanRefer


def test_scanrefer_pred_id_rules():
    assert scanrefer_pred_id("no id here", 4) == 0
    assert scanrefer_pred_id("<OBJ1> or <OBJ0001>", 4) == 0  # not exactly three digits
    assert scanrefer_pred_id("<OBJ004> <OBJ007>", 4) == 0  # all out of range
    assert scanrefer_pred_id("<OBJ007>, I mean <OBJ002>", 4) == 2
    assert scanrefer_pred_id("<OBJ003> <OBJ001>", 4) == 3  # first valid wins


def test_scanrefer_accuracy_and_splits():
    lookup = {"s0": {"0": 0, "1": 1, "2": 1}}
    preds = [
        rec(0, "I cannot find it."),  # no id -> P0 = GT0: hit (unique)
        rec(1, "It is <OBJ007>, no, <OBJ001>."),  # 7 out of range -> P1: hit (multiple)
        rec(1, "<OBJ002> <OBJ001>"),  # first valid = P2: IoU 1/3 (multiple)
        rec(1, ""),  # no id -> P0: miss (multiple)
    ]
    scores = compute_metrics("scanrefer", preds, make_context(lookup), MetricOptions())
    assert scores == {
        "[scanrefer] Acc@0.25": 3 / 4,
        "[scanrefer] Acc@0.50": 2 / 4,
        "[scanrefer] Unique Acc@0.25": 1.0,
        "[scanrefer] Unique Acc@0.50": 1.0,
        "[scanrefer] Multiple Acc@0.25": 2 / 3,
        "[scanrefer] Multiple Acc@0.50": 1 / 3,
    }


def test_scanrefer_without_lookup_or_without_a_split():
    preds = [rec(0, "<OBJ000>"), rec(1, "<OBJ000>")]
    assert compute_metrics("scanrefer", preds, make_context()) == {
        "[scanrefer] Acc@0.25": 0.5,
        "[scanrefer] Acc@0.50": 0.5,
    }
    scores = compute_metrics("scanrefer", preds, make_context({"s0": {"0": 1, "1": 1}}))
    assert "[scanrefer] Unique Acc@0.25" not in scores  # no unique sample: no key (official: divides by 0)
    assert scores["[scanrefer] Multiple Acc@0.50"] == 0.5


def test_scanrefer_geometric_half_iou_fails_at_050():
    scores = compute_metrics("scanrefer", [rec(2, "<OBJ003>")], make_context())
    assert scores == {"[scanrefer] Acc@0.25": 1.0, "[scanrefer] Acc@0.50": 0.0}


@pytest.mark.parametrize(
    ("preds", "lookup", "message"),
    [
        ([], None, "no scanrefer predictions"),
        ([rec(0, "", scene="nope")], None, "nope"),
        ([rec(5, "")], None, "GT object id 5"),
        ([rec(2, "")], {"s0": {"0": 0}}, "lookup"),
        ([{"scene_id": "s0", "pred": ""}], None, "gt_id"),
    ],
)
def test_scanrefer_errors(preds, lookup, message):
    with pytest.raises(MetricsError, match=message):
        compute_metrics("scanrefer", preds, make_context(lookup))


# --------------------------------------------------------------------------------------- Multi3DRefer

BOX = np.array([[0, 0, 0, 2, 2, 2]], dtype=np.float64)
FAR = np.array([[9, 9, 9, 2, 2, 2]], dtype=np.float64)


def test_multi3dref_f1_zero_target():
    assert multi3dref_f1(BOX[:0], BOX[:0], zero_target=True) == {"0.25": 1.0, "0.50": 1.0}
    assert multi3dref_f1(BOX, BOX[:0], zero_target=True) == {"0.25": 0.0, "0.50": 0.0}


def test_multi3dref_f1_counts():
    assert multi3dref_f1(BOX[:0], BOX, zero_target=False) == {"0.25": 0.0, "0.50": 0.0}  # P = 0
    assert multi3dref_f1(BOX, BOX, zero_target=False) == {"0.25": 1.0, "0.50": 1.0}
    two = np.concatenate([BOX, FAR])
    assert multi3dref_f1(two, BOX, zero_target=False)["0.50"] == 2 * 1 / 3  # more preds than GT
    assert multi3dref_f1(BOX, two, zero_target=False)["0.50"] == 2 * 1 / 3  # fewer preds than GT
    assert multi3dref_f1(np.concatenate([BOX, BOX]), BOX, zero_target=False)["0.50"] == 2 / 3  # duplicate


def test_multi3dref_hungarian_beats_greedy():
    # IoU(p0,g0)=0.8, IoU(p0,g1)=0.75, IoU(p1,g0)=0.8, IoU(p1,g1)=0.4. Greedy p0->g0, p1->g1 gives
    # TP@0.5 = 1 (F1 0.5); the max-total-IoU assignment p0->g1, p1->g0 gives TP = 2 (F1 1).
    f1 = multi3dref_f1(np.array(PROPOSALS_S1, float), np.array(GT_S1, float), zero_target=False)
    assert f1 == {"0.25": 1.0, "0.50": 1.0}
    scores = compute_metrics(
        "multi3dref", [rec(0, "<OBJ000> <OBJ001>", "s1", [0, 1], "mt")], make_context(), MetricOptions()
    )
    assert scores["[multi3dref] all F1@0.50"] == 1.0


def test_multi3dref_metrics_per_type():
    preds = [
        rec(0, "No.", ref_captions=[], type_info="zt_w_d"),  # a: 1
        rec(0, "Yes. <OBJ000>.", ref_captions=[], type_info="zt_wo_d"),  # b: 0
        rec(0, "<OBJ009>", ref_captions=[], type_info="zt_w_d"),  # c: invalid id = no id -> 1
        rec(0, "<OBJ000> and <OBJ000>", ref_captions=[0], type_info="st_w_d"),  # d: duplicate, 2/3
        rec(0, "<OBJ002>", ref_captions=[1], type_info="st_wo_d"),  # e: IoU 1/3 -> 1 @0.25, 0 @0.50
        rec(0, "<OBJ000>", ref_captions=[0, 1], type_info="mt"),  # f: 2/3
        rec(0, "<OBJ000> <OBJ001> <OBJ002>", ref_captions=[0, 1], type_info="mt"),  # g: TP 2, 4/5
        rec(0, "No.", ref_captions=[0], type_info="st_w_d"),  # h: P = 0 -> 0
        rec(0, "<OBJ003>", ref_captions=[2], type_info="st_wo_d"),  # i: IoU 0.5 in float32 -> 1
    ]
    scores = compute_metrics("multi3dref", preds, make_context(), MetricOptions())
    expected = {
        "all": (
            (1 + 0 + 1 + 2 / 3 + 1 + 2 / 3 + 0.8 + 0 + 1) / 9,
            (1 + 0 + 1 + 2 / 3 + 0 + 2 / 3 + 0.8 + 0 + 1) / 9,
        ),
        "zt_w_d": (1.0, 1.0),
        "zt_wo_d": (0.0, 0.0),
        "st_w_d": (1 / 3, 1 / 3),
        "st_wo_d": (1.0, 0.5),
        "mt": ((2 / 3 + 0.8) / 2, (2 / 3 + 0.8) / 2),
    }
    assert set(scores) == {f"[multi3dref] {t} F1@{thr}" for t in expected for thr in ("0.25", "0.50")}
    for group, (f25, f50) in expected.items():
        assert scores[f"[multi3dref] {group} F1@0.25"] == pytest.approx(f25, abs=1e-12)
        assert scores[f"[multi3dref] {group} F1@0.50"] == pytest.approx(f50, abs=1e-12)


def test_multi3dref_only_present_types_reported():
    scores = compute_metrics("multi3dref", [rec(0, "No.", type_info="zt_wo_d")], make_context())
    assert scores == {
        "[multi3dref] all F1@0.25": 1.0,
        "[multi3dref] all F1@0.50": 1.0,
        "[multi3dref] zt_wo_d F1@0.25": 1.0,
        "[multi3dref] zt_wo_d F1@0.50": 1.0,
    }


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (rec(0, "", ref_captions=[0], type_info=None), "type_info"),
        (rec(0, "", ref_captions=[0], type_info="st"), "type_info"),
        (rec(0, "", ref_captions=[], type_info="mt"), "without GT"),
        (rec(0, "", ref_captions=[7], type_info="mt"), "GT object id 7"),
        (rec(0, "", ref_captions=["x"], type_info="mt"), "object ids"),
    ],
)
def test_multi3dref_errors(record, message):
    with pytest.raises(MetricsError, match=message):
        compute_metrics("multi3dref", [record], make_context())
