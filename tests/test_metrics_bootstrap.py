"""Paired-bootstrap confidence intervals for the Score Ratio (spec §7)."""

import json
import time

import numpy as np
import pytest

from fast3d_cli.metrics import (
    BOOTSTRAP_METHOD,
    HEADLINE_METRICS,
    CaptionScorer,
    MetricsError,
    TaskUnits,
    bootstrap_counts,
    evaluate_task,
    headline_scores,
    list_tasks,
    paired_bootstrap_score_ratio,
    score_ratio,
)
from tests.test_metrics_units import build_world_context, world_records

STATISTIC = {
    "scanrefer": "mean",
    "multi3dref": "mean",
    "scan2cap": "bleu4",
    "scanqa": "bleu4",
    "sqa3d": "mean",
}


def units(task, values, keys=None):
    values = np.asarray(values, dtype=np.float64)
    keys = tuple(keys) if keys is not None else tuple(str(i) for i in range(len(values)))
    return TaskUnits(task, STATISTIC[task], keys, values)


def random_bleu_stats(rng, n, min_len=0):
    """Plausible per-item BLEU statistics: lengths min_len..14, guesses from the length, correct <= guess."""
    testlen = rng.integers(min_len, 15, size=n)
    reflen = rng.integers(1, 15, size=n)
    guess = np.maximum(testlen[:, None] - np.arange(4)[None, :], 0)
    correct = rng.binomial(guess, 0.6)
    return np.column_stack([testlen, reflen, guess, correct]).astype(np.float64)


def random_runs(n=450, seed=0):
    """A dense run and a noisy method on n units of each of the five tasks."""
    rng = np.random.default_rng(seed)
    dense, method = {}, {}
    for task in list_tasks():
        if STATISTIC[task] == "mean":
            d = rng.random(n) < 0.5 if task != "multi3dref" else rng.choice([0, 0.5, 2 / 3, 1], size=n)
            m = np.where(rng.random(n) < 0.1, 1 - d, d)
        else:
            d = random_bleu_stats(rng, n)
            m = d.copy()
            m[:, 6:] = rng.binomial(d[:, 6:].astype(int), 0.9)
        dense[task], method[task] = units(task, d), units(task, m)
    return method, dense


# ------------------------------------------------------------------------------------------- basics


def test_bootstrap_counts_are_multinomial_resamples():
    counts = bootstrap_counts(7, 2000, np.random.default_rng(0))
    assert counts.shape == (2000, 7) and counts.dtype.kind == "i"
    assert (counts.sum(axis=1) == 7).all() and (counts >= 0).all()
    assert abs(counts.mean() - 1) < 0.02  # E[count] = 1, Var = 6/7
    assert abs(counts.var() - 6 / 7) < 0.05


def test_point_estimate_is_the_score_ratio_and_result_is_json():
    method, dense = random_runs()
    result = paired_bootstrap_score_ratio(method, dense)
    headlines = {task: u.headline() for task, u in method.items()}
    dense_headlines = {task: u.headline() for task, u in dense.items()}
    assert result.value == score_ratio(headlines, dense_headlines)
    assert list(result.per_task) == list_tasks()
    for task, item in result.per_task.items():
        assert item.value == pytest.approx(headlines[task] / dense_headlines[task] * 100, rel=1e-15)
        assert item.method_value == headlines[task] and item.dense_value == dense_headlines[task]
        assert item.ci[0] < item.value < item.ci[1]
        assert item.n_units == 450 and item.n_undefined == 0 and item.undefined is None
    assert result.ci[0] < result.value < result.ci[1]
    data = json.loads(json.dumps(result.to_dict()))
    assert data["value"] == result.value and data["ci95"] == list(result.ci)
    assert data["n_resamples"] == 1000 and data["seed"] == 0 and data["confidence"] == 0.95
    assert data["method"] == BOOTSTRAP_METHOD == "paired bootstrap over samples (percentile)"
    assert data["n_undefined"] == 0 and data["undefined"] is None
    assert set(data["per_task"]["scanqa"]) == {
        "value", "ci95", "method_value", "dense_value", "n_units", "n_undefined", "undefined"
    }  # fmt: skip
    assert paired_bootstrap_score_ratio(method, dense, confidence=0.9).to_dict()["ci90"] is not None


