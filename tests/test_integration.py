"""fastgp inside real training loops: AMP, DDP, Lightning, lazy regularisation, a shared forward,
torch.compile, CUDA graphs, determinism, critics that cannot be differentiated twice, and the
examples. Every comparison is against the same step written by hand in eager PyTorch."""

from __future__ import annotations

import math
import os
import runpy
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastgp
from fastgp import training

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def one_thread():
    # The test machine's two cores are shared: OpenMP's spinning threads then make small ops ~100x
    # slower than one thread does.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def mlp(d: int = 6, dtype: torch.dtype = torch.float64) -> nn.Module:
    return nn.Sequential(nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, 16), nn.Softplus(), nn.Linear(16, 1)).to(dtype)


def conv(dtype: torch.dtype = torch.float64) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(4, 4, 3, stride=2), nn.Flatten(), nn.Linear(36, 1)
    ).to(dtype)


def param_grads(module: nn.Module) -> list[torch.Tensor]:
    return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in module.parameters()]


def assert_all_close(got: list[torch.Tensor], want: list[torch.Tensor], **tol: float) -> None:
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        torch.testing.assert_close(a, b, msg=lambda m, i=i: f"tensor {i}: {m}", **tol)


def hand_wgan_gp(D, real, fake, alpha, scaler=None, autocast=None):
    """WGAN-GP with PyTorch's AMP gradient-penalty recipe (docs: 'Gradient penalty' in AMP examples)."""
    a = alpha.view(-1, *([1] * (real.dim() - 1)))
    x_hat = (a * real + (1 - a) * fake).requires_grad_(True)
    with autocast or torch.autocast("cpu", enabled=False):
        out = D(x_hat)
    total = out.sum() if scaler is None else scaler.scale(out.sum())
    (g,) = torch.autograd.grad(total, x_hat, create_graph=True)
    if scaler is not None:
        g = g * (1.0 / scaler.get_scale())
    with autocast or torch.autocast("cpu", enabled=False):
        return 10 * ((g.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


# --- AMP -------------------------------------------------------------------------------------


def _amp_case(device: str, dtype: torch.dtype, use_scaler: bool):
    D = mlp(32, torch.float32).to(device)
    real, fake = torch.randn(16, 32, device=device), torch.randn(16, 32, device=device)
    autocast = torch.autocast(device, dtype=dtype)
    scaler = torch.amp.GradScaler(device, init_scale=2.0**12, enabled=use_scaler)
    scale = scaler.get_scale() if use_scaler else 1.0

    with autocast:
        P, det = fastgp.gradient_penalty(D, real, fake, scaler=scaler, return_details=True)
    scaler.scale(P).backward()
    ours = [g / scale for g in param_grads(D)]

    D.zero_grad()
    want = hand_wgan_gp(D, real, fake, det.alpha, scaler=scaler, autocast=autocast)
    scaler.scale(want).backward()
    recipe = [g / scale for g in param_grads(D)]

    D.zero_grad()
    fp32 = hand_wgan_gp(D, real, fake, det.alpha)
    fp32.backward()
    exact = param_grads(D)

    assert P.dtype == torch.float32 and torch.isfinite(P)
    torch.testing.assert_close(P, want.float(), rtol=1e-5, atol=1e-6)
    assert_all_close(ours, recipe, rtol=1e-4, atol=1e-6)
    # bf16 keeps 8 bits of mantissa, fp16 11: errors relative to the largest entry of each tensor.
    rel = 5e-2 if dtype == torch.bfloat16 else 1e-2
    torch.testing.assert_close(P, fp32, rtol=rel, atol=rel * fp32.item())
    for a, b in zip(ours, exact, strict=True):
        torch.testing.assert_close(a, b, rtol=rel, atol=rel * float(b.abs().max()))


@pytest.mark.parametrize("use_scaler", [True, False])
def test_amp_bf16_cpu_matches_fp32_and_the_recipe(use_scaler):
    _amp_case("cpu", torch.bfloat16, use_scaler)


@cuda
def test_amp_fp16_cuda_matches_fp32_and_the_recipe():
    _amp_case("cuda", torch.float16, True)


def test_scaler_is_unscaled_before_the_norm():
    """With scale s the raw input gradient is s·g: fastgp must penalise ‖g‖, not ‖s·g‖."""
    D = mlp()
    real = torch.randn(5, 6, dtype=torch.float64)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    P, det = fastgp.gradient_penalty(D, real, preset="r1", scaler=scaler, return_details=True)
    _, plain = fastgp.gradient_penalty(D, real, preset="r1", return_details=True)
    torch.testing.assert_close(det.norms, plain.norms, rtol=1e-12, atol=0)
    torch.testing.assert_close(P, 5 * (plain.norms**2).mean(), rtol=1e-12, atol=0)


def test_float16_gradients_of_1e3_do_not_overflow():
    """‖g‖ of 8192 entries of 1000 is 9.05e4 > 65504: accumulated in float16 it would be inf."""
    D = nn.Linear(8192, 1).half()
    with torch.no_grad():
        D.weight.fill_(1000.0)
    real, fake = torch.randn(3, 8192).half(), torch.randn(3, 8192).half()
    P, det = fastgp.gradient_penalty(D, real, fake, return_details=True)
    n = 1000 * math.sqrt(8192)
    assert P.dtype == torch.float32 and torch.isfinite(P)
    torch.testing.assert_close(det.norms, torch.full((3,), n), rtol=1e-3, atol=0)
    torch.testing.assert_close(P, torch.tensor(10 * (n - 1) ** 2), rtol=2e-3, atol=0)
    P.backward()
    assert torch.isfinite(D.weight.grad).all()


# --- DDP -------------------------------------------------------------------------------------


def _shards(rank: int, world: int):
    gen = torch.Generator().manual_seed(1234)
    real = torch.randn(8, 6, generator=gen, dtype=torch.float64)
    fake = torch.randn(8, 6, generator=gen, dtype=torch.float64)
    n = real.shape[0] // world
    return real, fake, real[rank * n : (rank + 1) * n], fake[rank * n : (rank + 1) * n]


def _ddp_steps(rank: int, world: int) -> dict[str, list[torch.Tensor]]:
    torch.manual_seed(0)
    D = mlp()
    ddp = nn.parallel.DistributedDataParallel(D)
    _, _, real, fake = _shards(rank, world)
    results = {}

    # WGAN-GP: loss and penalty on the local shard, one backward, DDP averages.
    loss = fastgp.losses.d_loss("wgan", ddp(real), ddp(fake))
    (loss + fastgp.gradient_penalty(ddp, real, fake, seed=100 + rank)).backward()
    results["wgan-gp"] = param_grads(D)

    # R1 sharing the forward of the loss (StyleGAN2's regularising step).
    D.zero_grad(set_to_none=True)
    scores, grad = fastgp.input_grad(ddp, real)
    loss = fastgp.losses.d_loss("ns", scores, ddp(fake))
    (loss + fastgp.penalty_from_grad(grad, center=0.0, weight=5.0)).backward()
    results["r1-shared"] = param_grads(D)

    # A penalty-only backward leaves the last bias without a gradient; adding 0·scores keeps
    # DDP's reducer from waiting for it forever (the next forward would raise).
    for _ in range(3):
        D.zero_grad(set_to_none=True)
        gp, det = fastgp.gradient_penalty(ddp, real, preset="r1", return_details=True)
        (gp + 0.0 * det.scores.sum()).backward()
    results["penalty-only"] = param_grads(D)
    return results


def _gloo_worker(rank: int, world: int, port: int, out: str, steps: Callable[[int, int], object]) -> None:
    import torch.distributed as dist

    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.save(steps(rank, world), f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_on_gloo(steps: Callable[[int, int], object], tmp_path: Path, world: int = 2) -> list:
    """What `steps(rank, world)` returns on each of `world` processes of a gloo group (skipped without gloo)."""
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    mp.spawn(_gloo_worker, args=(world, _free_port(), str(tmp_path), steps), nprocs=world, join=True)
    return [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(world)]


def test_ddp_matches_one_process_on_the_full_batch(tmp_path):
    """DDP averages the ranks' gradients; each rank's penalty is a mean over its equal shard, so the
    average is the full batch's gradient."""
    world = 2
    ranks = run_on_gloo(_ddp_steps, tmp_path, world)

    torch.manual_seed(0)
    D = mlp()
    real, fake, _, _ = _shards(0, world)
    shards = [_shards(r, world) for r in range(world)]
    x_hat = torch.cat([fastgp.interpolate(s[2], s[3], seed=100 + r) for r, s in enumerate(shards)])
    loss = fastgp.losses.d_loss("wgan", D(real), D(fake))
    (loss + fastgp.gradient_penalty(D, None, points=x_hat)).backward()
    want = {"wgan-gp": param_grads(D)}
    D.zero_grad(set_to_none=True)
    scores, grad = fastgp.input_grad(D, real)
    (fastgp.losses.d_loss("ns", scores, D(fake)) + fastgp.penalty_from_grad(grad, center=0.0, weight=5.0)).backward()
    want["r1-shared"] = param_grads(D)
    D.zero_grad(set_to_none=True)
    fastgp.gradient_penalty(D, real, preset="r1").backward()
    want["penalty-only"] = param_grads(D)
    assert D[-1].bias.grad is None  # the trap the 0·scores term is for

    for got in ranks:
        for case, grads in want.items():
            assert_all_close(got[case], grads, rtol=1e-9, atol=1e-12)


# --- Lightning -------------------------------------------------------------------------------


def test_lightning_example_trains(monkeypatch):
    pytest.importorskip("lightning")
    monkeypatch.syspath_prepend(str(EXAMPLES))
    example = runpy.run_path(str(EXAMPLES / "lightning_wgan_gp.py"))
    torch.manual_seed(0)
    before = [p.detach().clone() for p in example["WGANGP"]().D.parameters()]
    model = example["main"](["--steps", "5", "--batch-size", "4", "--n-critic", "2", "--accelerator", "cpu"])
    assert len(model.history["d_loss"]) == 5 and len(model.history["g_loss"]) == 2
    assert all(math.isfinite(v) and v > 0 for v in model.history["gp"])
    after = list(model.D.parameters())
    assert any(not torch.equal(a.cpu(), b) for a, b in zip(after, before, strict=True))


# --- Lazy regularisation ---------------------------------------------------------------------


def test_lazy_regularizer_gradient_is_k_times_the_penalty():
    k = 4
    lazy = fastgp.LazyRegularizer(every=k)
    D = mlp()
    batches = [torch.randn(5, 6, dtype=torch.float64) for _ in range(2 * k)]
    due = []
    for step, real in enumerate(batches):  # no optimiser step: the gradients accumulate
        due.append(lazy.due(step))
        if lazy.due(step):
            lazy(fastgp.gradient_penalty(D, real, preset="r1")).backward()
    lazy_total = param_grads(D)
    assert due == [True, False, False, False] * 2

    D.zero_grad(set_to_none=True)
    for real in batches[::k]:
        (k * fastgp.gradient_penalty(D, real, preset="r1")).backward()
    assert_all_close(lazy_total, param_grads(D), rtol=1e-12, atol=1e-15)

    # Same data every step: k steps of the lazy penalty give the gradient of k steps of the full one.
    D.zero_grad(set_to_none=True)
    for _ in range(k):
        fastgp.gradient_penalty(D, batches[0], preset="r1").backward()
    every_step = param_grads(D)
    D.zero_grad(set_to_none=True)
    for step in range(k):
        if lazy.due(step):
            lazy(fastgp.gradient_penalty(D, batches[0], preset="r1")).backward()
    assert_all_close(param_grads(D), every_step, rtol=1e-12, atol=1e-15)


def test_lazy_regularizer_arguments_and_adam_correction():
    lr, betas = fastgp.LazyRegularizer(every=16).adam_hparams(2e-3, (0.0, 0.99))
    c = 16 / 17  # StyleGAN2 training_loop.py: mb_ratio = reg_interval / (reg_interval + 1)
    assert lr == pytest.approx(2e-3 * c) and betas == pytest.approx((0.0, 0.99**c))
    assert fastgp.LazyRegularizer(every=1).due(7)
    for bad, err in ((0, ValueError), (-2, ValueError), (2.0, TypeError), (True, TypeError)):
        with pytest.raises(err, match="every"):
            fastgp.LazyRegularizer(every=bad)


# --- One forward for the loss and the penalty ------------------------------------------------


def test_r2_shares_the_forward_of_the_fake_scores():
    D = mlp()
    real, fake = torch.randn(6, 6, dtype=torch.float64), torch.randn(6, 6, dtype=torch.float64)
    fake_scores, grad = fastgp.input_grad(D, fake)
    loss = fastgp.losses.d_loss("ns", D(real), fake_scores) + fastgp.penalty_from_grad(grad, center=0.0, weight=5.0)
    loss.backward()
    shared = param_grads(D)
    D.zero_grad(set_to_none=True)
    two_pass = fastgp.losses.d_loss("ns", D(real), D(fake)) + fastgp.gradient_penalty(D, None, fake, preset="r2")
    two_pass.backward()
    assert_all_close(shared, param_grads(D), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("mode", ["gn", "pgn"])
def test_gn_shares_the_forward_and_reaches_the_generator(mode):
    """input_grad + normalize on one forward equals normalized(D) and GN written by hand, for D's
    parameters and for the generator (whose gradient only exists through the double backward)."""
    D, G = mlp(), nn.Linear(3, 6).double()
    z = torch.randn(7, 3, dtype=torch.float64)
    real = torch.randn(7, 6, dtype=torch.float64)

    def step(f_hat_of):
        D.zero_grad(set_to_none=True)
        G.zero_grad(set_to_none=True)
        f_real, f_fake = f_hat_of(torch.cat([real, G(z)])).chunk(2)
        fastgp.losses.d_loss("hinge", f_real, f_fake).backward()
        return param_grads(D) + param_grads(G)

    def shared(x):
        scores, grad = fastgp.input_grad(D, x)
        return fastgp.normalize(scores, grad, mode=mode)

    def by_hand(x):
        x = x if x.requires_grad else x.requires_grad_(True)
        f = D(x).squeeze(1)
        (g,) = torch.autograd.grad(f.sum(), x, create_graph=True)
        u, n = (f, g.norm(dim=1)) if mode == "gn" else (1 - f, (1 - g).norm(dim=1))
        return u / (n + u.abs())

    want = step(by_hand)
    assert want[-1].abs().sum() > 0
    assert_all_close(step(shared), want, rtol=1e-10, atol=1e-13)
    assert_all_close(step(fastgp.normalized(D, mode=mode)), want, rtol=1e-10, atol=1e-13)


# --- torch.compile ---------------------------------------------------------------------------


def test_penalty_and_normalize_compile_with_fullgraph():
    """The double backward stays eager (autograd.grad); what follows it compiles as one graph."""

    def head(scores, grad):
        return fastgp.penalty_from_grad(grad, center=0.0, weight=5.0) + fastgp.normalize(scores, grad).mean()

    compiled = torch.compile(head, fullgraph=True)
    D = mlp(dtype=torch.float32)
    real = torch.randn(8, 6)

    def step(fn):
        D.zero_grad(set_to_none=True)
        scores, grad = fastgp.input_grad(D, real)
        out = fn(scores, grad)
        out.backward()
        return out.detach(), param_grads(D)

    (eager, want), (got, grads) = step(head), step(compiled)
    torch.testing.assert_close(got, eager, rtol=1e-5, atol=1e-6)
    assert_all_close(grads, want, rtol=1e-4, atol=1e-6)


# --- CUDA graphs -----------------------------------------------------------------------------


@cuda
def test_cuda_graph_replay_draws_fresh_alpha():
    D = mlp(dtype=torch.float32).cuda()
    real, fake = torch.randn(16, 6, device="cuda"), torch.randn(16, 6, device="cuda")

    def d_step():
        loss = fastgp.losses.d_loss("wgan", D(real), D(fake))
        gp, det = fastgp.gradient_penalty(D, real, fake, return_details=True)
        (loss + gp).backward()
        return gp, det.alpha

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # warm-up, including fastgp's first-call probe, outside the capture
            D.zero_grad(set_to_none=False)
            d_step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    D.zero_grad(set_to_none=False)
    with torch.cuda.graph(graph):
        static_gp, static_alpha = d_step()

    static_grads = [p.grad for p in D.parameters()]  # the graph writes into these tensors
    seen = []
    for _ in range(2):
        for g in static_grads:
            g.zero_()
        graph.replay()
        torch.cuda.synchronize()
        alpha = static_alpha.clone()
        seen.append(alpha)
        loss = fastgp.losses.d_loss("wgan", D(real), D(fake))
        want = hand_wgan_gp(D, real, fake, alpha)
        eager = torch.autograd.grad(loss + want, list(D.parameters()))  # leaves .grad to the graph
        torch.testing.assert_close(static_gp, want, rtol=1e-4, atol=1e-5)
        assert_all_close(static_grads, list(eager), rtol=1e-4, atol=1e-5)
    assert not torch.equal(seen[0], seen[1]), "each replay must draw a fresh α"


# --- Determinism -----------------------------------------------------------------------------


def test_deterministic_algorithms_give_bitwise_identical_steps(fresh_seed):
    def run():
        torch.manual_seed(fresh_seed)
        D = conv()
        real, fake = torch.randn(4, 3, 7, 7, dtype=torch.float64), torch.randn(4, 3, 7, 7, dtype=torch.float64)
        loss = fastgp.losses.d_loss("wgan", D(real), D(fake))
        gp = fastgp.gradient_penalty(D, real, fake)  # α from the default generator
        (loss + gp).backward()
        return [gp.detach(), *param_grads(D)]

    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        first, second = run(), run()
    finally:
        torch.use_deterministic_algorithms(before)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


# --- Critics that cannot be differentiated twice ---------------------------------------------


def test_batchnorm_in_training_mode_warns_once_with_the_workaround(recwarn):
    D = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 1)).double()
    real = torch.randn(5, 6, dtype=torch.float64)
    with pytest.warns(UserWarning, match=r"BatchNorm.*training mode.*D\.eval\(\).*GroupNorm"):
        fastgp.gradient_penalty(D, real, preset="r1")
    recwarn.clear()
    fastgp.gradient_penalty(D, real, preset="r1")
    fastgp.input_grad(D, real)
    D.eval()
    fastgp.gradient_penalty(D, real, preset="r1")
    assert not [w for w in recwarn if "BatchNorm" in str(w.message)]

    # Why it matters: in training mode sample 0's score depends on sample 1's input.
    D.train()
    x = real.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(D(x)[0].sum(), x)
    assert g[1].abs().sum() > 0


class _OnceSquare(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x * grad


class _OnceCritic(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 8).double(), nn.Linear(8, 1).double()

    def forward(self, x):
        return self.b(_OnceSquare.apply(self.a(x)))


def test_function_without_double_backward_raises_the_workaround():
    D = _OnceCritic()
    real = torch.randn(4, 6, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"cannot be differentiated twice.*once_differentiable.*Workaround") as info:
        fastgp.gradient_penalty(D, real, preset="r1")
    assert "once_differentiable" in str(info.value.__cause__)
    assert all(p.grad is None for p in D.parameters())
    with pytest.raises(RuntimeError, match="cannot be differentiated twice"):
        fastgp.input_grad(D, real)  # a refused critic is probed again, not remembered


def test_check_can_be_turned_off(monkeypatch):
    monkeypatch.setenv(training.CHECK_ENV_VAR, "0")
    D = _OnceCritic()
    gp = fastgp.gradient_penalty(D, torch.randn(4, 6, dtype=torch.float64), preset="r1")
    with pytest.raises(RuntimeError, match="once_differentiable"):  # PyTorch's own error, later
        gp.backward()


class _Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv, self.out = nn.Linear(4, 12), nn.Linear(4, 1)

    def forward(self, x):  # x: (B, heads, tokens, 4); 4-D so that PyTorch picks its fused CPU kernel
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.out(F.scaled_dot_product_attention(q, k, v)).squeeze(-1)


def test_attention_critic_names_the_sdpa_workaround():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    D, real = _Attention(), torch.randn(3, 2, 8, 4)
    with pytest.raises(RuntimeError, match=r"sdpa_kernel\(torch\.nn\.attention\.SDPBackend\.MATH\)"):
        fastgp.gradient_penalty(D, real, preset="r1")
    with sdpa_kernel(SDPBackend.MATH):  # the workaround the message gives
        gp = fastgp.gradient_penalty(D, real, preset="r1")
        gp.backward()
    assert torch.isfinite(D.qkv.weight.grad).all() and D.qkv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("wrap", ["module", "bound method", "fresh lambda"])
def test_the_probe_runs_once_and_accumulates_nothing(monkeypatch, wrap):
    D = mlp()
    real = torch.randn(4, 6, dtype=torch.float64)
    calls = []
    original = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: calls.append(1) or original(*a, **k))
    critic = {"module": lambda: D, "bound method": lambda: D.forward, "fresh lambda": lambda: lambda x: D(x)}[wrap]
    fastgp.input_grad(critic(), real)
    assert all(p.grad is None for p in D.parameters())
    assert len(calls) == 2  # the input gradient, then the one probe
    for _ in range(3):
        fastgp.gradient_penalty(critic(), real, preset="r1")
    assert len(calls) == 5  # one input gradient per call, no further probe


@pytest.mark.parametrize("wrap", ["module", "bound method", "function"])
def test_a_known_critic_costs_one_lookup(monkeypatch, wrap):
    """After the first call, a critic is recognised without walking its graph (a fresh lambda still is)."""
    D = mlp()

    def function(x):
        return D(x)

    critic = {"module": D, "bound method": D.forward, "function": function}[wrap]
    real = torch.randn(4, 6, dtype=torch.float64)
    fastgp.gradient_penalty(critic, real, preset="r1")
    walks = []
    original = training._leaves
    monkeypatch.setattr(training, "_leaves", lambda grad: walks.append(1) or original(grad))
    for _ in range(3):
        fastgp.gradient_penalty(critic, real, preset="r1")
    assert walks == []
    fastgp.gradient_penalty(lambda x: D(x), real, preset="r1")
    assert walks == [1]


def test_explain_names_the_cudnn_rnn_workaround():
    err = RuntimeError("derivative for aten::_cudnn_rnn_backward is not implemented")
    assert "torch.backends.cudnn.flags(enabled=False)" in training.explain_double_backward_error(err)


# --- Examples --------------------------------------------------------------------------------


def _example(name: str) -> dict:
    return runpy.run_path(str(EXAMPLES / name))


@pytest.mark.parametrize("amp", [False, True])
def test_wgan_gp_example_runs(amp, capsys):
    history = _example("wgan_gp.py")["main"](["--steps", "5", "--batch-size", "4", "--n-critic", "2"] + ["--amp"] * amp)
    assert len(history["d_loss"]) == 5 and len(history["g_loss"]) == 3
    assert all(math.isfinite(v) and v > 0 for v in history["gp"])
    assert "step     4" in capsys.readouterr().out


def test_stylegan_r1_example_runs_lazy_r1():
    history = _example("stylegan_r1.py")["main"](["--steps", "5", "--every", "2", "--batch-size", "4"])
    assert len(history["d_loss"]) == 5 and len(history["r1"]) == 3  # steps 0, 2, 4
    assert all(math.isfinite(v) and v >= 0 for v in history["r1"]) and history["r1"][-1] > 0


@pytest.mark.parametrize("mode", ["gn", "pgn"])
def test_gn_gan_example_runs(mode):
    history = _example("gn_gan.py")["main"](["--steps", "5", "--batch-size", "4", "--mode", mode])
    assert len(history["g_loss"]) == 5 and all(math.isfinite(v) for v in history["d_loss"])
    assert all(0 < v <= 1 for v in history["max_abs_f_hat"])  # |f̂| ≤ 1 (SPEC.md §4)


def test_examples_run_as_scripts(monkeypatch, capsys):
    """`python examples/<name>.py --steps N` (in-process: a fresh interpreter costs seconds of import)."""
    monkeypatch.setattr(sys, "argv", ["gn_gan.py", "--steps", "2", "--batch-size", "2", "--device", "cpu"])
    runpy.run_path(str(EXAMPLES / "gn_gan.py"), run_name="__main__")
    assert "step     1" in capsys.readouterr().out
