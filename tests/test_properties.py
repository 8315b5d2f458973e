"""Property tests (hypothesis) for the classes of input that fixed examples miss: long rows, NaN
anywhere in a row, and per-sample sums of patch scores; against float64 oracles written from SPEC.md.

Examples are derandomized and few, so that the run is reproducible and cheap; the Triton cases run
through the interpreter on CPU (conftest.py) and are fewer still.
"""

import importlib.util
import itertools

import explicit
import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import fastgp
import fastgp.reference as R

COMBOS = list(itertools.product(R.NORMS, R.CONSTRAINTS, R.REDUCTIONS))
# The autouse seed fixture of conftest.py only seeds torch: every example draws its own data.
FEW = settings(
    max_examples=6, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _torch_ops():
    return R


def _triton_ops():
    if importlib.util.find_spec("triton") is None or not fastgp.backends()["triton"].available:
        pytest.skip("the Triton backend cannot run here")
    from fastgp import ops

    return ops


# ---------------------------------------------------------------------------------------------
# Long rows: the reference's error does not grow with the row length (SPEC.md §3).


def _row(kind: str, seed: int, d: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if kind == "normal":
        return torch.randn(1, d, generator=gen)
    if kind == "positive":
        return torch.rand(1, d, generator=gen) + 0.5
    return torch.full((1, d), 0.1)  # one value over and over: a one-pass float32 sum drifts the most


@settings(FEW, max_examples=4)
@given(
    kind=st.sampled_from(["normal", "positive", "constant"]),
    seed=st.integers(0, 2**31 - 1),
    norm=st.sampled_from(["l2", "l1"]),
)
def test_long_float32_row_within_1e_6_of_float64(kind, seed, norm):
    g = _row(kind, seed, 2**24)
    want = torch.linalg.vector_norm(g.double(), R._ORD[norm], dim=1)
    got = R.grad_norms(g, norm)
    assert got.dtype == torch.float32
    assert ((got.double() - want).abs() / want).item() <= 1e-6


def test_long_float16_rows_do_not_stall():
    # Two rows of 2^25 float16 entries (128 MiB; the 2^30 of a large model takes ~20 s here): a
    # one-pass float32 sum of ones stalls at 2^24 per accumulator.
    g = torch.ones(2, 2**25, dtype=torch.float16)
    g[1, ::3] = 0.25
    want64 = g.double()
    with torch.no_grad():
        for norm in ("l2", "l1"):
            want = torch.linalg.vector_norm(want64, R._ORD[norm], dim=1)
            got = R.grad_norms(g, norm)
            assert ((got.double() - want).abs() / want).max().item() <= 1e-6


# ---------------------------------------------------------------------------------------------
# NaN in, NaN out (SPEC.md §3, §7): a row with a NaN gets a NaN norm and an all-NaN gradient.


@st.composite
def _nan_grads(draw):
    B = draw(st.integers(1, 4))
    d = draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.randn(B, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    g *= draw(st.sampled_from([1e-3, 0.3, 1.0, 50.0]))  # below, around and above the centre
    rows = draw(st.sets(st.integers(0, B - 1), min_size=1))
    for i in rows:
        if draw(st.booleans()):
            g[i, draw(st.integers(0, d - 1))] = 0.0
        g[i, draw(st.integers(0, d - 1))] = float("nan")
    return g, sorted(rows)


def _check_nan_propagates(ops, g, rows, dtype, norm, constraint, reduction):
    device = "cuda" if torch.cuda.is_available() and ops is not R else "cpu"
    leaf = g.to(device, dtype).requires_grad_(True)
    P, norms = ops.penalty_from_grad(leaf, norm=norm, constraint=constraint, center=1.0, reduction=reduction)
    (dg,) = torch.autograd.grad(P, leaf)
    assert torch.isnan(P)
    assert torch.isnan(norms[rows]).all()
    assert torch.isnan(dg[rows]).all(), f"a NaN row's gradient has finite entries: {dg[rows]}"
    clean = [i for i in range(g.shape[0]) if i not in rows]
    if reduction == "mean" and clean:
        # The other rows' gradients are theirs alone: finite, and as if the NaN rows were not there.
        want = explicit.penalty(g[clean], norm, constraint, 1.0, 10.0, "mean")[1] * len(clean) / g.shape[0]
        torch.testing.assert_close(dg[clean].double().cpu(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("norm,constraint,reduction", COMBOS)
@FEW
@given(case=_nan_grads(), dtype=st.sampled_from([torch.float64, torch.float32]))
def test_nan_propagates_reference(norm, constraint, reduction, case, dtype):
    _check_nan_propagates(_torch_ops(), *case, dtype, norm, constraint, reduction)


@pytest.mark.parametrize("norm,constraint,reduction", COMBOS)
@settings(FEW, max_examples=2, phases=[Phase.explicit, Phase.generate])  # shrinking is slow when interpreted
@given(case=_nan_grads())
def test_nan_propagates_triton(norm, constraint, reduction, case):
    _check_nan_propagates(_triton_ops(), *case, torch.float32, norm, constraint, reduction)


# ---------------------------------------------------------------------------------------------
# Per-sample sums of (B, *T) scores accumulate in float32 (float64 if scores or grad are float64).


_SCORE_CASES = dict(
    seed=st.integers(0, 2**31 - 1),
    T=st.integers(1, 80),
    scale=st.sampled_from([1.0, 2000.0, 1e8]),
    dtypes=st.sampled_from(
        [
            (torch.float16, torch.float32),
            (torch.bfloat16, torch.float32),
            (torch.float32, torch.float64),
            (torch.float64, torch.float32),
        ]
    ),
)


def _check_score_sums(ops, seed, T, scale, dtypes):
    sdtype, gdtype = dtypes
    scale = min(scale, torch.finfo(sdtype).max / 2)
    gen = torch.Generator().manual_seed(seed)
    scores = (torch.randn(3, T, generator=gen, dtype=torch.float64) * scale).to(sdtype)
    grad = torch.randn(3, 5, generator=gen, dtype=torch.float64).to(gdtype)
    device = "cuda" if torch.cuda.is_available() and ops is not R else "cpu"
    P, _ = ops.penalty_from_grad(grad.to(device), scores=scores.to(device), output_weight=0.5)
    want = explicit.penalty(grad.double(), "l2", "ls", 1.0, 10.0, "mean", scores.double(), 0.5)[0]
    assert P.dtype == R.acc_dtype(gdtype) and torch.isfinite(P)
    torch.testing.assert_close(P.double().cpu(), want, rtol=1e-5, atol=0)


@FEW
@given(**_SCORE_CASES)
def test_score_sums_accumulate_reference(seed, T, scale, dtypes):
    sdtype, gdtype = dtypes
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(3, T, generator=gen, dtype=torch.float64).mul(min(scale, torch.finfo(sdtype).max / 2))
    scores = scores.to(sdtype)
    f = R.score_sums(scores, gdtype)
    assert f.dtype == R.acc_dtype(sdtype, gdtype)
    torch.testing.assert_close(f.double(), scores.double().sum(1), rtol=1e-6, atol=1e-6 * scale)
    _check_score_sums(_torch_ops(), seed, T, scale, dtypes)


@settings(FEW, max_examples=4, phases=[Phase.explicit, Phase.generate])
@given(**_SCORE_CASES)
def test_score_sums_accumulate_triton(seed, T, scale, dtypes):
    _check_score_sums(_triton_ops(), seed, T, scale, dtypes)


@FEW
@given(seed=st.integers(0, 2**31 - 1), T=st.integers(2, 80), dtype=st.sampled_from([torch.float16, torch.bfloat16]))
def test_patch_critic_scores_accumulate(seed, T, dtype):
    x = torch.randn(2, T, generator=torch.Generator().manual_seed(seed)).to(dtype)

    def D(x):
        return 2000.0 + x  # T patch scores of ~2000 per sample: their sum overflows float16 past 32 patches

    f, _ = fastgp.input_grad(D, x)
    assert f.dtype == torch.float32
    torch.testing.assert_close(f.double(), D(x).double().sum(1), rtol=1e-6, atol=0)
