"""Gradient penalties without a double backward, for critics PyTorch cannot differentiate twice.

`torch.compile`d critics (aot_autograd), the fused kernels of `scaled_dot_product_attention` (flash,
memory-efficient, cuDNN, CPU flash) and `@once_differentiable` custom ops have a backward but no
backward of their backward, which every exact gradient penalty needs. `fastgp.gradient_penalty` offers
two ways around it, both made of ordinary forwards and first-order backwards:

- ``method="fd"``: the exact penalty value, with its gradient with respect to D's parameters (and
  the points) taken by central differences of first-order gradients (`fd_input_grad`).
- ``method="ar"``, presets ``ar1``/``ar2``: the approximated R1/R2 of Lin et al. 2025 (APT), a
  different penalty that needs no input gradient at all (`approximated_penalty`).
"""

from __future__ import annotations

import math
import os
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import get_device_states, set_device_states

from fastgp import reference, training, validation

METHODS = ("exact", "fd", "ar")

# APT's settings (Lin et al. 2025, arXiv 2501.08316), as its text is quoted by public reimplementations: λ = 100
# with σ = 0.01 for images (σ = 0.1 for videos).
APT_SIGMA = 0.01

# The smoothness check of `method="fd"`: the Hessian-vector products at the working step and at a step of 10%
# of the input scale must agree to within 25%. Measured (3 seeds each; DCGAN on 32x32, MLPs on 2-D data of scale
# 10 and on 6-D data, the attention critic of the tests): smooth critics differ by 9e-5 to 0.12 (GELU, SiLU,
# softplus and attention below 0.03; tanh and ELU on the 2-D data up to 0.12), ReLU and LeakyReLU ones by 0.5 to
# 1.6, in float32 and float64 alike.
PROBE_STEP = 0.1
SMOOTHNESS_TOLERANCE = 0.25
CHECK_ENV_VAR = "FASTGP_CHECK_FD"


def fd_step(dtype: torch.dtype) -> float:
    """The central-difference step δ for `dtype`, ``(3 eps)^(1/3)``, which balances the truncation error (δ²)
    against rounding (eps/δ): 8.7e-6 for float64, 7.1e-3 for float32."""
    return (3.0 * torch.finfo(dtype).eps) ** (1.0 / 3.0)


# ----------------------------------------------------------------------------------------------- approximated R1


def ar_settings(sigma: object, settings: dict[str, Any], scores: object, batch: Tensor) -> float:
    """Check what ``method="ar"`` needs and return `sigma`: it approximates one penalty only (``l2``, ``ls``,
    centre 0: R1/R2), and `scores`, when given, are D's scores at the `batch` points with their graph."""
    sigma = validation.non_negative("sigma", sigma)
    if sigma == 0:
        raise ValueError("sigma must be positive for method='ar' (the noise's standard deviation), got 0.0")
    chosen = (settings["norm"], settings["constraint"], settings["center"])
    if chosen != ("l2", "ls", 0.0):
        raise ValueError(
            "method='ar' approximates the zero-centred squared L2 penalty (R1/R2) only: it needs norm='l2', "
            "constraint='ls', center=0; got norm={!r}, constraint={!r}, center={}".format(*chosen)
        )
    if scores is not None:
        validation.same_batch("scores", validation.tensor("scores", scores), "the points", batch)
        if not scores.requires_grad:
            raise ValueError("scores must carry D's graph (computed with autograd on), got a tensor without one")
    return sigma


def _per_sample(out: Tensor) -> Tensor:
    return out.reshape(out.shape[0], -1).sum(dim=1)


