"""Penalties without a double backward (`fastgp.first_order`): `method="fd"` against the exact double
backward, the approximated R1/R2 presets against their formula and against R1, and both where they are
needed: torch.compile, SDPA's fused CPU kernel, @once_differentiable ops, dropout, BatchNorm and spectral
norm, DDP and AMP."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
import torch.nn.functional as F
from test_backends import FUSED
from test_integration import _OnceSquare, _shards, one_thread, run_on_gloo  # noqa: F401 (one_thread: autouse)
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

import fastgp
from fastgp import first_order, reference, training

F64, F32 = torch.float64, torch.float32
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# Relative error against the exact double backward of the gradient sent to D's parameters (as one vector), and
# of the one sent to the points. Measured over 6 seeds of the grid below: at most 3e-9 in float64; in float32
# 1.3e-4 for the parameters and 1.1e-3 for the points (the attention critic).
# float32: over 13 random seeds the worst parameter-gradient error was 7.3e-4 (attention critic, l1 norm) and
# the worst into the points 4.5e-3; the bounds leave room for the seeds not tried.
FD_TOL = {F64: 1e-8, F32: 2e-3}
FD_TOL_POINTS = {F64: 1e-8, F32: 2e-2}


def mlp(act: type[nn.Module] = nn.GELU, d: int = 6) -> nn.Module:
    return nn.Sequential(nn.Linear(d, 16), act(), nn.Linear(16, 16), act(), nn.Linear(16, 1))


def conv(act: type[nn.Module] = nn.SiLU) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), act(), nn.Conv2d(4, 4, 3, stride=2), act(), nn.Flatten(), nn.Linear(36, 1)
    )


class Transformer(nn.Module):
    """A one-block ViT-style critic on (B, tokens, 8); 4-D q, k, v, so that CPU SDPA picks its fused kernel."""

    def __init__(self, dim: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d))
        x = x + self.mlp(self.norm2(x))
        return self.head(x.mean(dim=1)).squeeze(-1)


CRITICS = {
    "mlp-gelu": (lambda: mlp(nn.GELU), (8, 6)),
    "mlp-silu": (lambda: mlp(nn.SiLU), (8, 6)),
    "mlp-softplus": (lambda: mlp(nn.Softplus), (8, 6)),
    "conv-silu": (lambda: conv(nn.SiLU), (4, 3, 8, 8)),
    "attention": (Transformer, (4, 5, 8)),
}


def grads(*tensors: torch.Tensor) -> list[torch.Tensor]:
    out = [torch.zeros_like(t) if t.grad is None else t.grad.clone() for t in tensors]
    for t in tensors:
        t.grad = None
    return out


def rel(got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    num = sum(float((a.double() - b.double()).square().sum()) for a, b in zip(got, want, strict=True))
    den = sum(float(b.double().square().sum()) for b in want)
    return (num / den) ** 0.5 if den else num**0.5


def step(D, real, fake, method, inputs=(), **kw):
    """The penalty and the gradients it sends to D's parameters and to `inputs`; exact runs on SDPA's math kernel."""
    params = list(D.parameters())
    with sdpa_kernel(SDPBackend.MATH) if method == "exact" else contextlib.nullcontext():
        P = fastgp.gradient_penalty(D, real, fake, method=method, **kw)
    P.backward()
    return P.detach(), grads(*params), grads(*inputs)


# ----------------------------------------------------------------------------------------------- method="fd"


@pytest.mark.parametrize("dtype", [F64, F32], ids=str)
@pytest.mark.parametrize("critic", list(CRITICS))
def test_fd_matches_exact_for_every_norm_constraint_and_points(critic, dtype):
    make, shape = CRITICS[critic]
    D = make().to(dtype)
    real = torch.randn(shape, dtype=dtype, requires_grad=True)
    fake = torch.randn(shape, dtype=dtype, requires_grad=True)
    own = torch.randn(shape, dtype=dtype, requires_grad=True)
    worst = 0.0
    for points in (*reference.POINTS, "own"):
        for norm in reference.NORMS:
            for constraint in reference.CONSTRAINTS:
                kw = dict(norm=norm, constraint=constraint, center=0.5, seed=7, inputs=(real, fake, own))
                kw["points"] = own if points == "own" else points
                P, want, want_x = step(D, real, fake, "exact", **kw)
                Q, got, got_x = step(D, real, fake, "fd", **kw)
                # The same formula of two float32 gradients: n - c cancels when the norms sit near c.
                torch.testing.assert_close(Q, P, rtol=1e-4 if dtype == F32 else 1e-12, atol=1e-6 if dtype == F32 else 0)
                err = rel(got, want), rel(got_x, want_x)
                assert err[0] < FD_TOL[dtype] and err[1] < FD_TOL_POINTS[dtype], (points, norm, constraint, err)
                worst = max(worst, err[0])
    print(f"{critic} {dtype}: worst relative error of the parameter gradient {worst:.1e}")


@pytest.mark.parametrize("dtype", [F64, F32], ids=str)
def test_fd_max_reduction_and_output_term(dtype):
    D = mlp().to(dtype)
    real, fake = torch.randn(8, 6, dtype=dtype), torch.randn(8, 6, dtype=dtype)
    kw = dict(preset="wgan-gp", reduction="max", output_weight=0.3, seed=1)
    P, want, _ = step(D, real, fake, "exact", **kw)
    Q, got, _ = step(D, real, fake, "fd", **kw)
    torch.testing.assert_close(Q, P, rtol=1e-4 if dtype == F32 else 1e-12, atol=0)
    assert rel(got, want) < FD_TOL[dtype]


def test_fd_details_and_shared_scores():
    """R1 with method="fd" sharing the forward of the D loss, as `input_grad` does for the exact method."""
    D = mlp().double()
    real, fake = torch.randn(6, 6, dtype=F64), torch.randn(6, 6, dtype=F64)
    totals = []
    for method in ("exact", "fd"):
        P, det = fastgp.gradient_penalty(D, real, preset="r1", method=method, return_details=True)
        (fastgp.losses.d_loss("ns", det.scores, D(fake)) + P).backward()
        totals.append(grads(*D.parameters()))
        assert det.grad.shape == real.shape and det.norms.shape == (6,)
    assert rel(totals[1], totals[0]) < FD_TOL[F64]


class _SquareCritic(nn.Module):
    def __init__(self, fused: bool):
        super().__init__()
        self.fused, self.a, self.b = fused, nn.Linear(6, 8), nn.Linear(8, 1)

    def forward(self, x):
        h = self.a(x)
        return self.b(torch.tanh(_OnceSquare.apply(h) if self.fused else h * h))


def test_fd_runs_a_critic_with_a_once_differentiable_op():
    fused, plain = _SquareCritic(True).double(), _SquareCritic(False).double()
    plain.load_state_dict(fused.state_dict())
    real, fake = torch.randn(5, 6, dtype=F64), torch.randn(5, 6, dtype=F64)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        fastgp.gradient_penalty(fused, real, fake)
    _, want, _ = step(plain, real, fake, "exact", seed=2)
    _, got, _ = step(fused, real, fake, "fd", seed=2)
    assert rel(got, want) < FD_TOL[F64]


@pytest.mark.parametrize("dtype", [F64, F32], ids=str)
def test_transformer_on_the_fused_sdpa_kernel(dtype):
    """The exact method refuses the fused kernel and names the two ways out; both match the math kernel."""
    D = Transformer().to(dtype)
    real = torch.randn(4, 5, 8, dtype=dtype)
    fake = torch.randn(4, 5, 8, dtype=dtype)
    with pytest.raises(RuntimeError, match=r"flash.*method='fd'.*preset='ar1'"):
        fastgp.gradient_penalty(D, real, fake)
    assert all(p.grad is None for p in D.parameters())
    _, want, _ = step(D, real, fake, "exact", preset="wgan-gp", seed=3)
    _, got, _ = step(D, real, fake, "fd", preset="wgan-gp", seed=3)
    assert rel(got, want) < FD_TOL[dtype]
    with sdpa_kernel(SDPBackend.MATH):
        P = fastgp.gradient_penalty(D, real, preset="ar1", seed=4)
        P.backward()
    want = grads(*D.parameters())
    Q = fastgp.gradient_penalty(D, real, preset="ar1", seed=4)
    Q.backward()
    tol = 1e-9 if dtype == F64 else 1e-2  # f(x) - f(x + σξ) is ~1e-2 of f: float32 kernels differ there
    torch.testing.assert_close(Q, P, rtol=tol, atol=0)
    assert rel(grads(*D.parameters()), want) < tol


def test_compiled_critic_with_both_methods():
    """aot_eager is torch.compile's autograd path (the one without a double backward) without code generation."""
    D = mlp().double()
    compiled = torch.compile(copy.deepcopy(D), backend="aot_eager", fullgraph=True)
    real, fake = torch.randn(6, 6, dtype=F64), torch.randn(6, 6, dtype=F64)
    with pytest.raises(RuntimeError, match=r"torch\.compile.*method='fd'.*preset='ar1'"):
        fastgp.gradient_penalty(compiled, real, fake)
    _, exact, _ = step(D, real, fake, "exact", seed=5)
    for method, preset in (("fd", "wgan-gp"), ("ar", "ar1")):
        P, eager, _ = step(D, real, fake, method, preset=preset, seed=5)
        Q, got, _ = step(compiled, real, fake, method, preset=preset, seed=5)
        torch.testing.assert_close(Q, P, rtol=1e-12, atol=0)
        assert rel(got, eager) < 1e-12
        if method == "fd":
            assert rel(got, exact) < FD_TOL[F64]


