"""Benchmark: dense vs pruned (real token removal) inference on a Vicuna-7B-shaped Llama.

The model is ``LlamaForCausalLM(LlamaConfig(**VICUNA_7B))`` with random weights (speed does not depend on
them), bf16, SDPA attention, built directly on the GPU. Prompts have the Chat-Scene layout (spec §1.4):
45 prefix tokens (BOS included) + 300 visual tokens (100 objects x 3) + a text part of 30..50 tokens
(``]. USER: `` + the user text; mean ~40), random embeddings, **left-padded** to the longest prompt of the
batch (the text lengths differ per sample). Pruning keeps 10 of the 100 objects (30 of the 300 visual
tokens) from layer K = 0, with :class:`~fast3d_cli.pruning.engine.PrunedDecoder` and random object scores.

Measurements (median of ``--repeats`` timed runs after ``--warmup`` untimed ones; CUDA: synchronize +
perf_counter, peak ``torch.cuda.max_memory_allocated`` per case):

1. prefill latency at batch 1 and ``--batch``: ``HFCausalLMDecoder.prefill`` vs ``PrunedDecoder.prefill``;
2. greedy generation of exactly ``--max-new-tokens`` tokens at ``--batch`` (EOS id -1, never produced;
   repetition penalty 1.0), generated tokens/s, dense vs pruned;
3. beam search (5 beams, official repetition penalty 3.0, length penalty 1, min length 1, EOS id -1 so
   every sample generates exactly ``--max-new-tokens`` tokens), samples/s:
   - official Fast3D protocol: batch 1 (the samples one after another, unpadded), masking only
     (:class:`~fast3d_cli.pruning.engine.MaskedDecoder`, same static keep set, full-length sequence);
   - ours at batch 1: :class:`PrunedDecoder` (removal only, no batching);
   - ours batched: :class:`PrunedDecoder` at ``--batch`` (halved on CUDA out-of-memory);
   - dense HF at batch 1 for reference.

    python benchmarks/pruned_inference.py                       # CUDA if available, else CPU (tiny config)
    python benchmarks/pruned_inference.py --device cuda --config vicuna7b --batch 16 --repeats 5

On CPU the default is a scaled-down config in float32 (``TINY``) with few repeats; the result file then
says so. Writes ``<out-dir>/<out>.json`` (default ``benchmarks/results/pruned_inference_<device>.json``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, VICUNA_7B, Timer, environment, goal, write_result

# Scaled-down Llama for CPU runs and tests: same sequence layout, ~1/16 width, 4 layers.
TINY = {
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "vocab_size": 1024,
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 4096,
}
CONFIGS = {"vicuna7b": VICUNA_7B, "tiny": TINY}

PREFIX, N_OBJECTS, GROUP = 45, 100, 3  # spec §1.4 / §5: visual span [45, 345)
N_VISUAL = N_OBJECTS * GROUP
TEXT_MIN, TEXT_MAX = 30, 50  # "]. USER: " + user text, ~40 tokens on average
BOS, NEVER_EOS = 1, -1  # no vocabulary id is -1: every row generates exactly max_new_tokens tokens
NUM_BEAMS, OFFICIAL_REPETITION_PENALTY = 5, 3.0

GOALS = {  # measured / baseline >= target
    "prefill_speedup": 2.8,
    "greedy_throughput_ratio": 1.25,
    "samples_per_s_ratio_vs_official": 10.0,
}
CPU_NOTE = "CPU run with a scaled-down config; the 7B GPU figures are pending"


# ---------------------------------------------------------------------------------------------- setup


def build_model(config_name: str, device: str, dtype):
    """Random-weight Llama created directly on ``device`` in ``dtype`` (no fp32 CPU copy of 7B weights)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**CONFIGS[config_name], bos_token_id=BOS, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    with torch.device(device):
        llm = LlamaForCausalLM._from_config(config, dtype=dtype, attn_implementation="sdpa")
    return llm.eval()


