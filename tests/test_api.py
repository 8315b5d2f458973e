"""The public API end to end on the reference backend, against hand-written eager training code."""

import math

import pytest
import torch
from torch import nn

import fastgp
import fastgp.reference as R


def mlp(d=5):
    return nn.Sequential(nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, 16), nn.Softplus(), nn.Linear(16, 1)).double()


def conv():
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.LeakyReLU(0.2),
        nn.Conv2d(4, 4, 3, stride=2),
        nn.Tanh(),
        nn.Flatten(),
        nn.LazyLinear(1),
    ).double()


def param_grads(D):
    return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in D.parameters()]


def eager_wgan_gp(D, real, fake, alpha):
    """WGAN-GP as users write it (Gulrajani et al. 2017, Algorithm 1)."""
    a = alpha.view(-1, *([1] * (real.dim() - 1)))
    x_hat = (a * real + (1 - a) * fake).requires_grad_(True)
    out = D(x_hat)
    (g,) = torch.autograd.grad(out.sum(), x_hat, create_graph=True)
    return 10 * ((g.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


@pytest.mark.parametrize("make,shape", [(mlp, (7, 5)), (conv, (3, 3, 8, 7))])
def test_wgan_gp_step_matches_hand_written(make, shape):
    D = make()
    real, fake = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
    D(real)  # materialise lazy modules
    P, det = fastgp.gradient_penalty(D, real, fake, preset="wgan-gp", seed=5, return_details=True)
    P.backward()
    ours = param_grads(D)
    D.zero_grad()
    want = eager_wgan_gp(D, real, fake, det.alpha)
    want.backward()
    torch.testing.assert_close(P, want, rtol=1e-10, atol=0)
    for a, b in zip(ours, param_grads(D), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)
    assert det.scores.shape == (shape[0],) and det.norms.shape == (shape[0],)


@pytest.mark.parametrize("make,shape", [(mlp, (1, 5)), (conv, (4, 3, 6, 6))])
def test_r1_step_matches_hand_written(make, shape):
    D = make()
    real = torch.randn(shape, dtype=torch.float64)
    D(real)
    P = fastgp.gradient_penalty(D, real, preset="r1")
    P.backward()
    ours = param_grads(D)
    D.zero_grad()
    x = real.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(D(x).sum(), x, create_graph=True)
    want = 5.0 * g.pow(2).flatten(1).sum(1).mean()  # γ/2 · E‖∇D‖², γ = 10
    want.backward()
    torch.testing.assert_close(P, want, rtol=1e-10, atol=0)
    for a, b in zip(ours, param_grads(D), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)


def test_gradcheck_penalty_into_critic_parameters():
    """The penalty's gradient into D's parameters runs through D's double backward."""
    real, fake = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    w1 = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(1, 6, dtype=torch.float64, requires_grad=True)

    def penalty(w1, w2):
        return fastgp.gradient_penalty(lambda x: torch.tanh(x @ w1.T) @ w2.T, real, fake, seed=3, norm="l2")

    assert torch.autograd.gradcheck(penalty, (w1, w2))


@pytest.mark.parametrize("mode", ["gn", "pgn"])
def test_gradgradcheck_normalized_into_generator(mode):
    """GN/PGN on fake samples: the generator's gradient flows through ∇f (never detached)."""
    z = torch.randn(4, 3, dtype=torch.float64)
    wd = torch.randn(5, 2, dtype=torch.float64)
    vd = torch.randn(1, 5, dtype=torch.float64)
    wg = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)

    def g_loss(wg):
        fake = torch.tanh(z @ wg.T)
        return fastgp.normalized(lambda x: torch.tanh(x @ wd.T) @ vd.T, mode=mode)(fake).sum()

    assert torch.autograd.gradcheck(g_loss, (wg,))
    assert torch.autograd.gradgradcheck(g_loss, (wg,))


def test_preset_and_explicit_overrides():
    D = mlp()
    real, fake = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    r1 = fastgp.gradient_penalty(D, real, fake, preset="r1")
    # weight=10.0 equals the signature's default but was given explicitly: it wins over r1's 5.
    r1_w10 = fastgp.gradient_penalty(D, real, fake, preset="r1", weight=10.0)
    torch.testing.assert_close(r1_w10, 2 * r1)
    for name, preset in fastgp.presets.items():
        P, det = fastgp.gradient_penalty(D, real, fake, preset=name, seed=1, return_details=True)
        want, _ = R.penalty_from_grad(
            det.grad, norm=preset.norm, constraint=preset.constraint, center=preset.center, weight=preset.weight
        )
        torch.testing.assert_close(P, want, rtol=1e-12, atol=0)
        assert (det.alpha is None) == (preset.points in ("real", "fake"))
    assert fastgp.presets["max-margin"].as_kwargs() == dict(
        points="interpolate", norm="linf", constraint="hinge", center=1.0, weight=20.0
    )


def test_default_settings_are_wgan_gp():
    D = mlp()
    real, fake = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    torch.testing.assert_close(
        fastgp.gradient_penalty(D, real, fake, seed=4), fastgp.gradient_penalty(D, real, fake, seed=4, preset="wgan-gp")
    )


def test_patch_and_conditional_critics():
    class Patch(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 1, 3, padding=1).double()
            self.embed = nn.Embedding(4, 3).double()

        def forward(self, x, y, *, scale=1.0):
            return scale * self.conv(x + self.embed(y)[:, :, None, None])  # (B, 1, H, W)

    D = Patch()
    real, fake = torch.randn(5, 3, 6, 6, dtype=torch.float64), torch.randn(5, 3, 6, 6, dtype=torch.float64)
    y = torch.randint(0, 4, (5,))
    P, det = fastgp.gradient_penalty(D, real, fake, seed=2, d_args=(y,), d_kwargs={"scale": 2.0}, return_details=True)
    x_hat = det.x_hat.detach().requires_grad_(True)
    f = D(x_hat, y, scale=2.0).flatten(1).sum(1)
    (g,) = torch.autograd.grad(f.sum(), x_hat)
    torch.testing.assert_close(det.scores, f)
    torch.testing.assert_close(P, 10 * ((g.flatten(1).norm(dim=1) - 1) ** 2).mean())


def test_output_penalty_and_max_reduction():
    D = mlp()
    real, fake = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    P, det = fastgp.gradient_penalty(
        D, real, fake, seed=1, output_weight=0.1, reduction="max", constraint="hinge", center=0.0, return_details=True
    )
    torch.testing.assert_close(P, 10 * det.norms.max() + 0.1 * (det.scores**2).mean())


def test_real_and_fake_keep_their_graph():
    """gradient_penalty does not detach real or fake (SPEC.md §8)."""
    D = mlp()
    z = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    fake = torch.sin(z)
    real = torch.randn(4, 5, dtype=torch.float64)
    P = fastgp.gradient_penalty(D, real, fake, seed=0)
    (gz,) = torch.autograd.grad(P, z)
    assert gz.abs().sum() > 0


def test_input_grad_shares_the_forward():
    D = mlp()
    real = torch.randn(6, 5, dtype=torch.float64)
    scores, grad = fastgp.input_grad(D, real)
    loss = torch.nn.functional.softplus(-scores).mean() + fastgp.penalty_from_grad(grad, center=0.0, weight=5.0)
    loss.backward()
    shared = param_grads(D)
    D.zero_grad()
    (
        torch.nn.functional.softplus(-D(real).squeeze(1)).mean() + fastgp.gradient_penalty(D, real, preset="r1")
    ).backward()
    for a, b in zip(shared, param_grads(D), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)


def test_penalty_from_grad_under_no_grad_logs_a_value():
    g = torch.randn(4, 3)
    with torch.no_grad():
        P = fastgp.penalty_from_grad(g)
        f = fastgp.normalize(torch.randn(4), g)
    assert not P.requires_grad and P.dtype == torch.float32 and f.shape == (4,)


def test_normalize_and_normalized_module():
    D = mlp()
    x = torch.randn(6, 5, dtype=torch.float64)
    scores, grad = fastgp.input_grad(D, x)
    for mode in ("gn", "pgn"):
        f_hat = fastgp.normalize(scores, grad, mode=mode, norm="l1")
        torch.testing.assert_close(f_hat, R.normalize(scores, grad, mode, "l1"))
        wrapped = fastgp.normalized(D, mode=mode, norm="l1")
        torch.testing.assert_close(wrapped(x), f_hat)
        with torch.no_grad():
            torch.testing.assert_close(wrapped(x), f_hat.detach())
    assert "mode='gn'" in repr(fastgp.normalized(D))
    # Xia's Theorem 6 variant is GN on 1 - f with the same gradient norm.
    v = fastgp.normalize(1 - scores, grad, mode="gn")
    torch.testing.assert_close(v, (1 - scores) / (grad.flatten(1).norm(dim=1) + (1 - scores).abs()))


def test_interpolate_public():
    real, fake = torch.randn(4, 2, 3), torch.randn(4, 2, 3)
    x_hat, alpha = fastgp.interpolate(real, fake, seed=9, return_alpha=True)
    torch.testing.assert_close(x_hat, alpha.view(-1, 1, 1) * real + (1 - alpha.view(-1, 1, 1)) * fake)
    assert fastgp.interpolate(real, points="dragan", seed=1).shape == real.shape
    assert fastgp.interpolate(real, fake, points="real") is real


def test_grad_norms_public():
    g = torch.randn(3, 4, 5, dtype=torch.float16)
    n = fastgp.grad_norms(g, "linf")
    assert n.dtype == torch.float32
    torch.testing.assert_close(n, g.float().flatten(1).abs().amax(1))


def test_margin():
    w = torch.tensor([[3.0, -4.0]], dtype=torch.float64)
    x = torch.randn(10, 2, dtype=torch.float64)
    y = torch.where(x @ w.T > 0, 1, -1).squeeze(1)
    for p, q in ((2, 5.0), (1, 4.0), ("inf", 7.0), (float("inf"), 7.0)):
        m = fastgp.margin(lambda t: t @ w.T, x, y, p=p)
        torch.testing.assert_close(m.values, (x @ w.T).abs().squeeze(1) / q)
        assert math.isclose(m.mean, float(m.values.mean())) and m.zero_grad_count == 0
    flat = fastgp.margin(lambda t: (t * 0).sum(1) + 1.0, x, y)
    assert math.isnan(flat.mean) and flat.zero_grad_count == 10
    with torch.no_grad():
        assert fastgp.margin(lambda t: t @ w.T, x, y).zero_grad_count == 0


@pytest.mark.parametrize("name", fastgp.losses.NAMES)
def test_losses(name):
    import torch.nn.functional as F

    r, s = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    pairs = {
        "wgan": (lambda t: -t, lambda t: t),
        "hinge": (lambda t: F.relu(1 - t), lambda t: F.relu(1 + t)),
        "ns": (lambda t: F.softplus(-t), lambda t: F.softplus(t)),
        "ls": (lambda t: (1 - t) ** 2, lambda t: (1 + t) ** 2),
    }
    kind, _, base = name.rpartition("-")
    pr, pf = pairs[base]
    d = fastgp.losses.d_loss(name, r, s)
    g = fastgp.losses.g_loss(name, s, real_scores=r)
    if kind == "rp":
        want_d, want_g = pr(r - s).mean(), pr(s - r).mean()
    elif kind == "ra":
        want_d = pr(r - s.mean()).mean() + pf(s - r.mean()).mean()
        want_g = pr(s - r.mean()).mean() + pf(r - s.mean()).mean()
    else:
        want_d = pr(r).mean() + pf(s).mean()
        want_g = {"wgan": -s.mean(), "hinge": -s.mean(), "ns": F.softplus(-s).mean(), "ls": ((1 - s) ** 2).mean()}[base]
    torch.testing.assert_close(d, want_d)
    torch.testing.assert_close(g, want_g)
    if kind:
        with pytest.raises(ValueError, match="real_scores"):
            fastgp.losses.g_loss(name, s)


def test_backends_report():
    status = fastgp.backends()
    assert status["torch"].available
    assert set(status) >= {"torch", "triton"}
    for s in status.values():
        assert isinstance(s.detail, str) and s.detail


def test_env_var_selects_backend(monkeypatch):
    monkeypatch.setenv("FASTGP_BACKEND", "torch")
    assert fastgp.penalty_from_grad(torch.randn(3, 2)).dtype == torch.float32
    monkeypatch.setenv("FASTGP_BACKEND", "tpu")
    with pytest.raises(ValueError, match="FASTGP_BACKEND"):
        fastgp.penalty_from_grad(torch.randn(3, 2))


def test_public_names():
    for name in (
        "gradient_penalty",
        "interpolate",
        "input_grad",
        "penalty_from_grad",
        "grad_norms",
        "normalize",
        "normalized",
        "margin",
        "losses",
        "presets",
        "backends",
    ):
        assert hasattr(fastgp, name), name
        obj = getattr(fastgp, name)
        if callable(obj):
            assert obj.__doc__ and len(obj.__doc__) > 40, name


def test_scaler_unscales_the_input_gradient():
    """AMP recipe: grad of the scaled scores, unscaled before the norm, equals the plain gradient."""
    D = mlp()
    real, fake = torch.randn(5, 5, dtype=torch.float64), torch.randn(5, 5, dtype=torch.float64)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**14)
    P, det = fastgp.gradient_penalty(D, real, fake, seed=3, scaler=scaler, return_details=True)
    plain, det0 = fastgp.gradient_penalty(D, real, fake, seed=3, return_details=True)
    torch.testing.assert_close(P, plain, rtol=1e-12, atol=0)
    torch.testing.assert_close(det.grad, det0.grad, rtol=1e-12, atol=0)
    disabled = torch.amp.GradScaler("cpu", enabled=False)
    torch.testing.assert_close(fastgp.gradient_penalty(D, real, fake, seed=3, scaler=disabled), plain)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_scaler_inverse_scale_stays_on_the_device(backend, monkeypatch):
    """The fused norm unscales as it reads (no get_scale() host sync) and matches the old formula,
    ``g · (1/get_scale())`` then the norm; details.grad is still the unscaled gradient."""
    try:
        fastgp.backend_for("cpu", backend)
    except ValueError as why:
        pytest.skip(str(why))
    D = mlp(40)
    real, fake = torch.randn(6, 40, dtype=torch.float64), torch.randn(6, 40, dtype=torch.float64)
    scaler = torch.amp.GradScaler("cpu", init_scale=3000.0)  # not a power of two
    scale = scaler.get_scale()
    monkeypatch.setattr(scaler, "get_scale", lambda: pytest.fail("get_scale() syncs with the host"))
    kw = dict(preset="max-margin", seed=4, backend=backend, return_details=True)
    P, det = fastgp.gradient_penalty(D, real, fake, scaler=scaler, **kw)
    (dP,) = torch.autograd.grad(P, D[0].weight)
    x = det.x_hat.detach().requires_grad_()
    (g,) = torch.autograd.grad(scaler.scale(D(x).sum()), x, create_graph=True)
    old, norms = R.penalty_from_grad(g * (1.0 / scale), norm="linf", constraint="hinge", weight=20.0)
    (dold,) = torch.autograd.grad(old, D[0].weight)
    torch.testing.assert_close(P, old, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(det.norms, norms, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dP, dold, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(det.grad, (g * (1.0 / scale)).detach(), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("points", ["interpolate", "real", "fake", "dragan"])
@pytest.mark.parametrize(
    "norm,constraint,reduction", [(n, c, r) for n in R.NORMS for c in R.CONSTRAINTS for r in R.REDUCTIONS]
)
def test_every_points_norm_constraint_reduction(points, norm, constraint, reduction):
    import explicit

    D = mlp(3)
    real, fake = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    P, det = fastgp.gradient_penalty(
        D,
        real,
        fake,
        points=points,
        norm=norm,
        constraint=constraint,
        center=0.5,
        weight=2.0,
        reduction=reduction,
        seed=11,
        return_details=True,
    )
    want, _, _ = explicit.penalty(det.grad.detach(), norm, constraint, 0.5, 2.0, reduction)
    torch.testing.assert_close(P, want, rtol=1e-10, atol=0)
    expected_x = {"real": real, "fake": fake}.get(points)
    if points == "interpolate":
        expected_x = det.alpha[:, None] * real + (1 - det.alpha[:, None]) * fake
    if expected_x is not None:
        torch.testing.assert_close(det.x_hat, expected_x)
    x = det.x_hat.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(D(x).sum(), x)
    torch.testing.assert_close(det.grad, g)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_low_precision_and_layouts_end_to_end(dtype, layout):
    D64 = conv()
    real, fake = torch.randn(4, 3, 6, 5, dtype=torch.float64), torch.randn(4, 3, 6, 5, dtype=torch.float64)
    D64(real)
    want = fastgp.gradient_penalty(D64, real, fake, preset="r1")
    D = conv().to(dtype)
    D(real.to(dtype))
    D.load_state_dict(D64.state_dict())
    r, f = real.to(dtype), fake.to(dtype)
    if layout == "channels_last":
        r, f = r.to(memory_format=torch.channels_last), f.to(memory_format=torch.channels_last)
    elif layout == "strided":
        r = torch.stack([r, r], dim=-1)[..., 0]
        f = torch.stack([f, f], dim=-1)[..., 0]
        assert not r.is_contiguous()
    torch.testing.assert_close(r.double(), real.to(dtype).double())
    P = fastgp.gradient_penalty(D, r, f, preset="r1")
    assert P.dtype == torch.float32 and torch.isfinite(P)
    tol = {torch.float16: 3e-2, torch.bfloat16: 1e-1, torch.float32: 1e-4}[dtype]
    torch.testing.assert_close(P.double(), want, rtol=tol, atol=tol)
