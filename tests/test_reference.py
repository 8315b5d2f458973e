"""The reference path against SPEC.md's hand-written formulas, float64 autograd and gradcheck."""

import itertools
import math

import explicit
import pytest
import torch

import fastgp.reference as R

COMBOS = list(itertools.product(R.NORMS, R.CONSTRAINTS, R.REDUCTIONS))
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
SHAPES = [(1, 1), (1, 7), (5, 3), (3, 2, 5, 7), (17, 33)]


def rand_grad(shape, dtype=torch.float64, scale=1.0):
    return (torch.randn(shape, dtype=torch.float64) * scale).to(dtype)


@pytest.mark.parametrize("norm,constraint,reduction", COMBOS)
@pytest.mark.parametrize("shape", SHAPES)
def test_penalty_matches_formulas_float64(norm, constraint, reduction, shape):
    g = rand_grad(shape, scale=0.7).requires_grad_(True)
    center = float(torch.rand(()) * 2)
    scores = torch.randn(shape[0], dtype=torch.float64, requires_grad=True)
    P, norms = R.penalty_from_grad(
        g,
        norm=norm,
        constraint=constraint,
        center=center,
        weight=3.0,
        reduction=reduction,
        scores=scores,
        output_weight=0.5,
    )
    want, dg, df = explicit.penalty(g.detach(), norm, constraint, center, 3.0, reduction, scores.detach(), 0.5)
    assert P.dtype == torch.float64 and norms.dtype == torch.float64
    torch.testing.assert_close(P, want, rtol=1e-10, atol=0)
    got_g, got_f = torch.autograd.grad(P, (g, scores))
    torch.testing.assert_close(got_g.reshape(shape[0], -1), dg, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(got_f, df, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm,constraint,reduction", COMBOS)
def test_penalty_in_low_precision(dtype, norm, constraint, reduction):
    g = rand_grad((6, 37), dtype).requires_grad_(True)
    P, norms = R.penalty_from_grad(g, norm=norm, constraint=constraint, center=1.0, weight=10.0, reduction=reduction)
    want, dg, _ = explicit.penalty(g.detach(), norm, constraint, 1.0, 10.0, reduction)
    assert P.dtype == norms.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    tol = {torch.float16: 1e-3, torch.bfloat16: 1e-2, torch.float32: 1e-5, torch.float64: 1e-10}[dtype]
    torch.testing.assert_close(P.double(), want, rtol=tol, atol=tol)
    (got,) = torch.autograd.grad(P, g)
    assert got.dtype == dtype
    # The gradient is computed in float32 and rounded once to the dtype of g.
    torch.testing.assert_close(got.double(), dg.reshape(got.shape), rtol=tol * 8, atol=tol)


def test_float16_large_gradients_do_not_overflow():
    g = (torch.rand(4, 4096) * 2e3 - 1e3).half().requires_grad_(True)
    for norm in R.NORMS:
        P, norms = R.penalty_from_grad(g, norm=norm)
        assert torch.isfinite(P) and torch.isfinite(norms).all()
        want, _, _ = explicit.penalty(g.detach(), norm, "ls", 1.0, 10.0, "mean")
        assert math.isclose(P.item(), want.item(), rel_tol=1e-5)
        # With ls the l1 gradient itself (~1e7) exceeds float16's range; the hinge's does not.
        (dg,) = torch.autograd.grad(R.penalty_from_grad(g, norm=norm, constraint="hinge")[0], g)
        assert torch.isfinite(dg).all()


@pytest.mark.parametrize("norm,constraint,reduction", COMBOS)
def test_zero_rows_give_zero_gradient_never_nan(norm, constraint, reduction):
    g = rand_grad((4, 9))
    g[1] = 0
    g[3] = 0
    g.requires_grad_(True)
    P, norms = R.penalty_from_grad(g, norm=norm, constraint=constraint, reduction=reduction)
    (dg,) = torch.autograd.grad(P, g)
    assert torch.isfinite(P) and torch.isfinite(dg).all()
    assert (norms[[1, 3]] == 0).all() and (dg[[1, 3]] == 0).all()


def test_linf_ties_share_evenly():
    g = torch.tensor([[2.0, -2.0, 1.0, 2.0], [0.5, 0.1, 0.2, 0.3]], dtype=torch.float64, requires_grad=True)
    P, _ = R.penalty_from_grad(g, norm="linf", constraint="ls", center=0.0, weight=1.0)
    (dg,) = torch.autograd.grad(P, g)
    # h'(n) = 2n = 4, λ/B = 1/2, three ties share sign/3.
    torch.testing.assert_close(dg[0], torch.tensor([2 / 3, -2 / 3, 0.0, 2 / 3], dtype=torch.float64))
    torch.testing.assert_close(dg[1], torch.tensor([0.5, 0.0, 0.0, 0.0], dtype=torch.float64))


def test_max_reduction_ties_share_and_hinge_at_center_is_flat():
    g = torch.tensor([[3.0, 4.0], [4.0, 3.0], [1.0, 0.0]], dtype=torch.float64, requires_grad=True)
    P, _ = R.penalty_from_grad(g, norm="l2", constraint="ls", center=0.0, weight=1.0, reduction="max")
    (dg,) = torch.autograd.grad(P, g)
    torch.testing.assert_close(dg, torch.tensor([[3.0, 4.0], [4.0, 3.0], [0, 0]], dtype=torch.float64))
    P, _ = R.penalty_from_grad(g, norm="l2", constraint="hinge", center=5.0, weight=1.0)
    (dg,) = torch.autograd.grad(P, g)
    assert P.item() == 0 and (dg == 0).all()


def test_nan_propagates():
    g = rand_grad((3, 5))
    g[1, 2] = math.nan
    for norm, constraint, reduction in COMBOS:
        P, _ = R.penalty_from_grad(g, norm=norm, constraint=constraint, reduction=reduction)
        assert math.isnan(P.item()), (norm, constraint, reduction)
    scores = torch.tensor([0.5, math.nan, 0.0], dtype=torch.float64)
    out = R.normalize(scores, rand_grad((3, 5)), "gn")
    assert math.isnan(out[1].item()) and not math.isnan(out[0].item())


@pytest.mark.parametrize("norm,constraint,reduction", COMBOS)
def test_gradcheck_and_gradgradcheck(norm, constraint, reduction):
    g = (rand_grad((3, 4)) + 0.05).requires_grad_(True)
    s = torch.randn(3, dtype=torch.float64, requires_grad=True)

    def fn(g, s):
        return R.penalty_from_grad(
            g,
            norm=norm,
            constraint=constraint,
            center=0.3,
            weight=2.0,
            reduction=reduction,
            scores=s,
            output_weight=0.7,
        )[0]

    assert torch.autograd.gradcheck(fn, (g, s))
    if norm == "l2" and constraint != "hinge":  # l1/linf/hinge are piecewise linear: no curvature to check
        assert torch.autograd.gradgradcheck(fn, (g, s))


@pytest.mark.parametrize("mode", R.MODES)
@pytest.mark.parametrize("norm", R.NORMS)
@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (4, 2, 3, 3)])
def test_normalize_matches_formulas(mode, norm, shape):
    scores = torch.randn(shape[0], dtype=torch.float64, requires_grad=True)
    grad = rand_grad(shape).requires_grad_(True)
    out = R.normalize(scores, grad, mode, norm)
    want, df, dg = explicit.normalize(scores.detach(), grad.detach(), mode, norm)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=0)
    assert (out.abs() <= 1).all()
    got_f, got_g = torch.autograd.grad(out.sum(), (scores, grad))
    torch.testing.assert_close(got_f, df, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(got_g.reshape(shape[0], -1), dg, rtol=1e-10, atol=1e-14)
    assert torch.autograd.gradcheck(lambda f, g: R.normalize(f, g, mode, norm), (scores, grad))
    if norm == "l2":
        assert torch.autograd.gradgradcheck(lambda f, g: R.normalize(f, g, mode, norm), (scores, grad))


@pytest.mark.parametrize("mode", R.MODES)
def test_normalize_zero_over_zero(mode):
    one = 1.0 if mode == "pgn" else 0.0  # PGN's u = 1 - f and g' = 1 - g vanish at f = g = 1
    scores = torch.full((3, 1), one, dtype=torch.float64, requires_grad=True)
    grad = torch.full((3, 4), one, dtype=torch.float64, requires_grad=True)
    out = R.normalize(scores, grad, mode)
    assert out.shape == (3, 1) and (out == 0).all()
    got_f, got_g = torch.autograd.grad(out.sum(), (scores, grad))
    assert (got_f == 0).all() and (got_g == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_normalize_dtypes(dtype):
    scores = torch.randn(7, dtype=torch.float64).to(dtype)
    grad = rand_grad((7, 3, 5), dtype)
    out = R.normalize(scores, grad, "gn", "l2")
    want, _, _ = explicit.normalize(scores, grad, "gn", "l2")
    assert out.dtype == dtype
    tol = {torch.float16: 2e-3, torch.bfloat16: 1e-2, torch.float32: 1e-6, torch.float64: 1e-12}[dtype]
    torch.testing.assert_close(out.double(), want, rtol=tol, atol=tol)


def test_layouts_give_the_same_values():
    g = rand_grad((3, 4, 5, 6))
    views = [g.to(memory_format=torch.channels_last), g.transpose(2, 3).contiguous().transpose(2, 3), g[:, ::1, :, :]]
    base, _ = R.penalty_from_grad(g, norm="linf")
    for v in views:
        torch.testing.assert_close(R.penalty_from_grad(v, norm="linf")[0], base, rtol=1e-12, atol=0)
    strided = rand_grad((6, 8))[::2, ::3]
    torch.testing.assert_close(R.grad_norms(strided), R.grad_norms(strided.contiguous()))


def test_interpolate_formula_and_seed():
    real, fake = torch.randn(5, 3, 4), torch.randn(5, 3, 4)
    x_hat, alpha = R.interpolate(real, fake, "interpolate", seed=7)
    a = alpha.view(-1, 1, 1)
    torch.testing.assert_close(x_hat, a * real + (1 - a) * fake)
    assert alpha.shape == (5,) and ((alpha >= 0) & (alpha < 1)).all()
    again, alpha2 = R.interpolate(real, fake, "interpolate", seed=7)
    assert torch.equal(alpha, alpha2) and torch.equal(x_hat, again)
    assert not torch.equal(alpha, R.interpolate(real, fake, "interpolate", seed=8)[1])
    torch.manual_seed(3)
    first = R.interpolate(real, fake)[1]
    torch.manual_seed(3)
    assert torch.equal(first, R.interpolate(real, fake)[1])


def test_interpolate_dragan_and_gradients():
    real = torch.randn(64, 10, dtype=torch.float64, requires_grad=True)
    x_hat, alpha = R.interpolate(real, None, "dragan", seed=1)
    step = (x_hat - real) / (0.5 * real.std() * alpha[:, None])
    assert ((step >= 0) & (step < 1)).all()  # u ~ U[0,1) elementwise
    assert torch.autograd.gradcheck(
        lambda r: R.interpolate(r, None, "dragan", seed=1)[0], (real[:4, :3].detach().clone().requires_grad_(),)
    )
    fake = torch.randn(64, 10, dtype=torch.float64, requires_grad=True)
    x_hat, alpha = R.interpolate(real, fake, "interpolate", seed=2)
    gr, gf = torch.autograd.grad(x_hat.sum(), (real, fake))
    torch.testing.assert_close(gr, alpha[:, None].expand(64, 10))
    torch.testing.assert_close(gf, 1 - alpha[:, None].expand(64, 10))
    assert R.interpolate(real, fake, "real")[0] is real and R.interpolate(real, fake, "fake")[0] is fake