class Prompts:
    """``n`` left-padded Chat-Scene-shaped prompts with random embeddings and random object scores."""

    def __init__(self, n: int, hidden: int, device: str, dtype, keep_objects: int, seed: int = 0) -> None:
        import torch

        gen = torch.Generator().manual_seed(seed)
        self.text = torch.randint(TEXT_MIN, TEXT_MAX + 1, (n,), generator=gen).tolist()
        self.lengths = [PREFIX + N_VISUAL + t for t in self.text]
        width = max(self.lengths)
        embeds = torch.zeros(n, width, hidden)
        mask = torch.zeros(n, width, dtype=torch.long)
        for i, length in enumerate(self.lengths):
            embeds[i, width - length :] = 0.02 * torch.randn(length, hidden, generator=gen)
            mask[i, width - length :] = 1
        self.pad = [width - length for length in self.lengths]
        self.embeds = embeds.to(device=device, dtype=dtype)
        self.mask = mask.to(device)
        self.visual_start = torch.tensor([p + PREFIX for p in self.pad], device=device)
        self.scores = torch.randn(n, N_OBJECTS, generator=gen).to(device)
        self.keep = torch.full((n,), keep_objects, dtype=torch.long, device=device)

    def __len__(self) -> int:
        return len(self.lengths)

    def single(self, i: int):
        """Sample ``i`` alone, unpadded: (embeds [1, T, H], mask [1, T], visual_start [1])."""
        import torch

        embeds = self.embeds[i : i + 1, self.pad[i] :]
        mask = self.mask[i : i + 1, self.pad[i] :]
        return embeds, mask, torch.full_like(self.visual_start[:1], PREFIX)

    def plan(self, layer: int, rows: slice | None = None, visual_start=None):
        from fast3d_cli.pruning.engine import PruningPlan

        rows = rows or slice(None)
        start = self.visual_start[rows] if visual_start is None else visual_start
        return PruningPlan(layer, start, N_OBJECTS, GROUP, scores=self.scores[rows], keep=self.keep[rows])


def keep_sets(llm, prompts: Prompts, layer: int):
    """[B, 300] bool: the visual tokens PrunedDecoder keeps for each prompt (the static keep set)."""
    import torch

    from fast3d_cli.pruning.engine import PrunedDecoder

    decoder = PrunedDecoder(llm, prompts.plan(layer))
    decoder.prefill(prompts.embeds, prompts.mask)
    kept = decoder.report.kept_visual
    keep = torch.zeros(kept.shape[0], N_VISUAL, dtype=torch.bool)
    for row in range(kept.shape[0]):
        keep[row, kept[row][kept[row] >= 0]] = True
    return keep


# ---------------------------------------------------------------------------------------------- timing


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else float("inf")


# ---------------------------------------------------------------------------------------------- cases


def prefill_cases(llm, prompts: Prompts, timer: Timer, layer: int) -> list[dict[str, Any]]:
    from fast3d_cli.generation import HFCausalLMDecoder
    from fast3d_cli.pruning.engine import PrunedDecoder

    dense = HFCausalLMDecoder(llm)
    rows = []
    one = prompts.single(0)
    inputs = {1: (one[0], one[1], prompts.plan(layer, slice(0, 1), one[2]))}
    inputs[len(prompts)] = (prompts.embeds, prompts.mask, prompts.plan(layer))
    for batch, (embeds, mask, plan) in inputs.items():
        pruned = PrunedDecoder(llm, plan)
        for variant, decoder in (("dense", dense), ("pruned", pruned)):
            result = timer(lambda d=decoder, e=embeds, m=mask: d.prefill(e, m)[0])
            rows.append({"variant": variant, "batch": batch, "prompt_tokens": int(mask.sum()), **result})
            rows[-1]["ms_per_sample"] = 1000 * result["median_s"] / batch
            print(_line("prefill", rows[-1]), file=sys.stderr)
        dense_row, pruned_row = rows[-2], rows[-1]
        pruned_row["speedup_vs_dense"] = _ratio(dense_row["median_s"], pruned_row["median_s"])
    return rows


