"""``fast3d report``: result loading, the four pictures, skipping rules and user errors (no model is run)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fast3d_cli.data import DataConfig, SceneBank, load_samples
from fast3d_cli.pruning.budgets import input_level_ratio, layer_averaged_ratio
from fast3d_cli.stores import create_store
from tests.conftest import fast3d

TASKS = ("scanrefer", "scanqa")
N_VISUAL, N_LAYERS, N_OBJECTS = 300, 4, 100
PICTURES = {
    "score_ratio_vs_pruning.png",
    "score_ratio_per_task.png",
    "sap_kept_objects.png",
    "scene_topview.png",
}


def _record(sample, kept_tokens: int, kept_objects: list[int] | None) -> dict:
    """A prediction line as fast3d eval writes it (evaluation.runner.prediction_record)."""
    record = {
        "index": sample.index,
        "scene_id": sample.scene_id,
        "gt_id": sample.obj_id,
        "pred_id": sample.pred_id,
        "qid": 0,
        "prompt": sample.prompt,
        "pred": "a chair.",
        "ref_captions": list(sample.ref_captions),
        "type_info": sample.type_info,
        "kept_visual_tokens": kept_tokens,
        "prompt_tokens": 370,
    }
    if kept_objects is not None:
        record["kept_objects"] = kept_objects
    return record


def write_result(
    path: Path,
    data: DataConfig,
    method: str,
    *,
    layer: int = 0,
    keep: int | None = None,
    alpha: float | None = None,
    quality: float = 1.0,
    kept_objects: bool = True,
    score_ratio: bool = True,
    seed: int = 0,
) -> Path:
    """An evaluation directory shaped like fast3d eval's (run.json, metrics.json, predictions/)."""
    rng = np.random.default_rng(seed)
    dense = method == "none"
    headline, per_task, samples = {}, {}, {}
    (path / "predictions").mkdir(parents=True)
    for t, task in enumerate(TASKS):
        rows = load_samples(data, task, "val")
        samples[task] = len(rows)
        records = []
        for sample in rows:
            if dense:
                n = N_OBJECTS
            elif alpha is not None:
                n = int(rng.integers(4, 16))
            else:
                n = keep or 10
            slots = sorted(rng.choice(40, size=min(n, 40), replace=False).tolist())
            records.append(_record(sample, 3 * n, slots if kept_objects and not dense else None))
        kept = [r["kept_visual_tokens"] for r in records]
        (path / "predictions" / f"{task}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        per_task[task] = {
            "input_ratio": 0.0 if dense else round(input_level_ratio(kept, N_VISUAL), 4),
            "layer_averaged_ratio": 0.0
            if dense
            else round(layer_averaged_ratio(kept, N_VISUAL, layer, N_LAYERS), 4),
            "mean_kept_tokens": float(np.mean(kept)),
        }
        headline[task] = 0.5 * quality * (1 - 0.1 * t)
    everything = [
        json.loads(line)["kept_visual_tokens"]
        for task in TASKS
        for line in (path / "predictions" / f"{task}.jsonl").read_text().splitlines()
    ]
    settings = {"split": "val", "limit": None, "pruning": {"method": method, "layer": layer, "keep": keep}}
    run = {"fast3d_version": "0.1.0", "model": "m", "data": "d", "settings": settings}
    metrics = {
        "metrics": {task: {f"[{task}] headline": v} for task, v in headline.items()},
        "headline": headline,
        "samples": samples,
        "pruning": {
            "method": method,
            "layer": layer,
            "granularity": "object",
            "keep": keep,
            "alpha": alpha,
            "n_layers": N_LAYERS,
            "n_visual": N_VISUAL,
            "input_ratio": 0.0 if dense else round(input_level_ratio(everything, N_VISUAL), 4),
            "layer_averaged_ratio": 0.0
            if dense
            else round(layer_averaged_ratio(everything, N_VISUAL, layer, N_LAYERS), 4),
            "mean_kept_tokens": float(np.mean(everything)),
            "per_task": per_task,
            "prefill_gflops_per_sample": 0.5,
            "dense_prefill_gflops_per_sample": 0.9,
            "flops_ratio": 0.55,
        },
        "speed": {"generated_samples": 24, "seconds": 1.0, "samples_per_s": 24.0},
        "run": run,
    }
    if not dense and score_ratio:
        metrics["score_ratio"] = {
            "baseline": "dense",
            "baseline_headline": {task: 0.5 * (1 - 0.1 * t) for t, task in enumerate(TASKS)},
            "value": round(100 * quality, 4),
            "per_task": {task: round(100 * quality * (1 + 0.05 * t), 4) for t, task in enumerate(TASKS)},
        }
    (path / "run.json").write_text(json.dumps(run, indent=2))
    (path / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return path


def write_store(path: Path, data: DataConfig, kind: str, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    attrs = {
        "kind": kind,
        "model": "m",
        "data": "d",
        "aggregation": {},
        "n_objects": N_OBJECTS,
        "n_visual": N_VISUAL,
        "n_layers": N_LAYERS,
        "chunk_size": 64,
    }
    store = create_store(path, attrs)
    for task in TASKS:
        n = len(load_samples(data, task, "val"))
        group = store.create_group(task, "val", n, {"annotation": "a"}, optional=False)
        scores = rng.normal(size=(n, N_OBJECTS)).astype(np.float32)
        if kind == "attention":
            scores = np.exp(scores) / 200
        group.write_chunk(0, np.arange(n), {"object_scores": scores, "prompt_scores": scores})
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, data_config: DataConfig) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("report")
    return {
        "dense": write_result(root / "dense", data_config, "none"),
        "fastv-35": write_result(
            root / "fastv-35", data_config, "fastv", layer=2, keep=30, quality=0.95, kept_objects=False
        ),
        "fastv-65": write_result(
            root / "fastv-65", data_config, "fastv", layer=1, keep=13, quality=0.8, kept_objects=False
        ),
        "gap-35": write_result(root / "gap-35", data_config, "gap", layer=2, keep=30, quality=1.0),
        "gap-90": write_result(root / "gap-90", data_config, "gap", layer=0, keep=10, quality=0.9),
        "gap+sap": write_result(root / "gap+sap", data_config, "gap+sap", alpha=0.2346, quality=0.93),
        "no-baseline": write_result(root / "no-baseline", data_config, "random", keep=10, score_ratio=False),
        "maps": write_store(root / "maps.zarr", data_config, "attention", 1),
        "pred": write_store(root / "pred.zarr", data_config, "prediction", 2),
    }


def _results(runs: dict[str, Path]) -> list[str]:
    return [str(runs[k]) for k in ("dense", "fastv-35", "fastv-65", "gap-35", "gap-90", "gap+sap")]


def _check_png(path: Path) -> None:
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = imread(path)
    height, width = image.shape[:2]
    assert 400 <= width <= 3000 and 300 <= height <= 2500, (path.name, image.shape)
    assert image.std() > 0.01  # not a blank canvas


def test_all_pictures(runs: dict[str, Path], world_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "report"
    code, stdout, stderr = fast3d(
        capsys,
        "report",
        *_results(runs),
        "--true-maps",
        str(runs["maps"]),
        "--pred-maps",
        str(runs["pred"]),
        "--data-root",
        str(world_dir / "annotations"),
        "-o",
        str(out),
        "--json",
    )
    assert code == 0, stderr
    files = [Path(f) for f in json.loads(stdout)["files"]]
    assert {f.name for f in files} == PICTURES and all(f.parent == out for f in files)
    assert sorted(line for line in stderr.splitlines() if line.startswith("wrote ")) == sorted(
        f"wrote {f}" for f in files
    )
    for path in files:
        _check_png(path)


def test_skips_what_the_inputs_cannot_draw(runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    unfinished = tmp_path / "running"
    (unfinished / "predictions").mkdir(parents=True)
    (unfinished / "run.json").write_text("{}")
    out = tmp_path / "report"
    code, stdout, stderr = fast3d(
        capsys,
        "report",
        str(runs["dense"]),
        str(runs["fastv-35"]),
        str(runs["no-baseline"]),
        str(unfinished),
        "-o",
        str(out),
    )
    assert code == 0, stderr
    assert stdout.strip() == str(out)
    assert sorted(p.name for p in out.iterdir()) == ["score_ratio_per_task.png", "score_ratio_vs_pruning.png"]
    assert "skipped sap_kept_objects.png" in stderr and "skipped scene_topview.png" in stderr
    assert "running: evaluation not finished" in stderr
    assert "no-baseline: score ratio n/a (run without a dense baseline)" in stderr

    # dense alone: nothing to compare, every picture is skipped
    code, stdout, stderr = fast3d(capsys, "report", str(runs["dense"]), "-o", str(tmp_path / "r2"), "--json")
    assert code == 0 and json.loads(stdout)["files"] == []
    assert "skipped score_ratio_vs_pruning.png" in stderr


def test_results_are_loaded_with_both_ratios(runs: dict[str, Path]) -> None:
    from fast3d_cli.report import load_results

    dense, fastv, _, gap, _, sap = load_results([Path(p) for p in _results(runs)])
    assert dense.is_dense and dense.score_ratio == 100.0 and dense.per_task["scanqa"].score_ratio == 100.0
    assert (fastv.method, fastv.layer, fastv.keep) == ("fastv", 2, 30)
    assert fastv.input_ratio == pytest.approx(70.0) and fastv.layer_averaged_ratio == pytest.approx(35.0)
    assert fastv.score_ratio == pytest.approx(95.0) and fastv.per_task["scanqa"].score_ratio == pytest.approx(
        99.75
    )
    assert not fastv.has_kept_objects and gap.has_kept_objects
    assert fastv.kept_objects("scanqa") == [30.0] * len(fastv.predictions("scanqa"))  # from the token counts
    assert sap.is_sap and sap.alpha == pytest.approx(0.2346)
    assert sap.kept_objects("scanqa") == [len(r["kept_objects"]) for r in sap.predictions("scanqa")]


def test_scene_view_leaves_out_padded_slots(runs: dict[str, Path], data_config: DataConfig) -> None:
    from fast3d_cli.report import load_results
    from fast3d_cli.report.scene import choose_sample, find_sample, scene_view

    results = load_results([Path(p) for p in _results(runs)])
    task, index, kept = choose_sample(results, None, "val")
    assert (task, index, kept.name) == ("scanrefer", 0, "gap-35")  # fastv records no kept objects
    sample = find_sample(data_config, task, index, "val")
    notes: list[str] = []
    view = scene_view(data_config, sample, kept, runs["maps"], runs["pred"], notes.append)
    n_real = len(SceneBank(data_config, "val").proposal_attributes[sample.scene_id]["locs"])
    assert (
        n_real < N_OBJECTS
        and len(view.boxes) == n_real
        and {b.slot for b in view.boxes} == set(range(n_real))
    )
    assert len(view.panels) == 2 and all(v.sum() == pytest.approx(1.0) for v in view.panels.values())
    assert view.kept == kept.record(task, index)["kept_objects"]
    assert view.referred_kind == "GT box" and len(view.referred) == 1 and not notes
    assert choose_sample(results, ("scanqa", 3), "val")[2].name == "gap-35"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "no RESULT given"),
        (["{tmp}"], "is not an evaluation directory"),
        (["{dense}", "--true-maps", "{tmp}/missing.zarr"], "store not found"),
        (["{dense}", "--true-maps", "{pred}"], "expected an 'attention' one"),
        (["{dense}", "--pred-maps", "{pred}", "--sample", "scanrefer"], "--sample must be TASK:INDEX"),
        (["{dense}", "--pred-maps", "{pred}", "--sample", "nosuch:1"], "unknown task"),
        (["{dense}", "--pred-maps", "{pred}", "--sample", "scanqa:999"], "has samples 0.."),
        (["{dense}", "--sample", "scanqa:1"], "needs --true-maps or --pred-maps"),
    ],
)
def test_user_errors_exit_2(
    runs: dict[str, Path], world_dir: Path, tmp_path: Path, capsys, args: list[str], message: str
) -> None:
    filled = [a.format(tmp=tmp_path, dense=runs["dense"], pred=runs["pred"]) for a in args]
    code, stdout, stderr = fast3d(
        capsys, "report", *filled, "--data-root", str(world_dir / "annotations"), "-o", str(tmp_path / "out")
    )
    assert code == 2 and stdout == ""
    assert len(stderr.strip().splitlines()) == 1 and message in stderr, stderr
    assert not (tmp_path / "out").exists()


