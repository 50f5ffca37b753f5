"""One function per report picture; each draws on a fresh matplotlib Figure (Agg canvas) and saves a PNG."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from fast3d_cli.errors import naming_os_errors
from fast3d_cli.report.results import EvalResult
from fast3d_cli.report.scene import SceneView

DPI = 130
METHOD_COLORS = {
    "none": "black",
    "random": "tab:gray",
    "fastv": "tab:orange",
    "divprune": "tab:purple",
    "oracle": "tab:green",
    "oracle+sap": "tab:olive",
    "gap": "tab:blue",
    "gap+sap": "tab:red",
}
EXTRA_COLORS = ("tab:brown", "tab:pink", "tab:cyan", "gold", "navy", "teal")
MARKERS = {"gap+sap": "D", "oracle+sap": "D", "fastv": "s", "random": "v", "divprune": "^", "oracle": "P"}
KEPT_COLOR = "red"
REFERRED_COLOR = "magenta"


def _figure(**kwargs: Any):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(layout="constrained", **kwargs)
    FigureCanvasAgg(fig)
    return fig


def wrap_to_width(text: str, width_in: float, fontsize: float) -> str:
    """``text`` wrapped into lines that fit ``width_in`` inches at ``fontsize`` points (so a title is never
    wider than its figure and clipped)."""
    per_char_in = 0.6 * fontsize / 72  # a generous average glyph width of DejaVu Sans
    chars = max(12, int(0.92 * width_in / per_char_in))
    return "\n".join(textwrap.fill(line, chars) for line in text.splitlines())


def _legend_columns(width_in: float, labels: Sequence[str], fontsize: float, most: int = 3) -> int:
    """How many legend columns of these labels fit in ``width_in`` inches."""
    longest = max((len(label) for label in labels), default=1)
    column_in = longest * 0.6 * fontsize / 72 + 0.9  # text plus the marker and the gap
    return max(1, min(most, len(labels), int(width_in // column_in)))


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with naming_os_errors(path):
        fig.savefig(path, dpi=DPI, facecolor="white")
    return path


def method_colors(methods: Sequence[str]) -> dict[str, str]:
    extra = iter(EXTRA_COLORS * (len(methods) // len(EXTRA_COLORS) + 1))
    return {m: METHOD_COLORS.get(m) or next(extra) for m in methods}


def task_order(results: Sequence[EvalResult]) -> list[str]:
    from fast3d_cli.data.tasks import TASKS

    seen = {t for r in results for t in r.tasks}
    return [t for t in TASKS if t in seen] + sorted(seen - set(TASKS))


def _grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


class RatioPoint(NamedTuple):
    """One run in a score-ratio plot: both pruning ratios, the score ratio and its interval (or None)."""

    layer_averaged: float
    input_level: float
    score_ratio: float
    ci: tuple[float, float] | None


def _ratio_axes(ax, points: dict[str, list[RatioPoint]], colors: dict[str, str], dense: bool):
    """Draw score ratio (y) against the layer-averaged ratio (filled) and the input-level ratio (hollow),
    with the score ratio's confidence interval as an error bar where the result has one."""
    ax.axhline(100, color="0.35", linestyle="--", linewidth=1, zorder=1)
    for method, rows in points.items():
        rows = sorted(rows, key=lambda point: point[:3])
        color, marker = colors[method], MARKERS.get(method, "o")
        xs, ins, ys = (np.array(v) for v in list(zip(*rows, strict=True))[:3])
        ax.plot(xs, ys, color=color, marker=marker, markersize=7, linewidth=1.8, zorder=3)
        _error_bars(ax, rows, color)
        moved = np.abs(ins - xs) > 1e-6
        if moved.any():
            ax.scatter(
                ins[moved],
                ys[moved],
                s=55,
                facecolors="none",
                edgecolors=color,
                marker=marker,
                linewidths=1.4,
                zorder=3,
            )
            for x, x_in, y in zip(xs[moved], ins[moved], ys[moved], strict=True):
                ax.plot([x, x_in], [y, y], color=color, linestyle=":", linewidth=1, zorder=2)
    if dense:
        ax.plot([0], [100], marker="*", color="black", markersize=13, linestyle="none", zorder=4)
    ax.set_xlim(-4, 104)
    low, high = ax.get_ylim()
    ax.set_ylim(min(low, 95), max(high, 105))
    ax.grid(True, alpha=0.3)


def _error_bars(ax, rows: Sequence[RatioPoint], color: str) -> None:
    """The intervals of ``rows`` that have one, as vertical bars at the layer-averaged ratio. A percentile
    interval need not contain its point estimate; the bar then starts at the point (matplotlib refuses
    negative lengths)."""
    shown = [p for p in rows if p.ci is not None]
    if not shown:
        return
    below = [max(p.score_ratio - p.ci[0], 0.0) for p in shown]
    above = [max(p.ci[1] - p.score_ratio, 0.0) for p in shown]
    ax.errorbar(
        [p.layer_averaged for p in shown],
        [p.score_ratio for p in shown],
        yerr=[below, above],
        fmt="none",
        ecolor=color,
        elinewidth=1.2,
        capsize=3,
        zorder=2,
    )


