"""Benchmark cases, providers and the runner shared by `benchmarks/` (pytest-benchmark) and `fastgp bench`.

Read top-down: the cases (what is timed, on which shapes), the baselines (eager PyTorch written as a careful
user would, built on `fastgp.reference`, the oracle of the tests), the providers of each op (eager,
`torch.compile` of the eager head, and `fastgp-<backend>` for every name in `fastgp.backends.NAMES`, so new
backends appear without edits here), then measurement (timers, copy bandwidth, launch counts), then the runner
that checks every provider against eager once before timing it, and the table / JSON / PNG writers.

Honesty rules kept here, once: every provider of a case gets the same inputs; a provider whose output does
not match eager is reported as ``wrong`` and never timed; a provider that cannot run says why (``skipped``);
GPU times come from CUDA events (`triton.testing.do_bench`: warm-up, L2 flushed before each repetition,
median of many), CPU times from `time.perf_counter` after a warm-up, median of many.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import importlib
import itertools
import json
import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import fastgp
from fastgp import reference

# `fastgp.backends` the attribute is the public function `backends()`, which shadows the module of that name.
backends = importlib.import_module("fastgp.backends")

# ----------------------------------------------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------------------------------------------

DTYPES: dict[str, torch.dtype] = {
    "fp64": torch.float64,
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
OPS = ("penalty", "interpolate", "normalize", "wgan_step", "r1")
# The ops fastgp fuses: each has a mandatory traffic (roofline), a torch.compile baseline and GPU targets.
FUSED_OPS = ("penalty", "interpolate", "normalize")
# Passes over the (B, d) tensor that no implementation can avoid. penalty fwd+bwd: read g (fwd), read g and
# write ∂P/∂g (bwd). interpolate (fwd): read real and fake, write x̂. normalize fwd+bwd: as the penalty.
PASSES = {"penalty": 3, "interpolate": 3, "normalize": 3}

TRAFFIC_TARGET_BYTES = 2**28  # "≥ 256 MB of traffic": the roofline target applies from here on
LAUNCH_BOUND_NUMEL = 2**20  # B·d at or under this is launch-bound
ROOFLINE_TARGET = 0.90
LAUNCH_BOUND_SPEEDUP = 3.0
PENALTY_LAUNCHES = 2
# Measured-win targets on (64, 3, 256, 256) fp32 for the penalty head, per norm.
MID_SHAPE = (64, 3, 256, 256)
MID_SPEEDUP = {"linf": 2.5, "l1": 1.5, "l2": 1.1}

ORD = {"l2": 2.0, "l1": 1.0, "linf": math.inf}


@dataclass(frozen=True)
class Case:
    """One benchmarked configuration.

    `shape` is the shape of the big tensor: ``g`` for penalty/normalize, ``real``/``fake`` for interpolate and
    the two discriminator steps. `variant` is the normalize mode (``gn``/``pgn``) or the critic (``dcgan``,
    ``mlp``) of a step; `width` the critic's width.
    """

    op: str
    shape: tuple[int, ...]
    dtype: str = "fp32"
    norm: str = "l2"
    variant: str = ""
    width: int = 0

    @property
    def id(self) -> str:
        """Stable name used by ``--cases``, pytest ids and the JSON, e.g. ``penalty/linf/bf16/64x3x32x32``."""
        dims = "x".join(map(str, self.shape))
        if self.op == "penalty":
            what = self.norm
        elif self.op == "normalize":
            what = f"{self.variant}-{self.norm}"
        elif self.op in ("wgan_step", "r1"):
            what = f"{self.variant}{self.width}"
        else:
            return f"{self.op}/{self.dtype}/{dims}"
        return f"{self.op}/{what}/{self.dtype}/{dims}"

    def __str__(self) -> str:
        return self.id

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def traffic_bytes(self) -> int | None:
        """Mandatory device-memory traffic of a fused op (None for the whole steps)."""
        if self.op not in PASSES:
            return None
        return PASSES[self.op] * self.numel * self.torch_dtype.itemsize

    @property
    def launch_bound(self) -> bool:
        return self.numel <= LAUNCH_BOUND_NUMEL


def default_device() -> torch.device:
    """`FASTGP_BENCH_DEVICE` if set, else CUDA when there is a device, else the CPU."""
    name = os.environ.get("FASTGP_BENCH_DEVICE", "").strip()
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def default_compile(device: torch.device | str, *, quick: bool = False) -> str:
    """The torch.compile policy: every case on CUDA, `COMPILE_SAMPLE` only on a CPU, none for --quick."""
    if quick:
        return "none"
    return "all" if torch.device(device).type == "cuda" else "one"


def default_cases(device: torch.device | str, *, quick: bool = False) -> list[Case]:
    """The case list for `device`: the full shapes on CUDA, small ones on the CPU, a tiny set for --quick.

    The big shapes run only on CUDA: on the CPU (2 shared cores in CI) they would take minutes per case and
    say nothing about the GPU kernels.
    """
    device = torch.device(device)
    norms = ("l2", "l1", "linf")
    if quick:
        small, tabular = (64, 3, 32, 32), (256, 2)
        return [
            *(Case("penalty", s, "fp32", n) for s in (small, tabular) for n in norms),
            Case("interpolate", small, "fp32"),
            *(Case("normalize", small, "fp32", "l2", m) for m in ("gn", "pgn")),
            Case("wgan_step", (256, 2), "fp32", variant="mlp", width=128),
            Case("r1", (256, 2), "fp32", variant="mlp", width=128),
        ]
    if device.type == "cuda":
        shapes = [(64, 3, 32, 32), MID_SHAPE, (256, 2), (8, 3, 1024, 1024)]
        dtypes = ("fp32", "bf16", "fp16")
        dcgan, mlp = 128, 512
    else:
        shapes = [(64, 3, 32, 32), (256, 2)]
        dtypes = ("fp32", "bf16")
        dcgan, mlp = 16, 128
    return [
        *(Case("penalty", s, d, n) for s in shapes for n in norms for d in dtypes),
        *(Case("interpolate", s, d) for s in shapes for d in dtypes),
        *(Case("normalize", s, d, "l2", m) for s in shapes for m in ("gn", "pgn") for d in dtypes),
        Case("wgan_step", (64, 3, 32, 32), "fp32", variant="dcgan", width=dcgan),
        Case("wgan_step", (256, 2), "fp32", variant="mlp", width=mlp),
        Case("r1", (64, 3, 32, 32), "fp32", variant="dcgan", width=dcgan),
        Case("r1", (256, 2), "fp32", variant="mlp", width=mlp),
    ]


def op_cases(op: str, device: torch.device | str | None = None) -> list[Case]:
    """The default cases of one op on `device` (`default_device()` when None): one pytest file's parameters."""
    return [c for c in default_cases(default_device() if device is None else device) if c.op == op]


