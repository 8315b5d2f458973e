"""Fused gradient penalty ``P = λ · R_i h(‖g_i‖) + ε · mean_i f_i²`` (SPEC.md §3).

Forward, one launch: every program reduces one chunk of one row of g to a partial (Σg², Σ|g|, or
max |g| with its tie count) in a workspace; the last program to finish (atomic counter) sums the
partials of each row in chunk order (deterministic, no float atomics) and writes the norms
``n_i``, the per-sample backward coefficient ``λ/B · h'(n_i)`` (``λ/k`` on the k maxima under
``reduction="max"``), ∂n_i/∂g_i's per-row factor, and ``P``.

Backward, one launch: ``∂P/∂g_i = coef_i · s_i · dir(g_i)`` (see `_common.norm_direction`) and
``∂P/∂f_i = (2ε/B) · f_i``, both times the incoming gradient of P, which stays on the device.
"""

# No `from __future__ import annotations`: torch.library.custom_op reads the annotations at
# runtime to infer the schema, and older torch releases cannot resolve strings.
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastgp import _layout as L
from fastgp import reference as R
from fastgp.ops import _autograd
from fastgp.ops import _common as C
from fastgp.ops._common import nan_max, norm_direction, row_chunk_arrive, row_norms

CONSTRAINT_IDS = {"ls": 0, "hinge": 1, "squared_hinge": 2}


@triton.jit
def _constraint(t, CONSTRAINT: tl.constexpr):
    """``h`` and ``h'`` at ``t = n - c``: ls ``(t², 2t)``, hinge ``(max(0,t), [t > 0])``,
    squared_hinge ``(max(0,t)², 2·max(0,t))``. Written with ``t <= 0`` so that NaN stays NaN and
    the hinge's derivative at ``n = c`` is 0 (SPEC.md §3)."""
    pos = tl.where(t <= 0, 0.0, t)
    if CONSTRAINT == 0:
        h = t * t
        dh = 2.0 * t
    elif CONSTRAINT == 1:
        h = pos
        dh = tl.where(t <= 0, 0.0, 1.0).to(t.dtype)
    else:
        h = pos * pos
        dh = 2.0 * pos
    return h, dh


@triton.jit
def _penalty_finish(
    part_ptr, count_ptr, f_ptr, penalty_ptr, norms_ptr, coef_ptr, factor_ptr,
    B, n_chunks, center, weight, eps,
    NORM: tl.constexpr, CONSTRAINT: tl.constexpr, MAX: tl.constexpr, HAS_SCORES: tl.constexpr,
    ROWS: tl.constexpr, ACC: tl.constexpr,
):
    """Run by the last program only: norms, coefficients and P from all partials."""
    h_sum = tl.zeros([ROWS], ACC)
    h_top = tl.full([ROWS], float("-inf"), ACC)
    f_sq = tl.zeros([ROWS], ACC)
    r0 = 0
    while r0 < B:  # `while`: see the note on runtime loop bounds in _common.py
        rows = r0 + tl.arange(0, ROWS)
        mask = rows < B
        r0 += ROWS
        n, factor = row_norms(part_ptr, count_ptr, rows, mask, n_chunks, NORM, ACC)
        h, dh = _constraint(n - center, CONSTRAINT)
        tl.store(norms_ptr + rows, n, mask=mask)
        tl.store(factor_ptr + rows, factor, mask=mask)
        if MAX:
            tl.store(coef_ptr + rows, h, mask=mask)  # h for now; the coefficient is written below
        else:
            tl.store(coef_ptr + rows, weight / B * dh, mask=mask)
        h_sum += tl.where(mask, h, 0.0)
        h_top = tl.where(mask & ((h > h_top) | (h != h)), h, h_top)
        if HAS_SCORES:
            f = tl.load(f_ptr + rows, mask=mask, other=0.0).to(ACC)
            f_sq += f * f
    if MAX:
        # amax's rule (SPEC.md §3): the k samples attaining the max share λ, λ/k each.
        top = nan_max(h_top)
        tl.debug_barrier()
        ties = tl.zeros([ROWS], tl.int32)
        r0 = 0
        while r0 < B:  # `while`: see the note on runtime loop bounds in _common.py
            rows = r0 + tl.arange(0, ROWS)
            mask = rows < B
            r0 += ROWS
            h = tl.load(coef_ptr + rows, mask=mask, other=0.0)
            ties += (mask & (h == top)).to(tl.int32)
        k = tl.maximum(tl.sum(ties, axis=0), 1).to(ACC)
        tl.debug_barrier()
        r0 = 0
        while r0 < B:  # `while`: see the note on runtime loop bounds in _common.py
            rows = r0 + tl.arange(0, ROWS)
            mask = rows < B
            r0 += ROWS
            h = tl.load(coef_ptr + rows, mask=mask, other=0.0)
            n = tl.load(norms_ptr + rows, mask=mask, other=0.0)
            _, dh = _constraint(n - center, CONSTRAINT)
            # A NaN maximum makes every coefficient NaN, as amax's backward does (0/0 on no ties):
            # NaN in, NaN gradients out, never a silent zero.
            coef = tl.where(h == top, weight / k * dh, 0.0)
            tl.store(coef_ptr + rows, tl.where(top != top, top, coef), mask=mask)
        value = weight * top
    else:
        value = weight * (tl.sum(h_sum, axis=0) / B)
    if HAS_SCORES:
        value += eps * (tl.sum(f_sq, axis=0) / B)
    tl.store(penalty_ptr, value)


