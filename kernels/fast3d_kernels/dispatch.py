"""``select_gather``: the dispatcher between the Triton kernel and the torch reference."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import replace
from functools import cache
from typing import Literal

import torch
from torch import Tensor

from .common import Args, PerRow, SelectGatherResult, check_args, row_tensor
from .reference import sap_counts, select_gather_reference

Backend = Literal["auto", "torch", "triton"]
ENV_VAR = "FAST3D_KERNELS"
_BACKENDS = ("auto", "torch", "triton")


@cache
def triton_available() -> bool:
    """Whether ``triton`` is importable (checked without importing it)."""
    return importlib.util.find_spec("triton") is not None


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on", "y")


def resolve_backend(backend: str, values: Tensor) -> Literal["torch", "triton"]:
    """The backend ``select_gather`` uses: FAST3D_KERNELS overrides "auto"; "auto" picks Triton for CUDA
    tensors when triton is importable and the torch reference otherwise."""
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    if backend == "auto":
        env = os.environ.get(ENV_VAR, "").strip().lower()
        if env not in ("", "auto", "torch", "triton"):
            raise ValueError(f"{ENV_VAR} must be 'torch', 'triton' or 'auto', got {env!r}")
        if env in ("torch", "triton"):
            return env  # type: ignore[return-value]
        return "triton" if values.is_cuda and triton_available() else "torch"
    return backend  # type: ignore[return-value]


def select_gather_triton(
    values: Tensor,
    positions: Tensor,
    scores: Tensor,
    *,
    k: PerRow | None = None,
    alpha: PerRow | None = None,
    group: int = 1,
    span_start: PerRow | None = None,
    valid_start: PerRow | None = None,
    width: int | None = None,
    block_s: int | None = None,
    block_t: int | None = None,
    block_d: int | None = None,
    num_warps: int | None = None,
) -> SelectGatherResult:
    """The fused Triton kernel (one launch, no host synchronisation). CPU tensors need TRITON_INTERPRET=1
    set before the first call. In SAP mode the per-row counts come from :func:`sap_counts` (the official
    rule's own torch operations, on the device) and the kernel selects that many top groups, so its counts
    equal the reference's bit for bit. Unlike the reference it does not check device-side values (alpha
    range, span inside [0, T), lengths <= width); rows longer than ``width`` keep their last ``width``
    tokens."""
    args = check_args(
        values, positions, scores, k=k, alpha=alpha, group=group,
        span_start=span_start, valid_start=valid_start, width=width,
    )  # fmt: skip
    if not triton_available():
        raise RuntimeError("backend 'triton' needs the triton package (pip install 'triton>=3.0')")
    if not values.is_cuda and not _interpreting():
        raise RuntimeError("the Triton kernel needs CUDA tensors, or TRITON_INTERPRET=1 for CPU tensors")
    from .triton_select_gather import launch  # lazy: TRITON_INTERPRET is read when the kernel is defined

    blocks = {"block_s": block_s, "block_t": block_t, "block_d": block_d, "num_warps": num_warps}
    return launch(values, positions, scores, _sap_as_top_k(args, scores), **blocks)


def _sap_as_top_k(args: Args, scores: Tensor) -> Args:
    """SAP arguments as top-k arguments: per-row counts of the official rule (stays on the device)."""
    if args.alpha is None:
        return args
    alpha = row_tensor(args.alpha, args.batch, scores.device, torch.float32, 1.0)
    return replace(args, k=sap_counts(scores, alpha), alpha=None)


def select_gather(
    values: Tensor,
    positions: Tensor,
    scores: Tensor,
    *,
    k: PerRow | None = None,
    alpha: PerRow | None = None,
    group: int = 1,
    span_start: PerRow | None = None,
    valid_start: PerRow | None = None,
    width: int | None = None,
    backend: Backend = "auto",
) -> SelectGatherResult:
    """Select candidate token groups by score and gather the kept tokens into left-padded rows.

    values [B, T, D] (fp32/fp16/bf16, any strides), positions [B, T] int, scores [B, M] (fp32/fp16/bf16),
    one score per group of ``group`` consecutive candidate tokens starting at ``span_start[b]`` (default 0).
    Tokens before ``valid_start[b]`` (default 0) are dropped; tokens outside the candidate span are kept;
    a candidate token is kept iff its group is selected. Exactly one of:

    - ``k`` ([B] int tensor or int): keep the k largest-scoring groups (clipped to [0, M]);
    - ``alpha`` ([B] float tensor or float in (0, 1]): sample-adaptive pruning, keep the fewest top groups
      whose softmax mass (float32) reaches alpha.

    Ties go to the lower group index; NaN scores rank lowest (and have zero SAP mass). Output width
    ``width`` defaults to T; kept tokens are right-aligned in original order. ``backend``: "auto" (Triton
    for CUDA tensors when available, else the reference; env FAST3D_KERNELS=torch|triton overrides),
    "torch" or "triton".
    """
    fn = select_gather_triton if resolve_backend(backend, values) == "triton" else select_gather_reference
    return fn(
        values, positions, scores, k=k, alpha=alpha, group=group,
        span_start=span_start, valid_start=valid_start, width=width,
    )  # fmt: skip