def select_cases(cases: Iterable[Case], patterns: str | Sequence[str] | None) -> list[Case]:
    """Cases whose id matches any of the comma-separated `patterns` (a glob, or a substring of the id)."""
    if not patterns:
        return list(cases)
    if isinstance(patterns, str):
        patterns = [p.strip() for p in patterns.split(",") if p.strip()]
    return [c for c in cases if any(fnmatch.fnmatchcase(c.id, p) or p in c.id for p in patterns)]


# The one case whose torch.compile provider runs under compile="one": compiling takes 10-60 s per case on a
# CPU, so CPU runs compile this one and report the others as skipped.
COMPILE_SAMPLE = Case("penalty", (64, 3, 32, 32), "fp32", "l2")

# ----------------------------------------------------------------------------------------------------------------
# Baselines: eager PyTorch as a careful user writes it (torch.lerp, linalg.vector_norm with an fp32 accumulator),
# on top of the same `fastgp.reference` the tests use.
# ----------------------------------------------------------------------------------------------------------------


def eager_penalty(grad: Tensor, norm: str = "l2", constraint: str = "ls", center: float = 1.0,
                  weight: float = 10.0) -> Tensor:
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


def eager_wgan_gp(D: nn.Module, real: Tensor, fake: Tensor, alpha: Tensor | None = None,
                  weight: float = 10.0) -> Tensor:
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


# ----------------------------------------------------------------------------------------------------------------
# Providers
# ----------------------------------------------------------------------------------------------------------------


class Skip(Exception):
    """A provider that cannot run on this case here; the message says why."""


