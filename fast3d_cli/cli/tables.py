"""Result tables on stderr (stdout carries paths and JSON): eval's metrics and the demo's comparison."""

from __future__ import annotations

from typing import IO, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def print_metrics_table(result: dict[str, Any], file: IO[str]) -> None:
    table = Table(title="fast3d eval (values x100)")
    table.add_column("task")
    table.add_column("headline metric")
    table.add_column("value", justify="right")
    table.add_column("samples", justify="right")
    for task, value in result.get("headline", {}).items():
        from fast3d_cli.metrics import HEADLINE_METRICS

        shown = "n/a" if value is None else f"{100 * value:.2f}"
        metric = escape(HEADLINE_METRICS[task])  # "[task] ..." would otherwise be read as rich markup
        table.add_row(task, metric, shown, str(result.get("samples", {}).get(task, "")))
    console = Console(file=file)
    console.print(table)
    for line in summary_lines(result):
        console.print(line, markup=False, highlight=False)


def summary_lines(result: dict[str, Any]) -> list[str]:
    """Pruning, score ratio and speed of an eval result, one line each."""
    lines = []
    p = result.get("pruning") or {}
    if p.get("method", "none") != "none":
        budget = f"keep {p['keep']}" if p.get("keep") is not None else f"alpha {p.get('alpha')}"
        where = f"layer {p['layer']}"
        if p.get("layers"):  # multi-stage: every drop layer, and the per-drop counts or the threshold
            stages = p.get("stage_keep")
            budget = f"keep {'/'.join(map(str, stages))}" if stages else f"threshold {p.get('threshold')}"
            where = f"layers {','.join(map(str, p['layers']))}"
        lines.append(
            f"{p['method']} ({budget}, {where}): pruned {p['layer_averaged_ratio']:.2f}% "
            f"layer-averaged / {p['input_ratio']:.2f}% input-level, {p['mean_kept_tokens']:.1f} visual "
            f"tokens kept, prefill FLOPs x{p['flops_ratio']}"
        )
    ratio = result.get("score_ratio")
    if ratio:
        lines += score_ratio_lines(ratio)
    speed = result.get("speed") or {}
    if speed.get("samples_per_s"):
        peak = speed.get("peak_memory_mib")
        lines.append(
            f"speed: {speed['samples_per_s']} samples/s, prefill {speed.get('prefill_ms_per_sample')} "
            f"ms/sample, decode {speed.get('decode_ms_per_token')} ms/token, peak memory "
            + ("n/a (CPU)" if peak is None else f"{peak} MiB")
        )
    return lines


def score_ratio_lines(ratio: dict[str, Any]) -> list[str]:
    """The score ratio against the dense run, overall and per task, each with its confidence interval
    when metrics.json has one, and a line saying what the interval is (or why there is none)."""
    from fast3d_cli.metrics import format_score_ratio

    shown = format_score_ratio(
        ratio.get("value"), ratio.get("reason") or ratio.get("error"), ratio.get("ci95")
    )
    tasks, intervals = ratio.get("per_task") or {}, ratio.get("per_task_ci95") or {}
    per_task = ", ".join(f"{t} {format_score_ratio(v, None, intervals.get(t))}" for t, v in tasks.items())
    per_task = per_task if len(tasks) > 1 else ""
    lines = [
        f"score ratio {shown} against the dense run in {ratio['baseline']}"
        + (f" (per task: {per_task})" if per_task else "")
    ]
    note = interval_note(ratio)
    return lines + ([note] if note else [])


def interval_note(ratio: dict[str, Any]) -> str | None:
    """What the bracketed interval of a score ratio is, or why there is none; None when the ratio has no
    interval fields (``--bootstrap 0``, a result of an earlier version)."""
    if ratio.get("ci_reason"):
        return f"  no confidence interval: {ratio['ci_reason']}"
    if "ci95" not in ratio:
        return None
    if ratio.get("value") is None and not any((ratio.get("per_task_ci95") or {}).values()):
        return None  # no interval at all: the n/a line says why
    note = (
        f"  [low, high]: {100 * ratio['confidence']:g}% paired-bootstrap interval over "
        f"{ratio['n_resamples']} resamples of the samples (seed {ratio['seed']})"
    )
    if ratio.get("n_undefined"):
        note += (
            f"; {ratio['n_undefined']} resamples without a ratio (a dense score of 0, or a negligible one) "
            "left out"
        )
    return note


def print_comparison_table(rows: list[dict[str, Any]], file: IO[str], title: str) -> None:
    """The paper-style table: headline metrics (x100), score ratio and its interval, both pruning ratios,
    kept objects."""
    from fast3d_cli.metrics import HEADLINE_METRICS, format_interval

    tasks = list(HEADLINE_METRICS)
    table = Table(title=title, caption=COMPARISON_CAPTION)
    table.add_column("method")
    for task in tasks:
        table.add_column(SHORT_TASK_NAMES.get(task, task), justify="right")
    for name in ("ratio %", "95% CI", "pruned %", "kept", "smp/s"):
        table.add_column(name, justify="right")
    for row in rows:
        values = [row["headline"].get(t) for t in tasks]
        speed = row.get("samples_per_s")
        table.add_row(
            escape(row["method"]),
            *("n/a" if v is None else f"{100 * v:.2f}" for v in values),
            "n/a" if row["score_ratio"] is None else f"{row['score_ratio']:.2f}",
            escape(format_interval(row.get("score_ratio_ci"))),
            f"{row['layer_averaged_ratio']:.1f}/{row['input_ratio']:.1f}",
            f"{row['mean_kept_objects']:.1f}",
            "-" if speed is None else f"{speed:.1f}",
        )
    wide = Console(file=file, width=max(Console(file=file).width, 134))
    wide.print(table)
    for note in comparison_notes(rows):
        wide.print(note, markup=False, highlight=False)


