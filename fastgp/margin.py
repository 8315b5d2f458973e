"""The expected Lp margin of a classifier (SPEC.md §5; Jolicoeur-Martineau & Mitliagkas §3.2)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fastgp import reference, validation
from fastgp.api import _differentiate

# The margin in norm p is measured with the gradient's dual norm q.
_DUAL = {1.0: "linf", 2.0: "l2", math.inf: "l1"}


@dataclass(frozen=True)
class MarginResult:
    """`mean` over samples with a nonzero gradient (NaN if none), `zero_grad_count` of the others,
    and the per-sample `values` ``y_i f(x_i) / ‖∇f(x_i)‖_q`` (NaN where the gradient is zero)."""

    mean: float
    zero_grad_count: int
    values: Tensor


def _p(p: object) -> float:
    if p == "inf":
        return math.inf
    if isinstance(p, bool) or not isinstance(p, (int, float)) or float(p) not in _DUAL:
        raise ValueError(f"p must be 1, 2 or inf (float('inf') or 'inf'), got {p!r}")
    return float(p)


def margin(f: Callable[..., Any], x: Tensor, y: Tensor, *, p: float | str = 2) -> MarginResult:
    """``γ_p = mean_i y_i f(x_i) / ‖∇_x f(x_i)‖_q`` with ``q`` the dual of ``p`` (p=2→q=2,
    p=1→q=∞, p=∞→q=1); `y` holds labels ±1. Works under ``no_grad`` (it enables grad itself)."""
    validation.callable_("f", f)
    validation.tensor("x", x)
    if not isinstance(y, Tensor):
        raise TypeError(f"y must be a torch.Tensor of labels ±1, got {type(y).__name__}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must have shape ({x.shape[0]},), got {tuple(y.shape)}")
    if not bool(((y == 1) | (y == -1)).all()):
        raise ValueError("y must hold labels +1 and -1 only")
    q = _DUAL[_p(p)]
    if torch.is_inference_mode_enabled():
        raise ValueError("margin differentiates f and cannot run under torch.inference_mode()")
    with torch.enable_grad():
        scores, grad = _differentiate(f, x.detach(), (), {}, create_graph=False)
    norms = reference.grad_norms(grad.detach(), q)
    signed = y.to(norms.dtype) * scores.detach().to(norms.dtype)
    nonzero = norms > 0
    values = torch.where(nonzero, signed / torch.where(nonzero, norms, 1.0), math.nan)
    count = int(nonzero.sum())
    mean = float(values[nonzero].mean()) if count else math.nan
    return MarginResult(mean, x.shape[0] - count, values)
