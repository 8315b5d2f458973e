"""Fused sampling of the points where the penalty is evaluated (SPEC.md §2).

``interpolate``: ``x̂_i = α_i x_i + (1-α_i) y_i`` (WGAN-GP, Gulrajani et al. 2017); ``dragan``:
``x̂_i = x_i + α_i · (0.5 · std(x) · u_i)`` with ``u ~ U[0,1)`` elementwise (Kodali et al. 2017).
One launch: α (and u) are drawn inside the kernel by Philox-4x32-10, nothing else runs first.

Random numbers. Key: a 64-bit seed. Counter ``(c0c1, c2, c3)``, ``c0c1`` a 64-bit base:
``α_i`` is the first word of counter ``(base, i)`` (c2c3 = i); ``u_ij`` is word ``j mod 4`` of
counter ``(base + 1, j div 4, i)``, j the storage position in the row, so one Philox call serves
four entries and neither stream depends on d (α) or on the launch's tiling. Where they come from:

- ``seed`` given: that seed, base 0 (the same α for the same seed, whatever the batch).
- ``seed=None``: the seed and offset of PyTorch's generator of the device, read on the host without
  a launch, and the offset advanced by 8 as PyTorch's own random kernels do
  (``philox_cuda_state``): base = offset / 4, so fastgp's draws never share a Philox counter with
  PyTorch's and `torch.manual_seed` reproduces a run. On CPU tensors (the interpreter), a seed
  drawn from the CPU generator, base 0.
- ``seed=None`` while a CUDA graph is being captured, and under torch.compile: a seed drawn into a
  device tensor by `torch.randint` inside the graph, read by the kernel, base 0, so each replay
  draws fresh α.

Backward, one launch: ``∂x̂/∂x = α``, ``∂x̂/∂y = 1-α`` (α read back from the forward). For dragan
``∂x̂/∂x`` is the identity plus the path through std: the kernel regenerates u and reduces
``∂L/∂std = Σ_j ∂L/∂x̂_j · α_i · 0.5 · u_j`` to per-program partials (summed by PyTorch, in a
fixed order), and PyTorch's own ``std`` backward carries it on to x.
"""

# No `from __future__ import annotations`: torch.library.custom_op reads the annotations at
# runtime to infer the schema, and older torch releases cannot resolve strings.
import functools
import struct
import threading
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastgp import _layout as L
from fastgp.ops import _autograd
from fastgp.ops import _common as C
from fastgp.ops._launch import Launcher, Meta

# (seed, base) on the host, or a device seed tensor (base 0): see the module docstring.
Rng = tuple[int, int] | Tensor

# Philox counters per call: α at base, u at base + 1, each word of them once (PyTorch's offset unit).
_OFFSET_STEP = 8


@triton.jit
def _philox_key(seed_ptr, seed_lo, seed_hi, SEED_FROM_PTR: tl.constexpr):
    """The 64-bit Philox key, from the device tensor or from its two 32-bit host halves."""
    if SEED_FROM_PTR:
        seed = tl.load(seed_ptr).to(tl.uint64, bitcast=True)
    else:
        hi = seed_hi.to(tl.uint32, bitcast=True).to(tl.uint64)
        lo = seed_lo.to(tl.uint32, bitcast=True).to(tl.uint64)
        seed = (hi << 32) | lo
    return seed


@triton.jit
def _alpha(seed, base_lo, base_hi, row):
    """α of one row, as a 1-entry block: the first word of counter (base, row)."""
    rows = row + tl.arange(0, 1).to(tl.int64)
    c0 = tl.zeros([1], tl.uint32) + base_lo.to(tl.uint32, bitcast=True)
    c1 = tl.zeros([1], tl.uint32) + base_hi.to(tl.uint32, bitcast=True)
    r, _, _, _ = tl.philox(seed, c0, c1, rows.to(tl.uint32), (rows >> 32).to(tl.uint32))
    return tl.uint_to_uniform_float(r)


