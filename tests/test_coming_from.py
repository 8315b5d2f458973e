"""The README's "Coming from …" rows: each fastgp one-liner against the formula as that codebase writes it.

The fastgp side is the README's own text, read from README.md and evaluated, so that the README cannot
drift from what is tested. Every `theirs_*` function restates, in plain PyTorch, what the named codebase
computes (its convention for α, where the ½ sits, how its critic returns scores), so that a change of
convention on either side fails here. Nothing is imported from those codebases. Float64 throughout: the
two sides must agree to rounding.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import fastgp
from fastgp.cli._args import threads

TOL = {"rtol": 1e-12, "atol": 1e-14}
README = Path(__file__).resolve().parent.parent / "README.md"


def coming_from() -> str:
    """The README's "Coming from …" section."""
    return README.read_text(encoding="utf-8").split("\n## Coming from")[1].split("\n## ")[0]


def readme_call(key: str) -> str:
    """The fastgp cell of the table row whose codebase cell contains `key`."""
    for line in coming_from().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if line.startswith("| `") and key in cells[0]:
            return cells[1].strip("`")
    raise AssertionError(f"no row for {key!r} in the README's Coming from section")


def run_readme_call(key: str, **names: Any) -> tuple[Tensor, Any]:
    """Evaluates the README's call for `key` with `names` bound, asking for its details too."""
    call = readme_call(key)
    assert call.startswith("fastgp.gradient_penalty(") and call.endswith(")"), call
    return eval(call[:-1] + ", return_details=True)", {"fastgp": fastgp, **names})


@pytest.fixture(autouse=True)
def one_thread():
    with threads(1):  # small ops on a shared machine: OpenMP threads cost more than they give
        yield


class LabelledCritic(nn.Module):
    """A small conditional image critic: ``D(x, y)`` with class embeddings (projection), output (B, 1)."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.LeakyReLU(0.2), nn.Flatten())
        self.linear = nn.Linear(4 * 5 * 5, 1)
        self.embed = nn.Embedding(classes, 4 * 5 * 5)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        h = self.body(x)
        return self.linear(h) + (self.embed(y) * h).sum(1, keepdim=True)


class DictCritic(LabelledCritic):
    """StudioGAN's critic interface: ``D(x, labels, eval=...)`` returns a dict, scores squeezed to (B,)."""

    def forward(self, x: Tensor, y: Tensor, eval: bool = False) -> dict[str, Tensor]:
        return {"adv_output": torch.squeeze(super().forward(x, y)), "h": x}


def batch(n: int = 5) -> tuple[Tensor, Tensor, Tensor]:
    real = torch.randn(n, 3, 5, 5, dtype=torch.float64)
    fake = torch.randn(n, 3, 5, 5, dtype=torch.float64)
    return real, fake, torch.randint(0, 3, (n,))


def input_grad_of(scores: Tensor, x: Tensor) -> Tensor:
    """∂(Σ scores)/∂x with its graph, the way every codebase here differentiates its critic."""
    (g,) = torch.autograd.grad(scores.sum(), x, create_graph=True)
    return g.flatten(1)


def param_grads(module: nn.Module, loss: Tensor) -> list[Tensor]:
    module.zero_grad(set_to_none=True)
    loss.backward()
    return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in module.parameters()]


def assert_same_step(module: nn.Module, ours: Tensor, theirs: Tensor) -> None:
    torch.testing.assert_close(ours, theirs, **TOL)
    for a, b in zip(param_grads(module, ours), param_grads(module, theirs), strict=True):
        torch.testing.assert_close(a, b, **TOL)


# --- PyTorch-StudioGAN (src/utils/losses.py, src/worker.py) -------------------------------------------


def theirs_studiogan_gp(D, real, fake, labels, alpha: Tensor, center: float, reduce: str) -> Tensor:
    """cal_grad_penalty / cal_maxgrad_penalty: α on the real image, (‖g‖₂ - 1)² averaged, or ‖g‖₂² maxed."""
    a = alpha.view(-1, 1, 1, 1)
    x_hat = (a * real + (1 - a) * fake).detach().requires_grad_(True)
    n = input_grad_of(D(x_hat, labels, eval=False)["adv_output"], x_hat).norm(dim=1)
    return ((n - center) ** 2).mean() if reduce == "mean" else (n**2).max()