@triton.jit
def _penalty_fwd_kernel(
    g_ptr, part_ptr, count_ptr, counter_ptr, f_ptr, penalty_ptr, norms_ptr, coef_ptr, factor_ptr,
    stride_row,
    B, d, n_chunks, center_hi, center_lo, weight_hi, weight_lo, eps_hi, eps_lo,
    NORM: tl.constexpr, CONSTRAINT: tl.constexpr, MAX: tl.constexpr, HAS_SCORES: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, TILES: tl.constexpr, ROWS: tl.constexpr, ACC: tl.constexpr,
):
    last = row_chunk_arrive(
        g_ptr, part_ptr, count_ptr, counter_ptr, stride_row, B, d, n_chunks, NORM, False, BLOCK_SIZE, TILES, ACC
    )
    if last:
        center = tl.cast(center_hi, ACC) + tl.cast(center_lo, ACC)
        weight = tl.cast(weight_hi, ACC) + tl.cast(weight_lo, ACC)
        eps = tl.cast(eps_hi, ACC) + tl.cast(eps_lo, ACC)
        _penalty_finish(
            part_ptr, count_ptr, f_ptr, penalty_ptr, norms_ptr, coef_ptr, factor_ptr,
            B, n_chunks, center, weight, eps,
            NORM, CONSTRAINT, MAX, HAS_SCORES, ROWS, ACC,
        )


