"""GAP on the sample world: how well a GAP's val predictions match the target model's own val maps.

    fast3d extract --tasks all --split val -o maps_val.zarr
    fast3d train-gap maps.zarr -o gap/ --init-from-target          # maps.zarr: train maps
    fast3d predict gap/ --split val -o pred.zarr
    python benchmarks/sample_gap.py pred.zarr maps_val.zarr

Per task: top-k F1 of the GAP's ranking against the target map's (overlap / k), the share of the target's
attention mass inside the GAP's top k next to the most any ranking captures (the target's own top k), and
how often all of a sample's evidence objects are inside each map's top 10.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, write_result

TASKS = ("scanrefer", "multi3dref", "scan2cap", "scanqa", "sqa3d")
KS = (5, 10, 20)


def compare(predicted: np.ndarray, target: np.ndarray, samples: list[Any]) -> dict[str, float]:
    """Ranking agreement of one task's predicted maps [N, 100] with the target maps [N, 100]."""
    from fast3d_cli.attention.analysis import evidence_in_top_k

    mass = target / (target.sum(1, keepdims=True) + 1e-8)
    pred_order, true_order = np.argsort(-predicted, axis=1), np.argsort(-target, axis=1)
    out: dict[str, float] = {}
    for k in KS:
        overlap = [len(set(p[:k]) & set(t[:k])) / k for p, t in zip(pred_order, true_order, strict=True)]
        out[f"top{k}_f1"] = float(np.mean(overlap))
        out[f"top{k}_mass"] = float(np.take_along_axis(mass, pred_order[:, :k], 1).sum(1).mean())
        out[f"top{k}_mass_best"] = float(np.take_along_axis(mass, true_order[:, :k], 1).sum(1).mean())
    out["evidence_in_top10"] = evidence_in_top_k(predicted, samples, 10)["all_in_top_k"]
    out["evidence_in_top10_target"] = evidence_in_top_k(target, samples, 10)["all_in_top_k"]
    return out


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("pred", type=Path, help="prediction store (fast3d predict) with val maps")
    parser.add_argument("maps", type=Path, help="attention store (fast3d extract) with the same val samples")
    args = parser.parse_args()

    from fast3d_cli.data import DataConfig, load_samples
    from fast3d_cli.stores import open_store

    pred, maps = open_store(args.pred, kind="prediction"), open_store(args.maps, kind="attention")
    results = {}
    for task in TASKS:
        predicted = pred.group(task, "val").read("object_scores")
        target = maps.group(task, "val").read("object_scores")[: len(predicted)]
        samples = load_samples(DataConfig(), task, "val")[: len(predicted)]
        results[task] = {k: round(v, 4) for k, v in compare(predicted, target, samples).items()}
    provenance = pred.attrs.get("provenance")
    payload = {"benchmark": "sample_gap", "environment": environment("cpu"), "tasks": results}
    payload["pred"] = provenance
    print(write_result("sample_gap", payload))


if __name__ == "__main__":
    main()
