"""fastgp: fused gradient penalties and gradient normalisation for GANs (see SPEC.md)."""

from fastgp import losses
from fastgp.api import (
    PenaltyDetails,
    grad_norms,
    gradient_penalty,
    input_grad,
    interpolate,
    normalize,
    normalized,
    penalty_from_grad,
)
from fastgp.backends import backend_for, backends
from fastgp.margin import MarginResult, margin
from fastgp.presets import Preset, presets
from fastgp.training import LazyRegularizer

__version__ = "0.1.0"

__all__ = [
    "LazyRegularizer",
    "MarginResult",
    "PenaltyDetails",
    "Preset",
    "backend_for",
    "backends",
    "grad_norms",
    "gradient_penalty",
    "input_grad",
    "interpolate",
    "losses",
    "margin",
    "normalize",
    "normalized",
    "penalty_from_grad",
    "presets",
]