@dataclass
class Prepared:
    """A provider ready to time: `run` is one timed call; `check` returns an error message or None."""

    run: Callable[[], Any]
    check: Callable[[], str | None]


def backend_names() -> tuple[str, ...]:
    """The fastgp backends known to this install (`fastgp.backends.NAMES`), in its order."""
    return tuple(backends.NAMES)


def provider_names(op: str) -> list[str]:
    """The providers of `op`, baseline first; whether each can run is decided per case and device."""
    fused = [f"fastgp-{b}" for b in backend_names()]
    if op in FUSED_OPS:
        return ["eager", "compile", *fused]
    if op == "wgan_step":
        return ["eager", *fused]
    if op == "r1":
        return ["eager", "eager-shared", *fused, *(f"{p}-shared" for p in fused)]
    raise ValueError(f"unknown op {op!r}")


def backend_of(provider: str) -> str | None:
    """``fastgp-triton-shared`` -> ``triton``; None for the eager/compile baselines."""
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
        backends.select(name, device)
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


def _prepare_penalty(case: Case, provider: str, device: torch.device) -> Prepared:
    gen = _generator(device, case)
    g = _randn(case.shape, case.torch_dtype, device, gen).requires_grad_(True)
    kw = {"norm": case.norm, "constraint": "ls", "center": 1.0, "weight": 10.0}

    if provider == "eager":
        head = eager_penalty
    elif provider == "compile":
        head = _compiled(eager_penalty)
    else:
        backend = backend_of(provider)

        def head(grad: Tensor, **k: Any) -> Tensor:
            return fastgp.penalty_from_grad(grad, backend=backend, **k)

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

    if provider == "eager":
        interp = eager_interpolate
    elif provider == "compile":
        interp = _compiled(eager_interpolate)
    else:
        backend = backend_of(provider)

        def interp(r: Tensor, f: Tensor) -> tuple[Tensor, Tensor]:
            return fastgp.interpolate(r, f, backend=backend, return_alpha=True)

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

    if provider == "eager":
        fn = eager_normalize
    elif provider == "compile":
        fn = _compiled(eager_normalize)
    else:
        backend = backend_of(provider)

        def fn(f: Tensor, grad: Tensor, m: str, n: str) -> Tensor:
            return fastgp.normalize(f, grad, mode=m, norm=n, backend=backend)

    def fwd_bwd(f_fn: Callable[..., Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        out = f_fn(scores, g, mode, norm)
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

    @_no_tf32()
    def check() -> str | None:
        if backend is None:
            return None  # the eager step is the reference
        mine, want = copy.deepcopy(base), copy.deepcopy(base)
        penalty, details = fastgp.gradient_penalty(mine, real, fake, preset="wgan-gp", backend=backend,
                                                   return_details=True)
        penalty.backward()
        expected = eager_wgan_gp(want, real, fake, details.alpha)
        expected.backward()
        return _compare_step(penalty, mine, expected, want, case.dtype)

    return Prepared(run, check)


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


_PREPARE = {
    "penalty": _prepare_penalty,
    "interpolate": _prepare_interpolate,
    "normalize": _prepare_normalize,
    "wgan_step": _prepare_wgan_step,
    "r1": _prepare_r1,
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
    return _PREPARE[case.op](case, provider, device)


# ----------------------------------------------------------------------------------------------------------------
# Measurement
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    """Median and spread of repeated runs, in milliseconds; `timer` says how they were taken."""

    median_ms: float
    p20_ms: float
    p80_ms: float
    reps: int
    timer: str


def _summary(times_ms: Sequence[float], timer: str) -> Timing:
    qs = statistics.quantiles(times_ms, n=10, method="inclusive") if len(times_ms) > 1 else [times_ms[0]] * 9
    return Timing(statistics.median(times_ms), qs[1], qs[7], len(times_ms), timer)


def _measure_cpu(fn: Callable[[], Any], warmup_ms: float, rep_ms: float, min_reps: int = 5,
                 max_reps: int = 10_000) -> Timing:
    fn()
    stop = time.perf_counter() + warmup_ms / 1e3
    while time.perf_counter() < stop:
        fn()
    times: list[float] = []
    stop = time.perf_counter() + rep_ms / 1e3
    while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() < stop):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return _summary(times, "cpu perf_counter, median")


def _measure_cuda_events(fn: Callable[[], Any], warmup_ms: float, rep_ms: float) -> Timing:
    """`triton.testing.do_bench`'s method, for installs without Triton: events, L2 flushed before each run."""
    flush = torch.empty(256 * 2**20, dtype=torch.int8, device="cuda")
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        flush.zero_()
        fn()
    end.record()
    torch.cuda.synchronize()
    estimate = max(start.elapsed_time(end) / 5, 1e-3)
    for _ in range(max(1, int(warmup_ms / estimate))):
        fn()
    n = max(10, int(rep_ms / estimate))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for s, e in zip(starts, ends, strict=True):
        flush.zero_()
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()  # events are read only after the device has finished them
    return _summary([s.elapsed_time(e) for s, e in zip(starts, ends, strict=True)], "cuda events, median")


def measure(fn: Callable[[], Any], device: torch.device | str, *, warmup_ms: float = 25.0,
            rep_ms: float = 100.0) -> Timing:
    """Median time of `fn` on `device`: CUDA events through `triton.testing.do_bench` (L2 flushed before each
    repetition) on CUDA, `time.perf_counter` on the CPU; warm-up first, then repetitions filling `rep_ms`."""
    device = torch.device(device)
    if device.type != "cuda":
        return _measure_cpu(fn, warmup_ms, rep_ms)
    try:
        from triton.testing import do_bench
    except ImportError:
        return _measure_cuda_events(fn, warmup_ms, rep_ms)
    times = do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="all")
    return _summary(times, "cuda events (triton.testing.do_bench), median")


def synchronize(device: torch.device | str) -> None:
    """Wait for `device` to finish, so that a host clock read next covers the work."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def copy_bandwidth(device: torch.device | str, *, rep_ms: float = 200.0) -> dict[str, Any]:
    """Measured copy bandwidth (bytes read + bytes written per second): the roofline of the fused ops.

    CUDA: a 1 GiB device-to-device copy, far larger than L2. CPU: a 64 MiB `copy_` with the threads
    torch uses; small CPU cases fit in cache and can exceed it.
    """
    device = torch.device(device)
    numel = (2**28 if device.type == "cuda" else 2**24)
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    timing = measure(lambda: dst.copy_(src), device, warmup_ms=50.0, rep_ms=rep_ms)
    nbytes = 2 * numel * src.element_size()
    what = (f"device-to-device copy of {numel * 4 // 2**20} MiB" if device.type == "cuda"
            else f"CPU torch copy_ of {numel * 4 // 2**20} MiB, torch threads: {torch.get_num_threads()}")
    return {"what": what, "bytes_per_s": nbytes / (timing.median_ms / 1e3), "median_ms": timing.median_ms}


def count_launches(fn: Callable[[], Any], device: torch.device | str) -> tuple[int, list[str]] | None:
    """GPU work items (kernels, memcpy, memset) one call of `fn` puts on the device, from torch.profiler.

    None on the CPU, where there are no launches to count.
    """
    if torch.device(device).type != "cuda":
        return None
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    names = [e.name for e in prof.events() if e.device_type == DeviceType.CUDA]
    return len(names), names


# ----------------------------------------------------------------------------------------------------------------
# Runner
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One provider on one case: status ``ok``, ``skipped``, ``wrong`` or ``error``, and what was measured."""

    case: str
    op: str
    provider: str
    status: str
    reason: str = ""
    shape: list[int] = field(default_factory=list)
    dtype: str = ""
    time_ms: float | None = None
    time_p20_ms: float | None = None
    time_p80_ms: float | None = None
    reps: int | None = None
    timer: str = ""
    host_ms: float | None = None
    traffic_bytes: int | None = None
    bytes_per_s: float | None = None
    roofline_fraction: float | None = None
    launches: int | None = None
    kernels: list[str] | None = None
    speedup_vs_eager: float | None = None
    speedup_vs_compile: float | None = None
    speedup_vs_eager_host: float | None = None
    saved_vs_eager: float | None = None
    targets: list[dict[str, Any]] = field(default_factory=list)


def check_provider(case: Case, provider: str, device: torch.device | str, *,
                   compile: str = "all") -> tuple[Row, Prepared | None]:
    """Build `provider` on `case` and check it against eager: the row (``ok`` or why not) and, if ``ok``, the
    prepared provider to time. A wrong provider is never timed."""
    device = torch.device(device)
    row = Row(case.id, case.op, provider, "ok", shape=list(case.shape), dtype=case.dtype,
              traffic_bytes=case.traffic_bytes)
    try:
        prepared = prepare(case, provider, device, compile=compile)
    except Skip as exc:
        row.status, row.reason = "skipped", str(exc)
        return row, None
    try:
        problem = prepared.check()
        synchronize(device)
    except Exception as exc:
        row.status, row.reason = "error", f"{type(exc).__name__}: {exc}"
        return row, None
    if problem is not None:
        row.status, row.reason = "wrong", problem
        return row, None
    return row, prepared


def _measure_cpu_interleaved(fns: dict[str, Callable[[], Any]], warmup_ms: float, rep_ms: float,
                             min_rounds: int = 5) -> dict[str, Timing]:
    """Round-robin over the providers, one call each per round: on a shared CPU, load that comes and goes then
    falls on every provider alike instead of on whichever happened to be timed at that moment."""
    for fn in fns.values():
        _measure_cpu(fn, warmup_ms / len(fns), 0.0, min_reps=1, max_reps=1)
    times: dict[str, list[float]] = {name: [] for name in fns}
    stop = time.perf_counter() + rep_ms * len(fns) / 1e3
    rounds = 0
    while rounds < min_rounds or (time.perf_counter() < stop and rounds < 10_000):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1e3)
        rounds += 1
    return {name: _summary(t, "cpu perf_counter, interleaved rounds, median") for name, t in times.items()}