def approximated_penalty(
    D: Callable[..., Any],
    x: Tensor,
    scores: Tensor | None,
    args: tuple,
    kwargs: dict[str, Any],
    ops: Any,
    sigma: float,
    seed: int | None,
    settings: dict[str, Any],
) -> tuple[Tensor, Tensor]:
    """Approximated R1/R2 (Lin et al. 2025, "Diffusion Adversarial Post-Training", ICML 2025); returns
    ``(P, f)`` with ``f`` the per-sample scores at `x`.

        P = λ · R_i (f_i(x_i) − f_i(x_i + σ ξ_i))²  +  ε · mean_i f_i(x)²,        ξ_i ~ N(0, I)

    with ``R`` the batch mean (or max). The paper writes ``λ‖D(x, c) − D(N(x, σI), c)‖²₂`` and uses
    λ = 100, σ = 0.01 for images (0.1 for videos): these are the presets' defaults, taken from the paper's text
    as public reimplementations quote it (fastgp's papers do not include APT). fastgp takes σ as the noise's
    standard deviation, as those reimplementations do, though ``N(x, σI)`` read literally has variance σ. For
    small σ, ``f(x + σξ) − f(x) = σ ξ·∇f + O(σ²)`` with ``E_ξ (ξ·g)² = ‖g‖²`` and the σ³ term odd in ξ, so with
    the mean ``E_ξ P = λσ² · mean_i ‖∇f_i‖² + O(σ⁴)``: R1/R2 (``preset="r1"``) with weight λσ² (0.01 with APT's
    values, against R1's γ/2 = 5; APT's loss is ``λ · E‖·‖²``, a mean over the batch as here). It needs D's
    first-order gradient only, so it works with any critic, kinked or compiled. With `scores` (D's scores at
    `x` that the D loss already computed, carrying their graph) D runs once, at the noisy points: one extra
    forward and backward. The difference is the one-entry "gradient" of `penalty_from_grad` with the
    checked `settings` (`ar_settings`: l2, ls, centre 0), so the reduction and the output term are the
    backend's own.
    """
    if scores is None:
        scores = _per_sample(validation.d_output(D(x, *args, **kwargs), x.shape[0]))
    else:
        scores = _per_sample(scores)
    acc = reference.acc_dtype(x.dtype)
    # α (interpolate, dragan) is keyed by `seed`: the noise takes the next key so that the two are independent.
    gen = reference._generator(None if seed is None else (seed + 1) % 2**63, x.device)
    noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=acc)
    noisy = (x.to(acc) + sigma * noise).to(x.dtype)
    shifted = _per_sample(validation.d_output(D(noisy, *args, **kwargs), x.shape[0]))
    diff = (scores.to(acc) - shifted.to(acc)).unsqueeze(1)
    penalty, _ = ops.penalty_from_grad(diff, scores=scores if settings["output_weight"] else None, **settings)
    return penalty, scores


# ----------------------------------------------------------------------------------------------- finite differences


def _buffers_of(D: Callable[..., Any]) -> list[Tensor]:
    owner = getattr(D, "__self__", D)
    return list(owner.buffers()) if isinstance(owner, nn.Module) else []


def _snapshot(buffers: list[Tensor]) -> list[Tensor]:
    return [b.detach().clone() for b in buffers]


def _restore(buffers: list[Tensor], snapshot: list[Tensor]) -> None:
    # Through `.data`, as BatchNorm updates its running statistics: untracked, so the version counters that the
    # graphs of the forwards saved (BatchNorm saves its running statistics for its backward) stay as they were.
    with torch.no_grad():
        for buffer, value in zip(buffers, snapshot, strict=True):
            buffer.data.copy_(value)


class _Replay:
    """D evaluated again as it was in the forward that produced ``g``: the same random draws (dropout), the
    buffers as they were before that forward (so that spectral norm repeats its power iteration and lands on
    the same u, v). `session()` puts the RNG streams and the buffers back as they were when it began."""

    def __init__(self, D: Callable[..., Any], x: Tensor, args: tuple, kwargs: dict[str, Any]) -> None:
        # DistributedDataParallel's forward prepares a reduction: the extra evaluations call the inner module.
        self.fn = D.module if isinstance(D, nn.parallel.DistributedDataParallel) else D
        self.args, self.kwargs = args, kwargs
        self.buffers = _buffers_of(D)
        self.before = _snapshot(self.buffers)
        self.cpu_rng = torch.get_rng_state()
        self.devices, self.device_rng = get_device_states(x)
        self.device_type = x.device.type

    @contextmanager
    def session(self) -> Iterator[None]:
        now = _snapshot(self.buffers)
        with torch.random.fork_rng(devices=self.devices, device_type=self.device_type):
            try:
                yield
            finally:
                _restore(self.buffers, now)

    def scores(self, points: Tensor) -> Tensor:
        torch.set_rng_state(self.cpu_rng)
        set_device_states(self.devices, self.device_rng, device_type=self.device_type)
        _restore(self.buffers, self.before)
        return _per_sample(self.fn(points, *self.args, **self.kwargs))


