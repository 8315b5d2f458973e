"""Providers of each op: eager, `torch.compile` of the eager head, and `fastgp-<backend>` for every name in
`fastgp.backends.NAMES`; each prepared on a case's inputs with a check against eager."""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import platform
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

import fastgp
from fastgp.backends import NAMES, select
from fastgp.bench.baselines import (
    eager_interpolate,
    eager_normalize,
    eager_penalty,
    eager_r1,
    eager_wgan_gp,
    make_critic,
)
from fastgp.bench.cases import COMPILE_SAMPLE, FUSED_OPS, Case


class Skip(Exception):
    """A provider that cannot run on this case here; the message says why."""


@dataclass
class Prepared:
    """A provider ready to time: `run` is one timed call; `check` returns an error message or None."""

    run: Callable[[], Any]
    check: Callable[[], str | None]


def backend_names() -> tuple[str, ...]:
    """The fastgp backends known to this install (`fastgp.backends.NAMES`), in its order."""
    return tuple(NAMES)


def provider_names(op: str) -> list[str]:
    """The providers of `op`, baseline first; whether each can run is decided per case and device."""
    fused = [f"fastgp-{b}" for b in backend_names()]
    if op in FUSED_OPS:
        return ["eager", "compile", *fused]
    if op == "wgan_step":
        return ["eager", *fused]
    if op == "r1":
        return ["eager", "eager-shared", *fused, *(f"{p}-shared" for p in fused)]
    if op == "head":
        return ["eager", *fused]
    if op == "gradient_penalty":
        return ["critic", "eager", *fused]
    raise ValueError(f"unknown op {op!r}")


def backend_of(provider: str) -> str | None:
    """``fastgp-triton-shared`` -> ``triton``; None for the baselines (eager, compile, critic)."""
    if not provider.startswith("fastgp-"):
        return None
    return provider.removeprefix("fastgp-").removesuffix("-shared")


def is_fused(provider: str) -> bool:
    """Whether the provider is a fused fastgp backend, the thing the GPU targets are about."""
    name = backend_of(provider)
    return name is not None and name != "torch"


def backend_skip_reason(name: str, device: torch.device) -> str | None:
    """Why fastgp backend `name` cannot be timed on `device` tensors, or None if it can."""
    try:
        select(name, device)
    except Exception as exc:  # an extension that fails to load must read as skipped, not crash the run
        return str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
    if device.type != "cuda" and name != "torch":
        return f"{name} runs on {device.type} tensors only through an interpreter; its timings would mean nothing"
    return None


def compile_skip_reason(case: Case, device: torch.device, policy: str) -> str | None:
    """Why the torch.compile provider does not run on `case`, or None. `policy`: all, one or none."""
    if case.op not in FUSED_OPS:
        return "torch.compile does not support the double backward a gradient penalty needs"
    if policy == "none":
        return "torch.compile skipped (--compile none, the --quick default: a compile takes 10-60 s on a CPU)"
    if policy == "one" and case != COMPILE_SAMPLE:
        return f"torch.compile timed on {COMPILE_SAMPLE.id} only (--compile one, the CPU default)"
    if device.type == "cpu" and platform.system() == "Windows":
        return "torch.compile needs a C++ toolchain for CPU code"
    return None


def _rel_err(got: Tensor, want: Tensor) -> float:
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    if not torch.isfinite(got).all():
        return math.inf
    denom = want.norm().item()
    diff = (got - want).norm().item()
    return diff / denom if denom > 0 else diff


# ‖out − eager‖ / ‖eager‖ that still counts as the same function: the rounding of one output in that dtype plus
# a different summation order; a wrong kernel lands orders of magnitude above.
TOLERANCE = {"fp64": 1e-10, "fp32": 1e-4, "fp16": 5e-3, "bf16": 2e-2}


def _compare(outputs: Sequence[Tensor], expected: Sequence[Tensor], dtype: str, names: Sequence[str]) -> str | None:
    tol = TOLERANCE[dtype]
    for name, got, want in zip(names, outputs, expected, strict=True):
        if got.shape != want.shape:
            return f"{name}: shape {tuple(got.shape)}, eager {tuple(want.shape)}"
        err = _rel_err(got, want)
        if not err <= tol:
            return f"{name}: relative error {err:.2e} vs eager (tolerance {tol:.0e} for {dtype})"
    return None