class PrefillClock:
    """Decoder proxy that times its own prefill (synchronised), to split a generate() run's wall time into
    prefill and decoding without a second measurement."""

    def __init__(self, decoder: Any, sync: Callable[[], None]) -> None:
        self.decoder, self.sync = decoder, sync
        self.seconds: list[float] = []

    def prefill(self, inputs_embeds, attention_mask):
        self.sync()
        start = time.perf_counter()
        out = self.decoder.prefill(inputs_embeds, attention_mask)
        self.sync()
        self.seconds.append(time.perf_counter() - start)
        return out

    def step(self, token_ids, state):
        return self.decoder.step(token_ids, state)

    def select(self, state, row_index):
        return self.decoder.select(state, row_index)


def greedy_cases(
    llm, prompts: Prompts, timer: Timer, layer: int, max_new_tokens: int
) -> list[dict[str, Any]]:
    from fast3d_cli.generation import GenerationConfig, HFCausalLMDecoder, generate
    from fast3d_cli.pruning.engine import PrunedDecoder

    config = GenerationConfig(num_beams=1, max_new_tokens=max_new_tokens, repetition_penalty=1.0)
    batch = len(prompts)
    rows = []
    for variant, decoder in (
        ("dense", HFCausalLMDecoder(llm)),
        ("pruned", PrunedDecoder(llm, prompts.plan(layer))),
    ):
        produced: list[int] = []
        clock = PrefillClock(decoder, timer.sync)

        def run(d=clock, produced=produced) -> None:
            out = generate(d, prompts.embeds, prompts.mask, config, NEVER_EOS, BOS)
            produced.append(sum(len(o) for o in out))

        result = timer(run)
        if set(produced) != {batch * max_new_tokens}:
            raise RuntimeError(f"greedy {variant} produced {sorted(set(produced))} tokens, not forced length")
        prefill_s = clock.seconds[-result["runs"] :]
        decode_s = [total - first for total, first in zip(result["times_s"], prefill_s, strict=True)]
        row = {
            "variant": variant,
            "batch": batch,
            "new_tokens_per_row": max_new_tokens,
            "generated_tokens": batch * max_new_tokens,
            **result,
            "tokens_per_s": batch * max_new_tokens / result["median_s"],
            # each run = prefill + (max_new_tokens - 1) decode steps; prefill timed inside the same runs
            "prefill_median_s": statistics.median(prefill_s),
            "decode_ms_per_step": 1000 * statistics.median(decode_s) / max(max_new_tokens - 1, 1),
        }
        rows.append(row)
        print(_line("greedy", row), file=sys.stderr)
    rows[1]["throughput_ratio_vs_dense"] = _ratio(rows[1]["tokens_per_s"], rows[0]["tokens_per_s"])
    rows[1]["decode_step_speedup_vs_dense"] = _ratio(
        rows[0]["decode_ms_per_step"], rows[1]["decode_ms_per_step"]
    )
    return rows