def comparison_notes(rows: list[dict[str, Any]]) -> list[str]:
    """The table's footnotes, each once with the rows it concerns: why a score ratio is n/a, and how many
    resamples an interval left out (every pruned row shares the dense run, so usually all of them)."""
    undefined: dict[str, list[str]] = {}
    left_out: dict[tuple[int, int], list[str]] = {}
    for row in rows:
        if row["score_ratio"] is None:
            reason = row.get("score_ratio_reason") or "no baseline"
            undefined.setdefault(reason, []).append(row["method"])
        elif row.get("score_ratio_ci") and row.get("score_ratio_resamples_undefined"):
            key = (row["score_ratio_resamples_undefined"], row["score_ratio_resamples"])
            left_out.setdefault(key, []).append(row["method"])
    notes = [f"{', '.join(names)}: score ratio n/a ({reason})" for reason, names in undefined.items()]
    notes += [
        f"{', '.join(names)}: 95% CI from {total - n} of {total} resamples ({n} drew a dense score of 0, "
        "or a negligible one, for some task and have no ratio)"
        for (n, total), names in left_out.items()
    ]
    return notes


SHORT_TASK_NAMES = {
    "scanrefer": "ScanRefer",
    "multi3dref": "M3DRef",
    "scan2cap": "Scan2Cap",
    "scanqa": "ScanQA",
    "sqa3d": "SQA3D",
}
COMPARISON_CAPTION = (
    "ScanRefer Acc@0.5, Multi3DRef F1@0.5, Scan2Cap B-4@0.5, ScanQA B-4, SQA3D EM-R (x100); ratio = score "
    "ratio vs dense; 95% CI = its paired-bootstrap interval (docs/bootstrap.md); pruned = "
    "layer-averaged/input-level %; kept = mean objects; smp/s = samples per second"
)


def print_leaderboard(board: dict[str, Any], file: IO[str]) -> None:
    """``fast3d compare``'s leaderboard: per row the score ratio with its interval, overall and per task,
    the pruning reached, kept objects, FLOPs ratio, measured prefill and selection times and the agreement
    with the dense answers; failed rows say why below the table."""
    from fast3d_cli.metrics import format_interval

    tasks = board["identity"]["tasks"]
    table = Table(
        title=f"fast3d compare (times on {board.get('device') or 'n/a'})", caption=LEADERBOARD_CAPTION
    )
    table.add_column("row", no_wrap=True)
    for name in ("ratio %", "95% CI", *(SHORT_TASK_NAMES.get(t, t) for t in tasks)):
        table.add_column(name, justify="right")
    for name in ("pruned %", "kept", "FLOPs", "prefill ms", "select ms", "agree %"):
        table.add_column(name, justify="right")
    notes = []
    for row in board["rows"]:
        if row["status"] != "done":
            notes.append(f"{row['label']}: {row['status']}: {row.get('error')}")
            table.add_row(escape(row["label"]), row["status"], *[""] * (len(tasks) + 7))
            continue
        if row["score_ratio"] is None and row.get("score_ratio_reason"):
            notes.append(f"{row['label']}: score ratio n/a ({row['score_ratio_reason']})")
        per_task = [(row["per_task"].get(t) or {}).get("score_ratio") for t in tasks]
        table.add_row(
            escape(row["label"]),
            _number(row["score_ratio"], "{:.2f}"),
            escape(format_interval(row.get("score_ratio_ci95"))),
            *(_number(v, "{:.1f}") for v in per_task),
            _number(row["layer_averaged_ratio"], "{:.1f}"),
            _number(row["mean_kept_objects"], "{:.1f}"),
            _number(row["flops_ratio"], "{:.3f}"),
            _number(row["prefill_ms_per_sample"], "{:.2f}"),
            _number(row["selection_ms_per_sample"], "{:.2f}"),
            _number(None if row["agreement"] is None else 100 * row["agreement"], "{:.1f}"),
        )
    wide = Console(file=file, width=max(Console(file=file).width, 170))
    wide.print(table)
    for note in notes:
        wide.print(note, markup=False, highlight=False)


def _number(value: float | None, form: str) -> str:
    return "n/a" if value is None else form.format(value)


LEADERBOARD_CAPTION = (
    "ratio = score ratio vs dense (overall, then per task); 95% CI = its paired-bootstrap interval; pruned = "
    "layer-averaged %; kept = mean objects; FLOPs = prefill FLOPs ratio; prefill/select ms = measured per "
    "sample (LLM prefill / the method choosing tokens outside the LLM); agree = answers equal to dense"
)