def test_identical_runs_give_exactly_100():
    method, _ = random_runs()
    twin = {task: units(task, u.values[::-1], u.keys[::-1]) for task, u in method.items()}  # other order
    result = paired_bootstrap_score_ratio(method, twin)
    assert result.value == 100.0 and result.ci == (100.0, 100.0)
    assert all(item.value == 100.0 and item.ci == (100.0, 100.0) for item in result.per_task.values())


def test_worse_on_every_unit_gives_an_interval_below_100():
    rng = np.random.default_rng(3)
    dense, method = {}, {}
    for task in list_tasks():
        if STATISTIC[task] == "mean":
            d = rng.uniform(0.3, 1.0, size=200)
            m = d - rng.uniform(0.01, 0.3, size=200)
        else:  # one correct unigram less on every item (and one less n-gram where there is one)
            d = random_bleu_stats(rng, 200, min_len=1)
            d[:, 6] = np.maximum(d[:, 6], 1)
            m = d.copy()
            m[:, 6:] = np.maximum(d[:, 6:] - 1, 0)
        dense[task], method[task] = units(task, d), units(task, m)
    result = paired_bootstrap_score_ratio(method, dense, n_resamples=500, seed=1)
    assert result.ci[1] < 100 and result.ci[0] < result.value < result.ci[1]
    for item in result.per_task.values():
        assert item.ci[1] < 100


def test_same_seed_same_result_and_seeds_differ():
    method, dense = random_runs()
    first = paired_bootstrap_score_ratio(method, dense, n_resamples=300, seed=7).to_dict()
    assert paired_bootstrap_score_ratio(method, dense, n_resamples=300, seed=7).to_dict() == first
    other = paired_bootstrap_score_ratio(method, dense, n_resamples=300, seed=8).to_dict()
    assert other["value"] == first["value"] and other["ci95"] != first["ci95"]


def test_a_task_resamples_independently_of_the_other_tasks():
    method, dense = random_runs()
    alone = paired_bootstrap_score_ratio({"scanqa": method["scanqa"]}, dense, n_resamples=200)
    together = paired_bootstrap_score_ratio(method, dense, n_resamples=200)
    assert alone.per_task["scanqa"] == together.per_task["scanqa"]
    assert alone.value == alone.per_task["scanqa"].value and alone.ci == alone.per_task["scanqa"].ci


def test_fast_enough_for_five_tasks_of_450_units():
    method, dense = random_runs()
    start = time.perf_counter()
    paired_bootstrap_score_ratio(method, dense, n_resamples=1000)
    assert time.perf_counter() - start < 2.0  # ~0.1 s unloaded; generous for a busy 2-core machine


# ------------------------------------------------------------------------------------------ analytic


def test_a_proportion_matches_the_normal_approximation():
    """Dense = 1 on every unit, method = 160 hits of 400: the ratio is 100 p, with the binomial CI."""
    hits = np.zeros(400)
    hits[:160] = 1
    result = paired_bootstrap_score_ratio(
        {"scanrefer": units("scanrefer", hits)},
        {"scanrefer": units("scanrefer", np.ones(400))},
        n_resamples=4000,
    )
    half_width = 1.959964 * np.sqrt(0.4 * 0.6 / 400) * 100  # 4.80 points
    assert result.value == pytest.approx(40.0)
    assert result.ci[0] == pytest.approx(40 - half_width, abs=0.6)
    assert result.ci[1] == pytest.approx(40 + half_width, abs=0.6)


