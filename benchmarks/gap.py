"""Benchmark: GAP prediction throughput, and its cost per sample relative to the target model's prefill.

Two GAP configurations, random weights, batch 32, prompts of ``--text-len`` tokens, 100 objects:
- ``sample``: the sample-world GAP (``sample_gap_config``: tiny RoBERTa over the sample tokenizer, CMT
  hidden 128);
- ``official``: the official size (roberta-base-shaped text encoder, CMT hidden 768 x 4 layers, 1024+1024-d
  features).

The reference is the dense prefill of a Vicuna-7B-shaped Llama (hidden 4096, 32 layers, 32 heads,
intermediate 11008, vocab 32100, bf16) at ``--seq`` 385 tokens (45 prefix + 300 visual + text), batch 32.

- On CUDA both are timed (bf16 autocast for the GAP) and the fraction is measured time per sample.
- On CPU a 7B prefill is far too slow, so the fraction reported is the *analytic FLOPs ratio*:
  GAP FLOPs (counted with ``torch.utils.flop_counter`` on a real forward) over the 7B prefill FLOPs
  (matmul FLOPs of the projections, MLP, attention scores/values over the full square, and the LM head
  for the last position; the formula is checked against the flop counter on a small Llama).

    python benchmarks/gap.py                # CPU (the official size runs only --official-repeats batches)
    python benchmarks/gap.py --device cuda  # GPU: measured times and the measured fraction
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import VICUNA_7B, environment, goal, timed, write_result

FRACTION_GOAL = 0.03  # GAP time per sample <= 3% of the dense 7B prefill's


class _StubTokenizer:
    """Stands in for the sample tokenizer when the sample model is not built (only sizes matter here)."""

    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2

    def __len__(self) -> int:
        return 1200


def _sample_config():
    from fast3d_cli.gap.sample import load_sample_tokenizer, sample_gap_config

    try:
        tokenizer = load_sample_tokenizer()
    except Exception:  # the sample model is not built: a vocabulary of similar size
        tokenizer = _StubTokenizer()
    return sample_gap_config(tokenizer)


def _official_config():
    from fast3d_cli.gap import GAPConfig

    return GAPConfig()


def _tiny_config():
    """A tiny GAP for smoke runs: the same architecture with every width scaled down."""
    from fast3d_cli.gap import GAPConfig

    text = {"vocab_size": 256, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    text |= {"intermediate_size": 64, "max_position_embeddings": 128, "pad_token_id": 1, "type_vocab_size": 1}
    return GAPConfig(
        feat_dim_3d=16,
        feat_dim_2d=16,
        hidden_size=32,
        num_attention_heads=2,
        num_layers=1,
        dim_feedforward=64,
        text_config=text,
    )


GAP_CONFIGS = {"sample": _sample_config, "official": _official_config, "tiny": _tiny_config}


def gap_config(name: str):
    return GAP_CONFIGS[name]()


def gap_inputs(config, batch: int, text_len: int, device: str) -> dict[str, Any]:
    import torch

    g = torch.Generator().manual_seed(0)
    n = config.max_obj_num
    vocab = int(config.text_config["vocab_size"])
    ids = torch.randint(3, vocab, (batch, text_len), generator=g)
    inputs = {
        "feats_3d": torch.randn(batch, n, config.feat_dim_3d, generator=g),
        "feats_2d": torch.randn(batch, n, config.feat_dim_2d, generator=g),
        "locs": torch.rand(batch, n, config.dim_loc, generator=g) * 5,
        "input_ids": ids,
        "attention_mask": torch.ones(batch, text_len, dtype=torch.long),
    }
    return {k: v.to(device) for k, v in inputs.items()}


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """QK^T and AV matmul FLOPs of one attention call (the full square, as torch counts the CUDA kernels)."""
    b, h, q, e = query_shape
    return 2 * b * h * q * key_shape[-2] * (e + value_shape[-1])


def count_flops(fn) -> int:
    """Matmul FLOPs of ``fn()``; torch's counter misses the CPU flash-attention kernel, so it is added."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    extra = {}
    cpu_sdpa = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_sdpa is not None:
        extra[cpu_sdpa] = _sdpa_flops
    with FlopCounterMode(display=False, custom_mapping=extra) as counter, torch.inference_mode():
        fn()
    return counter.get_total_flops()


def llama_prefill_flops(cfg: dict[str, int], seq: int) -> int:
    """Matmul FLOPs of one sample's prefill: projections + MLP per token, QK^T and AV over the full
    seq x seq square per layer, LM head on the last position (what generation computes)."""
    d, ff, layers, vocab = (
        cfg["hidden_size"],
        cfg["intermediate_size"],
        cfg["num_hidden_layers"],
        cfg["vocab_size"],
    )
    kv = d * cfg["num_key_value_heads"] // cfg["num_attention_heads"]
    per_token = 2 * (2 * d * d + 2 * d * kv + 3 * d * ff)
    attention = 2 * 2 * seq * seq * d
    return layers * (seq * per_token + attention) + 2 * d * vocab