def beam_cases(
    llm, prompts: Prompts, timer: Timer, layer: int, max_new_tokens: int, cuda: bool
) -> list[dict[str, Any]]:
    import torch

    from fast3d_cli.generation import GenerationConfig, HFCausalLMDecoder, generate
    from fast3d_cli.pruning.engine import MaskedDecoder, PrunedDecoder

    config = GenerationConfig(
        num_beams=NUM_BEAMS,
        max_new_tokens=max_new_tokens,
        repetition_penalty=OFFICIAL_REPETITION_PENALTY,
        length_penalty=1.0,
        min_length=1,
    )
    keep = keep_sets(llm, prompts, layer).to(prompts.embeds.device)
    n = len(prompts)
    singles = [prompts.single(i) for i in range(n)]

    def one_by_one(make_decoder: Callable[[int], Any]) -> Callable[[], None]:
        def run() -> None:
            for i, (embeds, mask, _) in enumerate(singles):
                out = generate(make_decoder(i), embeds, mask, config, NEVER_EOS, BOS)
                assert len(out[0]) == max_new_tokens, "beam search did not generate the forced length"

        return run

    cases: list[tuple[str, str, int, Callable[[], None]]] = [
        (
            "official_masked",
            "batch 1 (samples one after another), MaskedDecoder: masking only, full-length sequence",
            1,
            one_by_one(lambda i: MaskedDecoder(llm, layer, singles[i][2], keep[i : i + 1])),
        ),
        (
            "ours_pruned_b1",
            "batch 1 (samples one after another), PrunedDecoder: token removal only",
            1,
            one_by_one(lambda i: PrunedDecoder(llm, prompts.plan(layer, slice(i, i + 1), singles[i][2]))),
        ),
        (
            "dense_b1",
            "batch 1 (samples one after another), HFCausalLMDecoder: no pruning (reference)",
            1,
            one_by_one(lambda i: HFCausalLMDecoder(llm)),
        ),
    ]
    rows = []
    for name, what, batch, run in cases:
        result = timer(run)
        rows.append(_beam_row(name, what, batch, n, max_new_tokens, result))
        print(_line("beam", rows[-1]), file=sys.stderr)

    batch = n
    while True:  # ours batched: the largest batch (<= --batch) that fits; all n samples in chunks
        try:
            result = timer(batched(llm, prompts, layer, config, batch))
            break
        except torch.cuda.OutOfMemoryError:
            if not cuda or batch == 1:
                raise
            batch //= 2
            torch.cuda.empty_cache()
            print(f"out of memory: retrying ours batched at batch {batch}", file=sys.stderr)
    rows.append(
        _beam_row(
            f"ours_pruned_b{batch}",
            f"batch {batch}, PrunedDecoder: token removal + batching",
            batch,
            n,
            max_new_tokens,
            result,
        )
    )
    print(_line("beam", rows[-1]), file=sys.stderr)
    official = rows[0]["samples_per_s"]
    for row in rows[1:]:
        row["samples_per_s_ratio_vs_official"] = _ratio(row["samples_per_s"], official)
    return rows


def batched(llm, prompts: Prompts, layer: int, config, batch: int) -> Callable[[], None]:
    """All prompts through PrunedDecoder + beam search in chunks of ``batch`` (one chunk when it is B)."""
    from fast3d_cli.generation import generate
    from fast3d_cli.pruning.engine import PrunedDecoder

    chunks = []
    for start in range(0, len(prompts), batch):
        rows = slice(start, start + batch)
        mask = prompts.mask[rows]
        trim = min(prompts.pad[rows])  # padding columns that every row of the chunk shares
        plan = prompts.plan(layer, rows, prompts.visual_start[rows] - trim)
        chunks.append((PrunedDecoder(llm, plan), prompts.embeds[rows, trim:], mask[:, trim:]))

    def run() -> None:
        for decoder, embeds, mask in chunks:
            out = generate(decoder, embeds, mask, config, NEVER_EOS, BOS)
            assert all(len(o) == config.max_new_tokens for o in out), "beam search: not the forced length"

    return run


def _beam_row(
    name: str, what: str, batch: int, samples: int, max_new_tokens: int, result: dict[str, Any]
) -> dict[str, Any]:
    return {
        "case": name,
        "protocol": what,
        "batch": batch,
        "num_beams": NUM_BEAMS,
        "samples": samples,
        "new_tokens_per_sample": max_new_tokens,
        **result,
        "samples_per_s": samples / result["median_s"],
    }


