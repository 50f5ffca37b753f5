"""Collect the val runs of GAP+SAP, our anchored SAP and their neighbours into one results JSON.

    fast3d search-alpha pred_val.zarr --target 90
    fast3d eval --method gap+sap  --maps pred_val.zarr --alpha auto --limit 200 \
        --baseline RUN/val-dense -o RUN/val-gap+sap
    fast3d eval --method gap+asap --maps pred_val.zarr --alpha auto --limit 200 \
        --baseline RUN/val-dense -o RUN/val-gap+asap
    python benchmarks/our_method_val.py RUN val-gap+sap val-gap+asap ... --pair val-gap+asap:val-gap+sap

Each run's metrics.json gives its score ratio against the dense run (paired-bootstrap 95% interval), its
pruning ratio and kept objects per task. ``--pair A:B`` adds A's score ratio against B on the same samples
(the task metrics of A over those of B, paired bootstrap over the samples), which is tighter than comparing
two intervals against the dense run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, write_result


def run_row(run: Path) -> dict[str, Any]:
    metrics = json.loads((run / "metrics.json").read_text())
    ratio, pruning = metrics["score_ratio"], metrics["pruning"]
    return {
        "run": run.name,
        "method": pruning["method"],
        "alpha": pruning["alpha"],
        "keep": pruning.get("keep"),
        "input_ratio": pruning["input_ratio"],
        "kept_per_task": {t: round(v["mean_kept_tokens"] / 3, 2) for t, v in pruning["per_task"].items()},
        "score_ratio": ratio["value"],
        "score_ratio_ci95": ratio["ci95"],
        "score_ratio_per_task": ratio["per_task"],
        "samples": metrics["samples"],
    }


def paired(run_dir: Path, pair: str) -> dict[str, Any]:
    from fast3d_cli.evaluation.confidence import read_units
    from fast3d_cli.metrics import paired_bootstrap_score_ratio

    method, reference = pair.split(":")
    result = paired_bootstrap_score_ratio(read_units(run_dir / method), read_units(run_dir / reference))
    out = result.to_dict()
    return {"method": method, "reference": reference, "ratio": out["value"], "ci95": out["ci95"],
            "per_task": {t: v["value"] for t, v in out["per_task"].items()}}  # fmt: skip


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--pair", action="append", default=[], help="A:B, A's score ratio against B")
    parser.add_argument("--name", default="our_method_val")
    args = parser.parse_args()
    rows = [run_row(args.run_dir / run) for run in args.runs]
    pairs = [paired(args.run_dir, pair) for pair in args.pair]
    for row in rows:
        shown = f"{row['score_ratio']} {row['score_ratio_ci95']} {row['kept_per_task']}"
        print(f"{row['run']}: {shown}", file=sys.stderr)
    for pair in pairs:
        print(f"{pair['method']} vs {pair['reference']}: {pair['ratio']} {pair['ci95']}", file=sys.stderr)
    print(write_result(args.name, {"benchmark": "our_method_val", "environment": environment("cpu"),
                                   "rows": rows, "pairs": pairs}))  # fmt: skip


if __name__ == "__main__":
    main()