def _has_intervals(points: dict[str, list[RatioPoint]]) -> bool:
    return any(p.ci is not None for rows in points.values() for p in rows)


def _ratio_legend(
    methods: Sequence[str],
    colors: dict[str, str],
    labels: dict[str, str],
    dense: bool,
    hollow: bool,
    intervals: bool = False,
):
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], color=colors[m], marker=MARKERS.get(m, "o"), linewidth=1.8, label=labels[m])
        for m in methods
    ]
    if dense:
        handles.append(
            Line2D(
                [], [], color="black", marker="*", markersize=12, linestyle="none", label="dense (0%, 100%)"
            )
        )
    handles.append(Line2D([], [], color="0.35", linestyle="--", label="dense quality (100%)"))
    if intervals:
        handles.append(
            Line2D([], [], color="0.3", marker="|", markersize=12, linestyle="none",
                   label="bars: 95% CI (paired bootstrap)")
        )  # fmt: skip
    if not hollow:  # every run prunes before layer 0: both ratios are the same
        return handles
    handles.append(
        Line2D(
            [],
            [],
            color="0.3",
            marker="o",
            markerfacecolor="none",
            linestyle=":",
            label="hollow: same run at its input-level ratio",
        )
    )
    return handles


def _hollow(results: Sequence[EvalResult]) -> bool:
    """Whether some run's input-level ratio differs from its layer-averaged one (pruning after layer 0)."""
    return any(abs(r.input_ratio - r.layer_averaged_ratio) > 1e-6 for r in results if not r.is_dense)


def _method_groups(results: Sequence[EvalResult]) -> dict[str, list[EvalResult]]:
    groups: dict[str, list[EvalResult]] = {}
    for result in results:
        if not result.is_dense:
            groups.setdefault(result.method, []).append(result)
    order = list(METHOD_COLORS)  # baselines first, then gap and gap+sap; unknown methods last
    return dict(sorted(groups.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))


def _method_labels(groups: dict[str, list[EvalResult]]) -> dict[str, str]:
    labels = {}
    for method, rows in groups.items():
        alphas = sorted({r.alpha for r in rows if r.alpha is not None})
        suffix = f" (α={', '.join(f'{a:.3g}' for a in alphas)})" if alphas and method.endswith("+sap") else ""
        labels[method] = f"{method}{suffix}"
    return labels


def score_ratio_vs_pruning(results: Sequence[EvalResult], path: Path) -> Path:
    """Score ratio against the layer-averaged pruning ratio, one series per method."""
    return _save(score_ratio_vs_pruning_figure(results), path)


def score_ratio_vs_pruning_figure(results: Sequence[EvalResult]):
    groups = _method_groups(results)
    colors = method_colors(list(groups))
    dense = any(r.is_dense for r in results)
    points = {
        m: [
            RatioPoint(r.layer_averaged_ratio, r.input_ratio, r.score_ratio, r.score_ratio_ci)
            for r in rows
            if r.score_ratio is not None
        ]
        for m, rows in groups.items()
    }
    points = {m: rows for m, rows in points.items() if rows}
    fig = _figure(figsize=(9.5, 5.6))
    ax = fig.add_subplot()
    _ratio_axes(ax, points, colors, dense)
    ax.set_xlabel("visual tokens pruned, layer-averaged ratio (%)")
    ax.set_ylabel("score ratio vs dense (%)")
    ax.set_title("Task quality against pruning (mean score ratio over tasks)")
    ax.legend(
        handles=_ratio_legend(
            list(points), colors, _method_labels(groups), dense, _hollow(results), _has_intervals(points)
        ),
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        fontsize=9,
        frameon=False,
    )
    return fig


def score_ratio_per_task(results: Sequence[EvalResult], path: Path) -> Path:
    """The same per task: per-task score ratio against the per-task layer-averaged ratio."""
    return _save(score_ratio_per_task_figure(results), path)


