"""Fused gradient normalisation (SPEC.md §4): GN ``f̂ = f / (‖g‖ + |f|)`` (Wu et al. 2021) and
PGN ``f̂ = (1-f) / (‖1-g‖ + |1-f|)`` (Xia, Algorithm 1).

Forward, one launch: the norm reduction of `penalty.py` (per-chunk partials, the last program
to finish sums them in chunk order) with the division folded into the last program. Backward,
one launch, with ``u = f`` or ``1-f``, ``s = ±1``, ``q = n + |u|``:

    ∂f̂/∂f_i = s · n_i / q_i²            ∂f̂/∂g_i = -(u_i / q_i²) · ∂n_i/∂g_i

(for pgn ``∂n/∂g`` is minus the norm's derivative at ``1-g``); both are 0 where ``q = 0``. The
gradient into `grad` is never detached: it carries the generator's signal.
"""

# No `from __future__ import annotations`: torch.library.custom_op reads the annotations at
# runtime to infer the schema, and older torch releases cannot resolve strings.
import torch
import triton
import triton.language as tl
from torch import Tensor

from fastgp import _layout as L
from fastgp import reference as R
from fastgp.ops import _autograd
from fastgp.ops import _common as C
from fastgp.ops._common import norm_direction, row_chunk_arrive, row_norms


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
    BLOCK_SIZE: tl.constexpr,
    TILES: tl.constexpr,
    ROWS: tl.constexpr,
    ACC: tl.constexpr,
):
    last = row_chunk_arrive(
        g_ptr, part_ptr, count_ptr, counter_ptr, stride_row, B, d, n_chunks, NORM, PGN, BLOCK_SIZE, TILES, ACC
    )
    if last:
        r0 = 0
        while r0 < B:  # `while`: see the note on runtime loop bounds in _common.py
            rows = r0 + tl.arange(0, ROWS)
            mask = rows < B
            r0 += ROWS
            n, factor = row_norms(part_ptr, count_ptr, rows, mask, n_chunks, NORM, ACC)
            f = tl.load(f_ptr + rows, mask=mask, other=0.0).to(ACC)
            u = 1.0 - f if PGN else f
            q = n + tl.abs(u)
            # q == 0 (not q > 0) so that a NaN score stays NaN (SPEC.md §4).
            out = tl.where(q == 0, 0.0, u / tl.where(q == 0, 1.0, q))
            tl.store(out_ptr + rows, out.to(out_ptr.dtype.element_ty), mask=mask)
            tl.store(norms_ptr + rows, n, mask=mask)
            tl.store(factor_ptr + rows, factor, mask=mask)


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
    d,
    n_chunks,
    NORM: tl.constexpr,
    PGN: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    TILES: tl.constexpr,
    ACC: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    row = pid // n_chunks
    chunk = pid % n_chunks
    f = tl.load(f_ptr + row).to(ACC)
    dout = tl.load(dout_ptr + row).to(ACC)
    n = tl.load(norms_ptr + row)
    u = 1.0 - f if PGN else f
    q = n + tl.abs(u)
    empty = q == 0
    q = tl.where(empty, 1.0, q)
    s = -1.0 if PGN else 1.0
    # -(u/q²) times ∂n/∂g; pgn's extra -1 is ∂(1-g)/∂g.
    scale = tl.where(empty, 0.0, -(dout * u / (q * q)) * tl.load(factor_ptr + row) * s)
    base = row * stride_row + chunk * (BLOCK_SIZE * TILES)
    for t in range(TILES):
        cols = t * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        mask = chunk * (BLOCK_SIZE * TILES) + cols < d
        x = tl.load(g_ptr + base + cols, mask=mask, other=0.0).to(ACC)
        if PGN:
            x = 1.0 - x
        dx = scale * norm_direction(x, n, NORM)
        tl.store(dg_ptr + base + cols, dx.to(dg_ptr.dtype.element_ty), mask=mask)
    if chunk == 0:
        df = tl.where(empty, 0.0, dout * s * n / (q * q))
        tl.store(df_ptr + row, df.to(df_ptr.dtype.element_ty))


# ---------------------------------------------------------------------------------------------
# Host side.


