"""SPEC.md §7: every refused input raises here, naming the argument, before any computation.

Nothing in this module touches autograd state, so a refused call leaves every `.grad` as it was.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from numbers import Integral, Real
from typing import Any

import torch
from torch import Tensor


def _names(choices: Iterable[str]) -> str:
    return ", ".join(repr(c) for c in choices)


def choice(name: str, value: object, choices: Iterable[str]) -> str:
    """`value` must be one of the strings `choices`."""
    choices = tuple(choices)
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, one of {_names(choices)}; got {type(value).__name__}")
    if value not in choices:
        raise ValueError(f"{name} must be one of {_names(choices)}; got {value!r}")
    return value


def non_negative(name: str, value: object, dtype: torch.dtype = torch.float64) -> float:
    """`value` must be a real number ≥ 0, finite in `dtype` (weights and centres, SPEC.md §7).

    `dtype` is the one P accumulates in: a weight it cannot hold would make P inf, or NaN where
    the penalty is 0, whatever the data.
    """
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be finite and non-negative, got {value}")
    if value > torch.finfo(dtype).max:
        raise ValueError(
            f"{name} must be finite in {dtype}, the dtype the penalty is accumulated in "
            f"(at most {torch.finfo(dtype).max:.4g}), got {value:g}"
        )
    return value


def tensor(name: str, value: object) -> Tensor:
    """`value` must be a floating-point tensor with a non-empty batch dimension."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
    if value.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (strided) tensor, got layout {value.layout}")
    if value.dim() == 0:
        raise ValueError(f"{name} must have a batch dimension, got a 0-d tensor")
    if value.shape[0] == 0:
        raise ValueError(f"{name} must not be an empty batch, got shape {tuple(value.shape)}")
    if value.numel() == 0:
        raise ValueError(f"{name} must have at least one entry per sample, got shape {tuple(value.shape)}")
    return value


def same_batch(name: str, value: Tensor, ref_name: str, ref: Tensor) -> None:
    """`value` must be on `ref`'s device with `ref`'s batch size."""
    if value.device != ref.device:
        raise ValueError(f"{name} is on {value.device} but {ref_name} is on {ref.device}")
    if value.shape[0] != ref.shape[0]:
        raise ValueError(f"{name} has batch size {value.shape[0]} but {ref_name} has {ref.shape[0]}")


def same_tensors(real: Tensor, fake: Tensor) -> None:
    """`real` and `fake` must agree in shape, dtype and device (SPEC.md §2)."""
    if real.shape != fake.shape:
        raise ValueError(f"fake has shape {tuple(fake.shape)} but real has {tuple(real.shape)}")
    if real.dtype != fake.dtype:
        raise TypeError(f"fake has dtype {fake.dtype} but real has {real.dtype}")
    if real.device != fake.device:
        raise ValueError(f"fake is on {fake.device} but real is on {real.device}")


def points(value: object, real: object, fake: object) -> torch.device:
    """`points` is a name of SPEC.md §2 and the batches it needs are there and agree; returns their device."""
    if (
        value.__class__ is str
        and value == "interpolate"
        and real.__class__ is Tensor
        and fake.__class__ is Tensor
        and real.dtype == fake.dtype
        and real.shape == fake.shape
        and real.device == fake.device
        and real.dim() > 0
        and real.numel() > 0
        and real.is_floating_point()
        and real.layout == fake.layout == torch.strided
    ):
        # Every training step's call, checked in one expression; the checks below give the messages.
        return real.device
    choice("points", value, ("interpolate", "real", "fake", "dragan"))
    need = {"interpolate": ("real", "fake"), "dragan": ("real",), "real": ("real",), "fake": ("fake",)}[value]
    given = {"real": real, "fake": fake}
    for name in need:
        if given[name] is None:
            raise ValueError(f"points={value!r} needs {name}, got None")
    for name, t in given.items():
        if t is not None:
            tensor(name, t)
    if real is not None and fake is not None:
        same_tensors(real, fake)
    if value == "dragan" and real.numel() < 2:
        raise ValueError("points='dragan' needs at least two entries in real: it perturbs by std(real)")
    return (real if real is not None else fake).device


def seed(value: object) -> int | None:
    """`seed` is None or an integer (int, numpy integer) in [0, 2**63); returned as an int."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"seed must be an int or None, got {type(value).__name__}")
    value = int(value)
    if not 0 <= value < 2**63:
        raise ValueError(f"seed must be in [0, 2**63), got {value}")
    return value


def callable_(name: str, value: object) -> Callable[..., Any]:
    if not callable(value):
        raise TypeError(f"{name} must be callable (a module or function), got {type(value).__name__}")
    return value


def grad_enabled(function: str) -> None:
    """A differentiable penalty needs autograd on."""
    if torch.is_inference_mode_enabled():
        raise ValueError(f"{function} needs autograd but was called under torch.inference_mode()")
    if not torch.is_grad_enabled():
        raise ValueError(
            f"{function} needs autograd but was called under torch.no_grad(); "
            "call it where gradients are enabled (the penalty is back-propagated into D)"
        )


def d_args(args: object, kwargs: object) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if not isinstance(args, (tuple, list)):
        raise TypeError(f"d_args must be a tuple of extra positional arguments for D, got {type(args).__name__}")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise TypeError(f"d_kwargs must be a dict of keyword arguments for D or None, got {type(kwargs).__name__}")
    return tuple(args), dict(kwargs or {})


def scaler(value: object) -> None:
    if value is not None and not (hasattr(value, "scale") and hasattr(value, "get_scale")):
        raise TypeError(f"scaler must be a torch.amp.GradScaler or None, got {type(value).__name__}")


def d_output(out: object, batch: int) -> Tensor:
    """D's output must be a floating tensor of shape (B,), (B, 1) or (B, *T) that depends on x̂.

    A 0-d output is accepted when B == 1, as a critic that ends in ``torch.squeeze`` returns for a
    single sample; it is returned as shape (1,).
    """
    if not isinstance(out, Tensor):
        raise TypeError(f"D must return a torch.Tensor of scores, got {type(out).__name__}")
    if not out.is_floating_point():
        raise TypeError(f"D's output must be floating point, got {out.dtype}")
    if out.dim() == 0 and batch == 1:
        out = out.reshape(1)
    if out.dim() == 0 or out.shape[0] != batch:
        raise ValueError(
            f"D's output must have the batch size {batch} as its first dimension, got shape {tuple(out.shape)}"
        )
    if out.numel() == 0:
        raise ValueError(f"D's output does not depend on its input x (it is empty, shape {tuple(out.shape)})")
    if not out.requires_grad:
        raise ValueError("D's output does not depend on its input x (it does not require grad)")
    return out


def memoized(check: Callable[..., Any]) -> Callable[..., Any]:
    """`check` (a validation of hashable settings), answered from a cache for arguments seen before.

    The public functions validate the same settings on every training step; a cache hit costs one
    lookup. Arguments are told apart by type as well (``1``, ``1.0`` and ``True`` are three keys), a
    refusal is never cached (it raises again, with its message), unhashable arguments and tracing by
    torch.compile go to `check` itself. The answer is shared between calls: read it, never change it.
    """
    cached = functools.lru_cache(maxsize=256, typed=True)(check)

    @functools.wraps(check)
    def call(*args: Any) -> Any:
        if torch.compiler.is_compiling():
            return check(*args)
        try:
            return cached(*args)
        except TypeError:
            try:
                hash(args)
            except TypeError:  # unhashable arguments: ask the check itself, below (no chained traceback)
                pass
            else:
                raise  # the check's own refusal
        return check(*args)

    return call
