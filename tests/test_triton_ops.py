"""The Triton backend (`fastgp.ops`) against the oracle (`fastgp.reference`, SPEC.md).

Runs on CUDA tensors when a GPU is present, else on CPU tensors through Triton's interpreter
(`TRITON_INTERPRET=1`, set by conftest.py); shapes are tiny so that the interpreter stays fast.

Tolerance (flash-attention's rule): the kernel must be no further from the float64 reference than
twice PyTorch's own error in that dtype (the reference run in that dtype) plus a small atol.
Inputs are fresh random draws (conftest.py seeds each test and prints the seed).
"""

import os
import threading

import pytest
import torch

pytest.importorskip("triton")
import triton
import triton.language as tl

from fastgp import _layout, ops
from fastgp import reference as R
from fastgp.ops import _common

if torch.cuda.is_available():
    DEVICE = "cuda"
elif os.environ.get("TRITON_INTERPRET") == "1":
    DEVICE = "cpu"
else:  # pragma: no cover - conftest sets TRITON_INTERPRET when there is no GPU
    pytest.skip("no CUDA device and TRITON_INTERPRET is not set", allow_module_level=True)

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
# float32's atol covers a different summation order (chunked partials vs PyTorch's reduction),
# which for a scalar can exceed twice PyTorch's own error when that one happens to be tiny.
ATOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}
NORMS, CONSTRAINTS, REDUCTIONS, MODES = R.NORMS, R.CONSTRAINTS, R.REDUCTIONS, R.MODES


@pytest.fixture
def small_chunks(monkeypatch):
    """Rows of a few dozen entries then span several programs (split rows + last-program path),
    and the last program reduces partials and rows in several steps."""
    monkeypatch.setattr(_common, "BLOCK_SIZE", 16)
    monkeypatch.setattr(_common, "TILES_PER_CHUNK", 2)
    monkeypatch.setattr(_common, "MIN_PROGRAMS", 1)
    monkeypatch.setattr(_common, "FINISH_TILE", 8)


def randn(*shape, dtype=torch.float32, scale=1.0) -> torch.Tensor:
    return (scale * torch.randn(*shape, dtype=torch.float64)).to(device=DEVICE, dtype=dtype)


def assert_close(name: str, ours, lp, ref, dtype: torch.dtype) -> None:
    """|ours - ref| <= 2·|lp - ref| + atol·max(1, |ref|), NaN where the reference has NaN."""
    ours, lp, ref = (t.detach().to("cpu", torch.float64) for t in (ours, lp, ref))
    assert ours.shape == ref.shape, f"{name}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    nan = ref.isnan()
    assert torch.equal(ours.isnan(), nan), f"{name}: NaN pattern differs\nours={ours}\nref={ref}"
    if nan.all():
        return
    ours, lp, ref = ours[~nan], lp[~nan], ref[~nan]
    atol = ATOL[dtype] * max(1.0, ref.abs().max().item())
    bound = 2 * (lp - ref).abs().max().item() + atol
    err = (ours - ref).abs()
    bad = (err > bound).nonzero().flatten()[:5].tolist()
    assert not bad, (
        f"{name} ({dtype}): max err {err.max().item():.3g} > bound {bound:.3g}; first mismatches "
        + ", ".join(f"[{i}] ours={ours[i].item():.8g} ref={ref[i].item():.8g}" for i in bad)
    )


