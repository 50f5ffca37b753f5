"""Does the sample model behave like Chat-Scene where pruning is concerned? (issue 13, deliverable 4)

Measured with the toolkit's own stages on the official map and default settings (no --skip-padding):

1. the evidence objects of each val sample (the ``evidence`` annotation of the sample world) are inside the
   top 10 of the extracted ``object_scores`` (spec §3 map) -- goal: for >= 90% of the samples that have
   evidence;
2. oracle pruning at 90% (K = 0, keep the 10 objects with the highest extracted attention) keeps >= 95% of the
   dense score ratio;
3. random pruning at 90% (K = 0, 10 random objects) keeps <= 75%.

    python benchmarks/sample_phenomenon.py runs/phenomenon            # the committed sample model
    python benchmarks/sample_phenomenon.py runs/p --model path/to/model --limit 100   # a quick look

Writes ``benchmarks/results/sample_phenomenon.json`` (``--name``) and prints a summary. Reruns reuse the
stores and evaluation folders under the run directory (every stage resumes).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, write_result

TASKS = ("scanrefer", "multi3dref", "scan2cap", "scanqa", "sqa3d")
GOALS = {
    "evidence_in_top10": (">=", 0.90),
    "oracle_90_score_ratio": (">=", 95.0),
    "random_90_score_ratio": ("<=", 75.0),
}


def evidence_rates(maps_path: Path, data: Any, limit: int | None) -> dict[str, Any]:
    """Per task and overall: the share of val samples (with evidence) with all evidence in the top 10."""
    from fast3d_cli.attention.analysis import evidence_in_top_k
    from fast3d_cli.data import load_samples
    from fast3d_cli.stores import open_store

    store = open_store(maps_path, kind="attention")
    per_task, hits, counted = {}, 0.0, 0
    for task in TASKS:
        group = store.group(task, "val")
        samples = load_samples(data, task, "val")[:limit]
        rows = group.read("object_scores")[: len(samples)]
        result = evidence_in_top_k(rows, samples, k=10)
        per_task[task] = result
        hits += result["all_in_top_k"] * result["samples"]
        counted += result["samples"]
    return {"per_task": per_task, "all_in_top_k": hits / counted, "samples": counted}


def score_ratio(result: dict[str, Any]) -> dict[str, Any]:
    ratio = result.get("score_ratio") or {}
    return {key: ratio.get(key) for key in ("value", "ci95", "per_task", "reason") if key in ratio}


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("run_dir", type=Path, help="working folder (stores and evaluation folders)")
    parser.add_argument("--model", type=Path, default=None, help="fast3d model directory (default: sample)")
    parser.add_argument("--limit", type=int, default=None, help="val samples per task (default: all)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--name", default="sample_phenomenon")
    args = parser.parse_args()

    from dataclasses import replace

    from fast3d_cli.attention.extract import ExtractSettings, extract
    from fast3d_cli.cli.common import default_model_dir
    from fast3d_cli.data.config import DataConfig
    from fast3d_cli.evaluation import EvalSettings, run_pruned_eval
    from fast3d_cli.evaluation.paper_table import row_slug
    from fast3d_cli.models.loading import ModelSource
    from fast3d_cli.pruning.methods import PruningSettings

    source = ModelSource(model_dir=args.model or default_model_dir())
    model, fingerprint = source.load(device=args.device, dtype="float32"), source.fingerprint()
    data = DataConfig()
    maps = args.run_dir / "maps_val.zarr"
    settings = ExtractSettings(tasks=TASKS, splits=("val",), limit=args.limit)
    extract(model, fingerprint, data, settings, maps, command="benchmarks/sample_phenomenon.py")
    evidence = evidence_rates(maps, data, args.limit)
    print(f"evidence in the top 10 of the extracted map: {evidence['all_in_top_k']:.3f}", file=sys.stderr)

    base = EvalSettings(tasks=TASKS, batch_size=args.batch_size, limit=args.limit)
    dense_dir = args.run_dir / "eval" / "dense"
    rows = {  # the same rows (and folders) as benchmarks/sample_pruning.py's, so a shared run_dir reuses them
        "oracle_90": {"method": "oracle", "ratio": 90.0, "maps": maps},
        "random_90": {"method": "random", "ratio": 90.0},
    }
    results: dict[str, Any] = {}
    for name, options in rows.items():
        pruned = replace(base, pruning=PruningSettings(**options))
        out = args.run_dir / "eval" / row_slug(options)
        result = run_pruned_eval(model, fingerprint, data, pruned, out, dense_dir)
        results[name] = {"headline": result["headline"], "score_ratio": score_ratio(result),
                         "mean_kept_objects": result["pruning"]["mean_kept_tokens"] / 3}  # fmt: skip
        print(f"{name}: score ratio {results[name]['score_ratio'].get('value')}", file=sys.stderr)
    measured = {
        "evidence_in_top10": evidence["all_in_top_k"],
        "oracle_90_score_ratio": results["oracle_90"]["score_ratio"].get("value"),
        "random_90_score_ratio": results["random_90"]["score_ratio"].get("value"),
    }
    goals = {
        key: {"measured": value, "goal": f"{op} {target}",
              "met": value is not None and (value >= target if op == ">=" else value <= target)}
        for key, value in measured.items()
        for op, target in [GOALS[key]]
    }  # fmt: skip
    path = write_result(
        args.name,
        {"benchmark": "sample_phenomenon", "environment": environment(args.device), "model": fingerprint,
         "limit": args.limit, "goals": goals, "evidence": evidence, "pruning": results},
    )  # fmt: skip
    for key, goal in goals.items():
        print(f"{key}: {goal['measured']} (goal {goal['goal']}: {'met' if goal['met'] else 'missed'})")
    print(path, file=sys.stderr)


if __name__ == "__main__":
    main()
