"""Result type and argument checks shared by the torch reference and the Triton path of ``select_gather``.

All checks here look at shapes, dtypes, devices and Python scalars only, so they never synchronise with
the device. (Value checks on device tensors, e.g. ``alpha`` in (0, 1] or ``lengths <= width``, are done
by the reference only; a CPU ``alpha`` tensor is checked here because that costs no synchronisation.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
PerRow = Tensor | int | float


@dataclass
class SelectGatherResult:
    """Output of :func:`select_gather`; ``W`` is the output width, kept tokens right-aligned (left padded).

    values:      [B, W, D] same dtype as the input values; row b's kept tokens in [W - lengths[b], W) in
                 original order, padding 0.
    positions:   [B, W] int64 position ids of the kept tokens (padding 0).
    index:       [B, W] int64 original token index of each kept token (padding -1).
    lengths:     [B] int64 number of kept tokens per row.
    kept_groups: [B] int64 number of selected candidate groups per row.
    """

    values: Tensor
    positions: Tensor
    index: Tensor
    lengths: Tensor
    kept_groups: Tensor


@dataclass(frozen=True)
class Args:
    """Checked arguments. Per-row quantities stay Python scalars when given as scalars (or None)."""

    batch: int
    tokens: int
    dim: int
    groups: int
    group: int
    width: int
    k: PerRow | None
    alpha: PerRow | None
    span_start: PerRow | None
    valid_start: PerRow | None


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _per_row(x: object, name: str, batch: int, device: torch.device, integer: bool) -> PerRow | None:
    """A per-row argument: None, a Python scalar, or a 0-d / [B] tensor on ``device``."""
    if x is None:
        return None
    if isinstance(x, Tensor):
        if x.dim() > 1 or (x.dim() == 1 and x.shape[0] != batch):
            raise ValueError(f"{name} must be a scalar or have shape [{batch}], got {tuple(x.shape)}")
        if x.device != device:
            raise ValueError(f"{name} is on {x.device} but values are on {device}")
        is_int = not x.is_floating_point() and not x.is_complex() and x.dtype != torch.bool
        if is_int != integer or (not integer and not x.is_floating_point()):
            kind = "an integer" if integer else "a floating-point"
            raise ValueError(f"{name} must be {kind} tensor, got {x.dtype}")
        return x
    if integer and _is_int(x):
        return x
    if not integer and (_is_int(x) or isinstance(x, float)):
        return float(x)  # type: ignore[arg-type]
    kind = "an int" if integer else "a float"
    raise ValueError(f"{name} must be {kind} or a tensor, got {type(x).__name__}")


def check_alpha_values(alpha: Tensor) -> None:
    """Raise ValueError unless every alpha is in (0, 1]. Synchronises when ``alpha`` is on a device."""
    if not bool(((alpha > 0) & (alpha <= 1)).all()):
        raise ValueError("alpha must lie in (0, 1] for every row")


def check_args(
    values: Tensor,
    positions: Tensor,
    scores: Tensor,
    *,
    k: object,
    alpha: object,
    group: object,
    span_start: object,
    valid_start: object,
    width: object,
) -> Args:
    """Validate shapes, dtypes, devices and scalar ranges (no device synchronisation)."""
    if not isinstance(values, Tensor) or values.dim() != 3:
        raise ValueError(f"values must be a [B, T, D] tensor, got {getattr(values, 'shape', type(values))}")
    if values.dtype not in FLOAT_DTYPES:
        raise ValueError(f"values must be float32, float16 or bfloat16, got {values.dtype}")
    batch, tokens, dim = values.shape
    device = values.device
    if not isinstance(positions, Tensor) or tuple(positions.shape) != (batch, tokens):
        got = getattr(positions, "shape", None)
        raise ValueError(f"positions must have shape [{batch}, {tokens}], got {got}")
    if positions.is_floating_point() or positions.dtype == torch.bool:
        raise ValueError(f"positions must be an integer tensor, got {positions.dtype}")
    if not isinstance(scores, Tensor) or scores.dim() != 2 or scores.shape[0] != batch:
        raise ValueError(f"scores must have shape [{batch}, M], got {getattr(scores, 'shape', None)}")
    if scores.dtype not in FLOAT_DTYPES:
        raise ValueError(f"scores must be float32, float16 or bfloat16, got {scores.dtype}")
    for name, t in (("positions", positions), ("scores", scores)):
        if t.device != device:
            raise ValueError(f"{name} is on {t.device} but values are on {device}")
    if not _is_int(group) or group < 1:  # type: ignore[operator]
        raise ValueError(f"group must be an int >= 1, got {group!r}")
    groups = scores.shape[1]
    if groups * group > tokens:  # type: ignore[operator]
        raise ValueError(f"{groups} groups of {group} candidate tokens do not fit in {tokens} tokens")
    if width is None:
        width = tokens
    elif not _is_int(width) or width < 0:  # type: ignore[operator]
        raise ValueError(f"width must be an int >= 0, got {width!r}")
    if (k is None) == (alpha is None):
        raise ValueError("give exactly one of k (top-k mode) or alpha (sample-adaptive mode)")
    k_ = _per_row(k, "k", batch, device, integer=True)
    alpha_ = _per_row(alpha, "alpha", batch, device, integer=False)
    if isinstance(alpha_, float) and not 0.0 < alpha_ <= 1.0:
        raise ValueError(f"alpha must lie in (0, 1], got {alpha_}")
    if isinstance(alpha_, Tensor) and alpha_.device.type == "cpu":
        check_alpha_values(alpha_)
    return Args(
        batch=batch,
        tokens=tokens,
        dim=dim,
        groups=groups,
        group=group,  # type: ignore[arg-type]
        width=width,  # type: ignore[arg-type]
        k=k_,
        alpha=alpha_,
        span_start=_per_row(span_start, "span_start", batch, device, integer=True),
        valid_start=_per_row(valid_start, "valid_start", batch, device, integer=True),
    )


def row_tensor(
    x: PerRow | None, batch: int, device: torch.device, dtype: torch.dtype, default: float
) -> Tensor:
    """A per-row argument as a [B] tensor of ``dtype`` (reference path only)."""
    if x is None:
        x = default
    if isinstance(x, Tensor):
        return x.to(dtype).expand(batch)
    return torch.full((batch,), x, dtype=dtype, device=device)