@triton.jit
def _penalty_bwd_kernel(
    g_ptr, dg_ptr, norms_ptr, coef_ptr, factor_ptr, dp_ptr, dnorms_ptr, f_ptr, df_ptr,
    stride_row,
    B, d, n_chunks, eps_hi, eps_lo,
    NORM: tl.constexpr, HAS_DNORMS: tl.constexpr, HAS_SCORES: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, TILES: tl.constexpr, ACC: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    row = pid // n_chunks
    chunk = pid % n_chunks
    dp = tl.load(dp_ptr).to(ACC)
    # ∂L/∂n_i: through P, plus the norms' own incoming gradient when they were used downstream.
    dn = tl.load(coef_ptr + row) * dp
    if HAS_DNORMS:
        dn += tl.load(dnorms_ptr + row).to(ACC)
    scale = dn * tl.load(factor_ptr + row)
    n = tl.load(norms_ptr + row)
    base = row * stride_row + chunk * (BLOCK_SIZE * TILES)
    for t in range(TILES):
        cols = t * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        mask = chunk * (BLOCK_SIZE * TILES) + cols < d
        x = tl.load(g_ptr + base + cols, mask=mask, other=0.0).to(ACC)
        dx = scale * norm_direction(x, n, NORM)
        tl.store(dg_ptr + base + cols, dx.to(dg_ptr.dtype.element_ty), mask=mask)
    if HAS_SCORES:  # noqa: SIM102 (compile-time test outside, runtime test inside)
        if chunk == 0:
            eps = tl.cast(eps_hi, ACC) + tl.cast(eps_lo, ACC)
            f = tl.load(f_ptr + row).to(ACC)
            tl.store(df_ptr + row, (2.0 * eps / B * f * dp).to(df_ptr.dtype.element_ty))


# ---------------------------------------------------------------------------------------------
# Host side: reshape to rows, allocate, launch.


def _penalty_fwd(
    grad: Tensor, scores: Optional[Tensor], norm: str, constraint: str, center: float, weight: float,  # noqa: UP045
    reduction: str, output_weight: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    g = L.as_rows(grad)
    B, d = g.shape[0], g[0].numel()
    acc = C.acc_dtype(grad.dtype)
    block, tiles, n_chunks = C.chunking(d)
    part = torch.empty(B * n_chunks, dtype=acc, device=g.device)
    count = torch.empty(B * n_chunks if norm == "linf" else 1, dtype=torch.int32, device=g.device)
    counter = C.arrival_counter(g.device)
    penalty = torch.empty((), dtype=acc, device=g.device)
    norms, coef, factor = (torch.empty(B, dtype=acc, device=g.device) for _ in range(3))
    has_scores = scores is not None
    f = scores.contiguous() if has_scores else penalty
    with C.on_device(g):
        _penalty_fwd_kernel[(B * n_chunks,)](
            g, part, count, counter, f, penalty, norms, coef, factor,
            L.row_stride(g),
            B, d, n_chunks, *C.split_float(center), *C.split_float(weight), *C.split_float(output_weight),
            NORM=C.NORM_IDS[norm], CONSTRAINT=CONSTRAINT_IDS[constraint], MAX=reduction == "max",
            HAS_SCORES=has_scores, BLOCK_SIZE=block, TILES=tiles,
            ROWS=min(C.ROWS_PER_STEP, max(16, triton.next_power_of_2(B))), ACC=C.tl_acc(acc),
            num_warps=C.NUM_WARPS,
        )
    return penalty, norms, coef, factor


def _penalty_bwd(
    dp: Tensor, dnorms: Optional[Tensor], grad: Tensor, scores: Optional[Tensor],  # noqa: UP045
    norms: Tensor, coef: Tensor, factor: Tensor, norm: str, output_weight: float,
) -> tuple[Tensor, Tensor]:
    dgrad = torch.empty_like(grad)
    target = L.rows_target(dgrad)
    g = L.like(grad, target)
    B, d = g.shape[0], g[0].numel()
    block, tiles, n_chunks = C.chunking(d)
    has_scores = scores is not None
    f = scores.contiguous() if has_scores else norms
    dnorms = dnorms.contiguous() if dnorms is not None else None
    dscores = torch.empty_like(f) if has_scores else norms.new_empty(0)
    with C.on_device(g):
        _penalty_bwd_kernel[(B * n_chunks,)](
            g, target, norms, coef, factor, dp, dnorms if dnorms is not None else norms, f, dscores,
            L.row_stride(g),
            B, d, n_chunks, *C.split_float(output_weight),
            NORM=C.NORM_IDS[norm], HAS_DNORMS=dnorms is not None, HAS_SCORES=has_scores,
            BLOCK_SIZE=block, TILES=tiles, ACC=C.tl_acc(norms.dtype), num_warps=C.NUM_WARPS,
        )
    if target is not dgrad:
        dgrad.copy_(target)
    return dgrad, dscores


# ---------------------------------------------------------------------------------------------
# Autograd: a plain autograd.Function for eager calls, the torch.library custom ops (with fake
# shapes) under torch.compile; one context set-up and one backward for both (see `_autograd`).


def _setup_context(ctx, inputs, output) -> None:
    grad, scores, norm, constraint, center, weight, reduction, output_weight = inputs
    _, norms, coef, factor = output
    ctx.save_for_backward(grad, scores, norms, coef, factor)
    ctx.norm, ctx.output_weight = norm, output_weight
    ctx.settings = dict(norm=norm, constraint=constraint, center=center, weight=weight, reduction=reduction,
                        output_weight=output_weight)
    ctx.mark_non_differentiable(coef, factor)
    ctx.set_materialize_grads(False)


def _backward(ctx, dp, dnorms, _dcoef, _dfactor):
    grad, scores, norms, coef, factor = ctx.saved_tensors
    if torch.is_grad_enabled():
        # create_graph=True (a Hessian-vector product, a GN critic inside a penalty): the fused
        # backward has no derivative of its own, so differentiate the reference's formula instead.
        dgrad, dscores = R.vjp(
            lambda g, f: R.penalty_from_grad(g, scores=f, **ctx.settings), (grad, scores), (dp, dnorms)
        )
        return dgrad, dscores, None, None, None, None, None, None
    if dp is None:
        dp = torch.zeros((), dtype=norms.dtype, device=norms.device)
    dgrad, dscores = ctx.bwd(dp, dnorms, grad, scores, norms, coef, factor, ctx.norm, ctx.output_weight)
    return dgrad, (dscores if scores is not None else None), None, None, None, None, None, None


@torch.library.custom_op("fastgp::penalty_fwd", mutates_args=())
def penalty_fwd(
    grad: Tensor, scores: Optional[Tensor], norm: str, constraint: str, center: float, weight: float,  # noqa: UP045
    reduction: str, output_weight: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(P, norms, coef, factor)``; `scores` are the per-sample f (B,) or None (no output term)."""
    return _penalty_fwd(grad, scores, norm, constraint, center, weight, reduction, output_weight)


@penalty_fwd.register_fake
def _(grad, scores, norm, constraint, center, weight, reduction, output_weight):
    acc = C.acc_dtype(grad.dtype)
    B = grad.shape[0]
    return (grad.new_empty((), dtype=acc), *(grad.new_empty(B, dtype=acc) for _ in range(3)))


@torch.library.custom_op("fastgp::penalty_bwd", mutates_args=())
def penalty_bwd(
    dp: Tensor, dnorms: Optional[Tensor], grad: Tensor, scores: Optional[Tensor],  # noqa: UP045
    norms: Tensor, coef: Tensor, factor: Tensor, norm: str, output_weight: float,
) -> tuple[Tensor, Tensor]:
    """``(∂L/∂grad, ∂L/∂scores)``; the second is empty when `scores` is None."""
    return _penalty_bwd(dp, dnorms, grad, scores, norms, coef, factor, norm, output_weight)


@penalty_bwd.register_fake
def _(dp, dnorms, grad, scores, norms, coef, factor, norm, output_weight):
    return torch.empty_like(grad), (torch.empty_like(scores) if scores is not None else norms.new_empty(0))


_Penalty = _autograd.function("_Penalty", _penalty_fwd, _penalty_bwd, _setup_context, _backward)
_autograd.register(penalty_fwd, penalty_bwd, _setup_context, _backward)


def penalty_from_grad(
    grad: Tensor,
    *,
    norm: str = "l2",
    constraint: str = "ls",
    center: float = 1.0,
    weight: float = 10.0,
    reduction: str = "mean",
    scores: Tensor | None = None,
    output_weight: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """``P = λ · R_i h(n_i) + ε · mean_i f_i²`` (SPEC.md §3), fused; returns `(P, norms)`.

    Same contract as `fastgp.reference.penalty_from_grad`: `R` is the batch mean or max,
    ``h`` is ls/hinge/squared_hinge around `center`, ``n_i`` the l2/l1/linf norm of sample i's
    gradient, ``f_i`` the sum of sample i's scores. Differentiable in `grad` and, when
    `output_weight` is not 0, in `scores`. One Triton launch forward, one backward (plus a
    per-sample sum in PyTorch when `scores` has more than one entry per sample).
    """
    f = None
    if output_weight != 0.0 and scores is not None:
        f = scores.reshape(scores.shape[0], -1)
        f = f[:, 0] if f.shape[1] == 1 else f.to(C.acc_dtype(grad.dtype)).sum(dim=1)
    fwd = penalty_fwd if torch.compiler.is_compiling() else _Penalty.apply
    penalty, norms, _, _ = fwd(grad, f, norm, constraint, float(center), float(weight), reduction, float(output_weight))
    return penalty, norms
