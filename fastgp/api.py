"""The public functions (SPEC.md §8): validate once, pick a backend, call exactly one op."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from fastgp import backends, first_order, reference, training, validation
from fastgp.presets import presets

_BACKEND_NAMES = ("auto", *backends.NAMES)


class _Default:
    """A signature default that a preset may override, unlike a value the caller passed."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return repr(self.value)


_POINTS, _NORM, _CONSTRAINT = _Default("interpolate"), _Default("l2"), _Default("ls")
_CENTER, _WEIGHT, _REDUCTION = _Default(1.0), _Default(10.0), _Default("mean")
_METHOD, _SIGMA = _Default("exact"), _Default(first_order.APT_SIGMA)


@dataclass(frozen=True)
class PenaltyDetails:
    """What `gradient_penalty(..., return_details=True)` computed on the way to the penalty.

    `x_hat` the points, `alpha` the per-sample α (None for real/fake/a tensor), `scores` the
    per-sample scores ``f_i`` (B,), `grad` ``∂f_i/∂x̂_i`` (create_graph=True), `norms` the
    per-sample norms (float32, float64 for float64). With ``method="ar"`` there is no input
    gradient: `grad` and `norms` are None.
    """

    x_hat: Tensor
    alpha: Tensor | None
    scores: Tensor
    grad: Tensor | None
    norms: Tensor | None


def _inverse_scale(scaler: Any, device: torch.device) -> Tensor | None:
    """``1/scale`` of a GradScaler as a 1-element tensor on `device`, None when it does not scale.

    Read from the scaler's own device tensor (``torch.amp.GradScaler._scale``, set by its first
    ``scale()`` call) so that no ``get_scale()`` host sync is added; a scaler without one (a
    disabled GradScaler, or a look-alike) is asked for its scale as a number.
    """
    scale = getattr(scaler, "_scale", None)
    if isinstance(scale, Tensor):
        return scale.to(device=device, dtype=torch.float32).reciprocal()
    value = float(scaler.get_scale())
    return None if value == 1.0 else torch.full((1,), 1.0 / value, device=device)


def _differentiate(
    D: Callable[..., Any],
    x: Tensor,
    args: tuple,
    kwargs: dict,
    *,
    scaler: Any = None,
    create_graph: bool = True,
    owned: bool = False,
) -> tuple[Tensor, Tensor]:
    """Scores ``f_i`` (sum of D's outputs for sample i) and ``g = ∂f/∂x`` in one forward pass.

    If `x` does not require grad, D runs on a leaf that does: a copy of `x`, so that a critic
    writing through ``x.data`` cannot change the caller's tensor, or `x` itself when `owned`
    (fastgp made it: interpolates, DRAGAN points). ``f_i`` of a (B, *T) output is summed in the
    accumulation dtype (`reference.score_sums`); a (B,) or (B, 1) output keeps its dtype. With a
    GradScaler the gradient is that of the scaled scores: the caller unscales it (see
    `_inverse_scale`).
    """
    if not x.requires_grad:
        x = (x.detach() if owned else x.detach().clone()).requires_grad_(True)
    try:
        out = D(x, *args, **kwargs)
    except RuntimeError as err:
        if x.is_leaf and "leaf Variable that requires grad" in str(err):
            raise RuntimeError(
                "fastgp: D modified its input in place, but the input is a leaf tensor that requires grad "
                "(fastgp differentiates D with respect to it). Make the critic leave its input alone: start "
                "its forward with `x = x.clone()`, or use out-of-place operations on x (e.g. "
                f"nn.ReLU(inplace=False), x = x + 1). PyTorch said: {err}"
            ) from err
        raise
    out = validation.d_output(out, x.shape[0])
    if out.numel() == out.shape[0]:
        # One score per sample: differentiate the sum of D's output itself, so that no reshape lies on
        # the path of the double backward; the scores are the output, or a view of it.
        scores = out if out.dim() == 1 else out.reshape(out.shape[0])
        total = out.sum()
    else:
        scores = reference.score_sums(out.reshape(out.shape[0], -1), x.dtype)
        total = scores.sum()
    if scaler is not None:
        # PyTorch's AMP gradient-penalty recipe: differentiate the scaled scores so small fp16
        # gradients do not flush to zero, then unscale before the norm.
        total = scaler.scale(total)
    # The scores keep their graph (retain_graph) for the D loss and the output term of method="fd".
    (grad,) = torch.autograd.grad(total, x, create_graph=create_graph, retain_graph=True, allow_unused=True)
    if grad is None:
        raise ValueError("D's output does not depend on its input x (the gradient is None)")
    if create_graph:
        training.check_critic(D, x, grad)
    return scores, grad


