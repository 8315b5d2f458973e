"""Host time: what a call costs the CPU, fastgp against the eager code it replaces, and the goals.

On launch-bound sizes a GPU finishes each kernel before the CPU has issued the next, so a training step
costs what its host side costs: Python, autograd, allocations, argument binding and the launches. This
mode times that host side, as CPU time of the process per call (`time.process_time_ns`, every thread:
CUDA's backward runs on autograd's device thread), never waiting for the device inside the timing.

Without a GPU, the Triton backend runs on host-only launches (`fastgp._hosttime`, enabled before
`fastgp.ops` is imported): Triton's real binder, specialisation and cache lookup for sm_90, the driver
call itself skipped; their outputs are never written, so those rows are not checked against eager.
Eager PyTorch runs on tiny CPU tensors, where its kernels cost little next to its dispatch.

Goals (host time as a ratio, same machine, same run): `penalty_from_grad` and `normalize` forward +
backward ≤ 0.5× eager, `interpolate` ≤ 2× (eager also pays two launches on a GPU), interpolate +
penalty forward + backward ≤ 0.7×, `gradient_penalty(D, real, fake)` overhead beyond D's own forward
and backward ≤ the hand-written version's; and on the CPU reference path a whole WGAN-GP D step ≤ 1.02×
the hand-written step (an MLP critic as in ``fastgp demo``, a small conv critic).

Beside the penalty's and the normalisation's rows, an ``autograd-floor`` row times a Python
`torch.autograd.Function` that computes nothing, with the same inputs and output: what any op
launched from Python costs before it does anything, so the distance of a goal from it is visible.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from fastgp import _hosttime
from fastgp.bench.cases import Case
from fastgp.bench.measure import HOST_TIMER, measure_host, summary, synchronize
from fastgp.bench.providers import Prepared, Skip, backend_of, backend_skip_reason, build, provider_names
from fastgp.bench.runner import environment


@dataclass(frozen=True)
class Goal:
    """`case`, timed on the run's device (on the CPU when `cpu`: the reference path's D steps): its fastgp
    rows of `backends` must cost the host at most `ratio` × the eager row (for ``gradient_penalty``, the
    overhead beyond the critic's own forward and backward, against eager's)."""

    name: str
    case: Case
    ratio: float
    backends: tuple[str, ...]
    cpu: bool = False


SMALL = (16, 3, 8, 8)
FUSED = ("triton", "cuda")
GOALS = (
    Goal("penalty_from_grad fwd+bwd", Case("penalty", SMALL), 0.5, FUSED),
    Goal("normalize fwd+bwd", Case("normalize", SMALL, variant="gn"), 0.5, FUSED),
    Goal("interpolate", Case("interpolate", SMALL), 2.0, FUSED),
    Goal("interpolate + penalty fwd+bwd", Case("head", SMALL), 0.7, FUSED),
    Goal("gradient_penalty overhead", Case("gradient_penalty", (64, 2), variant="mlp", width=32), 1.0, FUSED),
    Goal("D step, MLP critic", Case("wgan_step", (256, 2), variant="mlp", width=128), 1.02, ("torch",), cpu=True),
    Goal(
        "D step, conv critic", Case("wgan_step", (16, 3, 32, 32), variant="dcgan", width=8), 1.02, ("torch",), cpu=True
    ),
)


FLOOR = "autograd-floor"
_FLOOR_NOTE = "a Python autograd.Function that computes nothing: the least a Python-launched op costs"


class _Nothing(torch.autograd.Function):
    """The cheapest differentiable op written in Python: it saves its inputs and allocates its
    output and gradients, as any fused op must, and computes nothing. One input (a penalty's
    gradient) gives a 0-d output; two (a normalisation's scores and gradient), the first's shape."""

    @staticmethod
    def forward(ctx: Any, first: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(first, *rest)
        return first.new_empty(first.shape if rest else ())

    @staticmethod
    def backward(ctx: Any, _: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(torch.empty_like(t) for t in ctx.saved_tensors)


def _floor(case: Case, device: torch.device) -> Callable[[], Any] | None:
    """The `FLOOR` row of a penalty's or a normalisation's goal: `_Nothing` in the op's place,
    forward and backward. No fused op launched from Python can cost the host less."""
    g = torch.randn(case.shape, device=device, requires_grad=True)
    if case.op == "penalty":
        return lambda: torch.autograd.grad(_Nothing.apply(g), g)
    if case.op == "normalize":
        f = torch.randn(case.shape[0], device=device, requires_grad=True)
        upstream = torch.randn(case.shape[0], device=device)
        return lambda: torch.autograd.grad(_Nothing.apply(f, g), (f, g), upstream)
    return None


def host_only_reason(name: str, device: torch.device) -> str | None:
    """Why backend `name`'s host time cannot be taken on `device` tensors here, or None if it can."""
    if name != "triton" or device.type == "cuda":
        return backend_skip_reason(name, device)
    if _hosttime.enabled():
        return None
    return f"triton on {device.type} tensors: its host time needs host-only launches (fastgp bench --host)"


@dataclass
class HostRow:
    """One provider on one goal's case: host µs per call, its ratio to eager, and the goal's verdict."""

    goal: str
    case: str
    op: str
    device: str
    provider: str
    status: str
    reason: str = ""
    host_us: float | None = None
    host_p20_us: float | None = None
    host_p80_us: float | None = None
    reps: int | None = None
    overhead_us: float | None = None
    ratio_vs_eager: float | None = None
    want: str = ""
    met: bool | None = None


def _prepare_row(goal: Goal, provider: str, device: torch.device) -> tuple[HostRow, Prepared | None]:
    row = HostRow(goal.name, goal.case.id, goal.case.op, device.type, provider, "ok")
    name = backend_of(provider)
    try:
        reason = None if name is None else host_only_reason(name, device)
        if reason is not None:
            raise Skip(reason)
        prepared = build(goal.case, provider, device)
        host_only = device.type != "cuda" and name not in (None, "torch")
        problem = None if host_only else prepared.check()
        synchronize(device)
    except Skip as exc:
        row.status, row.reason = "skipped", str(exc)
        return row, None
    except Exception as exc:
        row.status, row.reason = "error", f"{type(exc).__name__}: {exc}"
        return row, None
    if problem is not None:
        row.status, row.reason = "wrong", problem
        return row, None
    if host_only:
        row.reason = "host-only launches: outputs not computed, not checked"
    return row, prepared


def run_goal(
    goal: Goal, device: torch.device, *, warmup_ms: float = 50.0, rep_ms: float = 200.0, min_rounds: int = 5
) -> list[HostRow]:
    """Check and time every provider of `goal`'s case, then judge its fastgp rows against the goal."""
    device = torch.device("cpu") if goal.cpu else device
    # The reference path's steps: eager and the backend the goal is about, nothing the CPU would only pretend.
    providers = [p for p in provider_names(goal.case.op) if p != "compile"]
    if goal.cpu:
        providers = [p for p in providers if backend_of(p) in (None, *goal.backends)]
    rows, ready = [], {}
    for provider in providers:
        row, prepared = _prepare_row(goal, provider, device)
        rows.append(row)
        if prepared is not None:
            ready[provider] = prepared.run
    floor = None if goal.cpu else _floor(goal.case, device)
    if floor is not None:
        rows.append(HostRow(goal.name, goal.case.id, goal.case.op, device.type, FLOOR, "ok", _FLOOR_NOTE))
        ready[FLOOR] = floor
    if ready:
        samples = measure_host(ready, device, warmup_ms=warmup_ms, rep_ms=rep_ms, min_rounds=min_rounds)
        for row in rows:
            if row.provider in samples:
                t = summary(samples[row.provider], HOST_TIMER)
                row.host_us, row.host_p20_us, row.host_p80_us = t.median_ms * 1e3, t.p20_ms * 1e3, t.p80_ms * 1e3
                row.reps = t.reps
        _judge(goal, rows, samples)
    return rows


def _judge(goal: Goal, rows: Sequence[HostRow], samples: dict[str, list[float]]) -> None:
    """Ratios from the rounds' paired samples: on a shared machine, load that comes and goes then moves
    the numerator and the denominator of each round alike."""
    if "eager" not in samples:
        return
    critic = samples.get("critic")
    if critic is None:
        base, what = None, "eager's host time"
    else:
        base, what = _median_overhead(samples["eager"], critic), "eager's overhead beyond the critic"
    for row in rows:
        if row.provider not in samples or row.provider == "critic":
            continue
        mine = samples[row.provider]
        if critic is None:
            row.ratio_vs_eager = statistics.median(a / b for a, b in zip(mine, samples["eager"], strict=True) if b > 0)
        else:
            row.overhead_us = _median_overhead(mine, critic) * 1e3
            row.ratio_vs_eager = row.overhead_us / (base * 1e3) if base > 0 else None
        if backend_of(row.provider) in goal.backends:
            row.want = f"<= {goal.ratio:g}x {what}"
            row.met = row.ratio_vs_eager is not None and row.ratio_vs_eager <= goal.ratio


def _median_overhead(times: Sequence[float], critic: Sequence[float]) -> float:
    return statistics.median(a - b for a, b in zip(times, critic, strict=True))


def run(
    device: torch.device | str,
    *,
    goals: Sequence[Goal] = GOALS,
    warmup_ms: float = 50.0,
    rep_ms: float = 200.0,
    min_rounds: int = 5,
    quick: bool = False,
) -> dict[str, Any]:
    """Every goal on `device` (the D steps on the CPU): the JSON-ready host-time results.

    Denormals are flushed to zero meanwhile: the outputs of host-only launches are whatever memory held,
    often denormal floats, on which the CPU kernels of the critic downstream would take slow paths.
    """
    device = torch.device(device)
    flush = torch.set_flush_denormal(True)
    try:
        rows = [
            r for g in goals for r in run_goal(g, device, warmup_ms=warmup_ms, rep_ms=rep_ms, min_rounds=min_rounds)
        ]
    finally:
        if flush:
            torch.set_flush_denormal(False)
    return {
        "schema": 1,
        "mode": "host",
        "environment": environment(device),
        "settings": {
            "quick": quick,
            "warmup_ms": warmup_ms,
            "rep_ms": rep_ms,
            "min_rounds": min_rounds,
            "host_only_launches": _hosttime.enabled(),
            "torch_threads": torch.get_num_threads(),
            "flush_denormal": flush,
        },
        "rows": [asdict(r) for r in rows],
    }