@pytest.mark.parametrize("dtype", [F64, F32], ids=str)
@pytest.mark.parametrize("critic", ["mlp-relu", "conv-leaky-relu"])
def test_kinked_critic_is_refused(critic, dtype, monkeypatch):
    D = (mlp(nn.ReLU) if critic == "mlp-relu" else conv(lambda: nn.LeakyReLU(0.2))).to(dtype)
    shape = (16, 6) if critic == "mlp-relu" else (8, 3, 8, 8)
    real, fake = torch.randn(shape, dtype=dtype), torch.randn(shape, dtype=dtype)
    rng = torch.get_rng_state()
    for _ in range(2):  # a refused critic is checked again, not remembered
        with pytest.raises(ValueError, match=r"refuses this critic.*ReLU.*GELU.*method='exact'.*preset='ar1'"):
            fastgp.gradient_penalty(D, real, fake, method="fd", seed=0)
    assert all(p.grad is None for p in D.parameters())
    assert torch.equal(torch.get_rng_state(), rng)
    fastgp.gradient_penalty(D, real, preset="ar1").backward()  # first-order: any critic
    monkeypatch.setenv(first_order.CHECK_ENV_VAR, "0")
    fastgp.gradient_penalty(D, real, fake, method="fd").backward()


@pytest.mark.parametrize("backend,device", FUSED)
def test_fused_backends_run_both_methods(backend, device):
    D = mlp().to(device, F64)
    real, fake = torch.randn(6, 6, dtype=F64, device=device), torch.randn(6, 6, dtype=F64, device=device)
    for method, preset in (("fd", "r2"), ("ar", "ar1")):  # at the batch itself: each backend draws its own α
        P, want, _ = step(D, real, fake, method, preset=preset, seed=3, backend="torch")
        Q, got, _ = step(D, real, fake, method, preset=preset, seed=3, backend=backend)
        torch.testing.assert_close(Q, P, rtol=1e-10, atol=0)
        assert rel(got, want) < 1e-9


