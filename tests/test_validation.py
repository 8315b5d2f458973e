"""SPEC.md §7: refused inputs raise ValueError/TypeError naming the argument, and touch no .grad."""

import numpy as np
import pytest
import torch
from torch import nn

import fastgp

D = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
real = torch.randn(3, 4)
fake = torch.randn(3, 4)
GP = fastgp.gradient_penalty


def patch(x):
    return D(x).expand(3, 5)


CASES = [
    # (label, call, exception, text the message must contain)
    ("real shape", lambda: GP(D, real, torch.randn(3, 5)), ValueError, "fake has shape"),
    ("real dtype", lambda: GP(D, real, fake.double()), TypeError, "dtype"),
    ("real device", lambda: GP(D, real, fake.to("meta")), ValueError, "fake is on"),
    ("integer real", lambda: GP(D, torch.ones(3, 4, dtype=torch.int64), fake), TypeError, "real must be a floating"),
    ("bool fake", lambda: GP(D, real, torch.ones(3, 4, dtype=torch.bool)), TypeError, "fake must be a floating"),
    ("empty batch", lambda: GP(D, real[:0], fake[:0]), ValueError, "empty batch"),
    ("0-d real", lambda: GP(D, torch.tensor(1.0), torch.tensor(2.0)), ValueError, "batch dimension"),
    ("real not a tensor", lambda: GP(D, [[1.0]], fake), TypeError, "real must be a torch.Tensor"),
    ("missing fake", lambda: GP(D, real), ValueError, "needs fake"),
    ("r2 without fake", lambda: GP(D, real, preset="r2"), ValueError, "needs fake"),
    ("D not callable", lambda: GP(3, real, fake), TypeError, "D must be callable"),
    ("D ignores x", lambda: GP(lambda x: D(torch.zeros_like(x)), real, fake), ValueError, "does not depend"),
    ("D detached", lambda: GP(lambda x: D(x).detach(), real, fake), ValueError, "does not depend"),
    ("D batch", lambda: GP(lambda x: D(x).reshape(1, 3), real, fake), ValueError, "batch size 3"),
    ("D scalar", lambda: GP(lambda x: D(x).sum(), real, fake), ValueError, "first dimension"),
    ("D returns tuple", lambda: GP(lambda x: (D(x),), real, fake), TypeError, "D must return a torch.Tensor"),
    ("unknown norm", lambda: GP(D, real, fake, norm="l3"), ValueError, "norm must be one of"),
    ("norm type", lambda: GP(D, real, fake, norm=2), TypeError, "norm must be a str"),
    ("unknown constraint", lambda: GP(D, real, fake, constraint="huber"), ValueError, "constraint must be"),
    ("unknown points", lambda: GP(D, real, fake, points="midpoint"), ValueError, "points must be"),
    ("unknown preset", lambda: GP(D, real, fake, preset="wgan"), ValueError, "preset must be one of"),
    ("unknown reduction", lambda: GP(D, real, fake, reduction="sum"), ValueError, "reduction must be"),
    ("unknown backend", lambda: GP(D, real, fake, backend="jax"), ValueError, "backend must be"),
    ("negative weight", lambda: GP(D, real, fake, weight=-1.0), ValueError, "weight must be finite"),
    ("nan weight", lambda: GP(D, real, fake, weight=float("nan")), ValueError, "weight must be finite"),
    ("inf center", lambda: GP(D, real, fake, center=float("inf")), ValueError, "center must be finite"),
    ("negative center", lambda: GP(D, real, fake, center=-1), ValueError, "center must be finite"),
    ("negative output_weight", lambda: GP(D, real, fake, output_weight=-0.1), ValueError, "output_weight"),
    ("weight as str", lambda: GP(D, real, fake, weight="10"), TypeError, "weight must be a real number"),
    ("weight as bool", lambda: GP(D, real, fake, weight=True), TypeError, "weight must be a real number"),
    ("seed type", lambda: GP(D, real, fake, seed=1.5), TypeError, "seed must be an int"),
    ("seed range", lambda: GP(D, real, fake, seed=-1), ValueError, "seed must be in"),
    ("d_args type", lambda: GP(D, real, fake, d_args=5), TypeError, "d_args"),
    ("d_kwargs type", lambda: GP(D, real, fake, d_kwargs=[1]), TypeError, "d_kwargs"),
    ("scaler type", lambda: GP(D, real, fake, scaler=2.0), TypeError, "scaler"),
    ("points tensor int", lambda: GP(D, real, fake, points=torch.ones(3, 4, dtype=torch.int32)), TypeError, "points"),
    ("0-d grad", lambda: fastgp.penalty_from_grad(torch.tensor(1.0)), ValueError, "grad must have a batch"),
    ("grad int", lambda: fastgp.penalty_from_grad(torch.ones(2, 3, dtype=torch.int32)), TypeError, "grad"),
    (
        "output term no scores",
        lambda: fastgp.penalty_from_grad(torch.randn(2, 3), output_weight=1.0),
        ValueError,
        "needs scores",
    ),
    (
        "scores batch",
        lambda: fastgp.penalty_from_grad(torch.randn(2, 3), scores=torch.randn(3), output_weight=1.0),
        ValueError,
        "scores has batch size",
    ),
    ("grad_norms norm", lambda: fastgp.grad_norms(torch.randn(2, 3), "l0"), ValueError, "norm must be"),
    ("unknown mode", lambda: fastgp.normalize(torch.randn(3), torch.randn(3, 4), mode="sn"), ValueError, "mode"),
    (
        "normalize scores shape",
        lambda: fastgp.normalize(torch.randn(3, 2), torch.randn(3, 4)),
        ValueError,
        "one score per sample",
    ),
    ("normalize batch", lambda: fastgp.normalize(torch.randn(2), torch.randn(3, 4)), ValueError, "batch size"),
    ("normalized mode", lambda: fastgp.normalized(D, mode="x"), ValueError, "mode must be"),
    ("margin p", lambda: fastgp.margin(D, real, torch.tensor([1, -1, 1]), p=3), ValueError, "p must be 1, 2 or inf"),
    ("margin labels", lambda: fastgp.margin(D, real, torch.tensor([1, 0, 1])), ValueError, "labels"),
    ("interpolate points", lambda: fastgp.interpolate(real, fake, points="mix"), ValueError, "points must be"),
    ("input_grad x", lambda: fastgp.input_grad(D, "x"), TypeError, "x must be a torch.Tensor"),
    ("loss name", lambda: fastgp.losses.d_loss("wgan-gp", real[:, 0], fake[:, 0]), ValueError, "name must be"),
    ("env backend", {"FASTGP_BACKEND": "gpu"}, ValueError, "FASTGP_BACKEND"),
    ("triton on cpu", {"TRITON_INTERPRET": None, "backend": "triton"}, ValueError, "backend='triton' cannot run"),
]


