"""Baselines: eager PyTorch as a careful user writes it (torch.lerp, linalg.vector_norm with an fp32
accumulator), on top of the same `fastgp.reference` the tests use, and the critics of the whole steps."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from fastgp import reference

ORD = {"l2": 2.0, "l1": 1.0, "linf": math.inf}


def eager_penalty(
    grad: Tensor, norm: str = "l2", constraint: str = "ls", center: float = 1.0, weight: float = 10.0
) -> Tensor:
    """``λ · mean h(‖g_i‖)``: `vector_norm(dtype=fp32)` accumulates in fp32 without an fp32 copy of `grad`."""
    n = torch.linalg.vector_norm(grad.flatten(1), ORD[norm], dim=1, dtype=reference.acc_dtype(grad.dtype))
    return weight * reference.constraint_value(n, constraint, center).mean()


def eager_interpolate(real: Tensor, fake: Tensor, alpha: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``α_i x_i + (1-α_i) y_i`` with one `torch.lerp` in the input dtype; draws α when not given."""
    if alpha is None:
        alpha = torch.rand(real.shape[0], device=real.device, dtype=reference.acc_dtype(real.dtype))
    a = alpha.view(-1, *([1] * (real.dim() - 1))).to(real.dtype)
    return torch.lerp(fake, real, a), alpha


def eager_normalize(scores: Tensor, grad: Tensor, mode: str = "gn", norm: str = "l2") -> Tensor:
    """GN/PGN as `reference.normalize`, with the norm accumulated by `vector_norm(dtype=...)` instead of a copy."""
    acc = reference.acc_dtype(scores.dtype, grad.dtype)
    f = scores.reshape(-1).to(acc)
    if mode == "gn":
        u, n = f, torch.linalg.vector_norm(grad.flatten(1), ORD[norm], dim=1, dtype=acc)
    else:
        u, n = 1 - f, torch.linalg.vector_norm((1 - grad).flatten(1), ORD[norm], dim=1, dtype=acc)
    q = n + u.abs()
    empty = q == 0
    return torch.where(empty, 0.0, u / torch.where(empty, 1.0, q)).reshape(scores.shape).to(scores.dtype)


def eager_wgan_gp(
    D: nn.Module, real: Tensor, fake: Tensor, alpha: Tensor | None = None, weight: float = 10.0
) -> Tensor:
    """The hand-written WGAN-GP term (Gulrajani et al. 2017): interpolate, differentiate D, penalise."""
    x_hat, _ = eager_interpolate(real, fake, alpha)
    x_hat.requires_grad_(True)
    (grad,) = torch.autograd.grad(D(x_hat).sum(), x_hat, create_graph=True)
    return eager_penalty(grad, "l2", "ls", 1.0, weight)


def eager_r1(D: nn.Module, real: Tensor, gamma: float = 10.0) -> Tensor:
    """Hand-written R1 (Mescheder et al. 2018) as its own pass: ``γ/2 · mean ‖∇D(x)‖²`` on a fresh forward."""
    x = real.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(D(x).sum(), x, create_graph=True)
    return eager_penalty(grad, "l2", "ls", 0.0, gamma / 2)


def make_critic(kind: str, width: int) -> nn.Module:
    """WGAN-GP's critics, without normalisation layers (per-sample gradients need samples treated apart).

    ``dcgan``: the CIFAR-10 critic of Gulrajani et al. (three 5×5 stride-2 convs, LeakyReLU, linear head);
    ``mlp``: their toy critic on 2-D data (three hidden ReLU layers).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the same weights for every provider and every run
        if kind == "dcgan":
            w = width
            return nn.Sequential(
                nn.Conv2d(3, w, 5, 2, 2), nn.LeakyReLU(0.2),
                nn.Conv2d(w, 2 * w, 5, 2, 2), nn.LeakyReLU(0.2),
                nn.Conv2d(2 * w, 4 * w, 5, 2, 2), nn.LeakyReLU(0.2),
                nn.Flatten(), nn.Linear(4 * 4 * 4 * w, 1),
            )  # fmt: skip
        if kind == "mlp":
            return nn.Sequential(
                nn.Linear(2, width), nn.ReLU(),
                nn.Linear(width, width), nn.ReLU(),
                nn.Linear(width, width), nn.ReLU(),
                nn.Linear(width, 1),
            )  # fmt: skip
    raise ValueError(f"unknown critic {kind!r}")