class _Conditional(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.net = nn.Embedding(3, 6), mlp(nn.SiLU)

    def forward(self, x, y, *, shift=0.0):
        return self.net(x * self.embed(y) + shift)


@pytest.mark.parametrize("wrap", ["module", "fresh lambda"])
def test_the_smoothness_check_runs_once_per_critic(wrap):
    """Keyed on the module, or for a plain function on the parameters it reaches: checked once either way."""
    D = _Conditional().double()
    calls = []
    D.register_forward_hook(lambda *_: calls.append(1))
    real, fake, y = torch.randn(4, 6, dtype=F64), torch.randn(4, 6, dtype=F64), torch.tensor([0, 2, 1, 2])
    ws = []
    for _ in range(2):
        critic, args = (D, dict(d_args=(y,), d_kwargs={"shift": 0.5}))
        if wrap == "fresh lambda":
            critic, args = (lambda x: D(x, y, shift=0.5)), {}
        fastgp.gradient_penalty(critic, real, fake, method="fd", seed=1, **args).backward()
        ws.append(grads(*D.parameters()))
    assert len(calls) == (1 + 4 + 2) + (1 + 2)  # forward, the check at two steps, the backward's two evaluations
    _, want, _ = step(D, real, fake, "exact", seed=1, d_args=(y,), d_kwargs={"shift": 0.5})
    assert rel(ws[0], want) < FD_TOL[F64] and rel(ws[1], want) < FD_TOL[F64]


@pytest.mark.parametrize("device", DEVICES)
def test_dropout_is_replayed(device):
    D = nn.Sequential(nn.Linear(6, 32), nn.GELU(), nn.Dropout(0.3), nn.Linear(32, 1)).to(device, F64)
    real, fake = torch.randn(8, 6, dtype=F64, device=device), torch.randn(8, 6, dtype=F64, device=device)
    out = {}
    for method in ("exact", "fd"):
        torch.manual_seed(11)
        out[method] = step(D, real, fake, method, seed=1)[1]
        out[method + " rng"] = torch.get_rng_state() if device == "cpu" else torch.cuda.get_rng_state()
    assert rel(out["fd"], out["exact"]) < FD_TOL[F64]
    assert torch.equal(out["fd rng"], out["exact rng"])  # the replays leave the generator where the forward did


def _normed(kind: str) -> nn.Module:
    if kind == "batchnorm":
        return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.SiLU(), nn.Linear(16, 1))
    sn = nn.utils.spectral_norm if kind == "spectral_norm" else nn.utils.parametrizations.spectral_norm
    return nn.Sequential(sn(nn.Linear(6, 16)), nn.SiLU(), sn(nn.Linear(16, 16)), nn.SiLU(), nn.Linear(16, 1))


