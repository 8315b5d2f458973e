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


def grad_norms(grad: Tensor, norm: str = "l2") -> Tensor:
    """Per-sample norms ``n_i = ‖g_i‖`` of `grad` flattened to (B, d), float32 (float64 for float64).

    PyTorch's `vector_norm` backward is SPEC.md's: zero at ``n = 0`` and, for ``linf``,
    ``sign(g_j)/k`` shared over the `k` tied entries.
    """
    flat = grad.reshape(grad.shape[0], -1).to(acc_dtype(grad.dtype))
    return torch.linalg.vector_norm(flat, ord=_ORD[norm], dim=1)


def constraint_value(norms: Tensor, constraint: str, center: float) -> Tensor:
    """``h(n)``: ``ls`` ``(n-c)²``, ``hinge`` ``max(0, n-c)``, ``squared_hinge`` ``max(0, n-c)²``.

    ``relu``'s derivative at 0 is 0 in PyTorch, which is SPEC.md's ``n > c`` rule.
    """
    t = norms - center
    if constraint == "ls":
        return t * t
    if constraint == "hinge":
        return torch.relu(t)
    return torch.relu(t) ** 2


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
        f = scores.reshape(scores.shape[0], -1).sum(dim=1).to(norms.dtype)
        penalty = penalty + output_weight * (f * f).mean()
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
