"""GAP on the sample world: validation quality of a trained GAP directory against its target maps.

    fast3d extract --tasks all --split train,val -o maps.zarr
    fast3d train-gap maps.zarr -o gap/
    python benchmarks/sample_gap.py gap/ maps.zarr

Reports the last epoch's val metrics from ``gap/metrics.jsonl`` (top-k F1 and the share of the target mass
captured by the predicted top-k) next to the oracle: the mass held by the target map's own top-k objects,
the most any predictor can capture.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, write_result


def oracle_mass(store_path: Path, tasks: list[str], ks=(5, 10, 20)) -> dict[str, dict[str, float]]:
    from fast3d_cli.stores import open_store

    store = open_store(store_path)
    out = {}
    for task in tasks:
        maps = store.group(task, "val").read("object_scores")
        ranked = -np.sort(-(maps / (maps.sum(1, keepdims=True) + 1e-8)), axis=1)
        out[task] = {f"top{k}_mass": float(ranked[:, :k].sum(1).mean()) for k in ks}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("gap", type=Path)
    parser.add_argument("store", type=Path)
    args = parser.parse_args()
    lines = [json.loads(line) for line in (args.gap / "metrics.jsonl").read_text().splitlines()]
    last = lines[-1]
    tasks = [t for t in last["val"] if t != "all"]
    payload = {
        "benchmark": "sample_gap",
        "environment": environment("cpu"),
        "epochs": last["epoch"],
        "steps": last["step"],
        "val": last["val"],
        "oracle": oracle_mass(args.store, tasks),
        "training": json.loads((args.gap / "training.json").read_text())["settings"],
    }
    print(write_result("sample_gap", payload))


if __name__ == "__main__":
    main()