@pytest.mark.filterwarnings("ignore:fastgp. the critic has BatchNorm")
@pytest.mark.parametrize("kind", ["batchnorm", "spectral_norm", "parametrizations.spectral_norm"])
def test_buffers_are_unchanged_by_the_extra_evaluations(kind):
    torch.manual_seed(0)
    D = _normed(kind).double()
    start = {k: v.clone() for k, v in D.state_dict().items()}
    real, fake = torch.randn(8, 6, dtype=F64), torch.randn(8, 6, dtype=F64)
    out = {}
    for method in ("exact", "fd"):
        D.load_state_dict(start)
        out[method] = step(D, real, fake, method, seed=2)[1]
        out[method + " buffers"] = [b.clone() for b in D.buffers()]
    for a, b in zip(out["fd buffers"], out["exact buffers"], strict=True):
        assert torch.equal(a, b)
    if kind != "batchnorm":  # spectral norm's power iteration is replayed: the same u, v, the same weights
        assert rel(out["fd"], out["exact"]) < FD_TOL[F64]


@pytest.mark.parametrize("device,dtype", [("cpu", torch.bfloat16), ("cuda", torch.float16)])
def test_amp_with_a_scaler(device, dtype):
    """Autocast with a GradScaler: the extra evaluations run in float32, the scaled gradient unscales."""
    if device not in DEVICES:
        pytest.skip("needs a CUDA device")
    D = mlp(d=16).to(device)
    real, fake = torch.randn(16, 16, device=device), torch.randn(16, 16, device=device)
    scaler = torch.amp.GradScaler(device, init_scale=2.0**12)
    with torch.autocast(device, dtype=dtype):
        P = fastgp.gradient_penalty(D, real, fake, method="fd", scaler=scaler, seed=3)
    scaler.scale(P).backward()
    ours = [g / scaler.get_scale() for g in grads(*D.parameters())]
    _, fp32, _ = step(D, real, fake, "exact", seed=3)
    assert P.dtype == F32 and rel(ours, fp32) < 5e-2
    with torch.autocast(device, dtype=dtype):
        assert torch.isfinite(fastgp.gradient_penalty(D, real, preset="ar1"))


def _ddp_steps(rank: int, world: int) -> dict[str, list[torch.Tensor]]:
    torch.manual_seed(0)
    D = mlp().double()
    ddp = nn.parallel.DistributedDataParallel(D)
    _, _, real, fake = _shards(rank, world)
    results = {}
    for method, preset in (("fd", "wgan-gp"), ("ar", "ar1")):
        loss = fastgp.losses.d_loss("wgan", ddp(real), ddp(fake))
        (loss + fastgp.gradient_penalty(ddp, real, fake, preset=preset, method=method, seed=100 + rank)).backward()
        results[method] = grads(*D.parameters())
    return results


