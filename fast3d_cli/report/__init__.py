"""``fast3d report``: PNG pictures of evaluation results (score ratio vs pruning, SAP, a scene top view)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from fast3d_cli.data import DataConfig
from fast3d_cli.errors import UserError
from fast3d_cli.report.results import EvalResult, TaskPoint, UnfinishedResult, load_result

__all__ = ["EvalResult", "TaskPoint", "load_results", "make_report"]

Note = Callable[[str], None]

FILES = {
    "ratio": "score_ratio_vs_pruning.png",
    "per_task": "score_ratio_per_task.png",
    "sap": "sap_kept_objects.png",
    "scene": "scene_topview.png",
}


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def load_results(paths: Sequence[Path], note: Note = _stderr) -> list[EvalResult]:
    """Load eval directories; unfinished ones are left out with a note. UserError when none is usable."""
    if not paths:
        raise UserError("no RESULT given: pass one or more fast3d eval output directories")
    results = []
    for path in paths:
        try:
            results.append(load_result(Path(path)))
        except UnfinishedResult as err:
            note(f"skipped {err}")
    if not results:
        raise UserError("none of the given RESULT directories holds a finished evaluation (metrics.json)")
    return results


def make_report(
    results: Sequence[EvalResult],
    out_dir: Path,
    *,
    true_maps: Path | None = None,
    pred_maps: Path | None = None,
    sample: str | None = None,
    split: str = "val",
    data: DataConfig | None = None,
    note: Note = _stderr,
) -> list[Path]:
    """Draw every picture the inputs allow into ``out_dir``; returns the files written. Pictures that cannot
    be drawn are skipped with a note; bad --sample or missing stores raise UserError before any drawing."""
    from fast3d_cli.report import plots
    from fast3d_cli.report.scene import choose_sample, find_sample, parse_sample_ref, scene_view
    from fast3d_cli.stores import open_store

    data = data or DataConfig()
    out_dir = Path(out_dir)
    ref = parse_sample_ref(sample) if sample is not None else None
    for path, kind in ((true_maps, "attention"), (pred_maps, "prediction")):
        if path is not None:
            open_store(path, kind=kind)  # a missing or wrong store is a user error, before any drawing
    scene = None
    if true_maps is not None or pred_maps is not None:
        task, index, kept_result = choose_sample(results, ref, split)
        scene = find_sample(data, task, index, split)
        scene_kept = kept_result
    elif ref is not None:
        raise UserError("--sample picks the scene of the top view, which needs --true-maps or --pred-maps")

    written: list[Path] = []

    def wrote(path: Path) -> None:
        written.append(path)
        note(f"wrote {path}")

    for result in results:
        if not result.is_dense and result.score_ratio is None:
            note(f"{result.path}: score ratio n/a ({result.score_ratio_reason}); left out of the ratio plots")
    scored = [r for r in results if not r.is_dense and r.score_ratio is not None]
    if scored:
        wrote(plots.score_ratio_vs_pruning(results, out_dir / FILES["ratio"]))
        if any(p.score_ratio is not None for r in scored for p in r.per_task.values()):
            wrote(plots.score_ratio_per_task(results, out_dir / FILES["per_task"]))
        else:
            note(f"skipped {FILES['per_task']}: no per-task score ratios in the results")
    else:
        note(f"skipped {FILES['ratio']} and {FILES['per_task']}: no pruned result with a score ratio")
    if any(r.is_sap and any(r.kept_objects(t) for t in r.tasks) for r in results):
        wrote(plots.sap_kept_objects(results, out_dir / FILES["sap"]))
    else:
        note(f"skipped {FILES['sap']}: no SAP result (method ending in +sap) with predictions")
    if scene is None:
        note(f"skipped {FILES['scene']}: needs --true-maps and/or --pred-maps")
    else:
        view = scene_view(data, scene, scene_kept, true_maps, pred_maps, note)
        if view is None:
            note(f"skipped {FILES['scene']}: no attention for {scene.task}:{scene.index} in the given stores")
        else:
            wrote(plots.scene_topview(view, out_dir / FILES["scene"]))
    return written