def _randn(shape: Sequence[int], dtype: torch.dtype, device: torch.device, gen: torch.Generator) -> Tensor:
    # Random, never zeros: zeros hide unwritten outputs and can run faster than data does.
    return torch.randn(tuple(shape), generator=gen, device=device, dtype=torch.float32).to(dtype)


def _generator(device: torch.device, case: Case) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(sum(map(ord, case.id)))
    return gen


def _compiled(fn: Callable[..., Any]) -> Callable[..., Any]:
    # A fresh dynamo cache per case: each shape, dtype and norm is a recompile of the same code object,
    # which would otherwise hit dynamo's recompile limit and silently fall back to eager.
    torch._dynamo.reset()
    return torch.compile(fn, dynamic=False)


def _head(provider: str, eager: Callable[..., Any], fused: Callable[..., Any], **fixed: Any) -> Callable[..., Any]:
    """What `provider` calls for one fused op: the `eager` baseline, its torch.compile, or fastgp's
    public function `fused` on the provider's backend (with the `fixed` keywords)."""
    if provider == "eager":
        return eager
    if provider == "compile":
        return _compiled(eager)
    return functools.partial(fused, backend=backend_of(provider), **fixed)


def _prepare_penalty(case: Case, provider: str, device: torch.device) -> Prepared:
    gen = _generator(device, case)
    g = _randn(case.shape, case.torch_dtype, device, gen).requires_grad_(True)
    kw = {"norm": case.norm, "constraint": "ls", "center": 1.0, "weight": 10.0}

    head = _head(provider, eager_penalty, fastgp.penalty_from_grad)

    def run() -> tuple[Tensor, Tensor]:
        penalty = head(g, **kw)
        (dg,) = torch.autograd.grad(penalty, g)
        return penalty, dg

    def check() -> str | None:
        want_p = eager_penalty(g, **kw)
        (want_dg,) = torch.autograd.grad(want_p, g)
        return _compare(run(), (want_p, want_dg), case.dtype, ("P", "dP/dg"))

    return Prepared(run, check)


def _prepare_interpolate(case: Case, provider: str, device: torch.device) -> Prepared:
    gen = _generator(device, case)
    real = _randn(case.shape, case.torch_dtype, device, gen)
    fake = _randn(case.shape, case.torch_dtype, device, gen)

    interp = _head(provider, eager_interpolate, fastgp.interpolate, return_alpha=True)

    def run() -> tuple[Tensor, Tensor]:
        return interp(real, fake)

    def check() -> str | None:
        x_hat, alpha = run()
        if alpha is None or alpha.shape != (case.shape[0],):
            return f"alpha: expected shape ({case.shape[0]},), got {None if alpha is None else tuple(alpha.shape)}"
        if not ((alpha >= 0) & (alpha < 1)).all():
            return "alpha: outside [0, 1)"
        # Every provider draws its own α; the check replays the α it used through the fp32 formula.
        a = alpha.double().view(-1, *([1] * (real.dim() - 1)))
        want = a * real.double() + (1 - a) * fake.double()
        return _compare((x_hat,), (want,), case.dtype, ("x_hat",))

    return Prepared(run, check)


