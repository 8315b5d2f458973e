"""Fused gradient normalisation (SPEC.md §4): GN ``f̂ = f / (‖g‖ + |f|)`` (Wu et al. 2021) and
PGN ``f̂ = (1-f) / (‖1-g‖ + |1-f|)`` (Xia, Algorithm 1).

Forward, one launch: the norm reduction of `penalty.py` with the division folded in, done by the
program that reduces each row (whole rows: no workspace, no atomic) or by the last program to
arrive (split rows). Backward, one launch, with ``u = f`` or ``1-f``, ``s = ±1``, ``q = n + |u|``:

    ∂f̂/∂f_i = s · n_i / q_i²            ∂f̂/∂g_i = -(u_i / q_i²) · ∂n_i/∂g_i

(for pgn ``∂n/∂g`` is minus the norm's derivative at ``1-g``); both are 0 where ``q = 0``. The
gradient into `grad` is never detached: it carries the generator's signal.
"""

# No `from __future__ import annotations`: torch.library.custom_op reads the annotations at
# runtime to infer the schema, and older torch releases cannot resolve strings.
import functools

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastgp import _layout as L
from fastgp import reference as R
from fastgp.ops import _autograd
from fastgp.ops import _common as C
from fastgp.ops._common import chunk_arrive, norm_direction, norm_factor, split_row_partials, tile_partial
from fastgp.ops._launch import Launcher, Meta


@triton.jit
def _store_rows(
    value,
    count,
    rows,
    row_mask,
    f_ptr,
    out_ptr,
    norms_ptr,
    factor_ptr,
    NORM: tl.constexpr,
    PGN: tl.constexpr,
    ACC: tl.constexpr,
):
    """f̂, norms and factors of a block of rows from their reduced partials."""
    n, factor = norm_factor(value, count, NORM, ACC)
    f = tl.load(f_ptr + rows, mask=row_mask, other=0.0).to(ACC)
    u = 1.0 - f if PGN else f
    q = n + tl.abs(u)
    # q == 0 (not q > 0) so that a NaN score stays NaN (SPEC.md §4).
    out = tl.where(q == 0, 0.0, u / tl.where(q == 0, 1.0, q))
    tl.store(out_ptr + rows, out.to(out_ptr.dtype.element_ty), mask=row_mask)
    tl.store(norms_ptr + rows, n, mask=row_mask)
    tl.store(factor_ptr + rows, factor, mask=row_mask)