def _one_task(path: Path, task: str = "scanqa") -> Path:
    """Trim a written result to one task (as `fast3d eval --tasks scanqa` writes it)."""
    metrics = json.loads((path / "metrics.json").read_text())
    for key in ("headline", "samples"):
        metrics[key] = {task: metrics[key][task]}
    metrics["pruning"]["per_task"] = {task: metrics["pruning"]["per_task"][task]}
    if "score_ratio" in metrics:
        metrics["score_ratio"]["per_task"] = {task: metrics["score_ratio"]["per_task"][task]}
    (path / "metrics.json").write_text(json.dumps(metrics))
    for log in (path / "predictions").glob("*.jsonl"):
        if log.stem != task:
            log.unlink()
    return path


def _clipped(fig) -> list[str]:
    """Texts (titles, legends) that reach outside the figure once drawn."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    width, height = fig.bbox.width, fig.bbox.height
    artists = [*fig.texts, *fig.legends]
    for ax in fig.axes:
        artists += [ax.title, *([ax.get_legend()] if ax.get_legend() else [])]
    found = []
    for artist in artists:
        if not artist.get_visible() or (hasattr(artist, "get_text") and not artist.get_text()):
            continue
        box = artist.get_window_extent(renderer)
        if box.x0 < -1 or box.y0 < -1 or box.x1 > width + 1 or box.y1 > height + 1:
            found.append(artist.get_text() if hasattr(artist, "get_text") else type(artist).__name__)
    return found


def test_one_task_pictures_fit_and_two_sap_runs_are_told_apart(
    data_config: DataConfig, tmp_path: Path
) -> None:
    from fast3d_cli.report import load_results, plots

    paths = [
        _one_task(write_result(tmp_path / "eval-none", data_config, "none")),
        _one_task(write_result(tmp_path / "eval-gap+sap", data_config, "gap+sap", alpha=0.2346, seed=1)),
        _one_task(write_result(tmp_path / "eval-gap+sap-skip", data_config, "gap+sap", alpha=0.2346, seed=2)),
    ]
    results = load_results(paths, note=lambda message: None)
    for build in (plots.score_ratio_vs_pruning_figure, plots.score_ratio_per_task_figure):
        assert _clipped(build(results)) == [], build.__name__
    for sap in (results, results[:2]):  # two SAP runs, and one
        fig = plots.sap_kept_objects_figure(sap)
        assert _clipped(fig) == []
    fig = plots.sap_kept_objects_figure(results)
    labels = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert any(label.startswith("eval-gap+sap:") for label in labels), labels
    assert any(label.startswith("eval-gap+sap-skip:") for label in labels), labels