def test_ddp_matches_one_process_on_the_full_batch(tmp_path):
    world = 2
    ranks = run_on_gloo(_ddp_steps, tmp_path, world)
    torch.manual_seed(0)
    D = mlp().double()
    real, fake, _, _ = _shards(0, world)
    shards = [_shards(r, world) for r in range(world)]
    x_hat = torch.cat([fastgp.interpolate(s[2], s[3], seed=100 + r) for r, s in enumerate(shards)])
    loss = fastgp.losses.d_loss("wgan", D(real), D(fake))
    (loss + fastgp.gradient_penalty(D, None, points=x_hat, method="fd")).backward()
    want = {"fd": grads(*D.parameters())}
    noise = torch.cat([torch.randn(s[2].shape, generator=_gen(101 + r), dtype=F64) for r, s in enumerate(shards)])
    (
        fastgp.losses.d_loss("wgan", D(real), D(fake)) + 100 * (D(real) - D(real + 0.01 * noise)).square().mean()
    ).backward()
    want["ar"] = grads(*D.parameters())
    for got in ranks:
        for method, g in want.items():
            assert rel(got[method], g) < 1e-9, method


# ----------------------------------------------------------------------------------------------- approximated R1/R2


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("preset,points", [("ar1", "real"), ("ar2", "fake")])
def test_approximated_r1_r2_against_the_formula(preset, points):
    """λ · mean_i (f_i(x_i) − f_i(x_i + σ ξ_i))², ξ from the generator keyed by seed + 1; f_i sums a patch output."""
    D = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 1, 3)).double()  # (B, 1, 3, 3) patches
    real = torch.randn(5, 3, 5, 5, dtype=F64, requires_grad=True)
    fake = torch.randn(5, 3, 5, 5, dtype=F64, requires_grad=True)
    x = real if points == "real" else fake
    P, det = fastgp.gradient_penalty(D, real, fake, preset=preset, seed=9, return_details=True)
    xi = torch.randn(x.shape, generator=_gen(10), dtype=F64)
    f, f_noisy = D(x).sum((1, 2, 3)), D(x + 0.01 * xi).sum((1, 2, 3))
    want = 100 * ((f - f_noisy) ** 2).mean()
    torch.testing.assert_close(P, want, rtol=1e-12, atol=0)
    torch.testing.assert_close(det.scores, f, rtol=1e-12, atol=0)
    # Both D(x) and D(x + σξ) carry the gradient, into D and into the points (the generator, for ar2).
    params = [*D.parameters(), x]
    got, expected = torch.autograd.grad(P, params), torch.autograd.grad(want, params)
    assert rel(list(got), list(expected)) < 1e-12
    assert det.grad is None and det.norms is None and det.alpha is None and det.x_hat is x
    # Overrides: σ, λ, the max over the batch and the output term.
    Q = fastgp.gradient_penalty(
        D, real, fake, preset=preset, seed=9, sigma=0.1, weight=3.0, reduction="max", output_weight=0.5
    )
    f_noisy = D(x + 0.1 * xi).sum((1, 2, 3))
    torch.testing.assert_close(Q, 3 * ((f - f_noisy) ** 2).max() + 0.5 * (f**2).mean(), rtol=1e-12, atol=0)
    assert fastgp.presets[preset].as_kwargs() == dict(
        points=points, norm="l2", constraint="ls", center=0.0, weight=100.0, method="ar", sigma=0.01
    )


