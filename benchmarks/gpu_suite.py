"""GPU suite: every GPU goal of issue 14 measured in one command on one GPU, written to one JSON file.

All model figures use the Vicuna-7B architecture built from its config (LlamaConfig hidden 4096, 32 layers,
32 heads, MLP 11008, vocab 32100) with random bf16 weights and SDPA attention. The model is built once and
shared by every section; prompts have the Chat-Scene layout (45 prefix + 300 visual + 30..50 text tokens).

section      what it measures (goal)                                                  reuses
-----------  -----------------------------------------------------------------------  ------------------
kernel       select+gather, Triton vs the torch composite, B=64 N=300 D=4096 bf16 SAP  topk_gather.py
             (>= 3x), and its effective bandwidth at B=64 N=4096 k=410 D=4096
             (>= 60% of peak HBM; H200: 4.8 TB/s), each plain and replayed from a CUDA
             graph
kept_counts  the kernel's kept-group counts against the torch reference on the device,  topk_gather.py
             4096 rows x (SAP at 5 alphas + top-k): exact equality on every row
model        builds the 7B model once (weights, build time)                             pruned_inference.py
prefill      prefill dense vs keep 30 of 300 visual tokens at K = 0, batch 1 and 16   pruned_inference.py
             (>= 2.8x at batch 16)
method_prefill
             one prefill per Chat-Scene method of the pruning registry at ~90%          method_prefill.py
             layer-averaged pruning, batch 16: its selection time outside the LLM
             (synthetic score tensors for the store/network methods), its pruned
             prefill, the dense one, the ratio it kept, FLOPs dense / pruned (each
             method: dense / (selection + pruned prefill) >= 1); multi-stage methods
             drop at layers 2, 4, 6 (see method_prefill.py)
greedy       greedy 32-token throughput at batch 16, pruned / dense (>= 1.25x)         pruned_inference.py
extraction   fast3d's attention capture vs eager output_attentions at 385 tokens,      extract.py
             batch 1 and 8 (>= 3x faster, >= 5x less activation memory)
gap          official-size GAP time per sample / dense 7B prefill time per sample at   gap.py
             batch 32 (<= 3%)
beam         official protocol (batch 1, beam 5, MaskedDecoder masking) vs ours        pruned_inference.py
             (PrunedDecoder removal, batched) at beam 5, 16 samples x 32 tokens
             (>= 10x samples/s)

Timing: medians over timed runs after warm-up runs; torch.cuda.synchronize + perf_counter for the model
sections, CUDA events for the kernel. Memory: torch.cuda.max_memory_allocated above what was allocated
before the call.

Time budget (one H200, at most 8 minutes in all). Each section has a cap on its timed runs: within it,
every case runs its warm-up runs and at least one timed run, and starts no further timed run that would end
past its share of the cap, so a slow section costs repeats, not minutes. When earlier sections overran, the
caps of the pending ones shrink in proportion to what is left of --budget-s (450 s from the start of the
process, imports included), and a section that would start after it is recorded as skipped. Estimates:

    section      cap    expected   what takes the time
    startup        -     ~15 s     imports, CUDA context
    kernel        40 s   ~15 s     2 Triton compiles, 2 GiB top-k input, 100 timed calls x 3 modes x 2 cases
    kept_counts   15 s    ~5 s     2 more compiles, 6 x 4096 rows
    model          -     ~15 s     6.7 B random bf16 weights created on the GPU (13.5 GB)
    prefill       30 s    ~5 s     4 cases x (3 warm-up + 10 timed), ~0.15 s per batch-16 prefill
    method_prefill
                  60 s   ~15 s     dense + 12 methods, each 3 warm-up + 10 timed prefills at batch 16
                                   (+ as many selection calls for 8 of them). From FLOPs: the dense
                                   prefill is 16 x ~385 tokens x 2 x 6.5 G = ~80 TFLOP, ~0.15 s (the
                                   prefill section); the methods' flops_ratio at 90% is 3.3x-3.4x, so
                                   ~0.05 s each: 13 x 0.15 s + 12 x 13 x 0.05 s = ~10 s; selections
                                   (at most 10 greedy picks over [16, 100] objects) take a few ms
    greedy        40 s   ~15 s     2 cases x (1 + 5) runs of 32 tokens at batch 16
    extraction    30 s    ~5 s     4 cases; eager at batch 8 holds ~10 GB of attention maps
    gap           30 s    ~5 s     official GAP build (fp32 on CPU, then the GPU) + 2 cases at batch 32
    beam         160 s   ~60 s     3 batch-1 cases x 16 samples x 32 steps x 5 beams (~5-10 s a pass,
                                   1 warm-up + up to 3 timed) + the batched case (~1 s a pass)
    total        405 s  ~155 s     + ~30 s startup and model build: ~3 minutes expected, under 7.5 at the
                                   caps (and --budget-s, 450 s, shrinks them when earlier ones overran)

Every section runs under a guard: a failure (an exception, CUDA out of memory) is recorded in the JSON
with its traceback, and the other sections still run. The JSON is rewritten after every section, so a run
killed at its time limit leaves the finished sections. It holds the device, versions, date, git commit,
every section's figures, and every goal with its target and met / missed (null when not measured, e.g.
when its section failed). Exit code 0 when every section ran, 1 when one failed, 2 on a usage error.

How to run it, on any machine with a CUDA GPU, from the repository root (the suite uses GPU 0):

    pip install torch transformers triton numpy   # or any image that has them; no install of fast3d needed
    python benchmarks/gpu_suite.py --out-dir DIR

It needs torch with CUDA, transformers >= 5, triton and numpy, and nothing else: it imports fast3d_cli and
fast3d_kernels (kernels/fast3d_kernels/) from this checkout when the project is not installed, and never
imports the stage-only dependencies zarr, numcodecs, crc32c, google-crc32c, donfig or pycocoevalcap
(tests/test_benchmarks_smoke.py runs --smoke with those blocked and the project not installed). An
installed `pip install -e .` works too. Memory: the model's weights take 13.5 GB and eager extraction at
batch 8 about 10 GB more; shapes and time budgets were set for one H200 (141 GB). On a smaller GPU a section
that runs out of memory is recorded as failed and the others still run.

It writes DIR/gpu_suite_<gpu>.json (e.g. gpu_suite_h100_80gb_hbm3.json; --out NAME changes the name;
without --out-dir it goes to benchmarks/results/), rewritten after every section, prints one line per goal
on stderr (met / MISSED / not measured) and the JSON's path on stdout. Keep a log with

    mkdir -p DIR
    PYTHONUNBUFFERED=1 python benchmarks/gpu_suite.py --out-dir DIR 2>&1 | tee DIR/gpu_suite.log

The commit recorded in the JSON is `git rev-parse HEAD` of the checkout (with "+dirty" when tracked files
differ). Where the copy that runs has no usable .git, pass the commit yourself: --commit HASH, with the
output of `git rev-parse HEAD` in the checkout you copied. To publish a run, copy the JSON into
benchmarks/results/ and fill the GPU columns of docs/results.md from it.

Smoke check (CPU, tiny shapes, a scaled-down Llama in fp32, the Triton kernel in the interpreter; same
section code, ~20 s; the JSON goes to a temporary folder, never to benchmarks/results/):

    python benchmarks/gpu_suite.py --smoke
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import re
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    RESULTS,
    Timer,
    activation_peak_mib,
    ensure_project_importable,
    environment,
    git_commit,
    goal,
    write_result,
)

STARTED = time.perf_counter()  # the budget counts from here (before torch is imported)

# Packages the GPU image does not have; the suite must not import them (checked by the smoke test).
NOT_IN_GPU_IMAGE = ("zarr", "numcodecs", "crc32c", "google_crc32c", "donfig", "pycocoevalcap")
PRUNING_LAYER, KEEP_OBJECTS = 0, 10  # keep 10 of 100 objects = 30 of 300 visual tokens, from layer K = 0
PREFIX_TOKENS = 45


# ---------------------------------------------------------------------------------------------- profiles


@dataclass(frozen=True)
class Plan:
    """A section's time cap and its repeats (timed runs) and warm-up runs per case."""

    cap_s: float
    repeats: int
    warmup: int


