"""Fused sampling of the points where the penalty is evaluated (SPEC.md §2).

``interpolate``: ``x̂_i = α_i x_i + (1-α_i) y_i`` (WGAN-GP, Gulrajani et al. 2017); ``dragan``:
``x̂_i = x_i + α_i · (0.5 · std(x) · u_i)`` with ``u ~ U[0,1)`` elementwise (Kodali et al. 2017).
One launch: α (and u) are drawn inside the kernel by Philox (`tl.rand`), keyed by a seed that
lives in a device tensor, so a CUDA graph replays with whatever seed PyTorch's generator draws.
Philox counters: ``α_i`` uses counter ``i``; ``u`` uses ``2³² + i·d + j`` (j: storage position in
the row), so the two streams never overlap and α does not depend on d or on the points.

Backward, one launch: ``∂x̂/∂x = α``, ``∂x̂/∂y = 1-α`` (α read back from the forward). For dragan
``∂x̂/∂x`` is the identity plus the path through std: the kernel regenerates u from the seed and
reduces ``∂L/∂std = Σ_j ∂L/∂x̂_j · α_i · 0.5 · u_j`` to per-program partials (summed by PyTorch,
in a fixed order), and PyTorch's own ``std`` backward carries it on to x.
"""

# No `from __future__ import annotations`: torch.library.custom_op reads the annotations at
# runtime to infer the schema, and older torch releases cannot resolve strings.
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastgp import _layout as L
from fastgp.ops import _common as C

_U_OFFSET: tl.constexpr = tl.constexpr(2**32)


