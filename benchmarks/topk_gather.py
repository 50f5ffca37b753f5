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

Without CUDA only the reference is timed (same shapes and dtype) and the Triton entry says so. On CUDA
the kernel is also timed replayed from a CUDA graph (no launch overhead; the reference synchronises with
the host and cannot be captured), and its kept-group counts are compared with the reference's row by row
(4096 rows, SAP at five alphas and top-k).

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
from common import environment, goal, timed, write_result

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


def median_us(fn: Callable[[], Any], device: str, repeats: int, warmup: int) -> float:
    """Median microseconds per call: CUDA events on a GPU, wall clock (after ``warmup`` calls) elsewhere."""
    if device.startswith("cuda"):
        return cuda_median_us(fn, repeats, warmup)
    for _ in range(warmup):
        fn()
    return statistics.median(timed(fn, repeats)) * 1e6


def cuda_graph_median_us(fn: Callable[[], Any], repeats: int, warmup: int) -> float:
    """Median microseconds per replay of ``fn`` captured in a CUDA graph (no launch overhead). ``fn`` must
    not synchronise with the host; it is warmed up on a side stream before the capture, as torch asks."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(max(warmup, 1)):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return cuda_median_us(graph.replay, repeats, warmup)


def run_case(
    name: str,
    case: dict[str, Any],
    device: str,
    repeats: int,
    warmup: int,
    peak: float,
    *,
    triton: bool,
    graphs: bool,
) -> dict[str, Any]:
    """Reference vs Triton on one case; with ``graphs`` also the Triton kernel replayed from a CUDA graph.
    Without ``triton`` only the reference is timed."""
    import torch
    from fast3d_kernels import select_gather, select_gather_reference

    inputs = make_inputs(case, device)
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
    ref_us = median_us(lambda: select_gather_reference(**inputs), device, repeats, warmup)
    row |= {"reference_us": ref_us, "reference_gbps": row["useful_bytes"] / ref_us / 1e3}
    if not triton:
        return row

    def kernel():
        return select_gather(**inputs, backend="triton")

    result = kernel()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    row["check"] = check(result, reference, inputs)
    row |= _kernel_figures(row, median_us(kernel, device, repeats, warmup), peak, "")
    if graphs:
        row |= _kernel_figures(row, cuda_graph_median_us(kernel, repeats, warmup), peak, "_graph")
    return row


def _kernel_figures(row: dict[str, Any], us: float, peak: float, suffix: str) -> dict[str, float]:
    gbps = row["useful_bytes"] / us / 1e3
    return {
        f"triton{suffix}_us": us,
        f"triton{suffix}_gbps": gbps,
        f"speedup{suffix}_vs_reference": row["reference_us"] / us,
        f"triton{suffix}_fraction_of_peak": gbps / peak,
    }


# per case: (figure, target, what it means); "_graph" figures get the same target
CASE_GOALS = {
    "sap": ("speedup{}_vs_reference", 3.0, "torch composite time / Triton time{}"),
    "topk": ("triton{}_fraction_of_peak", 0.6, "useful bytes / Triton time{}, over the peak HBM bandwidth"),
}


def case_goals(row: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The goal of a timed case, per launch mode present in ``row`` (plain launch; CUDA-graph replay)."""
    figure, target, definition = CASE_GOALS[row["case"]]
    modes = {"": "", "_graph": ", replayed from a CUDA graph"}
    return {
        f"{row['case']}_{figure.format(suffix)}": goal(
            row[figure.format(suffix)], target, definition.format(where)
        )
        for suffix, where in modes.items()
        if figure.format(suffix) in row
    }


def kept_count_agreement(device: str, rows: int, dim: int, seed: int = 0) -> dict[str, Any]:
    """The Triton kernel's kept-group counts against the torch reference (``keep_counts``), row by row:
    100 groups of 3 tokens, random bf16 scores, SAP at five alphas and top-k with a random k per row. Only
    the counts are compared, so the kernel writes an output of width 1 (one program per row; every program
    of a row computes the same selection)."""
    import torch
    from fast3d_kernels import keep_counts, select_gather

    g = torch.Generator(device=device).manual_seed(seed)
    groups, group = 100, 3
    values = torch.randn(rows, groups * group, dim, generator=g, device=device, dtype=torch.bfloat16)
    positions = torch.arange(groups * group, device=device).expand(rows, -1)
    scores = torch.randn(rows, groups, generator=g, device=device, dtype=torch.bfloat16)
    budgets: dict[str, dict[str, Any]] = {
        f"sap alpha={a}": {"alpha": torch.full((rows,), a, device=device)} for a in (0.1, 0.3, 0.5, 0.7, 0.9)
    }
    budgets["top-k, random k in [0, 100]"] = {
        "k": torch.randint(0, groups + 1, (rows,), generator=g, device=device)
    }
    modes = []
    for mode, budget in budgets.items():
        want = keep_counts(scores, **budget)
        got = select_gather(values, positions, scores, group=group, width=1, backend="triton", **budget)
        got = got.kept_groups
        diff = (got - want).abs()
        modes.append(
            {"mode": mode, "rows": rows, "equal": int((diff == 0).sum()), "max_abs_diff": int(diff.max())}
        )
    equal, total = sum(m["equal"] for m in modes), sum(m["rows"] for m in modes)
    return {"dim": dim, "scores": "bfloat16, standard normal", "modes": modes, "equal": equal, "rows": total}


def counts_goal(agreement: dict[str, Any]) -> dict[str, dict[str, Any]]:
    fraction = agreement["equal"] / agreement["rows"]
    definition = "rows whose Triton kept-group count equals the torch reference's, over all rows (exact)"
    return {"kept_counts_equal_fraction": goal(fraction, 1.0, definition)}


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
    warmup = args.warmup if cuda else 0  # on CPU ``timed`` makes its one warm-up call
    payload["rows"] = [
        run_case(name, CASES[name], args.device, args.repeats, warmup, peak, triton=cuda, graphs=cuda)
        for name in args.cases
    ]
    if cuda:
        for row in payload["rows"]:
            row["goals"] = case_goals(row)
        payload["kept_counts"] = kept_count_agreement(args.device, rows=4096, dim=16)
        payload["kept_counts"]["goals"] = counts_goal(payload["kept_counts"])
    path = write_result(f"topk_gather_{args.device.split(':')[0]}", payload)
    for row in payload["rows"]:
        tri = f"triton {row['triton_us']:.1f} us" if cuda else "triton n/a"
        print(f"{row['case']}: reference {row['reference_us']:.1f} us, {tri}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