@triton.jit
def _u_block(seed, base_lo, base_hi, row, col0, BLOCK_SIZE: tl.constexpr):
    """u of entries ``[col0, col0 + BLOCK_SIZE)`` of a row (col0 divisible by 4): one Philox call
    per four entries, on counter (base + 1, col div 4, row), its four words interleaved."""
    lo = base_lo.to(tl.uint32, bitcast=True) + 1
    hi = base_hi.to(tl.uint32, bitcast=True) + (lo == 0).to(tl.uint32)  # carry into the high word
    groups = (col0 // 4 + tl.arange(0, BLOCK_SIZE // 4)).to(tl.uint32)
    c0 = tl.zeros([BLOCK_SIZE // 4], tl.uint32) + lo
    c1 = tl.zeros([BLOCK_SIZE // 4], tl.uint32) + hi
    c3 = tl.zeros([BLOCK_SIZE // 4], tl.uint32) + row.to(tl.uint32)
    r0, r1, r2, r3 = tl.philox(seed, c0, c1, groups, c3)
    u0, u1 = tl.uint_to_uniform_float(r0), tl.uint_to_uniform_float(r1)
    u2, u3 = tl.uint_to_uniform_float(r2), tl.uint_to_uniform_float(r3)
    return tl.interleave(tl.interleave(u0, u2), tl.interleave(u1, u3))


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "base_lo", "base_hi"])
def _interpolate_fwd_kernel(
    real_ptr,
    fake_ptr,
    x_hat_ptr,
    alpha_ptr,
    std_ptr,
    seed_ptr,
    stride_row,
    d,
    n_chunks,
    seed_lo,
    seed_hi,
    base_lo,
    base_hi,
    DRAGAN: tl.constexpr,
    SEED_FROM_PTR: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    TILES: tl.constexpr,
    ACC: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    row = pid // n_chunks
    chunk = pid % n_chunks
    seed = _philox_key(seed_ptr, seed_lo, seed_hi, SEED_FROM_PTR)
    alpha = _alpha(seed, base_lo, base_hi, row).to(ACC)
    if chunk == 0:
        tl.store(alpha_ptr + row + tl.arange(0, 1), alpha)
    if DRAGAN:
        half_std = 0.5 * tl.load(std_ptr).to(ACC)
    start = chunk * (BLOCK_SIZE * TILES)
    for t in range(TILES):
        col0 = start + t * BLOCK_SIZE
        cols = col0 + tl.arange(0, BLOCK_SIZE)
        mask = cols < d
        offs = row * stride_row + cols
        x = tl.load(real_ptr + offs, mask=mask, other=0.0).to(ACC)
        if DRAGAN:
            u = _u_block(seed, base_lo, base_hi, row, col0, BLOCK_SIZE).to(ACC)
            out = x + alpha * (half_std * u)
        else:
            y = tl.load(fake_ptr + offs, mask=mask, other=0.0).to(ACC)
            out = alpha * x + (1.0 - alpha) * y
        tl.store(x_hat_ptr + offs, out.to(x_hat_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "base_lo", "base_hi"])
def _interpolate_bwd_kernel(
    dx_hat_ptr,
    alpha_ptr,
    seed_ptr,
    dreal_ptr,
    dfake_ptr,
    dstd_part_ptr,
    stride_row,
    d,
    n_chunks,
    seed_lo,
    seed_hi,
    base_lo,
    base_hi,
    DRAGAN: tl.constexpr,
    SEED_FROM_PTR: tl.constexpr,
    HAS_DREAL: tl.constexpr,
    HAS_DFAKE: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    TILES: tl.constexpr,
    ACC: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    row = pid // n_chunks
    chunk = pid % n_chunks
    alpha = tl.load(alpha_ptr + row).to(ACC)
    start = chunk * (BLOCK_SIZE * TILES)
    dstd = tl.zeros([BLOCK_SIZE], ACC)
    if DRAGAN:
        seed = _philox_key(seed_ptr, seed_lo, seed_hi, SEED_FROM_PTR)
    for t in range(TILES):
        col0 = start + t * BLOCK_SIZE
        cols = col0 + tl.arange(0, BLOCK_SIZE)
        mask = cols < d
        offs = row * stride_row + cols
        dx = tl.load(dx_hat_ptr + offs, mask=mask, other=0.0).to(ACC)
        if DRAGAN:
            u = _u_block(seed, base_lo, base_hi, row, col0, BLOCK_SIZE).to(ACC)
            dstd += tl.where(mask, dx * (alpha * (0.5 * u)), 0.0)
        if HAS_DREAL:
            tl.store(dreal_ptr + offs, (alpha * dx).to(dreal_ptr.dtype.element_ty), mask=mask)
        if HAS_DFAKE:
            tl.store(dfake_ptr + offs, ((1.0 - alpha) * dx).to(dfake_ptr.dtype.element_ty), mask=mask)
    if DRAGAN:
        tl.store(dstd_part_ptr + pid, tl.sum(dstd, axis=0))


# ---------------------------------------------------------------------------------------------
# Host side.

# Always int32 (see `_rng_args`) and never specialised.
_SEED_WORDS = ("seed_lo", "seed_hi", "base_lo", "base_hi")
_FWD = Launcher(_interpolate_fwd_kernel, fixed=("x_hat_ptr", "alpha_ptr", *_SEED_WORDS))
_BWD = Launcher(_interpolate_bwd_kernel, fixed=("dstd_part_ptr", *_SEED_WORDS))


@functools.lru_cache(maxsize=4096)
def _meta(
    launcher: Launcher,
    block: int,
    tiles: int,
    warps: int,
    dragan: bool,
    device_seed: bool,
    acc: torch.dtype,
    has_dreal: bool = False,
    has_dfake: bool = False,
) -> Meta:
    """A launch's constexprs: the forward's, or the backward's (`_BWD`: which gradients it writes)."""
    only = {"HAS_DREAL": has_dreal, "HAS_DFAKE": has_dfake} if launcher is _BWD else {}
    return launcher.meta(
        DRAGAN=dragan,
        SEED_FROM_PTR=device_seed,
        BLOCK_SIZE=block,
        TILES=tiles,
        ACC=C.tl_acc(acc),
        num_warps=warps,
        **only,
    )


def _signed(x: int, bits: int) -> int:
    """An unsigned `bits`-bit word as the signed integer with the same bits."""
    return x - (1 << bits) if x >> (bits - 1) else x


# Two unsigned 64-bit words in, their four 32-bit halves out as signed int32, low half first.
_PACK_SEED, _UNPACK_WORDS = struct.Struct("<QQ"), struct.Struct("<iiii")


def _rng_args(rng: Rng, dummy: Tensor) -> tuple:
    """``(seed_ptr, seed_lo, seed_hi, base_lo, base_hi)`` of a launch: the device seed, or the
    32-bit halves of seed and base as signed int32, so that Triton types them i32 whatever they are."""
    if isinstance(rng, Tensor):
        return rng, 0, 0, 0, 0
    return (dummy, *_UNPACK_WORDS.unpack(_PACK_SEED.pack(*rng)))


def rng_state(seed: int | None, device: torch.device, traced: bool = False) -> Rng:
    """Key and counter base of one call's draws on `device`, per the module docstring.

    ``traced``: for the custom op (torch.compile, functorch), which takes a device seed; under
    torch.compile anything drawn on the host would be frozen into the graph.
    """
    if traced or (seed is None and device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
        if seed is None:
            return torch.randint(-(2**63), 2**63 - 1, (1,), dtype=torch.int64, device=device)
        return torch.full((1,), _signed(seed & (2**64 - 1), 64), dtype=torch.int64, device=device)
    if seed is not None:
        return seed & (2**64 - 1), 0
    if device.type == "cuda":
        gen = torch.cuda.default_generators[device.index]
        offset = gen.get_offset()
        gen.set_offset(offset + _OFFSET_STEP)
        return gen.initial_seed(), offset // 4
    # The draw `torch.randint(2**63 - 1, ())` makes, into a tensor this thread keeps: ~1 µs less.
    return _DRAW.seed.random_(2**63 - 1).item(), 0


class _Draw(threading.local):
    """Each thread's int64 scalar for host seeds drawn from PyTorch's default CPU generator (a
    tensor shared by threads could hand two of them the same seed). A normal tensor even when the
    thread's first draw runs in inference mode, so that later draws outside it may still write it."""

    def __init__(self) -> None:
        with torch.inference_mode(False):
            self.seed = torch.empty((), dtype=torch.int64, device="cpu")


_DRAW = _Draw()


def _interpolate_fwd(real: Tensor, fake: Tensor | None, std: Tensor | None, rng: Rng) -> tuple[Tensor, Tensor]:
    x_hat, target, x, B, d, stride = L.rows_out(real)
    y = x if fake is None else L.like(fake, target)
    acc = C.acc_dtype(real.dtype)
    alpha = torch.empty(B, dtype=acc, device=real.device)
    block, tiles, n_chunks = C.chunking(d)
    seed_ptr, *words = _rng_args(rng, alpha)
    _FWD(
        B * n_chunks,
        _meta(_FWD, block, tiles, C.NUM_WARPS, std is not None, seed_ptr is not alpha, acc),
        x,
        y,
        target,
        alpha,
        alpha if std is None else std,
        seed_ptr,
        stride,
        d,
        n_chunks,
        *words,
    )
    if target is not x_hat:
        x_hat.copy_(target)
    return x_hat, alpha


def _interpolate_bwd(
    dx_hat: Tensor, alpha: Tensor, rng: Rng, layout: Tensor, dragan: bool, need_real: bool, need_fake: bool
) -> tuple[Tensor, Tensor, Tensor]:
    g = L.like(dx_hat, L.rows_layout(layout)) if dragan else L.as_rows(dx_hat)
    B = g.shape[0]
    d = g.numel() // B
    block, tiles, n_chunks = C.chunking(d)
    dreal = torch.empty_like(g) if need_real else alpha.new_empty(0)
    dfake = torch.empty_like(g) if need_fake else alpha.new_empty(0)
    parts = torch.empty(B * n_chunks if dragan else 1, dtype=alpha.dtype, device=g.device)
    seed_ptr, *words = _rng_args(rng, parts) if dragan else (parts, 0, 0, 0, 0)
    device_seed = seed_ptr is not parts
    meta = _meta(_BWD, block, tiles, C.NUM_WARPS, dragan, device_seed, alpha.dtype, need_real, need_fake)
    _BWD(
        B * n_chunks,
        meta,
        g,
        alpha,
        seed_ptr,
        dreal if need_real else g,
        dfake if need_fake else g,
        parts,
        L.row_stride(g),
        d,
        n_chunks,
        *words,
    )
    return dreal, dfake, (parts.sum() if dragan else alpha.new_empty(0))


# ---------------------------------------------------------------------------------------------
# Autograd: a plain autograd.Function for eager calls, the torch.library custom ops (with fake
# shapes) under torch.compile; one context set-up and one backward for both (see `_autograd`).


def _setup_context(ctx, inputs, output) -> None:
    real, _, std, rng = inputs
    _, alpha = output
    ctx.mark_non_differentiable(alpha)
    ctx.set_materialize_grads(False)
    ctx.dragan = std is not None
    device_seed = isinstance(rng, Tensor)
    ctx.rng = None if device_seed else rng
    ctx.save_for_backward(alpha, rng if device_seed else None, real if ctx.dragan else None)


def _backward(ctx, dx_hat, _dalpha):
    alpha, seed, real = ctx.saved_tensors
    need_real, need_fake, need_std, _ = ctx.needs_input_grad
    if dx_hat is None:
        return None, None, None, None
    if ctx.dragan:
        # x̂ = x + α·0.5·std·u: the identity to x, and the std path (PyTorch's std backward).
        rng = seed if seed is not None else ctx.rng
        dstd = ctx.bwd(dx_hat, alpha, rng, real, True, False, False)[2] if need_std else None
        return (dx_hat if need_real else None), None, dstd, None
    if not (need_real or need_fake):
        return None, None, None, None
    if torch.is_grad_enabled():  # create_graph=True: the same linear map in differentiable torch ops
        a = alpha.view(-1, *([1] * (dx_hat.dim() - 1)))
        dreal, dfake = (a * dx_hat).to(dx_hat.dtype), ((1 - a) * dx_hat).to(dx_hat.dtype)
        return (dreal if need_real else None), (dfake if need_fake else None), None, None
    dreal, dfake, _ = ctx.bwd(dx_hat, alpha, alpha, dx_hat, False, need_real, need_fake)
    return (dreal if need_real else None), (dfake if need_fake else None), None, None


@torch.library.custom_op("fastgp::interpolate", mutates_args=())
def interpolate_fwd(
    real: Tensor,
    fake: Optional[Tensor],  # noqa: UP045
    std: Optional[Tensor],  # noqa: UP045
    seed: Tensor,
) -> tuple[Tensor, Tensor]:
    """``(x̂, α)``: interpolate between `real` and `fake`, or dragan when `std` is given; `seed` is
    the (1,) int64 device tensor holding the Philox key (counter base 0)."""
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


_INTERPOLATE = _autograd.Fused(
    "_Interpolate",
    _interpolate_fwd,
    _interpolate_bwd,
    interpolate_fwd,
    interpolate_bwd,
    _setup_context,
    _backward,
    outputs=2,
    differentiable=(0, 1, 2),
)


def interpolate(
    real: Tensor | None, fake: Tensor | None, points: str = "interpolate", seed: int | None = None
) -> tuple[Tensor, Tensor | None]:
    """The points where the penalty is evaluated (SPEC.md §2); returns `(x_hat, alpha)`.

    interpolate: ``x̂_i = α_i x_i + (1-α_i) y_i`` (WGAN-GP, Gulrajani et al. 2017);
    dragan: ``x̂_i = x_i + α_i · 0.5 · std(x) · u_i``, ``u ~ U[0,1)`` elementwise, std over the
    whole real batch, unbiased (Kodali et al. 2017); real/fake: the batch itself (R1/R2).
    ``α ~ U[0,1)`` per sample from Philox keyed by `seed` (or PyTorch's generator when None; see
    the module docstring); α is returned in the accumulation dtype (float32, float64 for
    float64). Differentiable in `real` and `fake`. One Triton launch.
    """
    if points == "real":
        return real, None
    if points == "fake":
        return fake, None
    assert real is not None
    std = real.to(C.acc_dtype(real.dtype)).std() if points == "dragan" else None
    fake = None if points == "dragan" else fake
    if _autograd.traced():
        x_hat, alpha = _INTERPOLATE.op(real, fake, std, rng_state(seed, real.device, traced=True))
    else:
        x_hat, alpha = _INTERPOLATE.eager(real, fake, std, rng_state(seed, real.device))
    return x_hat, alpha