@dataclass(frozen=True)
class Profile:
    """Shapes, device and budgets of one kind of run. ``gpu`` is the real one; ``smoke`` keeps the same
    sections and changes only sizes, device and dtype."""

    name: str
    device: str
    dtype: str
    llama: str  # a key of pruned_inference.CONFIGS
    batch: int  # prefill, greedy and beam batch (also the number of beam-search samples)
    max_new_tokens: int
    extract_batches: tuple[int, ...]
    extract_seq: int
    kernel_cases: dict[str, dict[str, Any]]
    count_rows: int
    count_dim: int
    gap_config: str  # a key of gap.GAP_CONFIGS
    gap_batch: int
    gap_text_len: int
    prefill_seq: int
    total_budget_s: float
    plans: dict[str, Plan]
    method_ratio: float = 90.0  # method_prefill: layer-averaged pruning ratio, percent
    threads: int | None = None


def _gpu_profile() -> Profile:
    from topk_gather import CASES

    return Profile(
        name="gpu",
        device="cuda",
        dtype="bfloat16",
        llama="vicuna7b",
        batch=16,
        max_new_tokens=32,
        extract_batches=(1, 8),
        extract_seq=385,
        kernel_cases=CASES,
        count_rows=4096,
        count_dim=16,
        gap_config="official",
        gap_batch=32,
        gap_text_len=48,
        prefill_seq=385,
        total_budget_s=450,
        plans={
            "kernel": Plan(40, 100, 10),
            "kept_counts": Plan(15, 1, 0),
            "model": Plan(0, 1, 0),
            "prefill": Plan(30, 10, 3),
            "method_prefill": Plan(60, 10, 3),
            "greedy": Plan(40, 5, 1),
            "extraction": Plan(30, 10, 2),
            "gap": Plan(30, 10, 3),
            "beam": Plan(160, 3, 1),
        },
    )