@pytest.fixture
def noisy_grads():
    """Every parameter starts with a known .grad, which a refused call must leave bit for bit."""
    for p in D.parameters():
        p.grad = torch.randn_like(p)
    before = [p.grad.clone() for p in D.parameters()]
    yield
    for p, b in zip(D.parameters(), before, strict=True):
        assert torch.equal(p.grad, b)


@pytest.mark.parametrize("label,call,exc,text", CASES, ids=[c[0] for c in CASES])
def test_refused(label, call, exc, text, noisy_grads, monkeypatch):
    if isinstance(call, dict):  # a refusal that depends on the environment
        env = dict(call)
        backend = env.pop("backend", "auto")
        for key, value in env.items():
            if value is None:
                monkeypatch.delenv(key, raising=False)
            else:
                monkeypatch.setenv(key, value)
        call = lambda: GP(D, real, fake, backend=backend)  # noqa: E731
    with pytest.raises(exc, match=text):
        call()


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_refused_without_autograd(context, noisy_grads):
    with context(), pytest.raises(ValueError, match="needs autograd"):
        GP(D, real, fake)
    with context(), pytest.raises(ValueError, match="needs autograd"):
        fastgp.input_grad(D, real)


def test_at_least_25_distinct_refusals():
    assert len({label for label, *_ in CASES}) >= 25


def test_nan_in_data_is_not_refused_but_propagates():
    bad = real.clone()
    bad[1, 2] = float("nan")
    assert torch.isnan(GP(D, bad, fake, points="real"))


@pytest.mark.parametrize(
    "call,exc,text",
    [
        (lambda: fastgp.penalty_from_grad(torch.randn(3, 0)), ValueError, "at least one entry per sample"),
        (lambda: GP(D, torch.randn(1, 1), points="dragan"), ValueError, "at least two entries"),
        (lambda: fastgp.interpolate(torch.randn(1, 1), points="dragan"), ValueError, "at least two entries"),
        (lambda: fastgp.margin(D, real, torch.ones(3, dtype=torch.bool)), TypeError, "labels"),
        (lambda: fastgp.interpolate(real, None), ValueError, "needs fake"),
        (lambda: fastgp.gradient_penalty(lambda x: D(x)[:, :0], real, fake), ValueError, "it is empty"),
        (lambda: fastgp.input_grad(lambda x: D(x)[:, 1:], real), ValueError, "does not depend"),
        (lambda: fastgp.penalty_from_grad(torch.randn(3, 4).to_sparse()), TypeError, "grad must be a dense"),
        (lambda: fastgp.penalty_from_grad(torch.randn(3, 4).to_sparse_csr()), TypeError, "grad must be a dense"),
        (lambda: fastgp.grad_norms(torch.randn(3, 4).to_sparse()), TypeError, "grad must be a dense"),
        (lambda: fastgp.gradient_penalty(D, real.to_sparse(), fake), TypeError, "real must be a dense"),
        (lambda: fastgp.gradient_penalty(D, real, fake, weight=1e308), ValueError, "weight must be finite in"),
        (lambda: fastgp.penalty_from_grad(torch.randn(3, 4), center=1e39), ValueError, "center must be finite in"),
        (lambda: fastgp.gradient_penalty(D, real, fake, seed=np.float64(3)), TypeError, "seed must be an int"),
        (lambda: fastgp.gradient_penalty(D, real, fake, seed=np.bool_(True)), TypeError, "seed must be an int"),
    ],
)
def test_more_refusals(call, exc, text, noisy_grads):
    with pytest.raises(exc, match=text):
        call()


def test_remembered_settings_still_refuse_by_type():
    """Settings are validated once and remembered; a bool or a NaN is still refused after a 1 was accepted."""
    g = torch.randn(3, 4, requires_grad=True)
    fastgp.penalty_from_grad(g, weight=1)
    for bad, error, text in [(True, TypeError, "weight must be a real number"), (float("nan"), ValueError, "finite")]:
        for _ in range(2):
            with pytest.raises(error, match=text):
                fastgp.penalty_from_grad(g, weight=bad)
    with pytest.raises(TypeError, match="norm must be a str"):
        fastgp.penalty_from_grad(g, norm=["l2"])  # unhashable: validated without the cache
    assert g.grad is None