def time_providers(case: Case, ready: dict[str, Prepared], rows: dict[str, Row], device: torch.device | str, *,
                   roofline: float | None = None, warmup_ms: float = 25.0, rep_ms: float = 100.0) -> None:
    """Time the checked providers of one case into their rows; on CUDA also the host time and the launches."""
    device = torch.device(device)
    if not ready:
        return
    if device.type == "cuda":
        timings = {name: measure(p.run, device, warmup_ms=warmup_ms, rep_ms=rep_ms) for name, p in ready.items()}
    else:
        timings = _measure_cpu_interleaved({name: p.run for name, p in ready.items()}, warmup_ms, rep_ms)
    for name, prepared in ready.items():
        row, timing = rows[name], timings[name]
        row.time_ms, row.time_p20_ms, row.time_p80_ms = timing.median_ms, timing.p20_ms, timing.p80_ms
        row.reps, row.timer = timing.reps, timing.timer
        if case.traffic_bytes is not None:
            row.bytes_per_s = case.traffic_bytes / (timing.median_ms / 1e3)
            if roofline:
                row.roofline_fraction = row.bytes_per_s / roofline
        if device.type != "cuda":
            continue
        # Events time the device; do_bench's L2 flush before each run also lets the host queue launches ahead,
        # hiding launch overhead. The wall clock per call (with a synchronize) is what a launch-bound loop sees.
        def synced(run: Callable[[], Any] = prepared.run) -> None:
            run()
            torch.cuda.synchronize()

        row.host_ms = _measure_cpu(synced, warmup_ms, rep_ms).median_ms
        launches = count_launches(prepared.run, device)
        if launches is not None:
            row.launches, row.kernels = launches