def _smoke_profile() -> Profile:
    sap = {"batch": 2, "groups": 20, "group": 3, "tokens": 60, "dim": 32, "alpha": 0.3}
    topk = {"batch": 2, "groups": 64, "group": 1, "tokens": 64, "dim": 32, "k": 7}
    return Profile(
        name="smoke",
        device="cpu",
        dtype="float32",
        llama="tiny",
        batch=2,
        max_new_tokens=3,
        extract_batches=(1, 2),
        extract_seq=385,
        kernel_cases={"sap": sap, "topk": topk},
        count_rows=8,
        count_dim=4,
        gap_config="tiny",
        gap_batch=4,
        gap_text_len=16,
        prefill_seq=385,
        total_budget_s=300,
        plans={name: Plan(10, 1, 1) for name in SECTIONS}
        | {"kernel": Plan(10, 1, 0), "beam": Plan(10, 1, 0)},
        method_ratio=60.0,  # the 4-layer tiny model: fastv (K = 1) and 1 drop at layer 1 reach at most 75%
        threads=1,
    )


PROFILES: dict[str, Callable[[], Profile]] = {"gpu": _gpu_profile, "smoke": _smoke_profile}


# ---------------------------------------------------------------------------------------------- context


class Context:
    """What sections share: the profile, the 7B model and the prompts (built once, on first use), and the
    time each section may take."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.device = profile.device
        self.cuda = profile.device.startswith("cuda")
        self.allowance_s = math.inf
        self.plan = Plan(math.inf, 1, 0)
        self.build_s: float | None = None

    @property
    def dtype(self):
        import torch

        return getattr(torch, self.profile.dtype)

    @cached_property
    def llm(self):
        from pruned_inference import build_model

        start = time.perf_counter()
        llm = build_model(self.profile.llama, self.device, self.dtype)
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        self.build_s = time.perf_counter() - start
        return llm

    @cached_property
    def prompts(self):
        from pruned_inference import Prompts

        return Prompts(self.profile.batch, self.llm.config.hidden_size, self.device, self.dtype, KEEP_OBJECTS)

    def timer(self, cases: int) -> Timer:
        """A timer whose cases share this section's allowance equally."""
        return Timer(self.device, self.plan.repeats, self.plan.warmup, budget_s=self.allowance_s / cases)


