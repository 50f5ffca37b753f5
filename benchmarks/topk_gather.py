"""Benchmark: the fused Triton ``select_gather`` against the torch composite reference.

Cases (bf16 values and scores, D = 4096):
- ``sap``:  B=64, M=100 groups x group 3 -> T=300 tokens, SAP alpha 0.3, width T (the sync-free default).
  Goal: Triton >= 3x faster than the torch composite.
- ``topk``: B=64, T=4096, group 1, top-k k=410, width k (every row keeps exactly k tokens).
  Goal: >= 60% of the device's peak HBM bandwidth.

Times are medians over ``--repeats`` calls after ``--warmup`` calls: CUDA events on a GPU, wall clock on a
CPU. Effective bandwidth counts only useful bytes: kept rows read + written (2 x kept x D x 2 bytes), the
scores read, and per kept token its position read + written and its index written (8 bytes each); the
zero padding the kernel also writes is not counted. The reference is ``select_gather_reference`` as the
engine would call it, including its value checks (a few host synchronisations).

Without CUDA only the reference is timed (same shapes and dtype) and the Triton entry says so.

    python benchmarks/topk_gather.py                  # CPU: reference only
    python benchmarks/topk_gather.py --device cuda    # GPU: both, plus the fraction of peak bandwidth
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, timed, write_result

# peak HBM bandwidth (GB/s, vendor figures) by a substring of torch.cuda.get_device_name()
PEAK_GBPS = {
    "H100 PCIe": 2000.0,
    "H100 NVL": 3900.0,
    "H100": 3350.0,  # SXM, "NVIDIA H100 80GB HBM3"
    "GH200": 4000.0,
    "H200": 4800.0,
    "B200": 8000.0,
    "A100-SXM4-80GB": 2039.0,
    "A100 80GB PCIe": 1935.0,
    "A100": 1555.0,  # 40 GB parts
    "L40S": 864.0,
    "RTX 4090": 1008.0,
}
DEFAULT_PEAK_GBPS = 3350.0

CASES: dict[str, dict[str, Any]] = {
    "sap": {"batch": 64, "groups": 100, "group": 3, "tokens": 300, "dim": 4096, "alpha": 0.3},
    "topk": {"batch": 64, "groups": 4096, "group": 1, "tokens": 4096, "dim": 4096, "k": 410},
}


def peak_bandwidth(name: str, override: float | None) -> tuple[float, str]:
    if override is not None:
        return override, "--peak-gbps"
    for key, value in PEAK_GBPS.items():
        if key in name:
            return value, f"table entry {key!r}"
    return DEFAULT_PEAK_GBPS, f"unknown device {name!r}: default (H100 SXM)"


def cuda_median_us(fn: Callable[[], Any], repeats: int, warmup: int) -> float:
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return statistics.median(times)


def make_inputs(case: dict[str, Any], device: str, seed: int = 0) -> dict[str, Any]:
    import torch

    g = torch.Generator(device=device).manual_seed(seed)
    b, t, d, m = case["batch"], case["tokens"], case["dim"], case["groups"]
    values = torch.randn(b, t, d, generator=g, device=device, dtype=torch.bfloat16)
    positions = torch.arange(t, device=device).expand(b, t).contiguous()
    scores = torch.randn(b, m, generator=g, device=device, dtype=torch.bfloat16)
    kw: dict[str, Any] = {"group": case["group"]}
    if "alpha" in case:
        kw["alpha"] = torch.full((b,), case["alpha"], device=device)
    else:
        kw["k"] = torch.full((b,), case["k"], dtype=torch.int64, device=device)
        kw["width"] = case["k"]
    return {"values": values, "positions": positions, "scores": scores, **kw}


def useful_bytes(inputs: dict[str, Any], kept_tokens: int) -> int:
    values, scores = inputs["values"], inputs["scores"]
    rows = 2 * kept_tokens * values.shape[2] * values.element_size()
    return rows + scores.numel() * scores.element_size() + 3 * 8 * kept_tokens


def check(result, reference, inputs: dict[str, Any]) -> dict[str, Any]:
    """Triton vs reference: exact in both modes (SAP counts come from the same official-rule operations)."""
    import torch

    count_mismatch = int((result.kept_groups != reference.kept_groups).sum())
    fields = ("values", "positions", "index", "lengths", "kept_groups")
    same = all(torch.equal(getattr(result, f), getattr(reference, f)) for f in fields)
    return {"count_mismatch_rows": count_mismatch, "gather_equal": same}


def run_case(name: str, args: argparse.Namespace, cuda: bool, peak: float) -> dict[str, Any]:
    import torch
    from fast3d_kernels import select_gather, select_gather_reference

    case = CASES[name]
    inputs = make_inputs(case, args.device)
    reference = select_gather_reference(**inputs)
    kept = int(reference.lengths.sum())
    row: dict[str, Any] = {
        "case": name,
        **case,
        "dtype": "bfloat16",
        "width": int(reference.values.shape[1]),
        "kept_tokens_mean": kept / case["batch"],
        "useful_bytes": useful_bytes(inputs, kept),
    }

    def ref_call():
        return select_gather_reference(**inputs)

    if cuda:
        ref_us = cuda_median_us(ref_call, args.repeats, args.warmup)
    else:
        ref_us = statistics.median(timed(ref_call, args.repeats)) * 1e6
    row["reference_us"] = ref_us
    row["reference_gbps"] = row["useful_bytes"] / ref_us / 1e3
    if cuda:
        result = select_gather(**inputs, backend="triton")
        torch.cuda.synchronize()
        row["check"] = check(result, reference, inputs)
        tri_us = cuda_median_us(lambda: select_gather(**inputs, backend="triton"), args.repeats, args.warmup)
        row["triton_us"] = tri_us
        row["triton_gbps"] = row["useful_bytes"] / tri_us / 1e3
        row["speedup_vs_reference"] = ref_us / tri_us
        row["triton_fraction_of_peak"] = row["triton_gbps"] / peak
    row["goal"] = ">= 3x faster than the reference" if name == "sap" else ">= 60% of peak HBM bandwidth"
    if cuda:
        met = row["speedup_vs_reference"] >= 3 if name == "sap" else row["triton_fraction_of_peak"] >= 0.6
        row["goal_met"] = bool(met)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls (default: 50 CUDA, 3 CPU)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--peak-gbps", type=float, default=None, help="override the peak HBM bandwidth")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    args = parser.parse_args()

    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = args.device.startswith("cuda")
    args.repeats = args.repeats or (50 if cuda else 3)
    payload: dict[str, Any] = {"benchmark": "topk_gather", "environment": environment(args.device)}
    peak = 0.0
    if cuda:
        import triton

        peak, source = peak_bandwidth(torch.cuda.get_device_name(), args.peak_gbps)
        payload.update({"triton": triton.__version__, "peak_gbps": peak, "peak_source": source})
    else:
        payload["triton"] = "unavailable (no CUDA device)"
    clock = "CUDA events" if cuda else "wall clock"
    payload["timing"] = f"median of {args.repeats} calls after {args.warmup if cuda else 1} warm-up, {clock}"
    payload["bytes_model"] = (
        "kept rows read + written, scores read, positions read + written and index written for kept tokens"
    )
    payload["rows"] = [run_case(name, args, cuda, peak) for name in args.cases]
    path = write_result(f"topk_gather_{args.device.split(':')[0]}", payload)
    for row in payload["rows"]:
        tri = f"triton {row['triton_us']:.1f} us" if cuda else "triton n/a"
        print(f"{row['case']}: reference {row['reference_us']:.1f} us, {tri}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