@triton.jit
def _interpolate_fwd_kernel(
    real_ptr, fake_ptr, x_hat_ptr, alpha_ptr, seed_ptr, std_ptr,
    stride_row,
    d, n_chunks,
    DRAGAN: tl.constexpr, BLOCK_SIZE: tl.constexpr, TILES: tl.constexpr, ACC: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    row = pid // n_chunks
    chunk = pid % n_chunks
    seed = tl.load(seed_ptr)
    one = tl.arange(0, 1)
    alpha = tl.rand(seed, row + one.to(tl.int64)).to(ACC)
    if chunk == 0:
        tl.store(alpha_ptr + row + one, alpha)
    if DRAGAN:
        half_std = 0.5 * tl.load(std_ptr).to(ACC)
    start = chunk * (BLOCK_SIZE * TILES)
    for t in range(TILES):
        cols = start + t * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        mask = cols < d
        offs = row * stride_row + cols
        x = tl.load(real_ptr + offs, mask=mask, other=0.0).to(ACC)
        if DRAGAN:
            u = tl.rand(seed, row * d + cols + _U_OFFSET).to(ACC)
            out = x + alpha * (half_std * u)
        else:
            y = tl.load(fake_ptr + offs, mask=mask, other=0.0).to(ACC)
            out = alpha * x + (1.0 - alpha) * y
        tl.store(x_hat_ptr + offs, out.to(x_hat_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _interpolate_bwd_kernel(
    dx_hat_ptr, alpha_ptr, seed_ptr, dreal_ptr, dfake_ptr, dstd_part_ptr,
    stride_row,
    d, n_chunks,
    DRAGAN: tl.constexpr, HAS_DREAL: tl.constexpr, HAS_DFAKE: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, TILES: tl.constexpr, ACC: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    row = pid // n_chunks
    chunk = pid % n_chunks
    alpha = tl.load(alpha_ptr + row).to(ACC)
    start = chunk * (BLOCK_SIZE * TILES)
    dstd = tl.zeros([BLOCK_SIZE], ACC)
    if DRAGAN:
        seed = tl.load(seed_ptr)
    for t in range(TILES):
        cols = start + t * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        mask = cols < d
        offs = row * stride_row + cols
        dx = tl.load(dx_hat_ptr + offs, mask=mask, other=0.0).to(ACC)
        if DRAGAN:
            u = tl.rand(seed, row * d + cols + _U_OFFSET).to(ACC)
            dstd += tl.where(mask, dx * (alpha * (0.5 * u)), 0.0)
        if HAS_DREAL:
            tl.store(dreal_ptr + offs, (alpha * dx).to(dreal_ptr.dtype.element_ty), mask=mask)
        if HAS_DFAKE:
            tl.store(dfake_ptr + offs, ((1.0 - alpha) * dx).to(dfake_ptr.dtype.element_ty), mask=mask)
    if DRAGAN:
        tl.store(dstd_part_ptr + pid, tl.sum(dstd, axis=0))


# ---------------------------------------------------------------------------------------------
# Host side.


def _interpolate_fwd(
    real: Tensor, fake: Optional[Tensor], std: Optional[Tensor], seed: Tensor  # noqa: UP045
) -> tuple[Tensor, Tensor]:
    x_hat = torch.empty_like(real)
    target = L.rows_target(x_hat)
    x = L.like(real, target)
    y = L.like(fake, target) if fake is not None else x
    B, d = x.shape[0], x[0].numel()
    acc = C.acc_dtype(real.dtype)
    alpha = torch.empty(B, dtype=acc, device=real.device)
    block, tiles, n_chunks = C.chunking(d)
    with C.on_device(x):
        _interpolate_fwd_kernel[(B * n_chunks,)](
            x, y, target, alpha, seed, std if std is not None else alpha,
            L.row_stride(x),
            d, n_chunks,
            DRAGAN=std is not None, BLOCK_SIZE=block, TILES=tiles, ACC=C.tl_acc(acc), num_warps=C.NUM_WARPS,
        )
    if target is not x_hat:
        x_hat.copy_(target)
    return x_hat, alpha


def _interpolate_bwd(
    dx_hat: Tensor, alpha: Tensor, seed: Tensor, layout: Tensor, dragan: bool, need_real: bool, need_fake: bool
) -> tuple[Tensor, Tensor, Tensor]:
    ref = L.rows_layout(layout)
    g = L.like(dx_hat, ref)
    B, d = g.shape[0], g[0].numel()
    block, tiles, n_chunks = C.chunking(d)
    dreal = torch.empty_like(g) if need_real else alpha.new_empty(0)
    dfake = torch.empty_like(g) if need_fake else alpha.new_empty(0)
    parts = torch.empty(B * n_chunks if dragan else 1, dtype=alpha.dtype, device=g.device)
    with C.on_device(g):
        _interpolate_bwd_kernel[(B * n_chunks,)](
            g, alpha, seed, dreal if need_real else g, dfake if need_fake else g, parts,
            L.row_stride(g),
            d, n_chunks,
            DRAGAN=dragan, HAS_DREAL=need_real, HAS_DFAKE=need_fake,
            BLOCK_SIZE=block, TILES=tiles, ACC=C.tl_acc(alpha.dtype), num_warps=C.NUM_WARPS,
        )
    return dreal, dfake, (parts.sum() if dragan else alpha.new_empty(0))


# ---------------------------------------------------------------------------------------------
# torch.library registration.


@torch.library.custom_op("fastgp::interpolate", mutates_args=())
def interpolate_fwd(
    real: Tensor, fake: Optional[Tensor], std: Optional[Tensor], seed: Tensor  # noqa: UP045
) -> tuple[Tensor, Tensor]:
    """``(x̂, α)``: interpolate between `real` and `fake`, or dragan when `std` is given."""
    return _interpolate_fwd(real, fake, std, seed)


@interpolate_fwd.register_fake
def _(real, fake, std, seed):
    return torch.empty_like(real), real.new_empty(real.shape[0], dtype=C.acc_dtype(real.dtype))


@torch.library.custom_op("fastgp::interpolate_bwd", mutates_args=())
def interpolate_bwd(
    dx_hat: Tensor, alpha: Tensor, seed: Tensor, layout: Tensor, dragan: bool, need_real: bool, need_fake: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """``(∂L/∂real, ∂L/∂fake, ∂L/∂std)``, each empty when not asked for (``∂L/∂std`` is dragan's)."""
    return _interpolate_bwd(dx_hat, alpha, seed, layout, dragan, need_real, need_fake)


@interpolate_bwd.register_fake
def _(dx_hat, alpha, seed, layout, dragan, need_real, need_fake):
    ref = L.rows_layout(layout)

    def out(wanted: bool) -> Tensor:
        if not wanted:
            return alpha.new_empty(0)
        return torch.empty_strided(ref.shape, ref.stride(), dtype=dx_hat.dtype, device=dx_hat.device)

    return out(need_real), out(need_fake), (alpha.new_empty(()) if dragan else alpha.new_empty(0))


def _setup_context(ctx, inputs, output):
    real, _, std, seed = inputs
    _, alpha = output
    ctx.mark_non_differentiable(alpha)
    ctx.set_materialize_grads(False)
    ctx.dragan = std is not None
    ctx.save_for_backward(alpha, seed, real if ctx.dragan else None)


def _backward(ctx, dx_hat, _dalpha):
    alpha, seed, real = ctx.saved_tensors
    need_real, need_fake, need_std, _ = ctx.needs_input_grad
    if dx_hat is None:
        return None, None, None, None
    if ctx.dragan:
        # x̂ = x + α·0.5·std·u: the identity to x, and the std path (PyTorch's std backward).
        dstd = interpolate_bwd(dx_hat, alpha, seed, real, True, False, False)[2] if need_std else None
        return (dx_hat if need_real else None), None, dstd, None
    if not (need_real or need_fake):
        return None, None, None, None
    if torch.is_grad_enabled():  # create_graph=True: the same linear map in differentiable torch ops
        a = alpha.view(-1, *([1] * (dx_hat.dim() - 1)))
        dreal, dfake = (a * dx_hat).to(dx_hat.dtype), ((1 - a) * dx_hat).to(dx_hat.dtype)
        return (dreal if need_real else None), (dfake if need_fake else None), None, None
    dreal, dfake, _ = interpolate_bwd(dx_hat, alpha, seed, dx_hat, False, need_real, need_fake)
    return (dreal if need_real else None), (dfake if need_fake else None), None, None


interpolate_fwd.register_autograd(_backward, setup_context=_setup_context)


def seed_tensor(seed: int | None, device: torch.device) -> Tensor:
    """The Philox seed as a (1,) int64 device tensor read inside the kernel (CUDA-graph safe).

    ``None`` draws it from PyTorch's default generator of `device`, so `torch.manual_seed`
    makes a run reproducible and each CUDA-graph replay draws a fresh one.
    """
    if seed is None:
        return torch.randint(0, 2**63 - 1, (1,), dtype=torch.int64, device=device)
    return torch.full((1,), int(seed), dtype=torch.int64, device=device)


def interpolate(
    real: Tensor | None, fake: Tensor | None, points: str = "interpolate", seed: int | None = None
) -> tuple[Tensor, Tensor | None]:
    """The points where the penalty is evaluated (SPEC.md §2); returns `(x_hat, alpha)`.

    interpolate: ``x̂_i = α_i x_i + (1-α_i) y_i`` (WGAN-GP, Gulrajani et al. 2017);
    dragan: ``x̂_i = x_i + α_i · 0.5 · std(x) · u_i``, ``u ~ U[0,1)`` elementwise, std over the
    whole real batch, unbiased (Kodali et al. 2017); real/fake: the batch itself (R1/R2).
    ``α ~ U[0,1)`` per sample from Philox keyed by `seed`; α is returned in the accumulation dtype
    (float32, float64 for float64). Differentiable in `real` and `fake`. One Triton launch.
    """
    if points == "real":
        return real, None
    if points == "fake":
        return fake, None
    assert real is not None
    seed_t = seed_tensor(seed, real.device)
    if points == "dragan":
        std = real.to(C.acc_dtype(real.dtype)).std()
        return interpolate_fwd(real, None, std, seed_t)
    return interpolate_fwd(real, fake, None, seed_t)
