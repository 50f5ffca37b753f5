"""Does the sample model's attention over the objects depend on the question?

Extracts the spec §3 maps of the sample model on ScanRefer val and reports how often the referred object is
among the top-k objects of the map (k = 1, 5, 10) and, for pairs of questions about different objects of the
same scene, how often the top object differs. ``prompt_scores`` (question rows only) is the honest view: it
does not see the answer tokens.

    python benchmarks/attention_dependence.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, write_result


def measure(task: str = "scanrefer", split: str = "val") -> dict:
    from fast3d_cli.attention.analysis import same_scene_contrast, target_hit_rate, target_proposals
    from fast3d_cli.attention.extract import ExtractSettings, extract_chunk
    from fast3d_cli.data import DataConfig, SceneBank, load_samples
    from fast3d_cli.data.config import sample_data_dir
    from fast3d_cli.models.chat_scene.io import from_pretrained

    model = from_pretrained(sample_data_dir() / "model")
    data = DataConfig()
    samples = load_samples(data, task, split)
    maps = extract_chunk(
        model, SceneBank(data, split), samples, ExtractSettings(tasks=(task,), batch_size=16)
    )
    targets = target_proposals(samples)
    result = {"task": task, "split": split, "samples": len(samples)}
    for name in ("prompt_scores", "object_scores"):
        result[name] = {f"target_in_top{k}": target_hit_rate(maps[name], targets, k) for k in (1, 5, 10)}
        result[name]["same_scene_pairs"] = same_scene_contrast(maps[name], samples, targets)
    result["chance"] = {f"target_in_top{k}": k / maps["object_scores"].shape[1] for k in (1, 5, 10)}
    return result


if __name__ == "__main__":
    payload = {"benchmark": "attention_dependence", "environment": environment("cpu"), "result": measure()}
    print(write_result("sample_model_attention", payload))
