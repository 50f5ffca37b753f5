"""The leaderboard of the field's pruning methods on two sample worlds (`fast3d compare`, issue 18).

Both worlds are read by the committed sample model: the committed val set, and a second world with other
scenes and 20-60 objects per scene (`fast3d sample build-world --scene-seed 8 --objects 20-60`). The GAP and
the Efficient3D predictor are trained once, on the committed world's train split, and predict both worlds.

    fast3d extract --tasks all --split train --limit 1000 -o runs/c/maps_train.zarr
    fast3d extract --tasks all --split train --limit 1000 --keep-layers -o runs/c/maps_layers.zarr
    fast3d train-gap runs/c/maps_train.zarr --init-from-target --epochs 8 -o runs/gap
    fast3d train-gap runs/c/maps_layers.zarr --predictor efficient3d --init-from-target --epochs 8 -o runs/e3d
    fast3d sample build-world --scene-seed 8 --objects 20-60 -o runs/w2
    # per world (add --data-root runs/w2/annotations for the second one):
    fast3d extract --tasks all --split val --limit 200 -o runs/c/maps_val.zarr
    fast3d predict runs/gap --split val --limit 200 -o runs/c/pred_val.zarr
    fast3d predict runs/e3d --split val --limit 200 -o runs/c/e3d_val.zarr
    M=gap+sap,gap+asap,gap,oracle,oracle+sap,random,divprune,cdpruner,coverage,fastv
    M=$M,pyramiddrop,adatoken3d,efficient3d
    fast3d compare -o runs/cmp_c --limit 200 --ratios 90 -m $M \
        --maps runs/c/pred_val.zarr --maps runs/c/e3d_val.zarr --maps runs/c/maps_val.zarr
    # GAP+SAP with padding objects given no SAP mass, on the same samples and dense run:
    fast3d search-alpha runs/c/pred_val_sp.zarr --target 90 --skip-padding   # a copy of pred_val.zarr
    fast3d eval --method gap+sap --skip-padding --maps runs/c/pred_val_sp.zarr --alpha auto --limit 200 \
        -o runs/gsp_c --baseline runs/cmp_c/runs/dense
    python benchmarks/sample_compare.py runs/cmp_c --name sample_compare_committed --world "committed val" \
        --eval "gap+sap ~90% --skip-padding=runs/gsp_c"

The script reads the compare folder's leaderboard.json, writes benchmarks/results/NAME.json (the rows with
the environment) and prints the README's markdown table. Every row is the protocol of `fast3d eval`: beam 5,
the first 200 val samples of each of the five tasks, score ratios with paired-bootstrap 95% intervals.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, write_result

TASK_ORDER = ("scanrefer", "multi3dref", "scan2cap", "scanqa", "sqa3d")


def _interval(value: list[float] | None) -> str:
    return f"[{value[0]:.1f}, {value[1]:.1f}]" if value else "-"


def _number(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown(rows: list[dict[str, Any]]) -> str:
    """The leaderboard as a markdown table: finished rows by score ratio, then the failed rows."""
    head = "| row | ratio % | 95% CI | " + " | ".join(TASK_ORDER) + " | kept | FLOPs | agree % |"
    lines = [head, "|" + "---|" * (len(TASK_ORDER) + 6)]
    done = sorted((r for r in rows if r["status"] == "done"), key=lambda r: -(r.get("score_ratio") or 0))
    for row in done:
        per_task = [_number((row.get("per_task") or {}).get(t, {}).get("score_ratio")) for t in TASK_ORDER]
        agreement = row.get("agreement")
        ratio = f"{_number(row.get('score_ratio'), 2)} | {_interval(row.get('score_ratio_ci95'))}"
        lines.append(
            f"| {row['label']} | {ratio} | "
            + " | ".join(per_task)
            + f" | {_number(row.get('mean_kept_objects'))} | {_number(row.get('flops_ratio'), 3)}"
            + f" | {_number(None if agreement is None else 100 * agreement)} |"
        )
    for row in rows:
        if row["status"] != "done":
            lines.append(f"| {row['label']} | failed: {row.get('error')} |" + " |" * (len(TASK_ORDER) + 4))
    return "\n".join(lines)


def eval_row(label: str, run_dir: Path) -> dict[str, Any]:
    """A leaderboard-shaped row from a ``fast3d eval`` folder (its metrics.json) scored against the same
    dense run as the compare folder."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    ratio, pruning = metrics["score_ratio"], metrics["pruning"]
    per_task = {
        task: {"score_ratio": value, "score_ratio_ci95": (ratio.get("per_task_ci95") or {}).get(task)}
        for task, value in ratio["per_task"].items()
    }
    return {
        "slug": run_dir.name,
        "label": label,
        "method": pruning["method"],
        "kind": "eval",
        "status": "done",
        "settings": pruning,
        "run": str(run_dir),
        "baseline": ratio["baseline"],
        "score_ratio": ratio["value"],
        "score_ratio_ci95": ratio["ci95"],
        "per_task": per_task,
        "layer_averaged_ratio": pruning["layer_averaged_ratio"],
        "mean_kept_objects": pruning["mean_kept_tokens"] / 3,
        "flops_ratio": pruning["flops_ratio"],
        "agreement": None,
    }


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("compare_dir", type=Path, help="a fast3d compare output folder")
    parser.add_argument("--name", required=True, help="benchmarks/results/NAME.json")
    parser.add_argument("--world", required=True, help="which world the rows ran on (recorded)")
    parser.add_argument(
        "--eval", action="append", default=[], metavar="LABEL=DIR",
        help="also a fast3d eval folder scored against the compare folder's dense run",
    )  # fmt: skip
    args = parser.parse_args()
    board = json.loads((args.compare_dir / "leaderboard.json").read_text())
    for item in args.eval:
        label, _, run_dir = item.rpartition("=")
        board["rows"].append(eval_row(label, Path(run_dir)))
    payload = {
        "benchmark": "sample_compare",
        "world": args.world,
        "environment": environment(board.get("device") or "cpu"),
        "identity": board["identity"],
        "rows": board["rows"],
    }
    print(markdown(board["rows"]))
    print(write_result(args.name, payload), file=sys.stderr)


if __name__ == "__main__":
    main()