def run_provider(case: Case, provider: str, device: torch.device | str, *, compile: str = "all",
                 roofline: float | None = None, warmup_ms: float = 25.0, rep_ms: float = 100.0) -> Row:
    """Check one provider against eager on `case`, then time it (alone; `run` interleaves a case's providers)."""
    row, prepared = check_provider(case, provider, device, compile=compile)
    if prepared is not None:
        time_providers(case, {provider: prepared}, {provider: row}, device, roofline=roofline,
                       warmup_ms=warmup_ms, rep_ms=rep_ms)
    return row


def _target(name: str, want: str, got: float | int | None, ok: bool | None) -> dict[str, Any]:
    return {"name": name, "want": want, "got": got, "pass": ok}


def evaluate_targets(case: Case, row: Row, device: torch.device) -> list[dict[str, Any]]:
    """The GPU targets for a fused provider's row (recorded, never asserted)."""
    if row.status != "ok" or not is_fused(row.provider) or row.provider.endswith("-shared"):
        return []
    out = []
    evaluated = device.type == "cuda"

    def add(name: str, want: str, got: float | int | None, ok: bool) -> None:
        out.append(_target(name, want, got, ok if evaluated and got is not None else None))

    if case.traffic_bytes is not None and case.traffic_bytes >= TRAFFIC_TARGET_BYTES:
        frac = row.roofline_fraction
        ok = frac is not None and frac >= ROOFLINE_TARGET
        add("roofline", f">= {ROOFLINE_TARGET:.0%} of copy bandwidth", frac, ok)
    if case.op == "penalty":
        add("launches", f"== {PENALTY_LAUNCHES}", row.launches, row.launches == PENALTY_LAUNCHES)
        if case.launch_bound:
            s = row.speedup_vs_eager
            add("launch-bound speed-up", f">= {LAUNCH_BOUND_SPEEDUP}x eager", s,
                s is not None and s >= LAUNCH_BOUND_SPEEDUP)
        if case.shape == MID_SHAPE and case.dtype == "fp32":
            s, want = row.speedup_vs_eager, MID_SPEEDUP[case.norm]
            add(f"{case.norm} speed-up on {'x'.join(map(str, MID_SHAPE))} fp32", f">= {want}x eager", s,
                s is not None and s >= want)
    add("not slower than eager", ">= 1x eager", row.speedup_vs_eager,
        row.speedup_vs_eager is not None and row.speedup_vs_eager >= 1.0)
    if row.speedup_vs_compile is not None:
        add("not slower than compile", ">= 1x compile", row.speedup_vs_compile, row.speedup_vs_compile >= 1.0)
    return out