def test_pairing_cancels_the_shared_sample_noise():
    """Method = dense but for 4 of 400 units: the paired interval is narrow, though each run alone
    varies by about +-10 % of its value across resamples (an unpaired ratio interval: ~28 points)."""
    rng = np.random.default_rng(5)
    dense_hits = (rng.random(400) < 0.5).astype(float)
    method_hits = dense_hits.copy()
    method_hits[np.flatnonzero(dense_hits)[:4]] = 0
    result = paired_bootstrap_score_ratio(
        {"sqa3d": units("sqa3d", method_hits)}, {"sqa3d": units("sqa3d", dense_hits)}, n_resamples=2000
    )
    p = dense_hits.mean()
    # delta method on the paired ratio: var(m/d) ~ var(m - r d) / (n d^2) with r = m/d
    r = method_hits.mean() / p
    se = np.std(method_hits - r * dense_hits) / np.sqrt(400) / p * 100
    assert result.ci[1] - result.ci[0] == pytest.approx(2 * 1.959964 * se, rel=0.25)
    assert result.ci[1] - result.ci[0] < 5
    assert result.ci[1] <= 100


# -------------------------------------------------------------------------------------- dense zeros


def test_a_dense_headline_of_zero_is_reported_as_undefined():
    method, dense = random_runs(n=50)
    dense["multi3dref"] = units("multi3dref", np.zeros(50))
    result = paired_bootstrap_score_ratio(method, dense, n_resamples=100)
    assert result.value is None and result.ci is None
    assert result.undefined == "score_ratio: baseline is 0 for multi3dref; leave out these tasks"
    with pytest.raises(MetricsError, match=result.undefined):
        score_ratio({t: u.headline() for t, u in method.items()}, {t: u.headline() for t, u in dense.items()})
    item = result.per_task["multi3dref"]
    assert item.value is None and item.ci is None and item.n_undefined == 100
    assert item.undefined == "score_ratio: baseline is 0 for multi3dref; leave out these tasks"
    assert result.n_undefined == 100
    assert result.per_task["scanrefer"].ci is not None  # the other tasks keep their intervals
    data = result.to_dict()
    assert data["value"] is None and data["ci95"] is None and data["per_task"]["multi3dref"]["ci95"] is None


def test_replicates_with_a_dense_zero_are_counted_not_hidden():
    """One dense hit in 5 units: (4/5)^5 = 33 % of resamples miss it and have no ratio."""
    method = {"scanrefer": units("scanrefer", [1, 0, 1, 0, 0])}
    dense = {"scanrefer": units("scanrefer", [1, 0, 0, 0, 0])}
    result = paired_bootstrap_score_ratio(method, dense, n_resamples=2000)
    item = result.per_task["scanrefer"]
    assert item.value == 200.0
    assert item.n_undefined == result.n_undefined
    assert 0.29 * 2000 < item.n_undefined < 0.37 * 2000
    assert item.ci is not None and 100 <= item.ci[0] <= item.ci[1]
    assert result.to_dict()["n_undefined"] == item.n_undefined


def test_a_negligible_dense_bleu_counts_as_undefined_not_as_a_huge_ratio():
    """Only one dense item has a matching 4-gram, so resamples without it have a corpus BLEU-4 of about 1e-4
    (pycocoevalcap's smoothing), not 0. Their ratio is undefined; the interval stays finite."""

    def item(length, correct4):  # testlen, reflen, guesses (1..4-grams), correct (1..4-grams)
        guess = [max(length - n, 0) for n in range(4)]
        correct = [min(g, c) for g, c in zip(guess, [length, length, length, correct4], strict=True)]
        return [length, length, *guess, *correct]

    dense = [item(5, 0)] * 7 + [item(5, 2)]
    method = [item(5, 0)] * 5 + [item(5, 2)] * 3
    result = paired_bootstrap_score_ratio(
        {"scanqa": units("scanqa", method)}, {"scanqa": units("scanqa", dense)}, n_resamples=2000
    )
    item_ci = result.per_task["scanqa"]
    assert 0.25 * 2000 < item_ci.n_undefined < 0.45 * 2000  # (7/8)^8 = 34 % of resamples miss it
    assert item_ci.ci is not None and item_ci.ci[1] < 1e4 and result.ci[1] < 1e4


