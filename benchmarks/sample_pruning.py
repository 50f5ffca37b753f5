"""The paper-style pruning table on the sample world (issue 5): every method against the dense sample model.

    fast3d extract --tasks all --split train --limit 1000 -o runs/sample/maps.zarr
    fast3d extract --tasks all --split val -o runs/sample/maps_val.zarr
    fast3d train-gap runs/sample/maps.zarr -o runs/sample/gap
    fast3d predict runs/sample/gap --split val -o runs/sample/pred.zarr
    fast3d search-alpha runs/sample/pred.zarr --target 90
    python benchmarks/sample_pruning.py runs/sample

The sample model has 4 layers, not 32, so the paper's (K, R) pairs (§5.7: (2, 15), (6, 60), (16, 90) for
90/65/35%) are scaled: K = round(K_paper * 4 / 32) = 0, 1, 2, and the kept count is the one giving the same
layer-averaged ratio at that K (10, 13 and 30 objects). FastV cannot prune before layer 1 (it needs a
layer's attention), and at K = 1 a 4-layer model removes at most 75% layer-averaged, so FastV's "90%" row
keeps 10 objects from layer 1 (input-level 90%, layer-averaged 67.5%); GAP is also run at that setting for
a like-for-like comparison.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, write_result

TASKS = ("scanrefer", "multi3dref", "scan2cap", "scanqa", "sqa3d")


def rows(run_dir: Path, n_layers: int, skip_padding: bool) -> list[tuple[str, dict[str, Any]]]:
    """The paper's rows (fast3d_cli.evaluation.paper_table), then (``skip_padding``) the 90% rows again with
    --skip-padding."""
    from fast3d_cli.evaluation.paper_table import paper_rows

    table = paper_rows(n_layers, run_dir / "pred.zarr", run_dir / "maps_val.zarr")
    padded = [(f"{label} +skip-padding", {**options, "skip_padding": True}) for label, options in table
              if "90" in label and options["method"] != "none"]  # fmt: skip
    return table + (padded if skip_padding else [])


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("run_dir", type=Path, help="folder with maps_val.zarr and pred.zarr (alpha searched)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--name", default="sample_pruning")
    parser.add_argument("--limit", type=int, default=None, help="first N val samples per task")
    parser.add_argument("--skip-padding-rows", action="store_true", help="90%% rows with --skip-padding too")
    args = parser.parse_args()

    from fast3d_cli.cli.common import default_model_dir
    from fast3d_cli.data.config import DataConfig
    from fast3d_cli.evaluation import EvalSettings, run_pruned_eval
    from fast3d_cli.metrics import format_score_ratio
    from fast3d_cli.models.loading import ModelSource
    from fast3d_cli.pruning.methods import PruningSettings

    source = ModelSource(model_dir=default_model_dir())
    model = source.load(device=args.device, dtype="float32")
    fingerprint = source.fingerprint()
    data = DataConfig()
    base = EvalSettings(tasks=TASKS, batch_size=args.batch_size, limit=args.limit)
    evals = args.run_dir / ("eval" if args.limit is None else f"eval-limit{args.limit}")
    table = []
    from fast3d_cli.evaluation.paper_table import row_slug

    for label, options in rows(args.run_dir, model.llm.config.num_hidden_layers, args.skip_padding_rows):
        out = evals / row_slug(options)
        settings = replace(base, pruning=PruningSettings(**options))
        result = run_pruned_eval(model, fingerprint, data, settings, out, evals / "dense")
        table.append(table_row(label, options, result))
        ratio = result.get("score_ratio") or {}
        shown = format_score_ratio(table[-1]["score_ratio"], ratio.get("reason"), ratio.get("ci95"))
        print(f"{label}: score ratio {shown}", file=sys.stderr)
    path = write_result(
        args.name,
        {
            "benchmark": "sample_pruning",
            "environment": environment(args.device),
            "tasks": TASKS,
            "limit": args.limit,
            "rows": table,
        },
    )
    print(markdown(table))
    print(path, file=sys.stderr)


def table_row(label: str, options: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """One row of the results JSON from an eval result: the dense row's score ratio is 100 (no interval),
    or None where its own headline is negligible (`dense_ratio_entry`); a pruned row's is metrics.json's,
    None where undefined, with its paired-bootstrap 95% interval."""
    from fast3d_cli.metrics import dense_ratio_entry

    pruning = result["pruning"]
    dense = pruning["method"] == "none"
    ratio = dense_ratio_entry(result["headline"]) if dense else result.get("score_ratio") or {}
    return {
        "row": label,
        "options": {k: str(v) for k, v in options.items()},
        "headline": result["headline"],
        "score_ratio": ratio.get("value"),
        "score_ratio_ci95": ratio.get("ci95"),
        "score_ratio_per_task": ratio.get("per_task"),
        "score_ratio_per_task_ci95": ratio.get("per_task_ci95"),
        "input_ratio": pruning["input_ratio"],
        "layer_averaged_ratio": pruning["layer_averaged_ratio"],
        "mean_kept_objects": round(pruning["mean_kept_tokens"] / 3, 2),
        "alpha": pruning["alpha"],
        "flops_ratio": pruning["flops_ratio"],
        "samples_per_s": result["speed"]["samples_per_s"],
    }


def markdown(table: list[dict[str, Any]]) -> str:
    """The README table: headline scores (x100), the score ratio with its paired-bootstrap 95% interval
    ("-" for the dense row), both pruning ratios and the kept objects."""
    from fast3d_cli.metrics import format_interval

    head = "| method | ScanRefer Acc@0.5 | M3DRef F1@0.5 | Scan2Cap B-4@0.5 | ScanQA B-4 | SQA3D EM-R | "
    head += "score ratio | 95% CI | pruned (layer-avg / input) | kept obj |"
    lines = [head, "|" + "---|" * 10]
    for row in table:
        h = row["headline"]
        scores = " | ".join(f"{100 * h.get(t, float('nan')):.2f}" for t in TASKS)
        ratio = "n/a" if row["score_ratio"] is None else f"{row['score_ratio']:.2f}"
        lines.append(
            f"| {row['row']} | {scores} | {ratio} | {format_interval(row.get('score_ratio_ci95'))} | "
            f"{row['layer_averaged_ratio']:.1f}% / {row['input_ratio']:.1f}% | "
            f"{row['mean_kept_objects']:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