def test_studiogan_cal_grad_penalty():
    D, (real, fake, labels) = DictCritic().double(), batch()
    gp_lambda = 7.0  # unlike the preset's: a README row that drops the weight fails
    adv = lambda x: D(x, labels)["adv_output"]  # noqa: E731 (the README's spelling)
    ours, det = run_readme_call("cal_grad_penalty(", adv=adv, real=real, fake=fake, gp_lambda=gp_lambda)
    theirs = gp_lambda * theirs_studiogan_gp(D, real, fake, labels, det.alpha, 1.0, "mean")
    assert_same_step(D, ours, theirs)


def test_studiogan_cal_maxgrad_penalty_is_the_max_gp_preset():
    D, (real, fake, labels) = DictCritic().double(), batch()
    maxgp_lambda = 10.0  # StudioGAN's LGAN configs; the preset's own λ is the paper code's 0.1
    adv = lambda x: D(x, labels)["adv_output"]  # noqa: E731
    ours, det = run_readme_call("cal_maxgrad_penalty(", adv=adv, real=real, fake=fake, maxgp_lambda=maxgp_lambda)
    theirs = maxgp_lambda * theirs_studiogan_gp(D, real, fake, labels, det.alpha, 0.0, "max")
    assert_same_step(D, ours, theirs)


def test_studiogan_cal_dra_penalty():
    """x̂ = real + α · 0.5 · std(real) · u, with std over the whole batch and u ~ U[0, 1) elementwise."""
    D, (real, _, labels) = DictCritic().double(), batch()
    dra_lambda = 3.0
    adv = lambda x: D(x, labels)["adv_output"]  # noqa: E731
    ours, det = run_readme_call("cal_dra_penalty(", adv=adv, real=real, dra_lambda=dra_lambda)
    # Their perturbation, recovered from the points: it must be 0.5 · std(real) · u with u in [0, 1).
    u = (det.x_hat - real) / (det.alpha.view(-1, 1, 1, 1) * 0.5 * real.std())
    assert ((u >= 0) & (u < 1)).all() and u.std() > 0.1
    x_hat = det.x_hat.detach().requires_grad_(True)
    n = input_grad_of(D(x_hat, labels)["adv_output"], x_hat).norm(dim=1)
    assert_same_step(D, ours, dra_lambda * ((n - 1) ** 2).mean())


def test_studiogan_cal_r1_reg():
    """½ · mean_i Σ g² inside cal_r1_reg, r1_lambda outside it: weight = r1_lambda / 2."""
    D, (real, _, labels) = DictCritic().double(), batch()
    r1_lambda = 3.0
    adv = lambda x: D(x, labels)["adv_output"]  # noqa: E731
    ours, _ = run_readme_call("cal_r1_reg(", adv=adv, real=real, r1_lambda=r1_lambda)
    x = real.clone().requires_grad_(True)
    g = input_grad_of(D(x, labels)["adv_output"], x)
    assert_same_step(D, ours, r1_lambda * (0.5 * g.pow(2).sum(1).mean(0)))


def test_squeezed_critic_at_batch_size_one():
    """StudioGAN's torch.squeeze makes the scores 0-d for a single sample: accepted when B == 1."""
    D, (real, fake, labels) = DictCritic().double(), batch(1)
    adv = lambda x: D(x, labels)["adv_output"]  # noqa: E731
    ours, det = run_readme_call("cal_grad_penalty(", adv=adv, real=real, fake=fake, gp_lambda=7.0)
    assert det.scores.shape == (1,)
    theirs = 7.0 * theirs_studiogan_gp(D, real, fake, labels, det.alpha, 1.0, "mean")
    assert_same_step(D, ours, theirs)
    with pytest.raises(ValueError, match="batch size 2"):
        fastgp.gradient_penalty(lambda x: D(x, labels)["adv_output"].sum(), *batch(2)[:2])


# --- GAN_stability (gan_training/train.py) -------------------------------------------------------------


