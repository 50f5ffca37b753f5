"""fast3d_kernels.select_gather: reference vs a per-row Python oracle, Triton (interpreter) vs reference.

TRITON_INTERPRET must be set before the Triton kernel is defined; the kernel module is imported lazily on
the first Triton call, and this line runs before anything from fast3d_kernels is imported here.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import importlib.util
import math
import subprocess
import sys
import textwrap

import fast3d_kernels.dispatch as dispatch
import pytest
import torch
from fast3d_kernels import (
    SelectGatherResult,
    keep_counts,
    resolve_backend,
    select_gather,
    select_gather_reference,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# the interpreter runs -inf - -inf when a row's softmax is undefined (every score NaN/-inf, or M = 0)
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
HAVE_TRITON = importlib.util.find_spec("triton") is not None
requires_triton = pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")
FIELDS = ("values", "positions", "index", "lengths", "kept_groups")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
TOL = 1e-5
BACKENDS = ["torch", pytest.param("triton", marks=requires_triton)]


# ----------------------------------------------------------------------------------------------- oracle
def ranking(row: torch.Tensor) -> list[int]:
    """Group indices best first: larger score first, NaN last, ties by lower index (-0.0 == 0.0)."""
    s = [float(x) for x in row.float()]
    return sorted(range(len(s)), key=lambda g: (math.isnan(s[g]), 0.0 if math.isnan(s[g]) else -s[g], g))


def sap_masses(row: torch.Tensor) -> list[float] | None:
    """Cumulative float64 softmax mass in ranking order; None when the masses are undefined."""
    x = [float("-inf") if math.isnan(v) else v for v in (float(y) for y in row.float())]
    top = max(x, default=float("-inf"))
    if math.isinf(top):
        return None
    e = [math.exp(v - top) for v in x]
    total = sum(e)
    cum, acc = [], 0.0
    for g in ranking(row):
        acc += e[g] / total
        cum.append(acc)
    return cum


def oracle_count(row: torch.Tensor, k: int | None, alpha: float | None) -> tuple[int, bool]:
    """(groups kept, ambiguous): ambiguous when some cumulative mass lies within TOL of alpha."""
    m = row.shape[0]
    if k is not None:
        return min(max(k, 0), m), False
    cum = sap_masses(row)
    if cum is None:
        return m, False
    count = next((i + 1 for i, c in enumerate(cum) if c >= alpha), m)
    return count, any(abs(c - alpha) < TOL for c in cum)


def sap_count_valid(row: torch.Tensor, alpha: float, count: int) -> bool:
    cum = sap_masses(row)
    m = row.shape[0]
    if cum is None:
        return count == m
    reached = count == m or cum[count - 1] >= alpha - TOL
    minimal = count == 1 or cum[count - 2] < alpha + TOL
    return 1 <= count <= m and reached and minimal


def oracle_gather(values, positions, scores, counts, group, span, valid, width) -> SelectGatherResult:
    b_, t_, d_ = values.shape
    m = scores.shape[1]
    w = t_ if width is None else width
    out_v = torch.zeros(b_, w, d_, dtype=values.dtype)
    out_p = torch.zeros(b_, w, dtype=torch.int64)
    out_i = torch.full((b_, w), -1, dtype=torch.int64)
    lengths = []
    for b in range(b_):
        chosen = set(ranking(scores[b])[: int(counts[b])])
        kept = []
        for t in range(t_):
            rel = t - span[b]
            if t >= valid[b] and not (0 <= rel < m * group and rel // group not in chosen):
                kept.append(t)
        for j, t in enumerate(kept):
            slot = w - len(kept) + j
            out_v[b, slot], out_p[b, slot], out_i[b, slot] = values[b, t], positions[b, t], t
        lengths.append(len(kept))
    return SelectGatherResult(out_v, out_p, out_i, torch.tensor(lengths), torch.as_tensor(counts).long())


def assert_same(got: SelectGatherResult, want: SelectGatherResult) -> None:
    for f in FIELDS:
        a, b = getattr(got, f), getattr(want, f)
        assert a.dtype == b.dtype, (f, a.dtype, b.dtype)
        assert torch.equal(a, b), f"{f} differs:\n{a}\nvs\n{b}"


def per_row(x, batch: int) -> list:
    if x is None:
        return [0] * batch
    if isinstance(x, torch.Tensor):
        return x.expand(batch).tolist()
    return [x] * batch


# ------------------------------------------------------------------------------------------ hypothesis
@st.composite
def cases(draw, mode: str | None = None, blocks: bool = False) -> tuple:
    b_ = draw(st.integers(1, 3))
    m = draw(st.integers(1, 9))
    group = draw(st.sampled_from([1, 3]))
    extra = draw(st.integers(0, 6))
    t_ = m * group + extra
    d_ = draw(st.integers(1, 9))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    if draw(st.booleans()):  # integer-valued scores: many ties
        scores = torch.randint(-2, 3, (b_, m), generator=gen).float()
    else:
        scores = torch.randn(b_, m, generator=gen) * 3
    if draw(st.integers(0, 4)) == 0:
        scores[torch.rand(b_, m, generator=gen) < 0.25] = float("nan")
    scores = scores.to(draw(st.sampled_from(DTYPES)))
    vdtype = draw(st.sampled_from(DTYPES))
    if draw(st.booleans()):  # non-contiguous values
        values = torch.randn(b_, d_, t_, generator=gen).to(vdtype).transpose(1, 2)
    else:
        values = torch.randn(b_, t_, d_, generator=gen).to(vdtype)
    positions = torch.randint(0, 10_000, (b_, t_), generator=gen)
    kw: dict = {"group": group}
    if draw(st.booleans()):
        kw["span_start"] = torch.tensor([draw(st.integers(0, extra)) for _ in range(b_)])
        kw["valid_start"] = torch.tensor([draw(st.integers(0, t_)) for _ in range(b_)])
    mode = mode or draw(st.sampled_from(["k", "alpha"]))
    if mode == "k":
        kw["k"] = torch.tensor([draw(st.integers(-1, m + 1)) for _ in range(b_)])
    else:
        alphas = st.one_of(st.floats(1e-6, 1.0), st.just(1.0), st.just(1e-6))
        kw["alpha"] = draw(alphas) if draw(st.booleans()) else torch.tensor([draw(alphas) for _ in range(b_)])
    width_extra = draw(st.sampled_from([None, 0, 2]))
    tuning = draw(st.sampled_from([{}, {"block_s": 8, "block_t": 4, "block_d": 16}])) if blocks else {}
    return values, positions, scores, kw, width_extra, tuning


def check_counts(scores, kw, got_counts, want_counts=None) -> None:
    """Counts equal the oracle's (or ``want_counts``), except in ambiguous SAP rows: there, valid ones."""
    k, alpha = kw.get("k"), kw.get("alpha")
    for b in range(scores.shape[0]):
        kb = None if k is None else int(k[b])
        ab = None if alpha is None else float(per_row(alpha, scores.shape[0])[b])
        count, ambiguous = oracle_count(scores[b], kb, ab)
        want = count if want_counts is None else int(want_counts[b])
        if ambiguous:
            assert sap_count_valid(scores[b], ab, int(got_counts[b])), (b, int(got_counts[b]), ab)
        else:
            assert int(got_counts[b]) == want, (b, int(got_counts[b]), want)


