"""Torch composite reference of ``select_gather`` (vectorised over the batch; defines the semantics).

Ranking: scores are compared as float32; ties go to the LOWER group index; NaN ranks below every number
(also below -inf); -0.0 ties with +0.0. In sample-adaptive (SAP) mode NaN scores get zero mass
(p = softmax with NaN treated as -inf); when the masses are not finite (a +inf score, or every score
-inf/NaN) the cumulative mass never reaches alpha and all M groups are kept.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .common import PerRow, SelectGatherResult, check_alpha_values, check_args, row_tensor

_INT32_MIN = -(2**31)


def order_key(scores: Tensor) -> Tensor:
    """[B, M] int64 key whose order is the ranking order of the scores (NaN lowest, -0.0 == +0.0)."""
    bits = scores.float().contiguous().view(torch.int32).to(torch.int64)
    bits = torch.where(bits == _INT32_MIN, 0, bits)  # -0.0 -> +0.0
    key = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return torch.where(torch.isnan(scores), _INT32_MIN - 1, key)


def sap_counts(scores: Tensor, alpha: Tensor) -> Tensor:
    """[B] int64 groups SAP keeps per row: the official ``find_min_rank_sum_larger_than_alpha`` (spec §5.5).

    The float32 softmax, sorted descending, summed cumulatively, compared with ``alpha`` by ``>=``: the
    official operations in the official order, so the count is identical to it on the same device, also when
    alpha lies exactly on a cumulative mass. Every backend takes its SAP counts from here (the Triton kernel
    then selects the top ``count`` groups). NaN scores get zero mass; when the masses are not finite the
    cumulative mass never reaches alpha and all M groups are kept. No host synchronisation.
    """
    groups = scores.shape[1]
    x = scores.float()
    p = torch.softmax(x.masked_fill(torch.isnan(x), float("-inf")), dim=1)
    mass = p.sort(dim=1, descending=True).values.cumsum(1)  # mass of the top-c groups at column c - 1
    reached = (mass >= alpha.float()[:, None]).sum(1)  # mass is non-decreasing, so this is a suffix
    return (groups + 1 - reached).clamp(max=groups)


def _counts_and_order(scores: Tensor, k: Tensor | None, alpha: Tensor | None) -> tuple[Tensor, Tensor]:
    """Groups kept per row [B] int64 and the ranking (group indices, best first) [B, M]."""
    groups = scores.shape[1]
    order = torch.sort(order_key(scores), dim=1, descending=True, stable=True).indices
    if k is not None:
        return k.clamp(0, groups), order
    assert alpha is not None
    return sap_counts(scores, alpha), order


def keep_counts(scores: Tensor, k: PerRow | None = None, alpha: PerRow | None = None) -> Tensor:
    """[B] int64 number of groups ``select_gather`` keeps per row (reference semantics).

    Top-k mode: ``clip(k, 0, M)``. SAP mode: the smallest c with sum of the c largest softmax masses
    >= alpha (M when rounding keeps the total below alpha). Checks alpha's values (synchronises).
    """
    if not isinstance(scores, Tensor) or scores.dim() != 2 or not scores.is_floating_point():
        got = getattr(scores, "shape", None)
        raise ValueError(f"scores must be a floating-point [B, M] tensor, got {got}")
    batch = scores.shape[0]
    dummy = scores.new_zeros((batch, scores.shape[1], 0), dtype=torch.float32)
    positions = torch.zeros((batch, scores.shape[1]), dtype=torch.int64, device=scores.device)
    args = check_args(
        dummy, positions, scores, k=k, alpha=alpha, group=1, span_start=None, valid_start=None, width=None
    )
    counts, _ = _counts_and_order(scores, *_budget(args, scores.device))
    return counts


def _budget(args, device: torch.device) -> tuple[Tensor | None, Tensor | None]:
    if args.k is not None:
        return row_tensor(args.k, args.batch, device, torch.int64, 0), None
    alpha = row_tensor(args.alpha, args.batch, device, torch.float32, 1.0)
    check_alpha_values(alpha)
    return None, alpha


def select_gather_reference(
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
) -> SelectGatherResult:
    """Torch composite of :func:`fast3d_kernels.select_gather` (sort + cumsum + gather).

    Also checks what the Triton path cannot check without synchronising: alpha in (0, 1], the candidate
    span inside [0, T), valid_start in [0, T] and lengths <= width (ValueError otherwise).
    """
    args = check_args(
        values, positions, scores, k=k, alpha=alpha, group=group,
        span_start=span_start, valid_start=valid_start, width=width,
    )  # fmt: skip
    dev = values.device
    batch, tokens, groups, width_ = args.batch, args.tokens, args.groups, args.width
    span = groups * args.group
    ss = row_tensor(args.span_start, batch, dev, torch.int64, 0)
    vs = row_tensor(args.valid_start, batch, dev, torch.int64, 0)
    if not bool(((ss >= 0) & (ss + span <= tokens)).all()):
        raise ValueError(f"the candidate span [span_start, span_start + {span}) must lie in [0, {tokens})")
    if not bool(((vs >= 0) & (vs <= tokens)).all()):
        raise ValueError(f"valid_start must lie in [0, {tokens}]")
    counts, order = _counts_and_order(scores, *_budget(args, dev))

    rank = torch.empty_like(order).scatter_(1, order, torch.arange(groups, device=dev).expand(batch, groups))
    chosen = rank < counts[:, None]  # [B, M]
    t = torch.arange(tokens, device=dev)
    rel = t[None, :] - ss[:, None]
    in_span = (rel >= 0) & (rel < span)
    if groups > 0:
        token_chosen = chosen.gather(1, rel.clamp(0, span - 1) // args.group)
    else:
        token_chosen = torch.zeros_like(in_span)
    keep = (t[None, :] >= vs[:, None]) & (~in_span | token_chosen)
    lengths = keep.sum(1)
    if bool((lengths > width_).any()):
        raise ValueError(f"width {width_} is smaller than the longest kept row ({int(lengths.max())} tokens)")

    slot = torch.where(keep, width_ - lengths[:, None] + keep.cumsum(1) - 1, width_)
    index = torch.full((batch, width_ + 1), -1, dtype=torch.int64, device=dev)
    index.scatter_(1, slot, torch.where(keep, t[None, :], -1))  # column W collects the dropped tokens
    index = index[:, :width_]
    live = index >= 0
    src = index.clamp(min=0)
    out_positions = torch.where(live, positions.gather(1, src).to(torch.int64), 0)
    out_values = values[torch.arange(batch, device=dev)[:, None], src]  # row gather: [B, W, D]
    out_values.masked_fill_(~live[:, :, None], 0)
    return SelectGatherResult(out_values, out_positions, index, lengths, counts.to(torch.int64))