# ---------------------------------------------------------------------------------------------- sections


def kernel_section(ctx: Context) -> dict[str, Any]:
    import topk_gather

    if ctx.cuda:
        import torch

        peak, source = topk_gather.peak_bandwidth(torch.cuda.get_device_name(), None)
    else:
        peak, source = topk_gather.PEAK_GBPS["H200"], "no GPU: the H200 figure, so that the fields exist"
    plan = ctx.plan
    rows = [
        topk_gather.run_case(
            name, case, ctx.device, plan.repeats, plan.warmup, peak, triton=True, graphs=ctx.cuda
        )
        for name, case in ctx.profile.kernel_cases.items()
    ]
    goals = {name: entry for row in rows for name, entry in topk_gather.case_goals(row).items()}
    out = {"peak_gbps": peak, "peak_source": source, "rows": rows, "goals": goals}
    if not ctx.cuda:
        out["not_measured"] = "CUDA graphs need a CUDA device; the kernel ran in the Triton interpreter"
    return out


def kept_counts_section(ctx: Context) -> dict[str, Any]:
    import topk_gather

    agreement = topk_gather.kept_count_agreement(ctx.device, ctx.profile.count_rows, ctx.profile.count_dim)
    return agreement | {"goals": topk_gather.counts_goal(agreement)}


def model_section(ctx: Context) -> dict[str, Any]:
    from pruned_inference import CONFIGS, select_gather_backend

    llm = ctx.llm
    return {
        "config": ctx.profile.llama,
        "llama": CONFIGS[ctx.profile.llama],
        "dtype": ctx.profile.dtype,
        "attn_implementation": llm.config._attn_implementation,
        "weights": "random (HF init, seed 0)",
        "weights_mib": sum(p.numel() * p.element_size() for p in llm.parameters()) / 2**20,
        "build_s": ctx.build_s,
        "select_gather_backend": select_gather_backend(ctx.prompts.embeds),
        "goals": {},
    }


def prefill_section(ctx: Context) -> dict[str, Any]:
    import pruned_inference as pi
    import torch

    with torch.inference_mode():
        rows = pi.prefill_cases(ctx.llm, ctx.prompts, ctx.timer(4), PRUNING_LAYER)
        flops = pi.flops_summary(ctx.llm.config, ctx.prompts, PRUNING_LAYER, KEEP_OBJECTS)
    value, definition = pi.prefill_goal(rows, ctx.profile.batch)
    return {
        "rows": rows,
        "flops": flops,
        "goals": {"prefill_speedup": goal(value, pi.GOALS["prefill_speedup"], definition)},
    }


def method_prefill_section(ctx: Context) -> dict[str, Any]:
    import method_prefill as mp
    import torch

    with torch.inference_mode():
        result = mp.method_cases(ctx.llm, ctx.prompts, ctx.timer, ctx.profile.method_ratio)
    return {
        "target_ratio": ctx.profile.method_ratio,
        "batch": ctx.profile.batch,
        "scores_note": "synthetic inputs: see each row's 'scores' (no store, network or scene is read)",
        **result,
        "goals": mp.goals(result, ctx.profile.batch),
    }


def greedy_section(ctx: Context) -> dict[str, Any]:
    import pruned_inference as pi
    import torch

    with torch.inference_mode():
        rows = pi.greedy_cases(ctx.llm, ctx.prompts, ctx.timer(2), PRUNING_LAYER, ctx.profile.max_new_tokens)
    value, definition = pi.greedy_goal(rows)
    return {
        "rows": rows,
        "goals": {"greedy_throughput_ratio": goal(value, pi.GOALS["greedy_throughput_ratio"], definition)},
    }


def beam_section(ctx: Context) -> dict[str, Any]:
    import pruned_inference as pi
    import torch

    timer = ctx.timer(4)
    with torch.inference_mode():
        rows = pi.beam_cases(ctx.llm, ctx.prompts, timer, PRUNING_LAYER, ctx.profile.max_new_tokens, ctx.cuda)
    value, definition = pi.beam_goal(rows)
    target = pi.GOALS["samples_per_s_ratio_vs_official"]
    return {"rows": rows, "goals": {"samples_per_s_ratio_vs_official": goal(value, target, definition)}}


