"""Fused gradient penalty ``P = λ · R_i h(‖g_i‖) + ε · mean_i f_i²`` (SPEC.md §3).

Forward, one launch, cut by `_common.plan`. Whole rows: each program reduces its rows (Σg², Σ|g|,
or max |g| with its tie count), writes their norms ``n_i``, the per-sample backward coefficient
``λ/B · h'(n_i)`` and ∂n_i/∂g_i's per-row factor, and leaves one partial of the batch reduction.
Split rows: each program leaves its chunk's partial. Either way the last program to arrive (an
integer counter) reduces the partials in a fixed order (deterministic, no float atomics), writes
what is left (the split rows' results; ``λ/k`` on the k maxima under ``reduction="max"``) and
``P``. With `grad_scale` the kernels read ``grad_scale · g`` (AMP's unscaling, folded into the load).

Backward, one launch: ``∂P/∂g_i = coef_i · s_i · dir(g_i)`` (see `_common.norm_direction`) and
``∂P/∂f_i = (2ε/B) · f_i``, both times the incoming gradient of P, which stays on the device.
"""

# No `from __future__ import annotations`: torch.library.custom_op reads the annotations at
# runtime to infer the schema, and older torch releases cannot resolve strings.
import functools
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastgp import _layout as L
from fastgp import reference as R
from fastgp.ops import _autograd
from fastgp.ops import _common as C
from fastgp.ops._common import (
    arrive,
    chunk_arrive,
    merge_top,
    norm_direction,
    norm_factor,
    split_row_partials,
    tile_partial,
    top_ties,
)
from fastgp.ops._launch import Launcher, Meta

CONSTRAINT_IDS = {"ls": 0, "hinge": 1, "squared_hinge": 2}


@triton.jit
def _constraint(t, CONSTRAINT: tl.constexpr):
    """``h`` and ``h'`` at ``t = n - c``: ls ``(t², 2t)``, hinge ``(max(0,t), [t > 0])``,
    squared_hinge ``(max(0,t)², 2·max(0,t))``. Written with ``t <= 0`` so that the hinge's
    derivative at ``n = c`` is 0, and so that a NaN ``t`` gives NaN ``h`` and ``h'`` (SPEC.md §3:
    NaN in, NaN out; a NaN row's gradient is then NaN, not a silent finite number)."""
    pos = tl.where(t <= 0, 0.0, t)
    if CONSTRAINT == 0:
        h = t * t
        dh = 2.0 * t
    elif CONSTRAINT == 1:
        h = pos
        dh = tl.where(t <= 0, 0.0, tl.where(t > 0, 1.0, t))
    else:
        h = pos * pos
        dh = 2.0 * pos
    return h, dh


@triton.jit
def _store_rows(
    value,
    count,
    rows,
    row_mask,
    f_ptr,
    norms_ptr,
    coef_ptr,
    factor_ptr,
    B,
    center,
    weight,
    scale,
    NORM: tl.constexpr,
    CONSTRAINT: tl.constexpr,
    MAX: tl.constexpr,
    HAS_SCORES: tl.constexpr,
    ACC: tl.constexpr,
):
    """Norms, factors and coefficients ``λ/B · h'(n_i)`` of a block of rows from their reduced
    partials (``h`` for now under MAX: the coefficient needs the batch's max). Returns the rows'
    ``h`` (-1 on masked rows under MAX, below any h; else 0) and ``f_i²`` (0 without scores).
    The norms are those of ``s·g``, so the factor, ∂n/∂g's, carries ``s``."""
    n, factor = norm_factor(value, count, NORM, ACC)
    h, dh = _constraint(n - center, CONSTRAINT)
    tl.store(norms_ptr + rows, n, mask=row_mask)
    tl.store(factor_ptr + rows, factor * scale, mask=row_mask)  # ∂(s·g)/∂g = s
    tl.store(coef_ptr + rows, h if MAX else weight / B * dh, mask=row_mask)
    f2 = tl.zeros(n.shape, ACC)
    if HAS_SCORES:
        f = tl.load(f_ptr + rows, mask=row_mask, other=0.0).to(ACC)
        f2 = f * f
    return tl.where(row_mask, h, -1.0 if MAX else 0.0), f2


