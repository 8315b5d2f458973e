"""Every backend that runs here, through the public API, against the reference backend."""

import importlib.util

import pytest
import torch
from torch import nn

import fastgp
import fastgp.reference as R

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
FUSED = [
    (name, device)
    for name in ("triton", "cuda")
    for device in DEVICES
    if name in fastgp.backends()
    and fastgp.backends()[name].available
    and (device == "cuda" or name == "triton")  # on CPU tensors only Triton's interpreter runs
]


def backends_module():
    # `fastgp.backends` is the public function; the module of the same name lives in sys.modules.
    return importlib.import_module("fastgp.backends")


def critic(device):
    torch.manual_seed(torch.randint(0, 2**31, ()).item())
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Softplus(), nn.Flatten(), nn.Linear(4 * 5 * 6, 1)).to(
        device, torch.float64
    )


def grads(D):
    out = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in D.parameters()]
    D.zero_grad()
    return out


@pytest.mark.parametrize("backend,device", FUSED)
@pytest.mark.parametrize("preset", [name for name, p in fastgp.presets.items() if p.method != "ar"])
def test_gradient_penalty_matches_reference(backend, device, preset):
    D = critic(device)
    real = torch.randn(3, 3, 5, 6, dtype=torch.float64, device=device)
    fake = torch.randn(3, 3, 5, 6, dtype=torch.float64, device=device).to(memory_format=torch.channels_last)
    fake = fake.contiguous() if preset == "dragan" else fake
    P, det = fastgp.gradient_penalty(
        D, real, fake, preset=preset, output_weight=0.1, backend=backend, return_details=True
    )
    P.backward()
    ours = grads(D)
    if det.alpha is not None:
        assert ((det.alpha >= 0) & (det.alpha < 1)).all()
    if preset in ("wgan-gp", "0-gp", "lp", "max-margin"):
        a = det.alpha.view(-1, 1, 1, 1).to(real.dtype)
        torch.testing.assert_close(det.x_hat, a * real + (1 - a) * fake, rtol=1e-12, atol=1e-12)
    want = fastgp.gradient_penalty(
        D, real, fake, preset=preset, output_weight=0.1, points=det.x_hat.detach(), backend="torch"
    )
    want.backward()
    torch.testing.assert_close(P, want, rtol=1e-10, atol=1e-12)
    for a, b in zip(ours, grads(D), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("backend,device", FUSED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_penalty_from_grad_low_precision(backend, device, dtype):
    g = torch.randn(5, 3, 7, 9, device=device).to(dtype).requires_grad_(True)
    for norm in R.NORMS:
        P = fastgp.penalty_from_grad(g, norm=norm, backend=backend)
        want = fastgp.penalty_from_grad(g.double(), norm=norm, backend="torch")
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(P.double(), want, rtol=tol, atol=tol)
        (dg,) = torch.autograd.grad(P, g)
        (want_g,) = torch.autograd.grad(fastgp.penalty_from_grad(g, norm=norm, backend="torch"), g)
        assert dg.dtype == dtype
        torch.testing.assert_close(dg.float(), want_g.float(), rtol=2 * tol, atol=tol)


@pytest.mark.parametrize("backend,device", FUSED)
@pytest.mark.parametrize("mode", ["gn", "pgn"])
def test_normalized_critic_matches_reference(backend, device, mode):
    D = critic(device)
    x = torch.randn(4, 3, 5, 6, dtype=torch.float64, device=device)
    fastgp.normalized(D, mode=mode, backend=backend)(x).square().sum().backward()
    ours = grads(D)
    fastgp.normalized(D, mode=mode, backend="torch")(x).square().sum().backward()
    for a, b in zip(ours, grads(D), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_auto_picks_the_reference_on_cpu(monkeypatch):
    monkeypatch.delenv("FASTGP_BACKEND", raising=False)
    assert fastgp.backends()["torch"].available
    assert backends_module().select("auto", torch.device("cpu")) is R


@pytest.mark.skipif(not FUSED, reason="no fused backend runs here")
def test_env_var_routes_auto_to_a_fused_backend(monkeypatch):
    name, device = FUSED[0]
    monkeypatch.setenv("FASTGP_BACKEND", name)
    assert backends_module().select("auto", torch.device(device)) is not R


@pytest.mark.parametrize("backend,device", FUSED)
@pytest.mark.parametrize("norm", R.NORMS)
def test_nan_under_max_reduction_gives_nan_gradients(backend, device, norm):
    g = torch.randn(3, 4, device=device)
    g[1, 2] = float("nan")
    g.requires_grad_(True)
    for b in (backend, "torch"):
        P = fastgp.penalty_from_grad(g, norm=norm, reduction="max", backend=b)
        (dg,) = torch.autograd.grad(P, g)
        assert P.isnan() and dg.isnan().all(), b


@pytest.mark.parametrize("backend,device", FUSED)
def test_second_order_through_fused_ops(backend, device):
    """Hessian-vector products of the penalty and of GN, and a GN critic inside a penalty."""
    g = torch.randn(3, 5, dtype=torch.float64, device=device, requires_grad=True)
    s = torch.randn(3, dtype=torch.float64, device=device, requires_grad=True)
    v = torch.randn(3, 5, dtype=torch.float64, device=device)

    def hvp(b):
        P = fastgp.penalty_from_grad(g, scores=s, output_weight=0.3, backend=b)
        f = fastgp.normalize(s, g, mode="pgn", backend=b).sum()
        dg, ds = torch.autograd.grad(P + f, (g, s), create_graph=True)
        return torch.autograd.grad((dg * v).sum() + ds.sum(), (g, s))

    for a, b in zip(hvp(backend), hvp("torch"), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)

    D = critic(device)
    real, fake = torch.randn(2, 2, 3, 5, 6, dtype=torch.float64, device=device)
    GN = fastgp.normalized(D, mode="gn", backend=backend)
    P, det = fastgp.gradient_penalty(GN, real, fake, backend=backend, return_details=True)
    P.backward()
    ours = grads(D)
    fastgp.gradient_penalty(
        fastgp.normalized(D, mode="gn", backend="torch"), real, fake, points=det.x_hat.detach(), backend="torch"
    ).backward()
    for a, b in zip(ours, grads(D), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-11)


@pytest.mark.parametrize("backend,device", FUSED)
def test_interpolation_backward_is_differentiable(backend, device):
    real = torch.randn(3, 4, dtype=torch.float64, device=device, requires_grad=True)
    fake = torch.randn(3, 4, dtype=torch.float64, device=device, requires_grad=True)
    v = torch.randn(3, 4, dtype=torch.float64, device=device, requires_grad=True)
    x_hat, alpha = fastgp.interpolate(real, fake, backend=backend, return_alpha=True)
    dreal, dfake = torch.autograd.grad(x_hat, (real, fake), v, create_graph=True)
    (dv,) = torch.autograd.grad((dreal + 2 * dfake).sum(), v)
    torch.testing.assert_close(dv, (alpha + 2 * (1 - alpha)).to(v.dtype)[:, None].expand(3, 4))


def test_backend_for_names_what_auto_picks(monkeypatch):
    monkeypatch.delenv("FASTGP_BACKEND", raising=False)
    assert fastgp.backend_for("cpu") == "torch"
    assert fastgp.backend_for(torch.device("cpu"), "torch") == "torch"
    monkeypatch.setenv("FASTGP_BACKEND", "torch")
    assert fastgp.backend_for("cpu") == "torch"
    with pytest.raises(ValueError, match="backend must be one of"):
        fastgp.backend_for("cpu", "jax")
    if FUSED:
        name, device = FUSED[0]
        monkeypatch.setenv("FASTGP_BACKEND", name)
        assert fastgp.backend_for(device) == name


def test_backend_choice_is_remembered_but_follows_the_environment(monkeypatch):
    monkeypatch.delenv("FASTGP_BACKEND", raising=False)
    cpu = torch.device("cpu")
    assert fastgp.backend_for(cpu) == "torch" and fastgp.backend_for(cpu) == "torch"
    monkeypatch.setenv("FASTGP_BACKEND", "cuda")
    with pytest.raises(ValueError, match="backend='cuda' cannot run here"):
        fastgp.backend_for(cpu)
    with pytest.raises(ValueError, match="backend='cuda' cannot run here"):  # a refusal is not remembered
        fastgp.backend_for(cpu)
    monkeypatch.setenv("FASTGP_BACKEND", "nope")
    with pytest.raises(ValueError, match="FASTGP_BACKEND must be one of"):
        fastgp.backend_for(cpu)
    monkeypatch.delenv("FASTGP_BACKEND")
    with pytest.raises(ValueError, match="backend must be one of"):
        fastgp.backend_for(cpu, ["torch"])
    if importlib.util.find_spec("triton") is not None:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        assert fastgp.backend_for(cpu, "triton") == "triton"
        monkeypatch.delenv("TRITON_INTERPRET")
        with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
            fastgp.backend_for(cpu, "triton")