def theirs_gan_stability_grad2(D, x: Tensor, y: Tensor) -> Tensor:
    """compute_grad2: per-sample Σ g² of D(x, y), no ½ anywhere."""
    x = x.detach().requires_grad_(True)
    return input_grad_of(D(x, y), x).pow(2).sum(1)


@pytest.mark.parametrize("reg_type", ["real", "fake"])
def test_gan_stability_r1_r2(reg_type):
    D, (x_real, x_fake, y) = LabelledCritic().double(), batch()
    reg_param = 4.0
    ours, _ = run_readme_call(f"`{reg_type}`:", D=D, x_real=x_real, x_fake=x_fake, y=y, reg_param=reg_param)
    theirs = reg_param * theirs_gan_stability_grad2(D, x_real if reg_type == "real" else x_fake, y).mean()
    assert_same_step(D, ours, theirs)


@pytest.mark.parametrize("reg_type, center", [("wgangp", 1.0), ("wgangp0", 0.0)])
def test_gan_stability_wgangp(reg_type, center):
    """wgan_gp_reg puts its interpolation weight ε on the fake image: (1 - ε) x_real + ε x_fake."""
    D, (x_real, x_fake, y) = LabelledCritic().double(), batch()
    reg_param = 4.0
    ours, det = run_readme_call(f"`{reg_type}`:", D=D, x_real=x_real, x_fake=x_fake, y=y, reg_param=reg_param)
    eps = det.alpha.view(-1, 1, 1, 1)
    x_interp = (1 - eps) * x_real + eps * x_fake
    theirs = reg_param * (theirs_gan_stability_grad2(D, x_interp, y).sqrt() - center).pow(2).mean()
    assert_same_step(D, ours, theirs)


# --- NVlabs stylegan2-ada-pytorch / stylegan3 (training/loss.py, training/training_loop.py) ------------


def test_stylegan_lazy_r1():
    """The Dreg phase: mean_i (γ/2) Σ g² times gain = the interval (16), plus the logits times zero, with
    D's Adam at lr · c and betas ** c, c = 16 / 17. The fastgp side is the README's code block, run."""
    D, (real_img, _, real_c) = LabelledCritic().double(), batch()
    r1_gamma, interval, lr, betas = 2.0, 16, 0.0025, (0.0, 0.99)
    block = re.search(r"\*\*NVlabs.*?```python\n(.*?)```", coming_from(), re.S).group(1)
    names = dict(fastgp=fastgp, torch=torch, D=D, real_img=real_img, real_c=real_c, r1_gamma=r1_gamma)
    exec(block, {**names, "lr": lr, "betas": betas, "batch_idx": 0})
    ours = [p.grad.clone() for p in D.parameters()]

    x = real_img.detach().requires_grad_(True)
    logits = D(x, real_c)
    r1_penalty = input_grad_of(logits, x).square().sum(1)
    # (B, 1) + (B,) broadcasts to (B, B) there; its mean is still the mean over the samples.
    theirs = (logits * 0 + r1_penalty * (r1_gamma / 2)).mean().mul(interval)
    for a, b in zip(ours, param_grads(D, theirs), strict=True):
        torch.testing.assert_close(a, b, **TOL)

    lazy, mb_ratio = fastgp.LazyRegularizer(every=interval), interval / (interval + 1)
    assert lazy.adam_hparams(lr, betas) == (lr * mb_ratio, tuple(beta**mb_ratio for beta in betas))
    assert [lazy.due(i) for i in range(33)].count(True) == 3  # their batch_idx % interval == 0


# --- GN-GAN (basiclab/GNGAN-PyTorch, models/gradnorm.py) -----------------------------------------------


class KwargCritic(LabelledCritic):
    """GN-GAN's critics take the labels as a keyword: ``net_D(x, y=y)``; output (B, 1)."""

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        return super().forward(x, torch.zeros(x.shape[0], dtype=torch.long) if y is None else y)


def theirs_normalize_gradient(net_D, x: Tensor, **kwargs) -> Tensor:
    """f / (‖∇ Σf‖₂ + |f|), with the norm per sample and f kept in D's own shape."""
    x = x.requires_grad_(True)
    f = net_D(x, **kwargs)
    n = input_grad_of(f, x).norm(dim=1).view(-1, *[1] * (f.dim() - 1))
    return f / (n + f.abs())