def leaf(t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    return t.detach().to(dtype or t.dtype).requires_grad_()


# ---------------------------------------------------------------------------------------------
# penalty_from_grad


def run_penalty(fn, grad, scores, dtype=None, **kw):
    """`(P, norms, ∂L/∂grad, ∂L/∂scores)` with L = P + Σ norms·w (so the norms' backward runs too)."""
    g = leaf(grad, dtype)
    s = leaf(scores, dtype) if scores is not None else None
    p, norms = fn(g, scores=s, **kw)
    w = torch.linspace(0.5, 1.5, norms.numel(), dtype=norms.dtype, device=norms.device)
    inputs = (g,) if s is None else (g, s)
    grads = torch.autograd.grad(p + (norms * w).sum(), inputs, allow_unused=True)
    return p, norms, *grads, *([None] if s is None else [])


def check_penalty(grad, scores=None, **kw):
    dtype = grad.dtype
    ours = run_penalty(ops.penalty_from_grad, grad, scores, **kw)
    lp = run_penalty(R.penalty_from_grad, grad, scores, **kw)
    ref = run_penalty(R.penalty_from_grad, grad, scores, torch.float64, **kw)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert ours[0].dtype == acc and ours[0].dim() == 0 and ours[1].dtype == acc
    assert ours[2].dtype == dtype and ours[2].shape == grad.shape
    for name, a, b, c in zip(("P", "norms", "dgrad", "dscores"), ours, lp, ref, strict=True):
        if c is None:
            assert a is None, f"{name}: expected no gradient"
        else:
            assert_close(name, a, b, c, dtype)
    return ours


def penalty_grad(grad, **kw):
    """∂P/∂grad from the Triton op alone (no norms term)."""
    g = leaf(grad)
    return torch.autograd.grad(ops.penalty_from_grad(g, **kw)[0], (g,))[0]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("constraint", CONSTRAINTS)
@pytest.mark.parametrize("norm", NORMS)
def test_penalty_matches_reference(small_chunks, norm, constraint, reduction, dtype):
    grad = randn(3, 5, 13, dtype=dtype, scale=0.3)  # d = 65: 3 chunks of 32, the last partial
    scores = randn(3, dtype=dtype)
    center = R.grad_norms(grad.double(), norm).mean().item()  # some samples on each side of c
    check_penalty(
        grad,
        scores,
        norm=norm,
        constraint=constraint,
        center=center,
        weight=3.0,
        reduction=reduction,
        output_weight=0.25,
    )


@pytest.mark.parametrize("norm", NORMS)
def test_penalty_default_chunking_and_many_rows(norm):
    # One program per row (default blocks) and more rows than the finishing program's step.
    grad = randn(150, 7, dtype=torch.float32)
    check_penalty(grad, randn(150), norm=norm, center=1.0, weight=10.0, output_weight=0.1)


AWKWARD = [(1, 1), (1, 70), (5, 1), (7, 2), (33, 3), (3, 20), (2, 1023), (4, 400)]


@pytest.mark.parametrize("shape", AWKWARD, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_awkward_shapes(small_chunks, shape, dtype):
    """One row, one entry, rows of 2, a row per several programs, many rows per program, rows
    split into more chunks than the last program reads at once (FINISH_TILE 8)."""
    grad, scores = randn(*shape, dtype=dtype, scale=0.5), randn(shape[0], dtype=dtype)
    for norm, reduction, mode in (("l2", "mean", "gn"), ("l1", "max", "pgn"), ("linf", "max", "gn")):
        # Not the mean norm: with two rows, h would tie to the last bit and the max's share depend on it.
        center = 0.9 * R.grad_norms(grad.double(), norm).mean().item()
        check_penalty(grad, scores, norm=norm, center=center, reduction=reduction, output_weight=0.5)
        check_normalize(scores, grad, mode, norm)


@pytest.mark.parametrize("shape", [(4096, 2), (2, 1023), (3, 5000), (1, 1)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_default_plans(shape, dtype):
    grad, scores = randn(*shape, dtype=dtype, scale=0.5), randn(shape[0], dtype=dtype)
    for norm in NORMS:
        check_penalty(grad, scores, norm=norm, reduction="max" if norm == "l1" else "mean", output_weight=0.5)
    check_normalize(scores, grad, "gn", "linf")


@pytest.mark.parametrize(
    ("B", "d", "itemsize"),
    [(4096, 2, 4), (64, 2, 4), (1, 1, 2), (64, 3000, 4), (64, 196608, 2), (8, 3 * 1024 * 1024, 4), (3, 10**7, 8)],
)
def test_plan(B, d, itemsize):
    plan = _common.plan(B, d, itemsize)
    assert plan.rows * plan.block * itemsize <= 4096, "a tile is at most 4 KB"
    assert plan.block * plan.tiles * plan.n_chunks >= d > plan.block * plan.tiles * (plan.n_chunks - 1)
    assert plan.rows == 1 or plan.n_chunks == 1, "split rows are one per program"
    assert plan.rows * plan.groups >= B and plan.grid == plan.groups * plan.n_chunks
    if plan.n_chunks > 1:
        full = B * triton.cdiv(d, plan.block)  # programs if every chunk were one tile
        assert plan.grid >= min(_common.MIN_PROGRAMS, full) or plan.tiles == _common.TILES_PER_CHUNK
        assert plan.frows * plan.fchunks <= _common.FINISH_TILE and plan.fchunks >= 1
    if d * itemsize <= 512:
        assert plan.grid * plan.rows >= B and plan.grid <= triton.cdiv(B * d * itemsize, 4096) + 1
    if (B, d) == (64, 2):
        assert plan.grid == 1 and plan.warps == 1, "a small batch of short rows: one program, one warp"


@pytest.fixture(params=["split rows", "rows per program"])
def cut(request):
    """Both cuts of `_common.plan` on the same small tensors: rows split over programs, or whole
    rows (several per program) with the default tiles."""
    if request.param == "split rows":
        request.getfixturevalue("small_chunks")
    return request.param


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced", "batch_inner", "batch_of_one", "expanded"])
def test_penalty_layouts(cut, layout):
    base = randn(4, 3, 5, 6)
    grad = {
        "contiguous": base,
        "channels_last": base.to(memory_format=torch.channels_last),
        "sliced": randn(4, 3, 5, 12)[..., ::2],
        "batch_inner": randn(3, 4, 5, 6).transpose(0, 1),
        "batch_of_one": base[:1],
        "expanded": randn(4, 3, 5, 1).expand(4, 3, 5, 6),
    }[layout]
    for norm in NORMS:
        ours = check_penalty(grad, norm=norm, reduction="mean")
        if _layout.is_rows(grad):
            assert ours[2].stride() == grad.stride(), "the gradient keeps the input's dense layout"
    assert _layout.is_rows(grad) == (layout in ("contiguous", "channels_last", "batch_of_one"))


@pytest.mark.parametrize("shape", [(5,), (5, 1), (5, 2, 3)])
def test_penalty_scores_shapes(shape):
    check_penalty(randn(5, 9), randn(*shape), norm="l2", output_weight=0.5)


def test_penalty_without_output_term_gives_scores_no_gradient():
    check_penalty(randn(3, 8), randn(3), output_weight=0.0)
    check_penalty(randn(3, 8), None, output_weight=0.5)


@pytest.mark.parametrize("constraint", CONSTRAINTS)
@pytest.mark.parametrize("norm", NORMS)
def test_penalty_zero_rows(small_chunks, norm, constraint):
    grad = randn(4, 40)
    grad[1] = 0
    grad[3] = 0
    p, _, dgrad, _ = check_penalty(grad, norm=norm, constraint=constraint, center=1.0)
    assert torch.isfinite(dgrad).all() and (dgrad[[1, 3]] == 0).all()
    assert torch.isfinite(p)
    dgrad = penalty_grad(grad, norm=norm, constraint=constraint, center=1.0)
    assert torch.isfinite(dgrad).all() and (dgrad[[1, 3]] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64], ids=str)
def test_linf_ties_share_the_gradient(small_chunks, dtype):
    grad = randn(3, 50, dtype=dtype, scale=0.2)
    grad[0, [2, 17, 40]] = torch.tensor([1.5, -1.5, 1.5], dtype=dtype)  # ties across chunks
    grad[2, [0, 49]] = torch.tensor([-0.75, 0.75], dtype=dtype)
    check_penalty(grad, norm="linf", constraint="ls", center=0.5)
    dgrad = penalty_grad(grad, norm="linf", constraint="ls", center=0.5)
    assert (dgrad[0] != 0).sum() == 3 and (dgrad[2] != 0).sum() == 2


@triton.jit
def _reduce_partials(part_ptr, count_ptr, value_ptr, ties_ptr, B, n_chunks, FROWS: tl.constexpr, FCHUNKS: tl.constexpr):
    rows = tl.arange(0, FROWS)
    value, ties = _common.split_row_partials(
        part_ptr, count_ptr, rows, rows < B, n_chunks, 2, FROWS, FCHUNKS, tl.float32
    )
    tl.store(value_ptr + rows, value, mask=rows < B)
    tl.store(ties_ptr + rows, ties, mask=rows < B)


def test_linf_tie_counts_add_up_past_int32():
    """A row of more than 2^31 entries: its chunks' counts fit int32, their sum is taken in int64."""
    big = 2**31 - 1
    part = torch.tensor([[1.5, 1.5, 0.5, 1.5, 1.5], [2.0, 1.0, 1.0, 1.0, 1.0]], device=DEVICE)
    count = torch.tensor([[big, 7, 9, big, 1], [3, 5, 5, 5, 5]], dtype=torch.int32, device=DEVICE)
    value = torch.empty(2, device=DEVICE)
    ties = torch.empty(2, dtype=torch.int64, device=DEVICE)
    _reduce_partials[(1,)](part, count, value, ties, 2, 5, FROWS=2, FCHUNKS=2)  # 3 steps of 2 chunks
    assert value.tolist() == [1.5, 2.0] and ties.tolist() == [2 * big + 8, 3]


def test_reduction_max_ties_share_the_weight(small_chunks):
    grad = randn(5, 33)
    grad[3] = grad[1]
    grad[1] *= 3.0
    grad[3] = grad[1]  # rows 1 and 3 attain the max
    for norm in NORMS:
        check_penalty(grad, norm=norm, reduction="max", center=0.1)
        dgrad = penalty_grad(grad, norm=norm, reduction="max", center=0.1)
        assert (dgrad[[0, 2, 4]] == 0).all() and torch.equal(dgrad[1], dgrad[3])


def test_hinge_derivative_is_zero_at_the_center():
    grad = randn(2, 9, scale=0.1)
    grad[0, 4] = 1.0  # linf norm exactly c = 1
    grad[1, 4] = 2.0
    check_penalty(grad, norm="linf", constraint="hinge", center=1.0)
    dgrad = penalty_grad(grad, norm="linf", constraint="hinge", center=1.0)
    assert (dgrad[0] == 0).all() and dgrad[1, 4] != 0


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("constraint", CONSTRAINTS)
@pytest.mark.parametrize("norm", NORMS)
def test_nan_propagates_to_the_penalty_and_its_gradient(small_chunks, norm, constraint, reduction):
    """NaN in, NaN out (SPEC.md §3): the NaN row's gradient is NaN everywhere, the hinge's too;
    under the max every row's is (the max is NaN), under the mean no other row's."""
    for d in (40, 5):  # split rows, and several whole rows per program
        grad = randn(3, d)
        grad[1, d // 2] = float("nan")
        g = leaf(grad)
        p, norms = ops.penalty_from_grad(g, norm=norm, constraint=constraint, reduction=reduction)
        assert torch.isnan(p) and torch.isnan(norms[1]) and not torch.isnan(norms[[0, 2]]).any()
        (dgrad,) = torch.autograd.grad(p, (g,))
        assert dgrad[1].isnan().all(), dgrad[1]
        assert dgrad.isnan().all() if reduction == "max" else not dgrad[[0, 2]].isnan().any()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("norm", NORMS)
def test_penalty_grad_scale_is_applied_as_it_loads(small_chunks, norm, dtype):
    """`grad_scale` s: the norms of s·g and their gradients, as the unscale-first formula gives."""
    grad = randn(4, 37, dtype=dtype, scale=3000.0)  # an AMP-scaled gradient
    grad[0, [3, 30]] = grad[0].abs().max()  # linf ties across chunks
    s = torch.full((), 1 / 3000.0, device=DEVICE)  # not a power of two: rounding must agree
    kw = dict(norm=norm, constraint="hinge", center=0.5, reduction="max" if norm == "l1" else "mean")
    check_penalty(grad, randn(4, dtype=dtype), output_weight=0.5, grad_scale=s, **kw)
    g = leaf(grad, torch.float64)
    ours = ops.penalty_from_grad(leaf(grad), grad_scale=s, **kw)
    old = R.penalty_from_grad(g * s.double(), **kw)  # what the API computed before: unscale, then norm
    assert_close("P", ours[0], old[0], old[0], dtype)
    assert_close("norms", ours[1], old[1], old[1], dtype)


def test_float16_large_gradients_do_not_overflow():
    grad = randn(2, 4096, dtype=torch.float16, scale=1e3)  # Σg² ~ 4e9, far above float16's 65504
    p, norms, dgrad, _ = check_penalty(grad, norm="l2", constraint="ls", center=1.0)
    assert torch.isfinite(p) and torch.isfinite(norms).all() and torch.isfinite(dgrad).all()


# ---------------------------------------------------------------------------------------------
# normalize


def run_normalize(fn, scores, grad, mode, norm, dtype=None):
    s, g = leaf(scores, dtype), leaf(grad, dtype)
    out = fn(s, g, mode=mode, norm=norm)
    w = torch.linspace(-1.0, 2.0, out.numel(), dtype=out.dtype, device=out.device).view(out.shape)
    return (out, *torch.autograd.grad((out * w).sum(), (s, g)))


def check_normalize(scores, grad, mode, norm):
    dtype = grad.dtype if grad.dtype == torch.float64 else scores.dtype
    ours = run_normalize(ops.normalize, scores, grad, mode, norm)
    lp = run_normalize(R.normalize, scores, grad, mode, norm)
    ref = run_normalize(R.normalize, scores, grad, mode, norm, torch.float64)
    assert ours[0].dtype == scores.dtype and ours[0].shape == scores.shape
    assert ours[1].dtype == scores.dtype and ours[2].dtype == grad.dtype and ours[2].shape == grad.shape
    for name, a, b, c in zip(("f_hat", "dscores", "dgrad"), ours, lp, ref, strict=True):
        assert_close(name, a, b, c, dtype if name != "dgrad" else grad.dtype)
    return ours


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("mode", MODES)
def test_normalize_matches_reference(small_chunks, mode, norm, dtype):
    check_normalize(randn(4, dtype=dtype, scale=2.0), randn(4, 3, 17, dtype=dtype, scale=0.2), mode, norm)


def test_normalize_layouts_and_mixed_dtypes(cut):
    grad = randn(3, 2, 4, 5).to(memory_format=torch.channels_last)
    for norm in NORMS:
        _, _, dgrad = check_normalize(randn(3, 2)[:, :1], grad, "gn", norm)  # (B, 1) non-contiguous
        assert dgrad.stride() == grad.stride()
        check_normalize(randn(1, 1), randn(1, 7, 9)[..., ::3], "pgn", norm)
        check_normalize(randn(3), randn(3, 40, dtype=torch.float16), "gn", norm)


@pytest.mark.parametrize("norm", NORMS)
def test_normalize_empty_denominator_and_nan(norm):
    scores = torch.tensor([0.0, 1.0, float("nan"), 0.5], device=DEVICE)
    grad = randn(4, 6)
    grad[0] = 0  # gn: f = 0, g = 0
    grad[1] = 1  # pgn: 1 - f = 0, 1 - g = 0
    for mode, empty in (("gn", 0), ("pgn", 1)):
        out, dscores, dgrad = check_normalize(scores, grad, mode, norm)
        assert out[empty] == 0 and dscores[empty] == 0 and (dgrad[empty] == 0).all()
        assert torch.isnan(out[2]) and out[3].abs() <= 1


# ---------------------------------------------------------------------------------------------
# interpolate


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "mixed", "mixed_other_way", "sliced"])
def test_interpolate_formula_and_gradients(small_chunks, layout, dtype):
    real, fake = randn(3, 2, 5, 4, dtype=dtype), randn(3, 2, 5, 4, dtype=dtype)
    if layout == "channels_last":
        real, fake = (t.to(memory_format=torch.channels_last) for t in (real, fake))
    elif layout == "mixed":
        fake = fake.to(memory_format=torch.channels_last)
    elif layout == "mixed_other_way":  # x̂ takes real's layout: fake must be read in it
        real = real.to(memory_format=torch.channels_last)
    elif layout == "sliced":
        real = randn(3, 2, 5, 8, dtype=dtype)[..., 1::2]
    real, fake = leaf(real), leaf(fake)
    x_hat, alpha = ops.interpolate(real, fake, "interpolate")
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert alpha.dtype == acc and alpha.shape == (3,) and ((alpha >= 0) & (alpha < 1)).all()
    assert x_hat.dtype == dtype and x_hat.shape == real.shape
    a = alpha.view(-1, 1, 1, 1)
    expected = lambda d: a.to(d) * real.to(d) + (1 - a.to(d)) * fake.to(d)  # noqa: E731
    assert_close("x_hat", x_hat, expected(acc).to(dtype), expected(torch.float64), dtype)
    w = randn(*real.shape, dtype=dtype)
    dreal, dfake = torch.autograd.grad((x_hat * w).sum(), (real, fake))
    assert_close("dreal", dreal, (a.to(acc) * w.to(acc)).to(dtype), a.double() * w.double(), dtype)
    assert_close("dfake", dfake, ((1 - a.to(acc)) * w.to(acc)).to(dtype), (1 - a.double()) * w.double(), dtype)


def test_interpolate_gradient_only_where_asked(small_chunks):
    real, fake = randn(2, 20), leaf(randn(2, 20))
    x_hat, alpha = ops.interpolate(real, fake)
    (dfake,) = torch.autograd.grad(x_hat.sum(), (fake,))
    assert torch.equal(dfake, (1 - alpha).view(-1, 1).expand(2, 20).float())


def test_interpolate_real_and_fake_points_are_the_batches():
    real, fake = randn(2, 3), randn(2, 3)
    assert ops.interpolate(real, fake, "real") == (real, None)
    assert ops.interpolate(real, fake, "fake") == (fake, None)


def test_interpolate_seeds():
    real, fake = randn(5, 7), randn(5, 7)
    torch.manual_seed(1234)
    a1 = ops.interpolate(real, fake)[1]
    a2 = ops.interpolate(real, fake)[1]
    torch.manual_seed(1234)
    assert torch.equal(ops.interpolate(real, fake)[1], a1), "seed=None follows torch.manual_seed"
    assert not torch.equal(a1, a2), "two successive calls draw fresh alphas"
    s1 = ops.interpolate(real, fake, seed=7)[1]
    assert torch.equal(ops.interpolate(real, fake, seed=7)[1], s1)
    assert not torch.equal(ops.interpolate(real, fake, seed=8)[1], s1)
    # alpha does not depend on the points or the row length (Philox counter i for sample i)
    assert torch.equal(ops.interpolate(randn(5, 3), None, "dragan", seed=7)[1], s1)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dragan_points(dtype):
    real = randn(4, 3, 6, 6, dtype=dtype, scale=2.0)
    x_hat, alpha = ops.interpolate(real, None, "dragan", seed=11)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    step = 0.5 * real.to(acc).std() * alpha.view(-1, 1, 1, 1)
    u = (x_hat.to(acc) - real.to(acc)) / step  # the kernel's u, up to rounding of x_hat
    slack = {torch.float16: 0.05, torch.bfloat16: 0.3}.get(dtype, 1e-4) * (real.abs().max() / step.min()).item()
    assert u.min() >= -slack and u.max() < 1 + slack
    assert abs(u.mean().item() - 0.5) < 0.1 and u.std().item() > 0.2  # 432 draws of U[0,1)
    assert torch.equal(ops.interpolate(real, None, "dragan", seed=11)[0], x_hat)


def test_dragan_gradient_includes_the_std_path(small_chunks):
    # The reference formula, evaluated with the kernel's own α and u (recovered from x̂ in
    # float64), differentiated by PyTorch: the kernel's backward must agree, std path included.
    real = leaf(randn(2, 3, 11, dtype=torch.float64))
    x_hat, alpha = ops.interpolate(real, None, "dragan", seed=5)
    a = alpha.view(-1, 1, 1)
    with torch.no_grad():
        u = (x_hat - real) / (0.5 * real.std() * a)
    expected = real + a * (0.5 * real.std() * u)
    w = randn(*real.shape, dtype=torch.float64)
    (ours,) = torch.autograd.grad((x_hat * w).sum(), (real,))
    (ref,) = torch.autograd.grad((expected * w).sum(), (real,))
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-12)
    assert not torch.allclose(ours, w), "the std path contributes"


def test_interpolate_gradcheck():
    real, fake = (torch.randn(2, 6, dtype=torch.float64, device=DEVICE, requires_grad=True) for _ in range(2))
    assert torch.autograd.gradcheck(lambda x, y: ops.interpolate(x, y, seed=5)[0], (real, fake))


# ---------------------------------------------------------------------------------------------
# torch.library: opcheck on every op, and a penalty head under torch.compile(fullgraph=True)


def _opcheck_cases():
    g = randn(2, 3, 5)
    s = randn(2)
    inv = torch.full((), 0.25, device=DEVICE)
    _, norms, coef, factor = torch.ops.fastgp.penalty_fwd(g, s, "linf", "ls", 1.0, 2.0, "mean", 0.5, inv)
    _, n2, f2 = torch.ops.fastgp.normalize_fwd(s, g, "pgn", "l2")
    alpha = torch.rand(2, device=DEVICE)
    seed = torch.full((1,), 3, dtype=torch.int64, device=DEVICE)
    return {
        "interpolate": (torch.ops.fastgp.interpolate, (leaf(g), leaf(randn(2, 3, 5)), None, seed)),
        "interpolate_dragan": (torch.ops.fastgp.interpolate, (leaf(g), None, leaf(g.std()), seed)),
        "interpolate_bwd": (torch.ops.fastgp.interpolate_bwd, (g, alpha, seed, g, True, True, False)),
        "penalty_fwd": (torch.ops.fastgp.penalty_fwd, (leaf(g), leaf(s), "l2", "hinge", 0.5, 2.0, "max", 0.5, None)),
        "penalty_fwd_scaled": (
            torch.ops.fastgp.penalty_fwd,
            (leaf(g), None, "linf", "squared_hinge", 0.5, 2.0, "mean", 0.0, inv),
        ),
        "penalty_bwd": (
            torch.ops.fastgp.penalty_bwd,
            (torch.ones((), device=DEVICE), norms, g, s, norms, coef, factor, "linf", 0.5, inv),
        ),
        "normalize_fwd": (torch.ops.fastgp.normalize_fwd, (leaf(s), leaf(g), "gn", "l1")),
        "normalize_bwd": (torch.ops.fastgp.normalize_bwd, (randn(2), s, g, n2, f2, "pgn", "l2")),
    }


@pytest.mark.parametrize(
    "case",
    [
        "interpolate",
        "interpolate_dragan",
        "interpolate_bwd",
        "penalty_fwd",
        "penalty_fwd_scaled",
        "penalty_bwd",
        "normalize_fwd",
        "normalize_bwd",
    ],
)
def test_opcheck(case):
    op, args = _opcheck_cases()[case]
    torch.library.opcheck(op, args)


def test_penalty_head_compiles_fullgraph():
    def head(grad, scores):
        p, _ = ops.penalty_from_grad(grad, norm="l2", constraint="ls", scores=scores, output_weight=0.1)
        return p + ops.normalize(scores, grad).sum()

    grad, scores = leaf(randn(3, 10)), leaf(randn(3))
    compiled = torch.compile(head, fullgraph=True, backend="aot_eager")
    p = compiled(grad, scores)
    dg, ds = torch.autograd.grad(p, (grad, scores))
    p0 = head(grad, scores)
    dg0, ds0 = torch.autograd.grad(p0, (grad, scores))
    torch.testing.assert_close((p, dg, ds), (p0, dg0, ds0))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_replays_draw_fresh_alpha():
    real, fake = randn(8, 64), randn(8, 64)
    ops.interpolate(real, fake)  # warm up (compile) outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        x_hat, alpha = ops.interpolate(real, fake)
    graph.replay()
    first = alpha.clone()
    graph.replay()
    assert not torch.equal(alpha, first)
    torch.testing.assert_close(x_hat, alpha[:, None] * real + (1 - alpha[:, None]) * fake)


def test_arrival_counter_is_reset_by_each_launch(small_chunks):
    """The one-launch reductions reuse one counter per thread and stream, left at zero after each call."""
    grad = randn(3, 70)
    for _ in range(3):
        check_penalty(grad, norm="l2")
        ops.normalize(randn(3), grad)
        with _common.arrival_counter(grad.device) as counter:
            assert counter.item() == 0


@pytest.mark.skipif(DEVICE != "cpu", reason="a compiled kernel cannot be stopped part-way")
@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_interrupted_launch_does_not_poison_later_calls(small_chunks, monkeypatch, error):
    grad, scores = randn(3, 70), randn(3)
    want = R.penalty_from_grad(grad, norm="l2")[0]
    original = _common.tile_partial
    calls = []

    def stop_at_the_third_program(*args):
        calls.append(1)
        if len(calls) == 3:  # two programs have arrived at the counter
            raise error("stopped")
        return original(*args)

    monkeypatch.setattr(_common, "tile_partial", stop_at_the_third_program)
    with pytest.raises((error, Exception)):
        ops.penalty_from_grad(grad, norm="l2")
    monkeypatch.setattr(_common, "tile_partial", original)
    torch.testing.assert_close(ops.penalty_from_grad(grad, norm="l2")[0], want)
    assert_close("f_hat", ops.normalize(scores, grad), R.normalize(scores, grad), R.normalize(scores, grad), grad.dtype)


def test_threads_do_not_share_a_counter(small_chunks):
    ready, done = threading.Event(), threading.Event()

    def launch_in_flight() -> None:
        """This thread's counter held with two programs arrived, as a launch still running would."""
        with _common.arrival_counter(torch.device(DEVICE)) as counter:
            counter += 2
            ready.set()
            done.wait(timeout=60)
            counter.zero_()

    other = threading.Thread(target=launch_in_flight)
    other.start()
    try:
        assert ready.wait(timeout=60)
        check_penalty(randn(3, 70), norm="linf", reduction="max")
        check_normalize(randn(3), randn(3, 70), "gn", "l1")
    finally:
        done.set()
        other.join()


def test_streams_do_not_share_a_counter(small_chunks, monkeypatch):
    monkeypatch.setattr(_common, "stream_id", lambda device: 1)
    with _common.arrival_counter(torch.device(DEVICE)) as counter:
        counter += 2  # a launch still running on stream 1
        monkeypatch.setattr(_common, "stream_id", lambda device: 2)
        check_penalty(randn(3, 70), norm="l2")
        counter.zero_()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graphs_replayed_on_two_streams_at_once():
    grads = [randn(64, 3000), randn(64, 3000, scale=2.0)]
    want = [ops.penalty_from_grad(g)[0] for g in grads]  # also compiles outside the capture
    graphs, got = [torch.cuda.CUDAGraph() for _ in grads], []
    for graph, g in zip(graphs, grads, strict=True):
        with torch.cuda.graph(graph):
            got.append(ops.penalty_from_grad(g)[0])
    streams = [torch.cuda.Stream() for _ in grads]
    torch.cuda.synchronize()
    for _ in range(20):
        for graph, stream in zip(graphs, streams, strict=True):
            with torch.cuda.stream(stream):
                graph.replay()
        torch.cuda.synchronize()
        for p, w in zip(got, want, strict=True):
            torch.testing.assert_close(p, w)