def _differentiate_unscaled(
    D: Callable[..., Any], x: Tensor, args: tuple, kwargs: dict, *, scaler: Any
) -> tuple[Tensor, Tensor]:
    """`_differentiate` without a graph of ``g``, unscaled: `method="fd"` differentiates the unscaled
    gradient by finite differences of its own, so it must not see the scale."""
    scores, grad = _differentiate(D, x, args, kwargs, scaler=scaler, create_graph=False)
    grad_scale = _inverse_scale(scaler, grad.device) if scaler is not None else None
    return scores, grad if grad_scale is None else (grad * grad_scale).to(grad.dtype)


def _settings(preset: object, **given: Any) -> dict[str, Any]:
    """Explicit arguments win over the preset, which wins over the signature's defaults."""
    base = {}
    if preset is not None:
        base = presets[validation.choice("preset", preset, presets)]._kwargs  # read only
    return {k: (base.get(k, v.value) if isinstance(v, _Default) else v) for k, v in given.items()}


@validation.memoized
def _resolved(
    preset: object,
    points: object,
    norm: object,
    constraint: object,
    center: object,
    weight: object,
    reduction: object,
    method: object,
    sigma: object,
    output_weight: object,
    backend: object,
    dtype: torch.dtype | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """`gradient_penalty`'s settings after its preset (`_settings`), with the method and the
    backend's name checked, and the penalty's (`_penalty_settings`) for points of `dtype`;
    `points` is None for points passed as a tensor."""
    s = _settings(
        preset,
        points=points,
        norm=norm,
        constraint=constraint,
        center=center,
        weight=weight,
        reduction=reduction,
        method=method,
        sigma=sigma,
    )
    s["method"] = validation.choice("method", s["method"], first_order.METHODS)
    if s["method"] == "ar":
        validation.non_negative("sigma", s["sigma"])  # refused here, a sigma of any type never becomes a key
    elif not isinstance(sigma, _Default):
        raise ValueError(f"sigma and scores apply to method='ar' only, got method={s['method']!r}")
    validation.choice("backend", backend, _BACKEND_NAMES)
    penalty = _penalty_settings.__wrapped__(
        s["norm"], s["constraint"], s["center"], s["weight"], s["reduction"], output_weight, dtype or torch.float32
    )
    return s, penalty


@validation.memoized
def _penalty_settings(
    norm: object,
    constraint: object,
    center: object,
    weight: object,
    reduction: object,
    output_weight: object,
    dtype: torch.dtype,
) -> dict[str, Any]:
    """The validated settings of SPEC.md §3 for gradients of `dtype`."""
    acc = reference.acc_dtype(dtype)
    return {
        "norm": validation.choice("norm", norm, reference.NORMS),
        "constraint": validation.choice("constraint", constraint, reference.CONSTRAINTS),
        "center": validation.non_negative("center", center, acc),
        "weight": validation.non_negative("weight", weight, acc),
        "reduction": validation.choice("reduction", reduction, reference.REDUCTIONS),
        "output_weight": validation.non_negative("output_weight", output_weight, acc),
    }


def gradient_penalty(
    D: Callable[..., Any],
    real: Tensor | None,
    fake: Tensor | None = None,
    *,
    preset: str | None = None,
    points: str | Tensor = _POINTS,
    norm: str = _NORM,
    constraint: str = _CONSTRAINT,
    center: float = _CENTER,
    weight: float = _WEIGHT,
    output_weight: float = 0.0,
    reduction: str = _REDUCTION,
    seed: int | None = None,
    d_args: tuple = (),
    d_kwargs: dict[str, Any] | None = None,
    scaler: Any = None,
    backend: str = "auto",
    method: str = _METHOD,
    sigma: float = _SIGMA,
    scores: Tensor | None = None,
    return_details: bool = False,
) -> Tensor | tuple[Tensor, PenaltyDetails]:
    """Sample the points, differentiate D there, penalise the per-sample gradient norms.

    ``P = λ · R_i h(‖∇_x̂ f_i(x̂_i)‖) + ε · mean_i f_i(x̂)²`` (SPEC.md §3), with ``R`` the batch
    mean or max, ``h`` the constraint (``ls`` ``(n-c)²``, ``hinge`` ``max(0, n-c)``,
    ``squared_hinge`` ``max(0, n-c)²``) and ``x̂`` from `points` (SPEC.md §2). WGAN-GP is
    Gulrajani et al. 2017; the L1/L∞ norms and the hinge are Jolicoeur-Martineau & Mitliagkas.
    A `fake` passed to points that do not use it (``real``, ``dragan``: R1, DRAGAN) is ignored with
    a warning. Besides the shapes below, D may return a 0-d score when B = 1 (a critic ending in
    ``torch.squeeze``).
    `preset` fills in the settings of a named penalty (``fastgp.presets``); an argument given
    explicitly overrides it. ``D(x̂, *d_args, **d_kwargs)`` may return ``(B,)``, ``(B, 1)`` or
    ``(B, *T)`` (patch critics: ``f_i`` is the sum over ``T``). With a ``GradScaler`` the input
    gradient is taken of the scaled scores and unscaled by the norm as it reads it (the inverse
    scale stays on the device: no host sync, no extra pass). Returns the scalar
    penalty (float32; float64 for float64), or ``(penalty, PenaltyDetails)``.

    `method` is how the penalty reaches D's parameters (`fastgp.first_order`): ``"exact"``, the
    double backward; ``"fd"``, the same value with its Hessian-vector product taken by central
    differences of first-order gradients, for smooth critics that cannot be differentiated twice
    (``torch.compile``, fused attention); ``"ar"`` (presets ``ar1``/``ar2``), the approximated R1/R2
    of Lin et al. 2025, ``λ · R_i (f_i(x̂_i) − f_i(x̂_i + σ ξ_i))²`` with noise of standard deviation
    `sigma`, whose expectation is R1's ``λσ² · R_i ‖∇f_i‖²`` for small σ; with ``"ar"``, `scores`
    passes D's scores at the points that the D loss already computed (with their graph), so that D
    runs only at the noisy points.
    """
    validation.callable_("D", D)
    own = isinstance(points, Tensor)
    sample = points if own else real if real is not None else fake
    # Settings first, keyed by the points' dtype (the tensors are checked next): one lookup per call.
    s, ps = _resolved(
        preset,
        None if own else points,  # a tensor never enters the cache, which would keep it alive
        norm,
        constraint,
        center,
        weight,
        reduction,
        method,
        sigma,
        output_weight,
        backend,
        sample.dtype if isinstance(sample, Tensor) else None,
    )
    pts = points if own else s["points"]
    device = validation.tensor("points", points).device if own else validation.points(pts, real, fake)
    reduction, how = s["reduction"], s["method"]
    if how == "ar":
        noise = first_order.ar_settings(s["sigma"], ps, scores, sample)
    elif scores is not None:
        raise ValueError(f"sigma and scores apply to method='ar' only, got method={how!r}")
    if seed is not None:
        seed = validation.seed(seed)
    if d_args.__class__ is tuple and not d_args and d_kwargs is None:
        args, kwargs = (), {}
    else:
        args, kwargs = validation.d_args(d_args, d_kwargs)
    if scaler is not None:
        validation.scaler(scaler)
    validation.grad_enabled("gradient_penalty")
    if fake is not None and not own and pts in ("real", "dragan"):
        # Warnings show once per calling line by default: once per training loop, not once per step.
        named = f"preset={preset!r} (points={pts!r})" if preset is not None else f"points={pts!r}"
        warnings.warn(
            f"fastgp.gradient_penalty: {named} builds its points from real alone, so the fake batch you passed "
            "is ignored. Pass fake=None to silence this.",
            UserWarning,
            stacklevel=2,
        )
    ops = backends.select(backend, device)

    x_hat, alpha = (pts, None) if own else ops.interpolate(real, fake, pts, seed)
    if how == "ar":
        penalty, scores = first_order.approximated_penalty(D, x_hat, scores, args, kwargs, ops, noise, seed, ps)
        return (penalty, PenaltyDetails(x_hat, alpha, scores, None, None)) if return_details else penalty
    # fastgp's own points (interpolates, DRAGAN) may be D's leaf; the caller's tensors never are.
    owned = not own and pts in ("interpolate", "dragan")
    grad_scale = None
    if how == "fd":
        x_fd = x_hat if owned or x_hat.requires_grad else x_hat.detach().clone()
        differentiate = functools.partial(_differentiate_unscaled, scaler=scaler)
        scores, grad = first_order.fd_input_grad(D, x_fd, args, kwargs, differentiate)
    else:
        scores, grad = _differentiate(D, x_hat, args, kwargs, scaler=scaler, owned=owned)
        if scaler is not None:  # after scale(), which makes the scaler's scale tensor
            grad_scale = _inverse_scale(scaler, grad.device)
    penalty, norms = ops.penalty_from_grad(
        grad, scores=scores if ps["output_weight"] else None, grad_scale=grad_scale, **ps
    )
    if return_details:
        if grad_scale is not None:
            grad = (grad * grad_scale).to(grad.dtype)
        return penalty, PenaltyDetails(x_hat, alpha, scores, grad, norms)
    return penalty


def interpolate(
    real: Tensor | None,
    fake: Tensor | None = None,
    *,
    points: str = "interpolate",
    seed: int | None = None,
    backend: str = "auto",
    return_alpha: bool = False,
) -> Tensor | tuple[Tensor, Tensor | None]:
    """The points of SPEC.md §2: ``α_i x_i + (1-α_i) y_i`` (WGAN-GP), DRAGAN's
    ``x_i + α_i · 0.5 · std(x) · u_i``, or the real/fake batch itself; ``α_i ~ U[0,1)`` per
    sample from a generator keyed by `seed` (PyTorch's default generator when None).
    Differentiable in `real` and `fake`; returns ``x̂`` or ``(x̂, α)``.
    """
    device = validation.points(points, real, fake)
    if seed is not None:
        seed = validation.seed(seed)
    validation.choice("backend", backend, _BACKEND_NAMES)
    x_hat, alpha = backends.select(backend, device).interpolate(real, fake, points, seed)
    return (x_hat, alpha) if return_alpha else x_hat


def input_grad(D: Callable[..., Any], x: Tensor, *d_args: Any, **d_kwargs: Any) -> tuple[Tensor, Tensor]:
    """``(f, ∂f_i/∂x_i)`` from one forward of ``D(x, *d_args, **d_kwargs)``, with create_graph=True.

    ``f_i`` is the sum of D's outputs for sample i, shape (B,). The scores carry D's graph, so the
    same forward serves the D loss and R1/R2 (Mescheder et al. 2018) or GN (Wu et al. 2021).
    If `x` does not require grad, a leaf copy that does is differentiated instead, so D cannot
    write to `x`.
    """
    validation.callable_("D", D)
    validation.tensor("x", x)
    validation.grad_enabled("input_grad")
    return _differentiate(D, x, d_args, d_kwargs)


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
    backend: str = "auto",
) -> Tensor:
    """``P = λ · R_i h(‖g_i‖) + ε · mean_i f_i²`` from a gradient you already have (SPEC.md §3).

    `grad` is (B, *S), flattened per sample; `scores` (B,) or (B, *T) is needed only for the
    output term (`output_weight` ε, Karras et al.; Chu et al. 2020 §6.1). Under ``no_grad`` it
    computes the value without a graph, for logging.
    """
    validation.tensor("grad", grad)
    ps = _penalty_settings(norm, constraint, center, weight, reduction, output_weight, grad.dtype)
    if scores is not None:
        validation.tensor("scores", scores)
        validation.same_batch("scores", scores, "grad", grad)
    elif ps["output_weight"]:
        raise ValueError("output_weight > 0 needs scores, got None")
    validation.choice("backend", backend, _BACKEND_NAMES)
    ops = backends.select(backend, grad.device)
    return ops.penalty_from_grad(grad, scores=scores if ps["output_weight"] else None, **ps)[0]