def test_gn_gan_normalize_gradient():
    net_D, (real, fake, y) = KwargCritic().double(), batch()
    x = torch.cat([real, fake])
    y = torch.cat([y, y])
    call = re.search(r"`(fastgp\.normalized\(net_D\)\(x, y=y\))`", coming_from()).group(1)
    ours = eval(call, {"fastgp": fastgp, "net_D": net_D, "x": x.clone(), "y": y})
    theirs = theirs_normalize_gradient(net_D, x.clone(), y=y)
    assert ours.shape == theirs.shape == (10, 1)
    # GN-GAN's D step: hinge loss on the normalised scores.
    assert_same_step(
        net_D,
        torch.relu(1 - ours[:5]).mean() + torch.relu(1 + ours[5:]).mean(),
        torch.relu(1 - theirs[:5]).mean() + torch.relu(1 + theirs[5:]).mean(),
    )


def test_normalized_returns_the_critics_own_shape():
    x = torch.randn(4, 6, dtype=torch.float64)
    column = nn.Linear(6, 1).double()
    assert fastgp.normalized(column)(x).shape == (4, 1)
    assert fastgp.normalized(lambda t: column(t).squeeze(1))(x).shape == (4,)
    assert fastgp.normalized(lambda t: column(t).squeeze())(x[:1]).shape == ()
    patches = nn.Linear(6, 3).double()
    assert fastgp.normalized(patches)(x).shape == (4,)  # one f_i per sample: the sum of its patches


class Holder(nn.Module):
    """A model that keeps the critic as an attribute, as training scripts do."""

    def __init__(self, critic: nn.Module) -> None:
        super().__init__()
        self.critic = critic


def checkpoint_round_trip(state: dict[str, Tensor]) -> dict[str, Tensor]:
    buffer = io.BytesIO()
    torch.save({"net_D": state}, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)["net_D"]


def test_normalized_loads_and_saves_the_critics_own_checkpoints():
    D = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Linear(8, 1)).double().eval()
    D[1].running_mean.normal_()
    wrapped = fastgp.normalized(D)
    assert list(wrapped.state_dict()) == list(D.state_dict())

    # A checkpoint of a plain D loads into normalized(D) ...
    source = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Linear(8, 1)).double()
    source[1].running_var.uniform_(0.5, 2.0)
    wrapped.load_state_dict(checkpoint_round_trip(source.state_dict()))
    for a, b in zip(D.state_dict().values(), source.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    # ... and a checkpoint of normalized(D) loads into a plain D.
    with torch.no_grad():
        D[0].weight.add_(1.0)
    fresh = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Linear(8, 1)).double()
    fresh.load_state_dict(checkpoint_round_trip(wrapped.state_dict()))
    for a, b in zip(fresh.state_dict().values(), D.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    # Inside another module the keys are D's under that module's attribute name, both ways.
    holder = Holder(fastgp.normalized(fresh.eval()))
    plain = Holder(D)
    assert list(holder.state_dict()) == list(plain.state_dict())
    holder.load_state_dict(checkpoint_round_trip(plain.state_dict()))
    x = torch.randn(3, 6, dtype=torch.float64)
    torch.testing.assert_close(holder.critic(x), wrapped(x), **TOL)

    # A checkpoint that does not fit still says which of D's keys are missing.
    with pytest.raises(RuntimeError, match=r"Missing key\(s\).*\"2\.bias\""):
        wrapped.load_state_dict({k: v for k, v in source.state_dict().items() if k != "2.bias"})


# --- a fake batch that a preset does not use --------------------------------------------------------------


def test_fake_ignored_by_r1_warns():
    D, (real, fake, y) = LabelledCritic().double(), batch()
    with pytest.warns(UserWarning, match=r"preset='r1' \(points='real'\).*fake batch you passed is ignored"):
        with_fake = fastgp.gradient_penalty(D, real, fake, preset="r1", d_args=(y,))
    torch.testing.assert_close(with_fake, fastgp.gradient_penalty(D, real, preset="r1", d_args=(y,)), **TOL)
    with pytest.warns(UserWarning, match="points='dragan'"):
        fastgp.gradient_penalty(D, real, fake, points="dragan", d_args=(y,))