def finish_case(case: Case, rows: list[Row], device: torch.device | str) -> list[Row]:
    """Fill in the speed-ups against the case's eager and compile rows, and the targets."""
    device = torch.device(device)
    by_name = {r.provider: r for r in rows if r.status == "ok"}
    eager, compiled = by_name.get("eager"), by_name.get("compile")
    for row in rows:
        if row.status != "ok" or row.time_ms is None:
            continue
        if eager is not None:
            row.speedup_vs_eager = eager.time_ms / row.time_ms
            row.saved_vs_eager = 1.0 - row.time_ms / eager.time_ms
        if compiled is not None:
            row.speedup_vs_compile = compiled.time_ms / row.time_ms
        if eager is not None and eager.host_ms is not None and row.host_ms is not None:
            row.speedup_vs_eager_host = eager.host_ms / row.host_ms
        row.targets = evaluate_targets(case, row, device)
    return rows


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device | str) -> dict[str, Any]:
    """What the numbers were measured on: device name, versions, date, backends."""
    device = torch.device(device)
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU: {cpu_name()}",
        "cpu": cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "fastgp": fastgp.__version__,
        "git_commit": commit,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "backends": {s.name: {"available": s.available, "detail": s.detail} for s in fastgp.backends().values()},
    }


def run(
    cases: Sequence[Case],
    device: torch.device | str,
    *,
    compile: str = "all",
    providers: Sequence[str] | None = None,
    warmup_ms: float = 25.0,
    rep_ms: float = 100.0,
    progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None,
    quick: bool = False,
) -> dict[str, Any]:
    """Run every case × provider on `device`; returns the JSON-ready results (environment, roofline, rows).

    `providers` keeps only those names; `progress` wraps the (case, provider) iterator (a tqdm bar).
    """
    device = torch.device(device)
    env = environment(device)
    bandwidth = copy_bandwidth(device)
    todo = [(c, p) for c in cases for p in provider_names(c.op) if providers is None or p in providers]
    rows: dict[Case, list[Row]] = {c: [] for c in cases}
    # Check every provider of a case first, then time them together (interleaved on a CPU); the progress bar
    # advances as providers are checked.
    for case, group in itertools.groupby(progress(todo) if progress else todo, key=lambda item: item[0]):
        ready: dict[str, Prepared] = {}
        for _, provider in group:
            row, prepared = check_provider(case, provider, device, compile=compile)
            rows[case].append(row)
            if prepared is not None:
                ready[provider] = prepared
        time_providers(case, ready, {r.provider: r for r in rows[case]}, device, roofline=bandwidth["bytes_per_s"],
                       warmup_ms=warmup_ms, rep_ms=rep_ms)
        del ready
        if device.type == "cuda":
            torch.cuda.empty_cache()
    out = [r for c in cases for r in finish_case(c, rows[c], device)]
    return {
        "schema": 1,
        "environment": env,
        "settings": {"quick": quick, "compile": compile, "compile_mode": "default, dynamic=False",
                     "warmup_ms": warmup_ms, "rep_ms": rep_ms},
        "roofline": bandwidth,
        "targets_evaluated": device.type == "cuda",
        "rows": [asdict(r) for r in out],
    }