def score_ratio_per_task_figure(results: Sequence[EvalResult]):
    groups = _method_groups(results)
    colors = method_colors(list(groups))
    dense = any(r.is_dense for r in results)
    tasks = task_order(results)
    rows, cols = _grid(len(tasks))
    width = max(4.3 * cols, 5.2)
    fig = _figure(figsize=(width, 3.5 * rows + (0.4 if rows * cols > len(tasks) else 1.6)))
    axes = fig.subplots(rows, cols, squeeze=False)
    intervals = False
    for ax, task in zip(axes.flat, tasks, strict=False):
        points = {
            m: [
                RatioPoint(p.layer_averaged_ratio, p.input_ratio, p.score_ratio, p.score_ratio_ci)
                for r in results_
                if (p := r.per_task.get(task)) is not None and p.score_ratio is not None
            ]
            for m, results_ in groups.items()
        }
        intervals = intervals or _has_intervals(points)
        _ratio_axes(ax, {m: v for m, v in points.items() if v}, colors, dense)
        ax.set_title(task)
        ax.set_xlabel("pruned, layer-averaged (%)")
        ax.set_ylabel("score ratio (%)")
    title = "Score ratio per task against the per-task pruning ratio"
    fig.suptitle(wrap_to_width(title, width, 13), fontsize=13)
    shown = [
        m
        for m, rs in groups.items()
        if any(p.score_ratio is not None for r in rs for p in r.per_task.values())
    ]
    handles = _ratio_legend(shown, colors, _method_labels(groups), dense, _hollow(results), intervals)
    spare = list(axes.flat)[len(tasks) :]
    for ax in spare:
        ax.axis("off")
    if spare:  # the legend fills the first empty cell of the grid
        spare[0].legend(handles=handles, loc="center", fontsize=10, frameon=False)
    else:
        columns = _legend_columns(width, [h.get_label() for h in handles], 9)
        fig.legend(handles=handles, loc="outside lower center", ncol=columns, fontsize=9, frameon=False)
    return fig


def sap_kept_objects(results: Sequence[EvalResult], path: Path) -> Path:
    """Histograms of kept objects per sample under SAP, one panel per task, one step line per SAP result."""
    return _save(sap_kept_objects_figure(results), path)


def sap_run_label(result: EvalResult) -> str:
    """A SAP result in a legend: its evaluation directory (what tells two gap+sap runs apart), method, α."""
    alpha = "?" if result.alpha is None else f"{result.alpha:.4g}"
    return f"{result.name}: {result.method}, α={alpha}, {result.layer_averaged_ratio:.1f}% pruned"


def sap_kept_objects_figure(results: Sequence[EvalResult]):
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    sap = [r for r in results if r.is_sap]
    tasks = task_order(sap)
    rows, cols = _grid(len(tasks))
    width = max(4.3 * cols, 5.2)
    runs = 0 if len(sap) == 1 else len(sap)  # one legend row per run under the panels
    fig = _figure(figsize=(width, 3.4 * rows + 0.8 + 0.25 * runs))
    axes = fig.subplots(rows, cols, squeeze=False)
    palette = [METHOD_COLORS.get(r.method, "tab:red") for r in sap]
    if len(set(palette)) < len(sap):
        palette = [f"C{i}" for i in range(len(sap))]
    for ax, task in zip(axes.flat, tasks, strict=False):
        counts = {i: np.asarray(r.kept_objects(task)) for i, r in enumerate(sap) if r.kept_objects(task)}
        if not counts:
            ax.set_visible(False)
            continue
        low = min(int(c.min()) for c in counts.values())
        high = max(int(c.max()) for c in counts.values())
        bins = np.arange(low - 0.5, high + 1.5)
        for i, values in counts.items():
            color = palette[i]
            ax.hist(
                values,
                bins=bins,
                histtype="step",
                linewidth=1.8,
                color=color,
                label=f"mean {values.mean():.2f}, n={len(values)}",
            )
            ax.axvline(values.mean(), color=color, linestyle="--", linewidth=1)
        ax.set_ylim(0, ax.get_ylim()[1] * (1.2 + 0.1 * len(counts)))  # headroom for the legend
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(task)
        ax.set_xlabel("kept objects per sample")
        ax.set_ylabel("samples")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="upper right")
    for ax in list(axes.flat)[len(tasks) :]:
        ax.axis("off")
    if len(sap) == 1:
        title = f"Kept objects per sample under SAP (dashed: mean): {sap_run_label(sap[0])} (layer-averaged)"
    else:
        title = "Kept objects per sample under SAP (dashed: mean)"
        handles = [
            Line2D([], [], color=palette[i], linewidth=1.8, label=sap_run_label(r)) for i, r in enumerate(sap)
        ]
        labels = [h.get_label() for h in handles]
        fig.legend(
            handles=handles,
            loc="outside lower center",
            ncol=_legend_columns(width, labels, 9, most=2),
            fontsize=9,
            frameon=False,
        )
    fig.suptitle(wrap_to_width(title, width, 12), fontsize=12)
    return fig


def _box_patch(box: Any, **style: Any) -> Any:
    """The top-view rectangle of one object box (center +- size / 2)."""
    from matplotlib.patches import Rectangle

    return Rectangle((box.cx - box.sx / 2, box.cy - box.sy / 2), box.sx, box.sy, **style)