@triton.jit
def _finish_penalty(
    h_sum,
    h_top,
    h_ties,
    f2,
    f_ptr,
    penalty_ptr,
    norms_ptr,
    coef_ptr,
    B,
    center,
    weight,
    eps,
    CONSTRAINT: tl.constexpr,
    MAX: tl.constexpr,
    HAS_SCORES: tl.constexpr,
    FINISH: tl.constexpr,
):
    """Run by the last program: P from per-lane sums (mean), or per-lane max and tie counts (max),
    of h and f², in a fixed order; under MAX also the coefficients."""
    if MAX:
        # amax's rule (SPEC.md §3): the k samples attaining the max share λ, λ/k each.
        top, k = top_ties(h_top, h_ties, 0)
        k = tl.maximum(k, 1).to(top.dtype)
        tl.debug_barrier()  # the h stored in coef by this program's other threads
        r0 = 0
        while r0 < B:  # `while`: see the note on runtime loop bounds in _common.py
            rows = r0 + tl.arange(0, FINISH)
            mask = rows < B
            r0 += FINISH
            h = tl.load(coef_ptr + rows, mask=mask, other=0.0, cache_modifier=".cg")
            n = tl.load(norms_ptr + rows, mask=mask, other=0.0, cache_modifier=".cg")
            _, dh = _constraint(n - center, CONSTRAINT)
            # A NaN maximum makes every coefficient NaN, as amax's backward does (0/0 on no ties):
            # NaN in, NaN gradients out, never a silent zero.
            coef = tl.where(h == top, weight / k * dh, 0.0)
            tl.store(coef_ptr + rows, tl.where(top != top, top, coef), mask=mask)
        value = weight * top
    else:
        value = weight * (tl.sum(h_sum, axis=0) / B)
    if HAS_SCORES:
        value += eps * (tl.sum(f2, axis=0) / B)
    tl.store(penalty_ptr, value)