def _prepare_normalize(case: Case, provider: str, device: torch.device) -> Prepared:
    gen = _generator(device, case)
    g = _randn(case.shape, case.torch_dtype, device, gen).requires_grad_(True)
    scores = _randn((case.shape[0],), case.torch_dtype, device, gen).requires_grad_(True)
    upstream = _randn((case.shape[0],), case.torch_dtype, device, gen)
    mode, norm = case.variant, case.norm

    fn = _head(provider, eager_normalize, fastgp.normalize)

    def fwd_bwd(f_fn: Callable[..., Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        out = f_fn(scores, g, mode=mode, norm=norm)
        d_scores, d_g = torch.autograd.grad(out, (scores, g), upstream)
        return out, d_scores, d_g

    def check() -> str | None:
        return _compare(fwd_bwd(fn), fwd_bwd(eager_normalize), case.dtype, ("f_hat", "df", "dg"))

    return Prepared(lambda: fwd_bwd(fn), check)


def _step_inputs(case: Case, device: torch.device) -> tuple[Tensor, Tensor]:
    gen = _generator(device, case)
    return _randn(case.shape, case.torch_dtype, device, gen), _randn(case.shape, case.torch_dtype, device, gen)


def _grads(D: nn.Module) -> list[Tensor]:
    # The critic's last bias does not move ∂D/∂x, so a penalty alone leaves its .grad None.
    return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in D.parameters()]


@contextlib.contextmanager
def _no_tf32() -> Iterator[None]:
    """Full fp32 convolutions and matmuls for a check: TF32 rounding of two slightly different x̂ would otherwise
    read as a disagreement of the critic's gradients, not of the penalty."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _compare_step(loss: Tensor, D: nn.Module, want_loss: Tensor, want_D: nn.Module, dtype: str) -> str | None:
    names = ["loss", *(f"dL/d{n}" for n, _ in D.named_parameters())]
    return _compare([loss, *_grads(D)], [want_loss, *_grads(want_D)], dtype, names)


@_no_tf32()
def _check_wgan_gp(case: Case, base: nn.Module, real: Tensor, fake: Tensor, backend: str) -> str | None:
    """`fastgp.gradient_penalty` on a copy of `base` against `eager_wgan_gp` with the same α: P and ∂P/∂θ."""
    mine, want = copy.deepcopy(base), copy.deepcopy(base)
    penalty, details = fastgp.gradient_penalty(mine, real, fake, preset="wgan-gp", backend=backend, return_details=True)
    penalty.backward()
    expected = eager_wgan_gp(want, real, fake, details.alpha)
    expected.backward()
    return _compare_step(penalty, mine, expected, want, case.dtype)


def _prepare_wgan_step(case: Case, provider: str, device: torch.device) -> Prepared:
    real, fake = _step_inputs(case, device)
    base = make_critic(case.variant, case.width).to(device=device, dtype=case.torch_dtype)
    D = copy.deepcopy(base)
    opt = torch.optim.Adam(D.parameters(), lr=1e-4, betas=(0.0, 0.9))
    backend = backend_of(provider)

    def gp(critic: nn.Module) -> Tensor:
        if backend is None:
            return eager_wgan_gp(critic, real, fake)
        return fastgp.gradient_penalty(critic, real, fake, preset="wgan-gp", backend=backend)

    def run() -> Tensor:
        opt.zero_grad(set_to_none=True)
        loss = D(fake).mean() - D(real).mean() + gp(D)
        loss.backward()
        opt.step()
        return loss

    return Prepared(run, lambda: None if backend is None else _check_wgan_gp(case, base, real, fake, backend))


def _prepare_r1(case: Case, provider: str, device: torch.device) -> Prepared:
    real, fake = _step_inputs(case, device)
    base = make_critic(case.variant, case.width).to(device=device, dtype=case.torch_dtype)
    backend = backend_of(provider)
    shared = provider.endswith("-shared")

    def loss_of(D: nn.Module) -> Tensor:
        """Non-saturating D loss + R1 (γ = 10), in the provider's way."""
        if backend is None and not shared:
            return nn.functional.softplus(-D(real)).mean() + nn.functional.softplus(D(fake)).mean() + eager_r1(D, real)
        if backend is None:
            x = real.detach().requires_grad_(True)
            scores = D(x)
            (grad,) = torch.autograd.grad(scores.sum(), x, create_graph=True)
            d_loss = nn.functional.softplus(-scores).mean() + nn.functional.softplus(D(fake)).mean()
            return d_loss + eager_penalty(grad, "l2", "ls", 0.0, 5.0)
        if shared:
            scores, grad = fastgp.input_grad(D, real)
            d_loss = fastgp.losses.d_loss("ns", scores, D(fake).reshape(-1))
            return d_loss + fastgp.penalty_from_grad(grad, center=0.0, weight=5.0, backend=backend)
        d_loss = fastgp.losses.d_loss("ns", D(real).reshape(-1), D(fake).reshape(-1))
        return d_loss + fastgp.gradient_penalty(D, real, preset="r1", backend=backend)

    D = copy.deepcopy(base)
    opt = torch.optim.Adam(D.parameters(), lr=1e-4, betas=(0.0, 0.9))

    def run() -> Tensor:
        opt.zero_grad(set_to_none=True)
        loss = loss_of(D)
        loss.backward()
        opt.step()
        return loss

    @_no_tf32()
    def check() -> str | None:
        if provider == "eager":
            return None
        mine, want = copy.deepcopy(base), copy.deepcopy(base)
        loss = loss_of(mine)
        loss.backward()
        expected = nn.functional.softplus(-want(real)).mean() + nn.functional.softplus(want(fake)).mean()
        expected = expected + eager_r1(want, real)
        expected.backward()
        return _compare_step(loss, mine, expected, want, case.dtype)

    return Prepared(run, check)


def _prepare_head(case: Case, provider: str, device: torch.device) -> Prepared:
    """WGAN-GP's fused ops chained, forward and backward, with no critic between them: the penalty of
    ``g = x̂`` (the input gradient of ``½‖x‖²``), differentiated into real and fake."""
    real, fake = (t.requires_grad_(True) for t in _step_inputs(case, device))
    backend = backend_of(provider)

    def head(alpha: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        if backend is None or alpha is not None:
            x_hat, alpha = eager_interpolate(real, fake, alpha)
            penalty = eager_penalty(x_hat)
        else:
            x_hat, alpha = fastgp.interpolate(real, fake, backend=backend, return_alpha=True)
            penalty = fastgp.penalty_from_grad(x_hat, backend=backend)
        return (penalty, *torch.autograd.grad(penalty, (real, fake)), alpha)

    def check() -> str | None:
        *got, alpha = head()
        *want, _ = head(alpha)
        return _compare(got, want, case.dtype, ("P", "dP/dreal", "dP/dfake"))

    return Prepared(head, check)


def _prepare_gradient_penalty(case: Case, provider: str, device: torch.device) -> Prepared:
    """``gradient_penalty(D, real, fake)`` and its backward; the ``critic`` provider is D's own part of it
    (forward, input gradient with its graph, backward through that graph), for the overhead beyond D."""
    real, fake = _step_inputs(case, device)
    base = make_critic(case.variant, case.width).to(device=device, dtype=case.torch_dtype)
    D = copy.deepcopy(base)
    backend = backend_of(provider)

    def run() -> None:
        if provider == "critic":
            x = real.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(D(x).sum(), x, create_graph=True)
            grad.sum().backward()
        elif backend is None:
            eager_wgan_gp(D, real, fake).backward()
        else:
            fastgp.gradient_penalty(D, real, fake, preset="wgan-gp", backend=backend).backward()

    return Prepared(run, lambda: None if backend is None else _check_wgan_gp(case, base, real, fake, backend))


_PREPARE = {
    "penalty": _prepare_penalty,
    "interpolate": _prepare_interpolate,
    "normalize": _prepare_normalize,
    "wgan_step": _prepare_wgan_step,
    "r1": _prepare_r1,
    "head": _prepare_head,
    "gradient_penalty": _prepare_gradient_penalty,
}


def prepare(case: Case, provider: str, device: torch.device | str, *, compile: str = "all") -> Prepared:
    """Build `provider` on `case` with the case's inputs on `device`; raises `Skip` when it cannot run here."""
    device = torch.device(device)
    if provider not in provider_names(case.op):
        raise ValueError(f"unknown provider {provider!r} for op {case.op!r}")
    name = backend_of(provider)
    reason = None
    if name is not None:
        reason = backend_skip_reason(name, device)
    elif provider == "compile":
        reason = compile_skip_reason(case, device, compile)
    if reason is not None:
        raise Skip(reason)
    return build(case, provider, device)


def build(case: Case, provider: str, device: torch.device) -> Prepared:
    """`provider` on `case`'s inputs on `device`, without asking whether its timings would mean anything."""
    return _PREPARE[case.op](case, provider, device)