def _shorten(prompt: str, width: int = 150) -> str:
    text = prompt.replace("Answer the question using a single word or phrase.", "").strip()
    return textwrap.shorten(text, width=width, placeholder="…")


def scene_topview(view: SceneView, path: Path) -> Path:
    """Top view of one scene: object boxes coloured by true / predicted attention, kept set outlined."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LogNorm
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import NullFormatter

    panels = view.panels
    slots = [b.slot for b in view.boxes]
    shown = np.concatenate([v[slots] for v in panels.values()]) if slots else np.ones(1)
    vmax = float(shown.max()) if shown.max() > 0 else 1.0
    vmin = max(float(shown[shown > 0].min()) if (shown > 0).any() else vmax, vmax * 1e-3)
    norm, cmap = LogNorm(vmin, vmax if vmax > vmin else vmin * 10), colormaps["viridis"]
    kept = set(view.kept or [])
    xs = [b.cx + s * b.sx / 2 for b in view.boxes + view.referred for s in (-1, 1)] or [0.0, 1.0]
    ys = [b.cy + s * b.sy / 2 for b in view.boxes + view.referred for s in (-1, 1)] or [0.0, 1.0]
    pad = 0.3
    width = 5.2
    aspect = (max(ys) - min(ys) + 2 * pad) / (max(xs) - min(xs) + 2 * pad)
    sample = view.sample
    question = textwrap.wrap(f"“{_shorten(sample.prompt)}”", width=60 * len(panels))
    legend_rows = 1 if len(panels) > 1 else 2
    # room for the title lines, the panel titles and the legend rows
    height = min(max((width - 0.7) * aspect, 2.5), 9.0) + 1.3 + 0.22 * (len(question) + legend_rows)
    fig = _figure(figsize=(width * len(panels) + 1.4, height))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, share) in zip(axes, panels.items(), strict=True):
        for box in sorted(view.boxes, key=lambda b: -b.sx * b.sy):  # small boxes on top of large ones
            color = cmap(norm(max(share[box.slot], norm.vmin)))
            ax.add_patch(_box_patch(box, facecolor=color, edgecolor="0.25", linewidth=0.6, alpha=0.9))
        for box in view.boxes:
            if box.slot in kept:
                ax.add_patch(_box_patch(box, facecolor="none", edgecolor=KEPT_COLOR, linewidth=2.2, zorder=4))
        for box in view.referred:
            ax.add_patch(
                _box_patch(
                    box, facecolor="none", edgecolor=REFERRED_COLOR, linewidth=1.8, linestyle="--", zorder=5
                )
            )
            ax.plot(
                box.cx,
                box.cy,
                marker="*",
                markersize=15,
                color=REFERRED_COLOR,
                markeredgecolor="white",
                markeredgewidth=0.8,
                zorder=6,
            )
        ax.set_xlim(min(xs) - pad, max(xs) + pad)
        ax.set_ylim(min(ys) - pad, max(ys) + pad)
        ax.set_aspect("equal")
        ax.set_xlabel("x (m)")
        ax.set_ylabel("y (m)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.2)
    bar = fig.colorbar(
        ScalarMappable(norm=norm, cmap=cmap),
        ax=list(axes),
        shrink=0.9,
        aspect=25,
        label="attention share per object (%, log scale)",
    )
    ticks = [
        m * 10.0**e for e in range(-8, 1) for m in (1, 2, 3, 5, 7) if norm.vmin <= m * 10.0**e <= norm.vmax
    ]
    bar.set_ticks(ticks, labels=[f"{100 * v:.3g}%" for v in ticks])
    bar.ax.yaxis.set_minor_formatter(NullFormatter())
    handles = []
    if view.kept is not None:
        padded = len(kept - set(slots))
        hidden = f" ({padded} in padded slots, not drawn)" if padded else ""
        handles.append(
            Patch(
                facecolor="none",
                edgecolor=KEPT_COLOR,
                linewidth=2.2,
                label=f"kept by {view.kept_source}: {len(kept)} objects{hidden}",
            )
        )
    if view.referred:
        names = ", ".join(sorted({b.name for b in view.referred if b.name}))
        handles.append(
            Line2D(
                [],
                [],
                color=REFERRED_COLOR,
                marker="*",
                markersize=13,
                linestyle="--",
                label=f"referred object ({view.referred_kind}{': ' + names if names else ''})",
            )
        )
    if handles:
        fig.legend(
            handles=handles,
            loc="outside lower center",
            ncol=len(handles) if legend_rows == 1 else 1,
            fontsize=9,
            frameon=False,
        )
    fig.suptitle(
        f"{sample.task} #{sample.index} · {sample.scene_id} · {len(view.boxes)} objects\n"
        + "\n".join(question),
        fontsize=11,
    )
    return _save(fig, path)