def test_approximated_r1_is_r1_for_small_sigma():
    """``f(x + σξ) − f(x) = σ ξ·∇f + O(σ²)``: per draw the penalty is λσ² mean (ξ_i·g_i)² to O(σ), and over
    draws ``E (ξ·g)² = ‖g‖²``, so its mean is R1 with weight λσ²."""
    D = mlp(nn.Tanh).double()
    real = torch.randn(4, 6, dtype=F64)
    _, det = fastgp.gradient_penalty(D, real, preset="r1", return_details=True)
    g = det.grad.detach()
    sigma = 1e-5
    xi = torch.randn(real.shape, generator=_gen(2), dtype=F64)
    P = fastgp.gradient_penalty(D, real, preset="ar1", sigma=sigma, seed=1)
    torch.testing.assert_close(P / (100 * sigma**2), ((xi * g).sum(1) ** 2).mean(), rtol=1e-4, atol=0)
    # 16384 draws per sample: the Monte-Carlo error of the mean of (ξ·g)² is at most sqrt(2/16384) = 1.1%.
    many = real.repeat(16384, 1)
    P = fastgp.gradient_penalty(D, many, preset="ar1", sigma=1e-3, seed=3)
    R1 = fastgp.gradient_penalty(D, many, preset="r1", weight=100 * 1e-3**2)
    torch.testing.assert_close(P, R1, rtol=0.06, atol=0)


def test_approximated_r1_reuses_the_scores_of_the_d_loss():
    """With `scores` D runs once, at the noisy points; the step equals the one that computes D(real) itself."""
    D = mlp().double()
    real, fake = torch.randn(6, 6, dtype=F64), torch.randn(6, 6, dtype=F64)
    calls = []
    D.register_forward_hook(lambda *_: calls.append(1))
    real_scores = D(real)
    loss = fastgp.losses.d_loss("ns", real_scores, D(fake))
    P = fastgp.gradient_penalty(D, real, preset="ar1", scores=real_scores, seed=4)
    assert len(calls) == 3
    (loss + P).backward()
    shared = grads(*D.parameters())
    Q, det = fastgp.gradient_penalty(D, real, preset="ar1", seed=4, return_details=True)
    (fastgp.losses.d_loss("ns", det.scores, D(fake)) + Q).backward()  # the other way round: the loss reuses det.scores
    torch.testing.assert_close(Q, P, rtol=1e-12, atol=0)
    assert rel(grads(*D.parameters()), shared) < 1e-12


def test_refusals_name_the_argument_and_touch_nothing():
    D = mlp().double()
    calls = []
    D.register_forward_hook(lambda *_: calls.append(1))
    real, fake = torch.randn(4, 6, dtype=F64), torch.randn(4, 6, dtype=F64)
    cases = [
        (dict(method="second-order"), ValueError, "method must be one of"),
        (dict(method=2), TypeError, "method must be a str"),
        (dict(sigma=0.1), ValueError, "sigma and scores apply to method='ar' only"),
        (dict(method="fd", scores=torch.randn(4, dtype=F64, requires_grad=True)), ValueError, "scores"),
        (dict(preset="wgan-gp", method="ar"), ValueError, "norm='l2', constraint='ls', center=0"),
        (dict(preset="ar1", norm="l1"), ValueError, "approximates the zero-centred"),
        (dict(preset="ar1", sigma=0.0), ValueError, "sigma must be positive"),
        (dict(preset="ar1", sigma=-1.0), ValueError, "sigma must be finite and non-negative"),
        (dict(preset="ar1", sigma="big"), TypeError, "sigma must be a real number"),
        (dict(preset="ar1", scores=torch.randn(4, dtype=F64)), ValueError, "scores must carry D's graph"),
        (dict(preset="ar1", scores=torch.randn(3, dtype=F64, requires_grad=True)), ValueError, "scores has batch"),
        (dict(preset="ar1", scores=[1.0] * 4), TypeError, "scores must be a torch.Tensor"),
    ]
    for kw, err, match in cases:
        with pytest.raises(err, match=match):
            fastgp.gradient_penalty(D, real, fake, **kw)
    assert not calls and all(p.grad is None for p in D.parameters())


def test_the_double_backward_error_points_to_both_methods():
    for said in (
        "torch.compile with aot_autograd does not currently support double backward",
        "derivative for aten::_scaled_dot_product_flash_attention_for_cpu_backward is not implemented",
        "something else is not implemented",
    ):
        msg = training.explain_double_backward_error(RuntimeError(said))
        assert "method='fd'" in msg and "preset='ar1'" in msg, msg
    assert (
        "torch.compile"
        in training.explain_double_backward_error(
            RuntimeError("torch.compile with aot_autograd does not currently support double backward")
        ).split("Workaround")[1]
    )
