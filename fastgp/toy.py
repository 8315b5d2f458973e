"""Built-in 2-D data sets, small MLPs and mode metrics for `fastgp demo` and `fastgp margins`.

Every data set is a mixture of "modes" described by dense reference points on each mode (one point per Gaussian
centre, many points along each arc of the swiss roll) and one noise scale `sigma`. A sample is of high quality when
it lies within 3σ of some reference point; a mode is covered when at least `cover_share` of the samples are of high
quality and nearest to it. The same rule serves Gaussians and curves, so the numbers read the same on every set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

DATASETS = ("8gaussians", "25gaussians", "swissroll")

# A quarter of the share a mode would get from a perfect generator: low enough that a mode the generator does
# visit counts, high enough that a few stray samples do not.
COVER_FRACTION_OF_UNIFORM = 0.25


@dataclass(frozen=True)
class ToyData:
    """A 2-D mixture: `refs` (M, 2) reference points, `ref_mode` (M,) the mode of each, noise scale `sigma`."""

    name: str
    refs: Tensor
    ref_mode: Tensor
    n_modes: int
    sigma: float
    scale: float  # radius of the data, so the generator's last layer starts at the right size

    @property
    def cover_share(self) -> float:
        """Share of samples a mode needs within 3σ to count as covered."""
        return COVER_FRACTION_OF_UNIFORM / self.n_modes

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """`n` samples (n, 2) in float32 on the CPU."""
        if self.name == "swissroll":
            t = _roll_param(torch.rand(n, generator=generator))
            centre = _roll(t) * self.scale / _ROLL_RADIUS
        else:
            modes = self.refs[torch.randint(len(self.refs), (n,), generator=generator)]
            centre = modes
        return centre + self.sigma * torch.randn(n, 2, generator=generator)

    def metrics(self, samples: Tensor) -> dict[str, float | int | list[int]]:
        """Modes covered, share of high-quality samples and per-mode counts for `samples` (n, 2)."""
        x = samples.detach().to("cpu", torch.float32)
        dist, idx = torch.cdist(x, self.refs).min(dim=1)
        good = dist <= 3.0 * self.sigma
        counts = torch.bincount(self.ref_mode[idx[good]], minlength=self.n_modes)
        covered = int((counts >= self.cover_share * len(x)).sum())
        return {
            "modes_covered": covered,
            "n_modes": self.n_modes,
            "high_quality_share": float(good.float().mean()),
            "samples_per_mode": counts.tolist(),
        }


_ROLL_RADIUS = 4.5 * math.pi  # largest radius of the unit swiss roll below


def _roll_param(u: Tensor) -> Tensor:
    return 1.5 * math.pi * (1 + 2 * u)


def _roll(t: Tensor) -> Tensor:
    return torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1)


def make_dataset(name: str) -> ToyData:
    """One of `DATASETS`, all of radius about 10 (Thanh-Tung et al. 2019 scale 8 Gaussians ×10: samples far apart)."""
    if name == "8gaussians":
        angles = torch.arange(8) * (2 * math.pi / 8)
        refs = 10.0 * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
        return ToyData(name, refs, torch.arange(8), 8, sigma=0.5, scale=10.0)
    if name == "25gaussians":
        grid = torch.linspace(-8.0, 8.0, 5)
        refs = torch.cartesian_prod(grid, grid)
        return ToyData(name, refs, torch.arange(25), 25, sigma=0.3, scale=10.0)
    if name == "swissroll":
        # Ten arcs of equal parameter length; "modes" of a curve are its arcs.
        n_arcs, per_arc = 10, 200
        u = torch.linspace(0, 1, n_arcs * per_arc)
        refs = _roll(_roll_param(u)) * 10.0 / _ROLL_RADIUS
        ref_mode = torch.arange(n_arcs).repeat_interleave(per_arc)
        return ToyData(name, refs, ref_mode, n_arcs, sigma=0.25, scale=10.0)
    raise ValueError(f"data must be one of {', '.join(DATASETS)}, got {name!r}")


def swiss_roll_classes(n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Max-margin paper §4.2: class +1 the swiss roll, class -1 the same roll scaled by 1.5; `n` points of each.

    The roll is scikit-learn's ``make_swiss_roll`` seen from above, ``(t cos t, t sin t)`` with
    ``t ~ U[1.5π, 4.5π]``, no noise, scaled by 0.1 (radius 1.4, then 2.1 for class -1): at that scale a unit
    gradient norm is a real constraint and an unpenalised classifier's margin (0.30) is that of the paper (0.27).
    Returns `(positive (n, 2), negative (n, 2))`.
    """
    positive = 0.1 * _roll(_roll_param(torch.rand(n, generator=generator)))
    negative = 0.15 * _roll(_roll_param(torch.rand(n, generator=generator)))
    return positive, negative


ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


def mlp(d_in: int, d_out: int, width: int, depth: int, out_scale: float = 1.0, activation: str = "relu") -> nn.Module:
    """`depth` hidden ReLU or tanh layers of `width`, no normalisation (per-sample gradients stay per-sample)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
    layers: list[nn.Module] = []
    d = d_in
    for _ in range(depth):
        layers += [nn.Linear(d, width), ACTIVATIONS[activation]()]
        d = width
    layers.append(nn.Linear(d, d_out))
    net = nn.Sequential(*layers)
    if out_scale != 1.0:
        return _Scaled(net, out_scale)
    return net


class _Scaled(nn.Module):
    """Multiplies the output: the generator then starts at the data's radius instead of learning it."""

    def __init__(self, net: nn.Module, scale: float) -> None:
        super().__init__()
        self.net = net
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * self.net(x)


class Critic(nn.Module):
    """MLP critic with one score per sample, shape (B,)."""

    def __init__(self, width: int = 256, depth: int = 3, activation: str = "relu") -> None:
        super().__init__()
        self.net = mlp(2, 1, width, depth, activation=activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(-1)
