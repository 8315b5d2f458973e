"""SPEC.md's formulas written out by hand in float64, forward and gradient, without autograd.

An oracle independent of `fastgp.reference` (which leans on PyTorch's autograd): the two must
agree to 1e-10.
"""

from __future__ import annotations

import torch
from torch import Tensor


def norm_and_dn(g: Tensor, norm: str) -> tuple[Tensor, Tensor]:
    """Per-sample ``n`` and ``∂n/∂g`` (B, d) per SPEC.md §3, zero where ``n = 0``."""
    g = g.reshape(g.shape[0], -1).double()
    a = g.abs()
    if norm == "l2":
        n = (g * g).sum(1).sqrt()
        dn = g / n.clamp_min(1e-300)[:, None]
    elif norm == "l1":
        n = a.sum(1)
        dn = g.sign()
    else:
        n = a.amax(1)
        hit = a == n[:, None]
        dn = g.sign() * hit / hit.sum(1, keepdim=True)
    return n, torch.where((n == 0)[:, None], 0.0, dn)


def penalty(g, norm, constraint, center, weight, reduction, scores=None, output_weight=0.0):
    """``(P, ∂P/∂g (B, d), ∂P/∂f (B,) or None)``."""
    n, dn = norm_and_dn(g, norm)
    B = n.shape[0]
    t = n - center
    if constraint == "ls":
        h, hp = t * t, 2 * t
    elif constraint == "hinge":
        h, hp = t.clamp_min(0), (t > 0).double()
    else:
        h, hp = t.clamp_min(0) ** 2, 2 * t.clamp_min(0)
    if reduction == "mean":
        value, w = h.mean(), torch.full_like(h, weight / B)
    else:
        value = h.max()
        top = h == value
        w = top * weight / top.sum()
    P = weight * value
    dg = (w * hp)[:, None] * dn
    df = None
    if output_weight:
        f = scores.double().reshape(B, -1).sum(1)
        P = P + output_weight * (f * f).mean()
        df = 2 * output_weight / B * f
    return P, dg, df


def normalize(scores: Tensor, grad: Tensor, mode: str, norm: str) -> tuple[Tensor, Tensor, Tensor]:
    """``(f̂, ∂(Σ f̂)/∂f, ∂(Σ f̂)/∂g)`` per SPEC.md §4, zero where ``q = 0``."""
    f = scores.double().reshape(-1)
    g = grad.reshape(grad.shape[0], -1).double()
    if mode == "gn":
        u, s = f, 1.0
        n, dn = norm_and_dn(g, norm)
    else:
        u, s = 1 - f, -1.0
        n, dn = norm_and_dn(1 - g, norm)
        dn = -dn
    q = n + u.abs()
    empty = q == 0
    qs = torch.where(empty, 1.0, q)
    out = torch.where(empty, 0.0, u / qs)
    df = torch.where(empty, 0.0, s * n / qs**2)
    dg = torch.where(empty[:, None], 0.0, -(u / qs**2)[:, None] * dn)
    return out, df, dg
