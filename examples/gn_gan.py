"""GN-GAN (Wu et al. 2021): the critic is gradient-normalised, f̂ = f / (‖∇f‖ + |f|), which makes it
1-Lipschitz by construction (no penalty term, no weight clipping), and both players train through f̂.

`fastgp.normalized(D)` differentiates D and returns f̂ with the graph of ∇f kept, so the generator's
update goes through the double backward. Real and fake go through D in one batch: GN is per-sample.
`--mode pgn` is the penalty gradient normalisation of Xia. Random CIFAR-shaped images stand in
for a data set; `python examples/gn_gan.py --steps 5` runs in seconds on a CPU.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import fastgp


def critic(ch: int = 32) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, ch, 4, stride=2, padding=1),
        nn.LeakyReLU(0.1),
        nn.Conv2d(ch, 2 * ch, 4, stride=2, padding=1),
        nn.LeakyReLU(0.1),
        nn.Conv2d(2 * ch, 2 * ch, 4, stride=2, padding=1),
        nn.LeakyReLU(0.1),
        nn.Flatten(),
        nn.Linear(2 * ch * 4 * 4, 1),
    )


def generator(z_dim: int = 64, ch: int = 32) -> nn.Module:
    return nn.Sequential(
        nn.Linear(z_dim, 2 * ch * 4 * 4),
        nn.Unflatten(1, (2 * ch, 4, 4)),
        nn.ReLU(),
        nn.ConvTranspose2d(2 * ch, ch, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.ConvTranspose2d(ch, ch, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.ConvTranspose2d(ch, 3, 4, stride=2, padding=1),
        nn.Tanh(),
    )


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--mode", default="gn", choices=("gn", "pgn"))
    p.add_argument("--loss", default="ns", choices=("ns", "hinge", "wgan", "ls"))
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
    G, D = generator(args.z_dim).to(device), critic().to(device)
    D_hat = fastgp.normalized(D, mode=args.mode)
    # Wu et al. train GN-GAN on CIFAR-10 with Adam(2e-4, (0, 0.9)) for both players.
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.0, 0.9))
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.0, 0.9))
    history: dict[str, list[float]] = {"d_loss": [], "g_loss": [], "max_abs_f_hat": []}

    for step in range(args.steps):
        real = torch.rand(args.batch_size, 3, 32, 32, device=device) * 2 - 1
        z = torch.randn(args.batch_size, args.z_dim, device=device)
        f_hat = D_hat(torch.cat([real, G(z).detach()]))
        f_real, f_fake = f_hat.chunk(2)
        d_loss = fastgp.losses.d_loss(args.loss, f_real, f_fake)
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()

        g_loss = fastgp.losses.g_loss(args.loss, D_hat(G(torch.randn_like(z))))
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()  # through ∇f: the double backward carries G's signal
        opt_g.step()
        history["d_loss"].append(d_loss.item())
        history["g_loss"].append(g_loss.item())
        history["max_abs_f_hat"].append(f_hat.abs().max().item())
        if step % args.log_every == 0 or step == args.steps - 1:
            print(f"step {step:5d}  d_loss {d_loss.item():.4f}  g_loss {g_loss.item():.4f}")
    return history


if __name__ == "__main__":
    main()