def extraction_section(ctx: Context) -> dict[str, Any]:
    import extract

    batches, seq = ctx.profile.extract_batches, ctx.profile.extract_seq
    llm, timer = ctx.llm, ctx.timer(2 * len(batches))
    rows, memory_method = [], ""
    for batch in batches:
        data = extract.inputs(batch, seq, llm.config.hidden_size, PREFIX_TOKENS, ctx.device, ctx.dtype)
        for variant in ("fast3d", "eager"):

            def run(variant=variant, data=data):
                return extract.run_variant(variant, llm, *data)

            timing = timer(run)
            peak_mib, memory_method = activation_peak_mib(run, ctx.device)
            rows.append(
                {
                    "variant": variant,
                    "batch": batch,
                    "seq": seq,
                    "median_s": timing["median_s"],
                    "runs": timing["runs"],
                    "ms_per_sample": 1000 * timing["median_s"] / batch,
                    "peak_activation_mib": peak_mib,
                }
            )
        del data
    extract.add_ratios(rows)
    return {"memory": memory_method, "rows": rows, "goals": extract.goals(rows)}


def gap_section(ctx: Context) -> dict[str, Any]:
    import gap
    from pruned_inference import CONFIGS

    profile = ctx.profile
    batch, config = profile.gap_batch, gap.gap_config(profile.gap_config)
    model = gap.build_gap(config, ctx.device)
    inputs = gap.gap_inputs(config, batch, profile.gap_text_len, ctx.device)
    gap_forward = gap.gap_forward(model, inputs, ctx.device)
    prefill_forward = gap.prefill_forward(ctx.llm, batch, profile.prefill_seq, ctx.device)
    timer = ctx.timer(2)
    gap_timing, prefill_timing = timer(gap_forward), timer(prefill_forward)
    fraction = gap_timing["median_s"] / prefill_timing["median_s"]  # same batch: per sample = per batch
    gap_gflops = gap.count_flops(gap_forward) / batch / 1e9
    prefill_gflops = gap.llama_prefill_flops(CONFIGS[profile.llama], profile.prefill_seq) / 1e9
    return {
        "gap": {
            "config": profile.gap_config,
            "parameters": sum(p.numel() for p in model.parameters()),
            "batch": batch,
            "text_len": profile.gap_text_len,
            "precision": "bf16-autocast" if ctx.cuda else "float32",
            "ms_per_sample": 1000 * gap_timing["median_s"] / batch,
            "runs": gap_timing["runs"],
            "gflops_per_sample": gap_gflops,
        },
        "prefill": {
            "batch": batch,
            "seq": profile.prefill_seq,
            "ms_per_sample": 1000 * prefill_timing["median_s"] / batch,
            "runs": prefill_timing["runs"],
            "gflops_per_sample": prefill_gflops,
        },
        "time_fraction_of_prefill": fraction,
        "flops_fraction_of_prefill": gap_gflops / prefill_gflops,
        "goals": {
            "gap_time_fraction_of_prefill": gap.fraction_goal(
                fraction, batch, profile.prefill_seq, profile.llama
            )
        },
    }


@dataclass(frozen=True)
class Section:
    run: Callable[[Context], dict[str, Any]]
    goals: Callable[[Profile], tuple[str, ...]] = field(default=lambda profile: ())


def _kernel_goals(profile: Profile) -> tuple[str, ...]:
    from topk_gather import CASE_GOALS

    return tuple(
        f"{case}_{CASE_GOALS[case][0].format(suffix)}"
        for case in profile.kernel_cases
        for suffix in ("", "_graph")
    )


def _extraction_goals(profile: Profile) -> tuple[str, ...]:
    from extract import GOALS

    return tuple(f"extraction_{figure}_b{b}" for b in profile.extract_batches for figure in GOALS)


def _method_goals() -> tuple[str, ...]:
    from method_prefill import goal_names

    return goal_names()


