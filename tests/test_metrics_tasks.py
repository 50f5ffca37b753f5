"""Task registry, compute_metrics, headline metrics and the Score Ratio (spec §7)."""

import pytest

from fast3d_cli.errors import UserError
from fast3d_cli.metrics import (
    CAPTION_TASKS,
    HEADLINE_METRICS,
    TASK_METRICS,
    MetricContext,
    MetricOptions,
    MetricsError,
    compute_metrics,
    headline_scores,
    list_tasks,
    score_ratio,
)

TASKS = ["scanrefer", "multi3dref", "scan2cap", "scanqa", "sqa3d"]
BASELINE = dict(zip(TASKS, [50.40, 53.21, 35.92, 13.55, 56.83], strict=True))
FASTV_35 = dict(zip(TASKS, [49.65, 52.64, 35.77, 13.80, 56.74], strict=True))
GAP_90 = dict(zip(TASKS, [50.02, 51.09, 32.64, 12.79, 55.42], strict=True))


def test_registry():
    assert list_tasks() == TASKS
    assert set(TASK_METRICS) == set(TASKS) == set(HEADLINE_METRICS)
    assert {"scan2cap", "scanqa", "sqa3d"} == CAPTION_TASKS
    assert all(callable(fn) for fn in TASK_METRICS.values())


def test_unknown_task_is_a_user_error():
    with pytest.raises(MetricsError, match="valid tasks: scanrefer, multi3dref"):
        compute_metrics("nr3d", [])
    assert issubclass(MetricsError, UserError)


def test_default_options():
    options = MetricOptions()
    assert options.scanqa_clean_references is False
    assert options.scan2cap_sos_eos == "official"


def test_compute_metrics_dispatches():
    preds = [{"scene_id": "s", "gt_id": 0, "pred": "<OBJ000>", "type_info": "st_w_d", "ref_captions": [0]}]
    box = [[0.0, 0.0, 0.0, 1.0, 1.0, 1.0]]
    context = MetricContext({"s": {"objects": ["a"], "locs": box}}, {"s": {"objects": ["a"], "locs": box}})
    assert compute_metrics("scanrefer", preds, context)["[scanrefer] Acc@0.50"] == 1.0
    assert compute_metrics("multi3dref", preds, context)["[multi3dref] st_w_d F1@0.50"] == 1.0


def test_score_ratio_reproduces_the_readme():
    assert round(score_ratio(FASTV_35, BASELINE), 2) == 99.74
    assert round(score_ratio(GAP_90, BASELINE), 2) == 95.61
    assert score_ratio(BASELINE, BASELINE) == pytest.approx(100.0)


def test_score_ratio_uses_shared_tasks_only():
    method = {"scanrefer": 25.2, "scanqa": 27.1, "extra": 1.0}
    assert score_ratio(method, BASELINE) == pytest.approx((25.2 / 50.40 + 27.1 / 13.55) / 2 * 100)
    assert score_ratio({"scanrefer": 0.5040}, {"scanrefer": 0.5040}) == pytest.approx(100.0)  # any scale


def test_score_ratio_errors():
    with pytest.raises(MetricsError, match="baseline is 0 for scanqa"):
        score_ratio(FASTV_35, {**BASELINE, "scanqa": 0.0})
    with pytest.raises(MetricsError, match="no task in common"):
        score_ratio({"scanrefer": 1.0}, {"sqa3d": 1.0})


def test_headline_scores():
    metrics = {
        "[scanrefer] Acc@0.50": 0.504,
        "[scanrefer] Acc@0.25": 0.55,
        "[multi3dref] all F1@0.50": 0.5321,
        "[scanqa] Bleu_4": 0.1355,
        "[scanqa] METEOR": None,
        "[sqa3d] EM1_refined": None,
    }
    assert headline_scores(metrics) == {"scanrefer": 0.504, "multi3dref": 0.5321, "scanqa": 0.1355}