@triton.jit
def _penalty_fwd_kernel(
    g_ptr,
    part_ptr,
    count_ptr,
    counter_ptr,
    f_ptr,
    penalty_ptr,
    norms_ptr,
    coef_ptr,
    factor_ptr,
    scale_ptr,
    stride_row,
    B,
    d,
    n_chunks,
    center_hi,
    center_lo,
    weight_hi,
    weight_lo,
    eps_hi,
    eps_lo,
    NORM: tl.constexpr,
    CONSTRAINT: tl.constexpr,
    MAX: tl.constexpr,
    HAS_SCORES: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
    TILES: tl.constexpr,
    FROWS: tl.constexpr,
    FCHUNKS: tl.constexpr,
    SPLIT: tl.constexpr,
    ARRIVE: tl.constexpr,
    ACC: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    programs = tl.num_programs(0)
    center = tl.cast(center_hi, ACC) + tl.cast(center_lo, ACC)
    weight = tl.cast(weight_hi, ACC) + tl.cast(weight_lo, ACC)
    eps = tl.cast(eps_hi, ACC) + tl.cast(eps_lo, ACC)
    scale = 1.0
    if HAS_SCALE:
        scale = tl.load(scale_ptr).to(ACC)
    if SPLIT:
        # Split rows (ROWS = 1): the last program to arrive reduces every row's partials and
        # writes every row's results.
        last = chunk_arrive(
            g_ptr, part_ptr, count_ptr, counter_ptr, stride_row, B, d, n_chunks, scale, NORM, False, BLOCK, TILES, ACC
        )
        bound = B
    else:
        # Whole rows: this program writes its rows' results itself, and one partial of the batch
        # reduction (Σh, or max h with its ties; Σf²) for the last program.
        rows = pid * ROWS + tl.arange(0, ROWS)
        mask = rows < B
        value, count = tile_partial(g_ptr, rows, mask, stride_row, 0, d, scale, NORM, False, ROWS, BLOCK, TILES, ACC)
        h, f2 = _store_rows(
            value, count, rows, mask, f_ptr, norms_ptr, coef_ptr, factor_ptr, B, center, weight, scale,
            NORM, CONSTRAINT, MAX, HAS_SCORES, ACC,
        )  # fmt: skip
        if MAX:
            top, k = top_ties(h, mask.to(tl.int32), 0)
            tl.store(part_ptr + pid, top)
            tl.store(count_ptr + pid, k)
        else:
            tl.store(part_ptr + pid, tl.sum(h, axis=0))
        tl.store(part_ptr + programs + pid, tl.sum(f2, axis=0))
        if ARRIVE:
            last = arrive(counter_ptr, programs)
        else:
            tl.debug_barrier()
            last = pid == 0
        bound = programs
    if last:
        # Per-lane Σh, max h with its ties, and Σf², over rows (split) or programs' partials.
        h_sum = tl.zeros([FROWS], ACC)
        h_top = tl.full([FROWS], -1.0, ACC)
        h_ties = tl.zeros([FROWS], tl.int32)
        f2_sum = tl.zeros([FROWS], ACC)
        i0 = 0
        while i0 < bound:  # `while`: see the note on runtime loop bounds in _common.py
            i = i0 + tl.arange(0, FROWS)
            m = i < bound
            i0 += FROWS
            if SPLIT:
                values, counts = split_row_partials(part_ptr, count_ptr, i, m, n_chunks, NORM, FROWS, FCHUNKS, ACC)
                h_i, f2_i = _store_rows(
                    values, counts, i, m, f_ptr, norms_ptr, coef_ptr, factor_ptr, B, center, weight, scale,
                    NORM, CONSTRAINT, MAX, HAS_SCORES, ACC,
                )  # fmt: skip
                ties_i = m.to(tl.int32)
            else:
                h_i = tl.load(part_ptr + i, mask=m, other=-1.0 if MAX else 0.0, cache_modifier=".cg")
                ties_i = tl.load(count_ptr + i, mask=m, other=0, cache_modifier=".cg") if MAX else m.to(tl.int32)
                f2_i = tl.load(part_ptr + programs + i, mask=m, other=0.0, cache_modifier=".cg")
            h_sum += h_i
            h_top, h_ties = merge_top(h_top, h_ties, h_i, ties_i)
            f2_sum += f2_i
        _finish_penalty(
            h_sum, h_top, h_ties, f2_sum, f_ptr, penalty_ptr, norms_ptr, coef_ptr, B, center, weight, eps,
            CONSTRAINT, MAX, HAS_SCORES, FROWS,
        )  # fmt: skip


@triton.jit
def _penalty_bwd_kernel(
    g_ptr,
    dg_ptr,
    norms_ptr,
    coef_ptr,
    factor_ptr,
    dp_ptr,
    dnorms_ptr,
    f_ptr,
    df_ptr,
    scale_ptr,
    stride_row,
    B,
    d,
    n_chunks,
    eps_hi,
    eps_lo,
    NORM: tl.constexpr,
    HAS_DNORMS: tl.constexpr,
    HAS_SCORES: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
    TILES: tl.constexpr,
    ACC: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    chunk = pid % n_chunks
    rows = (pid // n_chunks) * ROWS + tl.arange(0, ROWS)
    row_mask = rows < B
    dp = tl.load(dp_ptr).to(ACC)
    if HAS_SCALE:
        s = tl.load(scale_ptr).to(ACC)
    # ∂L/∂n_i: through P, plus the norms' own incoming gradient when they were used downstream.
    dn = tl.load(coef_ptr + rows, mask=row_mask, other=0.0) * dp
    if HAS_DNORMS:
        dn += tl.load(dnorms_ptr + rows, mask=row_mask, other=0.0).to(ACC)
    scale = (dn * tl.load(factor_ptr + rows, mask=row_mask, other=0.0))[:, None]
    n = tl.load(norms_ptr + rows, mask=row_mask, other=0.0)[:, None]
    offsets = rows.to(tl.int64)[:, None] * stride_row
    for t in range(TILES):
        cols = chunk * (BLOCK * TILES) + t * BLOCK + tl.arange(0, BLOCK)
        mask = row_mask[:, None] & (cols < d)[None, :]
        x = tl.load(g_ptr + offsets + cols[None, :], mask=mask, other=0.0).to(ACC)
        if HAS_SCALE:  # the direction at s·g, rounded as the forward rounded it (linf's ties)
            x = x * s
        dx = scale * norm_direction(x, n, NORM)
        tl.store(dg_ptr + offsets + cols[None, :], dx.to(dg_ptr.dtype.element_ty), mask=mask)
    if HAS_SCORES:  # noqa: SIM102 (compile-time test outside, runtime test inside)
        if chunk == 0:
            eps = tl.cast(eps_hi, ACC) + tl.cast(eps_lo, ACC)
            f = tl.load(f_ptr + rows, mask=row_mask, other=0.0).to(ACC)
            tl.store(df_ptr + rows, (2.0 * eps / B * f * dp).to(df_ptr.dtype.element_ty), mask=row_mask)


# ---------------------------------------------------------------------------------------------
# Host side: reshape to rows, allocate, launch.


# Left out of the launch keys (see `Launcher`): buffers allocated here, and the float halves of
# `split_float`, which Triton always types fp32.
_FLOATS = ("center_hi", "center_lo", "weight_hi", "weight_lo", "eps_hi", "eps_lo")
_FWD = Launcher(
    _penalty_fwd_kernel,
    fixed=("part_ptr", "count_ptr", "counter_ptr", "penalty_ptr", "norms_ptr", "coef_ptr", "factor_ptr", *_FLOATS),
)
_BWD = Launcher(_penalty_bwd_kernel, fixed=("dg_ptr", "norms_ptr", "coef_ptr", "factor_ptr", "df_ptr", *_FLOATS[4:]))


@functools.lru_cache(maxsize=4096)  # one per shape and setting in practice
def _meta(
    launcher: Launcher,
    plan: C.Plan,
    norm: str,
    has_scores: bool,
    has_scale: bool,
    acc: torch.dtype,
    constraint: str | None,
    is_max: bool,
    has_dnorms: bool,
) -> Meta:
    """A launch's constexprs: the forward's (`_FWD`: the constraint, the reduction and the finish
    step's tiling) or the backward's (`_BWD`: whether the norms have an incoming gradient)."""
    if launcher is _FWD:
        only = {
            "CONSTRAINT": CONSTRAINT_IDS[constraint],
            "MAX": is_max,
            "FROWS": plan.frows,
            "FCHUNKS": plan.fchunks,
            "SPLIT": plan.n_chunks > 1,
            "ARRIVE": plan.grid > 1,
        }
    else:
        only = {"HAS_DNORMS": has_dnorms}
    return launcher.meta(
        NORM=C.NORM_IDS[norm],
        HAS_SCORES=has_scores,
        HAS_SCALE=has_scale,
        ROWS=plan.rows,
        BLOCK=plan.block,
        TILES=plan.tiles,
        ACC=C.tl_acc(acc),
        num_warps=plan.warps,
        **only,
    )


def _penalty_fwd(
    grad: Tensor,
    scores: Optional[Tensor],  # noqa: UP045
    norm: str,
    constraint: str,
    center: float,
    weight: float,
    reduction: str,
    output_weight: float,
    grad_scale: Optional[Tensor],  # noqa: UP045
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    g, B, d, stride = L.rows(grad)
    dev = g.device
    acc = C.acc_dtype(grad.dtype)
    plan = C.plan(B, d, g.element_size())
    grid = plan.grid
    is_max = reduction == "max"
    # Workspace: a partial per chunk (split rows), else Σh or max h (with its ties) and Σf² per program.
    part = torch.empty(grid * (1 if plan.n_chunks > 1 else 2), dtype=acc, device=dev)
    ties = norm == "linf" if plan.n_chunks > 1 else is_max
    # Tie counts only where the kernel keeps them (linf chunks, max): elsewhere it never reads the
    # pointer, and `part` stands in (its dtype then follows from the constexprs, as `Launcher` needs).
    count = torch.empty(grid, dtype=torch.int32, device=dev) if ties else part
    penalty = torch.empty((), dtype=acc, device=dev)
    norms = torch.empty(B, dtype=acc, device=dev)
    coef, factor = torch.empty_like(norms), torch.empty_like(norms)
    has_scores = scores is not None
    f = scores.contiguous() if has_scores else penalty
    meta = _meta(_FWD, plan, norm, has_scores, grad_scale is not None, acc, constraint, is_max, False)
    with C.counter_if(grid > 1, dev, count) as counter:
        _FWD(
            grid,
            meta,
            g,
            part,
            count,
            counter,
            f,
            penalty,
            norms,
            coef,
            factor,
            grad_scale if grad_scale is not None else penalty,
            stride,
            B,
            d,
            plan.n_chunks,
            *C.split_float(center),
            *C.split_float(weight),
            *C.split_float(output_weight),
        )
    return penalty, norms, coef, factor


def _penalty_bwd(
    dp: Tensor,
    dnorms: Optional[Tensor],  # noqa: UP045
    grad: Tensor,
    scores: Optional[Tensor],  # noqa: UP045
    norms: Tensor,
    coef: Tensor,
    factor: Tensor,
    norm: str,
    output_weight: float,
    grad_scale: Optional[Tensor],  # noqa: UP045
) -> tuple[Tensor, Optional[Tensor]]:  # noqa: UP045
    dgrad, target, g, B, d, stride = L.rows_out(grad)
    plan = C.plan(B, d, g.element_size())
    grid = plan.grid
    has_scores = scores is not None
    f = scores.contiguous() if has_scores else norms
    dnorms = dnorms.contiguous() if dnorms is not None else None
    dscores = torch.empty_like(f) if has_scores else None
    _BWD(
        grid,
        _meta(_BWD, plan, norm, has_scores, grad_scale is not None, norms.dtype, None, False, dnorms is not None),
        g,
        target,
        norms,
        coef,
        factor,
        dp,
        dnorms if dnorms is not None else norms,
        f,
        dscores if dscores is not None else norms,
        grad_scale if grad_scale is not None else norms,
        stride,
        B,
        d,
        plan.n_chunks,
        *C.split_float(output_weight),
    )
    if target is not dgrad:
        dgrad.copy_(target)
    return dgrad, dscores


# ---------------------------------------------------------------------------------------------
# Autograd: a plain autograd.Function for eager calls, the torch.library custom ops (with fake
# shapes) under torch.compile; one context set-up and one backward for both (see `_autograd`).


def _setup_context(ctx, inputs, output) -> None:
    grad, scores, *settings, grad_scale = inputs
    _, norms, coef, factor = output
    ctx.save_for_backward(grad, scores, norms, grad_scale)
    ctx.coef, ctx.factor, ctx.settings = coef, factor, settings  # internal: never returned eagerly
    ctx.set_materialize_grads(False)


def _backward(ctx, dp, dnorms, *_):
    grad, scores, norms, grad_scale = ctx.saved_tensors
    norm, constraint, center, weight, reduction, output_weight = ctx.settings
    if torch.is_grad_enabled():
        # create_graph=True (a Hessian-vector product, a GN critic inside a penalty): the fused
        # backward has no derivative of its own, so differentiate the reference's formula instead.
        def formula(g: Tensor, f: Tensor | None) -> tuple[Tensor, Tensor]:
            kw = dict(norm=norm, constraint=constraint, center=center, weight=weight, reduction=reduction)
            return R.penalty_from_grad(g, scores=f, output_weight=output_weight, grad_scale=grad_scale, **kw)

        dgrad, dscores = R.vjp(formula, (grad, scores), (dp, dnorms))
        return dgrad, dscores, *([None] * 7)
    if dp is None:
        dp = torch.zeros((), dtype=norms.dtype, device=norms.device)
    dgrad, dscores = ctx.bwd(dp, dnorms, grad, scores, norms, ctx.coef, ctx.factor, norm, output_weight, grad_scale)
    return dgrad, (dscores if scores is not None else None), *([None] * 7)


@torch.library.custom_op("fastgp::penalty_fwd", mutates_args=())
def penalty_fwd(
    grad: Tensor,
    scores: Optional[Tensor],  # noqa: UP045
    norm: str,
    constraint: str,
    center: float,
    weight: float,
    reduction: str,
    output_weight: float,
    grad_scale: Optional[Tensor],  # noqa: UP045
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(P, norms, coef, factor)``; `scores` are the per-sample f (B,) or None (no output term);
    `grad_scale` a 1-element factor s applied to `grad` (the norms are those of s·grad), or None."""
    return _penalty_fwd(grad, scores, norm, constraint, center, weight, reduction, output_weight, grad_scale)


@penalty_fwd.register_fake
def _(grad, scores, norm, constraint, center, weight, reduction, output_weight, grad_scale):
    acc = C.acc_dtype(grad.dtype)
    B = grad.shape[0]
    return (grad.new_empty((), dtype=acc), *(grad.new_empty(B, dtype=acc) for _ in range(3)))


@torch.library.custom_op("fastgp::penalty_bwd", mutates_args=())
def penalty_bwd(
    dp: Tensor,
    dnorms: Optional[Tensor],  # noqa: UP045
    grad: Tensor,
    scores: Optional[Tensor],  # noqa: UP045
    norms: Tensor,
    coef: Tensor,
    factor: Tensor,
    norm: str,
    output_weight: float,
    grad_scale: Optional[Tensor],  # noqa: UP045
) -> tuple[Tensor, Tensor]:
    """``(∂L/∂grad, ∂L/∂scores)``; the second is empty when `scores` is None."""
    dgrad, dscores = _penalty_bwd(dp, dnorms, grad, scores, norms, coef, factor, norm, output_weight, grad_scale)
    # A custom op returns tensors only; eager backwards (no scores) skip this allocation.
    return dgrad, dscores if dscores is not None else norms.new_empty(0)


@penalty_bwd.register_fake
def _(dp, dnorms, grad, scores, norms, coef, factor, norm, output_weight, grad_scale):
    return torch.empty_like(grad), (torch.empty_like(scores) if scores is not None else norms.new_empty(0))


_PENALTY = _autograd.Fused(
    "_Penalty",
    _penalty_fwd,
    _penalty_bwd,
    penalty_fwd,
    penalty_bwd,
    _setup_context,
    _backward,
    outputs=2,
    differentiable=(0, 1),
)


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
    grad_scale: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """``P = λ · R_i h(n_i) + ε · mean_i f_i²`` (SPEC.md §3), fused; returns `(P, norms)`.

    Same contract as `fastgp.reference.penalty_from_grad`: `R` is the batch mean or max,
    ``h`` is ls/hinge/squared_hinge around `center`, ``n_i`` the l2/l1/linf norm of sample i's
    gradient, ``f_i`` the sum of sample i's scores. Differentiable in `grad` and, when
    `output_weight` is not 0, in `scores`. One Triton launch forward, one backward (plus a
    per-sample sum in PyTorch when `scores` has more than one entry per sample). `grad_scale`
    (a 1-element tensor s, e.g. the inverse of a GradScaler's scale) makes the norms those of
    ``s·grad``: the kernel multiplies as it loads, with no extra pass and no host sync.
    """
    f = None
    if output_weight != 0.0 and scores is not None:
        f = R.score_sums(scores, grad.dtype)
    penalty, norms = _PENALTY(
        grad, f, norm, constraint, float(center), float(weight), reduction, float(output_weight), grad_scale
    )
    return penalty, norms