def _line(kind: str, row: dict[str, Any]) -> str:
    keys = ("variant", "case", "batch", "median_s", "tokens_per_s", "decode_ms_per_step", "samples_per_s")
    keys += ("peak_mib",)
    parts = [f"{k}={row[k]:.4g}" if isinstance(row[k], float) else f"{k}={row[k]}" for k in keys if k in row]
    return f"[{kind}] " + " ".join(parts)


# ---------------------------------------------------------------------------------------------- report


def flops_summary(llm_config, prompts: Prompts, layer: int, keep_objects: int) -> dict[str, Any]:
    from fast3d_cli.pruning.flops import prefill_flops

    removed = (N_OBJECTS - keep_objects) * GROUP
    dense = [prefill_flops(llm_config, t, 0, layer) for t in prompts.lengths]
    pruned = [prefill_flops(llm_config, t, removed, layer) for t in prompts.lengths]
    return {
        "visual_removed": removed,
        "layer": layer,
        "dense_gflops_per_sample": sum(dense) / len(dense) / 1e9,
        "pruned_gflops_per_sample": sum(pruned) / len(pruned) / 1e9,
        "ratio_dense_over_pruned": sum(dense) / sum(pruned),
        "batch1_ratio_dense_over_pruned": dense[0] / pruned[0],
    }


def prefill_goal(prefill: list[dict], batch: int) -> tuple[float, str]:
    row = next(r for r in prefill if r["variant"] == "pruned" and r["batch"] == batch)
    return row["speedup_vs_dense"], f"prefill at batch {batch}: dense latency / pruned latency"


def greedy_goal(greedy: list[dict]) -> tuple[float, str]:
    pruned = next(r for r in greedy if r["variant"] == "pruned")
    return pruned["throughput_ratio_vs_dense"], f"greedy tokens/s at batch {pruned['batch']}: pruned / dense"


def beam_goal(beam: list[dict]) -> tuple[float, str]:
    batched = beam[-1]
    definition = f"beam-{NUM_BEAMS} samples/s: {batched['case']} / official_masked (batch 1)"
    return batched["samples_per_s_ratio_vs_official"], definition


def goals(prefill: list[dict], greedy: list[dict], beam: list[dict], batch: int) -> dict[str, Any]:
    measured = {
        "prefill_speedup": prefill_goal(prefill, batch),
        "greedy_throughput_ratio": greedy_goal(greedy),
        "samples_per_s_ratio_vs_official": beam_goal(beam),
    }
    return {name: goal(value, GOALS[name], definition) for name, (value, definition) in measured.items()}