def _hvp(
    replay: _Replay, x: Tensor, v: Tensor, delta: float, params: list[Tensor], wants_x: bool
) -> tuple[Tensor | None, ...]:
    """``∇_(θ, x) Σ_i (f_i(x_i + ε_i v_i) − f_i(x_i − ε_i v_i)) / (2ε_i) = ∇_(θ, x)(v · ∇_x f) + O(ε²)``,
    with ε_i such that no entry of ``ε_i v_i`` moves by more than ``δ · max(1, rms(x_i))`` (a sparse `v`, as
    the L∞ norm gives, would otherwise take a step √d times longer along its few entries); samples with
    ``v_i = 0`` contribute nothing. Returns the gradients of `params`, then of `x` when `wants_x`."""
    acc = reference.acc_dtype(x.dtype, v.dtype)
    flat_x, flat_v = x.detach().reshape(x.shape[0], -1).to(acc), v.reshape(v.shape[0], -1).to(acc)
    top = torch.linalg.vector_norm(flat_v, ord=math.inf, dim=1)
    scale = (torch.linalg.vector_norm(flat_x, dim=1) / math.sqrt(flat_x.shape[1])).clamp(min=1.0)
    zero = top == 0  # NaN rows stay NaN: NaN == 0 is False
    eps = torch.where(zero, 0.0, delta * scale / torch.where(zero, 1.0, top))
    weights = torch.where(zero, 0.0, 0.5 / torch.where(zero, 1.0, eps))
    step = (eps.view(-1, *([1] * (x.dim() - 1))) * v.to(acc)).to(x.dtype)
    point = x.detach().requires_grad_(wants_x)
    inputs = [*params, point] if wants_x else params
    if not inputs:
        return ()
    # A backward runs with grad mode off. Autocast is off: a step of δ = 7e-3 would be lost in bfloat16 rounding;
    # and off for the backward of the evaluations too, which on a CPU runs on this thread, in its autocast state.
    with torch.enable_grad(), torch.autocast(replay.device_type, enabled=False):
        total = (weights * (replay.scores(point + step) - replay.scores(point - step)).to(acc)).sum()
        return torch.autograd.grad(total, inputs, allow_unused=True)


class _FiniteDifferenceHVP(torch.autograd.Function):
    """``g = ∂f/∂x̂`` (computed first-order, outside) in the forward; in the backward, with ``v = ∂P/∂g``,
    the Hessian-vector products ``∇_θ(v · g)`` and ``∇_x̂(v · g)`` by central differences (`_hvp`)."""

    @staticmethod
    def forward(ctx: Any, grad: Tensor, replay: _Replay, x: Tensor, *params: Tensor) -> Tensor:
        ctx.replay = replay
        ctx.save_for_backward(x, *params)
        return grad.detach()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, v: Tensor) -> tuple[Tensor | None, ...]:
        x, *params = ctx.saved_tensors
        wants_x = ctx.needs_input_grad[2]
        with ctx.replay.session():
            grads = _hvp(ctx.replay, x, v, fd_step(x.dtype), params, wants_x)
        return (None, None, grads[-1] if wants_x else None, *grads[: len(params)])


def _parameters(D: Callable[..., Any], scores: Tensor, x: Tensor) -> list[Tensor]:
    """D's trainable parameters: a module's own, else the leaves that the scores' graph reaches beyond `x`."""
    owner = getattr(D, "__self__", D)
    if isinstance(owner, nn.Module):
        return [p for p in owner.parameters() if p.requires_grad]
    beyond = {id(t) for t in training._leaves(x)} if x.grad_fn is not None else set()
    return [t for t in training._leaves(scores) if t is not x and id(t) not in beyond]


