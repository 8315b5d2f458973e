"""SPEC.md in plain PyTorch: the oracle of every test and the CPU fallback.

Every function here is written to be read against SPEC.md, line by line. It imports only
torch, accumulates in float32 (float64 for float64) and leans on PyTorch's own autograd, so
its gradients, and their gradients, are those of the formulas. The fused backends expose the
same four functions with the same signatures (`interpolate`, `grad_norms`,
`penalty_from_grad`, `normalize`) and are tested against this module.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

NORMS = ("l2", "l1", "linf")
CONSTRAINTS = ("ls", "hinge", "squared_hinge")
REDUCTIONS = ("mean", "max")
POINTS = ("interpolate", "real", "fake", "dragan")
MODES = ("gn", "pgn")

_ORD = {"l2": 2.0, "l1": 1.0, "linf": float("inf")}


def acc_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """float64 if any input is float64, else float32 (SPEC.md §3: no float16 accumulation)."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def _generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    if seed is None:
        return None  # PyTorch's default generator: torch.manual_seed makes the run reproducible
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def interpolate(
    real: Tensor | None, fake: Tensor | None, points: str = "interpolate", seed: int | None = None
) -> tuple[Tensor, Tensor | None]:
    """The points where the penalty is evaluated (SPEC.md §2); returns `(x_hat, alpha)`.

    interpolate: ``x̂_i = α_i x_i + (1-α_i) y_i`` (WGAN-GP, Gulrajani et al. 2017);
    dragan: ``x̂_i = x_i + α_i · 0.5 · std(x) · u_i`` (Kodali et al. 2017), ``u ~ U[0,1)``
    elementwise; real/fake: the batch itself (R1/R2, Mescheder et al. 2018).
    ``α_i ~ U[0,1)`` per sample, drawn in the accumulation dtype. Differentiable in `real`
    and `fake`.
    """
    if points == "real":
        return real, None
    if points == "fake":
        return fake, None
    assert real is not None
    acc = acc_dtype(real.dtype)
    gen = _generator(seed, real.device)
    alpha = torch.rand(real.shape[0], generator=gen, device=real.device, dtype=acc)
    a = alpha.view(-1, *([1] * (real.dim() - 1)))
    x = real.to(acc)
    if points == "interpolate":
        assert fake is not None
        # lerp(y, x, α) is α x + (1-α) y in one operation instead of four (and one autograd node).
        x_hat = torch.lerp(fake.to(acc), x, a)
    else:
        u = torch.rand(real.shape, generator=gen, device=real.device, dtype=acc)
        x_hat = x + a * (0.5 * x.std() * u)
    return x_hat.to(real.dtype), alpha


# Entries per block of a long row. PyTorch's CPU `vector_norm` accumulates a row in one pass, its
# float32 error growing with the row's length (1e-3 at 2^24 entries; it stalls outright on 2^30
# float16 ones); over 1024 entries it stays below 5e-7, and the block norms are combined in float64.
# Rows up to _DIRECT entries (CIFAR's 3072) are summed in one pass (within 3e-6), at no extra cost.
_BLOCK = 1024
_DIRECT = 4096
# Entries converted to the accumulation dtype at a time: a half-precision row is never copied whole.
# 64 MiB of float32, above glibc's largest mmap threshold (32 MiB), so each transient goes back to the
# system when freed instead of fragmenting the heap around the small partial norms (2 GiB on 2^29 entries).
_CHUNK = 1 << 24
# SPEC.md §3's tiny-row rule: an l2 norm whose square is below the smallest normal number of the
# accumulation dtype is 0 (flush-to-zero makes such sums 0; without it they keep a few digits).
_TINY = {torch.float32: 2.0**-63, torch.float64: 2.0**-511}


def _norm(x: Tensor, norm: str, dim: int, dtype: torch.dtype) -> Tensor:
    """``‖x‖`` along `dim`, accumulated in `dtype`; l1 as a sum of ``|x|``, which PyTorch sums
    pairwise (its `vector_norm` is 10x less accurate there)."""
    if norm == "l1":
        return x.abs().sum(dim, dtype=dtype)
    return torch.linalg.vector_norm(x, _ORD[norm], dim=dim, dtype=dtype)


def _block_norms(flat: Tensor, norm: str, acc: torch.dtype) -> Tensor:
    """The norms of consecutive blocks of `_BLOCK` entries of each row of `flat` (B, d): (B, ⌈d/_BLOCK⌉)."""
    B, d = flat.shape
    m, r = divmod(d, _BLOCK)
    # Split only where needed: the backward of a split is a copy of the whole gradient.
    head, tail = flat.split([m * _BLOCK, r], dim=1) if r else (flat, None)
    blocks = head.view(B, m, _BLOCK)
    rows = max(1, _CHUNK // (B * _BLOCK))
    parts = [_norm(chunk, norm, 2, acc) for chunk in (blocks.split(rows, dim=1) if m > rows else (blocks,))]
    if tail is not None:
        parts.append(_norm(tail, norm, 1, acc)[:, None])
    return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]


