"""Fused select + gather in one Triton launch, with no host synchronisation.

Grid: (B, cdiv(W, BLOCK_S)). Program (b, j) owns the output slots [j*BLOCK_S, (j+1)*BLOCK_S) of row b and
writes every one of them (kept token or padding), so the outputs need no memset. Each program:

1. Selection of the top k groups (recomputed per program; it is O(M) work and the scores are tiny). Scores
   become int32 keys whose signed order is the ranking order (NaN lowest, -0.0 == +0.0), shifted right by
   the bits a 16-bit input cannot use (16 for bf16, 13 for fp16), so bf16 needs 16 radix passes and fp32
   32. A radix select finds the largest key threshold t with at least k groups at or above it. Groups above
   t are chosen; groups equal to t are chosen in index order while fewer than k are chosen before them
   (ties go to the lower index). The choice is summarised by two scalars (t, gcut): group g is chosen iff
   key > t or (key == t and g <= gcut). In SAP mode the dispatcher passes per-row counts k computed on
   the device by the official rule (``fast3d_kernels.reference.sap_counts``): a softmax and cumulative sum
   inside the kernel would round differently from the official torch operations and move the count by one
   when alpha lies on a cumulative mass.
2. Placement. Kept tokens come in three runs: non-candidates before the span, the chosen groups' tokens,
   non-candidates after the span. A cumsum of the per-group kept counts gives the length L and, in closed
   form, the token of any rank, so the program jumps to the token of the first rank it writes and scans
   from there (BLOCK_T tokens a step, per-token keep recomputed from the group's score), matching ranks to
   slots with a [BLOCK_S, BLOCK_T] equality.
3. Copy. A dense [BLOCK_S, BLOCK_D] tile per D chunk: rows of kept slots are loaded (padding rows read 0)
   and every slot row is stored, so reads touch only kept rows and writes are contiguous.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .common import Args, SelectGatherResult

_SHIFT = {torch.bfloat16: 16, torch.float16: 13, torch.float32: 0}


@triton.jit
def _order_key(x, SHIFT: tl.constexpr):
    """float32 -> int32 key, signed order == score order; NaN lowest; -0.0 == +0.0; low SHIFT bits dropped."""
    bits = x.to(tl.int32, bitcast=True)
    bits = tl.where(bits == -2147483648, 0, bits)
    key = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    key = tl.where((bits & 0x7FFFFFFF) > 0x7F800000, -2147483648, key)
    return key >> SHIFT


@triton.jit
def _select(key, k, valid, g, KBITS: tl.constexpr):
    """Radix select of the top k groups of a row. Returns (t, gcut, count): see the module docstring."""
    ones = valid.to(tl.int32)
    t = tl.where(tl.sum(tl.where(key >= 0, ones, 0), 0) >= k, 0, tl.full([], -(1 << KBITS), tl.int32))
    bit = tl.full([], 1 << (KBITS - 1), tl.int32)
    for _ in range(KBITS):
        cand = t + bit
        t = tl.where(tl.sum(tl.where(key >= cand, ones, 0), 0) >= k, cand, t)
        bit = bit >> 1
    gt = key > t
    eq = (key == t) & valid
    n_eq = eq.to(tl.int32)
    before = tl.sum(tl.where(gt, ones, 0), 0) + tl.cumsum(n_eq, 0) - n_eq
    take = eq & (before < k)
    gcut = tl.max(tl.where(take, g, -1), 0)
    count = tl.sum((gt | (eq & (g <= gcut))).to(tl.int32), 0)
    return t, gcut, count


@triton.jit
def _layout(chosen, g, T, a, ss, G, M):
    """Kept-token counts of the row: (before the span, per-group inclusive cumsum, in the span, total)."""
    lo = ss + g * G
    n = tl.where(chosen, tl.minimum(lo + G, T) - tl.maximum(lo, a), 0)
    cum = tl.cumsum(tl.maximum(n, 0), 0)
    n_pre = tl.maximum(tl.minimum(ss, T) - a, 0)
    n_span = tl.max(cum, 0)
    n_post = tl.maximum(T - tl.maximum(ss + M * G, a), 0)
    return n_pre, cum, n_span, n_pre + n_span + n_post


@triton.jit
def _locate(r, n_pre, cum, n_span, a, ss, G, M):
    """Token index of the kept token of rank r (0 <= r < length)."""
    rs = r - n_pre
    before = cum <= rs  # chosen groups (and unchosen ones) wholly before rank r
    grp = tl.sum(before.to(tl.int32), 0)
    base = tl.max(tl.where(before, cum, 0), 0)
    in_span = tl.maximum(ss + grp * G, a) + rs - base
    after = tl.maximum(ss + M * G, a) + rs - n_span
    return tl.where(r < n_pre, a + r, tl.where(rs < n_span, in_span, after))


@triton.jit
def select_gather_kernel(
    VAL, POS, SCO, TGT, SPAN, VALID,
    OUT, OPOS, OIDX, OLEN, OGRP,
    T, D, M, W, G, tgt_value, span_value, valid_value,
    s_vb, s_vt, s_vd, s_pb, s_pt, s_sb, s_sm, s_tgt, s_span, s_valid,
    TGT_PTR: tl.constexpr, SPAN_PTR: tl.constexpr, VALID_PTR: tl.constexpr,
    SHIFT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0)
    blk = tl.program_id(1)
    row64 = row.to(tl.int64)
    zero = tl.full([], 0, tl.int32)  # "zero + n" makes a tensor of an int argument Triton may specialise
    tlen = zero + T
    if SPAN_PTR:  # noqa: SIM108 (constexpr branches)
        ss = tl.load(SPAN + row * s_span).to(tl.int32)
    else:
        ss = zero + span_value
    if VALID_PTR:
        a = tl.maximum(tl.load(VALID + row * s_valid).to(tl.int32), 0)
    else:
        a = tl.maximum(zero + valid_value, 0)

    # 1. selection of the top k of the M candidate groups of this row
    g = tl.arange(0, BLOCK_M)
    gvalid = g < M
    raw = tl.load(SCO + row64 * s_sb + g * s_sm, mask=gvalid, other=0.0).to(tl.float32)
    key = tl.where(gvalid, _order_key(raw, SHIFT), -(1 << (31 - SHIFT)))
    if TGT_PTR:
        k = tl.minimum(tl.maximum(tl.load(TGT + row * s_tgt).to(tl.int64), 0), M).to(tl.int32)
    else:
        k = tl.minimum(tl.maximum(zero + tgt_value, 0), M)
    t_star, gcut, count = _select(key, k, gvalid, g, 31 - SHIFT)
    chosen = (key > t_star) | ((key == t_star) & gvalid & (g <= gcut))

    # 2. placement: slots s of this program hold the kept tokens of rank r = s - (W - L)
    n_pre, cum, n_span, length = _layout(chosen, g, tlen, a, ss, G, M)
    pad_end = W - length
    s = blk * BLOCK_S + tl.arange(0, BLOCK_S)
    r = s - pad_end
    in_out = s < W
    live = (r >= 0) & in_out
    r_lo = tl.maximum(blk * BLOCK_S - pad_end, 0)
    r_hi = tl.minimum(blk * BLOCK_S + BLOCK_S, W) - pad_end
    x0 = _locate(r_lo, n_pre, cum, n_span, a, ss, G, M)  # scan from the token of rank r_lo
    src = tl.zeros([BLOCK_S], tl.int32)
    carry = r_lo
    while (carry < r_hi) & (x0 < T):
        tok = x0 + tl.arange(0, BLOCK_T)
        rel = tok - ss
        in_span = (rel >= 0) & (rel < M * G)
        gi = tl.where(in_span, rel, 0) // G
        sg = tl.load(SCO + row64 * s_sb + gi * s_sm, mask=in_span, other=0.0).to(tl.float32)
        kg = _order_key(sg, SHIFT)
        pick = (kg > t_star) | ((kg == t_star) & (gi <= gcut))
        keep = (tok >= a) & (tok < T) & (pick | ~in_span)
        kk = keep.to(tl.int32)
        rank = carry + tl.cumsum(kk, 0) - kk
        hit = keep[None, :] & (rank[None, :] == r[:, None])
        src += tl.sum(tl.where(hit, tok[None, :], 0), 1)
        carry += tl.sum(kk, 0)
        x0 += BLOCK_T

    # 3. copy: every slot of this program is written (kept row or zeros)
    src64 = src.to(tl.int64)
    out_row = row64 * W + s
    pos = tl.load(POS + row64 * s_pb + src64 * s_pt, mask=live, other=0)
    tl.store(OPOS + out_row, pos.to(tl.int64), mask=in_out)
    tl.store(OIDX + out_row, tl.where(live, src64, -1), mask=in_out)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        dm = d < D
        v = tl.load(
            VAL + row64 * s_vb + src64[:, None] * s_vt + d[None, :] * s_vd,
            mask=live[:, None] & dm[None, :],
            other=0.0,
        )
        tl.store(OUT + out_row[:, None] * D + d[None, :], v, mask=in_out[:, None] & dm[None, :])
    if blk == 0:
        tl.store(OLEN + row, length.to(tl.int64))
        tl.store(OGRP + row, count.to(tl.int64))


def _pow2(n: int, lo: int = 1) -> int:
    return max(lo, triton.next_power_of_2(max(n, 1)))


def launch(
    values: Tensor,
    positions: Tensor,
    scores: Tensor,
    args: Args,
    *,
    block_s: int | None = None,
    block_t: int | None = None,
    block_d: int | None = None,
    num_warps: int | None = None,
) -> SelectGatherResult:
    """Allocate the outputs (uninitialised: the kernel writes every element) and launch once."""
    batch, tokens, dim, groups, width = args.batch, args.tokens, args.dim, args.groups, args.width
    dev = values.device
    out = torch.empty((batch, width, dim), dtype=values.dtype, device=dev)
    out_pos = torch.empty((batch, width), dtype=torch.int64, device=dev)
    out_idx = torch.empty((batch, width), dtype=torch.int64, device=dev)
    lengths = torch.empty((batch,), dtype=torch.int64, device=dev)
    kept = torch.empty((batch,), dtype=torch.int64, device=dev)
    result = SelectGatherResult(out, out_pos, out_idx, lengths, kept)
    if batch == 0:
        return result

    if args.alpha is not None:
        raise ValueError("the kernel selects top-k groups: give SAP as per-row counts (see sap_counts)")
    target = args.k

    def as_arg(x: object, default: float) -> tuple[Tensor, int, float | int, bool]:
        """(pointer, row stride, scalar value, is_pointer) for a per-row argument."""
        if isinstance(x, Tensor):
            return x, (x.stride(0) if x.dim() == 1 else 0), default, True
        return scores, 0, default if x is None else x, False  # type: ignore[return-value]

    tgt, s_tgt, tgt_value, tgt_ptr = as_arg(target, 0)
    span_t, s_span, span_value, span_ptr = as_arg(args.span_start, 0)
    valid_t, s_valid, valid_value, valid_ptr = as_arg(args.valid_start, 0)

    # Defaults from the sm_90 register counts of the compiled kernel (no spills up to M = 8192): the group
    # vectors dominate for large M, the [BLOCK_S, BLOCK_D] copy tile (128 bytes of a row per warp) else.
    block_m = _pow2(groups, 16)
    num_warps = num_warps or (4 if block_m < 1024 else 8 if block_m < 8192 else 16)
    block_s = block_s or 32
    block_t = block_t or 32
    block_d = block_d or min(_pow2(dim, 16), 128 * num_warps // values.element_size())
    grid = (batch, max(1, triton.cdiv(width, block_s)))
    select_gather_kernel[grid](
        values, positions, scores, tgt, span_t, valid_t,
        out, out_pos, out_idx, lengths, kept,
        tokens, dim, groups, width, args.group, tgt_value, span_value, valid_value,
        *values.stride(), *positions.stride(), *scores.stride(), s_tgt, s_span, s_valid,
        TGT_PTR=tgt_ptr, SPAN_PTR=span_ptr, VALID_PTR=valid_ptr,
        SHIFT=_SHIFT[scores.dtype], BLOCK_M=block_m, BLOCK_S=block_s, BLOCK_T=block_t, BLOCK_D=block_d,
        num_warps=num_warps,
    )  # fmt: skip
    return result