def select_gather_backend(values) -> str:
    """What PrunedDecoder's fast3d_kernels.select_gather dispatches to for these tensors."""
    from fast3d_kernels import resolve_backend

    return resolve_backend("auto", values)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    import torch

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--config", choices=tuple(CONFIGS), help="default: vicuna7b on CUDA, tiny on CPU")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), help="default: bf16 CUDA, fp32 CPU")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, help="timed runs per case (default: 5 CUDA, 3 CPU)")
    parser.add_argument("--warmup", type=int, help="untimed runs per case (default: 2 CUDA, 1 CPU)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--layer", type=int, default=0, help="pruning layer K")
    parser.add_argument("--keep-objects", type=int, default=10, help="objects kept (x3 visual tokens)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's default)")
    parser.add_argument("--out", help="result name (default: pruned_inference_<device>)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    cuda = args.device.startswith("cuda")
    args.config = args.config or ("vicuna7b" if cuda else "tiny")
    args.dtype = args.dtype or ("bfloat16" if cuda else "float32")
    args.repeats = args.repeats if args.repeats is not None else (5 if cuda else 3)
    args.warmup = args.warmup if args.warmup is not None else (2 if cuda else 1)
    args.out = args.out or f"pruned_inference_{args.device.split(':')[0]}"
    if args.batch < 1 or args.repeats < 1 or args.warmup < 0 or args.max_new_tokens < 1:
        parser.error("--batch, --repeats, --max-new-tokens must be >= 1 and --warmup >= 0")
    if not 0 <= args.keep_objects <= N_OBJECTS:
        parser.error(f"--keep-objects must lie in [0, {N_OBJECTS}]")
    return args


def main(argv: Sequence[str] | None = None) -> Path:
    import torch

    args = parse_args(argv)
    previous_threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return run(args)
    finally:
        torch.set_num_threads(previous_threads)


def run(args: argparse.Namespace) -> Path:
    import torch

    cuda = args.device.startswith("cuda")
    dtype = getattr(torch, args.dtype)
    load_before = os.getloadavg()[0]
    with torch.inference_mode():
        llm = build_model(args.config, args.device, dtype)
        prompts = Prompts(args.batch, llm.config.hidden_size, args.device, dtype, args.keep_objects)
        timer = Timer(args.device, args.repeats, args.warmup)
        prefill = prefill_cases(llm, prompts, timer, args.layer)
        greedy = greedy_cases(llm, prompts, timer, args.layer, args.max_new_tokens)
        beam = beam_cases(llm, prompts, timer, args.layer, args.max_new_tokens, cuda)
        flops = flops_summary(llm.config, prompts, args.layer, args.keep_objects)
    env = environment(args.device) | {"host_load_1min_before_after": [load_before, os.getloadavg()[0]]}
    payload: dict[str, Any] = {"benchmark": "pruned_inference", "environment": env}
    if not cuda or args.config != "vicuna7b":
        payload["note"] = CPU_NOTE if not cuda else "scaled-down config; not the 7B figures"
    payload |= {
        "config": {
            "name": args.config,
            "llama": CONFIGS[args.config],
            "dtype": args.dtype,
            "attn_implementation": "sdpa",
            "weights": "random (HF init, seed 0)",
            "select_gather_backend": select_gather_backend(prompts.embeds),
            "weights_mib": sum(p.numel() * p.element_size() for p in llm.parameters()) / 2**20,
        },
        "layout": {
            "prefix_tokens": PREFIX,
            "visual_tokens": N_VISUAL,
            "objects": N_OBJECTS,
            "tokens_per_object": GROUP,
            "text_tokens": prompts.text,
            "prompt_tokens": prompts.lengths,
            "padding": f"left, to the longest prompt of the batch ({max(prompts.lengths)} tokens); "
            "batch-1 cases run each sample unpadded",
            "pruning_layer": args.layer,
            "kept_objects": args.keep_objects,
            "kept_visual_tokens": args.keep_objects * GROUP,
            "scores": "random (standard normal per object), PruningPlan(keep=...)",
        },
        "settings": {
            "batch": args.batch,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "max_new_tokens": args.max_new_tokens,
            "timing": "median of repeats after warmup runs; torch.cuda.synchronize + perf_counter on CUDA",
            "memory": "CUDA only: peak_mib = torch.cuda.max_memory_allocated over a case's runs (peak stats "
            "reset before each case); peak_above_idle_mib = that minus the memory allocated before any case "
            "(weights + prompt embeddings)",
            "greedy": "num_beams 1, repetition_penalty 1.0, eos id -1 (never produced)",
            "beam": f"num_beams {NUM_BEAMS}, repetition_penalty {OFFICIAL_REPETITION_PENALTY}, "
            "length_penalty 1, min_length 1, eos id -1 (never produced)",
        },
        "flops": flops,
        "prefill": prefill,
        "greedy": greedy,
        "beam": beam,
        "goals": goals(prefill, greedy, beam, args.batch),
    }
    path = write_result(args.out, payload, args.out_dir)
    for name, entry in payload["goals"].items():
        status = "PASS" if entry["met"] else "FAIL"
        print(f"{name}: {entry['measured']:.3g} (target {entry['target']}) {status}", file=sys.stderr)
    print(path)
    return path


if __name__ == "__main__":
    main()