def grad_norms(grad: Tensor, norm: str = "l2") -> Tensor:
    """Per-sample norms ``n_i = ‖g_i‖`` of `grad` flattened to (B, d), float32 (float64 for float64).

    The backward is SPEC.md's (PyTorch's own): zero at ``n = 0`` and, for ``linf``,
    ``sign(g_j)/k`` shared over the `k` tied entries. Long rows are summed by blocks (a maximum is
    exact, so ``linf`` never is). An ``l2`` norm below the tiny-row bound is 0.
    """
    acc = acc_dtype(grad.dtype)
    flat = grad.reshape(grad.shape[0], -1)
    if flat.shape[1] <= _DIRECT or norm == "linf":
        norms = _norm(flat, norm, 1, acc)
    else:
        norms = _norm(_block_norms(flat, norm, acc), norm, 1, torch.float64).to(acc)
    # `threshold` keeps NaN and passes its gradient, so a NaN row stays NaN.
    return torch.nn.functional.threshold(norms, _TINY[acc], 0.0) if norm == "l2" else norms


def constraint_value(norms: Tensor, constraint: str, center: float) -> Tensor:
    """``h(n)``: ``ls`` ``(n-c)²``, ``hinge`` ``max(0, n-c)``, ``squared_hinge`` ``max(0, n-c)²``.

    The hinge's slope is 1 for ``n > c``, 0 at and below (SPEC.md's ``n > c`` rule) and NaN at a
    NaN norm: ``relu``'s would be 1 there, and a NaN row would get a finite gradient.
    """
    t = norms - center
    if constraint == "ls":
        return t * t
    step = torch.where(t > 0, 1.0, t.detach() * 0.0)  # 1, 0, or NaN when t is NaN
    pos = t * step
    return pos if constraint == "hinge" else pos * pos


def score_sums(scores: Tensor, *dtypes: torch.dtype) -> Tensor:
    """``f_i``, the sum of sample i's scores (B, *T) → (B,), in ``acc_dtype(scores.dtype, *dtypes)``.

    Summed in the accumulation dtype (SPEC.md §3), not in the scores' own: 64 float16 patch scores
    of 2000 overflow float16, and float32 scores ``[1e8, 1, -1e8]`` sum to 0 in float32.
    """
    return scores.reshape(scores.shape[0], -1).sum(dim=1, dtype=acc_dtype(scores.dtype, *dtypes))


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
    """``P = λ · R_i h(n_i) + ε · mean_i f_i²`` (SPEC.md §3); returns `(P, norms)`.

    `R` is the batch mean or max (`amax` shares the gradient over tied maxima, as SPEC.md asks).
    The output term is skipped when `output_weight` is 0, so `scores` then gets no gradient.
    `grad_scale`, a 1-element tensor ``s > 0`` (the inverse of a GradScaler's scale), makes
    ``n_i`` the norm of ``s·g_i``, taken as ``s·‖g_i‖`` (every norm here is absolutely
    homogeneous) so that no scaled copy of `grad` is made.
    """
    norms = grad_norms(grad, norm)
    if grad_scale is not None:
        norms = norms * grad_scale.to(norms.dtype)
    h = constraint_value(norms, constraint, center)
    penalty = weight * (h.mean() if reduction == "mean" else h.amax())
    if output_weight != 0.0 and scores is not None:
        f = score_sums(scores, grad.dtype)
        penalty = penalty + (output_weight * (f * f).mean()).to(penalty.dtype)
    return penalty, norms


def normalize(scores: Tensor, grad: Tensor, mode: str = "gn", norm: str = "l2") -> Tensor:
    """GN ``f̂ = f / (‖g‖ + |f|)`` (Wu et al. 2021) and PGN ``f̂ = (1-f) / (‖1-g‖ + |1-f|)`` (Xia).

    ``f̂ = 0`` with zero gradients where the denominator is 0. The division is guarded by
    ``q == 0`` rather than ``q > 0`` so that a NaN score stays NaN. Returns the shape and dtype
    of `scores`.
    """
    acc = acc_dtype(scores.dtype, grad.dtype)
    f = scores.reshape(-1).to(acc)
    g = grad.to(acc)
    if mode == "gn":
        u, n = f, grad_norms(g, norm)
    else:
        u, n = 1 - f, grad_norms(1 - g, norm)
    q = n + u.abs()
    empty = q == 0
    out = torch.where(empty, 0.0, u / torch.where(empty, 1.0, q))
    return out.reshape(scores.shape).to(scores.dtype)


def vjp(
    fn: Callable[..., Tensor | tuple[Tensor, ...]],
    inputs: tuple[Tensor | None, ...],
    grad_outputs: tuple[Tensor | None, ...],
) -> tuple[Tensor | None, ...]:
    """Vector-Jacobian product of `fn` (a formula of this module) at `inputs`, itself differentiable.

    The fused backends' backward when it runs with create_graph=True (a gradient of the penalty's
    gradient, a GN critic inside a penalty): their kernels compute first derivatives only, so the
    second order comes from the reference's formulas. Missing incoming gradients count as zero.
    """
    result: list[Tensor | None] = [None] * len(inputs)
    with torch.enable_grad():
        wrt = [i for i, x in enumerate(inputs) if x is not None and x.requires_grad]
        outs = fn(*inputs)
        outs = outs if isinstance(outs, tuple) else (outs,)
        pairs = [(o, g) for o, g in zip(outs, grad_outputs, strict=True) if g is not None and o.requires_grad]
        if wrt and pairs:
            found = torch.autograd.grad(
                [o for o, _ in pairs],
                [inputs[i] for i in wrt],
                [g for _, g in pairs],
                create_graph=True,
                allow_unused=True,
            )
            for i, g in zip(wrt, found, strict=True):
                result[i] = g
    return tuple(result)
