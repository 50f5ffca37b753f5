"""``fast3d search-alpha``: SAP keep counts as the official code, the alpha search, store record, CLI."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fast3d_cli.errors import UserError
from fast3d_cli.pruning.alpha_search import search_alpha
from fast3d_cli.pruning.budgets import sap_keep_counts
from fast3d_cli.stores import create_store, open_store
from tests.conftest import fast3d


def official_keep_count(a_map: torch.Tensor, alpha: float) -> int:
    """Literal per-sample ``find_min_rank_sum_larger_than_alpha`` (spec §5.5)."""
    probs = torch.softmax(a_map, dim=-1)
    sorted_probs, _ = torch.sort(probs, descending=True)
    cumsum = torch.cumsum(sorted_probs, dim=-1)
    hits = (cumsum >= alpha).nonzero()
    if len(hits) == 0:
        return len(a_map)
    return int(hits[0].item()) + 1


def random_maps(rng: np.random.Generator, n: int, m: int, sharp: tuple[float, float] = (0.3, 6.0)):
    """Logits whose sharpness varies per sample (flat maps keep many objects, sharp ones few)."""
    scale = rng.uniform(*sharp, size=(n, 1))
    return (rng.normal(size=(n, m)) * scale).astype(np.float32)


ALPHAS = (1e-9, 1e-3, 0.05, 0.21, 0.5, 0.9, 0.999, 0.9999999, 1.0)


@pytest.mark.parametrize("m", [1, 7, 100])
def test_sap_keep_counts_equals_the_official_per_row_rule(m: int) -> None:
    rng = np.random.default_rng(m)
    maps = random_maps(rng, 64, m)
    maps[:4] = np.round(maps[:4])  # ties
    for alpha in (*ALPHAS, *rng.uniform(0, 1, size=8).tolist()):
        expected = [official_keep_count(torch.from_numpy(row), alpha) for row in maps]
        assert sap_keep_counts(maps, alpha).tolist() == expected, alpha


@settings(max_examples=40, deadline=None)
@given(
    arrays(
        np.float32, st.tuples(st.integers(1, 6), st.integers(1, 30)), elements=st.floats(-30, 30, width=32)
    ),
    st.floats(1e-6, 1.0),
)
def test_sap_keep_counts_property(maps: np.ndarray, alpha: float) -> None:
    expected = [official_keep_count(torch.from_numpy(row.copy()), alpha) for row in maps]
    assert sap_keep_counts(maps, alpha).tolist() == expected


STORE_ATTRS = {
    "model": "m1",
    "data": "d1",
    "aggregation": {"gap": "g1"},
    "n_objects": 100,
    "n_visual": 300,
    "n_layers": 2,
    "chunk_size": 16,
}


def make_store(
    path: Path,
    sizes: dict[str, int],
    kind: str = "prediction",
    sharp: dict[str, tuple[float, float]] | None = None,
    write_chunks: int | None = None,
    seed: int = 0,
) -> Path:
    rng = np.random.default_rng(seed)
    store = create_store(path, {"kind": kind, **STORE_ATTRS})
    for task, n in sizes.items():
        group = store.create_group(task, "val", n, {"annotation": f"a-{task}"}, optional=False)
        maps = random_maps(rng, n, STORE_ATTRS["n_objects"], (sharp or {}).get(task, (0.3, 6.0)))
        for chunk in range(group.n_chunks if write_chunks is None else write_chunks):
            start, stop = group.chunk_bounds(chunk)
            rows = {"object_scores": maps[start:stop], "prompt_scores": maps[start:stop]}
            group.write_chunk(chunk, np.arange(start, stop), rows)
    return path


def recomputed(path: Path | list[np.ndarray], alpha: float, weighting: str = "task") -> float:
    """The combined ratio at ``alpha``, from the store (or its score arrays, for speed)."""
    maps = [g.read("object_scores") for g in open_store(path).groups()] if isinstance(path, Path) else path
    ratios = [100.0 - 100.0 * sap_keep_counts(m, alpha).mean() / m.shape[1] for m in maps]
    sizes = [len(m) for m in maps]
    return float(np.mean(ratios) if weighting == "task" else np.average(ratios, weights=sizes))


SIZES = {"scanqa": 150, "scanrefer": 40}
SHARP = {"scanqa": (0.3, 3.0), "scanrefer": (2.0, 8.0)}
# task-weighted ratios of these sizes are 100 - K / 1200 for an integer K: this target lies between two steps
BETWEEN = 90.0004


@pytest.fixture(scope="module")
def pred_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_store(tmp_path_factory.mktemp("sap") / "pred.zarr", SIZES, sharp=SHARP)


def test_search_reaches_the_target_with_the_closest_reproducible_alpha(pred_store: Path) -> None:
    result = search_alpha(pred_store, 90, record=False)
    assert result.within_tolerance and result.reason is None
    assert 88.2 <= result.ratio <= 91.8 and result.tasks == ["scanqa", "scanrefer"]
    assert result.ratio == pytest.approx(recomputed(pred_store, result.alpha), abs=1e-12)
    assert float(f"{result.alpha:.6g}") == result.alpha  # a short, reproducible decimal
    for task, row in result.per_task.items():
        kept = sap_keep_counts(open_store(pred_store).group(task, "val").read("object_scores"), result.alpha)
        assert row.n_samples == SIZES[task] and row.mean_kept == pytest.approx(kept.mean())
        assert 0 < result.reference_alpha[task] <= 1
    # no alpha on a fine grid is strictly closer to the target
    grid = np.concatenate([np.linspace(1e-4, 1, 400), result.alpha * np.linspace(0.99, 1.01, 41)])
    maps = [torch.from_numpy(g.read("object_scores")) for g in open_store(pred_store).groups()]
    best = min(abs(recomputed(maps, float(a)) - 90) for a in grid)
    assert abs(result.ratio - 90) <= best + 1e-12
    payload = result.to_dict()
    assert json.loads(json.dumps(payload))["per_task"]["scanqa"]["n_samples"] == 150


def test_task_and_sample_weighting_differ(pred_store: Path) -> None:
    by_task = search_alpha(pred_store, 80, weighting="task", record=False)
    by_sample = search_alpha(pred_store, 80, weighting="sample", record=False)
    assert by_task.alpha != by_sample.alpha
    assert by_sample.ratio == pytest.approx(recomputed(pred_store, by_sample.alpha, "sample"), abs=1e-12)
    assert by_task.ratio == pytest.approx(recomputed(pred_store, by_task.alpha, "task"), abs=1e-12)
    # at the same alpha the two weightings give different ratios (task sizes and sharpness differ)
    assert recomputed(pred_store, by_task.alpha, "sample") != pytest.approx(by_task.ratio, abs=1e-6)


def test_unreachable_targets_are_reported(pred_store: Path) -> None:
    above = search_alpha(pred_store, 99.5, tolerance=0.1, record=False)
    assert not above.within_tolerance and above.ratio == pytest.approx(99.0)
    assert "above the highest reachable ratio 99.0000%" in above.reason
    kept = sap_keep_counts(open_store(pred_store).group("scanqa", "val").read("object_scores"), above.alpha)
    assert set(kept.tolist()) == {1}
    assert search_alpha(pred_store, 99.5, tolerance=1, record=False).within_tolerance

    between = search_alpha(pred_store, BETWEEN, tolerance=0, record=False)
    assert not between.within_tolerance and "jumps" in between.reason
    high, low = between.neighbours["above"], between.neighbours["below"]
    assert high.ratio > BETWEEN > low.ratio and high.alpha < low.alpha
    assert between.ratio in (high.ratio, low.ratio)
    assert high.ratio == pytest.approx(recomputed(pred_store, high.alpha), abs=1e-12)
    assert low.ratio == pytest.approx(recomputed(pred_store, low.alpha), abs=1e-12)

    below = search_alpha(pred_store, 0.01, tolerance=2, record=False)
    assert below.min_ratio > 0.0102 and below.alpha == 1.0
    assert not below.within_tolerance and "below the ratio at alpha = 1" in below.reason


def test_alpha_is_recorded_and_other_attributes_kept(tmp_path: Path) -> None:
    path = make_store(tmp_path / "maps.zarr", {"scanqa": 20, "sqa3d": 30}, kind="attention")
    before = open_store(path)
    attrs, group_attrs = before.attrs, before.group("sqa3d", "val").attrs
    scores = before.group("sqa3d", "val").read("object_scores")
    result = search_alpha(path, 70, tasks=["sqa3d"])
    assert result.recorded and result.kind == "attention" and result.tasks == ["sqa3d"]
    after = open_store(path)
    sap = after.attrs["sap"]
    assert sap["alpha"] == result.alpha and sap["target"] == 70 and sap["tasks"] == ["sqa3d"]
    assert {k: v for k, v in after.attrs.items() if k != "sap"} == attrs
    assert after.group("sqa3d", "val").attrs == group_attrs
    assert np.array_equal(after.group("sqa3d", "val").read("object_scores"), scores)
    again = search_alpha(path, 50)
    assert open_store(path).attrs["sap"]["target"] == 50 and again.tasks == ["scanqa", "sqa3d"]


def test_library_errors(tmp_path: Path, pred_store: Path) -> None:
    partial = make_store(tmp_path / "partial.zarr", {"scanqa": 40}, write_chunks=1)
    cases = [
        ((tmp_path / "nope.zarr", 90), {}, "store not found"),
        ((pred_store, 0), {}, "--target"),
        ((pred_store, 100), {}, "--target"),
        ((pred_store, 90), {"tolerance": -1}, "--tolerance"),
        ((pred_store, 90), {"weighting": "mean"}, "--weighting"),
        ((pred_store, 90), {"tasks": ["sqa3d"]}, "it has: scanqa/val, scanrefer/val"),
        ((pred_store, 90), {"split": "train"}, "no task maps for split 'train'"),
        ((partial, 90), {}, "scanqa/val: 24 of 40 samples missing"),
    ]
    for args, kwargs, message in cases:
        with pytest.raises(UserError, match=re.escape(message)):
            search_alpha(*args, record=False, **kwargs)
    nan = make_store(tmp_path / "nan.zarr", {"scanqa": 16})
    group = open_store(nan, read_only=False).group("scanqa", "val")
    rows = group.read("object_scores")
    rows[3, 7] = np.nan
    group.write_chunk(0, np.arange(16), {"object_scores": rows})
    with pytest.raises(UserError, match="1 samples have NaN scores"):
        search_alpha(nan, 90)


def test_cli_prints_the_path_json_and_reads_stdin(capsys, monkeypatch, tmp_path: Path) -> None:
    path = make_store(tmp_path / "pred.zarr", SIZES, sharp=SHARP)
    code, out, err = fast3d(capsys, "search-alpha", str(path), "--target", "90")
    assert code == 0, err
    assert out == f"{path}\n"
    assert "scanrefer" in err and "within tolerance: yes" in err and "reference alpha" in err
    assert open_store(path).attrs["sap"]["alpha"] == search_alpha(path, 90, record=False).alpha

    code, out, err = fast3d(
        capsys,
        "search-alpha",
        str(path),
        "--target",
        "90",
        "--tasks",
        "scanqa",
        "--weighting",
        "sample",
        "--json",
    )
    payload = json.loads(out)
    assert code == 0 and payload["tasks"] == ["scanqa"] and payload["weighting"] == "sample"
    assert payload["ratio"] == pytest.approx(search_alpha(path, 90, tasks=["scanqa"], record=False).ratio)

    monkeypatch.setattr("sys.stdin", io.StringIO(f"{path}\n"))
    code, out, err = fast3d(capsys, "search-alpha", "-", "--target", str(BETWEEN), "--tolerance", "0")
    assert code == 0 and out == f"{path}\n"
    assert "within tolerance: no" in err and "jumps" in err
    sap = open_store(path).attrs["sap"]
    assert sap["target"] == BETWEEN and sap["within_tolerance"] is False and "jumps" in sap["reason"]
    assert sap["alpha"] in (sap["neighbours"]["above"]["alpha"], sap["neighbours"]["below"]["alpha"])


def test_cli_user_errors_are_one_line_and_exit_2(
    capsys, monkeypatch, tmp_path: Path, pred_store: Path
) -> None:
    partial = make_store(tmp_path / "partial.zarr", {"scanqa": 40}, write_chunks=2)
    other = make_store(tmp_path / "other.zarr", {"scanqa": 16})
    open_store(other, read_only=False).update_attrs(kind="gap")
    (tmp_path / "plain").mkdir()
    cases = [
        ([str(tmp_path / "missing.zarr")], "store not found"),
        ([str(tmp_path / "plain")], "is not a fast3d store"),
        ([str(other)], "is a 'gap' store"),
        ([str(pred_store), "--target", "0"], "--target"),
        ([str(pred_store), "--target", "100"], "--target"),
        ([str(pred_store), "--weighting", "median"], "--weighting"),
        ([str(pred_store), "--tasks", "sqa3d"], "has no sqa3d/val maps"),
        ([str(pred_store), "--tasks", "nonsense"], "unknown task"),
        ([str(partial)], "scanqa/val: 8 of 40 samples missing"),
    ]
    for args, message in cases:
        code, out, err = fast3d(capsys, "search-alpha", *args)
        assert code == 2 and out == "", (args, err)
        assert err.count("\n") == 1 and err.startswith("fast3d: error:") and message in err, err
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    code, out, err = fast3d(capsys, "search-alpha", "-")
    assert code == 2 and out == ""
    assert err == "fast3d: error: STORE -: no path on stdin (pipe the previous stage's output)\n"


def test_limit_searches_only_the_first_samples(tmp_path: Path) -> None:
    """``limit`` (what ``fast3d compare --limit`` matches on): the alpha found on the first N rows of each
    task equals the alpha found on a store holding only them."""
    full = make_store(tmp_path / "full.zarr", {"scanqa": 60}, sharp={"scanqa": (0.3, 8.0)})
    rows = open_store(full).group("scanqa", "val").read("object_scores")[:20]
    first = create_store(tmp_path / "first.zarr", {"kind": "prediction", **STORE_ATTRS})
    group = first.create_group("scanqa", "val", 20, {"annotation": "a-scanqa"}, optional=False)
    for chunk in range(group.n_chunks):
        start, stop = group.chunk_bounds(chunk)
        group.write_chunk(
            chunk,
            np.arange(start, stop),
            {"object_scores": rows[start:stop], "prompt_scores": rows[start:stop]},
        )
    limited = search_alpha(full, 80.0, record=False, limit=20)
    alone = search_alpha(tmp_path / "first.zarr", 80.0, record=False)
    assert (limited.alpha, limited.ratio, limited.per_task["scanqa"].n_samples) == (
        alone.alpha,
        alone.ratio,
        20,
    )
    assert limited.alpha != search_alpha(full, 80.0, record=False).alpha  # the other 40 rows move it
