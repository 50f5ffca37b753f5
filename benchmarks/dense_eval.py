"""Dense scores of the sample model on sample val (the numbers in the README's sample-model table).

python benchmarks/dense_eval.py            # all five tasks, official generation settings (beam 5)
python benchmarks/dense_eval.py --output runs/sample/eval/dense   # reuse (or resume) a dense eval folder

Goals (issue 13): ScanRefer Acc@0.5 >= 50, Multi3DRefer F1@0.5 >= 45, Scan2Cap CIDEr@0.5 >= 60, ScanQA EM
>= 40 and BLEU-4 >= 10, SQA3D EM >= 50.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--output", type=Path, default=None, help="eval folder, reused if it holds this run")
    args = parser.parse_args()

    from fast3d_cli.data import DataConfig
    from fast3d_cli.data.config import sample_data_dir
    from fast3d_cli.data.tasks import TASKS
    from fast3d_cli.evaluation import EvalSettings, run_eval
    from fast3d_cli.models.loading import ModelSource

    source = ModelSource(model_dir=sample_data_dir() / "model")
    model = source.load(device="cpu", dtype="float32")
    settings = EvalSettings(tasks=tuple(TASKS), batch_size=args.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.output or Path(tmp) / "eval"
        fresh = args.output is None
        result = run_eval(model, source.fingerprint(), DataConfig(), settings, out, overwrite=fresh)
    targets = [
        ("scanrefer", "[scanrefer] Acc@0.50", 50),
        ("multi3dref", "[multi3dref] all F1@0.50", 45),
        ("scan2cap", "[scan2cap] CIDEr@0.50", 60),
        ("scanqa", "[scanqa] EM1", 40),
        ("scanqa", "[scanqa] Bleu_4", 10),
        ("sqa3d", "[sqa3d] EM1", 50),
    ]
    goals = {
        key: {
            "value_x100": round(100 * result["metrics"][task][key], 2),
            "target": target,
            "reached": 100 * result["metrics"][task][key] >= target,
        }
        for task, key, target in targets
    }
    payload = {
        "benchmark": "sample_model_dense",
        "environment": environment("cpu"),
        "settings": "beam 5, 64 tokens",
        "goals": goals,
        "headline_x100": {k: round(100 * v, 2) for k, v in result["headline"].items()},
        "samples": result["samples"],
        "speed": result["speed"],
        "metrics": result["metrics"],
    }
    print(write_result("sample_model_dense", payload))


if __name__ == "__main__":
    main()
