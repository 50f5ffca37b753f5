"""The Pareto pictures of a ``fast3d compare`` leaderboard: score ratio against cost (the prefill FLOPs ratio,
and the measured prefill time plus the method's token selection), with the frontier of the rows no other row
beats on both axes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fast3d_cli.report.plots import MARKERS, _figure, _save, method_colors, wrap_to_width

FILES = {"flops_ratio": "pareto_score_vs_flops.png", "prefill_ms_per_sample": "pareto_score_vs_prefill.png"}
AXES = {
    "flops_ratio": "prefill FLOPs, ratio to dense",
    "prefill_ms_per_sample": "measured prefill + token selection, ms per sample",
}


@dataclass(frozen=True)
class ParetoPoint:
    """One finished row: its cost (x, lower is better), score ratio (y, higher is better) and interval."""

    label: str
    method: str
    cost: float
    score_ratio: float
    ci: tuple[float, float] | None


def pareto_front(points: Sequence[ParetoPoint]) -> list[ParetoPoint]:
    """The points no other point dominates (costs no more and scores at least as much, one strictly), by
    increasing cost."""
    ordered = sorted(points, key=lambda p: (p.cost, -p.score_ratio))
    front: list[ParetoPoint] = []
    for point in ordered:
        if not front or point.score_ratio > front[-1].score_ratio:
            front.append(point)
    return front


def leaderboard_points(rows: Sequence[dict[str, Any]], cost_key: str) -> tuple[list[ParetoPoint], list[str]]:
    """The drawable rows (finished, with a score ratio and a cost) and a note per row left out."""
    points, left_out = [], []
    for row in rows:
        cost, ratio = row.get(cost_key), row.get("score_ratio")
        if cost_key == "prefill_ms_per_sample" and cost is not None:  # the time before the first token
            cost += row.get("selection_ms_per_sample") or 0.0
        if row.get("status") != "done" or cost is None or ratio is None:
            why = row.get("error") if row.get("status") != "done" else row.get("score_ratio_reason")
            what = (
                "failed"
                if row.get("status") != "done"
                else ("no score ratio" if ratio is None else "no cost")
            )
            left_out.append(f"{row.get('label')}: {what}" + (f" ({why})" if why else ""))
            continue
        ci = row.get("score_ratio_ci95")
        points.append(
            ParetoPoint(row["label"], row["method"], float(cost), float(ratio), tuple(ci) if ci else None)
        )
    return points, left_out


def pareto_figure(points: Sequence[ParetoPoint], cost_key: str, device: str | None):
    """Score ratio (y) against the cost ``cost_key`` (x), one colour and marker per method, interval bars,
    the frontier as a dashed line through its points (ringed)."""
    from matplotlib.lines import Line2D

    methods = list(dict.fromkeys(p.method for p in points))
    colors = method_colors(methods)
    fig = _figure(figsize=(9.5, 5.6))
    ax = fig.add_subplot()
    ax.axhline(100, color="0.35", linestyle=":", linewidth=1, zorder=1)
    for point in points:
        color, marker = (
            colors[point.method],
            "*" if point.method == "none" else MARKERS.get(point.method, "o"),
        )
        ax.plot(
            [point.cost],
            [point.score_ratio],
            marker=marker,
            color=color,
            markersize=8,
            linestyle="none",
            zorder=3,
        )
        if point.ci is not None:
            below, above = (
                max(point.score_ratio - point.ci[0], 0.0),
                max(point.ci[1] - point.score_ratio, 0.0),
            )
            ax.errorbar([point.cost], [point.score_ratio], yerr=[[below], [above]], fmt="none", ecolor=color,
                        elinewidth=1.1, capsize=3, zorder=2)  # fmt: skip
        ax.annotate(point.label, (point.cost, point.score_ratio), textcoords="offset points", xytext=(5, 4),
                    fontsize=7, color="0.25")  # fmt: skip
    front = pareto_front(points)
    ax.plot([p.cost for p in front], [p.score_ratio for p in front], color="black", linestyle="--",
            linewidth=1.2, zorder=2, drawstyle="steps-post")  # fmt: skip
    ax.scatter([p.cost for p in front], [p.score_ratio for p in front], s=170, facecolors="none",
               edgecolors="black", linewidths=1.0, zorder=4)  # fmt: skip
    where = f" on {device}" if device and cost_key == "prefill_ms_per_sample" else ""
    ax.set_xlabel(f"{AXES[cost_key]}{where} (lower is cheaper)")
    ax.set_ylabel("score ratio vs dense (%)")
    ax.set_title(
        wrap_to_width(f"Quality against cost: score ratio vs {AXES[cost_key]}", 9.0, 12), fontsize=12
    )
    ax.grid(True, alpha=0.3)
    handles = [
        Line2D([], [], color=colors[m], marker="*" if m == "none" else MARKERS.get(m, "o"), linestyle="none",
               label="dense" if m == "none" else m)
        for m in methods
    ]  # fmt: skip
    handles.append(Line2D([], [], color="black", linestyle="--", marker="o", markerfacecolor="none",
                          label="Pareto frontier"))  # fmt: skip
    if any(p.ci is not None for p in points):
        handles.append(Line2D([], [], color="0.3", marker="|", markersize=12, linestyle="none",
                              label="bars: 95% CI (paired bootstrap)"))  # fmt: skip
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=9, frameon=False)
    return fig


def pareto_pictures(
    board: dict[str, Any], out_dir: Path, note: Callable[[str], None], prefix: str = ""
) -> list[Path]:
    """Draw both pictures of ``board`` (a leaderboard document) into ``out_dir``; a picture without two
    drawable rows is skipped with a note. Returns the files written."""
    written = []
    for cost_key, name in FILES.items():
        points, left_out = leaderboard_points(board["rows"], cost_key)
        for line in left_out:
            note(f"{name}: left out {line}")
        if len(points) < 2:
            note(f"skipped {prefix}{name}: fewer than two rows with a score ratio and a {AXES[cost_key]}")
            continue
        written.append(
            _save(pareto_figure(points, cost_key, board.get("device")), Path(out_dir) / f"{prefix}{name}")
        )
        note(f"wrote {written[-1]}")
    return written


def is_leaderboard(path: Path) -> bool:
    """Whether ``path`` is a compare folder or a leaderboard file (not an eval folder)."""
    from fast3d_cli.evaluation.leaderboard import LEADERBOARD_FILE

    path = Path(path)
    return (path / LEADERBOARD_FILE).is_file() if path.is_dir() else path.suffix == ".json"


def leaderboard_report(paths: Sequence[Path], out_dir: Path, note: Callable[[str], None]) -> list[Path]:
    """The Pareto pictures of each leaderboard (file names prefixed by the compare folder's name when there
    are several)."""
    from fast3d_cli.evaluation.leaderboard import load_leaderboard

    written = []
    for path in paths:
        board = load_leaderboard(path)
        folder = Path(path) if Path(path).is_dir() else Path(path).parent
        written += pareto_pictures(board, out_dir, note, f"{folder.name}-" if len(paths) > 1 else "")
    return written