# Critics whose smoothness has been checked, held weakly: a module, or for a plain function its parameters.
_checked: weakref.WeakSet = weakref.WeakSet()
_checked_params: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def _check_smooth(D: Callable[..., Any], replay: _Replay, x: Tensor, grad: Tensor, params: list[Tensor]) -> None:
    owner = getattr(D, "__self__", D)
    module = owner if isinstance(owner, nn.Module) else None
    if module is not None and module in _checked:
        return
    if module is None and params and all(_checked_params.get(id(p)) is p for p in params):
        return
    v = grad.detach()
    if not params or not bool((v != 0).any()):
        return  # nothing to compare yet: checked on a later call
    with replay.session():
        near = _hvp(replay, x, v, fd_step(x.dtype), params, False)
        far = _hvp(replay, x, v, PROBE_STEP, params, False)
    pairs = [(a, b) for a, b in zip(near, far, strict=True) if a is not None and b is not None]
    size = math.sqrt(sum(float(a.double().square().sum()) for a, _ in pairs))
    gap = math.sqrt(sum(float((a.double() - b.double()).square().sum()) for a, b in pairs))
    if size > 0 and not gap <= SMOOTHNESS_TOLERANCE * size:
        raise ValueError(
            "fastgp: method='fd' refuses this critic D: its finite-difference Hessian-vector product changes by "
            f"{gap / size:.0%} between steps {fd_step(x.dtype):.1e} and {PROBE_STEP} of the input scale (tolerance "
            f"{SMOOTHNESS_TOLERANCE:.0%}), so the penalty's gradient would be wrong. Central differences need a "
            "twice-differentiable critic: ReLU, LeakyReLU, PReLU, ReLU6, hardtanh, hardswish, max-pooling and "
            "abs have kinks that a step crosses (a float16/bfloat16 critic is also too coarse). Use GELU, SiLU, "
            "softplus, tanh, ELU or sigmoid activations (softmax attention, LayerNorm and GroupNorm are fine); "
            "or method='exact' if D can be differentiated twice; or preset='ar1'/'ar2' (approximated R1/R2, "
            f"first-order, any critic). ({CHECK_ENV_VAR}=0 skips this check.)"
        )
    if module is not None:
        _checked.add(module)
    else:
        _checked_params.update((id(p), p) for p in params)


def fd_input_grad(
    D: Callable[..., Any],
    x: Tensor,
    args: tuple,
    kwargs: dict[str, Any],
    differentiate: Callable[..., tuple[Tensor, Tensor]],
) -> tuple[Tensor, Tensor]:
    """``(f, g)`` for ``method="fd"``: the scores with D's first-order graph and ``g = ∂f/∂x`` taken
    first-order by `differentiate` (``_differentiate`` of `fastgp.api`, without create_graph), so the penalty
    computed from ``g`` has its exact value. Back-propagating the penalty through ``g`` needs the
    Hessian-vector product ``∇_θ(v · ∇_x f)`` with ``v = ∂P/∂g``; it is taken by central differences of
    first-order gradients at ``x ± ε_i v_i`` (per-sample steps, each difference weighted by ``1/(2ε_i)``),
    replaying D's random draws and buffers (`_Replay`), so ``(d_loss + gp).backward()`` works as with the
    exact method and costs two more forwards and one more backward of D.

    Accuracy against the exact double backward, for smooth critics (GELU, SiLU, softplus MLPs, a SiLU conv
    net, a transformer block; every norm, constraint and points): the parameter gradient to 3e-10 relative in
    float64 and 1e-5 to 7e-4 in float32, the gradient into the points to 3e-9 and 5e-3. The truncation
    error grows as ε² times D's third derivative: ELU, whose second derivative jumps, gets 1e-2. A critic with
    kinks (ReLU, LeakyReLU, max-pooling) is refused at the first call for it, which compares the product at
    the working step with that at a step of `PROBE_STEP` (`SMOOTHNESS_TOLERANCE`; set
    ``FASTGP_CHECK_FD=0`` to skip). Gradients reach D's parameters and the points (hence the generator when
    `fake` requires grad), not tensors passed in `d_args`/`d_kwargs`.
    """
    replay = _Replay(D, x, args, kwargs)
    leaf = x if x.requires_grad else x.detach().requires_grad_(True)
    scores, grad = differentiate(D, leaf, args, kwargs)
    training.check_critic(D, leaf, grad)  # the BatchNorm warning; `grad` has no graph, so no probe
    params = _parameters(D, scores, leaf)
    if os.environ.get(CHECK_ENV_VAR, "1") != "0":
        _check_smooth(D, replay, x, grad, params)
    # The points themselves, not `leaf`: a gradient for them is computed only when they require one.
    return scores, _FiniteDifferenceHVP.apply(grad, replay, x, *params)