# In running order: the kernel first (no model needed), beam last (the longest; it gets what is left).
SECTIONS: dict[str, Section] = {
    "kernel": Section(kernel_section, _kernel_goals),
    "kept_counts": Section(kept_counts_section, lambda p: ("kept_counts_equal_fraction",)),
    "model": Section(model_section),
    "prefill": Section(prefill_section, lambda p: ("prefill_speedup",)),
    "method_prefill": Section(method_prefill_section, lambda p: _method_goals()),
    "greedy": Section(greedy_section, lambda p: ("greedy_throughput_ratio",)),
    "extraction": Section(extraction_section, _extraction_goals),
    "gap": Section(gap_section, lambda p: ("gap_time_fraction_of_prefill",)),
    "beam": Section(beam_section, lambda p: ("samples_per_s_ratio_vs_official",)),
}


# ---------------------------------------------------------------------------------------------- running


def allowance(profile: Profile, pending: Sequence[str], seconds_left: float) -> float:
    """The first pending section's time: its cap, or its share of what is left in proportion to the caps of
    the pending sections when earlier ones overran."""
    caps = [profile.plans[name].cap_s for name in pending]
    cap, total = caps[0], sum(caps)
    return min(cap, seconds_left * cap / total) if total > 0 else max(seconds_left, 0.0)


def run_section(name: str, ctx: Context) -> dict[str, Any]:
    """One section under its guard: the result, or the error with its traceback."""
    start = time.perf_counter()
    try:
        result = SECTIONS[name].run(ctx)
        record = {"status": "ok", "result": result}
    except Exception as err:  # one failing section must not stop the others
        record = {
            "status": "error",
            "error": f"{type(err).__name__}: {err}",
            "traceback": traceback.format_exc(limit=-15).splitlines(),
        }
    record["seconds"] = time.perf_counter() - start
    _release_memory(ctx)
    return record


def _release_memory(ctx: Context) -> None:
    gc.collect()
    if ctx.cuda:
        import torch

        torch.cuda.empty_cache()