def grad_norms(grad: Tensor, norm: str = "l2") -> Tensor:
    """Per-sample ``‖g_i‖`` (l2, l1 or linf) of `grad` flattened to (B, d): (B,) float32
    (float64 for float64), differentiable, zero gradient at a zero row (SPEC.md §3)."""
    validation.tensor("grad", grad)
    validation.choice("norm", norm, reference.NORMS)
    return reference.grad_norms(grad, norm)


def _normalize_args(mode: object, norm: object, backend: object) -> None:
    validation.choice("mode", mode, reference.MODES)
    validation.choice("norm", norm, reference.NORMS)
    validation.choice("backend", backend, _BACKEND_NAMES)


def normalize(scores: Tensor, grad: Tensor, *, mode: str = "gn", norm: str = "l2", backend: str = "auto") -> Tensor:
    """Gradient normalisation (SPEC.md §4): GN ``f̂ = f / (‖∇f‖ + |f|)`` (Wu et al. 2021) or
    PGN ``f̂ = (1-f) / (‖1-∇f‖ + |1-f|)`` (Xia, Algorithm 1), with ``f̂ = 0`` where the
    denominator is 0. `scores` holds one score per sample; `grad` is ``∂f/∂x`` with its graph
    (the generator's signal flows through it). Returns the shape and dtype of `scores`.
    For Xia's Theorem 6 variant use ``normalize(1 - f, g, mode="gn")``.
    """
    validation.tensor("scores", scores)
    validation.tensor("grad", grad)
    validation.same_batch("scores", scores, "grad", grad)
    if scores.numel() != scores.shape[0]:
        raise ValueError(f"scores must hold one score per sample, got shape {tuple(scores.shape)}")
    _normalize_args(mode, norm, backend)
    return backends.select(backend, scores.device).normalize(scores, grad, mode, norm)