# ----------------------------------------------------------------------------------------------------------------
# Output: table, JSON, PNG
# ----------------------------------------------------------------------------------------------------------------

TABLE_COLUMNS = ("case", "provider", "median ms", "host ms", "× eager", "× compile", "saved", "GB/s", "% roofline",
                 "launches", "targets / note")


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def _targets_text(row: dict[str, Any], evaluated: bool) -> str:
    targets = row.get("targets") or []
    if not targets:
        return ""
    if not evaluated:
        return "GPU targets n/a"
    failed = [t["name"] for t in targets if t["pass"] is False]
    met = sum(t["pass"] is True for t in targets)
    text = f"{met}/{len(targets)} met"
    return text + (f"; missed: {', '.join(failed)}" if failed else "")


def table_columns(results: dict[str, Any]) -> list[str]:
    """`TABLE_COLUMNS`, less ``host ms`` on a CPU run (where it would repeat ``median ms``)."""
    cuda = results["environment"]["device"] == "cuda"
    return [c for c in TABLE_COLUMNS if cuda or c != "host ms"]


def table_rows(results: dict[str, Any]) -> list[list[str]]:
    """The table of `table_columns` as strings, one row per case × provider that ran (or ran wrong)."""
    cuda = results["environment"]["device"] == "cuda"
    evaluated = results.get("targets_evaluated", False)
    out = []
    for r in results["rows"]:
        if r["status"] == "skipped":
            continue
        if r["status"] != "ok":
            out.append([r["case"], r["provider"], r["status"].upper(), "", "", "", "", "", "", "", r["reason"]])
            continue
        saved = r["saved_vs_eager"]
        out.append([
            r["case"], r["provider"], _fmt(r["time_ms"], ".4g"), _fmt(r.get("host_ms"), ".4g"),
            _fmt(r["speedup_vs_eager"], ".2f", "×"), _fmt(r["speedup_vs_compile"], ".2f", "×"),
            "—" if saved is None or r["provider"] == "eager" else f"{saved:+.0%}",
            _fmt(None if r["bytes_per_s"] is None else r["bytes_per_s"] / 1e9, ".1f"),
            _fmt(None if r["roofline_fraction"] is None else 100 * r["roofline_fraction"], ".0f", "%"),
            _fmt(r["launches"], "d") if cuda else "n/a",
            _targets_text(r, evaluated),
        ])  # fmt: skip
    if not cuda:
        out = [r[:3] + r[4:] for r in out]
    return out


def skipped_lines(results: dict[str, Any]) -> list[str]:
    """One line per (provider, reason) that skipped cases, with how many: the reasons, without repeating them."""
    counts: dict[tuple[str, str], int] = {}
    for r in results["rows"]:
        if r["status"] == "skipped":
            key = (r["provider"], r["reason"])
            counts[key] = counts.get(key, 0) + 1
    return [f"{prov} skipped on {n} case{'s' if n > 1 else ''}: {reason}" for (prov, reason), n in counts.items()]


