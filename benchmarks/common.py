"""Shared helpers for the benchmarks: imports without an install, environment record, timing, memory,
goals and result files."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"

# LlamaConfig fields of Vicuna-7B v1.5 (spec §1.1) plus Chat-Scene's 100 identifier tokens.
VICUNA_7B = {
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32100,
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 4096,
}


def ensure_project_importable() -> None:
    """Make ``fast3d_cli`` and ``fast3d_kernels`` importable from this checkout when the project is not
    installed (a bare GPU image): the repository root and ``kernels/`` (which holds the ``fast3d_kernels``
    package) go on ``sys.path``. ``kernels/`` itself has no ``__init__.py``, so it never hides the PyPI
    ``kernels`` package that transformers imports."""
    if importlib.util.find_spec("fast3d_cli") is None:
        sys.path.insert(0, str(REPO))
    if importlib.util.find_spec("fast3d_kernels") is None:
        sys.path.insert(0, str(REPO / "kernels"))


def git_commit() -> str | None:
    """HEAD of this checkout (``+dirty`` when tracked files differ), or None without git or a repository."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO, capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "") if head else None


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(device: str) -> dict[str, Any]:
    import torch
    import transformers

    import fast3d_cli

    info: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "device": device,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "triton": _version("triton"),
        "numpy": _version("numpy"),
        "fast3d": fast3d_cli.__version__,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
        info["gpu_memory_gib"] = torch.cuda.get_device_properties(device).total_memory / 2**30
        info["cuda"] = torch.version.cuda
    return info


def timed(fn: Callable[[], Any], repeats: int, sync: Callable[[], None] = lambda: None) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls after one warm-up call."""
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


class Timer:
    """Median wall-clock time of a callable after ``warmup`` untimed calls; on CUDA synchronised, with the
    peak memory of the case. With ``budget_s`` a case stops starting timed calls once the next one (as long
    as the last) would end past the budget, counted from the case's first warm-up call; one always runs."""

    def __init__(self, device: str, repeats: int, warmup: int, budget_s: float | None = None) -> None:
        import torch

        self.cuda = device.startswith("cuda")
        self.repeats, self.warmup, self.budget_s = repeats, warmup, budget_s
        self.sync: Callable[[], None] = torch.cuda.synchronize if self.cuda else (lambda: None)
        self.base = self._allocated()

    def _allocated(self) -> int:
        import torch

        if not self.cuda:
            return 0
        torch.cuda.synchronize()
        return torch.cuda.memory_allocated()

    def _another(self, started: float, times: list[float]) -> bool:
        if len(times) >= self.repeats:
            return False
        if not times or self.budget_s is None:
            return True
        return time.perf_counter() - started + times[-1] <= self.budget_s

    def __call__(self, fn: Callable[[], Any]) -> dict[str, Any]:
        """``fn`` must not return the KV cache (it would stay alive during the next call)."""
        import torch

        started = time.perf_counter()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        for _ in range(self.warmup):
            fn()
        self.sync()
        times: list[float] = []
        while self._another(started, times):
            self.sync()
            start = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - start)
        out: dict[str, Any] = {"median_s": statistics.median(times), "times_s": times, "runs": len(times)}
        if self.cuda:
            peak = torch.cuda.max_memory_allocated()
            out["peak_mib"] = peak / 2**20
            out["peak_above_idle_mib"] = (peak - self.base) / 2**20
        return out


def activation_peak_mib(fn: Callable[[], Any], device: str) -> tuple[float, str]:
    """Peak memory one call of ``fn`` allocates above what was allocated before it, and how it was read:
    the CUDA caching allocator's peak on CUDA; elsewhere torch's ``MemTracker`` (a dispatch mode that
    tracks every tensor storage created during the call)."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20, "torch.cuda.max_memory_allocated"
    from torch.distributed._tools.mem_tracker import MemTracker

    tracker = MemTracker()
    with tracker:
        fn()
    peak = tracker.get_tracker_snapshot("peak")
    return sum(per_device["Total"] for per_device in peak.values()) / 2**20, "MemTracker peak (CPU)"


def goal(measured: float | None, target: float, definition: str, comparison: str = ">=") -> dict[str, Any]:
    """One goal: the figure, its target and whether it is met (None when the figure is missing)."""
    if comparison not in (">=", "<="):
        raise ValueError(f"comparison must be '>=' or '<=', got {comparison!r}")
    met = None
    if measured is not None:
        met = bool(measured >= target) if comparison == ">=" else bool(measured <= target)
    return {
        "measured": measured,
        "target": target,
        "comparison": comparison,
        "met": met,
        "definition": definition,
    }


def write_result(name: str, payload: dict[str, Any], directory: Path = RESULTS) -> Path:
    """``<directory>/<name>.json``, replaced atomically (a reader never sees half a file)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(partial, path)
    return path