class normalized(nn.Module):
    """Wrap a critic so that ``forward(x, *a, **k)`` returns its normalised scores ``f̂``, a drop-in for D.

    GN-GAN (Wu et al. 2021) / PGN (Xia): ``f̂ = u / (‖g'‖ + |u|)`` with ``f`` and ``g = ∂f/∂x``
    from one forward of D (see `normalize`). ``f̂`` has D's own output shape when D returns one score
    per sample ((B,), (B, 1), or 0-d for B = 1), else (B,) (a patch critic's ``f_i`` is the sum of its
    outputs). ``state_dict()`` and ``load_state_dict()`` use D's own keys, so a checkpoint of D loads
    into ``normalized(D)`` and back. Under ``torch.no_grad()`` it still differentiates D (GN needs ∇f)
    and returns detached values, for evaluation.
    """

    def __init__(
        self, D: nn.Module | Callable[..., Any], *, mode: str = "gn", norm: str = "l2", backend: str = "auto"
    ) -> None:
        super().__init__()
        validation.callable_("D", D)
        _normalize_args(mode, norm, backend)
        self.D, self.mode, self.norm, self.backend = D, mode, norm, backend

    def forward(self, x: Tensor, *d_args: Any, **d_kwargs: Any) -> Tensor:
        validation.tensor("x", x)
        if torch.is_inference_mode_enabled():
            raise ValueError("normalized(D) differentiates D and cannot run under torch.inference_mode()")
        differentiable = torch.is_grad_enabled()
        shapes: list[torch.Size] = []
        with torch.enable_grad(), _recording_output_shape(self.D, shapes) as D:
            scores, grad = _differentiate(D, x, d_args, d_kwargs, create_graph=differentiable)
            out = normalize(scores, grad, mode=self.mode, norm=self.norm, backend=self.backend)
        if shapes and shapes[0].numel() == out.numel():
            out = out.reshape(shapes[0])
        return out if differentiable else out.detach()

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """D's own state dict, keys unprefixed (also when this module sits inside another)."""
        if isinstance(self.D, nn.Module):
            return self.D.state_dict(*args, **kwargs)
        return super().state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Any, *args: Any, **kwargs: Any) -> Any:
        """Loads D's own state dict into D (error messages name D's keys)."""
        if isinstance(self.D, nn.Module):
            return self.D.load_state_dict(state_dict, *args, **kwargs)
        return super().load_state_dict(state_dict, *args, **kwargs)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # Inside another module, whose load_state_dict recurses into this one: D's keys arrive without the
        # "D." of this module's attribute name. Put it back so that the recursion into D, next, finds them.
        if isinstance(self.D, nn.Module):
            for key in [k for k in state_dict if k.startswith(prefix)]:
                state_dict[f"{prefix}D.{key[len(prefix) :]}"] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, norm={self.norm!r}"


@contextmanager
def _recording_output_shape(D: Callable[..., Any], shapes: list[torch.Size]) -> Iterator[Callable[..., Any]]:
    """Yields a critic that calls D and appends the shape of D's output to `shapes`.

    A module keeps its identity (a forward hook records the shape), so the checks on D, such as its
    BatchNorm warning, still see the module.
    """

    def record(output: Any) -> None:
        if isinstance(output, Tensor):
            shapes.append(output.shape)

    if isinstance(D, nn.Module):
        handle = D.register_forward_hook(lambda _module, _args, output: record(output))
        try:
            yield D
        finally:
            handle.remove()
        return

    def recorded(*args: Any, **kwargs: Any) -> Any:
        output = D(*args, **kwargs)
        record(output)
        return output

    yield recorded