@settings(max_examples=100, deadline=None)
@given(case=cases())
def test_reference_matches_oracle(case) -> None:
    values, positions, scores, kw, width_extra, _ = case
    ref = select_gather_reference(values, positions, scores, **kw)
    width = None if width_extra is None else int(ref.lengths.max()) + width_extra
    if width is not None:
        ref = select_gather_reference(values, positions, scores, width=width, **kw)
    check_counts(scores, kw, ref.kept_groups)
    assert torch.equal(keep_counts(scores, k=kw.get("k"), alpha=kw.get("alpha")), ref.kept_groups)
    b_ = scores.shape[0]
    span, valid = per_row(kw.get("span_start"), b_), per_row(kw.get("valid_start"), b_)
    want = oracle_gather(values, positions, scores, ref.kept_groups, kw["group"], span, valid, width)
    assert_same(ref, want)


@requires_triton
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases(blocks=True))
def test_triton_matches_reference(case) -> None:
    values, positions, scores, kw, width_extra, tuning = case
    width = None
    if width_extra is not None:
        width = int(select_gather_reference(values, positions, scores, **kw).lengths.max()) + width_extra
    got = dispatch.select_gather_triton(values, positions, scores, width=width, **kw, **tuning)
    ref = select_gather_reference(values, positions, scores, width=width, **kw)
    assert_same(got, ref)  # SAP counts included: bit-identical, not within a tolerance


