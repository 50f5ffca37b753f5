"""Benchmark: attention-map extraction, fast3d's capture (SDPA + selected rows) vs eager output_attentions.

Both compute the spec §3 maps for the same inputs. Reports time per sample and peak memory:
- CPU: peak RSS growth of a fresh subprocess running one variant (torch allocations are not visible to
  tracemalloc, so each variant gets its own process);
- CUDA: ``torch.cuda.max_memory_allocated`` above the weights (activation memory).

    python benchmarks/extract.py --model sample            # the tiny sample model on CPU
    python benchmarks/extract.py --model vicuna-7b --device cuda --batch 1 8   # 7B shape, random bf16 weights
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import VICUNA_7B, environment, goal, timed, write_result

# fast3d's capture / eager output_attentions, per batch size
GOALS = {"speedup_vs_eager": 3.0, "memory_ratio_vs_eager": 5.0}


def build(model_name: str, device: str):
    """(llm, hidden size, n_prefix, n_layers) for the sample model or a random 7B-shaped Llama."""
    import torch

    if model_name == "sample":
        from fast3d_cli.data.config import sample_data_dir
        from fast3d_cli.models.chat_scene.io import from_pretrained

        model = from_pretrained(sample_data_dir() / "model").to(device)
        return model.llm, model.llm.config.hidden_size, model.layout.n_prefix
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**VICUNA_7B)
    with torch.device(device):
        llm = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa")
    return llm.eval(), config.hidden_size, 45


def inputs(batch: int, seq: int, hidden: int, n_prefix: int, device: str, dtype):
    import torch

    g = torch.Generator(device="cpu").manual_seed(0)
    embeds = (torch.randn(batch, seq, hidden, generator=g) * 0.02).to(device=device, dtype=dtype)
    mask = torch.ones(batch, seq, dtype=torch.long, device=device)
    positions = torch.arange(seq, device=device).expand(batch, -1)
    text_start = torch.full((batch,), n_prefix + 300 + 6, device=device)
    visual_start = torch.full((batch,), n_prefix, device=device)
    return embeds, mask, positions, text_start, visual_start


def run_variant(variant: str, llm, embeds, mask, positions, text_start, visual_start):
    import torch

    from fast3d_cli.attention.capture import AttentionCapture, capturing
    from fast3d_cli.attention.maps import aggregate_maps

    batch, seq = mask.shape
    text_len = seq - text_start
    prompt_len = torch.full_like(text_len, 8)
    with torch.inference_mode():
        if variant == "fast3d":
            capture = AttentionCapture(int(text_start.min()), visual_start, 300)
            with capturing(llm, capture):
                llm.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False)
            return aggregate_maps(capture.result(), text_start, text_len, prompt_len).object_scores
        llm.set_attn_implementation("eager")
        try:
            out = llm.model(
                inputs_embeds=embeds,
                attention_mask=mask,
                position_ids=positions,
                output_attentions=True,
                use_cache=False,
            )
        finally:
            llm.set_attn_implementation("sdpa")
        mean = torch.stack(out.attentions).float().mean(0).mean(1)
        rows = slice(int(text_start[0]), seq)
        cols = slice(int(visual_start[0]), int(visual_start[0]) + 300)
        return mean[:, rows, cols].reshape(batch, -1, 100, 3).sum(-1).mean(1)


def measure(args: argparse.Namespace, variant: str, batch: int) -> dict[str, Any]:
    import torch

    llm, hidden, n_prefix = build(args.model, args.device)
    dtype = next(llm.parameters()).dtype
    data = inputs(batch, args.seq, hidden, n_prefix, args.device, dtype)
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times = timed(lambda: run_variant(variant, llm, *data), args.repeats, sync)
    peak = (
        torch.cuda.max_memory_allocated()
        if cuda
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    return {
        "variant": variant,
        "batch": batch,
        "seq": args.seq,
        "ms_per_sample": 1000 * min(times) / batch,
        "peak_activation_mib": (peak - base) / 2**20,
    }


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Per batch size, the fast3d row gets its speed-up and activation-memory ratio over the eager row."""
    for batch in sorted({r["batch"] for r in rows}):
        ours, eager = (
            next(r for r in rows if r["batch"] == batch and r["variant"] == v) for v in ("fast3d", "eager")
        )
        ours["speedup_vs_eager"] = eager["ms_per_sample"] / ours["ms_per_sample"]
        ours["memory_ratio_vs_eager"] = eager["peak_activation_mib"] / max(ours["peak_activation_mib"], 1e-9)


def goals(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``extraction_<figure>_b<batch>`` for every fast3d row that has its ratios."""
    definitions = {
        "speedup_vs_eager": "time per sample: eager output_attentions / fast3d capture",
        "memory_ratio_vs_eager": "peak activation memory: eager output_attentions / fast3d capture",
    }
    return {
        f"extraction_{figure}_b{row['batch']}": goal(
            row[figure], target, f"{definitions[figure]}, batch {row['batch']}, {row['seq']} tokens"
        )
        for row in rows
        if row["variant"] == "fast3d" and "speedup_vs_eager" in row
        for figure, target in GOALS.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=("sample", "vicuna-7b"), default="sample")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--seq", type=int, default=385)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one", nargs=2, metavar=("VARIANT", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # child process: one variant, one batch size, result as JSON
        print(json.dumps(measure(args, args.one[0], int(args.one[1]))))
        return
    rows = []
    for batch in args.batch:
        for variant in ("fast3d", "eager"):
            cmd = [
                sys.executable,
                __file__,
                "--model",
                args.model,
                "--device",
                args.device,
                "--seq",
                str(args.seq),
                "--repeats",
                str(args.repeats),
                "--one",
                variant,
                str(batch),
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(rows[-1], file=sys.stderr)
    add_ratios(rows)
    name = f"extract_{args.model}_{args.device.split(':')[0]}"
    path = write_result(
        name,
        {
            "benchmark": "extract",
            "model": args.model,
            "environment": environment(args.device),
            "rows": rows,
            "goals": goals(rows),
        },
    )
    print(path)


if __name__ == "__main__":
    main()
