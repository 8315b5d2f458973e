"""A StyleGAN2-style discriminator step: non-saturating loss, R1 on the real batch with lazy
regularisation (Karras et al. 2020, §3.1 and Appendix B), and R1 sharing D's forward pass.

On a regularising step (`step % every == 0`) the real batch goes through D once:
`fastgp.input_grad` returns the scores, which feed the loss, and their input gradient, which feeds
R1 = γ/2 · E‖∇D(x)‖² (Mescheder et al. 2018), multiplied by `every` so that its expected gradient
per step is unchanged. Random CIFAR-shaped images stand in for a data set;
`python examples/stylegan_r1.py --steps 5` runs in seconds on a CPU.
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from torch import nn

import fastgp


class Critic(nn.Module):
    """A small residual critic; no BatchNorm, so the gradients R1 penalises are per-sample."""

    def __init__(self, ch: int = 32) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, ch, 3, padding=1)
        self.blocks = nn.ModuleList(nn.Conv2d(ch, ch, 3, padding=1) for _ in range(3))
        self.head = nn.Linear(ch * 4 * 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.stem(x), 0.2)
        for conv in self.blocks:
            # 1/sqrt(2) keeps the residual's variance, as StyleGAN2's resnet D does.
            h = F.avg_pool2d((h + F.leaky_relu(conv(h), 0.2)) / math.sqrt(2), 2)
        return self.head(h.flatten(1))


def generator(z_dim: int = 64, ch: int = 32) -> nn.Module:
    return nn.Sequential(
        nn.Linear(z_dim, ch * 8 * 8),
        nn.Unflatten(1, (ch, 8, 8)),
        nn.LeakyReLU(0.2),
        nn.Upsample(scale_factor=2),
        nn.Conv2d(ch, ch, 3, padding=1),
        nn.LeakyReLU(0.2),
        nn.Upsample(scale_factor=2),
        nn.Conv2d(ch, 3, 3, padding=1),
        nn.Tanh(),
    )


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--every", type=int, default=16, help="R1 every k steps (StyleGAN2: 16)")
    p.add_argument("--gamma", type=float, default=10.0, help="R1 weight γ; the penalty is γ/2 · E‖∇D‖²")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--z-dim", type=int, default=64)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=100)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    args = parse(argv)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    G, D = generator(args.z_dim).to(device), Critic().to(device)
    lazy = fastgp.LazyRegularizer(every=args.every)
    # The penalty is part of the main step's loss (one optimiser step per step), so StyleGAN2's
    # lazy.adam_hparams correction for a separate regularisation step does not apply.
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-3, betas=(0.0, 0.99))
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-3, betas=(0.0, 0.99))
    history: dict[str, list[float]] = {"d_loss": [], "r1": [], "g_loss": []}

    for step in range(args.steps):
        real = torch.rand(args.batch_size, 3, 32, 32, device=device) * 2 - 1
        z = torch.randn(args.batch_size, args.z_dim, device=device)
        fake = G(z).detach()
        if lazy.due(step):
            real_scores, grad = fastgp.input_grad(D, real)  # one forward for the loss and R1
            r1 = fastgp.penalty_from_grad(grad, center=0.0, weight=args.gamma / 2)
            history["r1"].append(r1.item())
            reg = lazy(r1)
        else:
            real_scores, reg = D(real), 0.0
        d_loss = fastgp.losses.d_loss("ns", real_scores, D(fake))
        opt_d.zero_grad(set_to_none=True)
        (d_loss + reg).backward()
        opt_d.step()
        history["d_loss"].append(d_loss.item())

        g_loss = fastgp.losses.g_loss("ns", D(G(torch.randn_like(z))))
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        history["g_loss"].append(g_loss.item())

        if step % args.log_every == 0 or step == args.steps - 1:
            r1_text = f"  r1 {history['r1'][-1]:.4f}" if lazy.due(step) else ""
            print(f"step {step:5d}  d_loss {d_loss.item():.4f}  g_loss {g_loss.item():.4f}{r1_text}")
    return history


if __name__ == "__main__":
    main()