def collect_goals(profile: Profile, sections: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every expected goal of the sections that were run, with its section; a goal a section did not
    measure gets ``measured``/``met`` null and the reason."""
    goals: dict[str, dict[str, Any]] = {}
    for name, record in sections.items():
        result = record.get("result", {})
        found = result.get("goals", {})
        for goal_name, entry in found.items():
            goals[goal_name] = {"section": name, **entry}
        for goal_name in SECTIONS[name].goals(profile):
            if goal_name not in found:
                reason = record.get("error") or record.get("reason") or result.get("not_measured", "")
                goals[goal_name] = {"section": name, "measured": None, "met": None, "not_measured": reason}
    return goals


def summary(goals: dict[str, dict[str, Any]], sections: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "goals_met": sorted(n for n, g in goals.items() if g["met"] is True),
        "goals_missed": sorted(n for n, g in goals.items() if g["met"] is False),
        "goals_not_measured": sorted(n for n, g in goals.items() if g["met"] is None),
        "sections_failed": [n for n, s in sections.items() if s["status"] == "error"],
        "sections_skipped": [n for n, s in sections.items() if s["status"] == "skipped"],
    }


def run_suite(
    profile: Profile, names: Sequence[str], out: Path, commit: str | None, started: float | None = None
) -> dict[str, Any]:
    """Run ``names`` in order within the profile's total budget (counted from ``started``, default now),
    rewriting ``out`` after each section."""
    started = time.perf_counter() if started is None else started
    ctx = Context(profile)
    payload: dict[str, Any] = {
        "benchmark": "gpu_suite",
        "profile": profile.name,
        "environment": environment(profile.device) | {"git_commit": commit},
        "settings": asdict(profile) | {"pruning_layer": PRUNING_LAYER, "kept_objects": KEEP_OBJECTS},
        "sections": {},
    }
    if profile.name == "smoke":
        payload["note"] = "smoke run: tiny shapes on CPU to check that the suite runs; not measurements"
    sections: dict[str, dict[str, Any]] = payload["sections"]
    for i, name in enumerate(names):
        seconds_left = profile.total_budget_s - (time.perf_counter() - started)
        if seconds_left <= 0:
            sections[name] = {"status": "skipped", "reason": f"total budget {profile.total_budget_s} s spent"}
        else:
            ctx.plan = profile.plans[name]
            ctx.allowance_s = allowance(profile, names[i:], seconds_left)
            print(f"[{name}] start, {ctx.allowance_s:.0f} s of timed runs at most", file=sys.stderr)
            sections[name] = run_section(name, ctx) | {"allowance_s": ctx.allowance_s}
            print(
                f"[{name}] {sections[name]['status']} in {sections[name]['seconds']:.1f} s", file=sys.stderr
            )
        payload["goals"] = collect_goals(profile, sections)
        payload["summary"] = summary(payload["goals"], sections) | {"total_s": time.perf_counter() - started}
        write_result(out.stem, payload, out.parent)
    return payload


# ---------------------------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="gpu_suite.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny shapes on CPU (checks that the suite runs)"
    )
    parser.add_argument("--sections", nargs="+", choices=tuple(SECTIONS), help="a subset, run in suite order")
    parser.add_argument(
        "--budget-s", type=float, help="no section starts after this many seconds (default 450; smoke 300)"
    )
    parser.add_argument(
        "--commit", help="git commit to record (default: git rev-parse HEAD of this checkout)"
    )
    parser.add_argument(
        "--out", help="result name (default: gpu_suite_<gpu, e.g. h200>; smoke: gpu_suite_smoke)"
    )
    parser.add_argument(
        "--out-dir", type=Path, help="default: benchmarks/results (smoke: a new temporary folder)"
    )
    args = parser.parse_args(argv)
    if args.budget_s is not None and args.budget_s <= 0:
        parser.error("--budget-s must be > 0")
    if args.out is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+", args.out):
        parser.error("--out must be a plain file name (letters, digits, '.', '_', '-')")
    if args.smoke and args.out_dir is not None and args.out_dir.resolve() == RESULTS.resolve():
        parser.error(
            "smoke results never go to benchmarks/results (leave --out-dir out for a temporary folder)"
        )
    args.sections = [n for n in SECTIONS if n in args.sections] if args.sections else list(SECTIONS)
    return args


def device_slug(name: str) -> str:
    """'NVIDIA H200' -> 'h200'."""
    name = name.lower().removeprefix("nvidia").strip()
    return re.sub(r"[^a-z0-9]+", "_", name).strip("_") or "gpu"


def output_path(args: argparse.Namespace, profile: Profile) -> Path:
    if profile.name == "smoke":
        directory = args.out_dir or Path(tempfile.mkdtemp(prefix="gpu_suite_smoke_"))
        return directory / f"{args.out or 'gpu_suite_smoke'}.json"
    import torch

    name = args.out or f"gpu_suite_{device_slug(torch.cuda.get_device_name())}"
    return (args.out_dir or RESULTS) / f"{name}.json"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.smoke:  # the kernel runs on CPU tensors in the interpreter; must be set before triton loads
        os.environ.setdefault("TRITON_INTERPRET", "1")
    ensure_project_importable()
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("gpu_suite: error: no CUDA device; run it on a GPU, or with --smoke on CPU", file=sys.stderr)
        return 2
    profile = PROFILES["smoke" if args.smoke else "gpu"]()
    if args.budget_s is not None:
        profile = replace(profile, total_budget_s=args.budget_s)
    if profile.threads:
        torch.set_num_threads(profile.threads)
    out = output_path(args, profile)
    payload = run_suite(profile, args.sections, out, args.commit or git_commit(), STARTED)
    for name, entry in payload["goals"].items():
        if entry["met"] is None:
            print(f"{name}: not measured ({entry['not_measured']})", file=sys.stderr)
        else:
            state = "met" if entry["met"] else "MISSED"
            figure = f"{entry['measured']:.4g} ({entry['comparison']} {entry['target']})"
            print(f"{name}: {figure} {state}", file=sys.stderr)
    print(out)
    return 1 if payload["summary"]["sections_failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