# ------------------------------------------------------------------------------------ hand-made cases
def run(backend: str, values, positions, scores, **kw) -> SelectGatherResult:
    return select_gather(values, positions, scores, backend=backend, **kw)


def tokens(batch: int, length: int, dim: int = 2, dtype=torch.float32):
    values = (torch.arange(batch * length * dim, dtype=torch.float32) + 1).reshape(batch, length, dim)
    return values.to(dtype), torch.arange(length).expand(batch, length) + 100


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_go_to_lower_index(backend) -> None:
    values, positions = tokens(1, 5)
    out = run(backend, values, positions, torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0]]), k=torch.tensor([2]))
    assert out.index.tolist() == [[-1, -1, -1, 1, 2]]
    assert out.positions.tolist() == [[0, 0, 0, 101, 102]]
    assert torch.equal(out.values[0, 3:], values[0, 1:3]) and not out.values[0, :3].any()
    assert out.lengths.tolist() == [2] and out.kept_groups.tolist() == [2]


@pytest.mark.parametrize("backend", BACKENDS)
def test_k_zero_and_k_all(backend) -> None:
    values, positions = tokens(3, 7)
    scores = torch.tensor([[0.3, 0.1, 0.2]]).expand(3, 3)
    out = run(backend, values, positions, scores, k=torch.tensor([0, 3, 9]), span_start=torch.tensor(2))
    assert out.index.tolist() == [[-1, -1, -1, 0, 1, 5, 6], list(range(7)), list(range(7))]
    assert out.kept_groups.tolist() == [0, 3, 3] and out.lengths.tolist() == [4, 7, 7]


@pytest.mark.parametrize("backend", BACKENDS)
def test_groups_span_and_valid_start(backend) -> None:
    values, positions = tokens(2, 13)
    scores = torch.tensor([[0.5, 2.0, 1.0], [3.0, 1.0, 2.0]], dtype=torch.bfloat16)
    out = run(
        backend, values, positions, scores, k=torch.tensor([1, 2]), group=3,
        span_start=torch.tensor([1, 4]), valid_start=torch.tensor([0, 2]),
    )  # fmt: skip
    assert out.index.tolist() == [
        [-1] * 6 + [0, 4, 5, 6, 10, 11, 12],
        [-1] * 5 + [2, 3, 4, 5, 6, 10, 11, 12],
    ]
    assert out.lengths.tolist() == [7, 8] and out.kept_groups.tolist() == [1, 2]


@pytest.mark.parametrize("backend", BACKENDS)
def test_sap_counts(backend) -> None:
    values, positions = tokens(4, 4)
    probs = torch.log(torch.tensor([0.5, 0.3, 0.2, 1e-30]))
    scores = torch.stack([probs, probs, torch.zeros(4), torch.tensor([0.0, -200.0, -200.0, -200.0])])
    out = run(backend, values, positions, scores, alpha=torch.tensor([0.6, 0.45, 1.0, 1.0]))
    assert out.kept_groups.tolist() == [2, 1, 4, 1]
    assert out.index[0].tolist() == [-1, -1, 0, 1] and out.index[3].tolist() == [-1, -1, -1, 0]
    tiny = run(backend, values, positions, scores, alpha=1e-6)
    assert tiny.kept_groups.tolist() == [1, 1, 1, 1]