# ------------------------------------------------------------------------------------------- refusals


def test_mismatched_units_are_refused():
    method, dense = random_runs(n=20)
    dense["scanqa"] = units("scanqa", dense["scanqa"].values[:18], dense["scanqa"].keys[:18])
    with pytest.raises(
        MetricsError, match="the scanqa units differ: 2 of the method's 20 are not in the dense"
    ):
        paired_bootstrap_score_ratio(method, dense)
    renamed = ("x", *dense["sqa3d"].keys[1:])
    dense = random_runs(n=20)[1] | {"sqa3d": units("sqa3d", dense["sqa3d"].values, renamed)}
    with pytest.raises(
        MetricsError, match=r"sqa3d units differ: 1 of the method's 20 .* 1 of the dense run's 20"
    ):
        paired_bootstrap_score_ratio(method, dense)


def test_duplicate_keys_and_wrong_units_are_refused():
    method, dense = random_runs(n=10)
    with pytest.raises(MetricsError, match="scanrefer: 1 duplicate unit keys in the method"):
        paired_bootstrap_score_ratio({"scanrefer": units("scanrefer", np.ones(3), ["0", "0", "1"])}, dense)
    with pytest.raises(MetricsError, match="the dense run's 'scanqa' entry is not the units of scanqa"):
        paired_bootstrap_score_ratio(method, {**dense, "scanqa": dense["sqa3d"]})
    with pytest.raises(MetricsError, match="no task in common"):
        paired_bootstrap_score_ratio({"scanrefer": method["scanrefer"]}, {"sqa3d": dense["sqa3d"]})


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"n_resamples": 0}, "n_resamples must be a positive integer"),
        ({"n_resamples": 10.0}, "n_resamples must be a positive integer"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"confidence": 1.0}, r"confidence must be in \(0, 1\)"),
        ({"confidence": "0.95"}, r"confidence must be in \(0, 1\)"),
    ],
)
def test_bad_settings_are_refused(settings, message):
    method, dense = random_runs(n=10)
    with pytest.raises(MetricsError, match=message):
        paired_bootstrap_score_ratio(method, dense, **settings)


# ---------------------------------------------------------------------------------- from predictions


def test_end_to_end_from_prediction_records(data_config):
    """evaluate_task units of a weaker method and of the dense run on the sample world."""
    with CaptionScorer(use_java=False) as scorer:
        world_context = build_world_context(data_config, scorer)
        method, dense, method_metrics, dense_metrics = {}, {}, {}, {}
        for task in list_tasks():
            for runs, metrics, seed, skill in (
                (method, method_metrics, 1, 0.5),
                (dense, dense_metrics, 0, 0.9),
            ):
                evaluation = evaluate_task(
                    task, world_records(data_config, task, world_context, seed, skill), world_context
                )
                runs[task] = evaluation.units
                metrics.update(evaluation.metrics)
    result = paired_bootstrap_score_ratio(method, dense, n_resamples=500)
    expected = score_ratio(headline_scores(method_metrics), headline_scores(dense_metrics))
    assert result.value == pytest.approx(expected, abs=1e-9)
    assert result.ci[0] < result.value < result.ci[1] and result.ci[0] < 100
    for task, key in HEADLINE_METRICS.items():
        assert result.per_task[task].method_value == pytest.approx(method_metrics[key], abs=1e-12)
        assert result.per_task[task].dense_value == pytest.approx(dense_metrics[key], abs=1e-12)
    same = paired_bootstrap_score_ratio(
        dense, {t: TaskUnits.from_dict(u.to_dict()) for t, u in dense.items()}
    )
    assert same.ci == (100.0, 100.0)
