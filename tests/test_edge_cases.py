"""Bad and extreme inputs: long rows, NaN under the hinge, tiny gradients, patch-score sums, critics that
write to their input, and the refusals of SPEC.md §7 that name the argument."""

import itertools

import explicit
import numpy as np
import pytest
import torch
from torch import nn

import fastgp
import fastgp.reference as R

COMBOS = list(itertools.product(R.NORMS, R.CONSTRAINTS, R.REDUCTIONS))
D = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
real, fake = torch.randn(3, 4), torch.randn(3, 4)


@pytest.fixture
def tiny_blocks(monkeypatch):
    """Blocks of 4 entries, chunks of 2 blocks: rows of a few dozen entries take the long-row path."""
    monkeypatch.setattr(R, "_BLOCK", 4)
    monkeypatch.setattr(R, "_DIRECT", 4)
    monkeypatch.setattr(R, "_CHUNK", 2 * 4 * 3)


@pytest.mark.parametrize("norm,constraint,reduction", COMBOS)
@pytest.mark.parametrize("d", [4, 5, 24, 27])
def test_long_row_path_matches_formulas(tiny_blocks, norm, constraint, reduction, d):
    g = torch.randn(3, d, dtype=torch.float64)
    g[1, :4] = 0  # a zero block
    g[2] = 0  # a zero row
    g.requires_grad_(True)
    P, _ = R.penalty_from_grad(g, norm=norm, constraint=constraint, center=0.5, weight=3.0, reduction=reduction)
    want, dg, _ = explicit.penalty(g.detach(), norm, constraint, 0.5, 3.0, reduction)
    torch.testing.assert_close(P, want, rtol=1e-12, atol=0)
    (got,) = torch.autograd.grad(P, g)
    torch.testing.assert_close(got, dg, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("norm", R.NORMS)
def test_long_row_path_twice_differentiable(tiny_blocks, norm):
    g = torch.randn(2, 27, dtype=torch.float64, requires_grad=True)

    def f(g):
        return R.penalty_from_grad(g, norm=norm, center=0.5)[0]

    assert torch.autograd.gradcheck(f, (g,))
    assert torch.autograd.gradgradcheck(f, (g,))


def test_long_half_row_keeps_no_float32_copy(tiny_blocks):
    # The graph holds the float16 gradient itself, not a float32 copy of it.
    g = torch.randn(2, 27).half().requires_grad_(True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        n = R.grad_norms(g, "l2")
    assert all(t.dtype != torch.float32 or t.numel() < g.numel() for t in saved)
    torch.testing.assert_close(n, torch.linalg.vector_norm(g.double(), dim=1).float(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("backend_norm", ["l1", "linf"])
def test_nan_under_the_hinge_is_nan(backend_norm):
    # SPEC.md §3: NaN in, NaN out. relu's slope at NaN is 1, which gave this row a finite gradient.
    g = torch.tensor([[0.5, float("nan"), 2.0], [3.0, 1.0, 0.0]], requires_grad=True)
    P, _ = R.penalty_from_grad(g, norm=backend_norm, constraint="hinge", weight=10.0)
    (dg,) = torch.autograd.grad(P, g)
    assert torch.isnan(P) and torch.isnan(dg[0]).all()
    want = explicit.penalty(g.detach()[1:], backend_norm, "hinge", 1.0, 10.0, "mean")[1] / 2
    torch.testing.assert_close(dg[1:].double(), want)


@pytest.mark.parametrize("constraint", R.CONSTRAINTS)
def test_nan_maximum_makes_every_gradient_nan(constraint):
    g = torch.tensor([[0.5, float("nan")], [0.1, 0.2], [3.0, 1.0]], requires_grad=True)
    P, _ = R.penalty_from_grad(g, constraint=constraint, reduction="max")
    (dg,) = torch.autograd.grad(P, g)
    assert torch.isnan(P) and torch.isnan(dg).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_tiny_l2_rows_are_zero_rows(dtype):
    # Below the tiny-row bound (sqrt of the smallest normal of the accumulation dtype) n is 0 and
    # the row's gradient is 0; just above it the norm is exact.
    bound = R._TINY[R.acc_dtype(dtype)]
    g = torch.zeros(4, 3, dtype=dtype)
    g[0, 0], g[1, 0], g[2, 0], g[3, 0] = bound * 0.5, bound * 0.25, bound * 4, bound * 2
    g.requires_grad_(True)
    n = R.grad_norms(g, "l2")
    assert n[:2].tolist() == [0.0, 0.0]
    torch.testing.assert_close(n[2:].double(), g.detach()[2:, 0].double(), rtol=1e-6, atol=0)
    # R1 (c = 0) under the max: the largest row above the bound alone gets the gradient; the rows
    # below it are zero rows and take no share, however their squares round.
    P, _ = R.penalty_from_grad(g, center=0.0, weight=1.0, reduction="max")
    (dg,) = torch.autograd.grad(P, g)
    assert torch.isfinite(dg).all()
    assert (dg[[0, 1, 3]] == 0).all() and dg[2, 0] != 0


def test_tiny_l2_rows_are_zero_rows_under_gn():
    g = torch.full((2, 5), 1e-21, requires_grad=True)
    f = torch.tensor([0.5, -2.0], requires_grad=True)
    out = R.normalize(f, g, "gn", "l2")
    assert out.tolist() == [1.0, -1.0]
    dg, df = torch.autograd.grad(out.sum(), (g, f))
    assert (dg == 0).all() and (df == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tiny_l2_rows_are_zero_rows_in_the_triton_kernels(dtype):
    if not fastgp.backends()["triton"].available:
        pytest.skip("the triton backend cannot run here")
    from fastgp import ops

    device = "cuda" if torch.cuda.is_available() else "cpu"
    bound = R._TINY[R.acc_dtype(dtype)]
    g = torch.zeros(4, 3, dtype=dtype, device=device)
    g[0, 0], g[1, 0], g[2, 0], g[3, 0] = bound * 0.5, bound, bound * 4, 1.0
    for reduction in R.REDUCTIONS:
        kw = dict(center=0.0, weight=1.0, reduction=reduction)
        got = g.clone().requires_grad_(True)
        want = g.clone().requires_grad_(True)
        P, n = ops.penalty_from_grad(got, **kw)
        P_ref, n_ref = R.penalty_from_grad(want, **kw)
        assert n[:2].tolist() == [0.0, 0.0]
        torch.testing.assert_close(n, n_ref, rtol=1e-6, atol=0)
        torch.testing.assert_close(torch.autograd.grad(P, got)[0], torch.autograd.grad(P_ref, want)[0])
    f = torch.tensor([0.5, -2.0, 1.0, 1.0], dtype=dtype, device=device)
    torch.testing.assert_close(ops.normalize(f, g, "gn", "l2"), R.normalize(f, g, "gn", "l2"))


def test_all_tiny_rows_under_max_have_zero_gradient():
    g = torch.full((3, 5), 1e-21, requires_grad=True)
    g.data[1] *= 1.5
    P, norms = R.penalty_from_grad(g, center=0.0, reduction="max")
    (dg,) = torch.autograd.grad(P, g)
    assert (norms == 0).all() and P == 0 and (dg == 0).all()


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_score_sums_from_the_report(backend):
    # 64 float16 patch scores of 2000 overflow float16; float32 [1e8, 1, -1e8] sum to 0 in float32.
    if not fastgp.backends()[backend].available:
        pytest.skip(f"the {backend} backend cannot run here")
    device = "cuda" if backend != "torch" and torch.cuda.is_available() else "cpu"
    P = fastgp.penalty_from_grad(
        torch.ones(2, 3, device=device),
        scores=torch.full((2, 64), 2000.0, dtype=torch.float16, device=device),
        weight=0.0,
        output_weight=1.0,
        backend=backend,
    )
    assert P.item() == pytest.approx(128000.0**2)
    for grad_dtype, scores_dtype in [(torch.float64, torch.float32), (torch.float32, torch.float64)]:
        P = fastgp.penalty_from_grad(
            torch.ones(1, 3, dtype=grad_dtype, device=device),
            scores=torch.tensor([[1e8, 1.0, -1e8]], dtype=scores_dtype, device=device),
            weight=0.0,
            output_weight=1.0,
            backend=backend,
        )
        assert P.dtype == grad_dtype and P.item() == 1.0


def test_patch_critic_scores_summed_in_float32():
    x = torch.randn(2, 64).half()
    f, g = fastgp.input_grad(lambda x: x * 0 + 2000.0 + x, x)
    assert f.dtype == torch.float32 and torch.isfinite(f).all() and g.dtype == torch.float16
    P = fastgp.gradient_penalty(lambda x: x * 0 + 2000.0 + x, x, points="real", output_weight=1.0)
    assert torch.isfinite(P)


@pytest.mark.parametrize("points", ["real", "fake", "tensor", "input_grad", "normalized"])
def test_critic_writing_x_data_leaves_caller_tensor_alone(points):
    def writer(x):
        x.data.mul_(0).add_(7.0)
        return D(x)

    x = torch.randn(3, 4)
    before = x.clone()
    if points == "input_grad":
        fastgp.input_grad(writer, x)
    elif points == "normalized":
        fastgp.normalized(writer)(x)
    elif points == "tensor":
        fastgp.gradient_penalty(writer, None, points=x)
    else:
        other = x.clone()
        fastgp.gradient_penalty(writer, *((x, other) if points == "real" else (other, x)), points=points)
    assert torch.equal(x, before)


def test_in_place_critic_is_told_how_to_fix_it():
    def in_place(x):
        return D(x.relu_())

    with pytest.raises(RuntimeError, match=r"x = x.clone\(\)"):
        fastgp.gradient_penalty(in_place, real, points="real")
    with pytest.raises(RuntimeError, match="leaf tensor that requires grad"):
        fastgp.input_grad(in_place, real)


def test_weights_allowed_where_the_accumulation_dtype_holds_them():
    g = torch.randn(3, 4, dtype=torch.float64)
    assert torch.isfinite(fastgp.penalty_from_grad(g, weight=1e300))
    x = torch.randn(3, 4, dtype=torch.float64)
    assert torch.isfinite(fastgp.gradient_penalty(nn.Linear(4, 1).double(), x, x + 1, weight=1e300))


@pytest.mark.parametrize("seed", [np.int64(3), np.int32(3), np.uint8(3)])
def test_numpy_integer_seed_is_an_int_seed(seed):
    a = fastgp.interpolate(real, fake, seed=seed, return_alpha=True)[1]
    b = fastgp.interpolate(real, fake, seed=3, return_alpha=True)[1]
    assert torch.equal(a, b)
    assert torch.isfinite(fastgp.gradient_penalty(D, real, fake, seed=seed))