@triton.jit
def _normalize_fwd_kernel(
    g_ptr,
    f_ptr,
    out_ptr,
    part_ptr,
    count_ptr,
    counter_ptr,
    norms_ptr,
    factor_ptr,
    stride_row,
    B,
    d,
    n_chunks,
    NORM: tl.constexpr,
    PGN: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
    TILES: tl.constexpr,
    FROWS: tl.constexpr,
    FCHUNKS: tl.constexpr,
    SPLIT: tl.constexpr,
    ACC: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    if SPLIT:
        # Split rows (ROWS = 1): the last program to arrive reduces every row's partials.
        last = chunk_arrive(
            g_ptr, part_ptr, count_ptr, counter_ptr, stride_row, B, d, n_chunks, 1.0, NORM, PGN, BLOCK, TILES, ACC
        )
        if last:
            r0 = 0
            while r0 < B:  # `while`: see the note on runtime loop bounds in _common.py
                rows = r0 + tl.arange(0, FROWS)
                mask = rows < B
                r0 += FROWS
                values, counts = split_row_partials(
                    part_ptr, count_ptr, rows, mask, n_chunks, NORM, FROWS, FCHUNKS, ACC
                )
                _store_rows(values, counts, rows, mask, f_ptr, out_ptr, norms_ptr, factor_ptr, NORM, PGN, ACC)
    else:
        # Whole rows: no batch reduction, so no workspace, counter or atomic.
        rows = pid * ROWS + tl.arange(0, ROWS)
        mask = rows < B
        value, count = tile_partial(g_ptr, rows, mask, stride_row, 0, d, 1.0, NORM, PGN, ROWS, BLOCK, TILES, ACC)
        _store_rows(value, count, rows, mask, f_ptr, out_ptr, norms_ptr, factor_ptr, NORM, PGN, ACC)


@triton.jit
def _normalize_bwd_kernel(
    g_ptr,
    dg_ptr,
    f_ptr,
    df_ptr,
    dout_ptr,
    norms_ptr,
    factor_ptr,
    stride_row,
    B,
    d,
    n_chunks,
    NORM: tl.constexpr,
    PGN: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
    TILES: tl.constexpr,
    ACC: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    chunk = pid % n_chunks
    rows = (pid // n_chunks) * ROWS + tl.arange(0, ROWS)
    row_mask = rows < B
    f = tl.load(f_ptr + rows, mask=row_mask, other=0.0).to(ACC)
    dout = tl.load(dout_ptr + rows, mask=row_mask, other=0.0).to(ACC)
    n = tl.load(norms_ptr + rows, mask=row_mask, other=0.0)
    u = 1.0 - f if PGN else f
    q = n + tl.abs(u)
    empty = q == 0
    q = tl.where(empty, 1.0, q)
    s = -1.0 if PGN else 1.0
    # -(u/q²) times ∂n/∂g; pgn's extra -1 is ∂(1-g)/∂g.
    scale = tl.where(empty, 0.0, -(dout * u / (q * q)) * tl.load(factor_ptr + rows, mask=row_mask, other=0.0) * s)
    offsets = rows.to(tl.int64)[:, None] * stride_row
    for t in range(TILES):
        cols = chunk * (BLOCK * TILES) + t * BLOCK + tl.arange(0, BLOCK)
        mask = row_mask[:, None] & (cols < d)[None, :]
        x = tl.load(g_ptr + offsets + cols[None, :], mask=mask, other=0.0).to(ACC)
        if PGN:
            x = 1.0 - x
        dx = scale[:, None] * norm_direction(x, n[:, None], NORM)
        tl.store(dg_ptr + offsets + cols[None, :], dx.to(dg_ptr.dtype.element_ty), mask=mask)
    if chunk == 0:
        df = tl.where(empty, 0.0, dout * s * n / (q * q))
        tl.store(df_ptr + rows, df.to(df_ptr.dtype.element_ty), mask=row_mask)


# ---------------------------------------------------------------------------------------------
# Host side.


_FWD = Launcher(
    _normalize_fwd_kernel, fixed=("out_ptr", "part_ptr", "count_ptr", "counter_ptr", "norms_ptr", "factor_ptr")
)
_BWD = Launcher(_normalize_bwd_kernel, fixed=("dg_ptr", "df_ptr", "norms_ptr", "factor_ptr"))


@functools.lru_cache(maxsize=4096)  # one per shape and setting in practice
def _meta(launcher: Launcher, plan: C.Plan, mode: str, norm: str, acc: torch.dtype) -> Meta:
    """The forward's constexprs (`_FWD`), or the backward's (`_BWD`: the same, less the finish's)."""
    finish = {"FROWS": plan.frows, "FCHUNKS": plan.fchunks, "SPLIT": plan.n_chunks > 1} if launcher is _FWD else {}
    return launcher.meta(
        NORM=C.NORM_IDS[norm],
        PGN=mode == "pgn",
        ROWS=plan.rows,
        BLOCK=plan.block,
        TILES=plan.tiles,
        **finish,
        ACC=C.tl_acc(acc),
        num_warps=plan.warps,
    )


def _normalize_fwd(scores: Tensor, grad: Tensor, mode: str, norm: str) -> tuple[Tensor, Tensor, Tensor]:
    g, B, d, stride = L.rows(grad)
    dev = g.device
    acc = C.acc_dtype(scores.dtype, grad.dtype)
    f = scores.reshape(-1).contiguous()
    out = torch.empty(scores.shape, dtype=scores.dtype, device=scores.device)
    plan = C.plan(B, d, g.element_size())
    grid = plan.grid
    split = plan.n_chunks > 1
    norms = torch.empty(B, dtype=acc, device=dev)
    factor = torch.empty_like(norms)
    # The workspace of split rows, tie counts for linf's; the kernel never reads a pointer it has no
    # use for, and `norms` or `part` stand in (their dtypes then follow from the constexprs, as
    # `Launcher` needs).
    part = torch.empty(grid, dtype=acc, device=dev) if split else norms
    count = torch.empty(grid, dtype=torch.int32, device=dev) if split and norm == "linf" else part
    with C.counter_if(split, dev, part) as counter:
        _FWD(
            grid,
            _meta(_FWD, plan, mode, norm, acc),
            g,
            f,
            out,
            part,
            count,
            counter,
            norms,
            factor,
            stride,
            B,
            d,
            plan.n_chunks,
        )
    return out, norms, factor


def _normalize_bwd(
    dout: Tensor, scores: Tensor, grad: Tensor, norms: Tensor, factor: Tensor, mode: str, norm: str
) -> tuple[Tensor, Tensor]:
    dgrad, target, g, B, d, stride = L.rows_out(grad)
    f = scores.reshape(-1).contiguous()
    dscores = torch.empty(scores.shape, dtype=scores.dtype, device=scores.device)
    plan = C.plan(B, d, g.element_size())
    grid = plan.grid
    _BWD(
        grid,
        _meta(_BWD, plan, mode, norm, norms.dtype),
        g,
        target,
        f,
        dscores,
        dout.reshape(-1).contiguous(),
        norms,
        factor,
        stride,
        B,
        d,
        plan.n_chunks,
    )
    if target is not dgrad:
        dgrad.copy_(target)
    return dscores, dgrad


# ---------------------------------------------------------------------------------------------
# Autograd: a plain autograd.Function for eager calls, the torch.library custom ops (with fake
# shapes) under torch.compile; one context set-up and one backward for both (see `_autograd`).


def _setup_context(ctx, inputs, output) -> None:
    scores, grad, mode, norm = inputs
    _, norms, factor = output
    ctx.save_for_backward(scores, grad, norms)
    ctx.factor, ctx.mode, ctx.norm = factor, mode, norm  # internal: never returned eagerly
    ctx.set_materialize_grads(False)


def _backward(ctx, dout, *_):
    scores, grad, norms = ctx.saved_tensors
    if dout is None:
        return None, None, None, None
    if torch.is_grad_enabled():
        # create_graph=True: differentiate the reference's formula (see penalty.py's backward).
        dscores, dgrad = R.vjp(lambda f, g: (R.normalize(f, g, ctx.mode, ctx.norm),), (scores, grad), (dout,))
        return dscores, dgrad, None, None
    dscores, dgrad = ctx.bwd(dout, scores, grad, norms, ctx.factor, ctx.mode, ctx.norm)
    return dscores, dgrad, None, None


@torch.library.custom_op("fastgp::normalize_fwd", mutates_args=())
def normalize_fwd(scores: Tensor, grad: Tensor, mode: str, norm: str) -> tuple[Tensor, Tensor, Tensor]:
    """``(f̂, norms, factor)``; `factor` is ∂n/∂g's per-row factor, kept for the backward."""
    return _normalize_fwd(scores, grad, mode, norm)


@normalize_fwd.register_fake
def _(scores, grad, mode, norm):
    acc = C.acc_dtype(scores.dtype, grad.dtype)
    B = grad.shape[0]
    return scores.new_empty(scores.shape), grad.new_empty(B, dtype=acc), grad.new_empty(B, dtype=acc)


@torch.library.custom_op("fastgp::normalize_bwd", mutates_args=())
def normalize_bwd(
    dout: Tensor, scores: Tensor, grad: Tensor, norms: Tensor, factor: Tensor, mode: str, norm: str
) -> tuple[Tensor, Tensor]:
    """``(∂L/∂scores, ∂L/∂grad)`` from SPEC.md §4's formulas."""
    return _normalize_bwd(dout, scores, grad, norms, factor, mode, norm)


@normalize_bwd.register_fake
def _(dout, scores, grad, norms, factor, mode, norm):
    return scores.new_empty(scores.shape), torch.empty_like(grad)


_NORMALIZE = _autograd.Fused(
    "_Normalize",
    _normalize_fwd,
    _normalize_bwd,
    normalize_fwd,
    normalize_bwd,
    _setup_context,
    _backward,
    outputs=1,
    differentiable=(0, 1),
)


def normalize(scores: Tensor, grad: Tensor, mode: str = "gn", norm: str = "l2") -> Tensor:
    """GN ``f̂ = f / (‖g‖ + |f|)`` (Wu et al. 2021) and PGN ``f̂ = (1-f) / (‖1-g‖ + |1-f|)`` (Xia).

    Same contract as `fastgp.reference.normalize`: ``f̂ = 0`` with zero gradients where the
    denominator is 0, NaN stays NaN, shape and dtype of `scores`. Differentiable in `scores` and
    `grad`. One Triton launch forward, one backward.
    """
    return _NORMALIZE(scores, grad, mode, norm)[0]
