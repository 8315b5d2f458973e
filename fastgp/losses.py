"""GAN losses on raw critic scores (SPEC.md §6), plain and relativistic.

Each loss is a pair ``φ_r, φ_f`` and the D loss is ``mean φ_r(r) + mean φ_f(s)``:
wgan ``-t, t``; hinge ``relu(1-t), relu(1+t)``; ns ``softplus(-t), softplus(t)``;
ls ``(1-t)², (1+t)²``. ``rp-<L>`` is the relativistic paired and ``ra-<L>`` the relativistic
average variant (Jolicoeur-Martineau 2018).
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

_Pair = tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]

_PAIRS: dict[str, _Pair] = {
    "wgan": (lambda t: -t, lambda t: t),
    "hinge": (lambda t: F.relu(1 - t), lambda t: F.relu(1 + t)),
    "ns": (lambda t: F.softplus(-t), lambda t: F.softplus(t)),
    "ls": (lambda t: (1 - t) ** 2, lambda t: (1 + t) ** 2),
}

NAMES: tuple[str, ...] = (*_PAIRS, *(f"{k}-{b}" for k in ("rp", "ra") for b in _PAIRS))


def _parse(name: str) -> tuple[str, _Pair]:
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if name not in NAMES:
        raise ValueError(f"name must be one of {', '.join(map(repr, NAMES))}, got {name!r}")
    kind, _, base = name.rpartition("-")
    return kind, _PAIRS[base]


def _check_scores(arg: str, scores: object) -> Tensor:
    if not isinstance(scores, Tensor):
        raise TypeError(f"{arg} must be a torch.Tensor, got {type(scores).__name__}")
    if not scores.is_floating_point():
        raise TypeError(f"{arg} must be a floating-point tensor, got {scores.dtype}")
    if scores.numel() == 0:
        raise ValueError(f"{arg} must not be empty")
    return scores


def _paired(r: Tensor, s: Tensor) -> None:
    if r.shape != s.shape:
        raise ValueError(f"rp- losses pair samples: real_scores {tuple(r.shape)} != fake_scores {tuple(s.shape)}")


def d_loss(name: str, real_scores: Tensor, fake_scores: Tensor) -> Tensor:
    """The discriminator loss `name` on ``r = real_scores``, ``s = fake_scores`` (SPEC.md §6).

    Plain: ``mean φ_r(r) + mean φ_f(s)``; ``rp-``: ``mean φ_r(r - s)``;
    ``ra-``: ``mean φ_r(r - mean s) + mean φ_f(s - mean r)``.
    """
    kind, (phi_r, phi_f) = _parse(name)
    r, s = _check_scores("real_scores", real_scores), _check_scores("fake_scores", fake_scores)
    if kind == "rp":
        _paired(r, s)
        return phi_r(r - s).mean()
    if kind == "ra":
        return phi_r(r - s.mean()).mean() + phi_f(s - r.mean()).mean()
    return phi_r(r).mean() + phi_f(s).mean()


def g_loss(name: str, fake_scores: Tensor, real_scores: Tensor | None = None) -> Tensor:
    """The generator loss `name` (SPEC.md §6); relativistic variants need `real_scores`.

    wgan and hinge ``-mean s``; ns ``mean softplus(-s)``; ls ``mean (1-s)²``;
    ``rp-``: ``mean φ_r(s - r)``; ``ra-``: ``mean φ_r(s - mean r) + mean φ_f(r - mean s)``.
    """
    kind, (phi_r, phi_f) = _parse(name)
    s = _check_scores("fake_scores", fake_scores)
    if kind:
        if real_scores is None:
            raise ValueError(f"g_loss({name!r}) is relativistic and needs real_scores")
        r = _check_scores("real_scores", real_scores)
        if kind == "rp":
            _paired(r, s)
            return phi_r(s - r).mean()
        return phi_r(s - r.mean()).mean() + phi_f(r - s.mean()).mean()
    if name in ("wgan", "hinge"):
        return -s.mean()
    return phi_r(s).mean()


__all__ = ["NAMES", "d_loss", "g_loss"]