def header_lines(results: dict[str, Any]) -> list[str]:
    """What the numbers are: device, versions, date, the roofline used."""
    env, roof = results["environment"], results["roofline"]
    versions = f"torch {env['torch']}, triton {env['triton'] or '—'}, CUDA {env['cuda'] or '—'}"
    lines = [f"{env['device_name']} | {versions} | fastgp {env['fastgp']} ({env.get('git_commit') or '?'}) | "
             f"{env['date']}"]
    lines.append(f"roofline: {roof['what']}: {roof['bytes_per_s'] / 1e9:.1f} GB/s (read + write)")
    if env["device"] != "cuda":
        lines.append("CPU run: times are CPU times; fused GPU backends are skipped; launches and GPU targets n/a; "
                     "'% roofline' is of the CPU copy bandwidth, and cases that fit in cache can exceed 100%.")
    if env["device"] == "cuda":
        lines.append("median ms: CUDA events (do_bench, L2 flushed); host ms: wall clock per call with a synchronize.")
    lines.append("speed-ups are eager time / provider time (higher is better); saved = 1 - provider / eager.")
    return lines


def format_table(results: dict[str, Any]) -> str:
    """A fixed-width text table for the terminal, then the skipped providers and why."""
    rows, columns = table_rows(results), table_columns(results)
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(columns)]
    line = "  ".join(h.ljust(w) for h, w in zip(columns, widths, strict=True))
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    skipped = skipped_lines(results)
    return "\n".join([*header_lines(results), "", line.rstrip(), "-" * len(line.rstrip()), *body,
                      *([""] if skipped else []), *skipped])


def format_markdown(results: dict[str, Any], *, ops: Sequence[str] | None = None) -> str:
    """The results as a Markdown table (for the README), headed by what they were measured on."""
    keep = dict(results)
    if ops:
        keep["rows"] = [r for r in results["rows"] if r["op"] in ops]
    rows, columns = table_rows(keep), table_columns(keep)
    head = "| " + " | ".join(columns) + " |"
    rule = "|" + "|".join(" --- " if i < 2 or i == len(columns) - 1 else " ---: " for i in range(len(columns))) + "|"
    body = ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    intro = [f"{line}  " for line in header_lines(results)]
    skipped = [f"- {line}" for line in skipped_lines(keep)]
    return "\n".join([*intro, "", head, rule, *body, *([""] if skipped else []), *skipped]) + "\n"


def merge(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One results dict from several runs on the same device (a GPU run split by ``--cases`` to fit a time
    limit); the first run's environment and roofline head the table."""
    names = {p["environment"]["device_name"] for p in parts}
    if len(names) > 1:
        raise ValueError(f"results from different devices cannot share a table: {sorted(names)}")
    return {**parts[0], "rows": [r for p in parts for r in p["rows"]]}


def output_stem(results: dict[str, Any]) -> str:
    """``bench-<device>-<date>``, e.g. ``bench-nvidia-h100-80gb-hbm3-20261123T170005``, for the JSON and PNG."""
    env = results["environment"]
    name = env["device_name"] if env["device"] == "cuda" else "cpu"
    slug = "".join(ch if ch.isalnum() else "-" for ch in name.lower()).strip("-")
    while "--" in slug:
        slug = slug.replace("--", "-")
    stamp = env["date"].replace("-", "").replace(":", "")[:15]  # to the second: split runs must not collide
    return f"bench-{slug}-{stamp}" + ("-quick" if results["settings"].get("quick") else "")


def write_json(results: dict[str, Any], path: Path) -> Path:
    """Write `results` as indented JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")
    return path


def plot(results: dict[str, Any], path: Path) -> Path:
    """A horizontal bar chart of each provider's speed-up over eager, one group of bars per case."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results["rows"] if r["status"] == "ok" and r["speedup_vs_eager"] is not None]
    cases = list(dict.fromkeys(r["case"] for r in rows))
    provs = list(dict.fromkeys(r["provider"] for r in rows))
    height = 1.0 / (len(provs) + 1)
    fig, ax = plt.subplots(figsize=(9, 1.0 + 0.12 * len(rows) + 0.15 * len(cases)))
    for j, prov in enumerate(provs):
        ys, xs = [], []
        for i, case in enumerate(cases):
            for r in rows:
                if r["case"] == case and r["provider"] == prov:
                    ys.append(i + j * height)
                    xs.append(r["speedup_vs_eager"])
        ax.barh(ys, xs, height=height, label=prov)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks([i + height * (len(provs) - 1) / 2 for i in range(len(cases))], cases, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("speed-up over eager (higher is better)")
    env = results["environment"]
    ax.set_title(f"fastgp bench — {env['device_name']}, torch {env['torch']}", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