def check_flop_formula(seq: int) -> dict[str, Any]:
    """The formula against torch's flop counter on a small Llama (real CPU forward)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    small = {**VICUNA_7B, "hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 2}
    small |= {"num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 1000}
    llm = LlamaForCausalLM._from_config(LlamaConfig(**small), attn_implementation="sdpa").eval()
    embeds = torch.randn(1, seq, 256)
    counted = count_flops(lambda: llm(inputs_embeds=embeds, logits_to_keep=1, use_cache=False))
    formula = llama_prefill_flops(small, seq)
    return {"counted": counted, "formula": formula, "relative_difference": abs(counted - formula) / counted}


def build_gap(config, device: str):
    import torch

    from fast3d_cli.gap import GAPModel

    torch.manual_seed(0)
    return GAPModel(config).to(device).eval()


def gap_forward(model, inputs: dict[str, Any], device: str):
    """One GAP forward on ``inputs`` (bf16 autocast on CUDA, as prediction runs)."""
    import torch

    cuda = device.startswith("cuda")

    def forward():
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            return model(**inputs)

    return forward


def prefill_forward(llm, batch: int, seq: int, device: str):
    """One dense prefill of ``batch`` random prompts of ``seq`` tokens (LM head on the last position only)."""
    import torch

    hidden = llm.config.hidden_size
    dtype = next(llm.parameters()).dtype
    g = torch.Generator().manual_seed(0)
    embeds = (torch.randn(batch, seq, hidden, generator=g) * 0.02).to(device, dtype)
    mask = torch.ones(batch, seq, dtype=torch.long, device=device)

    def forward():
        with torch.inference_mode():
            return llm(inputs_embeds=embeds, attention_mask=mask, logits_to_keep=1, use_cache=False)

    return forward


def measure_gap(name: str, args: argparse.Namespace, repeats: int) -> dict[str, Any]:
    import torch

    config = gap_config(name)
    model = build_gap(config, args.device)
    inputs = gap_inputs(config, args.batch, args.text_len, args.device)
    cuda = args.device.startswith("cuda")
    forward = gap_forward(model, inputs, args.device)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    times = timed(forward, repeats, sync)
    flops = count_flops(forward) / args.batch
    best = min(times)
    return {
        "config": name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "batch": args.batch,
        "text_len": args.text_len,
        "repeats": repeats,
        "ms_per_batch": 1000 * best,
        "samples_per_s": args.batch / best,
        "ms_per_sample": 1000 * best / args.batch,
        "gflops_per_sample": flops / 1e9,
        "precision": "bf16-autocast" if cuda else "float32",
    }


def measure_llm(args: argparse.Namespace) -> dict[str, Any]:
    """CUDA only: time the dense 7B-shaped prefill (random bf16 weights, SDPA)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**VICUNA_7B)
    with torch.device(args.device):
        llm = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa").eval()
    times = timed(
        prefill_forward(llm, args.batch, args.seq, args.device), args.repeats, torch.cuda.synchronize
    )
    best = min(times)
    return {
        "batch": args.batch,
        "seq": args.seq,
        "ms_per_batch": 1000 * best,
        "ms_per_sample": 1000 * best / args.batch,
    }


def fraction_goal(fraction: float, batch: int, seq: int, target_model: str = "7B") -> dict[str, Any]:
    definition = (
        f"GAP time per sample / dense {target_model} prefill time per sample, batch {batch}, {seq} tokens"
    )
    return goal(fraction, FRACTION_GOAL, definition, comparison="<=")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--configs", nargs="+", default=["sample", "official"], choices=("sample", "official")
    )
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--text-len", type=int, default=48, help="prompt tokens fed to the text encoder")
    parser.add_argument("--seq", type=int, default=385, help="target-model prefill length")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--official-repeats", type=int, default=2, help="timed batches of the official size on CPU"
    )
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")

    llm_flops = llama_prefill_flops(VICUNA_7B, args.seq)
    reference: dict[str, Any] = {
        "model": "Vicuna-7B shape (Llama hidden 4096, 32 layers, 32 heads, ff 11008, vocab 32100), bf16",
        "seq": args.seq,
        "batch": args.batch,
        "gflops_per_sample": llm_flops / 1e9,
        "flop_formula_check": check_flop_formula(args.seq),
    }
    if cuda:
        reference["measured"] = measure_llm(args)
    rows = []
    for name in args.configs:
        repeats = args.official_repeats if name == "official" and not cuda else args.repeats
        row = measure_gap(name, args, repeats)
        row["flops_fraction_of_prefill"] = row["gflops_per_sample"] * 1e9 / llm_flops
        if cuda:
            row["time_fraction_of_prefill"] = row["ms_per_sample"] / reference["measured"]["ms_per_sample"]
            row["goal"] = fraction_goal(row["time_fraction_of_prefill"], args.batch, args.seq)
        rows.append(row)
        print(row, file=sys.stderr)
    payload = {
        "benchmark": "gap",
        "environment": environment(args.device),
        "fraction": (
            "measured time per sample, GAP / dense 7B prefill (both on this GPU)"
            if cuda
            else "analytic FLOPs ratio (a 7B prefill is too slow to time on CPU): counted GAP FLOPs / "
            "formula 7B prefill FLOPs"
        ),
        "reference_prefill": reference,
        "rows": rows,
    }
    path = write_result(f"gap_{args.device.split(':')[0]}", payload)
    print(path)


if __name__ == "__main__":
    main()