def _normalize_fwd(scores: Tensor, grad: Tensor, mode: str, norm: str) -> tuple[Tensor, Tensor, Tensor]:
    g = L.as_rows(grad)
    B, d = g.shape[0], g[0].numel()
    acc = C.acc_dtype(scores.dtype, grad.dtype)
    f = scores.reshape(-1).contiguous()
    out = torch.empty(scores.shape, dtype=scores.dtype, device=scores.device)
    block, tiles, n_chunks = C.chunking(d)
    part = torch.empty(B * n_chunks, dtype=acc, device=g.device)
    count = torch.empty(B * n_chunks if norm == "linf" else 1, dtype=torch.int32, device=g.device)
    counter = C.arrival_counter(g.device)
    norms, factor = (torch.empty(B, dtype=acc, device=g.device) for _ in range(2))
    with C.on_device(g):
        _normalize_fwd_kernel[(B * n_chunks,)](
            g,
            f,
            out,
            part,
            count,
            counter,
            norms,
            factor,
            L.row_stride(g),
            B,
            d,
            n_chunks,
            NORM=C.NORM_IDS[norm],
            PGN=mode == "pgn",
            BLOCK_SIZE=block,
            TILES=tiles,
            ROWS=min(C.ROWS_PER_STEP, max(16, triton.next_power_of_2(B))),
            ACC=C.tl_acc(acc),
            num_warps=C.NUM_WARPS,
        )
    return out, norms, factor


def _normalize_bwd(
    dout: Tensor, scores: Tensor, grad: Tensor, norms: Tensor, factor: Tensor, mode: str, norm: str
) -> tuple[Tensor, Tensor]:
    dgrad = torch.empty_like(grad)
    target = L.rows_target(dgrad)
    g = L.like(grad, target)
    B, d = g.shape[0], g[0].numel()
    f = scores.reshape(-1).contiguous()
    dscores = torch.empty(scores.shape, dtype=scores.dtype, device=scores.device)
    block, tiles, n_chunks = C.chunking(d)
    with C.on_device(g):
        _normalize_bwd_kernel[(B * n_chunks,)](
            g,
            target,
            f,
            dscores,
            dout.reshape(-1).contiguous(),
            norms,
            factor,
            L.row_stride(g),
            d,
            n_chunks,
            NORM=C.NORM_IDS[norm],
            PGN=mode == "pgn",
            BLOCK_SIZE=block,
            TILES=tiles,
            ACC=C.tl_acc(norms.dtype),
            num_warps=C.NUM_WARPS,
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
    ctx.save_for_backward(scores, grad, norms, factor)
    ctx.mode, ctx.norm = mode, norm
    ctx.mark_non_differentiable(norms, factor)
    ctx.set_materialize_grads(False)


def _backward(ctx, dout, _dnorms, _dfactor):
    scores, grad, norms, factor = ctx.saved_tensors
    if dout is None:
        return None, None, None, None
    if torch.is_grad_enabled():
        # create_graph=True: differentiate the reference's formula (see penalty.py's backward).
        dscores, dgrad = R.vjp(
            lambda f, g: (R.normalize(f, g, ctx.mode, ctx.norm),), (scores, grad), (dout,)
        )
        return dscores, dgrad, None, None
    dscores, dgrad = ctx.bwd(dout, scores, grad, norms, factor, ctx.mode, ctx.norm)
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


_Normalize = _autograd.function("_Normalize", _normalize_fwd, _normalize_bwd, _setup_context, _backward)
_autograd.register(normalize_fwd, normalize_bwd, _setup_context, _backward)


def normalize(scores: Tensor, grad: Tensor, mode: str = "gn", norm: str = "l2") -> Tensor:
    """GN ``f̂ = f / (‖g‖ + |f|)`` (Wu et al. 2021) and PGN ``f̂ = (1-f) / (‖1-g‖ + |1-f|)`` (Xia).

    Same contract as `fastgp.reference.normalize`: ``f̂ = 0`` with zero gradients where the
    denominator is 0, NaN stays NaN, shape and dtype of `scores`. Differentiable in `scores` and
    `grad`. One Triton launch forward, one backward.
    """
    fwd = normalize_fwd if torch.compiler.is_compiling() else _Normalize.apply
    return fwd(scores, grad, mode, norm)[0]
