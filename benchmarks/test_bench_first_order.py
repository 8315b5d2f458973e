"""A discriminator step without a double backward: R1 by the exact double backward, R1 by ``method="fd"`` and the
approximated R1 (``preset="ar1"``), for a DCGAN critic and a small ViT critic, eager and with ``torch.compile(D)``
where the method allows it (the exact method does not: aot_autograd has no double backward).

    python -m pytest benchmarks/test_bench_first_order.py --benchmark-only --benchmark-json=first_order.json

Each step is the non-saturating D loss plus the penalty at the real batch, sharing D's forward there, one backward
and an Adam step. Both critics use smooth activations (SiLU, GELU) so that ``method="fd"`` accepts them; the ViT's
exact step runs SDPA's math kernel (the fused ones have no double backward), the others its default kernel. Every
case is checked before it is timed: ``fd`` against the exact gradient, a compiled critic against its eager run.
``extra_info`` holds the peak memory of one step (CUDA: ``max_memory_allocated``; CPU: the profiler's allocation
events). Shapes are small on a CPU (batch 16, 32x32); ``FASTGP_BENCH_SIZE=full`` gives batch 64 and wider critics.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

import fastgp

DEVICE = torch.device(os.environ.get("FASTGP_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu"))
FULL = os.environ.get("FASTGP_BENCH_SIZE") == "full"
BATCH = 64 if FULL else 16
ROUNDS_BUDGET_S = 2.0


def dcgan(width: int = 64 if FULL else 32) -> nn.Module:
    """The DCGAN critic for 32x32 images (Radford et al. 2016), SiLU where DCGAN has LeakyReLU."""
    return nn.Sequential(
        nn.Conv2d(3, width, 4, 2, 1),
        nn.SiLU(),
        nn.Conv2d(width, 2 * width, 4, 2, 1),
        nn.SiLU(),
        nn.Conv2d(2 * width, 4 * width, 4, 2, 1),
        nn.SiLU(),
        nn.Flatten(),
        nn.Linear(4 * width * 16, 1),
    )


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """A small ViT critic: 4x4 patches of a 32x32 image (64 tokens), pre-LN blocks, mean pooling."""

    def __init__(self, dim: int = 128 if FULL else 64, depth: int = 4 if FULL else 2, heads: int = 4) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, 4)
        self.pos = nn.Parameter(0.02 * torch.randn(1, 64, dim))
        self.blocks = nn.Sequential(*(Block(dim, heads) for _ in range(depth)))
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 1))

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.blocks(tokens).mean(dim=1)).squeeze(-1)


CRITICS: dict[str, Callable[[], nn.Module]] = {"dcgan": dcgan, "vit": ViT}
CASES = [
    ("exact", "eager"),
    ("fd", "eager"),
    ("ar1", "eager"),
    ("fd", "compile"),
    ("ar1", "compile"),
]


def d_step(D: nn.Module, real: Tensor, fake: Tensor, method: str, seed: int | None = None) -> Tensor:
    """The D loss and the penalty at the real batch, sharing D's forward there; returns the loss."""
    if method == "ar1":
        real_scores = D(real)
        penalty = fastgp.gradient_penalty(D, real, preset="ar1", scores=real_scores, seed=seed)
    else:
        penalty, det = fastgp.gradient_penalty(D, real, preset="r1", method=method, return_details=True)
        real_scores = det.scores
    loss = fastgp.losses.d_loss("ns", real_scores, D(fake)) + penalty
    loss.backward()
    return loss.detach()


def synchronize() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def peak_mib(fn: Callable[[], Any]) -> float:
    """Peak memory allocated while `fn` runs, above what was allocated before, in MiB."""
    if DEVICE.type == "cuda":
        synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # Ops carry the bytes they allocated net of what they freed; "[memory]" events are the frees that follow.
    changes = sorted(
        (e.time_range.start, e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage)
        for e in prof.events()
    )
    now = peak = 0
    for _, change in changes:
        now += change
        peak = max(peak, now)
    return peak / 2**20


def _grads(D: nn.Module) -> list[Tensor]:
    out = [p.grad.detach().clone() for p in D.parameters()]
    D.zero_grad(set_to_none=True)
    return out


def _rel(got: list[Tensor], want: list[Tensor]) -> float:
    num = sum(float((a.double() - b.double()).square().sum()) for a, b in zip(got, want, strict=True))
    return (num / sum(float(b.double().square().sum()) for b in want)) ** 0.5


def check(D: nn.Module, run: nn.Module, real: Tensor, fake: Tensor, method: str) -> None:
    """The timed critic gives the gradient it should: fd the exact one, a compiled critic its eager one."""
    with sdpa_kernel(SDPBackend.MATH):
        d_step(D, real, fake, "exact" if method == "fd" else method, seed=0)
    want = _grads(D)
    with sdpa_kernel(SDPBackend.MATH) if method == "exact" else contextlib.nullcontext():
        d_step(run, real, fake, method, seed=0)
    error = _rel(_grads(run), want)
    assert error < 1e-2, f"{method}: relative error {error:.1e} of the parameter gradient"


@pytest.mark.parametrize("method,mode", CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("critic", list(CRITICS))
def test_first_order(benchmark: Any, critic: str, method: str, mode: str) -> None:
    torch.manual_seed(0)
    D = CRITICS[critic]().to(DEVICE)
    run = torch.compile(copy.deepcopy(D), fullgraph=True) if mode == "compile" else copy.deepcopy(D)
    real = torch.randn(BATCH, 3, 32, 32, device=DEVICE)
    fake = torch.randn(BATCH, 3, 32, 32, device=DEVICE)
    check(D, run, real, fake, method)
    opt = torch.optim.Adam(run.parameters(), lr=1e-4, betas=(0.0, 0.99))

    def one_step() -> None:
        # The fused attention kernels have no double backward: the exact method runs on the math kernel.
        with sdpa_kernel(SDPBackend.MATH) if method == "exact" else contextlib.nullcontext():
            opt.zero_grad(set_to_none=True)
            d_step(run, real, fake, method)
            opt.step()
        synchronize()

    one_step()
    start = time.perf_counter()
    one_step()
    once = time.perf_counter() - start
    rounds = int(min(50, max(3, ROUNDS_BUDGET_S / once)))
    benchmark.pedantic(one_step, rounds=rounds, warmup_rounds=1, iterations=1)
    benchmark.extra_info.update(
        critic=critic,
        method=method,
        mode=mode,
        batch=BATCH,
        device=str(DEVICE),
        threads=torch.get_num_threads(),
        median_ms=benchmark.stats.stats.median * 1e3,
        peak_mib=peak_mib(one_step),
    )