def official_keep_count(a_map: torch.Tensor, alpha: float) -> int:
    """The official ``find_min_rank_sum_larger_than_alpha`` (spec §5.5), literally, one map at a time."""
    probs = torch.softmax(a_map.float(), dim=-1)
    cumsum = torch.cumsum(torch.sort(probs, descending=True)[0], dim=-1)
    hits = (cumsum >= alpha).nonzero()
    return len(a_map) if len(hits) == 0 else int(hits[0].item()) + 1


def boundary_rows(dtype: torch.dtype, m: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Maps whose alpha lies exactly on a cumulative softmax mass, one float32 ulp below and above it, and
    alpha = 1: flat maps, tied (integer-valued) maps, few distinct values and random maps."""
    gen = torch.Generator().manual_seed(m)
    maps = [
        torch.zeros(m),
        torch.full((m,), 3.0),
        torch.randint(-2, 3, (m,), generator=gen).float(),
        torch.randint(0, 2, (m,), generator=gen).float() * 5,
        torch.randn(m, generator=gen),
        torch.randn(m, generator=gen) * 4,
    ]
    rows, alphas = [], []
    for a_map in maps:
        a_map = a_map.to(dtype)
        mass = torch.softmax(a_map.float(), 0).sort(descending=True).values.cumsum(0)
        for c in sorted({0, m // 10, m // 2, m - 1}):
            on = mass[c].clamp(max=1.0)
            for alpha in (on, torch.nextafter(on, torch.tensor(0.0)), torch.nextafter(on, torch.tensor(2.0))):
                if 0 < float(alpha) <= 1:
                    rows.append(a_map)
                    alphas.append(float(alpha))
        rows.append(a_map)
        alphas.append(1.0)
    return torch.stack(rows), torch.tensor(alphas, dtype=torch.float32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_sap_counts_equal_the_official_rule_at_boundaries(backend, dtype) -> None:
    """The kept count is the official rule's, bit for bit, where float rounding decides it (issue 12)."""
    for m in (7, 100):
        scores, alphas = boundary_rows(dtype, m)
        want = [official_keep_count(row, float(a)) for row, a in zip(scores, alphas, strict=True)]
        values, positions = tokens(scores.shape[0], m, dim=1)
        if backend == "triton":  # one program per row: the interpreter is slow per program
            out = dispatch.select_gather_triton(
                values, positions, scores, alpha=alphas, block_s=128, block_t=128, block_d=16
            )
        else:
            out = run(backend, values, positions, scores, alpha=alphas)
        got = out.kept_groups.tolist()
        differ = [(i, g, w) for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w]
        assert not differ, f"{len(differ)} of {len(want)} rows differ (row, got, official): {differ[:5]}"
        assert torch.equal(out.kept_groups, keep_counts(scores, alpha=alphas))


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_ranks_lowest_and_signed_zero_ties(backend) -> None:
    values, positions = tokens(2, 4)
    nan = float("nan")
    scores = torch.tensor([[nan, 1.0, nan, 0.0], [-0.0, 0.0, nan, nan]])
    out = run(backend, values, positions, scores, k=torch.tensor([3, 1]))
    assert out.index.tolist() == [[-1, 0, 1, 3], [-1, -1, -1, 0]]
    sap = run(backend, values, positions, torch.tensor([[nan, 0.0, 0.0, nan]] * 2), alpha=0.6)
    assert sap.kept_groups.tolist() == [2, 2] and sap.index[0].tolist() == [-1, -1, 1, 2]


@pytest.mark.parametrize("backend", BACKENDS)
def test_width_and_no_candidates(backend) -> None:
    values, positions = tokens(1, 3, dtype=torch.float16)
    out = run(backend, values, positions, torch.tensor([[2.0, 1.0]]), k=1, width=5)
    assert out.index.tolist() == [[-1, -1, -1, 0, 2]] and out.values.dtype == torch.float16
    empty = run(backend, values, positions, torch.zeros(1, 0), alpha=0.5, span_start=1)
    assert empty.index.tolist() == [[0, 1, 2]] and empty.kept_groups.tolist() == [0]


def test_reference_rejects_short_width() -> None:
    values, positions = tokens(1, 4)
    with pytest.raises(ValueError, match="width 1"):
        select_gather_reference(values, positions, torch.ones(1, 2), k=torch.tensor([2]), width=1)


@requires_triton
def test_triton_multi_program_rows() -> None:
    pytest.importorskip("triton")
    values, positions = tokens(2, 40, dim=20, dtype=torch.bfloat16)
    scores = torch.randn(2, 12, generator=torch.Generator().manual_seed(1))
    kw = {"group": 3, "span_start": torch.tensor([0, 4]), "valid_start": torch.tensor([1, 0])}
    ref = select_gather_reference(values, positions, scores, k=torch.tensor([5, 7]), **kw)
    got = dispatch.select_gather_triton(
        values, positions, scores, k=torch.tensor([5, 7]), block_s=4, block_t=4, block_d=16, **kw
    )
    assert_same(got, ref)


# Compiles the kernel for real GPUs (TTIR -> PTX -> cubin with the ptxas bundled in the triton wheel);
# no GPU is needed to compile, only to launch. Integer arguments get the divisibility-by-16 hints that a
# real launch derives from the values (they decide the vectorised 16-byte copies).
COMPILE_SCRIPT = textwrap.dedent(
    """
    import sys
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from fast3d_kernels.triton_select_gather import select_gather_kernel as kernel

    DIV16 = {"T", "D", "M", "W", "s_vb", "s_vt", "s_pb", "s_sb"}
    SHIFT = {"bf16": 16, "fp16": 13, "fp32": 0}
    def compile_one(cc, vdt, sdt, per_row_tensors, block_m, num_warps):
        ptrs = {"VAL": vdt, "OUT": vdt, "SCO": sdt, "TGT": "i64", "SPAN": "i64",
                "VALID": "i64", "POS": "i64", "OPOS": "i64", "OIDX": "i64", "OLEN": "i64", "OGRP": "i64"}
        const = {"TGT_PTR": per_row_tensors, "SPAN_PTR": per_row_tensors,
                 "VALID_PTR": per_row_tensors, "SHIFT": SHIFT[sdt], "BLOCK_M": block_m, "BLOCK_S": 32,
                 "BLOCK_T": 32, "BLOCK_D": 128 * num_warps // (4 if vdt == "fp32" else 2), "s_vd": 1, "G": 1}
        sig, attrs = {}, {}
        for i, name in enumerate(kernel.arg_names):
            if name in const:
                sig[name] = "constexpr"
            elif name in ptrs:
                sig[name], attrs[(i,)] = "*" + ptrs[name], [["tt.divisibility", 16]]
            else:
                sig[name] = "i32"
                if name in DIV16:
                    attrs[(i,)] = [["tt.divisibility", 16]]
        src = ASTSource(kernel, sig, constexprs=const, attrs=attrs)
        out = triton.compile(src, target=GPUTarget("cuda", cc, 32), options={"num_warps": num_warps})
        assert out.asm["cubin"], "no cubin"
        print(cc, vdt, sdt, per_row_tensors, block_m, num_warps, "ok")

    for args in [(90, "bf16", "bf16", True, 128, 4), (90, "bf16", "bf16", True, 4096, 8),
                 (80, "fp32", "fp32", False, 512, 4), (80, "fp16", "fp16", False, 16, 4)]:
        compile_one(*args)
    """
)


@requires_triton
def test_kernel_compiles_for_gpu(tmp_path) -> None:
    triton = pytest.importorskip("triton")
    from triton.backends import backends

    if "nvidia" not in backends:
        pytest.skip("triton has no NVIDIA backend here")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=str(tmp_path), TRITON_DEFAULT_FP_FUSION="1")
    done = subprocess.run(
        [sys.executable, "-c", COMPILE_SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.count("ok") == 4, (triton.__version__, done.stdout)


# --------------------------------------------------------------------------------- dispatch and errors
def test_auto_uses_reference_on_cpu(monkeypatch) -> None:
    monkeypatch.delenv("FAST3D_KERNELS", raising=False)
    values, positions = tokens(1, 3)
    assert resolve_backend("auto", values) == "torch"
    calls = []
    monkeypatch.setattr(dispatch, "select_gather_triton", lambda *a, **k: calls.append("triton"))
    select_gather(values, positions, torch.ones(1, 3), k=1)
    assert calls == []


def test_env_override(monkeypatch) -> None:
    values, positions = tokens(1, 3)
    calls = []
    monkeypatch.setattr(dispatch, "select_gather_triton", lambda *a, **k: calls.append("triton"))
    monkeypatch.setenv("FAST3D_KERNELS", "triton")
    assert resolve_backend("auto", values) == "triton"
    select_gather(values, positions, torch.ones(1, 3), k=1)
    assert calls == ["triton"]
    assert resolve_backend("torch", values) == "torch"  # explicit backends win over the variable
    monkeypatch.setenv("FAST3D_KERNELS", "torch")
    assert resolve_backend("auto", values) == "torch"
    monkeypatch.setenv("FAST3D_KERNELS", "cuda")
    with pytest.raises(ValueError, match="FAST3D_KERNELS"):
        resolve_backend("auto", values)
    with pytest.raises(ValueError, match="backend"):
        resolve_backend("fast", values)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"k": None}, "exactly one of k"),
        ({"alpha": 0.5}, "exactly one of k"),
        ({"k": None, "alpha": 0.0}, r"alpha must lie in \(0, 1\]"),
        ({"k": None, "alpha": 1.5}, r"alpha must lie in \(0, 1\]"),
        ({"k": None, "alpha": torch.tensor([0.5, 0.0])}, r"alpha must lie in \(0, 1\]"),
        ({"k": torch.tensor([1, 2, 3])}, r"k must be a scalar or have shape \[2\]"),
        ({"k": torch.tensor([1.0, 2.0])}, "k must be an integer tensor"),
        ({"positions": torch.zeros(2, 5, dtype=torch.long)}, r"positions must have shape \[2, 6\]"),
        ({"scores": torch.ones(3, 2)}, r"scores must have shape \[2, M\]"),
        ({"scores": torch.ones(2, 7)}, "do not fit"),
        ({"group": 0}, "group must be an int >= 1"),
        ({"width": -1}, "width must be an int >= 0"),
        ({"values": torch.ones(2, 6)}, r"values must be a \[B, T, D\] tensor"),
        ({"span_start": torch.tensor([0, 1, 2])}, r"span_start must be a scalar or have shape \[2\]"),
    ],
)
def test_bad_arguments(change, message) -> None:
    values, positions = tokens(2, 6)
    kw = {"values": values, "positions": positions, "scores": torch.ones(2, 3), "k": torch.tensor([1, 2])}
    kw.update(change)
    for fn in (select_gather_reference, select_gather):
        with pytest.raises(ValueError, match=message):
            fn(**kw)


def test_keep_counts() -> None:
    scores = torch.tensor([[0.0, 0.0, 0.0, 0.0], [5.0, 0.0, -5.0, -5.0]])
    assert keep_counts(scores, k=torch.tensor([7, -1])).tolist() == [4, 0]
    assert keep_counts(scores, alpha=0.5).tolist() == [2, 1]
    with pytest.raises(ValueError, match="exactly one"):
        keep_counts(scores)
